"""Windows metafiles (metafile.py): the bitmaps WMF and EMF records draw (and EMF+ images in
EMF comments) come out as files the decode stage reads, with the drawn picture's pixels;
broken metafiles are reported as corrupt-archive, never raise, and stay within bounds.
Metafiles are built here record by record (MS-WMF, MS-EMF, MS-EMFPLUS) around generated
pictures."""

from __future__ import annotations

import binascii
import io
import random
import struct

import extract_corpus as ec
import pytest
from PIL import Image

from mailfilter.extract import extract, metafile, sniff, sweep
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()
PICTURE = ec.picture(31, (48, 32))
ROP_SRCCOPY = 0x00CC0020


# --- builders -----------------------------------------------------------------------------


def packed_dib(img: Image.Image = PICTURE) -> bytes:
    """BITMAPINFOHEADER, bottom-up 24-bit rows: a BMP file without its file header."""
    return ec.encode(img, "BMP")[14:]


def info_header(width: int, height: int, bits: int, compression: int = 0, size: int = 0,
                used: int = 0) -> bytes:
    return struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, size, 0, 0,
                       used, 0)


def top_down_32(img: Image.Image = PICTURE) -> tuple[bytes, bytes]:
    """A top-down (negative height) 32-bit BI_BITFIELDS bitmap: info (with masks), bits."""
    w, h = img.size
    bits = img.convert("RGBA").tobytes("raw", "BGRA")
    bmi = info_header(w, -h, 32, 3, len(bits)) + struct.pack("<3I", 0xFF0000, 0xFF00, 0xFF)
    return bmi, bits


def wmf_record(function: int, body: bytes) -> bytes:
    body += b"\0" * (len(body) % 2)
    return struct.pack("<IH", (6 + len(body)) // 2, function) + body


def wmf(*records: bytes, placeable: bool = False, eof: bool = True) -> bytes:
    body = b"".join(records) + (struct.pack("<IH", 3, 0) if eof else b"")
    biggest = max([len(r) // 2 for r in records] + [3])
    header = struct.pack("<HHHIHIH", 1, 9, 0x0300, (18 + len(body)) // 2, 0, biggest, 0)
    if not placeable:
        return header + body
    key = struct.pack("<IHhhhhHI", 0x9AC6CDD7, 0, 0, 0, 480, 320, 1440, 0)
    checksum = 0
    for (word,) in struct.iter_unpack("<H", key):
        checksum ^= word
    return key + struct.pack("<H", checksum) + header + body


def stretchdib(dib: bytes, usage: int = 0) -> bytes:
    return wmf_record(0x0F43, struct.pack("<IH8h", ROP_SRCCOPY, usage, 32, 48, 0, 0, 32, 48,
                                          0, 0) + dib)


def dibstretchblt(dib: bytes) -> bytes:
    return wmf_record(0x0B41, struct.pack("<I8h", ROP_SRCCOPY, 32, 48, 0, 0, 32, 48, 0, 0) + dib)


def dibbitblt(dib: bytes) -> bytes:
    return wmf_record(0x0940, struct.pack("<I6h", ROP_SRCCOPY, 0, 0, 32, 48, 0, 0) + dib)


def setdibtodev(dib: bytes) -> bytes:
    return wmf_record(0x0D33, struct.pack("<9h", 0, 32, 0, 0, 0, 32, 48, 0, 0) + dib)


def patternbrush(dib: bytes) -> bytes:
    return wmf_record(0x0142, struct.pack("<HH", 5, 0) + dib)  # BS_DIBPATTERNPT


def line_to() -> bytes:
    return wmf_record(0x0213, struct.pack("<hh", 10, 10))  # META_LINETO


def emf_bitmap_record(kind: int, bmi: bytes, bits: bytes, usage: int = 0) -> bytes:
    """An EMF bitmap record of type `kind` with its fixed part as MS-EMF lays it out."""
    bounds = struct.pack("<4i", 0, 0, 47, 31)
    xform = struct.pack("<6f", 1, 0, 0, 1, 0, 0)

    def src(fixed: int) -> bytes:
        return struct.pack("<4I", fixed, len(bmi), fixed + len(bmi), len(bits))

    no_mask = struct.pack("<2i5I", 0, 0, 0, 0, 0, 0, 0)
    if kind in (80, 81):  # SETDIBITSTODEVICE, STRETCHDIBITS
        fixed = 76 if kind == 80 else 80
        tail = (struct.pack("<3I", usage, 0, 32) if kind == 80
                else struct.pack("<4I", usage, ROP_SRCCOPY, 48, 32))
        body = bounds + struct.pack("<6i", 0, 0, 0, 0, 48, 32) + src(fixed) + tail
    elif kind in (76, 77, 114, 116):  # BITBLT, STRETCHBLT, ALPHABLEND, TRANSPARENTBLT
        fixed = 100 if kind == 76 else 108
        body = (bounds + struct.pack("<4iI2i", 0, 0, 48, 32, ROP_SRCCOPY, 0, 0) + xform
                + struct.pack("<II", 0, usage) + src(fixed))
        if kind != 76:
            body += struct.pack("<2i", 48, 32)
    elif kind == 78:  # MASKBLT
        fixed = 128
        body = (bounds + struct.pack("<4iI2i", 0, 0, 48, 32, ROP_SRCCOPY, 0, 0) + xform
                + struct.pack("<II", 0, usage) + src(fixed) + no_mask)
    elif kind == 79:  # PLGBLT
        fixed = 140
        body = (bounds + struct.pack("<6i", 0, 0, 48, 0, 0, 32) + struct.pack("<4i", 0, 0, 48, 32)
                + xform + struct.pack("<II", 0, usage) + src(fixed) + no_mask)
    elif kind == 94:  # CREATEDIBPATTERNBRUSHPT
        fixed = 32
        body = struct.pack("<II", 1, usage) + src(fixed)
    else:
        raise ValueError(kind)
    assert 8 + len(body) == fixed, (kind, 8 + len(body))
    data = bmi + bits
    data += b"\0" * (-len(data) % 4)
    return struct.pack("<II", kind, fixed + len(data)) + body + data


def emf_comment(payload: bytes) -> bytes:
    payload += b"\0" * (-len(payload) % 4)
    return struct.pack("<III", 70, 12 + len(payload), len(payload)) + payload


def emfplus_image_records(image: bytes, chunk: int | None = None) -> bytes:
    """EMF+ records of one Image object (type 5, id 1), split over continued records."""
    if chunk is None:
        body = image + b"\0" * (-len(image) % 4)
        return struct.pack("<HHII", 0x4008, 0x0501, 12 + len(body), len(body)) + body
    out = b""
    for at in range(0, len(image), chunk):
        piece = struct.pack("<I", len(image)) + image[at : at + chunk]
        piece += b"\0" * (-len(piece) % 4)
        out += struct.pack("<HHII", 0x4008, 0x8501, 12 + len(piece), len(piece)) + piece
    return out


def emfplus_bitmap(data: bytes, compressed: bool = True, size: tuple[int, int] = (0, 0),
                   stride: int = 0, pixel_format: int = 0) -> bytes:
    return (struct.pack("<II", 0xDBC01002, 1)
            + struct.pack("<iiiII", size[0], size[1], stride, pixel_format, int(compressed))
            + data)


def emf(*records: bytes, eof: bool = True, declared_records: int | None = None) -> bytes:
    body = b"".join(records) + (struct.pack("<5I", 14, 20, 0, 16, 20) if eof else b"")
    total = 88 + len(body)
    count = 1 + len(records) + int(eof) if declared_records is None else declared_records
    header = (struct.pack("<II", 1, 88) + struct.pack("<4i", 0, 0, 47, 31)
              + struct.pack("<4i", 0, 0, 1270, 847)
              + struct.pack("<IIIIHHIII", 0x464D4520, 0x10000, total, count, 1, 0, 0, 0, 0)
              + struct.pack("<4i", 1920, 1080, 508, 286))
    return header + body


def attached(data: bytes, name: str = "picture.bin",
             ctype: str = "application/octet-stream") -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"see attached\n"),
                                            ec.attachment(ctype, data, name)], "mf"))
    return extract(raw, LIMITS)


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").tobytes()


def drawn(ex: Extraction) -> list[bytes]:
    """The pixels of every attachment found inside a metafile."""
    return [pixels(a.data) for a in ex.attachments
            if a.containers and a.containers[-1] in (sniff.WMF, sniff.EMF)]


def reasons(ex: Extraction) -> set[tuple[str, str]]:
    return {(u.mime_path, u.reason) for u in ex.unscannable}


RGB = PICTURE.tobytes()


# --- WMF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [stretchdib, dibstretchblt, dibbitblt, setdibtodev,
                                    patternbrush])
@pytest.mark.parametrize("placeable", [True, False])
def test_every_wmf_bitmap_record_gives_the_picture(record: object, placeable: bool) -> None:
    assert callable(record)
    data = wmf(line_to(), record(packed_dib()), line_to(), placeable=placeable)
    ex = attached(data, "picture.wmf", "image/wmf")
    assert drawn(ex) == [RGB]
    assert not ex.unscannable
    inner = next(a for a in ex.attachments if a.containers[-1:] == (sniff.WMF,))
    assert inner.mime_path.startswith("2/picture.wmf/wmf-")
    assert inner.content_type == "image/bmp"


def test_wmf_bitblt_without_a_bitmap_is_vector_drawing() -> None:
    no_source = wmf_record(0x0940, struct.pack("<I7h", 0x00F00021, 0, 0, 0, 32, 48, 0, 0))
    assert len(no_source) // 2 == (0x0940 >> 8) + 3
    ex = attached(wmf(no_source, line_to()), "picture.wmf")
    assert drawn(ex) == [] and not ex.unscannable


def test_a_metafile_with_no_bitmap_is_looked_at_not_unscannable() -> None:
    for data in (wmf(line_to(), line_to()), emf()):
        ex = attached(data, "drawing.bin")
        assert ex.attachments == () and not ex.unscannable


def test_bitmaps_of_several_records_all_come_out_numbered() -> None:
    other = ec.picture(32, (40, 24))
    data = wmf(stretchdib(packed_dib()), dibbitblt(packed_dib(other)))
    ex = attached(data, "two.wmf")
    assert drawn(ex) == [RGB, other.tobytes()]
    assert [a.mime_path for a in ex.attachments] == ["2/two.wmf/wmf-0f43-1.bmp",
                                                     "2/two.wmf/wmf-0940-2.bmp"]


def test_an_eight_bit_palette_bitmap_comes_out() -> None:
    quantized = PICTURE.quantize(64)
    dib = _bmp_of(quantized)[14:]  # (ec.encode would make it RGB)
    ex = attached(wmf(stretchdib(dib)), "p.wmf")
    assert drawn(ex) == [quantized.convert("RGB").tobytes()]


def _bmp_of(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="BMP")
    return out.getvalue()


def test_palette_index_colours_are_a_defect_not_a_guess() -> None:
    dib = _bmp_of(PICTURE.quantize(16))[14:]
    ex = attached(wmf(stretchdib(dib, usage=1)), "p.wmf")
    assert drawn(ex) == []
    assert "metafile-bitmap-palette-indexes at 2/p.wmf" in ex.defects


def test_rtf_wmetafile_picture_goes_through_the_metafile_reader() -> None:
    hexdata = binascii.hexlify(wmf(stretchdib(packed_dib())))
    rtf = (b"{\\rtf1\\ansi{\\pict\\wmetafile8\\picw1270\\pich847\r\n"
           + b"\r\n".join(hexdata[i : i + 128] for i in range(0, len(hexdata), 128)) + b"}}")
    ex = attached(rtf, "doc.rtf", "application/rtf")
    assert drawn(ex) == [RGB]


# --- EMF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [76, 77, 78, 79, 80, 81, 94, 114, 116])
def test_every_emf_bitmap_record_gives_the_picture(kind: int) -> None:
    dib = packed_dib()
    record = emf_bitmap_record(kind, dib[:40], dib[40:])
    ex = attached(emf(record), "picture.emf", "image/emf")
    assert drawn(ex) == [RGB]
    assert not ex.unscannable


def test_top_down_bitfields_bitmap() -> None:
    bmi, bits = top_down_32()
    ex = attached(emf(emf_bitmap_record(81, bmi, bits)), "p.emf")
    assert drawn(ex) == [RGB]


@pytest.mark.parametrize("fmt,compression", [("JPEG", 4), ("PNG", 5)])
def test_jpeg_and_png_bitmaps_come_out_as_they_are(fmt: str, compression: int) -> None:
    encoded = ec.encode(PICTURE, fmt)
    bmi = info_header(48, 32, 0, compression, len(encoded))
    ex = attached(emf(emf_bitmap_record(81, bmi, encoded)), "p.emf")
    assert [a.data for a in ex.attachments] == [encoded]


def test_emf_in_docx_and_rtf_emfblip() -> None:
    dib = packed_dib()
    data = emf(emf_bitmap_record(81, dib[:40], dib[40:]))
    ex = attached(ec.docx({"image1.emf": data}), "doc.docx")
    assert drawn(ex) == [RGB]
    hexdata = binascii.hexlify(data)
    ex = attached(b"{\\rtf1{\\pict\\emfblip\r\n" + hexdata + b"}}", "doc.rtf", "application/rtf")
    assert drawn(ex) == [RGB]


def test_emfplus_images_compressed_pixels_and_continued() -> None:
    encoded = ec.encode(PICTURE, "PNG")
    argb = PICTURE.convert("RGBA").tobytes("raw", "BGRA")
    raw_image = emfplus_bitmap(argb, False, (48, 32), 48 * 4, 0x0026200A)
    data = emf(emf_comment(b"EMF+" + emfplus_image_records(emfplus_bitmap(encoded))),
               emf_comment(b"EMF+" + emfplus_image_records(raw_image)),
               emf_comment(b"EMF+" + emfplus_image_records(emfplus_bitmap(encoded), 500)))
    ex = attached(data, "plus.emf")
    assert [pixels(a.data) for a in ex.attachments] == [RGB, RGB, RGB]
    assert ex.attachments[0].data == encoded
    assert not ex.unscannable


def test_emfplus_compressed_image_keeps_its_exact_bytes_without_the_padding() -> None:
    encoded = next(png for size in range(40, 60)
                   if len(png := ec.encode(PICTURE.resize((size, 32)), "PNG")) % 4)
    data = emf(emf_comment(b"EMF+" + emfplus_image_records(emfplus_bitmap(encoded))))
    assert [a.data for a in attached(data, "plus.emf").attachments] == [encoded]


def test_emfplus_object_whose_continuation_never_comes_is_a_defect() -> None:
    encoded = ec.encode(PICTURE, "PNG")
    records = emfplus_image_records(emfplus_bitmap(encoded), 400)
    first = records[: 12 + int.from_bytes(records[8:12], "little")]
    ex = attached(emf(emf_comment(b"EMF+" + first)), "plus.emf")
    assert "metafile-emfplus-object-cut-short at 2/plus.emf" in ex.defects
    assert len(ex.attachments) == 1  # the start goes on: the decode stage judges it


def test_emfplus_metafile_image_is_opened_in_turn() -> None:
    inner = wmf(stretchdib(packed_dib()))
    image = struct.pack("<IIII", 0xDBC01002, 2, 1, len(inner)) + inner
    ex = attached(emf(emf_comment(b"EMF+" + emfplus_image_records(image))), "plus.emf")
    assert drawn(ex) == [RGB]
    assert ex.attachments[0].containers[-2:] == (sniff.EMF, sniff.WMF)


# --- broken and hostile metafiles ---------------------------------------------------------


def _dib_record_wmf() -> bytes:
    return wmf(stretchdib(packed_dib()))


def _dib_record_emf() -> bytes:
    dib = packed_dib()
    return emf(emf_bitmap_record(81, dib[:40], dib[40:]))


def _lying_wmf_record() -> bytes:
    data = bytearray(_dib_record_wmf())
    struct.pack_into("<I", data, 18, 0x7FFFFFFF)  # the first record claims 4 GiB
    return bytes(data)


def _tiny_wmf_record() -> bytes:
    data = bytearray(_dib_record_wmf())
    struct.pack_into("<I", data, 18, 1)  # a record shorter than its own header
    return bytes(data)


def _lying_emf_record() -> bytes:
    data = bytearray(_dib_record_emf())
    struct.pack_into("<I", data, 92, 1 << 30)
    return bytes(data)


def _emf_bitmap_outside() -> bytes:
    data = bytearray(_dib_record_emf())
    struct.pack_into("<I", data, 88 + 48, 1 << 20)  # offBmiSrc past the record
    return bytes(data)


@pytest.mark.parametrize("build,detail", [
    (lambda: _dib_record_wmf()[:17], "shorter than its header"),
    (lambda: metafile_key() + b"\0" * 30, "not a metafile header"),
    (_lying_wmf_record, "claims 2147483647 words"),
    (_tiny_wmf_record, "claims 1 words"),
    (lambda: wmf(line_to(), eof=False), "without META_EOF"),
    (lambda: _dib_record_wmf()[:-20], "claims"),
    (_lying_emf_record, "claims 1073741824 bytes"),
    (lambda: emf(declared_records=1 << 30), "declares 1073741824 records"),
    (_emf_bitmap_outside, "outside"),
    (lambda: emf(eof=False), "without EMR_EOF"),
])
def test_broken_metafiles_are_corrupt_with_a_reason(build: object, detail: str) -> None:
    assert callable(build)
    data = build()
    ex = attached(data, "broken.wmf")
    found = [u for u in ex.unscannable if u.mime_path == "2/broken.wmf"]
    assert [u.reason for u in found] == ["corrupt-archive"], ex.unscannable
    assert detail in found[0].detail


def metafile_key() -> bytes:
    return sniff.WMF_PLACEABLE_KEY + b"\0" * 18


def test_bitmaps_before_the_damage_still_come_out() -> None:
    data = wmf(stretchdib(packed_dib()), eof=False) + b"\x05\x00"
    ex = attached(data, "cut.wmf")
    assert drawn(ex) == [RGB]
    assert reasons(ex) == {("2/cut.wmf", "corrupt-archive")}


def test_record_count_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metafile, "MAX_RECORDS", 1000)
    data = wmf(*[line_to()] * 1001)
    reading = metafile.read_wmf(data)
    assert reading.broken == "WMF: more than 1000 records"
    reading = metafile.read_wmf(wmf(*[line_to()] * 999))
    assert reading.broken is None


def test_declared_but_not_a_metafile_is_only_a_defect() -> None:
    ex = attached(b"this is not a drawing at all" * 4, "fake.wmf")
    assert not ex.unscannable
    assert "declared-container-unreadable at 2/fake.wmf" in ex.defects


def test_mutated_metafiles_never_raise() -> None:
    rng = random.Random(5)
    seeds = [_dib_record_wmf(), wmf(stretchdib(packed_dib()), placeable=True), _dib_record_emf(),
             emf(emf_comment(b"EMF+" + emfplus_image_records(
                 emfplus_bitmap(ec.encode(PICTURE, "PNG")), 300)))]
    for n in range(600):
        data = bytearray(seeds[n % len(seeds)])
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            data[at] = rng.randrange(256) if rng.random() < 0.7 else data[at] ^ 0x80
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        blob = bytes(data)
        for read in (metafile.read_wmf, metafile.read_emf):
            reading = read(blob)
            assert reading.broken is None or reading.broken.startswith(("WMF: ", "EMF: "))
    ex = attached(bytes(data), "last.wmf")
    assert all(u.reason != "parse-error" for u in ex.unscannable)


# --- the sweep ----------------------------------------------------------------------------


def test_a_metafile_glued_inside_unknown_binary_is_carved_and_what_follows_too() -> None:
    after = ec.jpeg(33)
    blob = b"\x00\x13junk" * 50 + _dib_record_emf() + b"\x00" * 40 + after + b"\x07" * 64
    ex = attached(blob, "thing.dat")
    assert RGB in drawn(ex)
    assert after in [a.data for a in ex.attachments]
    blob = b"\x00\x13junk" * 50 + wmf(stretchdib(packed_dib()), placeable=True) + b"\x07" * 64
    assert drawn(attached(blob, "thing.dat")) == [RGB]


@pytest.mark.parametrize("data", [_dib_record_wmf(), wmf(line_to(), placeable=True),
                                  _dib_record_emf()])
def test_text_only_gate_lets_metafiles_through(data: bytes) -> None:
    assert sweep.kind_at_start(data) in (sniff.WMF, sniff.EMF)
    for size in (16, 64, 200, len(data)):
        if sweep.kind_at_start(data[:size]) is not None:
            assert sweep.may_start_file(data[:size])
