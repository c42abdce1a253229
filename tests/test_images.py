"""The decode stage: sniffing, every format and mode, orientation, frames, limits, and that
nothing but SkipImage ever leaves decode(). All images are generated here (benign gradients,
shapes and noise)."""

from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps, features

from mailfilter import images
from mailfilter.errors import SkipImage
from mailfilter.hashing.pdq import hamming, pdq_from_luma
from mailfilter.images import (
    MAX_WORKING_LONG_SIDE,
    WORKING_SHORT_SIDE,
    DecodedImage,
    decode,
    sniff_format,
)
from mailfilter.settings import ImageSettings

LIMITS = ImageSettings()
FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]
LOSSLESS = {"PNG", "BMP", "TIFF"}
Luma = npt.NDArray[np.float32]


# --- generated material ------------------------------------------------------------------


def picture(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """RGB gradients with a few shapes and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    arr = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.5, 3.0, 2)
        arr[..., c] = 128 + 90 * np.sin(2 * np.pi * fx * xx / width + c) * np.cos(
            2 * np.pi * fy * yy / height
        )
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1, y1 = x0 + int(rng.integers(10, width // 3)), y0 + int(rng.integers(10, height // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    noisy = np.asarray(im, np.float32) + rng.normal(0, 2, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def flat_shapes(seed: int, width: int = 96, height: int = 64) -> Image.Image:
    """A few flat colours: survives GIF's palette unchanged."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        draw.rectangle(
            (x0, y0, x0 + int(rng.integers(8, 40)), y0 + int(rng.integers(8, 30))),
            fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
        )
    return im


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        params.setdefault("quality", 92)
    if fmt == "WEBP" and "lossless" not in params:
        params.setdefault("quality", 92)
    im.save(buf, fmt, **params)
    return buf.getvalue()


def luma(im: Image.Image) -> Luma:
    """PDQ's luminance of an RGB image, straight from its pixels."""
    rgb = np.asarray(im.convert("RGB"), np.float32)
    out: Luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return out


def decode_ok(data: bytes, limits: ImageSettings = LIMITS) -> DecodedImage:
    result = decode(data, limits)
    assert isinstance(result, DecodedImage)
    assert 1 <= len(result.frames) <= limits.max_frames
    for frame in result.frames:
        assert frame.dtype == np.float32
        assert frame.ndim == 2
        assert frame.flags.c_contiguous
        assert not frame.flags.writeable
        assert np.isfinite(frame).all()
        assert frame.min() >= -0.01
        assert frame.max() <= 255.01
    return result


def skip_reason(data: bytes, limits: ImageSettings = LIMITS) -> str:
    with pytest.raises(SkipImage) as info:
        decode(data, limits)
    return info.value.reason


# --- sniffing ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniff_each_format(fmt: str) -> None:
    assert sniff_format(encode(picture(1, 64, 48), fmt)) == fmt


def test_sniff_apng_is_png() -> None:
    data = encode(flat_shapes(1), "PNG", save_all=True, append_images=[flat_shapes(2)])
    assert sniff_format(data) == "PNG"


def test_sniff_ignores_file_names(tmp_path: Path) -> None:
    """Only the bytes count: a JPEG named .png is a JPEG, text named .jpg is not an image."""
    jpeg = tmp_path / "holiday.png"
    jpeg.write_bytes(encode(picture(2), "JPEG"))
    png = tmp_path / "scan.gif"
    png.write_bytes(encode(picture(2), "PNG"))
    text = tmp_path / "photo.jpg"
    text.write_bytes(b"Dear customer, please find attached the invoice.\n" * 20)
    assert sniff_format(jpeg.read_bytes()) == "JPEG"
    assert decode_ok(jpeg.read_bytes()).image_format == "JPEG"
    assert sniff_format(png.read_bytes()) == "PNG"
    assert decode_ok(png.read_bytes()).image_format == "PNG"
    assert sniff_format(text.read_bytes()) is None
    assert skip_reason(text.read_bytes()) == "not-an-image"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"GIF8",
        b"BM" + b"\x00" * 40,  # no valid DIB header size
        b"RIFF\x10\x00\x00\x00WAVEfmt ",
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",  # an MP4 video
        b"%PDF-1.7\n",
        b"PK\x03\x04" + b"\x00" * 30,
    ],
)
def test_sniff_rejects_other_data(data: bytes) -> None:
    assert sniff_format(data) is None
    assert skip_reason(data) == "not-an-image"


def test_sniff_heif_and_avif_brands() -> None:
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
        return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 64

    assert sniff_format(ftyp(b"heic", b"mif1", b"heic")) == "HEIF"
    assert sniff_format(ftyp(b"mif1", b"heic")) == "HEIF"
    assert sniff_format(ftyp(b"avif", b"mif1", b"miaf")) == "AVIF"
    assert sniff_format(ftyp(b"mif1", b"avif")) == "AVIF"
    assert sniff_format(ftyp(b"mp42", b"isom")) is None


def test_heif_without_a_decoder_is_unsupported() -> None:
    if images._heif_available():
        pytest.skip("pillow-heif is installed")
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert skip_reason(data) == "unsupported-format"


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif_decodes() -> None:
    src = picture(3, 200, 150)
    result = decode_ok(encode(src, "AVIF", quality=90))
    assert result.image_format == "AVIF"
    assert (result.width, result.height) == (200, 150)
    assert np.abs(result.frames[0] - luma(src)).mean() < 6


# --- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_each_format(fmt: str) -> None:
    src = picture(4, 320, 240) if fmt != "GIF" else flat_shapes(4, 320, 240)
    result = decode_ok(encode(src, fmt))
    assert result.image_format == fmt
    assert (result.width, result.height) == (320, 240)
    assert result.frame_count == 1
    assert len(result.frames) == 1
    frame = result.frames[0]
    assert frame.shape == (240, 320)  # small: not reduced
    error = np.abs(frame - luma(src))
    if fmt in LOSSLESS or fmt == "GIF":
        assert error.max() < 0.01
    else:
        assert error.mean() < 4
    assert hamming(pdq_from_luma(frame).hash, pdq_from_luma(luma(src)).hash) <= 8


def test_large_jpeg_is_decoded_reduced() -> None:
    src = picture(5, 4000, 3000)
    data = encode(src, "JPEG", quality=90)
    result = decode_ok(data)
    assert (result.width, result.height) == (4000, 3000)
    h, w = result.frames[0].shape
    assert WORKING_SHORT_SIDE <= min(h, w) < 2 * WORKING_SHORT_SIDE
    assert abs(w / h - 4 / 3) < 0.01
    full = pdq_from_luma(luma(Image.open(io.BytesIO(data))))
    assert hamming(pdq_from_luma(result.frames[0]).hash, full.hash) <= 10


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_large_image_is_box_reduced(fmt: str) -> None:
    src = picture(6, 2100, 1500)
    data = encode(src, fmt, lossless=True) if fmt == "WEBP" else encode(src, fmt)
    result = decode_ok(data)
    assert (result.width, result.height) == (2100, 1500)
    assert result.frames[0].shape == (750, 1050)  # reduced by 2, short side 512..1023
    expected = luma(src).reshape(750, 2, 1050, 2).mean(axis=(1, 3))
    assert np.abs(result.frames[0] - expected).max() < 1.0
    full = pdq_from_luma(luma(src))
    assert hamming(pdq_from_luma(result.frames[0]).hash, full.hash) <= 10


def test_extreme_aspect_ratio_is_capped() -> None:
    src = Image.fromarray(
        np.tile(np.arange(20000, dtype=np.uint32) % 251, (20, 1)).astype(np.uint8), "L"
    )
    result = decode_ok(encode(src, "PNG"))
    h, w = result.frames[0].shape
    assert h == 20
    assert w <= MAX_WORKING_LONG_SIDE


def test_a_large_jpeg_is_decoded_at_reduced_scale() -> None:
    """The 12 MP JPEG is decoded by libjpeg at reduced scale (Image.draft), not in full: the
    frame handed on is a fraction of the image's pixels, and the full size is kept for PDQ.
    (How much time that saves is measured by bench/fingerprint_speed.py, not here.)"""
    data = encode(picture(7, 4032, 3024), "JPEG", quality=90)
    decoded = decode(data, LIMITS)
    height, width = decoded.frames[0].shape
    assert (decoded.width, decoded.height) == (4032, 3024)
    assert decoded.full_size(0) == (4032, 3024)
    assert width * 2 <= 4032 and height * 2 <= 3024
    assert width >= 64 and height >= 64


# --- modes -------------------------------------------------------------------------------


def grey_ramp() -> Image.Image:
    """An L image 0..255 with structure."""
    x = np.linspace(0, 255, 90, dtype=np.float32)
    y = np.linspace(0, 1, 60, dtype=np.float32)[:, None]
    return Image.fromarray((x[None, :] * (0.3 + 0.7 * y)).astype(np.uint8), "L")


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("1", "TIFF"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("P", "BMP"),
        ("RGB", "PNG"),
        ("RGBX", "TIFF"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("YCbCr", "TIFF"),
        ("LAB", "TIFF"),
    ],
)
def test_opaque_modes(mode: str, fmt: str) -> None:
    src = flat_shapes(8, 90, 60) if mode in ("P", "1") else picture(8, 90, 60)
    im = src.convert(mode) if mode != "P" else src.quantize(16)
    if mode == "LAB":
        im = Image.merge("LAB", picture(8, 90, 60).split())  # any L*a*b* triplets
    data = encode(im, fmt)
    with Image.open(io.BytesIO(data)) as stored:
        file_mode = stored.mode
        expected = luma(stored)  # what Pillow makes of the stored pixels
    result = decode_ok(data)
    error = np.abs(result.frames[0] - expected)
    tolerance = 3.0 if fmt == "JPEG" else 0.01
    assert error.mean() <= tolerance, (mode, file_mode, float(error.mean()))


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF")])
def test_16_bit_grey_is_scaled_to_8_bits(mode: str, fmt: str) -> None:
    values = grey_ramp()
    arr16 = np.asarray(values, np.uint16) * 257  # full 16-bit range
    dtype = ">u2" if mode == "I;16B" else "<u2"
    im = Image.frombytes(mode, values.size, arr16.astype(dtype).tobytes())
    result = decode_ok(encode(im, fmt))
    assert np.abs(result.frames[0] - np.asarray(values, np.float32)).max() < 0.01


@pytest.mark.parametrize(
    ("mode", "scale"), [("I", 1.0), ("I", 257.0), ("F", 1.0), ("F", 1.0 / 255.0)]
)
def test_32_bit_grey(mode: str, scale: float) -> None:
    """32-bit int/float grey in 0..255, 0..65535 or 0..1 maps onto 0..255."""
    grey = np.asarray(grey_ramp(), np.float64)
    arr = grey * scale
    im = Image.fromarray(arr.astype(np.int32 if mode == "I" else np.float32), mode)
    result = decode_ok(encode(im, "TIFF"))
    assert np.abs(result.frames[0] - grey).max() < 0.02


def test_hsv_and_pa_frames() -> None:
    """Modes no saver writes (HSV) or only TIFF does (PA): through the frame converter."""
    src = picture(9, 90, 60)
    hsv = src.convert("HSV")
    frame = images._frame_luma(hsv, WORKING_SHORT_SIDE)
    assert np.abs(frame - luma(hsv.convert("RGB"))).max() < 0.01
    pa = flat_shapes(9, 90, 60).quantize(16).convert("PA")
    result = decode_ok(encode(pa, "TIFF"))
    assert np.abs(result.frames[0] - luma(pa.convert("RGB"))).max() < 0.01


# --- alpha: composited over white --------------------------------------------------------


def test_rgba_is_composited_over_white() -> None:
    arr = np.zeros((60, 90, 4), np.uint8)
    arr[:, :30] = (0, 0, 0, 0)  # transparent; the hidden colour is black
    arr[:, 30:60] = (255, 0, 0, 128)  # half-transparent red
    arr[:, 60:] = (100, 100, 100, 255)  # opaque grey
    result = decode_ok(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    frame = result.frames[0]
    assert np.allclose(frame[:, :30], 255, atol=0.01)
    red = 0.299 * 255
    assert np.allclose(frame[:, 30:60], red * 128 / 255 + 255 * (1 - 128 / 255), atol=1.0)
    assert np.allclose(frame[:, 60:], 100, atol=0.01)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_hidden_colour_does_not_bleed_when_reducing(mode: str) -> None:
    """1-pixel stripes of transparent black and opaque white are white over white, also
    after box reduction (which must average premultiplied colours)."""
    arr = np.zeros((1200, 1100, 4), np.uint8)
    arr[:, 1::2] = (255, 255, 255, 255)
    im = Image.fromarray(arr, "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    result = decode_ok(encode(im, "PNG"))
    assert result.frames[0].shape == (600, 550)
    assert np.allclose(result.frames[0], 255, atol=1.0)


def test_palette_transparency_and_trns_colour_key() -> None:
    base = flat_shapes(10, 90, 60).quantize(8)
    transparent_index = int(np.asarray(base)[0, 0])
    gif = encode(base, "GIF", transparency=transparent_index)
    png = encode(base, "PNG", transparency=transparent_index)
    rgb = flat_shapes(10, 90, 60)
    key = tuple(int(v) for v in np.asarray(rgb)[0, 0])
    png_rgb_key = encode(rgb, "PNG", transparency=key)
    for data in (gif, png, png_rgb_key):
        frame = decode_ok(data).frames[0]
        assert frame[0, 0] == pytest.approx(255.0, abs=0.01)


# --- EXIF orientation --------------------------------------------------------------------


def marked(width: int = 300, height: int = 200) -> Image.Image:
    """Dark, with a bright block in the top-left corner: shows any rotation or flip."""
    im = Image.new("RGB", (width, height), (30, 30, 30))
    ImageDraw.Draw(im).rectangle((0, 0, width // 4, height // 4), fill=(250, 250, 250))
    return im


def with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize(("orientation", "corner"), [(6, "top-right"), (8, "bottom-left")])
def test_jpeg_exif_orientation_is_applied(orientation: int, corner: str) -> None:
    data = encode(marked(), "JPEG", exif=with_orientation(orientation))
    result = decode_ok(data)
    assert (result.width, result.height) == (200, 300)
    frame = result.frames[0]
    assert frame.shape == (300, 200)
    corners = {
        "top-left": frame[:30, :30],
        "top-right": frame[:30, -30:],
        "bottom-left": frame[-30:, :30],
        "bottom-right": frame[-30:, -30:],
    }
    for name, patch in corners.items():
        assert (patch.mean() > 200) == (name == corner), name


def test_orientation_applies_to_reduced_jpeg() -> None:
    data = encode(marked(3000, 2000), "JPEG", exif=with_orientation(6))
    result = decode_ok(data)
    assert (result.width, result.height) == (2000, 3000)
    h, w = result.frames[0].shape
    assert h > w
    assert result.frames[0][: h // 10, -w // 10 :].mean() > 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    data = encode(marked(90, 60), "PNG", exif=with_orientation(orientation))
    with Image.open(io.BytesIO(data)) as im:
        expected = luma(ImageOps.exif_transpose(im))
    result = decode_ok(data)
    assert result.frames[0].shape == expected.shape
    assert (result.height, result.width) == expected.shape
    assert np.abs(result.frames[0] - expected).max() < 0.01


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_invalid_orientation_is_ignored(value: int) -> None:
    result = decode_ok(encode(marked(90, 60), "JPEG", exif=with_orientation(value)))
    assert result.frames[0].shape == (60, 90)


# --- frames ------------------------------------------------------------------------------


def gif_with_frame_order(frames: list[Image.Image], order: list[int]) -> bytes:
    """A GIF whose frame blocks are the given frames' blocks in `order` (repeats allowed).
    Pillow's saver merges repeated frames, so the file is reassembled from its blocks."""
    data = encode(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, disposal=1,
        optimize=False,
    )
    pos = 13
    if data[10] & 0x80:
        pos += 3 * (2 << (data[10] & 7))
    head, pending = data[:pos], b""
    blocks: list[bytes] = []

    def sub_blocks(p: int) -> int:
        while data[p]:
            p += data[p] + 1
        return p + 1

    prefix = b""
    while data[pos] != 0x3B:
        start = pos
        if data[pos] == 0x21:  # extension: introducer, label, sub-blocks
            pos = sub_blocks(pos + 2)
            if data[start + 1] == 0xF9:
                pending += data[start:pos]
            elif not blocks:
                prefix += data[start:pos]
        elif data[pos] == 0x2C:  # image descriptor (+ local colour table) + LZW data
            packed = data[pos + 9]
            pos += 10
            if packed & 0x80:
                pos += 3 * (2 << (packed & 7))
            pos = sub_blocks(pos + 1)
            blocks.append(pending + data[start:pos])
            pending = b""
        else:
            raise AssertionError(f"unexpected GIF block {data[pos]:#x}")
    assert len(blocks) == len(frames)
    return head + prefix + b"".join(blocks[i] for i in order) + b"\x3b"


def test_animated_gif_distinct_frames() -> None:
    a, b, c = flat_shapes(11), flat_shapes(12), flat_shapes(13)
    data = gif_with_frame_order([a, b, c], [0, 0, 1, 1, 1, 2])
    result = decode_ok(data)
    assert result.image_format == "GIF"
    assert result.frame_count == 6
    assert len(result.frames) == 3
    for frame, src in zip(result.frames, (a, b, c), strict=True):
        assert np.abs(frame - luma(src)).max() < 0.01


def test_frames_equal_to_the_previous_one_only_are_skipped() -> None:
    a, b = flat_shapes(14), flat_shapes(15)
    result = decode_ok(gif_with_frame_order([a, b], [0, 1, 0, 0]))
    assert result.frame_count == 4
    assert len(result.frames) == 3  # a, b, a


def test_max_frames_cuts() -> None:
    frames = [flat_shapes(20 + i) for i in range(6)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    result = decode_ok(data, ImageSettings(max_frames=2))
    assert result.frame_count == 6
    assert len(result.frames) == 2
    assert len(decode_ok(data).frames) == 6


def test_apng_distinct_frames() -> None:
    a, b, c = flat_shapes(30), flat_shapes(31), flat_shapes(32)
    # Different disposal values keep Pillow from merging the repeated frames.
    data = encode(
        a, "PNG", save_all=True, append_images=[a, b, b, c], duration=100,
        disposal=[0, 1, 0, 1, 0], blend=0,
    )
    result = decode_ok(data)
    assert result.image_format == "PNG"
    assert result.frame_count == 5
    assert len(result.frames) == 3
    for frame, src in zip(result.frames, (a, b, c), strict=True):
        assert np.abs(frame - luma(src)).max() < 0.01


def test_animated_webp_frames() -> None:
    a, b, c = flat_shapes(33), flat_shapes(34), flat_shapes(35)
    data = encode(a, "WEBP", save_all=True, append_images=[b, c], duration=100, lossless=True)
    result = decode_ok(data)
    assert result.image_format == "WEBP"
    assert len(result.frames) == 3
    for frame, src in zip(result.frames, (a, b, c), strict=True):
        assert np.abs(frame - luma(src)).max() < 0.01


def test_multipage_tiff_pages_of_different_sizes() -> None:
    a, b, c = flat_shapes(36, 96, 64), flat_shapes(37, 50, 70), flat_shapes(38, 120, 40)
    data = encode(a, "TIFF", save_all=True, append_images=[a, b, c])
    result = decode_ok(data)
    assert result.frame_count == 4
    assert [f.shape for f in result.frames] == [(64, 96), (70, 50), (40, 120)]


def test_deadline_is_checked_between_frames() -> None:
    frames = [flat_shapes(40 + i) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    # Past the frame budget the walk stops and says so; the frames examined still count.
    result = decode_ok(data, ImageSettings(deadline=0))
    assert len(result.frames) == 1
    assert result.incomplete == "frames-past-limit"
    assert "examined 1 of 3 frames" in result.detail
    # A single frame is decoded whatever the deadline: there is nothing between frames.
    decode_ok(encode(frames[0], "PNG"), ImageSettings(deadline=0))


def test_broken_later_frame_keeps_earlier_frames() -> None:
    a, b = flat_shapes(45), flat_shapes(46)
    data = gif_with_frame_order([a, b], [0, 1])
    result = decode_ok(data[: len(data) - 40])  # the second frame's data cut short
    assert len(result.frames) >= 1
    assert np.abs(result.frames[0] - luma(a)).max() < 0.01


def test_garbage_after_the_first_gif_frame_keeps_it() -> None:
    a, b = flat_shapes(47), flat_shapes(48)
    one = gif_with_frame_order([a, b], [0])
    rng = np.random.default_rng(47)
    for _ in range(20):
        data = one[:-1] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        result = decode_ok(data)
        assert np.abs(result.frames[0] - luma(a)).max() < 0.01


def test_later_page_over_the_pixel_limit_is_not_decoded() -> None:
    small, big = flat_shapes(49, 96, 64), picture(49, 400, 300)
    data = encode(small, "TIFF", save_all=True, append_images=[big, small])
    result = decode_ok(data, ImageSettings(max_pixels=96 * 64))
    assert result.frame_count == 3
    assert [f.shape for f in result.frames] == [(64, 96)]
    assert skip_reason(encode(big, "TIFF"), ImageSettings(max_pixels=96 * 64)) == (
        "too-many-pixels"
    )


# --- limits ------------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height zero pixels: a few hundred KB at most."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header() -> None:
    data = bomb_png(30000, 30000)  # 900 megapixels in ~110 KB
    assert len(data) < 1_000_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert skip_reason(data) == "too-many-pixels"
    assert time.perf_counter() - start < 0.5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 50 * 1024


def test_pixel_limit_is_ours_not_pillows() -> None:
    max_before = Image.MAX_IMAGE_PIXELS
    # Between our default limit (100 M) and Pillow's error threshold (2 x 89 M).
    with pytest.raises(SkipImage) as info:
        decode(bomb_png(12000, 10000), LIMITS)
    assert info.value.reason == "too-many-pixels"
    assert "120000000" in info.value.detail
    # And a small limit passed in.
    data = encode(picture(50, 200, 100), "PNG")
    assert skip_reason(data, ImageSettings(max_pixels=19_999)) == "too-many-pixels"
    decode_ok(data, ImageSettings(max_pixels=20_000))
    assert max_before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_huge_dimensions_in_jpeg_and_gif_headers() -> None:
    jpeg = bytearray(encode(picture(51, 64, 48), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    assert skip_reason(bytes(jpeg)) == "too-many-pixels"
    gif = bytearray(encode(flat_shapes(51), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    descriptor = gif.index(b"\x2c", 13)
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 65535, 65535)
    assert skip_reason(bytes(gif)) == "too-many-pixels"


def test_too_many_bytes() -> None:
    data = encode(picture(52), "PNG")
    assert skip_reason(data, ImageSettings(max_bytes=len(data) - 1)) == "too-large"
    decode_ok(data, ImageSettings(max_bytes=len(data)))


@pytest.mark.parametrize(("fmt", "size"), [("PNG", (3, 3)), ("GIF", (1, 1)), ("JPEG", (40, 8))])
def test_tiny_images_are_still_decoded(fmt: str, size: tuple[int, int]) -> None:
    src = picture(53, 64, 64).resize(size)
    result = decode_ok(encode(src, fmt))
    assert (result.width, result.height) == size
    assert result.frames[0].shape == (size[1], size[0])


# --- broken input ------------------------------------------------------------------------


def truncated_or_skipped(data: bytes) -> str:
    """A truncated image decodes as far as it goes (incomplete "truncated") or is skipped."""
    try:
        result = decode_ok(data)
    except SkipImage as exc:
        return exc.reason
    assert result.incomplete is not None
    return result.incomplete


def test_truncated_jpeg() -> None:
    data = encode(picture(54, 600, 400), "JPEG")
    half = decode_ok(data[: len(data) // 2])
    assert half.incomplete == "truncated"
    assert truncated_or_skipped(data[:300]) in ("truncated", "corrupt", "no-pixel-data")


def test_truncated_png_and_gif() -> None:
    png = encode(picture(55, 300, 200), "PNG")
    assert decode_ok(png[: len(png) // 2]).incomplete == "truncated"
    gif = encode(flat_shapes(55, 300, 200), "GIF")
    assert decode_ok(gif[: len(gif) // 2]).incomplete == "truncated"


def test_random_garbage() -> None:
    rng = np.random.default_rng(56)
    garbage = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    assert skip_reason(garbage) == "not-an-image"
    for magic in (b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00"):
        assert skip_reason(magic + garbage) in ("corrupt", "truncated", "too-many-pixels",
                                                "no-pixel-data")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_cut_off_before_any_pixel_data(fmt: str) -> None:
    """A header cut off before the first pixel data (PNG without IDAT, GIF inside its
    palette, JPEG before its scan): nothing of a picture is in it."""
    data = encode(picture(57, 300, 200), fmt)
    marker = {"JPEG": b"\xff\xda", "PNG": b"IDAT", "GIF": b"\x2c\x00\x00"}[fmt]
    cut = data[: data.index(marker) - (4 if fmt == "PNG" else 0)]
    assert skip_reason(cut) == "no-pixel-data"
    assert skip_reason(data[:20]) in ("no-pixel-data", "corrupt", "not-an-image")


@pytest.mark.parametrize("fmt", [*FORMATS, "APNG", "TIFF-multi"])
def test_mutated_files_only_ever_raise_skipimage(fmt: str) -> None:
    """Truncations, flipped bytes and inserted bytes: decode() returns or raises SkipImage,
    nothing else, and no warning escapes."""
    src = flat_shapes(57, 64, 48) if fmt in ("GIF", "APNG") else picture(57, 64, 48)
    if fmt == "APNG":
        data = encode(src, "PNG", save_all=True, append_images=[flat_shapes(58, 64, 48)])
    elif fmt == "TIFF-multi":
        data = encode(src, "TIFF", save_all=True, append_images=[picture(58, 60, 40)])
    else:
        data = encode(src, fmt)
    rng = np.random.default_rng(len(data))
    outcomes: dict[str, int] = {}
    for i in range(120):
        buf = bytearray(data)
        kind = i % 3
        if kind == 0:
            buf = buf[: int(rng.integers(0, len(buf)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 8))):
                buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        else:
            at = int(rng.integers(0, len(buf)))
            buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                decode(bytes(buf), LIMITS)
                outcome = "ok"
            except SkipImage as exc:
                assert exc.reason in {
                    "no-pixel-data",
                    "not-an-image", "truncated", "corrupt", "too-many-pixels",
                    "unsupported-mode", "unsupported-format",
                }, exc
                outcome = exc.reason
        assert not caught, [str(w.message) for w in caught]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert sum(outcomes.values()) == 120
