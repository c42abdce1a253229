"""Opaque S/MIME (`application/pkcs7-mime`, `.p7m`): the content of a CMS signed-data or
compressed-data structure is taken out and walked like the rest of the message; enveloped
(encrypted) data is unscannable. A small BER reader does this; nothing is verified (the
filter looks for images, it does not judge signatures).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from mailfilter.extract import core, sniff, sweep
from mailfilter.extract.containers import Fail
from mailfilter.extract.core import Context, EntityNode, Node, PayloadNode, member_path

_OID_SIGNED = bytes.fromhex("2a864886f70d010702")
_OID_ENVELOPED = bytes.fromhex("2a864886f70d010703")
_OID_ENCRYPTED = bytes.fromhex("2a864886f70d010706")
_OID_COMPRESSED = bytes.fromhex("2a864886f70d0109100109")
_OID_AUTH_ENVELOPED = bytes.fromhex("2a864886f70d0109100117")
_MAX_NESTING = 32
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")


class BerError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Tlv:
    tag: int  # the identifier octet (class, constructed bit and low tag number)
    start: int  # contents
    end: int
    next: int  # the octet after this element (after the end-of-contents octets, if any)

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def _read(buf: bytes, pos: int, end: int, depth: int = 0, cut: bool = False) -> _Tlv:
    """The element at `pos`. `cut`: the data was cut off, so an element (or an indefinite
    length) that runs past `end` ends at `end` instead of failing."""
    if depth > _MAX_NESTING:
        raise BerError("nested too deep")
    if pos + 2 > end:
        raise BerError("truncated")
    tag = buf[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # high tag number form
        while pos < end and buf[pos] & 0x80:
            pos += 1
        pos += 1
    if pos >= end:
        raise BerError("truncated")
    first = buf[pos]
    pos += 1
    if first == 0x80:
        if not tag & 0x20:
            raise BerError("indefinite length on a primitive")
        child = pos
        while True:
            if child + 2 > end:
                if cut:
                    return _Tlv(tag, pos, end, end)
                raise BerError("missing end-of-contents")
            if buf[child] == 0 and buf[child + 1] == 0:
                return _Tlv(tag, pos, child, child + 2)
            child = _read(buf, child, end, depth + 1, cut).next
    if first & 0x80:
        n = first & 0x7F
        if n > 8:
            raise BerError("bad length")
        if pos + n > end:
            if cut:
                return _Tlv(tag, end, end, end)
            raise BerError("bad length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > end:
        if cut:
            return _Tlv(tag, pos, end, end)
        raise BerError("truncated")
    return _Tlv(tag, pos, pos + length, pos + length)


def _children(buf: bytes, tlv: _Tlv, depth: int = 0, cut: bool = False) -> list[_Tlv]:
    out: list[_Tlv] = []
    pos = tlv.start
    while pos < tlv.end:
        if cut and pos + 2 > tlv.end:
            break  # a last element cut inside its own header
        child = _read(buf, pos, tlv.end, depth + 1, cut)
        out.append(child)
        pos = child.next
    return out


def _octets(buf: bytes, tlv: _Tlv, depth: int = 0, cut: bool = False) -> bytes:
    """An OCTET STRING, primitive or constructed (BER chunks)."""
    if depth > _MAX_NESTING:
        raise BerError("nested too deep")
    if not tlv.constructed:
        return buf[tlv.start : tlv.end]
    return b"".join(_octets(buf, c, depth + 1, cut) for c in _children(buf, tlv, depth, cut))


def _explicit(buf: bytes, tlv: _Tlv, cut: bool = False) -> _Tlv:
    kids = _children(buf, tlv, cut=cut)
    if not kids:
        raise BerError("empty explicit tag")
    return kids[0]


def _encapsulated(buf: bytes, eci: _Tlv, cut: bool = False) -> bytes | None:
    """The eContent of an EncapsulatedContentInfo, or None when detached."""
    kids = _children(buf, eci, cut=cut)
    for k in kids[1:]:
        if k.tag == 0xA0:
            return _octets(buf, _explicit(buf, k, cut), cut=cut)
    return None


def parse(data: bytes, cap: int, cut: bool = False) -> tuple[str, bytes | None]:
    """("signed"|"compressed", content or None when detached) or ("encrypted", None).
    `cut`: read a structure cut off early as far as it goes (its content up to the cut).

    Raises BerError on anything that is not CMS; ValueError if compressed content would pass
    `cap` bytes.
    """
    ci = _read(data, 0, len(data), cut=cut)
    if ci.tag != 0x30:
        raise BerError("not a SEQUENCE")
    kids = _children(data, ci, cut=cut)
    if len(kids) < 1 or kids[0].tag != 0x06:
        raise BerError("no content type")
    oid = data[kids[0].start : kids[0].end]
    if oid in (_OID_ENVELOPED, _OID_ENCRYPTED, _OID_AUTH_ENVELOPED):
        return "encrypted", None
    if len(kids) < 2 or kids[1].tag != 0xA0:
        raise BerError("no content")
    body = _explicit(data, kids[1], cut)
    parts = _children(data, body, cut=cut)
    if oid == _OID_SIGNED:
        # version, digestAlgorithms, encapContentInfo, ...
        eci = next((p for p in parts[1:] if p.tag == 0x30), None)
        if eci is None:
            raise BerError("signed-data without content info")
        return "signed", _encapsulated(data, eci, cut)
    if oid == _OID_COMPRESSED:
        # version, compressionAlgorithm, encapContentInfo
        if len(parts) < 3:
            raise BerError("short compressed-data")
        packed = _encapsulated(data, parts[2], cut)
        if packed is None:
            return "compressed", None
        dec = zlib.decompressobj()
        try:
            out = dec.decompress(packed, cap + 1)
        except zlib.error as exc:
            raise BerError(f"compressed-data: {exc}") from None
        if len(out) > cap:
            raise ValueError("compressed content over the budget")
        return "compressed", out
    raise BerError("unsupported CMS content type")


def content(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    fail = Fail(ctx, node, quiet)
    cut = False
    try:
        kind, inner = parse(node.data, ctx.remaining)
    except BerError as exc:
        # Cut off early (a fixture, a size limit in transit): read as far as it goes. What
        # it holds up to the cut is walked (a picture cut there is `truncated` when
        # decoded), the rest of its bytes are carved, and the cut itself is a defect:
        # bytes that are not there hide nothing.
        try:
            kind, inner = parse(node.data, ctx.remaining, cut=True)
        except BerError:
            fail(core.CORRUPT_ARCHIVE, f"CMS: {exc}")
            return
        except ValueError as too_big:
            ctx.skip(node.path, core.MAX_DECODED_BYTES, str(too_big))
            return
        cut = True
        ctx.defect(node.path, "cms-cut-off")
    except ValueError as exc:
        ctx.skip(node.path, core.MAX_DECODED_BYTES, str(exc))
        return
    if kind == "encrypted":
        ctx.skip(node.path, core.ENCRYPTED_MESSAGE, "S/MIME enveloped data")
        return
    if cut:  # carve what follows the content (certificates, signer infos, the cut)
        tail = inner[-64:] if inner else b""
        after = node.data.rfind(tail) + len(tail) if tail else 1
        yield from sweep.carve(ctx, sweep.Children(ctx, node, sniff.PKCS7), node.data,
                               max(1, after))
    if not inner:
        return  # a detached signature: nothing inside
    if not ctx.fits(node.path, len(inner)):
        return
    ctx.charge(len(inner))
    containers = (*node.containers, sniff.PKCS7)
    first_line = inner[:1024].split(b"\n", 1)[0]
    if not (sniff.image_type(inner) or sniff.container_type(inner)) and (
        _HEADER_LINE.match(first_line) or first_line.strip() == b""
    ):
        yield EntityNode(node.path, containers, inner, 0, len(inner), root=True)
        return
    name = node.filename or "content"
    if name.lower().endswith((".p7m", ".p7s", ".p7z")):
        name = name[:-4] or "content"
    yield PayloadNode(member_path(node.path, name), containers, inner, name, None)
