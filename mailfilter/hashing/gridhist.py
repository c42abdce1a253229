"""Gridhist: a PhotoDNA-style robust image hash of our own.

Publicly, PhotoDNA is described as: grayscale, resize, split into a grid of overlapping
cells, a histogram of gradients per cell, and a feature vector compared by distance. This
is our own take on that idea, written from that description only:

1. Luminance (float, 0..255) is area-averaged to a fixed ``WORK`` x ``WORK`` square
   (32 x 32; the aspect ratio is dropped, as PDQ does), then smoothed with
   ``SMOOTH_PASSES`` passes of a [1, 2, 1] binomial blur (about a Gaussian of sigma 1
   working pixel, 1/32 of the picture). Gradients are therefore taken at a coarse scale:
   what survives is the picture's layout, not its fine detail, so JPEG blocking, noise,
   resampling, and the few-pixel shifts that small crops cause barely register.
2. Forward differences give the gradient; each pixel's gradient is split into four
   non-negative direction channels: +dx, -dx, +dy, -dy (brighter to the right, to the
   left, downwards, upwards).
3. A ``GRID`` x ``GRID`` grid (8 x 8) of overlapping cells (50% overlap) pools each
   channel with separable tent (triangle) weights, so a feature moving across a cell
   boundary moves its weight gradually from one cell to the next instead of jumping. The
   tents also fade out towards the image edges, which is where crops and added borders do
   their damage.
4. Normalisation: brightness offsets do not change gradients; contrast changes scale them
   all. Each cell's 4-vector is divided by its own length plus a floor of
   ``CELL_FLOOR`` x the mean cell length (regularised per-cell normalisation, as in HOG
   blocks): a cell's direction mix counts even where a clipped highlight or a local
   contrast change altered its strength, while near-empty cells stay near zero instead of
   amplifying noise. A square root then compresses the dynamic range.
5. Each value (0..1) is quantised to a byte: ``GRID * GRID * 4`` = 256 bytes, 512 hex
   characters, the 4 channel planes one after the other, each row-major.

Compare two hashes with :func:`gridhist_distance` (Euclidean distance of the byte
vectors, 0 .. 255 * 16 = 4080). :func:`gridhist_dihedral` gives the hashes of the 7 other
rotations/flips of the same image by permuting the vector, without the pixels.

The low-information gate (``None``) refuses images smaller than ``MIN_SIDE``, flat or
near-flat ones (``MIN_MEAN_GRADIENT``; this also refuses pure sensor-style noise, which
box averaging flattens), and ones whose detail sits in fewer than ``MIN_ACTIVE_CELLS``
cells (a dot or a line on an empty canvas).

Measured by ``bench/robustness.py`` (see ``DEFAULT_MAX_DISTANCE`` for the numbers): much
more tolerant than PDQ of centred crops of 5-10% (PDQ: 0 of 28 photos match), text
overlays, thumbnails, resizing and blur. Weaker: it only sees coarse layout, so different
pictures of the same stationary texture (gravel, grass, brick, cells) look alike to it --
its nearest different-image pairs are such textures, and its margin between "same" and
"different" is narrower than PDQ's (threshold at 0.8 of the nearest unrelated pair, PDQ's
31 bits at a third); a crop that shifts the picture by 10% of a side (against a corner)
still breaks it (4 of 28 match); a 10% added border breaks it as it breaks PDQ unless the
border is trimmed first (``mailfilter.borders``); rotations and flips need
:func:`gridhist_dihedral`; and the hash is 8x the size of PDQ's.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "GRID",
    "HASH_BYTES",
    "WORK",
    "gridhist_dihedral",
    "gridhist_distance",
    "gridhist_from_luma",
]

WORK = 32
"""Side of the square working image, in pixels."""

SMOOTH_PASSES = 2
"""[1, 2, 1] blur passes over the working image before the gradients."""

GRID = 8
"""Cells per side; neighbouring cells overlap by half a cell."""

CHANNELS = 4
"""Direction channels per cell: +dx, -dx, +dy, -dy."""

HASH_BYTES = GRID * GRID * CHANNELS

DEFAULT_MAX_DISTANCE: float = 300.0
"""Distances up to this count as a match (the settings default, `match.gridhist_max_distance`).

Chosen from measurements (``python bench/robustness.py --calibrate`` reproduces them):
about 0.65 x the smallest distance seen between two unrelated pictures when the query's
8 dihedral variants are compared (464), so that a false match would need pictures much
closer than any seen -- the margin PDQ's 31 bits keep to its nearest unrelated pairs is
similar. A false match quarantines someone's mail; a missed edit is usually still caught
by PDQ or the exact hashes, so the threshold leans to safety. (At 0.8 x, 460, crops and
text overlays match more often; see the bench.)

The calibration set is the bench's 28 benign photos (scikit-image's natural photos,
matplotlib's Grace Hopper, the shared PDQ test photos) plus their 2x2 and 3x3 tiles, each
its own picture, stored as JPEG q90 and decoded by ``mailfilter.images``: 354 hashes, 60,283
pairs from different photos. Nearest pair 577.8 (0.1% quantile 665, median 1236); with
``gridhist_dihedral`` on one side (8x the comparisons) 464. The robustness bench's 28 photos
x 24 edits (with border trimming) come no closer than 596. Same-photo distances there: re-
encoding, resizing, thumbnails, grey, borders, blur and noise mostly under 100 (worst 237,
contrast +30%; brightness +30% up to 366); 5% crops up to 390, 10% centred crops up to 520
(so 1 in 28 misses), text overlay up to 433, 10% crops against a corner mostly beyond it
(median 579). The calibration set is small: revisit with a large benign corpus before
relying on this in production.
"""

MIN_SIDE = 8
"""Images narrower or shorter than this carry too little information."""

MIN_MEAN_GRADIENT = 0.6
"""Mean absolute gradient (grey levels per working pixel, after smoothing) under which an
image counts as flat or near-flat. A full-range ramp across the image scores about 4, the
flattest photo of the bench (brick, blurred) 1.1; a 20-level ramp scores 0.3 and Gaussian
noise of sigma 40 on grey 0.57 (at 300 px), so both are refused."""

MIN_ACTIVE_CELLS = 4
"""At least this many cells must hold a noticeable share of the gradient energy; a lone
dot or line in an empty image is too little to match on."""

CELL_FLOOR = 1.0
"""Per-cell normalisation floor, as a fraction of the mean cell length."""

SCALE = 255.0
"""Byte value of a cell channel holding all of its cell's (normalised) energy."""

FloatArray = npt.NDArray[np.float32]


@lru_cache(maxsize=64)
def _area_matrix(size: int) -> FloatArray:
    """(WORK, size) box-averaging matrix: output sample i is the mean of the input over
    [i * size / WORK, (i + 1) * size / WORK), pixels cut by a boundary counted by the part
    inside. Exact areas keep the resize symmetric, so flipped or rotated images give
    flipped or rotated working images (see ``gridhist_dihedral``)."""
    edges = np.arange(WORK + 1, dtype=np.float64) * (size / WORK)
    k = np.arange(size, dtype=np.float64)
    lo = np.maximum(k[None, :], edges[:-1, None])
    hi = np.minimum(k[None, :] + 1.0, edges[1:, None])
    m = np.clip(hi - lo, 0.0, None) * (WORK / size)
    result: FloatArray = m.astype(np.float32)
    result.flags.writeable = False
    return result


def _tent_weights(n_pixels: int, offset: float) -> FloatArray:
    """(GRID, n_pixels) tent weights; pixel k sits at `k + offset` on a [0, WORK] axis."""
    step = WORK / (GRID + 1)
    centres = step * np.arange(1, GRID + 1, dtype=np.float64)
    pos = np.arange(n_pixels, dtype=np.float64) + offset
    w = 1.0 - np.abs(pos[None, :] - centres[:, None]) / step
    return np.clip(w, 0.0, None).astype(np.float32)


# Gradients live between pixels: dx has WORK-1 columns at positions x + 1 (pixel centres
# at x + 0.5), so the grid stays symmetric under flips and rotations.
_W_PIX = _tent_weights(WORK, 0.5)
_W_GRAD = _tent_weights(WORK - 1, 1.0)


def _smooth(a: FloatArray) -> FloatArray:
    """``SMOOTH_PASSES`` x [1, 2, 1] / 4 blur along both axes, edges replicated."""
    for _ in range(SMOOTH_PASSES):
        p = np.pad(a, 1, mode="edge")
        v = (p[:-2, :] + 2.0 * p[1:-1, :] + p[2:, :]) * 0.25
        a = ((v[:, :-2] + 2.0 * v[:, 1:-1] + v[:, 2:]) * 0.25).astype(np.float32, copy=False)
    return a


def _features(luma: npt.NDArray[np.generic]) -> FloatArray | None:
    a = np.asarray(luma, dtype=np.float32)
    if a.ndim != 2 or min(a.shape) < MIN_SIDE or not np.all(np.isfinite(a)):
        return None
    small: FloatArray = (_area_matrix(a.shape[0]) @ a @ _area_matrix(a.shape[1]).T).astype(
        np.float32, copy=False)
    a = _smooth(small)
    dx = a[:, 1:] - a[:, :-1]  # (WORK, WORK-1)
    dy = a[1:, :] - a[:-1, :]  # (WORK-1, WORK)
    mean_grad = (float(np.abs(dx).mean()) + float(np.abs(dy).mean())) * 0.5
    if mean_grad < MIN_MEAN_GRADIENT:
        return None
    px, nx = np.maximum(dx, 0.0), np.maximum(-dx, 0.0)
    py, ny = np.maximum(dy, 0.0), np.maximum(-dy, 0.0)
    feats = np.empty((CHANNELS, GRID, GRID), dtype=np.float32)
    feats[0] = _W_PIX @ px @ _W_GRAD.T
    feats[1] = _W_PIX @ nx @ _W_GRAD.T
    feats[2] = _W_GRAD @ py @ _W_PIX.T
    feats[3] = _W_GRAD @ ny @ _W_PIX.T
    energy = feats.sum(axis=0)  # (GRID, GRID)
    mean_energy = float(energy.mean())
    if mean_energy <= 0.0:
        return None
    if int(np.count_nonzero(energy > 0.25 * mean_energy)) < MIN_ACTIVE_CELLS:
        return None
    length = np.sqrt((feats * feats).sum(axis=0))
    feats = feats / (length + CELL_FLOOR * float(length.mean()))[None, :, :]
    result: FloatArray = np.sqrt(feats).astype(np.float32, copy=False)
    return result


def _to_hex(feats: FloatArray) -> str:
    q: npt.NDArray[np.uint8] = np.clip(np.rint(feats * SCALE), 0, 255).astype(np.uint8)
    return bytes(q.tobytes()).hex()


def _from_hex(h: str) -> npt.NDArray[np.uint8]:
    raw = bytes.fromhex(h)
    if len(raw) != HASH_BYTES:
        raise ValueError(f"a gridhist hash has {HASH_BYTES * 2} hex digits, got {len(h)}")
    return np.frombuffer(raw, dtype=np.uint8)


def gridhist_from_luma(luma: npt.NDArray[np.generic]) -> str | None:
    """The gridhist hash (lowercase hex, ``2 * HASH_BYTES`` digits) of a luminance image.

    `luma` is a 2-D array of grey levels 0..255 of any size from ``MIN_SIDE`` up (a
    reduced decode is best: the hash only looks at a ``WORK`` x ``WORK`` average). Returns
    None when the image carries too little information to match on: too small, flat or
    near-flat, or nearly all of its detail in one or two spots.
    """
    feats = _features(luma)
    return None if feats is None else _to_hex(feats)


def gridhist_distance(a: str, b: str) -> float:
    """Euclidean distance between two gridhist hashes (byte vectors); 0 means identical."""
    va = _from_hex(a).astype(np.float32)
    vb = _from_hex(b).astype(np.float32)
    return float(np.sqrt(np.sum((va - vb) ** 2)))


def _dihedral_layouts() -> list[tuple[npt.NDArray[np.intp], tuple[int, int, int, int]]]:
    """For each of the 8 rotations/flips, (cell index map, channel map) such that the
    transformed image's vector is ``v[channel_map][:, cell_map]``.

    Channels: 0 +dx, 1 -dx, 2 +dy, 3 -dy. Order: original, rotated 90, 180 and 270
    degrees counter-clockwise (``np.rot90``), flipped left-right, flipped up-down,
    transposed, anti-transposed. The grid is symmetric, so the permuted vector equals the
    hash of the transformed pixels up to rounding.
    """
    idx = np.arange(GRID * GRID).reshape(GRID, GRID)
    # New image pixel (r, c) comes from old pixel given by each transform; a gradient
    # direction maps accordingly. np.rot90 is counter-clockwise.
    out: list[tuple[npt.NDArray[np.intp], tuple[int, int, int, int]]] = [
        (idx, (0, 1, 2, 3)),
        # rot90 ccw: new[i, j] = old[j, n-1-i], so new dx = old dy and new dy = -old dx.
        (np.rot90(idx, 1), (2, 3, 1, 0)),
        (np.rot90(idx, 2), (1, 0, 3, 2)),
        (np.rot90(idx, 3), (3, 2, 0, 1)),
        (np.fliplr(idx), (1, 0, 2, 3)),
        (np.flipud(idx), (0, 1, 3, 2)),
        (idx.T, (2, 3, 0, 1)),
        (np.rot90(idx, 2).T, (3, 2, 1, 0)),
    ]
    return [(m.reshape(-1).copy(), ch) for m, ch in out]


_DIHEDRAL = _dihedral_layouts()


def gridhist_dihedral(h: str) -> tuple[str, ...]:
    """The hashes of the 8 rotations/flips of the image `h` was computed from, `h` first,
    derived by permuting the vector (order as in ``_dihedral_layouts``)."""
    v = _from_hex(h).reshape(CHANNELS, GRID * GRID)
    return tuple(
        np.ascontiguousarray(v[list(ch)][:, cells]).tobytes().hex() for cells, ch in _DIHEDRAL
    )
