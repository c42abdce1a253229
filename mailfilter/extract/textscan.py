"""Payloads hidden in text: uuencoded blocks, `data:` URIs (HTML bodies, CSS, SVG, anywhere,
also written the ways browsers accept), BinHex, RTF pictures and objects, bodies that are bare
base64 without a transfer encoding saying so, and base64 runs anywhere in the text (vCard
photos, flat ODF, headers of attached messages). Text in UTF-16 or UTF-7 is read that way
too. Payloads that are not text (unknown binary) are also carved for signatures.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.entities import html5
from urllib.parse import unquote_to_bytes

from mailfilter.extract import decoders, sniff, sweep
from mailfilter.extract.core import Context, NeedsWorker, Node, PayloadNode
from mailfilter.extract.sweep import Children

_TOKEN = rb"[A-Za-z0-9!#$&^_.+-]{1,127}"
# data:[<type>][;param[=value]]...[;base64],<data> with the slack browsers allow: spaces
# around the type and parameters, quoted values (`name="a;b"`), any case.
_DATA_URI = re.compile(
    rb"data:[ \t]*(" + _TOKEN + rb"/" + _TOKEN + rb")?[ \t]*"
    rb"((?:;[ \t]*" + _TOKEN + rb"[ \t]*(?:=[ \t]*(?:\"[^\"\r\n]{0,256}\"|[^;,\"'<>\s]{0,256}))?"
    rb"[ \t]*){0,16}),",
    re.I,
)
_IS_BASE64 = re.compile(rb";[ \t]*base64[ \t]*(?:;|$)", re.I)
_BASE64_DATA = re.compile(rb"[A-Za-z0-9+/%\s]*=*(?:%3D)*", re.I)
_PLAIN_DATA = re.compile(rb"[^\"'\s<>)]*")
_B64_OR_SPACE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
# A UTF-7 shifted sequence that starts with a character markup needs (`+ADw-` is "<"; then
# > " : ; = , /) and is closed by "-" (a whole document may be one sequence): base64 text
# never holds that by chance (its runs end at line breaks or quotes), and reading it as
# UTF-7 would cut its payloads into pieces. (BinHex text may: it is not read as UTF-7.)
_UTF7 = re.compile(rb"\+A(?:Dw|D4|CI|Do|Ds|D0|Cw|C8)[A-Za-z0-9+/]*-")
# UTF-7 writes "+" as "+-": inside runs of base64 characters (a data: URI's payload written by
# an encoder that keeps markup direct) that never happens in base64 itself.
_UTF7_PLUS = re.compile(rb"[A-Za-z0-9/]{4}\+-[A-Za-z0-9/]{4}")
_RTF_MARKERS = (b"{\\rtf", b"\\pict", b"\\objdata")
# Browsers drop tabs and line breaks anywhere in a URL (and decode character references in
# attributes first): the loose reading of a text does both.
_URL_IGNORED = b"\t\r\n"
# Character references as an HTML attribute value takes them: numeric ones, and the named
# ones for ASCII characters (no named reference stands for a letter or digit, so these are
# all a URI can be written with). Bytes in, bytes out; html.unescape costs 25 us per "&" in
# binary, where it tries 32 prefixes of what follows as entity names.
_REFERENCE = re.compile(
    rb"&(?:#([0-9]{1,8});?|#[xX]([0-9a-fA-F]{1,6});?|([A-Za-z][A-Za-z0-9]{1,31});?)"
)
_ASCII_NAMED = {
    name.rstrip(";").encode(): value.encode()
    for name, value in html5.items()
    if len(value) == 1 and ord(value) < 128
}
# CSS escapes (a style attribute or sheet may write every character of a url() so): a
# backslash and up to six hex digits (and one whitespace after them), or any other character.
_CSS_ESCAPE = re.compile(rb"\\(?:([0-9a-fA-F]{1,6})(?:\r\n|[ \t\r\n\f])?|([^0-9a-fA-F\r\n\f]))")
# Line breaks or tabs between "data:" and its comma (searched in a lower-cased copy, so the
# engine can skip to each "data:" quickly; a case-insensitive pattern costs 100 ms per MB).
_WS_AFTER_SCHEME = re.compile(rb"data:[^,]{0,300}?[\t\r\n]")
# A data: URI body shorter than this holds no picture worth matching.
_MIN_URI_BODY = 16


def scan(ctx: Context, node: PayloadNode) -> Iterator[Node]:
    data = node.data
    kids = Children(ctx, node)
    # Other readings first: what they find whole, the raw bytes may hold cut short.
    for reading in _readings(data):
        yield from _text(ctx, kids, reading, whole=False)
    yield from _text(ctx, kids, data, whole=True)
    ctype = node.content_type or ""
    binary = not ctype.startswith("text/") or b"\x00" in data[:4096]
    if binary and data.lstrip()[:5] != b"{\\rtf":
        # Unknown binary (also when called text): what is glued inside it (offset 0 was
        # sniffed by the walk).
        yield from sweep.carve(ctx, kids, data)


def _readings(data: bytes) -> list[bytes]:
    """The text as UTF-8 when it is UTF-16 (by its byte order mark, or NULs at every other
    byte), UTF-7 (by a shifted sequence) or ISO-2022 (by its escape sequences): an HTML body
    in any of them hides its markup from a search over the raw bytes."""
    out: list[bytes] = []
    encoding = _utf16(data)
    if encoding is not None:
        out.append(data.decode(encoding, "replace").encode("utf-8", "replace"))
    elif (
        b"+" in data  # (both UTF-7 signals start with one: a memchr rules most text out)
        and b"\x00" not in data[:4096]
        and decoders.BINHEX_MARKER not in data
        and (_UTF7.search(data, 0, 1 << 20) is not None or _utf7_plus(data))
    ):
        out.append(data.decode("utf-7", "replace").encode("utf-8", "replace"))
    elif b"\x1b" in data and (b"\x1b(" in data or b"\x1b$" in data):
        # ISO-2022-JP and kin: escape sequences switch character sets, and decoders drop
        # them, even redundant ones inside ASCII (a data: URI split by ESC ( B).
        out.append(data.decode("iso2022_jp_2", "replace").encode("utf-8", "replace"))
    return out


def _utf7_plus(data: bytes) -> bool:
    if b"+-" not in data:
        return False
    found = _UTF7_PLUS.finditer(data, 0, 1 << 20)
    return next(found, None) is not None and next(found, None) is not None


def _utf16(data: bytes) -> str | None:
    """UTF-32 or UTF-16 (by byte order mark, or by NULs where ASCII text in them has
    them), else None."""
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        return "utf-32"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    sample = data[:512]
    if len(sample) < 16 or b"\x00" not in sample:
        return None  # (every reading below needs NULs in most of some byte column)
    quarters = [sample[i::4] for i in range(4)]
    nul = [q.count(0) >= len(q) * 0.8 for q in quarters]
    if nul == [False, True, True, True]:
        return "utf-32-le"
    if nul == [True, True, True, False]:
        return "utf-32-be"
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) >= len(odd) * 0.8 and even.count(0) <= len(even) * 0.2:
        return "utf-16-le"
    if even.count(0) >= len(even) * 0.8 and odd.count(0) <= len(odd) * 0.2:
        return "utf-16-be"
    return None


def _loose(data: bytes, low: bytes | None = None) -> bytes | None:
    """The text with character references and CSS escapes decoded and tabs and line breaks
    dropped, when it has references, escapes or a `data:` URI broken by tabs or line breaks
    (None otherwise). RTF's backslashes are control words, not CSS escapes. `low`: the
    text lower-cased, when the caller has it."""
    css = b"\\" in data and not data.lstrip().startswith(b"{\\rtf")
    if b"&" not in data and not css and not _split_uri(data, low):
        return None
    loose = _REFERENCE.sub(_referenced, data) if b"&" in data else data
    if css:
        loose = _CSS_ESCAPE.sub(_css_unescaped, loose)
    loose = loose.translate(None, _URL_IGNORED)
    return None if loose == data else loose


def _code_point(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    try:
        return chr(n).encode("utf-8")
    except (ValueError, OverflowError):  # past U+10FFFF, or a lone surrogate
        return "\ufffd".encode()


def _css_unescaped(m: re.Match[bytes]) -> bytes:
    return _code_point(int(m.group(1), 16)) if m.group(1) is not None else m.group(2)


def _referenced(m: re.Match[bytes]) -> bytes:
    if m.group(3) is not None:
        return _ASCII_NAMED.get(m.group(3), m.group(0))
    return _code_point(int(m.group(1)) if m.group(1) is not None else int(m.group(2), 16))


def _split_uri(data: bytes, low: bytes | None = None) -> bool:
    """Whether a `data:` URI has tabs or line breaks inside its scheme (joining the lines
    makes more "data:") or between the scheme and its comma."""
    if b":" not in data or (b"\n" not in data and b"\r" not in data and b"\t" not in data):
        return False
    if low is None:
        low = data.lower()
    joined = low.translate(None, _URL_IGNORED).count(b"data:")
    if not joined:
        return False  # (dropping tabs and line breaks never breaks a "data:" up)
    if joined > low.count(b"data:"):
        return True
    return _WS_AFTER_SCHEME.search(low) is not None


def _text(ctx: Context, kids: Children, data: bytes, whole: bool) -> Iterator[PayloadNode]:
    found = False
    spans: list[tuple[int, int]] = []
    uu_marker = b"begin" in data
    # (URI schemes are case-insensitive: "Data:image/png;base64,..." works in a browser; one
    # lower-cased copy serves both searches, and text without a colon needs none)
    low = data.lower() if b":" in data else None
    uri_marker = low is not None and b"data:" in low
    hqx_marker = decoders.BINHEX_MARKER in data
    rtf_marker = b"\\" in data and any(m in data for m in _RTF_MARKERS)
    loose = _loose(data, low)
    loose_marker = loose is not None and _has_scheme(loose)
    if ctx.text_only and (uu_marker or uri_marker or hqx_marker or rtf_marker or loose_marker):
        # Looking for payloads behind these markers can take milliseconds on hostile
        # text; that work belongs in a worker, not in the event loop.
        raise NeedsWorker
    if uu_marker:
        for child in sweep.uuencoded(ctx, kids, data, spans=spans):
            found = True
            yield child
    if loose_marker and loose is not None:  # first, for the same reason as readings
        for child in _data_uris(ctx, kids, loose, None):
            found = True
            yield child
    if uri_marker:
        for child in _data_uris(ctx, kids, data, spans):
            found = True
            yield child
    if hqx_marker:
        for child in sweep.binhex(ctx, kids, data, spans=spans):
            found = True
            yield child
    if rtf_marker:
        for child in sweep.hex_runs(ctx, kids, data, spans):
            found = True
            yield child
    if whole and not found:
        for child in _bare_base64(ctx, kids, data):
            yield child
            return
    yield from sweep.base64_runs(ctx, kids, data, skip=sweep.merged(spans))


def _has_scheme(data: bytes) -> bool:
    """Whether "data:" occurs, in any case (a lower-cased copy and a byte search: a
    case-insensitive regex search costs 30 ms per MB)."""
    return b"data:" in data or b"data:" in data.lower()


def _data_uris(
    ctx: Context, kids: Children, data: bytes, spans: list[tuple[int, int]] | None
) -> Iterator[PayloadNode]:
    low = data.lower()
    pos = 0
    while (i := low.find(b"data:", pos)) >= 0:
        m = _DATA_URI.match(data, i)
        if m is None:
            pos = i + 5
            continue
        pos = m.end()
        mediatype = (m.group(1) or b"").decode("ascii", "replace").lower() or None
        is_base64 = _IS_BASE64.search(m.group(2)) is not None
        if not is_base64 and not (mediatype or "").startswith("image/"):
            continue  # text/plain,hello and the like
        body_re = _BASE64_DATA if is_base64 else _PLAIN_DATA
        body_match = body_re.match(data, pos)
        body = body_match.group(0) if body_match else b""
        if len(body) < _MIN_URI_BODY or len(body.strip()) < _MIN_URI_BODY:
            pos += len(body)
            continue
        # The next URI starts after this one's data: searching inside it again would make
        # "data:image/gif,data:image/gif,..." quadratic (seconds for 64 KB).
        pos += len(body)
        if spans is not None:
            spans.append((m.start(), pos))
        if not ctx.fits(kids.node.path, len(body)):
            return
        if b"%" in body:
            body = unquote_to_bytes(body)
        if is_base64:
            decoded, _defects = decoders.b64decode(body)
        else:
            decoded = body
        if not decoded:
            continue
        if not (
            (mediatype or "").startswith("image/")
            or sniff.image_type(decoded)
            or sniff.container_type(decoded)
            or sweep.has_hidden(decoded, False)  # a stylesheet or page holding more URIs
        ):
            continue
        if not kids.novel(decoded) or kids.fragment(decoded):
            continue
        if not kids.open():
            return
        yield kids.make(kids.next_name("data-uri"), decoded, mediatype, None)


def _bare_base64(ctx: Context, kids: Children, data: bytes) -> Iterator[PayloadNode]:
    """A body that is nothing but base64 of an image or archive (a part that lost its
    Content-Transfer-Encoding, or was encoded twice)."""
    # (the first line decides for nearly all text: only then the first 4 KiB)
    if (len(data) < 64 or data[:64].translate(None, _B64_OR_SPACE)
            or data[:4096].translate(None, _B64_OR_SPACE)):
        return
    head, _ = decoders.b64decode(data[:128].translate(None, b" \t\r\n")[:64])
    if not (sniff.image_type(head) or sniff.container_type(head)):
        return
    if data.translate(None, _B64_OR_SPACE):
        return
    if not ctx.fits(kids.node.path, len(data) * 3 // 4 + 3):
        return
    if not kids.open():
        return
    decoded, _defects = decoders.b64decode(data)
    ctx.defect(kids.node.path, "base64-without-transfer-encoding")
    yield kids.make("base64", decoded, None, kids.node.filename)
