"""The content sweep under the MIME structure: payloads found by their bytes, wherever they are.

Three nets, so that no structural trick (a part the MIME walk never reaches, a body hidden in a
header, a container we cannot read) hides bytes from fingerprinting:

- the raw message (`raw_message`, after the walk): base64 runs, uuencode blocks and BinHex
  outside the spans the MIME walk already decoded (`Context.cover`), so an ordinary message
  costs a search over its headers and delimiter lines and decodes nothing;
- text (textscan.py calls `base64_runs`, `binhex`, `hex_runs`, `uuencoded`): the same
  searches in every text payload, plus RTF's hexadecimal pictures and objects;
- carving (`carve`): image and container signatures at offsets past 0 in payloads no handler
  recognised (unknown binary, a container whose reader failed), each tail handed on as a
  candidate, at most MAX_CARVED per message (then `carve-limit`).

Every payload found goes through `Children.make`, so the message's budgets apply.
"""

from __future__ import annotations

import binascii
import bisect
import heapq
import re
from collections.abc import Iterator
from dataclasses import replace

from mailfilter.extract import core, decoders, sniff
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# A base64 run shorter than this many characters (whitespace not counted) is left alone:
# DKIM signatures and message IDs are that short, pictures worth matching are not.
MIN_RUN = 256
# Hexadecimal runs (RTF pictures and objects) shorter than this many digits are left alone.
MIN_HEX_RUN = 256
# At most this many candidates are carved out of payloads per message.
MAX_CARVED = 32
# At most this many signature hits are examined per payload (random data has a few).
MAX_SIGNATURE_HITS = 1024
# Path of what the raw sweep finds (`sweep/b64-1`), and the container type it adds.
SWEEP = "sweep"
# Content type of a container carved out of a payload: the walk opens it quietly (a
# signature met by chance is no corrupt archive).
CARVED = "application/x-carved"

_WHITESPACE = b" \t\r\n\x0b\x0c"
_B64 = rb"A-Za-z0-9+/"
# Lines of base64 (indented or not), or one long stretch of it inside a line, matched from
# the start of a token of 16 characters or more (words of text are shorter); a run ends at
# its padding, at a blank line, or before a line that is not all base64 (a line goes on
# only to its end, or to a quote, `<` or `)` closing an attribute or a CSS url: "From:" or
# "Thanks for" after a run are text). Tokens are found with a byte search over a
# translated copy (`_runs_of`): a regex search tried at every position costs 70 ms per MB
# of text, the byte search a few.
B64_RUN = re.compile(
    rb"[" + _B64 + rb"]{16,}(?:[ \t]*(?:\r\n|\r|\n)[ \t]*[" + _B64 + rb"]+"
    rb"(?==?=?[ \t]*(?:[\r\n\"'<)]|\Z)))*={0,2}"
)
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_MAP = bytes(65 if c in _B64_CHARS else 46 for c in range(256))  # "A" or "."
_TOKEN_END = re.compile(rb"[ \t\r\n]")
_SEED = b"A" * 16  # (a token of 16 base64 characters, in the translated copy)
# Hexadecimal with whitespace anywhere in it (RTF writers wrap it), from its first digit.
HEX_RUN = re.compile(rb"[ \t\r\n]*[0-9A-Fa-f](?:[ \t\r\n]*[0-9A-Fa-f]){255,}")
_HEX_MAP = bytes(72 if c in b"0123456789abcdefABCDEF \t\r\n" else 46 for c in range(256))
_RTF_BIN = re.compile(rb"\\bin([0-9]{1,10}) ?")
_UU_BEGIN = re.compile(rb"^begin(-base64)?[ \t]+[0-7]{1,4}[ \t]+([^\r\n]*?)[ \t]*\r?$", re.M)
_UU_END = re.compile(rb"^end[ \t]*\r?$", re.M)
_B64_END = re.compile(rb"^====[ \t]*\r?$", re.M)
_DATA_URI_MARK = re.compile(rb"data:", re.I)
_UU_BEGIN_LINE = re.compile(rb"^begin[ \t]+[0-7]{1,4}[ \t]", re.M)
_TEXTISH = bytes(range(32, 127)) + b"\t\r\n\x0c"

# Image and container signatures worth carving, found by one regex alternation of literals
# (its first bytes let the engine skip quickly: 10 ms per MB, a find per signature costs
# more) plus a find for each magic that sits further into its file (`_LATE_MAGIC`: ISO-BMFF's
# `ftyp`, tar's `ustar`, ISO 9660's volume descriptor, EMF's ` EMF`). Every hit is checked by sniff
# before use (RIFF must be WebP, BM a real BMP header, ...).
_SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM", b"II*\x00",
    b"MM\x00*", b"PK\x03\x04", b"\x1f\x8b\x08", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07", b"%PDF-", b"\x78\x9f\x3e\x22", b"\x28\xb5\x2f\xfd", b"MSCF\x00\x00\x00\x00",
    b"xar!\x00\x1c", b"LZIP", b"\x04\x22\x4d\x18", b"07070", b"ID3",
    sniff.WMF_PLACEABLE_KEY, b"\x01\x00\x09\x00\x00\x03", b"\x02\x00\x09\x00\x00\x03",
)
_SIGNATURE_RX = re.compile(b"|".join(re.escape(sig) for sig in _SIGNATURES))
_LATE_MAGIC = ((b"ftyp", 4), (b"ustar", 257), (b"\x01CD001\x01", 0x8000), (b" EMF", 40))
_SNIFF_BYTES = 64 * 1024
# A reader's own verdict that it cannot read the bytes (a parse-error is our bug, not the
# container's: what the reader found before it stays, nothing is carved).
_FAILED = frozenset({core.CORRUPT_ARCHIVE, core.UNSUPPORTED_ARCHIVE})
# Parts the walk refused on purpose: the message is unscannable already, and the limits
# bound its cost, so the raw sweep does not go looking under them.
_WALK_LIMITS = frozenset({core.MAX_DEPTH, core.MAX_PARTS})


class Children:
    """Makes the child payloads of one node, opening it as a container on first use (depth
    and member budgets), and hands each distinct payload on once."""

    def __init__(self, ctx: Context, node: PayloadNode, kind: str | None = None) -> None:
        self.ctx = ctx
        self.node = node
        self.kind = kind or node.content_type or "text/plain"
        self.containers = (*node.containers, self.kind)
        self.allowed: bool | None = None
        self._seen: set[bytes] = set()
        self._counts: dict[str, int] = {}

    def next_name(self, prefix: str) -> str:
        """`prefix-1`, `prefix-2`, ... numbered over all the node's children."""
        n = self._counts.get(prefix, 0) + 1
        self._counts[prefix] = n
        return f"{prefix}-{n}"

    def open(self) -> bool:
        if self.allowed is None:
            self.allowed = self.ctx.container_allowed(self.node, self.kind)
        return self.allowed and self.ctx.count_member(self.node.path)

    def novel(self, data: bytes) -> bool:
        """Whether `data` was not handed on from this node yet (several readings of one
        text find the same payload)."""
        if data in self._seen:
            return False
        self._seen.add(data)
        return True

    def fragment(self, data: bytes) -> bool:
        """Whether `data` is the start of a payload handed on already (one reading of a
        text cut short by a character reference that another reading decoded whole)."""
        head = data[: max(16, len(data) - 3)]  # the last group may decode differently
        return any(len(p) > len(data) and p.startswith(head) for p in self._seen)

    def make(self, name: str, data: bytes, ctype: str | None, filename: str | None) -> PayloadNode:
        self.ctx.charge(len(data))
        self._seen.add(data)
        self.ctx.handed.add((len(data), hash(data)))
        path = member_path(self.node.path, name)
        return PayloadNode(path, self.containers, data, filename, ctype)


# --- what bytes hold --------------------------------------------------------------------


def kind_at_start(data: bytes) -> str | None:
    """The image or container type the bytes start with."""
    return sniff.image_type(data) or sniff.container_type(data)


# The first two bytes of every image and container sniff recognises (magic.image_format,
# sniff.container_type): 1 where some format may start so, 2 where an OpenPGP packet may
# (sniff's packet tags: then its own test decides). KEEP IN STEP WITH SNIFF: a format added
# there needs its first bytes here (test_text_only.py checks the formats it can build).
# Formats that start with anything are let through by `may_start_file` itself.
def _first_bytes() -> bytes:
    table = bytearray(1 << 16)

    def mark(first: int, second: int | None = None, value: int = 1) -> None:
        for b in range(256) if second is None else (second,):
            table[first << 8 | b] = max(table[first << 8 | b], value)

    for prefix in (
        b"\xff\xd8", b"\xff\x4f", b"\xff\x0a", b"\x89P", b"GI", b"RI", b"II", b"MM", b"BM",
        b"\x00\x00", b"8B",  # images (ICO, JPEG 2000 and JPEG XL boxes start with 0 0)
        b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"#d", b"\x0a\x00", b"\x0a\x02", b"\x0a\x03",
        b"\x0a\x04", b"\x0a\x05",  # Netpbm, XBM, PCX
        b"PK", b"\x1f\x8b", b"\x1f\x9d", b"BZ", b"\xfd7", b"7z", b"Ra", b"\x78\x9f", b"\x28\xb5",
        b"MS", b"xa", b"LZ", b"\x04\x22", b"\x02\x21", b"07", b"\xc7\x71", b"\x71\xc7",
        b"\x5d\x00",  # LZMA_Alone: a dictionary of at least 64 KiB, a power of two
        b"ID", b"fL", b"Og",  # audio: ID3v2, FLAC, Ogg
        b"\xd7\xcd", b"\x01\x00", b"\x02\x00",  # WMF (placeable, memory, disk), EMF
        b"\x1a\x45",  # Matroska/WebM (MP4/MOV start with a box size: 0 0; AVI is RIFF)
    ):
        mark(prefix[0], prefix[1])
    for first in b" \t\r\n\x0b\x0c-%0":  # ASCII armor or a PDF after white space; CMS
        mark(first)
    for first in range(0x80, 0x100):  # OpenPGP packets: new and old header formats
        tag = first & 0x3F if first & 0x40 else (first >> 2) & 0x0F
        if tag in sniff._PGP_FIRST:
            mark(first, value=2)
    return bytes(table)


_FIRST_BYTES = _first_bytes()


def may_start_file(head: bytes) -> bool:
    """Whether `kind_at_start(head)` may find an image or container (False: it finds none,
    for certain), by a table of first bytes and a few C-level tests."""
    if len(head) < 2:
        return True
    gate = _FIRST_BYTES[head[0] << 8 | head[1]]
    if gate == 1 or head[4:8] == b"ftyp" or b"%PDF-" in head[:1040]:
        return True
    # (tar headers and ISO 9660 images start with anything: sniff's own tests)
    if len(head) >= 512 and (len(head) > 0x8001 or sniff._is_tar(head)):
        return True
    return gate == 2 and sniff._is_openpgp(head)  # (no other format starts so)


def signatures(data: bytes, first: int = 1) -> Iterator[tuple[int, str]]:
    """(offset, type) of each checked image or container signature at `first` or later."""
    candidates = heapq.merge(
        (m.start() for m in _SIGNATURE_RX.finditer(data, first)),
        *(_late_magic(data, first, magic, back) for magic, back in _LATE_MAGIC),
    )
    for hits, at in enumerate(candidates):
        if hits >= MAX_SIGNATURE_HITS:
            return
        head = data[at : at + _SNIFF_BYTES]
        kind = sniff.image_type(head)
        if kind == "image/jpeg" and not _plausible_jpeg(head):
            continue
        if kind is None:
            kind = sniff.container_type(head)
            if kind == sniff.PDF and not head.startswith(b"%PDF-"):
                continue  # the PDF rule that allows junk first would find it again
        if kind is not None:
            yield at, kind


def _late_magic(data: bytes, first: int, magic: bytes, back: int) -> Iterator[int]:
    """Where files start whose `magic` sits `back` bytes into them."""
    pos = first + back
    while (i := data.find(magic, pos)) >= 0:
        pos = i + 1
        yield i - back


def _plausible_jpeg(head: bytes) -> bool:
    """Three bytes are a weak signature: also require marker segments up to a scan."""
    pos = 2
    for _ in range(8):
        if pos + 4 > len(head):
            return pos > 2
        if head[pos] != 0xFF or head[pos + 1] < 0xC0 or head[pos + 1] in (0xD8, 0xFF):
            return False
        if head[pos + 1] == 0xDA:
            return True
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        if length < 2:
            return False
        pos += 2 + length
    return True


def carved_end(data: bytes, at: int, kind: str) -> int:
    """Where the file that starts at `at` ends, when its format says so (else the end of
    `data`): so a carved picture keeps its own bytes, and exact hashes match."""
    size = len(data)
    if kind == "image/jpeg":
        return _jpeg_end(data, at)
    if kind == "image/png":
        pos = at + 8
        for _ in range(1 << 16):
            if pos + 12 > size:
                break
            length = int.from_bytes(data[pos : pos + 4], "big")
            end = pos + 12 + length
            if data[pos + 4 : pos + 8] == b"IEND":
                return min(end, size)
            pos = end
        return size
    if kind == "image/webp":
        return min(size, at + 8 + int.from_bytes(data[at + 4 : at + 8], "little"))
    if kind == "image/bmp":
        length = int.from_bytes(data[at + 2 : at + 6], "little")
        return at + length if 26 <= length <= size - at else size
    if kind == "image/gif":
        return _gif_end(data, at)
    if kind == sniff.WMF:  # the standard header's Size, in 16-bit words
        start = at + 22 if data[at : at + 4] == sniff.WMF_PLACEABLE_KEY else at
        length = int.from_bytes(data[start + 6 : start + 10], "little") * 2
        return start + length if 18 <= length <= size - start else size
    if kind == sniff.EMF:  # EMR_HEADER's Bytes
        length = int.from_bytes(data[at + 48 : at + 52], "little")
        return at + length if 88 <= length <= size - at else size
    return size


def _jpeg_end(data: bytes, at: int) -> int:
    """After the end-of-image marker: marker segments are skipped by their lengths (so an
    EXIF thumbnail's end is not taken for the picture's), and in the coded data after the
    first scan no 0xFF 0xD9 occurs but the real one."""
    size = len(data)
    for marker, pos in _jpeg_markers(data, at + 2):
        if marker == 0xD9:
            return pos + 2
        if marker == 0xDA:
            eoi = data.find(b"\xff\xd9", pos + 2)
            return eoi + 2 if eoi >= 0 else size
    eoi = data.rfind(b"\xff\xd9", at)  # not walkable: the last end marker there is
    return eoi + 2 if eoi > at else size


def _jpeg_markers(data: bytes, pos: int) -> Iterator[tuple[int, int]]:
    """(marker, position) of each JPEG marker segment from `pos`, skipped by their lengths,
    up to and including the end-of-image or start-of-scan marker (at most 4096 segments;
    it stops early where the data is not a marker)."""
    size = len(data)
    for _ in range(4096):
        if pos + 4 > size or data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        yield marker, pos
        if marker in (0xD9, 0xDA):
            return
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


_GIF_MAX_STEPS = 1 << 18  # blocks walked to find a GIF's end (then: the rest of the data)


def _gif_end(data: bytes, at: int) -> int:
    steps = 0
    size = len(data)
    pos = at + 13
    if at + 11 > size:
        return size
    flags = data[at + 10]
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    while pos < size:
        block = data[pos]
        if block == 0x3B:
            return pos + 1
        if block == 0x21:
            pos += 2
        elif block == 0x2C:
            if pos + 10 > size:
                return size
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:
                pos += 3 << ((flags & 7) + 1)
            pos += 1  # LZW minimum code size
        else:
            return size
        while pos < size and data[pos]:  # sub-blocks up to the terminator
            pos += data[pos] + 1
            steps += 1
            if steps > _GIF_MAX_STEPS:
                return size
        pos += 1
    return size


def has_hidden(data: bytes, sniff_start: bool = True) -> bool:
    """Whether decoded bytes are worth handing on: an image or container at the start
    (unless the caller looked already) or further in, or text with something hidden in it."""
    if sniff_start and kind_at_start(data) is not None:
        return True
    if _signature_candidates(data) and next(signatures(data), None) is not None:
        return True
    return _text_markers(data)


def _signature_candidates(data: bytes, first: int = 1) -> bool:
    """Whether `signatures` has any candidate to check (C-level searches: the generators,
    heap merge and checks cost several microseconds even where none is found)."""
    if _SIGNATURE_RX.search(data, first) is not None:
        return True
    for magic, back in _LATE_MAGIC:  # noqa: SIM110  (a loop: any() costs a generator)
        if data.find(magic, first + back) >= 0:
            return True
    return False


def _text_markers(data: bytes) -> bool:
    """Whether decoded bytes are text with something hidden in it (base64 of a mail body
    that holds a uuencoded picture, say). Binary is not text: two checks of its head."""
    probe = data[:1024]
    if len(probe.translate(None, _TEXTISH)) > len(probe) // 8:
        return False
    return (
        (b"begin" in data and _UU_BEGIN_LINE.search(data) is not None)
        or _DATA_URI_MARK.search(data) is not None
        or decoders.BINHEX_MARKER in data
        or b"{\\rtf" in data
        or any(_long_runs(data, 0, len(data)))
    )


# --- carving ----------------------------------------------------------------------------


def _carve_limit_reached(ctx: Context, kids: Children) -> bool:
    """Whether the message's carving budget is spent (recorded as carve-limit: what is
    left is not looked at)."""
    if ctx.carved < MAX_CARVED:
        return False
    ctx.skip(kids.node.path, core.CARVE_LIMIT,
             f"more than {MAX_CARVED} signatures carved out of payloads in the message")
    return True


def carve(ctx: Context, kids: Children, data: bytes, first: int = 1) -> Iterator[PayloadNode]:
    """The files whose signatures sit in `data` at `first` or later, each cut where its
    format ends (else at the end of the data); signatures inside a carved file are left to
    the walk of that file."""
    busy_until = first
    for at, kind in signatures(data, first):
        if at < busy_until:
            continue
        if _carve_limit_reached(ctx, kids):
            return
        end = carved_end(data, at, kind)
        busy_until = end
        piece = data[at:end]
        if not kids.novel(piece) or not ctx.fits(kids.node.path, len(piece)):
            continue
        if not kids.open():
            return
        ctx.carved += 1
        image = sniff.image_type(piece)
        yield kids.make(f"carved-{at}", piece, image or CARVED, None)


# What readers report about a container carved out of other bytes (and about what is in
# it) that says nothing but "these bytes are not what their signature promised": a
# signature met by chance, or a file stored in pieces (an Office theme zip inside an OLE
# document reads as a zip bomb). Budget records stay: they mean the walk stopped looking.
_CARVED_NOISE = frozenset({
    core.CORRUPT_ARCHIVE, core.ZIP_BOMB, core.UNSUPPORTED_ARCHIVE, core.PARSE_ERROR,
    core.ENCRYPTED_ARCHIVE, core.ENCRYPTED_MESSAGE, core.MAX_DEPTH, core.MAX_EXPANSION_RATIO,
    core.UNSUPPORTED_IMAGE,
})


def forget_reader_failures(ctx: Context, path: str, since: int) -> None:
    """Drop the reader failures recorded (from record `since` on) for a carved container
    at `path` and what is in it."""
    prefix = path + "/"
    kept = [
        u for u in ctx.unscannable[since:]
        if u.reason not in _CARVED_NOISE
        or not (u.mime_path == path or u.mime_path.startswith(prefix))
    ]
    del ctx.unscannable[since:]
    ctx.unscannable.extend(kept)


def after_image(ctx: Context, node: PayloadNode, image: str) -> Iterator[Node]:
    """What is glued after a picture's own end (a polyglot: a GIF then a 7z archive, a JPEG
    then a cabinet, which unarchivers find): carved like unknown binary. A JPEG's
    application segments are searched for the JPEGs they hold (the Exif thumbnail, which
    file managers show as the file's preview)."""
    data = node.data
    path = core.container_path(node.path, node.filename)
    kids = Children(ctx, replace(node, path=path), image)
    if image == "image/jpeg":
        yield from _jpeg_app_pictures(ctx, kids, data)
    end = carved_end(data, 0, image)
    trailer = _TRAILERS.get(image)
    if trailer and end >= len(data) and not data.rstrip(b"\0\r\n").endswith(trailer):
        # Its end was not found (cut off, or garbage after a header): what follows the
        # signature may be anything, so all of it is carved (the decoder may find no pixel
        # data at all, and then these bytes are all there is to look at).
        yield from carve(ctx, kids, data)
        return
    if end >= len(data) - 16:  # nothing after it, or a few bytes of padding
        return
    yield from carve(ctx, kids, data, end)


# How a picture file ends when it is whole (where its format says so).
_TRAILERS = {"image/jpeg": b"\xff\xd9", "image/png": b"IEND\xaeB`\x82", "image/gif": b";"}


def _app_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of the payload of each APPn segment before a JPEG's first scan."""
    size = len(data)
    for marker, pos in _jpeg_markers(data, 2):
        if 0xE0 <= marker <= 0xEF:
            yield pos + 4, min(size, pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big"))


def _jpeg_app_pictures(ctx: Context, kids: Children, data: bytes) -> Iterator[PayloadNode]:
    """The JPEGs inside a JPEG's APPn segments (Exif IFD1 thumbnail, FlashPix or vendor
    previews), each cut at its end marker within the segment."""
    for start, end in _app_segments(data):
        segment = data[start:end]
        at = segment.find(b"\xff\xd8\xff")
        while at >= 0:
            if not _plausible_jpeg(segment[at : at + _SNIFF_BYTES]):
                at = segment.find(b"\xff\xd8\xff", at + 1)
                continue
            if _carve_limit_reached(ctx, kids):
                return
            stop = _jpeg_end(segment, at)
            piece = segment[at:stop]
            if kids.novel(piece) and ctx.fits(kids.node.path, len(piece)):
                if not kids.open():
                    return
                ctx.carved += 1
                yield kids.make(f"preview-{start + at}", piece, "image/jpeg", None)
            at = segment.find(b"\xff\xd8\xff", max(stop, at + 1))


def after_failed_container(ctx: Context, node: PayloadNode, since: int) -> Iterator[Node]:
    """A container whose reader failed (or whose format is unsupported) is carved for the
    pictures and containers it holds uncompressed. `since`: the number of unscannable
    records before the reader ran."""
    path = core.container_path(node.path, node.filename)
    if not any(
        u.reason in _FAILED and u.mime_path in (path, node.path)
        for u in ctx.unscannable[since:]
    ):
        return
    kind = node.content_type or "application/octet-stream"
    yield from carve(ctx, Children(ctx, replace(node, path=path), kind), node.data)


# --- base64 runs ------------------------------------------------------------------------


def _runs_of(
    pattern: re.Pattern[bytes], table: bytes, seed: bytes, data: bytes, start: int, end: int,
    limit: int | None = None, mapped: bytes | None = None,
) -> Iterator[re.Match[bytes]]:
    """Matches of `pattern` starting in data[start:end] (and going on up to `limit`, by
    default `end`), each tried only where a token of the characters `table` maps to "A"/"H"
    and `seed` (a row of those) begins. `mapped`: data[start:end] translated, if at hand."""
    limit = end if limit is None else limit
    if mapped is None:
        mapped = data[start:end].translate(table)
    other = b"."
    pos = 0
    while (i := mapped.find(seed, pos)) >= 0:
        j = mapped.rfind(other, pos, i)
        token = j + 1 if j >= 0 else pos
        m = pattern.match(data, start + token, limit)
        if m is None:
            nxt = mapped.find(other, i)
            pos = len(mapped) if nxt < 0 else nxt
            continue
        pos = max(m.end() - start, i + 1)
        yield m


def _long_runs(
    data: bytes, start: int, end: int, limit: int | None = None
) -> Iterator[tuple[int, int]]:
    """Spans of base64 runs of at least MIN_RUN characters starting in data[start:end]
    (and going on up to `limit`, by default `end`)."""
    for m in _runs_of(B64_RUN, _B64_MAP, _SEED, data, start, end, limit):
        if m.end() - m.start() >= MIN_RUN and _run_chars(data, m.start(), m.end()) >= MIN_RUN:
            yield m.start(), m.end()


def _run_chars(data: bytes, start: int, end: int) -> int:
    return len(data[start:end].translate(None, b" \t\r\n"))  # (one C pass, not four)


_HEAD_CHARS = _SNIFF_BYTES * 4 // 3


def decode_run(run: bytes, gated: bool = False) -> tuple[bytes, str | None]:
    """A base64 run decoded, and the image or container type it starts with. When the first
    token of a run of lines may be text glued to it (its length breaks the 4-character
    alignment of the lines after it), decoding from the second line is tried as well; the
    reading whose start is an image or container wins, else the one aligned on the second
    line's 4-character groups. `gated`: sniff only heads that `may_start_file` lets through
    (text-only mode: a DKIM signature costs a table look-up, not 25 us of sniffing)."""
    first = _TOKEN_END.search(run)
    stripped = run.translate(None, _WHITESPACE)
    starts = [0]
    if first is not None and first.start() % 4 and first.start() < len(stripped):
        starts.append(first.start())  # (a token of 16 or more that breaks the alignment)
    whole: dict[int, bytes] = {}
    for k in starts:
        if len(stripped) - k <= _HEAD_CHARS:  # short: decode it all once
            whole[k] = head = _b64(stripped[k:])
        else:
            head = _b64(stripped[k : k + _HEAD_CHARS])
        kind = kind_at_start(head) if not gated or may_start_file(head) else None
        if kind is not None:
            return whole.get(k) or _b64(stripped[k:]), kind
    k = starts[-1] if first is not None and first.start() % 4 else 0
    return whole.get(k) or _b64(stripped[k:]), None


def _b64(chars: bytes) -> bytes:
    """Base64 characters (a run, whitespace taken out) decoded: binascii directly, the
    forgiving decoder when that fails (padding in the middle, a dangling character)."""
    body = chars.rstrip(b"=")
    if len(body) % 4 == 1:
        body = body[:-1]
    try:
        return binascii.a2b_base64(body + b"=" * (-len(body) % 4), strict_mode=True)
    except binascii.Error:
        return decoders.b64decode(chars)[0]


def base64_runs(
    ctx: Context, kids: Children, data: bytes, start: int = 0, end: int | None = None,
    skip: list[tuple[int, int]] | None = None, extend: bool = False, name: str = "b64",
) -> Iterator[PayloadNode]:
    """Runs of base64 in data[start:end] that decode to an image, a container or text with
    something hidden in it. `skip`: sorted, merged spans already looked at (a run wholly
    inside one is left alone). `extend`: a run that starts before `end` may go on past it
    (into what the walk decoded: the part before it alone would be cut off)."""
    end = len(data) if end is None else end
    yield from _decoded_runs(ctx, kids, data, _run_spans(data, start, end, skip, extend), name)


def _run_spans(
    data: bytes, start: int, end: int, skip: list[tuple[int, int]] | None, extend: bool
) -> list[tuple[int, int]]:
    """The spans `base64_runs` looks at (see there)."""
    mapped = data[start:end].translate(_B64_MAP)
    if _SEED not in mapped:
        return []  # (no token long enough: most text, and most header blocks)
    limit = len(data) if extend else end
    # (`_long_runs`, one generator less)
    spans = [
        (m.start(), m.end())
        for m in _runs_of(B64_RUN, _B64_MAP, _SEED, data, start, end, limit, mapped)
        if m.end() - m.start() >= MIN_RUN and _run_chars(data, m.start(), m.end()) >= MIN_RUN
    ]
    if skip and spans:
        spans = [(s, e) for s, e in spans if not _inside(skip, s, e)]
    return spans


def _decoded_runs(
    ctx: Context, kids: Children, data: bytes, spans: list[tuple[int, int]], name: str
) -> Iterator[PayloadNode]:
    for s, e in spans:
        # Decoded first, charged only if handed on: a signature header that decodes to
        # nothing of interest must not make a message near its budget unscannable.
        decoded, kind = decode_run(data[s:e], True) if ctx.text_only else decode_run(data[s:e])
        if len(decoded) < 16 or (kind is None and not has_hidden(decoded, False)):
            continue
        if not kids.novel(decoded) or kids.fragment(decoded):
            continue
        if not ctx.fits(kids.node.path, len(decoded)):
            return
        if not kids.open():
            return
        kind = sniff.image_type(decoded)
        yield kids.make(kids.next_name(name), decoded, kind, None)


def _inside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect_right(spans, (start, 1 << 62)) - 1
    return i >= 0 and spans[i][0] <= start and end <= spans[i][1]


# --- uuencode, BinHex, hexadecimal ----------------------------------------------------------


def _next_at(positions: list[int], after: int, default: int) -> int:
    i = bisect.bisect_right(positions, after)
    return positions[i] if i < len(positions) else default


def uuencoded(
    ctx: Context, kids: Children, data: bytes,
    regions: list[tuple[int, int]] | None = None, spans: list[tuple[int, int]] | None = None,
) -> Iterator[PayloadNode]:
    """uuencoded (and `begin-base64`) blocks whose begin line lies in one of `regions` (by
    default: anywhere); a block runs to its end line, and never past the next begin line.
    `spans` collects the blocks' extents. (All regions at once: the end lines are found in
    one pass, however many regions have a begin line.)"""
    regions = [(0, len(data))] if regions is None else regions
    begins = [(m.start(), m) for s, e in regions for m in _UU_BEGIN.finditer(data, s, e)]
    if not begins:
        return
    starts = [s for s, _ in begins]
    ends = [m.start() for m in _UU_END.finditer(data, begins[0][0])]
    b64_ends = [m.start() for m in _B64_END.finditer(data, begins[0][0])]
    for at, m in begins:
        if not kids.open():
            return
        name = m.group(2).decode("utf-8", "replace").strip() or "uuencoded"
        limit = _next_at(starts, at, len(data))
        if m.group(1):  # begin-base64 ... ====
            stop = min(_next_at(b64_ends, m.end() - 1, limit), limit)
            block = data[m.end() : stop]
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
        if spans is not None:
            spans.append((at, stop))
        for d in defects:
            ctx.defect(kids.node.path, d)
        if decoded and kids.novel(decoded):
            yield kids.make(name, decoded, None, name)


def binhex(
    ctx: Context, kids: Children, data: bytes, start: int = 0, end: int | None = None,
    spans: list[tuple[int, int]] | None = None,
) -> Iterator[PayloadNode]:
    """BinHex 4.0 files whose marker line lies in data[start:end]: the data fork, and the
    resource fork when there is one."""
    end = len(data) if end is None else end
    pos = start
    while (at := data.find(decoders.BINHEX_MARKER, pos, end)) >= 0:
        colon = data.find(b":", at + len(decoders.BINHEX_MARKER))
        closing = data.find(b":", colon + 1) if colon >= 0 else -1
        stop = len(data) if closing < 0 else closing + 1
        pos = max(stop, at + 1)
        if colon < 0:
            break
        if spans is not None:
            spans.append((at, stop))
        if not kids.open():
            return
        found, over = decoders.binhex_decode(data[colon:stop], ctx.remaining)
        if over:
            ctx.fits(kids.node.path, ctx.remaining + 1)
            return
        if found is None:
            ctx.defect(kids.node.path, "binhex-undecodable")
            continue
        for d in found.defects:
            ctx.defect(kids.node.path, d)
        name = found.name.replace("/", ":").strip() or "binhex"
        for fork, suffix in ((found.data, ""), (found.resource, ".rsrc")):
            if fork and kids.novel(fork):
                yield kids.make(name + suffix, fork, sniff.image_type(fork), name + suffix)


def _hex_payload(data: bytes, start: int, end: int) -> bytes:
    """A hex run decoded. A run glued to the text before it (`\\pich120` then a line break
    then the picture) starts with that parameter's digits: without them the bytes are read
    from the first whitespace on, unless the run as it is starts with an image."""
    decoded = decoders.hexdecode(data[start:end])
    if start == 0 or data[start - 1 : start] in (b" ", b"\t", b"\r", b"\n", b"{", b"}"):
        return decoded
    if kind_at_start(decoded) is not None:
        return decoded
    ws = _TOKEN_END.search(data, start, end)
    return decoders.hexdecode(data[ws.end() : end]) if ws is not None else decoded


_BI_BITFIELDS = 3


def dib_as_bmp(dib: bytes) -> bytes:
    """A device-independent bitmap (RTF `\\dibitmap`: a BMP without its 14-byte file
    header, which Word draws) as a BMP file, so the decode stage reads it; bytes that do not
    start with a bitmap header are returned as they are."""
    if len(dib) < 16:
        return dib
    header = int.from_bytes(dib[0:4], "little")
    if header == 12:  # BITMAPCOREHEADER: 3-byte palette entries, no colour count
        bits = int.from_bytes(dib[10:12], "little")
        palette = (1 << bits) * 3 if bits <= 8 else 0
    elif header in (40, 52, 56, 64, 108, 124) and len(dib) >= 40:
        bits = int.from_bytes(dib[14:16], "little")
        compression = int.from_bytes(dib[16:20], "little")
        used = int.from_bytes(dib[32:36], "little")
        colours = used or (1 << bits if bits <= 8 else 0)
        palette = colours * 4
        if header == 40 and compression == _BI_BITFIELDS:
            palette += 12  # the three colour masks follow a plain info header
    else:
        return dib
    offset = 14 + header + palette
    if offset > 14 + len(dib):
        return dib
    return b"BM" + (14 + len(dib)).to_bytes(4, "little") + bytes(4) + offset.to_bytes(
        4, "little") + dib


_PICT_PARAM = re.compile(rb"\\(picw|pich|wbmbitspixel|wbmplanes|wbmwidthbytes)(-?[0-9]{1,9})")


def wbitmap_as_bmp(bits: bytes, controls: bytes) -> bytes:
    """An RTF `\\wbitmap` (a Windows device-dependent bitmap: rows of pixels, top row first,
    each `\\wbmwidthbytes` long, sized by `\\picw` and `\\pich` in pixels) as a BMP file,
    for the depths whose colours need no device palette (1: black and white, 24, 32);
    else the bytes as they are."""
    params = {m.group(1): int(m.group(2)) for m in _PICT_PARAM.finditer(controls)}
    width, height = params.get(b"picw", 0), params.get(b"pich", 0)
    depth, planes = params.get(b"wbmbitspixel", 1), params.get(b"wbmplanes", 1)
    if depth not in (1, 24, 32) or planes != 1 or not 0 < width <= 1 << 15 or not (
            0 < height <= 1 << 15):
        return bits
    row = (width * depth + 7) // 8
    given = params.get(b"wbmwidthbytes", (row + 1) // 2 * 2)
    stride = (width * depth + 31) // 32 * 4
    if given < row or given * height > len(bits):
        return bits
    pixels = b"".join(bits[y * given : y * given + row].ljust(stride, b"\0")
                      for y in range(height))
    palette = b"\0\0\0\0\xff\xff\xff\0" if depth == 1 else b""
    offset = 14 + 40 + len(palette)
    info = (40).to_bytes(4, "little") + width.to_bytes(4, "little") + (-height).to_bytes(
        4, "little", signed=True) + (1).to_bytes(2, "little") + depth.to_bytes(2, "little")
    info += bytes(4) + len(pixels).to_bytes(4, "little") + bytes(8)
    info += (2 if depth == 1 else 0).to_bytes(4, "little") + bytes(4)
    return (b"BM" + (offset + len(pixels)).to_bytes(4, "little") + bytes(4)
            + offset.to_bytes(4, "little") + info + palette + pixels)


def hex_runs(
    ctx: Context, kids: Children, data: bytes, spans: list[tuple[int, int]] | None = None,
) -> Iterator[PayloadNode]:
    """Long runs of hexadecimal (RTF `\\pict` pictures and `\\objdata` objects, wrapped by
    their writers) and RTF `\\binN` binary data, decoded; what holds an image or container
    is handed on."""
    for m in _runs_of(HEX_RUN, _HEX_MAP, b"H" * MIN_HEX_RUN, data, 0, len(data)):
        decoded = _hex_payload(data, m.start(), m.end())
        before = data[max(0, m.start() - 512) : m.start() + 16]
        pict_at = before.rfind(b"\\pict")
        label = "objdata" if before.rfind(b"\\objdata") > pict_at else "pict"
        if label == "pict" and pict_at >= 0 and b"\\dibitmap" in before[pict_at:]:
            decoded = dib_as_bmp(decoded)
        elif label == "pict" and pict_at >= 0 and b"\\wbitmap" in before[pict_at:]:
            decoded = wbitmap_as_bmp(decoded, before[pict_at:])
        if spans is not None:
            spans.append((m.start(), m.end()))
        if not kids.novel(decoded) or not has_hidden(decoded):
            continue
        if not ctx.fits(kids.node.path, len(decoded)) or not kids.open():
            return
        yield kids.make(kids.next_name(label), decoded, sniff.image_type(decoded), None)
    for m in _RTF_BIN.finditer(data):
        size = int(m.group(1))
        blob = data[m.end() : m.end() + size]
        if len(blob) < 16 or not kids.novel(blob) or not has_hidden(blob):
            continue
        if not ctx.fits(kids.node.path, len(blob)) or not kids.open():
            return
        yield kids.make(kids.next_name("bin"), blob, sniff.image_type(blob), None)


# --- the raw message ----------------------------------------------------------------------


def uncovered(covered: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The spans of [0, size) outside every covered span."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for s, e in sorted(covered):
        if s > pos:
            gaps.append((pos, min(s, size)))
        pos = max(pos, e)
    if pos < size:
        gaps.append((pos, size))
    return gaps


def merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def raw_message(ctx: Context) -> Iterator[Node]:
    """After the walk: base64 runs, uuencode blocks and BinHex in the raw message outside
    what the walk decoded. Payloads the walk already found are not handed on again."""
    raw = ctx.raw
    if not raw or (ctx.unscannable and any(u.reason in _WALK_LIMITS for u in ctx.unscannable)):
        return
    size = len(raw)
    covered = merged(ctx.covered)
    gaps = uncovered(covered, size)
    # What each gap holds is found first (searches of the raw bytes, which the walk does not
    # change), so that an ordinary message makes no generators and no payload node.
    found = [
        (start, end,
         # (a short gap's run may go on)
         _run_spans(raw, start, end, covered, True) if end - start >= MIN_RUN or end < size
         else [],
         raw.find(decoders.BINHEX_MARKER, start, end) >= 0)
        for start, end in gaps
    ]
    with_begin = [(s, e) for s, e in gaps if raw.find(b"begin", s, e) >= 0]
    if not with_begin and not any(runs or hqx for _s, _e, runs, hqx in found):
        return
    kids = _RawChildren(ctx, PayloadNode(SWEEP, (), raw, None, SWEEP))
    for start, end, runs, hqx in found:
        yield from _decoded_runs(ctx, kids, raw, runs, "b64")
        if hqx:
            yield from binhex(ctx, kids, raw, start, end)
    if with_begin:
        yield from uuencoded(ctx, kids, raw, with_begin)


class _RawChildren(Children):
    """Children of the raw message: what the walk found already (an attachment, or a
    payload a text scan handed on) is not handed on twice: parts the walk reads without
    `decode_body` (preambles, a multipart whose boundary never comes) are not covered."""

    _seeded = False

    def novel(self, data: bytes) -> bool:
        if not self._seeded:  # only when the sweep finds something: hashing costs
            self._seeded = True
            self._seen.update(a.data for a in self.ctx.attachments)
        if (len(data), hash(data)) in self.ctx.handed:
            return False
        return super().novel(data)
