"""mailfilter.pixels: the copy-free bridges give the values of the copying ones."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from mailfilter.pixels import float_array, float_image, reduce_float


def _luma(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(rgb, "RGB").convert("F"), dtype=np.float32)


@pytest.mark.parametrize("mode", ["F", "L"])
def test_float_array_equals_asarray(mode: str) -> None:
    im = Image.fromarray(_luma(97, 131), "F").convert(mode)
    got = float_array(im)
    assert got.dtype == np.float32 and got.shape == (97, 131)
    assert np.array_equal(got, np.asarray(im, dtype=np.float32))


def test_float_array_outlives_its_image() -> None:
    # The view holds Pillow's exported memory: it stays valid when the image is gone and
    # other images are made and freed meanwhile.
    expected = _luma(200, 300, seed=1)
    view = float_array(Image.fromarray(expected, "F"))
    assert not view.flags.writeable
    gc.collect()
    for seed in range(5):
        float_array(Image.fromarray(_luma(200, 300, seed=seed + 2), "F"))
    gc.collect()
    assert np.array_equal(view, expected)


def test_float_array_of_an_image_in_several_blocks() -> None:
    # Over Pillow's 16 MB block, Arrow cannot export the pixels: the copy is taken instead.
    im = Image.new("F", (2100, 2100), 3.5)
    got = float_array(im)
    assert got.shape == (2100, 2100) and float(got[-1, -1]) == 3.5


def test_float_array_of_empty_and_tiny_images() -> None:
    assert float_array(Image.new("F", (0, 5))).shape == (5, 0)
    assert float_array(Image.new("F", (1, 1), 2.0)).tolist() == [[2.0]]


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_reduce_float_equals_pillow(factor: int) -> None:
    luma = _luma(173, 229, seed=factor)
    expected = np.asarray(Image.fromarray(luma, "F").reduce(factor), dtype=np.float32)
    assert np.array_equal(reduce_float(luma, factor), expected)
    part = luma[7:150, 11:200]  # not contiguous: copied first
    expected = np.asarray(Image.fromarray(np.ascontiguousarray(part), "F").reduce(factor),
                          dtype=np.float32)
    assert np.array_equal(reduce_float(part, factor), expected)


def test_float_image_shares_the_array() -> None:
    luma = _luma(40, 60, seed=9)
    im = float_image(luma)
    assert im.mode == "F" and im.size == (60, 40)
    assert np.array_equal(np.asarray(im, dtype=np.float32), luma)
    assert np.array_equal(np.asarray(float_image(luma.astype(np.float64)), np.float32), luma)
