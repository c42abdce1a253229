"""Content-transfer decoders that recover what mail clients recover.

Each returns the decoded bytes and a list of defect codes; none raises on bad input.
"""

from __future__ import annotations

import binascii
import re

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


def qpdecode(data: bytes) -> bytes:
    """Quoted-printable; soft breaks with LF or CRLF, bad escapes left as they are."""
    return binascii.a2b_qp(data)


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
