"""OpenPGP messages (RFC 4880 / 9580): what they carry without a key.

`gpg --store` wraps a file in a literal data packet, and `gpg --sign` (or any signed message)
compresses one: neither needs a secret to read, and gpg shows the file. So the packets are
walked (old and new length formats, partial body lengths, indeterminate lengths), literal
data (tag 11) is handed on as a payload under its own file name, compressed data (tag 8:
uncompressed, raw deflate, zlib, bzip2) is decompressed within the limits and walked again, and
a photo in a user attribute packet (tag 17: the photo IDs of an attached key, which key
managers show) is handed on too. Encrypted
data (tags 1, 3, 9, 18, 20) is `encrypted-message`. ASCII armor is taken off first.
"""

from __future__ import annotations

import binascii
import bz2
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from mailfilter.extract import core, sniff
from mailfilter.extract.containers import Fail
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

TAG_PKESK, TAG_SKESK, TAG_SED, TAG_SEIPD, TAG_AEAD = 1, 3, 9, 18, 20
TAG_COMPRESSED, TAG_LITERAL, TAG_USER_ATTRIBUTE = 8, 11, 17
ENCRYPTED_TAGS = frozenset({TAG_PKESK, TAG_SKESK, TAG_SED, TAG_SEIPD, TAG_AEAD})

_ARMOR = re.compile(
    rb"-----BEGIN PGP (MESSAGE|PUBLIC KEY BLOCK|PRIVATE KEY BLOCK)-----[^\n]*\n(.*?)"
    rb"(?:^=[A-Za-z0-9+/]{4}\s*$|-----END PGP |\Z)",
    re.S | re.M,
)
_ARMOR_HEADERS = re.compile(rb"\A(?:[ \t]*[!-9;-~]+: [^\n]*\n)*[ \t\r]*\n")


class PacketError(ValueError):
    pass


@dataclass(slots=True)
class Packet:
    tag: int
    body: bytes
    truncated: bool


def dearmor(data: bytes) -> list[bytes]:
    """The binary messages (and key blocks) inside every armored block of `data`."""
    out: list[bytes] = []
    for m in _ARMOR.finditer(data.replace(b"\r\n", b"\n")):
        block = m.group(2)
        headers = _ARMOR_HEADERS.match(block)
        if headers:
            block = block[headers.end() :]
        text = re.sub(rb"[^A-Za-z0-9+/=]", b"", block)
        text = text.split(b"=", 1)[0]  # padding, and anything after it
        text += b"=" * (-len(text) % 4)
        try:
            out.append(binascii.a2b_base64(text))
        except binascii.Error:
            continue
    return out


def _new_length(data: bytes, pos: int) -> tuple[int, int, bool]:
    """A new-format length at `pos`: (length, header size, partial?)."""
    if pos >= len(data):
        raise PacketError("missing length")
    octet = data[pos]
    if octet < 192:
        return octet, 1, False
    if octet < 224:
        if pos + 1 >= len(data):
            raise PacketError("truncated length")
        return ((octet - 192) << 8) + data[pos + 1] + 192, 2, False
    if octet == 255:
        if pos + 5 > len(data):
            raise PacketError("truncated length")
        return int.from_bytes(data[pos + 1 : pos + 5], "big"), 5, False
    return 1 << (octet & 0x1F), 1, True


def packets(data: bytes) -> Iterator[Packet]:
    """The packets of a binary OpenPGP message. Raises PacketError where the stream stops
    making sense; a body cut short is returned with `truncated` set."""
    pos = 0
    while pos < len(data):
        first = data[pos]
        if not first & 0x80:
            raise PacketError(f"not a packet header at {pos}")
        if first & 0x40:
            tag = first & 0x3F
            length, size, partial = _new_length(data, pos + 1)
            pos += 1 + size
            chunks = [data[pos : pos + length]]
            pos += length
            while partial and pos < len(data):
                length, size, partial = _new_length(data, pos)
                pos += size
                chunks.append(data[pos : pos + length])
                pos += length
            body = b"".join(chunks)
            truncated = pos > len(data) or partial
        else:
            tag = (first >> 2) & 0x0F
            width = (1, 2, 4, 0)[first & 3]
            if width == 0:  # indeterminate: to the end of the data
                yield Packet(tag, data[pos + 1 :], False)
                return
            if pos + 1 + width > len(data):
                raise PacketError("truncated length")
            length = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
            body = data[pos : pos + length]
            pos += length
            truncated = pos > len(data)
        yield Packet(tag, body, truncated)


def literal(body: bytes) -> tuple[str, bytes]:
    """A literal data packet's file name and data."""
    if len(body) < 6:
        raise PacketError("short literal data packet")
    name_len = body[1]
    name = body[2 : 2 + name_len].decode("utf-8", "replace").strip("\x00 ")
    return name, body[2 + name_len + 4 :]


def user_attribute_images(body: bytes) -> list[bytes]:
    """The images of a user attribute packet (subpacket type 1, a 16-byte header first)."""
    images: list[bytes] = []
    pos = 0
    while pos < len(body):
        octet = body[pos]
        if octet < 192:
            length, pos = octet, pos + 1
        elif octet < 255:
            if pos + 1 >= len(body):
                break
            length, pos = ((octet - 192) << 8) + body[pos + 1] + 192, pos + 2
        else:
            length, pos = int.from_bytes(body[pos + 1 : pos + 5], "big"), pos + 5
        sub = body[pos : pos + length]
        pos += length
        if len(sub) > 3 and sub[0] == 1:
            header_len = int.from_bytes(sub[1:3], "little")
            images.append(sub[1 + header_len :])
    return images


def _decompress(algo: int, data: bytes, cap: int) -> tuple[bytes | None, str]:
    """A compressed packet's contents, at most `cap` bytes (None past it), and an error."""
    if algo == 0:
        return (data if len(data) <= cap else None), ""
    out = bytearray()
    if algo in (1, 2):
        dec = zlib.decompressobj(-15 if algo == 1 else 15)
        src = data
        while True:
            try:
                out += dec.decompress(src, cap + 1 - len(out))
            except zlib.error as exc:
                return bytes(out), str(exc)
            if len(out) > cap:
                return None, ""
            if dec.eof:
                return bytes(out), ""
            src = dec.unconsumed_tail
            if not src:
                return bytes(out), "truncated"
    if algo == 3:
        bdec = bz2.BZ2Decompressor()
        src = data
        while True:
            try:
                out += bdec.decompress(src, cap + 1 - len(out))
            except (OSError, EOFError, ValueError) as exc:
                return bytes(out), str(exc) or type(exc).__name__
            src = b""
            if len(out) > cap:
                return None, ""
            if bdec.eof:
                return bytes(out), ""
            if bdec.needs_input:
                return bytes(out), "truncated"
    return None, f"compression algorithm {algo}"


class _Walk:
    def __init__(self, ctx: Context, node: PayloadNode) -> None:
        self.ctx, self.node = ctx, node
        self.found: list[PayloadNode] = []
        self.encrypted = False
        self.max_nesting = max(1, ctx.limits.max_depth - len(node.containers))

    def _hand_on(self, name: str, data: bytes) -> bool:
        ctx = self.ctx
        if not ctx.count_member(self.node.path):
            return False
        path = member_path(self.node.path, name)
        if ctx.fits(path, len(data)):
            ctx.charge(len(data))
            base = name.replace("\\", "/").rsplit("/", 1)[-1] or name
            self.found.append(
                PayloadNode(path, (*self.node.containers, sniff.OPENPGP), data, base, None)
            )
        return True

    def message(self, data: bytes, nesting: int) -> bool:
        """Walk one packet sequence; False once a limit ends the walk."""
        ctx, node = self.ctx, self.node
        try:
            for packet in packets(data):
                if packet.truncated:
                    ctx.defect(node.path, "openpgp-truncated")
                if packet.tag in ENCRYPTED_TAGS:
                    self.encrypted = True
                elif packet.tag == TAG_LITERAL:
                    name, content = literal(packet.body)
                    if not self._hand_on(name or "literal-data", content):
                        return False
                elif packet.tag == TAG_USER_ATTRIBUTE:
                    for n, image in enumerate(user_attribute_images(packet.body), 1):
                        if not self._hand_on(f"photo-id-{n}.jpg", image):
                            return False
                elif (
                    packet.tag == TAG_COMPRESSED
                    and packet.body
                    and not self.compressed(packet.body, nesting)
                ):
                    return False
        except (PacketError, IndexError) as exc:
            if not self.found and not self.encrypted and nesting == 0:
                raise PacketError(str(exc)) from exc
            ctx.skip(node.path, core.CORRUPT_ARCHIVE, f"OpenPGP: {exc}"[:200])
        return True

    def compressed(self, body: bytes, nesting: int) -> bool:
        ctx, node = self.ctx, self.node
        if nesting + 1 >= self.max_nesting:
            ctx.skip(node.path, core.MAX_DEPTH, "OpenPGP compressed packets nested too deep")
            return True
        if not ctx.count_member(node.path):
            return False
        by_ratio = ctx.expansion_cap(len(body) - 1)
        cap = min(by_ratio, ctx.remaining)
        out, error = _decompress(body[0], body[1:], cap)
        if out is None and not error:
            ctx.charge(cap)  # the work done counts
            if by_ratio <= ctx.remaining + cap:
                detail = f"{len(body)} bytes expand past {by_ratio}"
                ctx.skip(node.path, core.MAX_EXPANSION_RATIO, detail)
            else:
                ctx.fits(node.path, ctx.remaining + 1)
            return True
        if out is None:
            ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"OpenPGP: {error}")
            return True
        if error:
            ctx.defect(node.path, "compressed-stream-truncated")
        ctx.charge(len(out))
        return self.message(out, nesting + 1)


def contents(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    fail = Fail(ctx, node, quiet)
    data = node.data
    if data.lstrip()[:1] == b"-":
        messages = dearmor(data)
        if not messages:
            fail(core.CORRUPT_ARCHIVE, "OpenPGP armor without a readable message")
            return
    else:
        messages = [data]
    walk = _Walk(ctx, node)
    for message in messages:
        try:
            if not walk.message(message, 0):
                break
        except PacketError as exc:
            fail(core.CORRUPT_ARCHIVE, f"OpenPGP: {exc}")
    if walk.encrypted and not _inside_encrypted(ctx, node.path):
        ctx.skip(node.path, core.ENCRYPTED_MESSAGE, "OpenPGP encrypted data needs a key")
    yield from walk.found


def _inside_encrypted(ctx: Context, path: str) -> bool:
    """Whether an enclosing part is already recorded as encrypted (multipart/encrypted: the
    MIME walk records it, then hands on its application/octet-stream part)."""
    return any(
        u.reason == core.ENCRYPTED_MESSAGE
        and (not u.mime_path or path.startswith((f"{u.mime_path}.", f"{u.mime_path}/")))
        for u in ctx.unscannable
    )
