"""Windows metafiles (WMF, MS-WMF) and enhanced metafiles (EMF, MS-EMF, with the EMF+ records
of MS-EMFPLUS in its comments): the bitmaps they draw.

A metafile is a list of drawing records. Windows and Word draw a photo in one by a record
that carries a device-independent bitmap (a BMP without its file header); such pictures
turn up as .wmf/.emf attachments, as pictures of Office documents and RTF (`\\wmetafile`,
`\\emfblip`). Every bitmap-carrying record is read here and its bitmap handed on as a file
the decode stage reads: a BMP (the bitmap info and bits behind a BITMAPFILEHEADER), or the
JPEG or PNG a bitmap compressed BI_JPEG/BI_PNG carries (EMF+ images are PNG, JPEG, ... files
already, or raw pixels, also wrapped as a BMP; an EMF+ image that is itself a metafile is
handed on as one, and the walk opens it in turn).

A small reader of our own: no library of the field reads metafiles on Linux without
rendering them (Pillow's WmfImagePlugin draws only on Windows; libwmf and libemf render
vector graphics, which tells us nothing a bitmap does not). Records are walked within the
file's bounds; a record whose size or bitmap offsets point outside the file, a header that
lies, or more records than MAX_RECORDS is reported as `corrupt-archive` (what was found
before is still handed on). A metafile that carries no bitmap is only vector drawing (lines,
shapes, text): it has been looked at, and holds no picture a hash list can list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from mailfilter import magic
from mailfilter.extract import core, sniff, sweep
from mailfilter.extract.containers import Fail
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# More records than this is a record count bomb (a record costs a few microseconds to walk;
# real metafiles, even large drawings, have tens of thousands).
MAX_RECORDS = 1_000_000

_WMF_PLACEABLE_SIZE = 22
_META_EOF = 0x0000

_EMR_EOF = 14
_EMR_COMMENT = 70
_EMF_PLUS = b"EMF+"

# DIB colour usage (MS-WMF 2.1.1.4): the colour table holds RGBQUADs, or 16-bit indexes into
# the playback device's logical palette (which only playing the records would give).
DIB_RGB_COLORS, DIB_PAL_COLORS = 0, 1
_BS_PATTERN = 3
_BI_BITFIELDS, _BI_JPEG, _BI_PNG, _BI_ALPHABITFIELDS = 3, 4, 5, 6

# WMF records carrying a DIB (MS-WMF 2.3.1, 2.3.4.8): function -> (offset of the DIB, offset
# of its ColorUsage field or None for DIB_RGB_COLORS), offsets from the record's start.
_WMF_DIB_RECORDS: dict[int, tuple[int, int | None]] = {
    0x0F43: (28, 10),  # META_STRETCHDIB: RasterOperation, ColorUsage, 8 coordinates
    0x0B41: (26, None),  # META_DIBSTRETCHBLT: RasterOperation, 8 coordinates
    0x0940: (22, None),  # META_DIBBITBLT: RasterOperation, 6 coordinates
    0x0D33: (24, 6),  # META_SETDIBTODEV: ColorUsage, ScanCount, StartScan, 6 coordinates
    0x0142: (10, 8),  # META_DIBCREATEPATTERNBRUSH: Style, ColorUsage
}
# META_DIBBITBLT and META_DIBSTRETCHBLT come in a form without a bitmap (the source is the
# device): then RecordSize is (RecordFunction >> 8) + 3 words (MS-WMF 2.3.1.2, 2.3.1.3).
_WMF_OPTIONAL_DIB = frozenset({0x0B41, 0x0940})
_META_DIBCREATEPATTERNBRUSH = 0x0142

# EMF records carrying bitmaps (MS-EMF 2.3.1, 2.3.7.8, 2.3.7.9): type -> the offsets of
# (Usage, offBmi) of each bitmap; offBmi, cbBmi, offBits and cbBits follow one another.
_EMF_BITMAP_RECORDS: dict[int, tuple[tuple[int, int], ...]] = {
    76: ((80, 84),),  # EMR_BITBLT
    77: ((80, 84),),  # EMR_STRETCHBLT
    78: ((80, 84), (108, 112)),  # EMR_MASKBLT: source, mask
    79: ((92, 96), (120, 124)),  # EMR_PLGBLT: source, mask
    80: ((64, 48),),  # EMR_SETDIBITSTODEVICE
    81: ((64, 48),),  # EMR_STRETCHDIBITS
    93: ((12, 16),),  # EMR_CREATEMONOBRUSH
    94: ((12, 16),),  # EMR_CREATEDIBPATTERNBRUSHPT
    114: ((80, 84),),  # EMR_ALPHABLEND
    116: ((80, 84),),  # EMR_TRANSPARENTBLT
}

# EMF+ (MS-EMFPLUS): an EmfPlusObject record whose object type is Image.
_EMFPLUS_OBJECT = 0x4008
_EMFPLUS_HEADER = 12
_OBJECT_IMAGE = 5
_IMAGE_BITMAP, _IMAGE_METAFILE = 1, 2
_BITMAP_PIXEL, _BITMAP_COMPRESSED = 0, 1
# GDI+ pixel formats stored without a palette, by bits per pixel (rows top-down, bytes in
# B, G, R(, A) order as in a BMP); indexed and 16-bit formats are not rebuilt.
_PIXEL_FORMATS = {0x00021808: 24, 0x00022009: 32, 0x0026200A: 32, 0x000E200B: 32}
# The most EMF+ object bytes gathered across continued records, per object.
_MAX_EMFPLUS_OBJECT = 1 << 28


class MetafileError(ValueError):
    """The metafile's structure is broken (the message says where and how)."""


@dataclass(frozen=True, slots=True)
class Picture:
    """A bitmap a metafile draws, as a file: BMP, JPEG, PNG, ... or a nested metafile."""

    name: str
    data: bytes


@dataclass(slots=True)
class Reading:
    """What a metafile holds: its pictures, the problems that stopped the walk or left a
    bitmap out (`broken`: the structure is damaged; `skipped`: defect codes)."""

    pictures: list[Picture] = field(default_factory=list)
    broken: str | None = None
    skipped: list[str] = field(default_factory=list)

    def skip(self, code: str) -> None:
        if code not in self.skipped:
            self.skipped.append(code)


# --- bitmaps as files ---------------------------------------------------------------------


def _palette_size(bmi: bytes, usage: int) -> int | None:
    """The bytes of the colour table (and masks) after a bitmap header, or None if the
    header is not one."""
    if len(bmi) < 12:
        return None
    header = int.from_bytes(bmi[:4], "little")
    if header == 12:  # BITMAPCOREHEADER: 3-byte entries, always the full table
        bits = int.from_bytes(bmi[10:12], "little")
        return (1 << bits) * (3 if usage == DIB_RGB_COLORS else 2) if bits <= 8 else 0
    if header not in (16, 40, 52, 56, 64, 108, 124) or len(bmi) < header:
        return None
    bits = int.from_bytes(bmi[14:16], "little")
    compression = int.from_bytes(bmi[16:20], "little") if header >= 20 else 0
    used = int.from_bytes(bmi[32:36], "little") if header >= 36 else 0
    if bits not in (0, 1, 2, 4, 8, 16, 24, 32) or used > 1 << 16:
        return None
    colours = used or (1 << bits if 0 < bits <= 8 else 0)
    size = colours * (4 if usage == DIB_RGB_COLORS else 2)
    if header == 40 and compression == _BI_BITFIELDS:
        size += 12  # the three colour masks follow a plain info header
    elif header == 40 and compression == _BI_ALPHABITFIELDS:
        size += 16
    return size


def _compression(bmi: bytes) -> int:
    header = int.from_bytes(bmi[:4], "little")
    return int.from_bytes(bmi[16:20], "little") if header >= 20 and len(bmi) >= 20 else 0


def bitmap_file(bmi: bytes, bits: bytes) -> bytes | None:
    """A bitmap given as its BITMAPINFO and its bits, as a file the decode stage reads: the
    JPEG or PNG a BI_JPEG/BI_PNG bitmap carries, else a BMP (the file header says where the
    bits start; Pillow reads top-down bitmaps, negative heights, itself). None if the
    header is not a bitmap header."""
    if _palette_size(bmi, DIB_RGB_COLORS) is None:
        return None
    if _compression(bmi) in (_BI_JPEG, _BI_PNG) and magic.image_format(bits) in ("JPEG", "PNG"):
        return bits
    offset = 14 + len(bmi)
    return (b"BM" + (offset + len(bits)).to_bytes(4, "little") + bytes(4)
            + offset.to_bytes(4, "little") + bmi + bits)


def packed_bitmap_file(dib: bytes) -> bytes | None:
    """A packed DIB (header, colour table, bits in one run, as WMF records carry it) as a
    file: see `bitmap_file`."""
    palette = _palette_size(dib, DIB_RGB_COLORS)
    if palette is None:
        return None
    split = int.from_bytes(dib[:4], "little") + palette
    if split > len(dib):
        return None
    return bitmap_file(dib[:split], dib[split:])


# --- WMF ----------------------------------------------------------------------------------


def read_wmf(data: bytes) -> Reading:
    """The bitmaps of a WMF's DIB records, walked from its header to META_EOF."""
    found = Reading()
    try:
        _walk_wmf(data, found)
    except (MetafileError, struct.error) as exc:
        found.broken = f"WMF: {exc}"
    return found


def _walk_wmf(data: bytes, found: Reading) -> None:
    start = _WMF_PLACEABLE_SIZE if data[:4] == sniff.WMF_PLACEABLE_KEY else 0
    if len(data) < start + 18:
        raise MetafileError(f"{len(data)} bytes: shorter than its header")
    kind, header_words, version, _size_words = struct.unpack_from("<HHHI", data, start)
    if not sniff.is_wmf(data[start:]):
        raise MetafileError(
            f"not a metafile header (type {kind}, {header_words} words, version {version:#x})")
    pos = start + header_words * 2
    for count in range(MAX_RECORDS + 1):
        if pos == len(data):
            raise MetafileError(f"ends after {count} records without META_EOF")
        if pos + 6 > len(data):
            raise MetafileError(f"record {count} at byte {pos} cut short")
        words, function = struct.unpack_from("<IH", data, pos)
        size = words * 2
        if words < 3 or size > len(data) - pos:
            raise MetafileError(
                f"record {count} at byte {pos} claims {words} words, "
                f"{len(data) - pos} bytes are left")
        if function == _META_EOF:
            return
        if function in _WMF_DIB_RECORDS:
            _wmf_bitmap(data[pos : pos + size], function, found)
        pos += size
    raise MetafileError(f"more than {MAX_RECORDS} records")


def _wmf_bitmap(record: bytes, function: int, found: Reading) -> None:
    dib_at, usage_at = _WMF_DIB_RECORDS[function]
    if function in _WMF_OPTIONAL_DIB and len(record) // 2 == (function >> 8) + 3:
        return  # the form without a bitmap: it copies pixels already drawn
    if len(record) <= dib_at:
        raise MetafileError(f"record {function:#06x} of {len(record)} bytes holds no bitmap")
    usage = int.from_bytes(record[usage_at : usage_at + 2], "little") if usage_at else 0
    if function == _META_DIBCREATEPATTERNBRUSH and int.from_bytes(record[6:8], "little") == (
            _BS_PATTERN):
        usage = DIB_RGB_COLORS  # (MS-WMF 2.3.4.8: BS_PATTERN ignores ColorUsage)
    dib = record[dib_at:]
    _add_dib(found, dib, None, usage, f"wmf-{function:04x}")


def _add_dib(found: Reading, bmi_or_dib: bytes, bits: bytes | None, usage: int,
             label: str) -> None:
    """Hand on one bitmap: packed (`bits` None) or as separate info and bits."""
    if usage != DIB_RGB_COLORS and _needs_palette(bmi_or_dib):
        # Indexes into the logical palette the records before it selected (DIB_PAL_COLORS,
        # or DIB_PAL_INDICES): not rebuilt. (Without a colour table the usage is moot.)
        found.skip("metafile-bitmap-palette-indexes")
        return
    picture = packed_bitmap_file(bmi_or_dib) if bits is None else bitmap_file(bmi_or_dib, bits)
    if picture is None:
        found.skip("metafile-bitmap-header")
        return
    found.pictures.append(Picture(_name(found, label, picture), picture))


def _needs_palette(bmi: bytes) -> bool:
    """Whether a bitmap has a colour table (which DIB_PAL_COLORS turns into indexes)."""
    size = _palette_size(bmi, DIB_PAL_COLORS)
    return bool(size) and _compression(bmi) not in (_BI_BITFIELDS, _BI_ALPHABITFIELDS)


def _name(found: Reading, label: str, picture: bytes) -> str:
    fmt = magic.image_format(picture)
    ext = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}.get(
        fmt or "", "emf" if sniff.is_emf(picture) else "wmf" if sniff.is_wmf(picture) else "bin")
    return f"{label}-{len(found.pictures) + 1}.{ext}"


# --- EMF ----------------------------------------------------------------------------------


def read_emf(data: bytes) -> Reading:
    """The bitmaps of an EMF's bitmap records and of the EMF+ images in its comments."""
    found = Reading()
    try:
        _walk_emf(data, found)
    except (MetafileError, struct.error) as exc:
        found.broken = f"EMF: {exc}"
    return found


def _walk_emf(data: bytes, found: Reading) -> None:
    if not sniff.is_emf(data):
        raise MetafileError("no EMR_HEADER with the EMF signature")
    header_size, = struct.unpack_from("<I", data, 4)
    declared_bytes, declared_records = struct.unpack_from("<II", data, 48)
    if header_size > len(data):
        raise MetafileError(f"header of {header_size} bytes in {len(data)}")
    if declared_records > max(declared_bytes, len(data)) // 8:
        raise MetafileError(
            f"declares {declared_records} records in {declared_bytes} bytes (a record has 8 "
            f"at least)")
    emfplus = _EmfPlusObjects(found)
    pos = 0
    for count in range(MAX_RECORDS + 1):
        if pos == len(data):
            raise MetafileError(f"ends after {count} records without EMR_EOF")
        if pos + 8 > len(data):
            raise MetafileError(f"record {count} at byte {pos} cut short")
        kind, size = struct.unpack_from("<II", data, pos)
        if size < 8 or size % 4 or size > len(data) - pos:
            raise MetafileError(
                f"record {count} (type {kind}) at byte {pos} claims {size} bytes, "
                f"{len(data) - pos} are left")
        if kind == _EMR_EOF:
            emfplus.finish()
            return
        if kind in _EMF_BITMAP_RECORDS:
            _emf_bitmaps(data, pos, size, kind, found)
        elif kind == _EMR_COMMENT and data[pos + 12 : pos + 16] == _EMF_PLUS:
            comment = int.from_bytes(data[pos + 8 : pos + 12], "little")
            if comment > size - 12:
                raise MetafileError(f"comment at byte {pos} claims {comment} bytes in {size}")
            emfplus.records(data[pos + 16 : pos + 12 + comment])
        pos += size
    raise MetafileError(f"more than {MAX_RECORDS} records")


def _emf_bitmaps(data: bytes, pos: int, size: int, kind: int, found: Reading) -> None:
    record = data[pos : pos + size]
    for usage_at, bmi_at in _EMF_BITMAP_RECORDS[kind]:
        if bmi_at + 16 > size:
            raise MetafileError(f"record type {kind} at byte {pos} too short ({size} bytes)")
        usage, = struct.unpack_from("<I", record, usage_at)
        off_bmi, cb_bmi, off_bits, cb_bits = struct.unpack_from("<4I", record, bmi_at)
        if cb_bmi == 0:
            continue  # no source bitmap (a pattern or colour fill)
        if off_bmi + cb_bmi > size or off_bits + cb_bits > size:
            raise MetafileError(
                f"record type {kind} at byte {pos}: its bitmap lies outside its {size} bytes")
        _add_dib(found, record[off_bmi : off_bmi + cb_bmi],
                 record[off_bits : off_bits + cb_bits], usage, f"emf-{kind}")


class _EmfPlusObjects:
    """EmfPlusObject records of type Image (MS-EMFPLUS 2.3.5.1), gathered across the
    continued records a large object is split into."""

    def __init__(self, found: Reading) -> None:
        self.found = found
        self.pending: dict[int, tuple[int, list[bytes], int]] = {}  # id -> total, chunks, size

    def records(self, data: bytes) -> None:
        pos = 0
        while pos + _EMFPLUS_HEADER <= len(data):
            kind, flags, size, data_size = struct.unpack_from("<HHII", data, pos)
            if size < _EMFPLUS_HEADER or size > len(data) - pos or data_size > size - 12:
                raise MetafileError(f"EMF+ record at {pos} claims {size} bytes")
            if kind == _EMFPLUS_OBJECT and (flags >> 8) & 0x7F == _OBJECT_IMAGE:
                self._object(flags, data[pos + 12 : pos + 12 + data_size])
            pos += size

    def _object(self, flags: int, body: bytes) -> None:
        ident = flags & 0xFF
        if not flags & 0x8000:  # whole in this record
            self.pending.pop(ident, None)
            self._image(body)
            return
        if len(body) < 4:
            raise MetafileError("continued EMF+ object without its total size")
        total = int.from_bytes(body[:4], "little")
        if total > _MAX_EMFPLUS_OBJECT:
            raise MetafileError(f"EMF+ object of {total} bytes")
        known, chunks, have = self.pending.get(ident, (total, [], 0))
        chunks.append(body[4:])
        have += len(body) - 4
        if have >= known:
            self.pending.pop(ident, None)
            self._image(b"".join(chunks)[:known])
        else:
            self.pending[ident] = (known, chunks, have)

    def finish(self) -> None:
        """Objects whose continuation never came: what there is goes on (the decode stage
        says whether it is enough), and the metafile gets a defect."""
        for _known, chunks, _have in self.pending.values():
            self.found.skip("metafile-emfplus-object-cut-short")
            self._image(b"".join(chunks))
        self.pending.clear()

    def _image(self, image: bytes) -> None:
        if len(image) < 8:
            return
        kind = int.from_bytes(image[4:8], "little")
        if kind == _IMAGE_METAFILE and len(image) >= 16:
            size = int.from_bytes(image[12:16], "little")
            inner = image[16 : 16 + size]
            if sniff.is_wmf(inner) or sniff.is_emf(inner):
                self.found.pictures.append(Picture(_name(self.found, "emfplus", inner), inner))
            return
        if kind != _IMAGE_BITMAP or len(image) < 28:
            return
        width, height, stride, pixel_format, storage = struct.unpack_from("<iiiII", image, 8)
        pixels = image[28:]
        if storage == _BITMAP_COMPRESSED:  # a PNG, JPEG, GIF, TIFF, BMP, ... file
            fmt = sniff.image_type(pixels)
            # (cut where its format ends: records are padded to 4 bytes, exact hashes count)
            picture = pixels[: sweep.carved_end(pixels, 0, fmt)] if fmt else pixels
        elif storage == _BITMAP_PIXEL:
            rebuilt = _pixels_as_bmp(width, height, stride, pixel_format, pixels)
            if rebuilt is None:
                self.found.skip("metafile-emfplus-pixel-format")
                return
            picture = rebuilt
        else:
            return
        self.found.pictures.append(Picture(_name(self.found, "emfplus", picture), picture))


def _pixels_as_bmp(width: int, height: int, stride: int, pixel_format: int,
                   pixels: bytes) -> bytes | None:
    """Raw GDI+ pixels (rows top-down, `stride` bytes apart) as a top-down BMP."""
    depth = _PIXEL_FORMATS.get(pixel_format)
    if depth is None or not 0 < width <= 1 << 16 or not 0 < height <= 1 << 16:
        return None
    row = width * depth // 8
    padded = (row + 3) // 4 * 4
    if stride < row or stride * (height - 1) + row > len(pixels):
        return None
    if stride == padded:
        bits = pixels[: padded * height]
    else:
        bits = b"".join(pixels[y * stride : y * stride + row].ljust(padded, b"\0")
                        for y in range(height))
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, depth, 0, len(bits), 0, 0, 0, 0)
    return bitmap_file(info, bits)


# --- the walk ------------------------------------------------------------------------------


def pictures(ctx: Context, node: PayloadNode, kind: str, quiet: bool = False) -> Iterator[Node]:
    """The walk's handler: each bitmap the metafile draws, as a member (`picture.wmf/
    wmf-0f43-1.bmp`). Damage is `corrupt-archive` (a defect if the file only claimed to be a
    metafile); bitmaps left out on purpose are defects."""
    reading = read_wmf(node.data) if kind == sniff.WMF else read_emf(node.data)
    for code in reading.skipped or ():
        ctx.defect(node.path, code)
    for picture in reading.pictures:
        if not ctx.count_member(node.path):
            return
        path = member_path(node.path, picture.name)
        if not ctx.fits(path, len(picture.data)):
            continue
        ctx.charge(len(picture.data))
        ctype = sniff.image_type(picture.data)
        yield PayloadNode(path, (*node.containers, kind), picture.data, picture.name, ctype)
    if reading.broken is not None:
        Fail(ctx, node, quiet)(core.CORRUPT_ARCHIVE, reading.broken)
