"""The MIME walk: headers, multipart splitting and transfer decoding, numbered like IMAP.

Bodies are never copied on the way down: an entity is a span of the message buffer and a
multipart is split by searching that span for its delimiter lines, lazily, so a message with
100 000 parts costs only as many parts as `max_parts` lets through. Header blocks are parsed
by the stdlib (`compat32`, which never raises on bad headers); everything the RFCs forbid but
mail clients tolerate is tolerated here too and recorded as a defect.

Every plausible reading. Where mail readers disagree about a structure, the entity is read
each way and the union is scanned: the first reading (the one described above) keeps the
entity's path, every other reading is walked under `PATH~N` (`~2/1` is part 1 of the
message's second reading, `2~3` the third reading of part 2), and a leaf that another
reading already handed on is not handed on again. Each disagreement is recorded as an
ambiguity, `code at path`:

    header-block-limit           a header block longer than MAX_HEADER_BYTES: read whole, and
                                 cut there with the rest as body (as readers with a limit do)
    malformed-header-line        a line amid the header fields that is no field (no colon, an
                                 8-bit name): read as the end of the header block, and skipped
    duplicate-content-type       Content-Type fields that say different things: each is read
    content-type-syntax          a Content-Type the stdlib reads differently from RFC 2045
                                 (comments, quoting): both readings
    duplicate-boundary           several boundary parameters: each
    boundary-rfc2231             boundary* (RFC 2231) beside or instead of boundary: each
    boundary-encoded-word        a boundary written as an RFC 2047 word: raw and decoded
    duplicate-transfer-encoding  Content-Transfer-Encoding fields that differ: each
    multipart-with-transfer-encoding  a multipart that declares an encoding (RFC 2045: to be
                                 ignored): raw, and decoded
    boundary-case                delimiter lines that match the boundary only ignoring case
    delimiter-junk               delimiter lines with more than white space after the
                                 boundary (`--B;x`, `--B junk`)
    cr-line-ends                 lone CRs in a header block or before a delimiter: read again
                                 with every lone CR taken as a line break
    message-as-text              a text part that is a whole message: scanned as text and
                                 walked as a message

The signals are cheap tests on what the walk reads anyway (the header fields, the delimiter
lines) plus one memchr pass for dashes per multipart, so an unambiguous message is walked
once, as before. At most MAX_READINGS extra readings are made per message; past that the
entity is unscannable (`max-readings`). Every reading counts its parts against `max_parts`
and its decoded bytes against `max_decoded_bytes`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from urllib.parse import unquote_to_bytes

from mailfilter.extract import core, decoders, sniff
from mailfilter.extract.core import Context, EntityNode, Node, PayloadNode, child_path

# A header block longer than this is also read cut here, with the rest as body (readers
# with a limit, like ours used to be, do that); the whole block is the first reading.
MAX_HEADER_BYTES = 256 * 1024
# A header value longer than this is not given to compat32's parameter parser, which is
# quadratic in the number of `;`s; `parse_content_type` (linear) reads it instead.
MAX_PARAM_CHARS = 16 * 1024
# At most this many tokens of one such value are read.
MAX_PARAM_TOKENS = 1 << 14
# At most this many extra readings of the structure per message.
MAX_READINGS = 32
# At most this many Content-Type / Content-Transfer-Encoding fields are read per entity (the
# first and the last ones), and this many boundary candidates per field.
MAX_FIELD_READINGS = 8
# A boundary candidate longer than this is no boundary any reader uses (RFC 2046: 70).
MAX_BOUNDARY_CHARS = 1024
# A multipart body up to this size is searched for other-case and CR delimiters by whole-
# buffer passes; a bigger one first by memchr for dashes.
SMALL_BODY = 64 * 1024
# A preamble or epilogue longer than this is searched for hidden payloads (uuencode etc.).
SCAN_PREAMBLE_BYTES = 256

# Ambiguity codes (stable: results, logs and the on_ambiguous policy use them).
HEADER_BLOCK_LIMIT = "header-block-limit"
MALFORMED_HEADER_LINE = "malformed-header-line"
DUPLICATE_CONTENT_TYPE = "duplicate-content-type"
CONTENT_TYPE_SYNTAX = "content-type-syntax"
DUPLICATE_BOUNDARY = "duplicate-boundary"
BOUNDARY_RFC2231 = "boundary-rfc2231"
BOUNDARY_ENCODED_WORD = "boundary-encoded-word"
DUPLICATE_TRANSFER_ENCODING = "duplicate-transfer-encoding"
MULTIPART_WITH_TRANSFER_ENCODING = "multipart-with-transfer-encoding"
BOUNDARY_CASE = "boundary-case"
DELIMITER_JUNK = "delimiter-junk"
CR_LINE_ENDS = "cr-line-ends"
MESSAGE_AS_TEXT = "message-as-text"

MESSAGE_TYPES = frozenset(
    {"message/rfc822", "message/global", "message/news", "text/rfc822-headers"}
)
_IDENTITY_CTE = frozenset({"", "7bit", "8bit", "binary", "none"})
_UU_CTE = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})

_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_CONTENT_FIELD = re.compile(rb"content-[!-9;-~]*[ \t]*:", re.I)
_CTE_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")
_GUESS_BOUNDARY = re.compile(rb"^--([!-~]{1,200}?)(--)?[ \t]*\r?$", re.M)
_LONE_CR = re.compile(rb"\r(?!\n)")

_LINE_BREAK = re.compile(r"\r?\n")
_FIELD = re.compile(r"([!-9;-~]+)[ \t]*:(.*)", re.S)
# Fields kept from a header block past MAX_HEADER_BYTES (the rest cannot change the walk).
_KEPT_PAST_LIMIT = ("content-", "message-id", "subject", "mime-version")

# RFC 2045 tokens of a parameterised header value: white space, a quoted string (possibly
# unterminated), a separator, the start of a comment, an atom, a stray ")".
_CT_TOKEN = re.compile(
    r'[ \t\r\n]+|"([^"\\]*(?:\\.[^"\\]*)*)"?|([;=/])|(\()|([^ \t\r\n();=/"]+)|\)', re.S
)
_COMMENT_PART = re.compile(r"\\.|[()]", re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_RFC2231_SECTION = re.compile(r"boundary\*([0-9]{1,3})(\*?)")
# RFC 2046 bcharsnospace: a delimiter line whose boundary is followed by one of these is
# another, longer boundary, not this one with junk after it.
_BCHARS = frozenset(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=?"
)


# --- headers ---------------------------------------------------------------------------


@dataclass(slots=True)
class HeaderSplit:
    """Where an entity's header block ends (see `split_headers`)."""

    block: bytes
    body_start: int
    # where a line that is neither a header field nor a continuation ended the block, or -1
    stray: int = -1
    # a lone CR inside a header line (some readers take it for a line break)
    lone_cr: bool = False


def split_headers(ctx: Context, node: EntityNode) -> HeaderSplit:
    """The header block of the entity and where its body starts.

    The block ends at the first empty line; a line that is neither a header field nor a
    continuation also ends it (that line starts the body), as in most clients. It is never
    cut by length (linear: every line is looked at once, at most 1 KiB of it).
    """
    buf, pos, end = node.buf, node.start, node.end
    lone_cr = False
    while pos < end:
        nl = buf.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = buf[pos : min(line_end, pos + 1024)]
        content = line.rstrip(b"\r\n")
        if not content:
            return HeaderSplit(buf[node.start : pos], line_end, -1, lone_cr)
        if b"\r" in content:
            lone_cr = True
        if content[:1] in (b" ", b"\t") and pos != node.start:
            pos = line_end
            continue
        if _HEADER_LINE.match(content) or (pos == node.start and content.startswith(b"From ")):
            pos = line_end  # a header field (or, first, the From_ line of an mbox)
            continue
        if pos != node.start:
            ctx.defect(node.path, "missing-header-body-separator")
        return HeaderSplit(buf[node.start : pos], pos, pos, lone_cr)
    if node.end > node.start:
        ctx.defect(node.path, "missing-body")
    return HeaderSplit(buf[node.start : end], end, -1, lone_cr)


class Fields(Message):
    """A compat32 Message that also lists every Content-Type and Content-Transfer-Encoding
    value, in order (readers disagree about which one counts)."""

    def __init__(self) -> None:
        super().__init__()
        self.types: list[str] = []
        self.encodings: list[str] = []
        # the first value of each field, by lower-cased name (`header_text`)
        self.first: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        """`self[name] = value` without the policy's indirections: compat32 stores the pair
        as it is and limits no field's count (a microsecond a field, a third of the parse)."""
        self._headers.append((name, value))  # type: ignore[attr-defined]  # (not in typeshed)
        self.first.setdefault(name.lower(), value)

    def note(self, name: str, value: str) -> None:
        """Called for the fields whose name starts with C or c."""
        lname = name.lower()
        if lname == "content-type":
            self.types.append(value)
        elif lname == "content-transfer-encoding":
            self.encodings.append(value)


def parse_headers(block: bytes, mime_only: bool = False) -> Fields:
    """The header fields, unfolded, in a compat32 Message (whose accessors parse parameters,
    RFC 2231 and defaults). 8-bit bytes are read as UTF-8 (what nearly all raw 8-bit headers
    are), else as Windows-1252. Lines that are no header field are left out. `mime_only`:
    keep only the fields that matter to the walk (for header blocks of any size)."""
    if block.isascii():
        text = block.decode("ascii")
    else:
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            text = block.decode("cp1252", "replace")
    msg = Fields()
    name: str | None = None
    value: list[str] = []
    for line in _LINE_BREAK.split(text):
        if line[:1] in (" ", "\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            field_value = "".join(value).rstrip()
            msg.add(name, field_value)
            if name[0] in "Cc":
                msg.note(name, field_value)
        m = _FIELD.match(line)
        if m and (not mime_only or m.group(1).lower().startswith(_KEPT_PAST_LIMIT)):
            name, value = m.group(1), [m.group(2).lstrip(" \t")]
        else:
            name = None
    if name is not None:
        field_value = "".join(value).rstrip()
        msg.add(name, field_value)
        if name[0] in "Cc":
            msg.note(name, field_value)
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
    if isinstance(msg, Fields):  # (fields are only ever added by `Fields.add`)
        first = msg.first.get(lname)
        return None if first is None else _decode_words(" ".join(first.split()))
    for key, value in msg.raw_items():
        if key.lower() == lname:
            return _decode_words(" ".join(str(value).split()))
    return None


def parse_content_type(value: str) -> tuple[str, list[tuple[str, str]]]:
    """The type/subtype (lowercase; "" if it is none) and the parameters (names lowercase,
    values unquoted, in order, duplicates kept) of a Content-Type or Content-Disposition
    value, read as RFC 2045 says: comments dropped, quoted strings whole. Linear in the
    value, and at most MAX_PARAM_TOKENS tokens of it."""
    segments: list[list[tuple[bool, str]]] = [[]]  # per `;`: (is a separator, text)
    pos, n, tokens = 0, len(value), 0
    while pos < n and tokens < MAX_PARAM_TOKENS:
        m = _CT_TOKEN.match(value, pos)
        if m is None:  # cannot happen: every character starts some token
            break
        pos = m.end()
        tokens += 1
        quoted, sep, comment, atom = m.group(1), m.group(2), m.group(3), m.group(4)
        if comment:
            depth = 1
            for c in _COMMENT_PART.finditer(value, pos):
                tokens += 1
                if tokens >= MAX_PARAM_TOKENS:
                    pos = n
                    break
                if c.group() == "(":
                    depth += 1
                elif c.group() == ")":
                    depth -= 1
                    if depth == 0:
                        pos = c.end()
                        break
            else:
                pos = n  # an unterminated comment runs to the end
            continue
        if sep == ";":
            segments.append([])
        elif quoted is not None:
            if "\\" in quoted and len(quoted) <= MAX_BOUNDARY_CHARS:
                quoted = _QUOTED_PAIR.sub(_unescaped, quoted)
            segments[-1].append((False, quoted))
        elif sep:
            segments[-1].append((True, sep))
        elif atom:
            segments[-1].append((False, atom))
    head = "".join(text for _sep, text in segments[0]).lower()
    major, slash, minor = head.partition("/")
    ctype = head if slash and major and minor and "/" not in minor else ""
    params: list[tuple[str, str]] = []
    for seg in segments[1:]:
        eq = next((i for i, (is_sep, text) in enumerate(seg) if is_sep and text == "="), -1)
        if eq <= 0:
            continue
        name = "".join(text for _sep, text in seg[:eq]).strip().lower()
        params.append((name, "".join(text for _sep, text in seg[eq + 1 :])))
    return ctype, params


def _unescaped(m: re.Match[str]) -> str:
    return m.group(1)


def _rfc2231_text(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset or "us-ascii", "replace")
    except LookupError:
        return data.decode("latin-1")


def boundary_candidates(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every boundary a reader could take from these parameters, each with the ambiguity
    code that makes it a candidate ("" for the first plain `boundary`)."""
    out: list[tuple[str, str]] = []
    plain = 0
    sections: dict[int, tuple[bool, str]] = {}
    for name, value in params:
        if name == "boundary":
            out.append((value, DUPLICATE_BOUNDARY if plain else ""))
            plain += 1
        elif name == "boundary*":
            charset, _lang, text = value.split("'", 2) if value.count("'") >= 2 else ("", "", value)
            out.append((_rfc2231_text(unquote_to_bytes(text), charset), BOUNDARY_RFC2231))
        elif (m := _RFC2231_SECTION.fullmatch(name)) is not None:
            sections.setdefault(int(m.group(1)), (bool(m.group(2)), value))
    if sections:
        charset = ""
        pieces: list[bytes] = []
        for i in sorted(sections)[:64]:
            extended, value = sections[i]
            if extended:
                if i == 0 and value.count("'") >= 2:
                    charset, _lang, value = value.split("'", 2)
                pieces.append(unquote_to_bytes(value))
            else:
                pieces.append(value.encode("utf-8", "surrogateescape"))
        out.append((_rfc2231_text(b"".join(pieces), charset), BOUNDARY_RFC2231))
    for value, _code in list(out):
        if "=?" in value:
            decoded = _decode_words(value)
            if decoded != value:
                out.append((decoded, BOUNDARY_ENCODED_WORD))
    return [(value, code) for value, code in out
            if value and len(value) <= MAX_BOUNDARY_CHARS][:MAX_FIELD_READINGS]


_LENIENT_BOUNDARY = re.compile(
    r"""boundary\*?[ \t]*=[ \t]*(?:"([^"]*)"|'([^']*)'|([^\s;,]+))""", re.I
)


def lenient_boundaries(values: list[str]) -> list[str]:
    """Boundaries that lenient readers find in Content-Type values where a parameter parser
    finds none, or none that delimits anything: `boundary=` anywhere (after a missing `;`
    or a `,`), in single quotes, or with its quotes taken as part of it."""
    out: list[str] = []
    for value in values[:MAX_FIELD_READINGS]:
        for m in _LENIENT_BOUNDARY.finditer(value):
            double, single, bare = m.groups()
            found = ([double, f'"{double}"'] if double is not None
                     else [single, f"'{single}'"] if single is not None else [bare])
            out += [b for b in found if b and b not in out]
            if len(out) >= MAX_FIELD_READINGS:
                return out
    return out


def _delimits(buf: bytes, start: int, end: int, boundary: str) -> bool:
    """Whether `--boundary` occurs in the body at all (a candidate worth a reading)."""
    return buf.find(b"--" + boundary.encode("utf-8", "surrogateescape"), start, end) >= 0


def _filename(msg: Message) -> str | None:
    values = [str(value) for key, value in msg.raw_items()
              if key.lower() in ("content-type", "content-disposition")]
    if not any("name" in value.lower() for value in values):
        return None
    name: object = None
    if any(len(value) > MAX_PARAM_CHARS for value in values):
        name = next((v for value in values for k, v in parse_content_type(value)[1]
                     if k in ("filename", "name")), None)
    else:
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
    value = msg.get("content-type")
    if value is not None and len(str(value)) > MAX_PARAM_CHARS:
        found = boundary_candidates(parse_content_type(str(value))[1])
        return found[0][0] if found else None
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


# --- readings ---------------------------------------------------------------------------


@dataclass(slots=True)
class _View:
    """One reading of an entity: its fields, where its body starts, and what it is."""

    msg: Fields
    body_start: int
    ctype: str
    cte: str
    boundary: str | None  # None for a multipart: guessed from the body
    code: str = ""  # the ambiguity this reading answers ("" for the first reading)

    def key(self) -> tuple[int, str, str, str | None]:
        return (self.body_start, self.ctype, self.cte, self.boundary)


def _ambiguous(ctx: Context, path: str, code: str) -> None:
    ctx.ambiguity(path, code)
    if ctx.seen_leaves is None:
        ctx.seen_leaves = set()


def _fresh(ctx: Context, alternate: bool, data: bytes, ctype: str | None) -> bool:
    """Whether a leaf is to be handed on: always, unless it belongs to another reading and
    the same bytes, declared the same, were handed on already."""
    seen = ctx.seen_leaves
    if seen is None:
        return True
    key = (hashlib.blake2b(data, digest_size=16).digest(), ctype)
    if key in seen:
        return not alternate
    seen.add(key)
    return True


class _Readings:
    """The paths of one entity's extra readings (`path~2`, `path~3`, ...), within
    MAX_READINGS per message."""

    def __init__(self, ctx: Context, path: str) -> None:
        self.ctx = ctx
        self.path = path
        self.n = 1

    def next(self) -> str | None:
        if self.ctx.readings >= MAX_READINGS:
            self.ctx.skip(self.path, core.MAX_READINGS,
                          f"more than {MAX_READINGS} readings of an ambiguous structure")
            return None
        self.ctx.readings += 1
        self.n += 1
        return f"{self.path}~{self.n}"


@dataclass(slots=True)
class _Findings:
    """What one reading of a multipart body saw that other readers take differently."""

    found: bool = False  # a delimiter line
    loose: bool = False  # a delimiter line with junk after the boundary
    lone_cr: bool = False  # a delimiter after, or followed by, a lone CR
    spans: set[tuple[int, int]] = field(default_factory=set)  # parts and gaps handed on


# What a leaf reading passes on (it never writes to it): no multipart findings.
_LEAF = _Findings()


def _ct_signal(value: str) -> bool:
    """Whether a Content-Type value could read differently to RFC 2045 than to the stdlib
    (comments, encoded words, RFC 2231, escapes, several boundaries, a huge value)."""
    return (
        "(" in value or "=?" in value or "*" in value or "\\" in value
        or len(value) > MAX_PARAM_CHARS or value.lower().count("boundary") > 1
    )


def _ends(values: list[str]) -> list[str]:
    """The fields a reader may take: the first ones and the last ones."""
    if len(values) <= MAX_FIELD_READINGS:
        return values
    half = MAX_FIELD_READINGS // 2
    return values[:half] + values[-half:]


def _first_view(msg: Fields, body_start: int, default: str, code: str = "") -> _View:
    """The stdlib's reading of a header block (the first Content-Type, its first boundary,
    the first Content-Transfer-Encoding)."""
    ctype = _content_type(msg, default)
    boundary = _boundary(msg) if ctype.startswith("multipart/") else None
    return _View(msg, body_start, ctype, _cte(msg), boundary, code)


def _field_views(msg: Fields, first: _View, default: str, node: EntityNode) -> list[_View]:
    """The other readings of the same header fields: every Content-Type read as RFC 2045
    says, with every boundary it names; every Content-Transfer-Encoding of a leaf."""
    out: list[_View] = []
    types, encodings = msg.types, msg.encodings
    if len(types) > 1 or (types and _ct_signal(types[0])):
        for i, value in enumerate(_ends(types)):
            ctype, params = parse_content_type(value)
            if not ctype:
                if i == 0:
                    continue  # no type at all: the stdlib's default stands
                ctype = default
            candidates: list[tuple[str | None, str]] = []
            if ctype.startswith("multipart/"):
                candidates.extend(boundary_candidates(params))
            for boundary, code in candidates or [(None, "")]:
                code = DUPLICATE_CONTENT_TYPE if i else (code or CONTENT_TYPE_SYNTAX)
                out.append(_View(msg, first.body_start, ctype, first.cte, boundary, code))
    if first.boundary is None and first.ctype.startswith("multipart/"):
        # no boundary parameter to the stdlib: lenient readers find one anyway
        for boundary in lenient_boundaries(types):
            if _delimits(node.buf, first.body_start, node.end, boundary):
                out.append(_View(msg, first.body_start, first.ctype, first.cte, boundary,
                                 CONTENT_TYPE_SYNTAX))
    if len(encodings) > 1 and not first.ctype.startswith("multipart/"):
        for value in _ends(encodings):
            m = _CTE_TOKEN.search(_decode_words(value))
            cte = m.group(0).lower() if m else ""
            out.append(_View(msg, first.body_start, first.ctype, cte, first.boundary,
                             DUPLICATE_TRANSFER_ENCODING))
    return out


def _past_stray(buf: bytes, stray: int, end: int) -> tuple[bytes, int] | None:
    """For a header block ended by a stray line: the header fields after it up to the empty
    line (within MAX_HEADER_BYTES), and where the body then starts. None unless a Content-*
    field is among them (else the reading that skips the stray line changes nothing)."""
    kept: list[bytes] = []
    keep = content_field = False
    pos = stray
    stop = min(end, stray + MAX_HEADER_BYTES)
    while pos < stop:
        nl = buf.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        content = buf[pos : min(line_end, pos + 1024)].rstrip(b"\r\n")
        if not content:
            return (b"".join(kept), line_end) if content_field else None
        if content[:1] in (b" ", b"\t"):
            if keep:
                kept.append(buf[pos:line_end])
        elif _HEADER_LINE.match(content):
            keep = True
            kept.append(buf[pos:line_end])
            content_field = content_field or _CONTENT_FIELD.match(content) is not None
        else:
            keep = False
        pos = line_end
    return None


def _views(ctx: Context, node: EntityNode, head: HeaderSplit, msg: Fields) -> list[_View]:
    """Every reading of the entity's header block, the stdlib's first, the same ones once."""
    default = node.default_type
    primary = _first_view(msg, head.body_start, default)
    if (head.stray < 0 and len(head.block) <= MAX_HEADER_BYTES
            and not (primary.boundary is None and primary.ctype.startswith("multipart/"))):
        types = msg.types
        if len(types) <= 1 and len(msg.encodings) <= 1 and not (types and _ct_signal(types[0])):
            return [primary]  # nothing to read another way (nearly all entities)
    blocks: list[tuple[Fields, int, str]] = []
    if len(head.block) > MAX_HEADER_BYTES:
        ctx.defect(node.path, "header-too-long")
        nl = node.buf.find(b"\n", node.start + MAX_HEADER_BYTES - 1, node.end)
        cut = node.end if nl < 0 else nl + 1
        cut_fields = parse_headers(node.buf[node.start : cut], mime_only=True)
        blocks.append((cut_fields, cut, HEADER_BLOCK_LIMIT))
    if head.stray >= 0:
        more = _past_stray(node.buf, head.stray, node.end)
        if more is not None:
            fields = head.block + more[0]
            extended = parse_headers(fields, mime_only=len(fields) > MAX_HEADER_BYTES)
            blocks.append((extended, more[1], MALFORMED_HEADER_LINE))
    views = [primary, *_field_views(msg, primary, default, node)]
    for fields_msg, body_start, code in blocks:
        first = _first_view(fields_msg, body_start, default, code)
        views += [first, *_field_views(fields_msg, first, default, node)]
    keys: set[tuple[int, str, str, str | None]] = set()
    out: list[_View] = []
    for view in views:
        if view.key() not in keys:
            keys.add(view.key())
            out.append(view)
    return out


# --- entities ---------------------------------------------------------------------------


def entity(ctx: Context, node: EntityNode) -> Iterator[Node]:
    """Walk one MIME entity: yield its parts, or its body as a payload; then, if readers
    could take it differently, each other reading."""
    ctx.count_part(node.path)
    head = split_headers(ctx, node)
    block = head.block
    if b"\x00" in block:
        ctx.defect(node.path, "nul-in-headers")
    if not block.isascii():
        ctx.defect(node.path, "8bit-in-headers")
    msg = parse_headers(block, mime_only=len(block) > MAX_HEADER_BYTES)
    if node.root and node.path == "" and not node.containers:
        ctx.message_id = header_text(msg, "Message-ID")
        ctx.subject = header_text(msg, "Subject")

    primary, *alternates = _views(ctx, node, head, msg)
    for view in alternates:
        _ambiguous(ctx, node.path, view.code)
    if head.lone_cr:
        _ambiguous(ctx, node.path, CR_LINE_ENDS)
    readings = _Readings(ctx, node.path)
    findings = _Findings() if primary.ctype.startswith("multipart/") else _LEAF
    yield from _read(ctx, node, node.path, primary, node.alternate, readings, findings)
    for view in alternates:
        path = readings.next()
        if path is None:
            return
        yield from _read(ctx, node, path, view, True, readings, _Findings())
    if head.lone_cr or findings.lone_cr:
        path = readings.next()
        if path is None or not ctx.fits(path, node.end - node.start):
            return
        data = _LONE_CR.sub(b"\n", node.buf[node.start : node.end])
        ctx.charge(len(data))
        yield EntityNode(path, node.containers, data, 0, len(data), root=node.root,
                         mp_depth=node.mp_depth, default_type=node.default_type,
                         alternate=True)


def _read(
    ctx: Context, node: EntityNode, path: str, view: _View, alternate: bool,
    readings: _Readings, findings: _Findings,
) -> Iterator[Node]:
    """One reading of an entity, walked at `path`."""
    ctype = view.ctype
    if ctype.startswith("multipart/"):
        yield from _multipart(ctx, node, path, view, alternate, readings, findings)
        return

    leaf = child_path(path, 1) if node.root else path
    if ctype == "message/partial":
        ctx.skip(leaf, core.PARTIAL_MESSAGE, "a fragment of a message split over several mails")
        return
    if ctype == "message/external-body":
        return
    if ctype in MESSAGE_TYPES:
        here = PayloadNode(leaf, node.containers, b"", None, ctype)
        if not ctx.container_allowed(here, "message"):
            return
        inner = (*node.containers, sniff.MESSAGE)
        if view.cte in _IDENTITY_CTE:
            yield EntityNode(leaf, inner, node.buf, view.body_start, node.end, root=True,
                             alternate=alternate)
            return
        decoded = decode_body(ctx, leaf, node.buf, view.body_start, node.end, view.cte)
        if decoded is not None:
            yield EntityNode(leaf, inner, decoded, 0, len(decoded), root=True,
                             alternate=alternate)
        return

    data = decode_body(ctx, leaf, node.buf, view.body_start, node.end, view.cte)
    if data is None or not _fresh(ctx, alternate, data, ctype):
        return
    yield PayloadNode(leaf, node.containers, data, _filename(view.msg), ctype)
    if ctype.startswith("text/") and _may_be_message(data):
        # A saved message sent as text: some clients show it as the message it is.
        _ambiguous(ctx, leaf, MESSAGE_AS_TEXT)
        here = PayloadNode(leaf, node.containers, b"", None, "message/rfc822")
        if ctx.container_allowed(here, "message"):
            yield EntityNode(leaf, (*node.containers, sniff.MESSAGE), data, 0, len(data),
                             root=True, alternate=alternate)


def _may_be_message(data: bytes) -> bool:
    """Whether a text body is a whole message (a header field first: cheap to rule out)."""
    if not (_HEADER_LINE.match(data, 0, 256) or data.startswith(b"From ")):
        return False
    return sniff.looks_like_message(data)


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
    buf: bytes, start: int, end: int, delim: bytes, findings: _Findings,
    fold: bool = False, loose: bool = False,
) -> Iterator[tuple[int, int, bool]]:
    """Delimiter lines of a multipart body: (line start, line end, is the close delimiter).

    `fold`: match the boundary ignoring case; `loose`: accept junk after the boundary that
    cannot be part of a longer one (`--B;x`, `--B junk`). What a strict reading rejects but
    others accept is noted in `findings`.
    """
    folded = re.compile(re.escape(delim), re.I) if fold else None  # (no copy of the body)
    pos = start
    n = len(delim)
    while True:
        if folded is None:
            i = buf.find(delim, pos, end)
        else:
            m = folded.search(buf, pos, end)
            i = -1 if m is None else m.start()
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
        rest = buf[k:line_end]
        if rest.strip():
            if rest[0] in _BCHARS:
                continue  # a longer boundary, not this one
            if rest[0] == 0x0D and rest[1:2] != b"\n":
                findings.lone_cr = True  # `--B` CR, then the part: a CR reading sees it
                continue
            if not loose:
                findings.loose = True
                continue
        yield i, line_end, closing
        pos = line_end


def _variant_lines(buf: bytes, start: int, end: int, delim: bytes) -> tuple[bool, bool]:
    """Whether the body has delimiter lines only other readers see: `delim` in another case
    at the start of a line, and `delim` after a lone CR.

    Small bodies (most text mail) are searched by two regex or find passes (about 1 us per
    KiB each). Big ones mostly carry base64, which has no "-": memchr passes over it to the
    few dashes there are, and after a few dashes the rest is searched by the same passes, so
    the cost stays linear and small."""
    low = delim.lower()
    n = len(delim)
    has_case = low != delim.upper()  # only letters have another case
    case = cr = False
    i = start
    if end - start > SMALL_BODY:
        budget = 16 + (end - start) // 4096
        pos = start
        while not (case and cr):
            i = buf.find(b"-", pos, end)
            if i < 0 or i + 1 >= end:
                return case, cr
            budget -= 1
            if budget < 0:
                break
            prev = buf[i - 1] if i > start else 0x0A
            if prev in (0x0A, 0x0D) and buf[i + 1] == 0x2D:
                if prev == 0x0D and not cr:
                    cr = buf[i : i + n].lower() == low
                elif prev == 0x0A and has_case and not case:
                    segment = buf[i : i + n]
                    case = segment != delim and segment.lower() == low
                pos = i + max(n, 2)
                continue
            # a dash inside a line: go on from the next line break (LF, or a lone CR)
            nl = buf.find(b"\n", i, end)
            nl = end if nl < 0 else nl
            r = buf.find(b"\r", i, nl)
            pos = nl if r < 0 else r
        else:
            return case, cr
    # Whole-buffer passes from `i`.
    if has_case and not case:
        if i == start and buf[i : i + n] != delim and buf[i : i + n].lower() == low:
            return True, cr or _cr_delimiter(buf, i, end, low)
        # "\n-" is a literal prefix the regex engine searches fast; the rest ignores case
        other_case = re.compile(b"\n-(?i:" + re.escape(delim[1:]) + b")")
        for m in other_case.finditer(buf, max(i - 1, 0), end):
            if buf[m.start() + 1 : m.end()] != delim:
                case = True
                break
    return case, cr or _cr_delimiter(buf, i, end, low)


def _cr_delimiter(buf: bytes, start: int, end: int, low: bytes) -> bool:
    """Whether a delimiter (any case) follows a lone CR somewhere in buf[start:end]."""
    if buf.find(b"\r", start, end) < 0:
        return False
    pos = max(start - 1, 0)
    while (j := buf.find(b"\r--", pos, end)) >= 0:
        if buf[j + 1 : j + 1 + len(low)].lower() == low:
            return True
        pos = j + 1
    return False


def _before_break(buf: bytes, start: int, i: int) -> int:
    """Where the content before a delimiter line at `i` ends (the line break belongs to the
    delimiter)."""
    if i > start and buf[i - 1] == 0x0A:
        i -= 1
        if i > start and buf[i - 1] == 0x0D:
            i -= 1
    return i


@dataclass(slots=True)
class _Body:
    """A multipart body to split: where, by what, and how leniently."""

    buf: bytes
    start: int
    end: int
    boundary: str
    fold: bool = False
    loose: bool = False


def _multipart(
    ctx: Context, node: EntityNode, path: str, view: _View, alternate: bool,
    readings: _Readings, findings: _Findings,
) -> Iterator[Node]:
    mp_depth = node.mp_depth + 1
    if mp_depth > ctx.limits.max_depth:
        detail = f"multipart nested more than {ctx.limits.max_depth} deep"
        ctx.skip(path, core.MAX_DEPTH, detail)
        return
    if view.ctype == "multipart/encrypted":
        protocol = str(view.msg.get_param("protocol") or "")
        # (filed under the entity, so that another reading of it does not file it again)
        ctx.skip(node.path, core.ENCRYPTED_MESSAGE, f"multipart/encrypted {protocol}".strip())
    buf, start, end = node.buf, view.body_start, node.end
    boundary = view.boundary
    if boundary is None:
        ctx.defect(path, "multipart-without-boundary")
        boundary = _guess_boundary(buf, start, end)
    decoded: bytes | None = None
    if view.cte not in _IDENTITY_CTE:
        # RFC 2045 says a multipart has no transfer encoding of its own; readers that
        # decode it anyway see another body: read it raw first, then decoded.
        ctx.defect(path, "encoded-multipart")
        _ambiguous(ctx, path, MULTIPART_WITH_TRANSFER_ENCODING)
        if view.cte == "quoted-printable":
            decoded = _qp_escapes(ctx, path, buf, start, end)
        else:
            decoded = decode_body(ctx, path, buf, start, end, view.cte)
        if decoded is not None and decoded == buf[start:end]:
            decoded = None
    default = "message/rfc822" if view.ctype == "multipart/digest" else "text/plain"

    body = _Body(buf, start, end, boundary) if boundary is not None else None
    if body is not None:
        yield from _split(ctx, node, path, mp_depth, default, alternate, body, findings)
    if not findings.found and decoded is not None:
        # Nothing delimits the raw body: a multipart encoded whole, as some senders do.
        guess = view.boundary or _guess_boundary(decoded, 0, len(decoded))
        if guess is not None:
            encoded = _Body(decoded, 0, len(decoded), guess)
            yield from _split(ctx, node, path, mp_depth, default, alternate, encoded, findings)
            if findings.found:
                body, boundary, decoded = encoded, guess, None
    if not findings.found:
        if boundary is not None:
            ctx.defect(path, "boundary-not-found")
        # Clients show such a body as text; scan it as text.
        leaf = child_path(path, 1) if node.root else path
        text = decoded if decoded is not None else buf[start:end]
        if ctx.fits(leaf, len(text)):
            ctx.charge(len(text))
            if _fresh(ctx, alternate, text, "text/plain"):
                yield PayloadNode(leaf, node.containers, text, _filename(view.msg), "text/plain")

    others: list[_Body] = []
    if not findings.found and view.boundary is not None:
        # No delimiter: lenient readers may take the boundary with its quotes, or from
        # single quotes.
        for candidate in lenient_boundaries(view.msg.types):
            if candidate != view.boundary and _delimits(buf, start, end, candidate):
                _ambiguous(ctx, path, CONTENT_TYPE_SYNTAX)
                others.append(_Body(buf, start, end, candidate))
    if decoded is not None and body is not None:
        # The raw body has parts; a decoding reader sees more only where decoding makes
        # delimiter lines (decoding base64 parts as quoted-printable only damages them).
        delim = b"--" + body.boundary.encode("utf-8", "surrogateescape")
        if decoded.count(delim) > body.buf.count(delim, body.start, body.end):
            others.append(_Body(decoded, 0, len(decoded), body.boundary))
    if body is not None:
        delim = b"--" + body.boundary.encode("utf-8", "surrogateescape")
        case, cr = _variant_lines(body.buf, body.start, body.end, delim)
        if cr or findings.lone_cr:
            findings.lone_cr = True  # the entity is read again with CRs as line breaks
            _ambiguous(ctx, path, CR_LINE_ENDS)
        if case:
            _ambiguous(ctx, path, BOUNDARY_CASE)
            others.append(_Body(body.buf, body.start, body.end, body.boundary, fold=True))
        if findings.loose:
            _ambiguous(ctx, path, DELIMITER_JUNK)
            others.append(_Body(body.buf, body.start, body.end, body.boundary, loose=True))
        if case and findings.loose:
            others.append(
                _Body(body.buf, body.start, body.end, body.boundary, fold=True, loose=True))
    for other in others:
        alt = readings.next()
        if alt is None:
            return
        skip = findings.spans if body is not None and other.buf is body.buf else None
        yield from _split(ctx, node, alt, mp_depth, default, True, other, _Findings(), skip)


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _qp_escapes(ctx: Context, path: str, buf: bytes, start: int, end: int) -> bytes | None:
    """A quoted-printable multipart as a decoding reader splits it: `=XX` escapes decoded,
    but line breaks kept (soft ones too), so that the base64 parts inside, whose `=`
    padding ends a line, come through whole. Charged to the budget."""
    if not ctx.fits(path, end - start):
        return None
    data = _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), buf[start:end])
    ctx.charge(len(data))
    return data


def _split(
    ctx: Context, node: EntityNode, path: str, mp_depth: int, default: str, alternate: bool,
    body: _Body, findings: _Findings, skip: set[tuple[int, int]] | None = None,
) -> Iterator[Node]:
    """The parts (and big preamble or epilogue) of one multipart body, numbered under
    `path`; parts and gaps whose span is in `skip` (walked by another reading) are left
    out."""
    buf, start, end = body.buf, body.start, body.end
    delim = b"--" + body.boundary.encode("utf-8", "surrogateescape")
    n = 0
    part_start: int | None = None
    gap_start = start  # preamble, or text between a close delimiter and more parts
    closed = False
    for i, line_end, closing in _delimiters(buf, start, end, delim, findings, body.fold,
                                            body.loose):
        findings.found = True
        if part_start is not None:
            n += 1
            span = (part_start, _before_break(buf, part_start, i))
            if skip is None or span not in skip:
                findings.spans.add(span)
                yield EntityNode(
                    child_path(path, n), node.containers, buf, span[0], span[1],
                    mp_depth=mp_depth, default_type=default, alternate=alternate,
                )
        else:
            span = (gap_start, _before_break(buf, gap_start, i))
            if skip is None or span not in skip:
                findings.spans.add(span)
                yield from _gap(ctx, node, path, buf, span, "preamble" if n == 0 else "epilogue",
                                alternate)
            if closed and not closing:
                ctx.defect(path, "parts-after-end-boundary")
        if closing:
            part_start = None
            gap_start = line_end
            closed = True
        else:
            part_start = line_end
    if part_start is not None:
        ctx.defect(path, "missing-end-boundary")
        n += 1
        if skip is None or (part_start, end) not in skip:
            findings.spans.add((part_start, end))
            yield EntityNode(
                child_path(path, n), node.containers, buf, part_start, end,
                mp_depth=mp_depth, default_type=default, alternate=alternate,
            )
    elif findings.found and (skip is None or (gap_start, end) not in skip):
        findings.spans.add((gap_start, end))
        yield from _gap(ctx, node, path, buf, (gap_start, end), "epilogue", alternate)


def _gap(
    ctx: Context, node: EntityNode, path: str, buf: bytes, span: tuple[int, int], name: str,
    alternate: bool,
) -> Iterator[Node]:
    """Text outside the parts (preamble, epilogue): no client shows it, but it still travels
    with the message, so a big one is searched like a text body."""
    start, end = span
    if end - start <= SCAN_PREAMBLE_BYTES or not ctx.fits(path, end - start):
        return
    data = buf[start:end]
    ctx.charge(len(data))
    if _fresh(ctx, alternate, data, "text/plain"):
        yield PayloadNode(core.member_path(path, name), node.containers, data, None, "text/plain")
