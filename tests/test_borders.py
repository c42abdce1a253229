"""Border detection on generated benign images: padded pictures give back their content
box (any border colour, JPEG noise), pictures without borders give None."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mailfilter.borders import content_box


def scene_rgb(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    """A photo-like colour image: smooth colour waves, shapes, a little noise; its edges
    are as busy as its middle."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        base = rng.uniform(60, 190)
        fx, fy = rng.uniform(1.0, 4.0, 2) * 2 * np.pi
        img[..., c] = base + rng.uniform(20, 50) * np.sin(fx * x / w + fy * y / h + c)
    for _ in range(int(rng.integers(5, 9))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        img[mask] = 0.3 * img[mask] + 0.7 * rng.uniform(0, 255, 3)
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def luma_of(rgb: np.ndarray, jpeg_quality: int | None = None) -> np.ndarray:
    im = Image.fromarray(rgb)
    if jpeg_quality is not None:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=jpeg_quality)
        im = Image.open(io.BytesIO(buf.getvalue()))
    return np.asarray(im.convert("L"), dtype=np.float32)


def pad(rgb: np.ndarray, top: int, left: int, bottom: int, right: int,
        colour: tuple[int, int, int]) -> np.ndarray:
    h, w, _ = rgb.shape
    out = np.empty((h + top + bottom, w + left + right, 3), dtype=np.uint8)
    out[...] = np.asarray(colour, dtype=np.uint8)
    out[top:top + h, left:left + w] = rgb
    return out


COLOURS = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 30), (40, 160, 220)]


def _assert_box(found: tuple[int, int, int, int] | None,
                expected: tuple[int, int, int, int], tolerance: int) -> None:
    assert found is not None, f"no box, expected {expected}"
    assert max(abs(a - b) for a, b in zip(found, expected, strict=True)) <= tolerance, (
        found, expected)


@pytest.mark.parametrize("colour", COLOURS)
@pytest.mark.parametrize("quality", [None, 90, 75, 50])
def test_padding_gives_back_the_content(colour: tuple[int, int, int],
                                        quality: int | None) -> None:
    for seed, pads in enumerate([(24, 24, 24, 24), (17, 37, 21, 19), (0, 40, 0, 40),
                                 (30, 0, 30, 0), (50, 16, 18, 60)]):
        rgb = scene_rgb(seed)
        top, left, bottom, right = pads
        padded = pad(rgb, top, left, bottom, right, colour)
        h, w, _ = rgb.shape
        found = content_box(luma_of(padded, quality))
        _assert_box(found, (top, left, top + h, left + w), 0 if quality is None else 2)


@pytest.mark.parametrize("colour", COLOURS)
@pytest.mark.parametrize("quality", [None, 90])
def test_thin_padding_is_found_when_jpeg_is_light(colour: tuple[int, int, int],
                                                  quality: int | None) -> None:
    """Borders thinner than a 16-px JPEG chroma block drown in ringing at low quality
    (then None or a box that keeps some border); at q90 and losslessly they are found."""
    for seed, pads in enumerate([(8, 9, 10, 11), (0, 12, 0, 8), (9, 0, 13, 0)]):
        rgb = scene_rgb(seed + 10)
        top, left, bottom, right = pads
        h, w, _ = rgb.shape
        found = content_box(luma_of(pad(rgb, top, left, bottom, right, colour), quality))
        _assert_box(found, (top, left, top + h, left + w), 0 if quality is None else 2)


@pytest.mark.parametrize("seed", range(4))
def test_letterbox_and_pillarbox_of_different_colours(seed: int) -> None:
    rgb = scene_rgb(seed, 180, 320)
    h, w, _ = rgb.shape
    inner = pad(rgb, 0, 30, 0, 30, (255, 255, 255))  # white pillarbox
    outer = pad(inner, 40, 0, 40, 0, (0, 0, 0))  # black letterbox around it
    _assert_box(content_box(luma_of(outer, 85)), (40, 30, 40 + h, 30 + w), 2)


def test_jpeg_noisy_border_on_a_downscaled_image() -> None:
    rgb = pad(scene_rgb(3, 480, 640), 64, 64, 64, 64, (0, 0, 0))
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=60)
    small = Image.open(io.BytesIO(buf.getvalue())).reduce(2)  # what a reduced decode sees
    luma = np.asarray(small.convert("L"), dtype=np.float32)
    _assert_box(content_box(luma), (32, 32, 32 + 240, 32 + 320), 2)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("quality", [None, 90, 50])
def test_no_border_gives_none(seed: int, quality: int | None) -> None:
    assert content_box(luma_of(scene_rgb(seed), quality)) is None


def test_tiny_border_is_not_worth_trimming() -> None:
    rgb = pad(scene_rgb(1), 2, 2, 2, 2, (0, 0, 0))  # under 2% of each side
    assert content_box(luma_of(rgb)) is None


def test_flat_and_tiny_images_give_none() -> None:
    assert content_box(np.full((200, 300), 17.0, dtype=np.float32)) is None
    assert content_box(np.zeros((10, 10), dtype=np.float32)) is None
    assert content_box(np.zeros((5,), dtype=np.float32)) is None


def test_mostly_empty_canvas_gives_none() -> None:
    canvas = np.full((300, 300), 255.0, dtype=np.float32)
    canvas[140:160, 140:160] = 0.0  # a small mark: not a framed picture
    assert content_box(canvas) is None


def test_dark_sky_is_not_cut_into() -> None:
    """A night photo: the top third is a dark sky, nearly uniform but with sensor noise and
    a slow gradient. It must not be mistaken for a black border."""
    rng = np.random.default_rng(5)
    h, w = 300, 400
    sky_rows = 100
    img = scene_rgb(6, h, w).astype(np.float32)
    yy = np.arange(sky_rows, dtype=np.float32)[:, None, None]
    sky = 8.0 + 10.0 * yy / sky_rows + rng.normal(0.0, 1.5, (sky_rows, w, 3))
    img[:sky_rows] = sky
    for quality in (None, 90, 60):
        box = content_box(luma_of(np.clip(np.rint(img), 0, 255).astype(np.uint8), quality))
        assert box is None or box[0] <= 0.03 * h, (quality, box)


def test_dark_photo_on_black_padding_keeps_its_content() -> None:
    rng = np.random.default_rng(9)
    dark = np.clip(scene_rgb(2).astype(np.float32) * 0.15
                   + rng.normal(0, 2.0, (240, 320, 3)), 0, 255)
    rgb = pad(np.rint(dark).astype(np.uint8), 32, 32, 32, 32, (0, 0, 0))
    for quality in (None, 90, 60):
        box = content_box(luma_of(rgb, quality))
        assert box is not None
        top, left, bottom, right = box
        # never more than one JPEG block into the content
        assert top <= 32 + 8 and left <= 32 + 8 and bottom >= 272 - 8 and right >= 352 - 8, box
