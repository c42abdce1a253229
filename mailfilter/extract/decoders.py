"""Content-transfer decoders that recover what mail clients recover.

Each returns the decoded bytes and a list of defect codes; none raises on bad input.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WHITESPACE = b" \t\r\n\x0b\x0c"
_NOT_B64 = bytes(c for c in range(256) if c not in _B64_ALPHABET and c != ord("="))


def b64decode(data: bytes) -> tuple[bytes, list[str]]:
    """Decode base64 the forgiving way: whitespace anywhere, stray characters dropped, missing
    padding supplied, and data that goes on after a padded end (chunks encoded one by one)
    decoded too rather than lost."""
    defects: list[str] = []
    stripped = data.translate(None, _WHITESPACE)
    clean = stripped.translate(None, _NOT_B64)
    if len(clean) != len(stripped):
        defects.append("base64-invalid-characters")
    body = clean.rstrip(b"=")
    if b"=" in body:
        defects.append("base64-data-after-padding")
        segments = [s for s in body.split(b"=") if s]
    else:
        segments = [body] if body else []
    out: list[bytes] = []
    for n, seg in enumerate(segments):
        rest = len(seg) % 4
        if rest == 1:
            seg = seg[:-1]
            defects.append("base64-truncated")
        elif rest and n == len(segments) - 1 and not clean.endswith(b"="):
            defects.append("base64-missing-padding")
        if rest:
            seg += b"=" * ((4 - len(seg) % 4) % 4)
        try:
            out.append(binascii.a2b_base64(seg))
        except binascii.Error:  # pragma: no cover - the cleaning above leaves only valid input
            defects.append("base64-undecodable")
    return b"".join(out), defects


_QP_PADDED_SOFT_BREAK = re.compile(rb"=[ \t]+(?=\r?\n|\Z)")


def qpdecode(data: bytes) -> bytes:
    """Quoted-printable; soft breaks with LF or CRLF, bad escapes left as they are.

    Blanks after a soft break's `=` are transport padding (RFC 2045 6.7 says to drop them);
    `a2b_qp` would keep the `=` and the line break, so they are dropped first.
    """
    return binascii.a2b_qp(_QP_PADDED_SOFT_BREAK.sub(b"=", data))


def _uu_line(line: bytes) -> bytes | None:
    """One uuencoded line, or None when the line is not uuencode."""
    if not line:
        return None
    n = (line[0] - 32) & 63
    if line[0] < 32 or line[0] > 96:
        return None
    if n == 0:
        return b""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # Trailing junk (or a line an encoder padded oddly): keep the characters that the
        # length byte accounts for.
        try:
            return binascii.a2b_uu(line[: (n * 4 + 5) // 3])
        except binascii.Error:
            return None


def uudecode_lines(lines: list[bytes], cap: int) -> tuple[bytes, bool, list[str]]:
    """Decode the lines after a `begin` line up to `end`.

    Returns the data, whether it passed `cap` bytes (then the data is cut there), and defects.
    """
    defects: list[str] = []
    out = bytearray()
    ended = False
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        if line.rstrip() == b"end":
            ended = True
            break
        if not line.strip():
            continue
        chunk = _uu_line(line)
        if chunk is None:
            defects.append("uuencode-bad-line")
            break
        out += chunk
        if len(out) > cap:
            return bytes(out[:cap]), True, defects
    if not ended:
        defects.append("uuencode-missing-end")
    return bytes(out), False, defects


_BEGIN = re.compile(rb"^begin[ \t]+[0-7]{1,4}[ \t]+[^\r\n]+", re.M)


def uudecode_body(data: bytes, cap: int) -> tuple[bytes, bool, list[str]]:
    """A body whose transfer encoding is x-uuencode: after its `begin` line if there is one,
    else every line."""
    m = _BEGIN.search(data)
    lines = data[m.end() :].splitlines()[1:] if m else data.splitlines()
    return uudecode_lines(lines, cap)


# --- BinHex 4.0 ---------------------------------------------------------------------------
# Our own decoder: Python's `binhex` module (and binascii's a2b_hqx / rledecode_hqx) were
# removed in Python 3.11, and Mac mail clients still open .hqx attachments.

BINHEX_MARKER = b"(This file must be converted with BinHex"
_HQX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
# Each BinHex character carries the same 6 bits as the base64 character at its index, so
# translating the text to base64 lets binascii do the bit packing.
_HQX_TO_B64 = bytes.maketrans(_HQX_ALPHABET, _B64_ALPHABET)
_NOT_HQX = bytes(c for c in range(256) if c not in _HQX_ALPHABET)
_RLE_MARK = 0x90


@dataclass(frozen=True, slots=True)
class BinHexFile:
    name: str
    data: bytes
    resource: bytes
    defects: tuple[str, ...]


def _rle90_decode(data: bytes, cap: int) -> tuple[bytes, bool]:
    """BinHex run-length decoding: `c 0x90 n` is `c` n times in all, `0x90 0x00` a literal
    0x90. Returns the bytes (cut at `cap`) and whether they passed `cap`."""
    out = bytearray()
    pos, size = 0, len(data)
    while (i := data.find(b"\x90", pos)) >= 0:
        out += data[pos:i]
        if i + 1 >= size:  # a mark with no count: the data ends there
            return bytes(out), False
        count = data[i + 1]
        if count == 0:
            out.append(_RLE_MARK)
        elif out:
            out += bytes(out[-1:]) * (count - 1)
        pos = i + 2
        if len(out) > cap:
            return bytes(out[:cap]), True
    out += data[pos:]
    return bytes(out[:cap]), len(out) > cap


def _crc_ok(data: bytes, crc: bytes) -> bool:
    if len(crc) < 2:
        return False
    want = int.from_bytes(crc[:2], "big")
    # BinHex's CRC is CRC-CCITT (XMODEM): crc_hqx over the data; some encoders run two zero
    # bytes through it as well. Either is accepted.
    return want in (binascii.crc_hqx(data, 0), binascii.crc_hqx(data + b"\x00\x00", 0))


def binhex_decode(text: bytes, cap: int) -> tuple[BinHexFile | None, bool]:
    """Decode BinHex 4.0 text starting at (or before) its ':' start. Returns the file (None
    when there is no usable header) and whether it passed `cap` decoded bytes. A bad CRC or
    a cut-off fork is a defect: the bytes are kept."""
    start = text.find(b":")
    if start < 0:
        return None, False
    end = text.find(b":", start + 1)
    body = text[start + 1 : end if end >= 0 else len(text)].translate(None, _WHITESPACE)
    defects: list[str] = []
    if end < 0:
        defects.append("binhex-missing-end")
    clean = body.translate(None, _NOT_HQX)
    if len(clean) != len(body):
        defects.append("binhex-invalid-characters")
    b64 = clean.translate(_HQX_TO_B64)
    if len(b64) % 4 == 1:
        b64 = b64[:-1]
    packed = binascii.a2b_base64(b64 + b"=" * (-len(b64) % 4)) if b64 else b""
    raw, over = _rle90_decode(packed, cap + 64)
    if not raw or raw[0] + 22 > len(raw):
        return None, over
    n = raw[0]
    name = raw[1 : 1 + n].decode("mac_roman", "replace")
    head = raw[: 1 + n + 19]
    data_len = int.from_bytes(head[n + 12 : n + 16], "big")
    rsrc_len = int.from_bytes(head[n + 16 : n + 20], "big")
    pos = len(head)
    if not _crc_ok(head, raw[pos : pos + 2]):
        defects.append("binhex-bad-crc")
    pos += 2
    data = raw[pos : pos + data_len]
    if len(data) < data_len:
        defects.append("binhex-truncated")
    elif not _crc_ok(data, raw[pos + data_len : pos + data_len + 2]):
        defects.append("binhex-bad-crc")
    pos += data_len + 2
    resource = raw[pos : pos + rsrc_len]
    if rsrc_len and len(resource) < rsrc_len and "binhex-truncated" not in defects:
        defects.append("binhex-truncated")
    return BinHexFile(name, data, resource, tuple(dict.fromkeys(defects))), over


# --- hexadecimal (RTF pictures and objects) -------------------------------------------------

_NOT_HEX = bytes(c for c in range(256) if c not in b"0123456789abcdefABCDEF")


def hexdecode(data: bytes) -> bytes:
    """Hex digits with anything else (whitespace, line breaks) in between ignored, the way
    RTF readers read `\\pict` and `\\objdata`; an odd last digit is dropped."""
    digits = data.translate(None, _NOT_HEX)
    if len(digits) % 2:
        digits = digits[:-1]
    return binascii.unhexlify(digits)
