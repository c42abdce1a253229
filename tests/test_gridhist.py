"""gridhist: our PhotoDNA-style hash, on generated benign images (gradients, shapes, noise)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from mailfilter.hashing.gridhist import (
    DEFAULT_MAX_DISTANCE,
    HASH_BYTES,
    gridhist_dihedral,
    gridhist_distance,
    gridhist_from_luma,
)


def scene(seed: int, h: int = 300, w: int = 400) -> np.ndarray:
    """A photo-like grey image: smooth background, a few shapes, a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), rng.uniform(60, 190), dtype=np.float32)
    for _ in range(3):  # low-frequency waves
        fx, fy = rng.uniform(0.5, 3.0, 2) * 2 * np.pi
        img += rng.uniform(10, 40) * np.sin(fx * x / w + fy * y / h + rng.uniform(0, 6.3))
    for _ in range(int(rng.integers(4, 8))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
        value = rng.uniform(0, 255)
        if rng.random() < 0.5:
            mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        else:
            mask = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        img[mask] = 0.4 * img[mask] + 0.6 * value
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def _roundtrip(luma: np.ndarray, fmt: str = "JPEG", **opts: object) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(luma), 0, 255).astype(np.uint8)).save(buf, fmt, **opts)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"), dtype=np.float32)


def _resize(luma: np.ndarray, w: int, h: int) -> np.ndarray:
    im = Image.fromarray(luma.astype(np.float32), mode="F")
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _hash(luma: np.ndarray) -> str:
    h = gridhist_from_luma(luma)
    assert h is not None
    return h


def test_hex_length_and_determinism() -> None:
    img = scene(1)
    a = _hash(img)
    assert len(a) == 2 * HASH_BYTES == 512
    assert a == a.lower() and bytes.fromhex(a)
    assert _hash(img) == a
    assert _hash(img.astype(np.float64)) == a
    assert _hash(img.copy()) == a
    assert gridhist_distance(a, a) == 0.0


def test_distance_is_symmetric_and_checks_length() -> None:
    a, b = _hash(scene(1)), _hash(scene(2))
    assert gridhist_distance(a, b) == gridhist_distance(b, a) > 0
    with pytest.raises(ValueError):
        gridhist_distance(a, a[:-2])
    with pytest.raises(ValueError):
        gridhist_distance(a, "zz" * HASH_BYTES)


@pytest.mark.parametrize("seed", range(5))
def test_same_image_resized_and_recompressed_is_close(seed: int) -> None:
    img = scene(seed)
    h = _hash(img)
    small = DEFAULT_MAX_DISTANCE / 3
    assert gridhist_distance(h, _hash(_resize(img, 200, 150))) < small
    assert gridhist_distance(h, _hash(_resize(img, 133, 100))) < small
    assert gridhist_distance(h, _hash(_roundtrip(img, quality=90))) < small
    assert gridhist_distance(h, _hash(_roundtrip(img, quality=40))) < small
    assert gridhist_distance(h, _hash(_roundtrip(_resize(img, 160, 120), quality=75))) < small


@pytest.mark.parametrize("seed", range(3))
def test_brightness_and_contrast_barely_matter(seed: int) -> None:
    img = scene(seed)
    h = _hash(img)
    assert gridhist_distance(h, _hash(img * 0.6 + 20)) < DEFAULT_MAX_DISTANCE / 4
    assert gridhist_distance(h, _hash(img + 25)) < DEFAULT_MAX_DISTANCE / 4


@pytest.mark.parametrize("seed", range(5))
def test_small_crops_still_match(seed: int) -> None:
    img = scene(seed)
    h_, w_ = img.shape
    h = _hash(img)
    five = img[int(0.025 * h_): int(0.975 * h_), int(0.025 * w_): int(0.975 * w_)]
    assert gridhist_distance(h, _hash(five)) < DEFAULT_MAX_DISTANCE


def test_different_images_are_far_apart() -> None:
    hashes = [_hash(scene(seed)) for seed in range(12)]
    nearest = min(
        gridhist_distance(a, b)
        for i, a in enumerate(hashes)
        for b in hashes[i + 1:]
    )
    assert nearest > DEFAULT_MAX_DISTANCE


def test_flat_near_flat_and_tiny_images_have_no_hash() -> None:
    rng = np.random.default_rng(0)
    assert gridhist_from_luma(np.full((200, 300), 128.0, dtype=np.float32)) is None
    assert gridhist_from_luma(np.zeros((64, 64), dtype=np.float32)) is None
    # JPEG-ish noise on a flat grey, and a gentle 20-level ramp.
    noisy = 128 + rng.normal(0, 2.0, (300, 300)).astype(np.float32)
    assert gridhist_from_luma(noisy) is None
    ramp = np.tile(np.linspace(100, 120, 300, dtype=np.float32), (300, 1))
    assert gridhist_from_luma(ramp) is None
    # One small dot on an empty canvas.
    dot = np.full((300, 300), 255.0, dtype=np.float32)
    dot[140:150, 140:150] = 0.0
    assert gridhist_from_luma(dot) is None
    # Too small to say anything.
    assert gridhist_from_luma(scene(3)[:6, :6]) is None
    assert gridhist_from_luma(np.arange(5, dtype=np.float32)) is None  # not 2-D


def test_small_but_real_images_are_hashed() -> None:
    img = scene(4)
    assert gridhist_from_luma(_resize(img, 40, 30)) is not None
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.float32), (300, 1))
    assert gridhist_from_luma(ramp) is not None


def test_non_finite_input_has_no_hash() -> None:
    img = scene(5)
    img[10, 10] = np.nan
    assert gridhist_from_luma(img) is None


TRANSFORMS: tuple[Callable[[np.ndarray], np.ndarray], ...] = (
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    np.fliplr,
    np.flipud,
    np.transpose,
    lambda a: np.rot90(a, 2).T,
)


@pytest.mark.parametrize("seed", range(3))
def test_dihedral_hashes_equal_hashes_of_transformed_pixels(seed: int) -> None:
    img = scene(seed, 256, 256)
    h = _hash(img)
    variants = gridhist_dihedral(h)
    assert len(variants) == 8 and variants[0] == h
    assert len(set(variants)) == 8
    for k, transform in enumerate(TRANSFORMS):
        direct = _hash(np.ascontiguousarray(transform(img)))
        # equal up to rounding in the last bit of a few bytes
        assert gridhist_distance(direct, variants[k]) < 5, k


def test_dihedral_of_a_flipped_copy_finds_the_original() -> None:
    img = scene(7)
    original = _hash(img)
    flipped = _hash(np.ascontiguousarray(np.fliplr(img)))
    assert gridhist_distance(original, flipped) > DEFAULT_MAX_DISTANCE
    assert min(gridhist_distance(original, v) for v in gridhist_dihedral(flipped)) < 5
