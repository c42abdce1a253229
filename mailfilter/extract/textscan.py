"""Payloads hidden in text: uuencoded blocks, `data:` URIs (HTML bodies, CSS, anywhere) and
bodies that are bare base64 without a transfer encoding saying so."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

from mailfilter.extract import decoders, sniff
from mailfilter.extract.core import Context, NeedsWorker, Node, PayloadNode, member_path

_UU_BEGIN = re.compile(rb"^begin(-base64)?[ \t]+[0-7]{1,4}[ \t]+([^\r\n]*?)[ \t]*\r?$", re.M)
_UU_END = re.compile(rb"^end[ \t]*\r?$", re.M)
_B64_END = re.compile(rb"^====[ \t]*\r?$", re.M)
_DATA_URI = re.compile(
    rb"data:([A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127})?"
    rb"((?:;[A-Za-z0-9!#$&^_.+-]{1,127}(?:=[^;,\"'<>\s]{0,256})?){0,16}),",
    re.I,
)
_DATA_MARKER = re.compile(rb"data:", re.I)
_BASE64_DATA = re.compile(rb"[A-Za-z0-9+/%\r\n]*=*(?:%3D)*", re.I)
_PLAIN_DATA = re.compile(rb"[^\"'\s<>)]*")
_B64_OR_SPACE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"


class _Children:
    """Makes child payloads of one text payload, opening it as a container on first use."""

    def __init__(self, ctx: Context, node: PayloadNode) -> None:
        self.ctx = ctx
        self.node = node
        self.kind = node.content_type or "text/plain"
        self.containers = (*node.containers, self.kind)
        self.allowed: bool | None = None

    def open(self) -> bool:
        if self.allowed is None:
            self.allowed = self.ctx.container_allowed(self.node, self.kind)
        return self.allowed and self.ctx.count_member(self.node.path)

    def make(self, name: str, data: bytes, ctype: str | None, filename: str | None) -> PayloadNode:
        self.ctx.charge(len(data))
        path = member_path(self.node.path, name)
        return PayloadNode(path, self.containers, data, filename, ctype)


def scan(ctx: Context, node: PayloadNode) -> Iterator[Node]:
    data = node.data
    kids = _Children(ctx, node)
    found = False
    uu_marker = b"begin" in data
    # (URI schemes are case-insensitive: "Data:image/png;base64,..." works in a browser)
    uri_marker = _DATA_MARKER.search(data) is not None
    if ctx.text_only and (uu_marker or uri_marker):
        # Looking for payloads behind these markers can take milliseconds on hostile
        # text; that work belongs in a worker, not in the event loop.
        raise NeedsWorker
    if uu_marker:
        for child in _uuencoded(ctx, kids):
            found = True
            yield child
    if uri_marker:
        for child in _data_uris(ctx, kids):
            found = True
            yield child
    if not found:
        yield from _bare_base64(ctx, kids)


def _next_at(positions: list[int], after: int, default: int) -> int:
    i = bisect.bisect_right(positions, after)
    return positions[i] if i < len(positions) else default


def _uuencoded(ctx: Context, kids: _Children) -> Iterator[PayloadNode]:
    data = kids.node.data
    begins = [(m.start(), m) for m in _UU_BEGIN.finditer(data)]
    if not begins:
        return
    starts = [s for s, _ in begins]
    ends = [m.start() for m in _UU_END.finditer(data)]
    b64_ends = [m.start() for m in _B64_END.finditer(data)]
    for start, m in begins:
        if not kids.open():
            return
        name = m.group(2).decode("utf-8", "replace").strip() or "uuencoded"
        # a block runs to its end line, and never past the next begin line
        limit = _next_at(starts, start, len(data))
        if m.group(1):  # begin-base64 ... ====
            block = data[m.end() : min(_next_at(b64_ends, m.end() - 1, limit), limit)]
            if not ctx.fits(kids.node.path, len(block) * 3 // 4 + 3):
                return
            decoded, defects = decoders.b64decode(block)
        else:
            stop = min(_next_at(ends, m.end() - 1, limit), limit)
            lines = data[m.end() : stop].splitlines()[1:]
            lines.append(b"end" if stop < limit else b"")
            decoded, over, defects = decoders.uudecode_lines(lines, ctx.remaining)
            if over:
                ctx.fits(kids.node.path, ctx.remaining + 1)
                return
        for d in defects:
            ctx.defect(kids.node.path, d)
        if decoded:
            yield kids.make(name, decoded, None, name)


def _data_uris(ctx: Context, kids: _Children) -> Iterator[PayloadNode]:
    data = kids.node.data
    n = 0
    pos = 0
    while (m := _DATA_URI.search(data, pos)) is not None:
        pos = m.end()
        mediatype = (m.group(1) or b"").decode("ascii", "replace").lower() or None
        is_base64 = b";base64" in m.group(2).lower()
        if not is_base64 and not (mediatype or "").startswith("image/"):
            continue  # text/plain,hello and the like
        body_re = _BASE64_DATA if is_base64 else _PLAIN_DATA
        body_match = body_re.match(data, pos)
        body = body_match.group(0) if body_match else b""
        if not body:
            continue
        # The next URI starts after this one's data: searching inside it again would make
        # "data:image/gif,data:image/gif,..." quadratic (seconds for 64 KB).
        pos += len(body)
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
        ):
            continue
        if not kids.open():
            return
        n += 1
        yield kids.make(f"data-uri-{n}", decoded, mediatype, None)


def _bare_base64(ctx: Context, kids: _Children) -> Iterator[PayloadNode]:
    """A body that is nothing but base64 of an image or archive (a part that lost its
    Content-Transfer-Encoding, or was encoded twice)."""
    data = kids.node.data
    if len(data) < 64 or data[:4096].translate(None, _B64_OR_SPACE):
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
