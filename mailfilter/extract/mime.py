"""The MIME walk: headers, multipart splitting and transfer decoding, numbered like IMAP.

Bodies are never copied on the way down: an entity is a span of the message buffer and a
multipart is split by searching that span for its delimiter lines, lazily, so a message with
100 000 parts costs only as many parts as `max_parts` lets through. Header blocks are parsed
by the stdlib (`compat32`, which never raises on bad headers); everything the RFCs forbid but
mail clients tolerate is tolerated here too and recorded as a defect.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import Message

from mailfilter.extract import core, decoders, sniff
from mailfilter.extract.core import Context, EntityNode, Node, PayloadNode, child_path

# A header block longer than this is cut there and the rest read as body.
MAX_HEADER_BYTES = 256 * 1024
# A preamble or epilogue longer than this is searched for hidden payloads (uuencode etc.).
SCAN_PREAMBLE_BYTES = 256

MESSAGE_TYPES = frozenset(
    {"message/rfc822", "message/global", "message/news", "text/rfc822-headers"}
)
_IDENTITY_CTE = frozenset({"", "7bit", "8bit", "binary", "none"})
_UU_CTE = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})

_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_CTE_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")
_GUESS_BOUNDARY = re.compile(rb"^--([!-~]{1,200}?)(--)?[ \t]*\r?$", re.M)

_LINE_BREAK = re.compile(r"\r?\n")
_FIELD = re.compile(r"([!-9;-~]+)[ \t]*:(.*)", re.S)


# --- headers ---------------------------------------------------------------------------


def split_headers(ctx: Context, node: EntityNode) -> tuple[bytes, int]:
    """The header block of the entity and where its body starts.

    The block ends at the first empty line; a line that is neither a header field nor a
    continuation also ends it (that line starts the body), as in most clients.
    """
    buf, pos, end = node.buf, node.start, node.end
    limit = min(end, node.start + MAX_HEADER_BYTES)
    while pos < end:
        if pos >= limit:
            ctx.defect(node.path, "header-too-long")
            return buf[node.start : pos], pos
        nl = buf.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = buf[pos : min(line_end, pos + 1024)]
        content = line.rstrip(b"\r\n")
        if not content:
            return buf[node.start : pos], line_end
        if content[:1] in (b" ", b"\t") and pos != node.start:
            pos = line_end
            continue
        if _HEADER_LINE.match(content) or (pos == node.start and content.startswith(b"From ")):
            pos = line_end  # a header field (or, first, the From_ line of an mbox)
            continue
        if pos != node.start:
            ctx.defect(node.path, "missing-header-body-separator")
        return buf[node.start : pos], pos
    if node.end > node.start:
        ctx.defect(node.path, "missing-body")
    return buf[node.start : end], end


def parse_headers(block: bytes) -> Message:
    """The header fields, unfolded, in a compat32 Message (whose accessors parse parameters,
    RFC 2231 and defaults). 8-bit bytes are read as UTF-8 (what nearly all raw 8-bit headers
    are), else as Windows-1252. Lines that are no header field are left out."""
    if block.isascii():
        text = block.decode("ascii")
    else:
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            text = block.decode("cp1252", "replace")
    msg = Message()
    name: str | None = None
    value: list[str] = []
    for line in _LINE_BREAK.split(text):
        if line[:1] in (" ", "\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            msg[name] = "".join(value).rstrip()
        m = _FIELD.match(line)
        if m:
            name, value = m.group(1), [m.group(2).lstrip(" \t")]
        else:
            name = None
    if name is not None:
        msg[name] = "".join(value).rstrip()
    return msg


def _fix_surrogates(value: str) -> str:
    """8-bit header bytes arrive as surrogates; most are UTF-8, so read them as such."""
    try:
        return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words, also where they are not allowed (quoted filenames)."""
    value = _fix_surrogates(value)
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a broken encoded word: keep the text as it came
        return value


def header_text(msg: Message, name: str) -> str | None:
    lname = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == lname:
            return _decode_words(" ".join(str(value).split()))
    return None


def _filename(msg: Message) -> str | None:
    if not any(
        "name" in str(value).lower()
        for key, value in msg.raw_items()
        if key.lower() in ("content-type", "content-disposition")
    ):
        return None
    name: object = None
    try:
        name = msg.get_filename() or msg.get_param("name")
    except Exception:
        name = None
    if isinstance(name, tuple):  # an RFC 2231 value compat32 did not collapse
        name = name[2]
    if not isinstance(name, str):
        return None
    name = _decode_words(name).strip().strip('"').strip()
    return name or None


def _boundary(msg: Message) -> str | None:
    try:
        boundary = msg.get_boundary()
    except Exception:
        return None
    return boundary or None


def _cte(msg: Message) -> str:
    value = header_text(msg, "Content-Transfer-Encoding") or ""
    m = _CTE_TOKEN.search(value)
    return m.group(0).lower() if m else ""


def _content_type(msg: Message, default: str) -> str:
    msg.set_default_type(default)
    try:
        ctype = msg.get_content_type().lower()
    except Exception:
        ctype = default
    if "/" not in ctype:
        ctype = default
    return ctype


# --- bodies -----------------------------------------------------------------------------


def decode_body(
    ctx: Context, path: str, buf: bytes, start: int, end: int, cte: str
) -> bytes | None:
    """The decoded body, charged to the budget; None (and unscannable) if it does not fit."""
    ctx.cover(buf, start, end)  # the raw sweep leaves what the walk decodes to the walk
    size = end - start
    if cte == "base64":
        if not ctx.fits(path, size * 3 // 4 + 3):
            return None
        data, defects = decoders.b64decode(buf[start:end])
        for d in defects:
            ctx.defect(path, d)
    elif cte == "quoted-printable":
        if not ctx.fits(path, size):
            return None
        data = decoders.qpdecode(buf[start:end])
    elif cte in _UU_CTE:
        data, over, defects = decoders.uudecode_body(buf[start:end], ctx.remaining)
        for d in defects:
            ctx.defect(path, d)
        if over:
            ctx.fits(path, ctx.remaining + 1)
            return None
    else:
        if cte not in _IDENTITY_CTE:
            ctx.defect(path, f"unknown-transfer-encoding:{cte[:40]}")
        if not ctx.fits(path, size):
            return None
        data = buf[start:end]
    ctx.charge(len(data))
    return data


# --- entities ---------------------------------------------------------------------------


def entity(ctx: Context, node: EntityNode) -> Iterator[Node]:
    """Walk one MIME entity: yield its parts, or its body as a payload."""
    ctx.count_part(node.path)
    block, body_start = split_headers(ctx, node)
    if b"\x00" in block:
        ctx.defect(node.path, "nul-in-headers")
    if not block.isascii():
        ctx.defect(node.path, "8bit-in-headers")
    msg = parse_headers(block)
    if node.root and node.path == "" and not node.containers:
        ctx.message_id = header_text(msg, "Message-ID")
        ctx.subject = header_text(msg, "Subject")

    ctype = _content_type(msg, node.default_type)
    cte = _cte(msg)
    if ctype.startswith("multipart/"):
        yield from _multipart(ctx, node, msg, ctype, cte, body_start)
        return

    path = child_path(node.path, 1) if node.root else node.path
    if ctype == "message/partial":
        ctx.skip(path, core.PARTIAL_MESSAGE, "a fragment of a message split over several mails")
        return
    if ctype == "message/external-body":
        return
    if ctype in MESSAGE_TYPES:
        here = PayloadNode(path, node.containers, b"", None, ctype)
        if not ctx.container_allowed(here, "message"):
            return
        inner = (*node.containers, sniff.MESSAGE)
        if cte in _IDENTITY_CTE:
            yield EntityNode(path, inner, node.buf, body_start, node.end, root=True)
            return
        decoded = decode_body(ctx, path, node.buf, body_start, node.end, cte)
        if decoded is not None:
            yield EntityNode(path, inner, decoded, 0, len(decoded), root=True)
        return

    data = decode_body(ctx, path, node.buf, body_start, node.end, cte)
    if data is None:
        return
    yield PayloadNode(path, node.containers, data, _filename(msg), ctype)


def _guess_boundary(buf: bytes, start: int, end: int) -> str | None:
    m = _GUESS_BOUNDARY.search(buf, start, end)
    if not m:
        return None
    token = m.group(1)
    if token.endswith(b"--"):
        token = token[:-2]
    if not token or buf.count(b"--" + token, start, end) < 2:
        return None
    return token.decode("latin-1")


def _delimiters(
    buf: bytes, start: int, end: int, delim: bytes
) -> Iterator[tuple[int, int, bool]]:
    """Delimiter lines of a multipart body: (line start, line end, is the close delimiter)."""
    pos = start
    n = len(delim)
    while True:
        i = buf.find(delim, pos, end)
        if i < 0:
            return
        pos = i + 1
        if i != start and buf[i - 1] != 0x0A:
            continue
        j = i + n
        closing = buf.startswith(b"--", j, end)
        k = j + 2 if closing else j
        nl = buf.find(b"\n", k, min(end, k + 1024))
        if nl >= 0:
            line_end = nl + 1
        elif end - k <= 1024:
            line_end = end
        else:
            continue  # far too long for a delimiter line
        if buf[k:line_end].strip():
            continue
        yield i, line_end, closing
        pos = line_end


def _before_break(buf: bytes, start: int, i: int) -> int:
    """Where the content before a delimiter line at `i` ends (the line break belongs to the
    delimiter)."""
    if i > start and buf[i - 1] == 0x0A:
        i -= 1
        if i > start and buf[i - 1] == 0x0D:
            i -= 1
    return i


def _multipart(
    ctx: Context, node: EntityNode, msg: Message, ctype: str, cte: str, body_start: int
) -> Iterator[Node]:
    mp_depth = node.mp_depth + 1
    if mp_depth > ctx.limits.max_depth:
        detail = f"multipart nested more than {ctx.limits.max_depth} deep"
        ctx.skip(node.path, core.MAX_DEPTH, detail)
        return
    if ctype == "multipart/encrypted":
        protocol = str(msg.get_param("protocol") or "")
        ctx.skip(node.path, core.ENCRYPTED_MESSAGE, f"multipart/encrypted {protocol}".strip())
    buf, start, end = node.buf, body_start, node.end
    if cte not in _IDENTITY_CTE:
        ctx.defect(node.path, "encoded-multipart")
        decoded = decode_body(ctx, node.path, buf, start, end, cte)
        if decoded is None:
            return
        buf, start, end = decoded, 0, len(decoded)

    boundary = _boundary(msg)
    if boundary is None:
        ctx.defect(node.path, "multipart-without-boundary")
        boundary = _guess_boundary(buf, start, end)
    default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    found = False
    if boundary is not None:
        delim = b"--" + boundary.encode("utf-8", "surrogateescape")
        n = 0
        part_start: int | None = None
        gap_start = start  # preamble, or text between a close delimiter and more parts
        closed = False
        for i, line_end, closing in _delimiters(buf, start, end, delim):
            found = True
            if part_start is not None:
                n += 1
                yield EntityNode(
                    child_path(node.path, n), node.containers, buf, part_start,
                    _before_break(buf, part_start, i), mp_depth=mp_depth, default_type=default,
                )
            else:
                yield from _gap(ctx, node, buf, gap_start, _before_break(buf, gap_start, i),
                                "preamble" if n == 0 else "epilogue")
                if closed and not closing:
                    ctx.defect(node.path, "parts-after-end-boundary")
            if closing:
                part_start = None
                gap_start = line_end
                closed = True
            else:
                part_start = line_end
        if part_start is not None:
            ctx.defect(node.path, "missing-end-boundary")
            n += 1
            yield EntityNode(
                child_path(node.path, n), node.containers, buf, part_start, end,
                mp_depth=mp_depth, default_type=default,
            )
        elif found:
            yield from _gap(ctx, node, buf, gap_start, end, "epilogue")
    if not found:
        if boundary is not None:
            ctx.defect(node.path, "boundary-not-found")
        # Clients show such a body as text; scan it as text.
        path = child_path(node.path, 1) if node.root else node.path
        if ctx.fits(path, end - start):
            data = buf[start:end]
            ctx.charge(len(data))
            yield PayloadNode(path, node.containers, data, _filename(msg), "text/plain")


def _gap(
    ctx: Context, node: EntityNode, buf: bytes, start: int, end: int, name: str
) -> Iterator[Node]:
    """Text outside the parts (preamble, epilogue): no client shows it, but it still travels
    with the message, so a big one is searched like a text body."""
    if end - start <= SCAN_PREAMBLE_BYTES or not ctx.fits(node.path, end - start):
        return
    data = buf[start:end]
    ctx.charge(len(data))
    yield PayloadNode(core.member_path(node.path, name), node.containers, data, None, "text/plain")
