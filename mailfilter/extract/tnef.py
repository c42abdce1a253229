"""TNEF (`winmail.dat`, application/ms-tnef): the attachments Outlook wraps inside it.

A small reader of the attribute stream (MS-OXTNEF): each attachment starts with attRendData;
its bytes are attAttachData, its name attAttachTitle or, better, the long filename among the
MAPI properties of attAttachment. Attachments only carried as a MAPI property
(PR_ATTACH_DATA_BIN / _OBJ, e.g. embedded messages, themselves TNEF) are taken from there.

The message body counts too: Outlook shows the RTF body (PR_RTF_COMPRESSED in attMsgProps,
LZFu-compressed, MS-OXRTFCP), whose `\\pict` groups hold pictures, and the HTML body
(PR_HTML), whose `data:` URIs do. Both are handed on as text payloads (`body.rtf`,
`body.html`) for the text scan.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from mailfilter.extract import core, sniff
from mailfilter.extract.containers import Fail
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

SIGNATURE = 0x223E9F78

LVL_MESSAGE = 0x01
LVL_ATTACHMENT = 0x02

ATT_RENDDATA = 0x00069002
ATT_ATTACHTITLE = 0x00018010
ATT_ATTACHDATA = 0x0006800F
ATT_ATTACHMENT = 0x00069005
ATT_MSGPROPS = 0x00069003

PR_ATTACH_DATA = 0x3701
PR_ATTACH_FILENAME = 0x3704
PR_ATTACH_LONG_FILENAME = 0x3707
PR_DISPLAY_NAME = 0x3001
PR_ATTACH_MIME_TAG = 0x370E
PR_RTF_COMPRESSED = 0x1009
PR_HTML = 0x1013

PT_SHORT, PT_LONG, PT_FLOAT, PT_DOUBLE, PT_CURRENCY, PT_APPTIME = 0x2, 0x3, 0x4, 0x5, 0x6, 0x7
PT_ERROR, PT_BOOLEAN, PT_OBJECT, PT_I8, PT_STRING8, PT_UNICODE = 0xA, 0xB, 0xD, 0x14, 0x1E, 0x1F
PT_SYSTIME, PT_CLSID, PT_BINARY = 0x40, 0x48, 0x102
MV_FLAG = 0x1000

_FIXED = {
    PT_SHORT: 4, PT_LONG: 4, PT_FLOAT: 4, PT_ERROR: 4, PT_BOOLEAN: 4,
    PT_DOUBLE: 8, PT_CURRENCY: 8, PT_APPTIME: 8, PT_I8: 8, PT_SYSTIME: 8, PT_CLSID: 16,
}
_VARIABLE = {PT_STRING8, PT_UNICODE, PT_BINARY, PT_OBJECT}
_MAX_PROPS = 10_000


class TnefError(ValueError):
    pass


# MS-OXRTFCP 2.1.2.1: the dictionary an LZFu stream starts from.
_RTF_PREBUF = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss "
    b"\\fmodern \\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier"
    b"{\\colortbl\\red0\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)
_LZFU = 0x75465A4C  # "LZFu": compressed
_MELA = 0x414C454D  # "MELA": stored


def decompress_rtf(data: bytes, cap: int) -> bytes:
    """PR_RTF_COMPRESSED's RTF (MS-OXRTFCP), at most `cap` bytes; what decodes of a damaged
    stream is kept. Raises TnefError if it is not compressed RTF at all."""
    if len(data) < 16:
        raise TnefError("compressed RTF too short")
    comp_size, raw_size, comp_type = struct.unpack_from("<III", data, 0)
    body = data[16 : 4 + comp_size] if comp_size >= 12 else data[16:]
    limit = min(raw_size, cap)
    if comp_type == _MELA:
        return body[:limit]
    if comp_type != _LZFU:
        raise TnefError(f"compressed RTF of unknown type {comp_type:#x}")
    # The 4 KiB window is kept as the tail of one growing buffer: `buf` starts with the
    # initial window rotated so that its write position (len(_RTF_PREBUF)) falls at 4096,
    # and a reference then becomes a slice copy (bytes at a time, not a Python loop per byte).
    start = len(_RTF_PREBUF)
    initial = bytearray(4096)
    initial[:start] = _RTF_PREBUF
    buf = initial[start:] + initial[:start]
    end = 4096 + limit
    pos = 0
    while pos < len(body) and len(buf) < end:
        control = body[pos]
        pos += 1
        if control == 0:  # eight literals
            buf += body[pos : pos + 8]
            pos += 8
            continue
        for bit in range(8):
            if pos >= len(body) or len(buf) >= end:
                break
            if not control & (1 << bit):
                buf.append(body[pos])
                pos += 1
                continue
            if pos + 2 > len(body):
                return bytes(buf[4096:end])
            ref = (body[pos] << 8) | body[pos + 1]
            pos += 2
            offset, length = ref >> 4, (ref & 0xF) + 2
            distance = ((len(buf) + start) - offset) & 0xFFF
            if distance == 0:  # the reference to the write position itself ends the stream
                return bytes(buf[4096:end])
            source = len(buf) - distance
            if length <= distance:
                buf += buf[source : source + length]
            else:  # overlapping: the run repeats itself
                for n in range(length):
                    buf.append(buf[source + n])
    return bytes(buf[4096:end])


@dataclass(slots=True)
class TnefAttachment:
    title: str | None = None
    data: bytes | None = None
    props: dict[int, tuple[int, bytes]] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        for tag in (PR_ATTACH_LONG_FILENAME, PR_ATTACH_FILENAME, PR_DISPLAY_NAME):
            if tag in self.props:
                ptype, raw = self.props[tag]
                text = _string(ptype, raw)
                if text:
                    return text
        return self.title

    @property
    def payload(self) -> bytes | None:
        if self.data is not None:
            return self.data
        if PR_ATTACH_DATA in self.props:
            ptype, raw = self.props[PR_ATTACH_DATA]
            return raw[16:] if ptype == PT_OBJECT else raw  # an object starts with its IID
        return None

    @property
    def mime_tag(self) -> str | None:
        if PR_ATTACH_MIME_TAG in self.props:
            return _string(*self.props[PR_ATTACH_MIME_TAG]) or None
        return None


def _string(ptype: int, raw: bytes) -> str:
    if ptype == PT_UNICODE:
        return raw.decode("utf-16-le", "replace").split("\x00", 1)[0].strip()
    if ptype == PT_STRING8:
        return raw.split(b"\x00", 1)[0].decode("cp1252", "replace").strip()
    return ""


def read_props(buf: bytes) -> dict[int, tuple[int, bytes]]:
    """MAPI properties: {property id: (type, first value's bytes)}; named properties and
    anything unreadable past the first bad property are left out."""
    props: dict[int, tuple[int, bytes]] = {}
    if len(buf) < 4:
        return props
    (count,) = struct.unpack_from("<I", buf, 0)
    pos = 4
    for _ in range(min(count, _MAX_PROPS)):
        if pos + 4 > len(buf):
            break
        ptype, pid = struct.unpack_from("<HH", buf, pos)
        pos += 4
        if pid >= 0x8000:  # named property: GUID, kind, then an id or a name
            if pos + 20 > len(buf):
                break
            (kind,) = struct.unpack_from("<I", buf, pos + 16)
            pos += 20
            if kind == 0:
                pos += 4
            else:
                if pos + 4 > len(buf):
                    break
                (nlen,) = struct.unpack_from("<I", buf, pos)
                pos += 4 + ((nlen + 3) & ~3)
        multi = bool(ptype & MV_FLAG)
        base = ptype & ~MV_FLAG
        values = 1
        if multi or base in _VARIABLE:
            if pos + 4 > len(buf):
                break
            (values,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if values > len(buf):
                break
        first: bytes | None = None
        if base in _FIXED:
            size = _FIXED[base]
            first = buf[pos : pos + size]
            pos += size * values
        elif base in _VARIABLE:
            for _v in range(values):
                if pos + 4 > len(buf):
                    return props
                (length,) = struct.unpack_from("<I", buf, pos)
                pos += 4
                if pos + length > len(buf):
                    return props
                if first is None:
                    first = buf[pos : pos + length]
                pos += (length + 3) & ~3
        else:
            break  # an unknown type: its size is unknown, stop here
        if pos > len(buf):
            break
        if first is not None and pid < 0x8000:
            props[pid] = (base, first)
    return props


def read_attachments(
    data: bytes, message_props: dict[int, tuple[int, bytes]] | None = None
) -> list[TnefAttachment]:
    """The attachments; the message's own MAPI properties go into `message_props`."""
    if len(data) < 6 or struct.unpack_from("<I", data, 0)[0] != SIGNATURE:
        raise TnefError("no TNEF signature")
    pos = 6
    attachments: list[TnefAttachment] = []
    current: TnefAttachment | None = None
    while pos + 9 <= len(data):
        level = data[pos]
        attr_id, length = struct.unpack_from("<II", data, pos + 1)
        start = pos + 9
        end = start + length
        if end > len(data):
            if not attachments and current is None:
                raise TnefError("truncated attribute")
            end = len(data)  # keep what is there of a truncated last attribute
        value = data[start:end]
        pos = end + 2  # checksum
        if level == LVL_MESSAGE and attr_id == ATT_MSGPROPS and message_props is not None:
            message_props.update(read_props(value))
        if level != LVL_ATTACHMENT:
            continue
        if attr_id == ATT_RENDDATA or current is None:
            current = TnefAttachment()
            attachments.append(current)
            if attr_id == ATT_RENDDATA:
                continue
        if attr_id == ATT_ATTACHTITLE:
            current.title = value.split(b"\x00", 1)[0].decode("cp1252", "replace").strip() or None
        elif attr_id == ATT_ATTACHDATA:
            current.data = value
        elif attr_id == ATT_ATTACHMENT:
            current.props.update(read_props(value))
    return attachments


def attachments(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    fail = Fail(ctx, node, quiet)
    message_props: dict[int, tuple[int, bytes]] = {}
    try:
        found = read_attachments(node.data, message_props)
    except (TnefError, struct.error) as exc:
        fail(core.CORRUPT_ARCHIVE, f"TNEF: {exc}")
        return
    yield from _bodies(ctx, node, message_props)
    for n, att in enumerate(found, 1):
        data = att.payload
        if not data:
            continue
        if not ctx.count_member(node.path):
            return
        name = att.name or f"attachment-{n}"
        if not ctx.fits(member_path(node.path, name), len(data)):
            continue
        ctx.charge(len(data))
        yield PayloadNode(
            member_path(node.path, name), (*node.containers, sniff.TNEF), data, name, att.mime_tag
        )


def _bodies(ctx: Context, node: PayloadNode, props: dict[int, tuple[int, bytes]]) -> Iterator[Node]:
    """The RTF and HTML bodies among the message's MAPI properties, as text payloads."""
    bodies: list[tuple[str, str, bytes]] = []
    if PR_RTF_COMPRESSED in props:
        compressed = props[PR_RTF_COMPRESSED][1]
        path = member_path(node.path, "body.rtf")
        by_ratio = ctx.expansion_cap(len(compressed))
        cap = min(ctx.remaining, by_ratio)
        try:
            rtf = decompress_rtf(compressed, cap)
        except (TnefError, struct.error, IndexError) as exc:
            ctx.skip(path, core.CORRUPT_ARCHIVE, f"TNEF: {exc}")
        else:
            declared = struct.unpack_from("<I", compressed, 4)[0]
            if len(rtf) >= cap and declared > cap:  # the start is still handed on
                reason = core.MAX_EXPANSION_RATIO if cap == by_ratio else core.MAX_DECODED_BYTES
                ctx.skip(path, reason, f"compressed RTF declares {declared} bytes, read {cap}")
            bodies.append(("body.rtf", "text/rtf", rtf))
    if PR_HTML in props:
        ptype, html = props[PR_HTML]
        if ptype == PT_UNICODE:  # PR_BODY_HTML_W: hand the text scan UTF-8
            html = html.decode("utf-16-le", "replace").encode("utf-8")
        bodies.append(("body.html", "text/html", html))
    for name, ctype, data in bodies:
        path = member_path(node.path, name)
        if not data or not ctx.count_member(node.path) or not ctx.fits(path, len(data)):
            continue
        ctx.charge(len(data))
        yield PayloadNode(path, (*node.containers, sniff.TNEF), data, name, ctype)
