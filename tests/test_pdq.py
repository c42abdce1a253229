"""PDQ: conformance with Meta's reference (shared/vectors/pdq/expected.csv), the dihedral
hashes, the quality metric and speed.

Run this file as a script to print the per-image distances of the conformance check:
    python tests/test_pdq.py
"""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from mailfilter.hashing.pdq import DIHEDRAL_NAMES, PdqResult, hamming, pdq_from_luma
from mailfilter.images import decode
from mailfilter.settings import ImageSettings

SHARED = Path(__file__).resolve().parents[2] / "shared"
VECTORS = SHARED / "vectors" / "pdq"
IMAGES = VECTORS / "images"

needs_vectors = pytest.mark.skipif(
    not (VECTORS / "expected.csv").is_file(),
    reason=f"PDQ reference vectors not found at {VECTORS} (shared/ must sit beside the repo)",
)

# numpy transforms matching DIHEDRAL_NAMES, in order.
TRANSFORMS = (
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, -1),
    np.flipud,
    np.fliplr,
    lambda a: a.T,
    lambda a: np.rot90(a, 2).T,
)

# The reference hashes the stored pixels (it ignores EXIF orientation); decode() applies
# the orientation. The stored image is then our image under this dihedral transform.
UNDO_ORIENTATION = {1: 0, 2: 5, 3: 2, 4: 4, 5: 6, 6: 1, 7: 7, 8: 3}


def luma_of(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Y = 0.299 R + 0.587 G + 0.114 B in float32, as the reference computes it."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    out: npt.NDArray[np.float32] = (
        r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
    )
    return out


def photo(seed: int, height: int = 300, width: int = 400) -> npt.NDArray[np.float32]:
    """A benign generated luminance image: gradients, shapes and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = rng.uniform(0.5, 3.0, 2)
    img = 128 + 80 * np.sin(2 * np.pi * fx * xx / width + rng.uniform(0, 6)) * np.cos(
        2 * np.pi * fy * yy / height
    )
    for _ in range(6):
        y0, x0 = int(rng.integers(0, height - 30)), int(rng.integers(0, width - 30))
        h, w = int(rng.integers(15, height // 2)), int(rng.integers(15, width // 2))
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255)
    img += rng.normal(0, 3, img.shape)
    out: npt.NDArray[np.float32] = np.clip(img, 0, 255).astype(np.float32)
    return out


# --- conformance -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    path: str
    distance: int
    ref_quality: int
    quality: int
    size: tuple[int, int]
    working: tuple[int, ...]


def expected_rows() -> list[dict[str, str]]:
    with (VECTORS / "expected.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def stored_orientation(path: Path) -> int:
    with Image.open(path) as im:
        value = im.getexif().get(0x0112, 1)
    return value if value in UNDO_ORIENTATION else 1


def conformance() -> list[Row]:
    """decode() with default settings + pdq_from_luma against the pdqhash_cpp_bindings column."""
    limits = ImageSettings()
    rows = []
    for entry in expected_rows():
        path = IMAGES / entry["path"]
        decoded = decode(path.read_bytes(), limits)
        result = pdq_from_luma(decoded.frames[0])
        ours = result.dihedral[UNDO_ORIENTATION[stored_orientation(path)]]
        rows.append(
            Row(
                path=entry["path"],
                distance=hamming(ours, entry["pdqhash_cpp_bindings"]),
                ref_quality=int(entry["quality"]),
                quality=result.quality,
                size=(decoded.width, decoded.height),
                working=decoded.frames[0].shape,
            )
        )
    return rows


def report(rows: list[Row]) -> str:
    lines = [f"{'image':50s} {'bits':>4s} {'q':>4s} {'ref q':>5s}  size -> working (h, w)"]
    for r in rows:
        lines.append(
            f"{r.path:50s} {r.distance:4d} {r.quality:4d} {r.ref_quality:5d}  "
            f"{r.size[0]}x{r.size[1]} -> {r.working}"
        )
    good = [r.distance for r in rows if r.ref_quality >= 80]
    lines.append(
        f"quality>=80: {len(good)} images, max {max(good)} bits, mean {statistics.mean(good):.2f}; "
        f"all {len(rows)}: median {statistics.median(r.distance for r in rows)} bits"
    )
    return "\n".join(lines)


@needs_vectors
def test_conformance_with_reference_vectors() -> None:
    rows = conformance()
    print("\n" + report(rows))
    assert len(rows) >= 40
    for r in rows:
        if r.ref_quality >= 80:
            assert r.distance <= 10, f"{r.path}: {r.distance} bits from the reference"
        assert abs(r.quality - r.ref_quality) <= 5, f"{r.path}: quality {r.quality}"
    assert statistics.median(r.distance for r in rows) <= 2


@needs_vectors
def test_full_size_luma_reproduces_reference_exactly() -> None:
    """Fed the reference's own input (full-size RGB from Pillow), the hash is the reference's:
    this checks the algorithm itself, apart from our reduced decoding."""
    for entry in expected_rows():
        with Image.open(IMAGES / entry["path"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        result = pdq_from_luma(luma_of(rgb))
        assert hamming(result.hash, entry["pdqhash_cpp_bindings"]) <= 2, entry["path"]
        assert result.quality == int(entry["quality"]), entry["path"]


@needs_vectors
def test_python_port_and_cpp_tool_columns_are_near() -> None:
    """Other implementations' published hashes (different decoders) are near ours too."""
    limits = ImageSettings()
    for entry in expected_rows():
        others = [entry[k] for k in ("python_port_expected", "cpp_tool_readme") if entry[k]]
        if not others or int(entry["quality"]) < 80:
            continue
        path = IMAGES / entry["path"]
        result = pdq_from_luma(decode(path.read_bytes(), limits).frames[0])
        for other in others:
            assert hamming(result.hash, other) <= 16, entry["path"]


# --- dihedral ----------------------------------------------------------------------------


@needs_vectors
def test_dihedral_hashes_match_rotated_reference_files() -> None:
    """reg-test-input/dih/ holds one photo in its 8 orientations, in DIHEDRAL_NAMES order."""
    reference = {e["path"]: e["pdqhash_cpp_bindings"] for e in expected_rows()}
    files = sorted((IMAGES / "reg-test-input" / "dih").glob("bridge-*.jpg"))
    assert len(files) == 8
    original = pdq_from_luma(decode(files[0].read_bytes(), ImageSettings()).frames[0])
    for index, path in enumerate(files):
        ref = reference[str(path.relative_to(IMAGES))]
        distances = [hamming(h, ref) for h in original.dihedral]
        assert distances[index] <= 12, (path.name, distances)
        assert int(np.argmin(distances)) == index, (path.name, distances)


@needs_vectors
def test_dihedral_equals_hash_of_transformed_vector_image() -> None:
    with Image.open(IMAGES / "reg-test-input" / "dih" / "bridge-1-original.jpg") as im:
        luma = luma_of(np.asarray(im.convert("RGB")))
    check_dihedral(luma, tolerance=10)


@pytest.mark.parametrize(
    ("seed", "shape"), [(1, (300, 380)), (2, (257, 383)), (3, (520, 600)), (4, (600, 300))]
)
def test_dihedral_is_exact_where_the_reference_sampling_is_symmetric(
    seed: int, shape: tuple[int, int]
) -> None:
    """With an odd Jarosz window (ceil(n / 128)) and n not a multiple of 128 on both sides,
    the reference's filter and decimation are mirror-symmetric: the 8 hashes derived from the
    one DCT equal the plain hashes of the transformed images."""
    check_dihedral(photo(seed, *shape), tolerance=2)


@pytest.mark.parametrize(("seed", "shape"), [(5, (400, 300)), (6, (257, 191)), (7, (640, 480))])
def test_dihedral_elsewhere_stays_within_match_distance(
    seed: int, shape: tuple[int, int]
) -> None:
    """With an even window the reference's tent is centred half a pixel off per pass, so a
    flip moves the samples by about a pixel: synthetic images with hard edges then differ by
    up to ~25 bits (photos by ~0-10), still the right hash of the 8 and under 31."""
    check_dihedral(photo(seed, *shape), tolerance=30)


def check_dihedral(luma: npt.NDArray[np.float32], tolerance: int) -> None:
    result = pdq_from_luma(luma)
    assert len(result.dihedral) == len(DIHEDRAL_NAMES) == 8
    assert result.dihedral[0] == result.hash
    for index, transform in enumerate(TRANSFORMS):
        plain = pdq_from_luma(np.ascontiguousarray(transform(luma))).hash
        distances = [hamming(plain, h) for h in result.dihedral]
        assert distances[index] <= tolerance, (DIHEDRAL_NAMES[index], distances)
        assert int(np.argmin(distances)) == index, (DIHEDRAL_NAMES[index], distances)
        others = [d for i, d in enumerate(distances) if i != index]
        assert min(others) >= 64, (DIHEDRAL_NAMES[index], distances)


# --- pdqhash, when installed -------------------------------------------------------------


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_matches_pdqhash_binding_on_generated_images(seed: int) -> None:
    pdqhash = pytest.importorskip("pdqhash")
    rng = np.random.default_rng(seed)
    base = photo(seed, 333, 517)
    rgb = np.clip(
        base[..., None] + rng.normal(0, 20, (1, 1, 3)) + rng.normal(0, 2, (*base.shape, 3)),
        0,
        255,
    ).astype(np.uint8)
    vector, quality = pdqhash.compute(rgb)
    ref = np.packbits(np.asarray(vector, dtype=np.uint8)).tobytes().hex()
    vectors, _ = pdqhash.compute_dihedral(rgb)
    ref_dihedral = [np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex() for v in vectors]
    ours = pdq_from_luma(luma_of(rgb))
    assert hamming(ours.hash, ref) <= 2
    assert ours.quality == quality
    for mine, theirs in zip(ours.dihedral, ref_dihedral, strict=True):
        assert hamming(mine, theirs) <= 2


# --- quality and small inputs ------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 37.5, 255.0])
def test_flat_image_has_low_quality(value: float) -> None:
    result = pdq_from_luma(np.full((200, 300), value, dtype=np.float32))
    assert result.quality < 50
    assert result.quality == 0


def test_faint_gradient_has_low_quality() -> None:
    ramp = np.tile(np.linspace(100, 110, 256, dtype=np.float32), (256, 1))
    assert pdq_from_luma(ramp).quality < 50


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, 100), (100, 4)])
def test_tiny_image_gets_zero_hash_and_quality(shape: tuple[int, int]) -> None:
    result = pdq_from_luma(np.random.default_rng(0).random(shape, dtype=np.float32) * 255)
    assert result.quality == 0
    assert result.hash == "0" * 64
    assert result.dihedral == ("0" * 64,) * 8


def test_small_images_hash_without_error() -> None:
    for shape in [(5, 5), (7, 63), (64, 64), (65, 65), (10, 2000)]:
        result = pdq_from_luma(photo(7, 300, 300)[: shape[0], : shape[1]])
        assert len(result.hash) == 64


def test_textured_image_has_high_quality() -> None:
    assert pdq_from_luma(photo(8)).quality >= 80


# --- format, inputs, hamming -------------------------------------------------------------


def test_result_format() -> None:
    result = pdq_from_luma(photo(9))
    assert isinstance(result, PdqResult)
    for h in result.dihedral:
        assert len(h) == 64
        assert h == h.lower()
        int(h, 16)
    # Median threshold: about half the bits are set.
    assert 100 <= bin(int(result.hash, 16)).count("1") <= 128


def test_accepts_float64_integer_and_non_contiguous_input() -> None:
    luma = photo(10)
    ref = pdq_from_luma(luma).hash
    assert pdq_from_luma(luma.astype(np.float64)).hash == ref
    assert hamming(pdq_from_luma(np.round(luma).astype(np.uint8)).hash, ref) <= 8
    padded = np.zeros((luma.shape[0] + 20, luma.shape[1] + 40), dtype=np.float32)
    padded[10:-10, 20:-20] = luma
    assert pdq_from_luma(padded[10:-10, 20:-20]).hash == ref  # a strided view


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        pdq_from_luma(np.zeros((10, 10, 3), dtype=np.float32))
    bad = photo(11)
    bad[5, 5] = np.nan
    with pytest.raises(ValueError):
        pdq_from_luma(bad)


def test_brightness_and_contrast_do_not_change_the_hash_much() -> None:
    luma = photo(12)
    ref = pdq_from_luma(luma).hash
    assert hamming(pdq_from_luma(luma * 0.6 + 40).hash, ref) <= 4


def test_hamming() -> None:
    a = "0" * 64
    assert hamming(a, a) == 0
    assert hamming(a, "f" * 64) == 256
    assert hamming(a, "0" * 63 + "1") == 1
    assert hamming("8" + "0" * 63, a) == 1
    assert hamming("F" * 64, "f" * 64) == 0
    for bad in ("0" * 63, "0" * 65, "g" * 64, "0x" + "0" * 62, "+" + "0" * 63, " " + "0" * 63):
        with pytest.raises(ValueError):
            hamming(bad, a)


# --- speed -------------------------------------------------------------------------------


def test_speed_on_reduced_image() -> None:
    """A few hundred pixels a side: well under 2 ms (generous bound against slow CI)."""
    luma = photo(13, 512, 683)
    pdq_from_luma(luma)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        pdq_from_luma(luma)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.010


if __name__ == "__main__":
    if not (VECTORS / "expected.csv").is_file():
        raise SystemExit(f"no vectors at {VECTORS}")
    print(report(conformance()))


def _box_reduced(luma: npt.NDArray[np.float32], factor: int) -> npt.NDArray[np.float32]:
    h, w = (luma.shape[0] // factor) * factor, (luma.shape[1] // factor) * factor
    blocks = luma[:h, :w].reshape(h // factor, factor, w // factor, factor)
    out: npt.NDArray[np.float32] = blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_reduced_frame_hashed_for_its_full_size_is_near_the_full_size_hash(seed: int) -> None:
    """A box-reduced copy hashed with `full_size` has the full image's filter windows, so it
    stays within a few bits of the full-size hash; hashed as an image of its own it does not
    do better (on real photos it was up to 18 bits off: bench/pdq_fidelity.py)."""
    from tests.factories import photo_like

    full = luma_of(np.asarray(photo_like(seed, 2400, 1800)))
    expected = pdq_from_luma(full)
    for factor in (2, 3, 4):
        small = _box_reduced(full, factor)
        folded = pdq_from_luma(small, (full.shape[1], full.shape[0]))
        own = pdq_from_luma(small)
        assert hamming(folded.hash, expected.hash) <= 4
        assert hamming(folded.hash, expected.hash) <= hamming(own.hash, expected.hash)
        for got, want in zip(folded.dihedral, expected.dihedral, strict=True):
            assert hamming(got, want) <= 8


def test_full_size_equal_to_the_frame_changes_nothing() -> None:
    luma = photo(7)
    assert pdq_from_luma(luma, (luma.shape[1], luma.shape[0])) == pdq_from_luma(luma)


def test_draft_decoded_jpeg_reports_its_stored_size() -> None:
    from tests.factories import jpeg

    decoded = decode(jpeg(5, 2400, 1800), ImageSettings())
    assert decoded.frames[0].shape[1] < 2400  # decoded at a draft scale
    assert decoded.frame_sizes == ((2400, 1800),)
