"""PDQ perceptual hashing in numpy, following Meta's published algorithm and its C++ reference
(facebook/ThreatExchange, pdq/cpp/hashing/pdqhashing.cpp, pdq/cpp/downscaling/downscaling.cpp).

Pipeline, for a luminance image of H x W (Y = 0.299 R + 0.587 G + 0.114 B, values 0..255):

1. Jarosz tent filter: two passes of (box along rows, box along columns), with the reference's
   window sizes ``ceil(W / 128)`` along rows and ``ceil(H / 128)`` along columns and its edge
   handling (the window shrinks at the borders; each output is the mean of what it covers).
2. Decimation to 64 x 64 by picking the sample at each output cell's centre.
3. Quality: the sum of quantised absolute neighbour differences of the 64 x 64 image / 90,
   capped at 100 (under ~50 means too little information to match reliably).
4. 16 x 16 DCT: ``D @ A @ D.T`` with the reference's 16 x 64 DCT-II matrix (frequencies 1..16,
   the DC term left out).
5. Each bit says whether a coefficient is above the median of the 256 coefficients.

The row and column passes act on different axes and are linear, so they commute, and "two box
passes then decimation" along one axis is a fixed 64 x n matrix (a tent per output sample). Steps
1-2 are therefore ``Kh @ luma @ Kw.T`` with cached per-size kernels built by cumulative sums: the
reference's result up to float rounding (bit-identical hashes on the reference vectors), reading
the image about twice instead of four full-image filter passes.

Bit order and hex: bit ``k = 16 * i + j`` is DCT coefficient (row frequency i, column frequency j);
the hex string prints the 16-bit words from word 15 down to word 0, which is the order used by
the C++ tool, the ``pdqhash`` Python binding and ThreatExchange hash lists.

Dihedral hashes are the hashes of the 8 rotated/flipped images, computed without rotating
pixels. Transposing the image transposes the 64 x 64 result exactly (the per-axis filters are
the same), but mirroring does not: the reference's box window is centred half a pixel off when
it is even, so a mirrored image is sampled about a pixel away from the mirror of the samples.
At a few hundred pixels per side that moves a photo's hash by 6-22 bits and a texture's by up
to ~100, which would waste most of the 31-bit match budget; deriving mirrors by DCT sign flips
(as the reference's ``pdqDihedralHash256esFromFloatLuma`` does) inherits that error. So the
filter is run with its kernels mirrored as well -- the row kernel forwards and mirrored over the
full image (the expensive pass, twice), the cheap column pass both ways -- giving the exact
64 x 64 images of the original, flipX, flipY and rot180; the other four are their transposes.
Order of ``PdqResult.dihedral`` (the reference's order; checked by the tests against numpy
transforms):
Hash ``dihedral[n]`` of an image equals the plain hash of the image transformed as listed (up
to float rounding), so a list entry made from a rotated/flipped copy is matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIHEDRAL_NAMES",
    "HASH_HEX_LENGTH",
    "MIN_HASHABLE_DIM",
    "PdqResult",
    "hamming",
    "pdq_from_luma",
]

#: Names of the entries of ``PdqResult.dihedral``, in order.
DIHEDRAL_NAMES: tuple[str, ...] = (
    "original",
    "rot90",
    "rot180",
    "rot270",
    "flipX",
    "flipY",
    "flipPlus1",
    "flipMinus1",
)

HASH_HEX_LENGTH = 64
#: Images smaller than this on either side get the all-zero hash and quality 0 (as the reference).
MIN_HASHABLE_DIM = 5

_OUT = 64  # decimated size
_DCT_SIZE = 16

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class PdqResult:
    hash: str  # 64 lowercase hex chars, reference bit order
    quality: int  # 0..100
    dihedral: tuple[str, ...]  # 8 hex hashes, original first, order as DIHEDRAL_NAMES


def _dct_matrix() -> FloatArray:
    """The reference's 16 x 64 DCT matrix: sqrt(2/64) * cos(pi/128 * (i+1) * (2j+1))."""
    i = np.arange(1, _DCT_SIZE + 1, dtype=np.float64)[:, None]
    j = np.arange(_OUT, dtype=np.float64)[None, :]
    m: FloatArray = np.sqrt(2.0 / _OUT) * np.cos((np.pi / 2.0 / _OUT) * i * (2.0 * j + 1.0))
    return m


_DCT: FloatArray = _dct_matrix()
_DCT_T: FloatArray = np.ascontiguousarray(_DCT.T)

def _window_size(old: int, new: int = _OUT) -> int:
    """computeJaroszFilterWindowSize: ceil(old / (2 * new))."""
    return (old + 2 * new - 1) // (2 * new)


def _box_bounds(n: int, window: int) -> tuple[IntArray, IntArray, FloatArray]:
    """The reference's 1-D box filter (box1DFloat) over n samples: for every output k, the
    half-open input range [lo, hi) it averages, and 1 / (hi - lo). The window covers
    ``window - half`` samples before k and ``half - 1`` after, with ``half = (window + 2) // 2``,
    and shrinks at both ends."""
    half = (window + 2) // 2
    k = np.arange(n, dtype=np.intp)
    lo = np.maximum(k - (window - half), 0)
    hi = np.minimum(k + half, n)
    inv: FloatArray = 1.0 / (hi - lo).astype(np.float64)
    return lo, hi, inv


def _decimation_indices(n: int) -> IntArray:
    """The reference's decimateFloat: sample (int)((i + 0.5) * n / 64) for i in 0..63."""
    idx: IntArray = (np.arange(_OUT, dtype=np.intp) * 2 + 1) * n // (2 * _OUT)
    return idx


@dataclass(frozen=True, slots=True)
class _TentKernel:
    """The 64 x n matrix K with K @ v == decimate(box(box(v))) for a length-n vector v: the two
    Jarosz box passes along one axis followed by the decimation, as one linear map. Row s is
    non-zero only on the contiguous span ``starts[s]:stops[s]`` (a tent about 2 windows wide)."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]
    rows: tuple[npt.NDArray[np.float32], ...]  # K[s, starts[s]:stops[s]], contiguous views


@lru_cache(maxsize=128)
def _tent_kernel(n: int) -> _TentKernel:
    """Build the kernel for n samples: per output row, a difference array over its span and a
    cumulative sum (vectorised over the 64 rows)."""
    lo, hi, inv = _box_bounds(n, _window_size(n))
    sel = _decimation_indices(n)
    # First pass at decimated sample s: inputs m in [lo[sel[s]], hi[sel[s]]), weight inv[sel[s]];
    # each such m is itself the box [lo[m], hi[m]) of the first pass with weight inv[m].
    lo1, hi1, w1 = lo[sel], hi[sel], inv[sel]
    starts = lo[lo1]
    stops = hi[hi1 - 1]
    span = int((stops - starts).max())
    counts = hi1 - lo1
    row = np.repeat(np.arange(_OUT, dtype=np.intp), counts)
    firsts = np.cumsum(counts) - counts
    m = np.arange(int(counts.sum()), dtype=np.intp) - np.repeat(firsts - lo1, counts)
    weight = np.repeat(w1, counts) * inv[m]
    base = row * (span + 1) - np.repeat(starts, counts)
    size = _OUT * (span + 1)
    diff = np.bincount(base + lo[m], weights=weight, minlength=size)
    diff -= np.bincount(base + hi[m], weights=weight, minlength=size)
    local = np.cumsum(diff.reshape(_OUT, span + 1), axis=1)[:, :span].astype(np.float32)
    widths = stops - starts
    local[np.arange(span)[None, :] >= widths[:, None]] = 0.0  # rounding residue past the span
    local.flags.writeable = False
    return _TentKernel(
        starts=tuple(starts.tolist()),
        stops=tuple(stops.tolist()),
        rows=tuple(local[s, : widths[s]] for s in range(_OUT)),
    )


@lru_cache(maxsize=128)
def _mirrored_kernel(n: int) -> _TentKernel:
    """The kernel K' with K' @ v == K @ v[::-1]: what the filter does to a mirrored axis."""
    k = _tent_kernel(n)
    return _TentKernel(
        starts=tuple(n - stop for stop in k.stops),
        stops=tuple(n - start for start in k.starts),
        rows=tuple(np.ascontiguousarray(row[::-1]) for row in k.rows),
    )


@lru_cache(maxsize=64)
def _folded_kernel(n_full: int, n: int, mirrored: bool) -> _TentKernel:
    """The reference's kernel for an axis of `n_full` samples, applied to the same axis
    reduced to `n` samples by an integer factor f (JPEG draft scale and/or box reduction:
    reduced sample j is about the mean of full samples f*j .. f*j+f-1): each reduced sample
    gets the summed weight of the full samples it stands for. The filter then has the
    reference's window and decimation phase instead of ones rounded on the coarser grid
    (see `pdq_from_luma`)."""
    full = _mirrored_kernel(n_full) if mirrored else _tent_kernel(n_full)
    factor = max(1, round(n_full / n))
    starts, stops, rows = [], [], []
    for s in range(_OUT):
        j = np.minimum(np.arange(full.starts[s], full.stops[s]) // factor, n - 1)
        lo = int(j[0])
        row = np.bincount(j - lo, weights=full.rows[s].astype(np.float64)).astype(np.float32)
        row.flags.writeable = False
        starts.append(lo)
        stops.append(lo + row.size)
        rows.append(row)
    return _TentKernel(starts=tuple(starts), stops=tuple(stops), rows=tuple(rows))


def _kernels(n: int, n_full: int) -> tuple[_TentKernel, _TentKernel]:
    """(forward, mirrored) kernels for an axis of n samples standing for n_full."""
    if n_full <= n:
        return _tent_kernel(n), _mirrored_kernel(n)
    return _folded_kernel(n_full, n, False), _folded_kernel(n_full, n, True)


def _apply(kernel: _TentKernel, rows: npt.NDArray[np.float32],
           out: npt.NDArray[np.float32]) -> None:
    """out = kernel @ rows, for a kernel whose rows are contiguous spans (64 x n @ n x m).
    Each output row sums its span's weighted input rows in order, in float32."""
    for s in range(_OUT):  # over the 64 output rows, not over pixels
        np.einsum("l,lw->w", kernel.rows[s], rows[kernel.starts[s] : kernel.stops[s]], out=out[s])


@dataclass(frozen=True, slots=True)
class _PaddedKernels:
    """The forward and mirrored kernels of an axis as 128 output rows of one common width:
    ``weights[l, s]`` is output s's weight at offset l of its span (0 past the span's end)
    and ``samples[l, s]`` the input sample it reads. For the column pass (128 strips wide):
    one operation per offset (~17) instead of one call per output row (2 x 64), whose fixed
    cost was most of the pass."""

    weights: npt.NDArray[np.float32]  # span x 128 x 1
    samples: IntArray  # span x 128


@lru_cache(maxsize=64)
def _padded_kernels(n: int, n_full: int) -> _PaddedKernels:
    kernels = _kernels(n, n_full)
    span = max(stop - start for k in kernels for start, stop in zip(k.starts, k.stops, strict=True))
    weights = np.zeros((span, 2 * _OUT, 1), dtype=np.float32)
    samples = np.empty((span, 2 * _OUT), dtype=np.intp)
    offsets = np.arange(span, dtype=np.intp)
    for j, k in enumerate(kernels):
        for s in range(_OUT):
            weights[: k.rows[s].size, j * _OUT + s, 0] = k.rows[s]
            samples[:, j * _OUT + s] = np.minimum(k.starts[s] + offsets, n - 1)
    weights.flags.writeable = False
    samples.flags.writeable = False
    return _PaddedKernels(weights, samples)


def _apply_padded(kernels: _PaddedKernels,
                  columns: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[forward; mirrored] @ columns`` (128 x n @ n x m): gathered per offset, weighted, and
    summed over the offsets in order -- the order and float32 rounding of `_apply` (a padding
    weight adds 0 * x = 0), so the 64 x 64 images are bit-identical to the per-row form."""
    gathered = columns[kernels.samples]  # span x 128 x m
    gathered *= kernels.weights
    summed: npt.NDArray[np.float32] = np.add.reduce(gathered, axis=0)
    return summed


def _downsample64_mirrors(luma: npt.NDArray[np.float32],
                          full: tuple[int, int] | None = None) -> tuple[FloatArray, ...]:
    """The 64 x 64 filtered images of the original, flipX (rows mirrored), flipY (columns
    mirrored) and rot180, each exactly what `_downsample64` gives for the mirrored image.
    `full`: (height, width) of the image `luma` was reduced from, if it was."""
    h, w = luma.shape
    full_h, full_w = full if full is not None else (h, w)
    if h == _OUT and w == _OUT and full_h <= h and full_w <= w:
        a = luma.astype(np.float64)
        return a, a[::-1, :].copy(), a[:, ::-1].copy(), a[::-1, ::-1].copy()
    # Both row passes into one 128 x w array [original; flipX], transposed so that the column
    # pass gathers contiguous rows. The row passes stay one einsum per output row: they read
    # whole image rows in place, where gathering them (as the column pass does) would copy
    # the image about 13 times (measured 2x slower on a 1 MP frame).
    strips = np.empty((2 * _OUT, w), dtype=np.float32)
    for j, kh in enumerate(_kernels(h, full_h)):
        _apply(kh, luma, strips[j * _OUT : (j + 1) * _OUT])
    both = _apply_padded(_padded_kernels(w, full_w), np.ascontiguousarray(strips.T))
    # both[s, r]: column kernel s (forward 0..63, mirrored 64..127) of strip r.
    original, flip_x = both[:_OUT, :_OUT].T, both[:_OUT, _OUT:].T
    flip_y, rot180 = both[_OUT:, :_OUT].T, both[_OUT:, _OUT:].T
    return tuple(a.astype(np.float64) for a in (original, flip_x, flip_y, rot180))


def _quality(a64: FloatArray) -> int:
    """pdqImageDomainQualityMetric: int-truncated (diff * 100 / 255), absolute, summed over
    vertical and horizontal neighbours, / 90, capped at 100. Computed in float32 as the
    reference does."""
    a = a64.astype(np.float32)
    scale = np.float32(100.0)
    div = np.float32(255.0)
    dv = np.trunc((a[:-1, :] - a[1:, :]) * scale / div)
    dh = np.trunc((a[:, :-1] - a[:, 1:]) * scale / div)
    gradient_sum = int(np.abs(dv).sum(dtype=np.float64)) + int(np.abs(dh).sum(dtype=np.float64))
    return min(gradient_sum // 90, 100)


def _dihedral_dcts(original: FloatArray, flip_x: FloatArray, flip_y: FloatArray,
                   rot180: FloatArray) -> FloatArray:
    """The 16 x 16 DCTs of the 8 transformed images, in the order of DIHEDRAL_NAMES, from the
    64 x 64 filtered images of the four mirrorings (the DCT of a transpose is the transpose)."""
    o, fx, fy, r = (_DCT @ a @ _DCT_T for a in (original, flip_x, flip_y, rot180))
    # rot90 = flipud(a.T) and rot270 = fliplr(a.T): transposes of the flipY and flipX images.
    return np.stack((o, fy.T, r, fx.T, fx, fy, o.T, r.T))


def _hex_hashes(dcts: FloatArray) -> tuple[str, ...]:
    """Threshold each 16x16 at its median (the reference's torben(): the 128th smallest of the
    256 values, bits set where strictly greater) and format in the reference bit order."""
    flat = dcts.reshape(dcts.shape[0], _DCT_SIZE * _DCT_SIZE)
    median = np.partition(flat, 127, axis=1)[:, 127:128]
    bits = flat > median
    # Bit k = 16 i + j lives in word k // 16 at position k % 16; words are printed 15..0, each
    # most significant bit first, so the hex string is the bit vector reversed, packed MSB first.
    packed = np.packbits(bits[:, ::-1], axis=1)
    return tuple(row.tobytes().hex() for row in packed)


_ZERO_HASH = "0" * HASH_HEX_LENGTH
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def pdq_from_luma(luma: npt.NDArray[np.floating] | npt.NDArray[np.integer],
                  full_size: tuple[int, int] | None = None) -> PdqResult:
    """PDQ hash, quality and the 8 dihedral hashes of a luminance image (H x W, values 0..255).

    `full_size`: (width, height) of the image when `luma` is a reduced copy of it (integer
    factors per axis, as the decode stage makes). The hash is then computed as the reference
    computes it on the full image, with each reduced pixel standing for the block it replaced:
    the filter windows and decimation points are the full image's. Hashing the reduced copy
    as an image of its own differs from the reference by up to ~18 bits on 12 MP photos (the
    window ceil(n / 128) and the sample phase rounded on a grid 2-8 times coarser); see
    bench/pdq_fidelity.py for the figures.

    Images under 5 pixels on a side get the all-zero hash with quality 0, as in the reference.
    Raises ValueError for anything but a finite 2-D array.
    """
    arr = np.asarray(luma)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D luminance array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"expected a numeric luminance array, got dtype {arr.dtype}")
    h, w = arr.shape
    if h < MIN_HASHABLE_DIM or w < MIN_HASHABLE_DIM:
        return PdqResult(hash=_ZERO_HASH, quality=0, dihedral=(_ZERO_HASH,) * 8)
    full = (full_size[1], full_size[0]) if full_size is not None else None
    mirrors = _downsample64_mirrors(np.ascontiguousarray(arr, dtype=np.float32), full)
    if not np.isfinite(mirrors[0]).all():
        raise ValueError("luminance array contains NaN or infinite values")
    quality = _quality(mirrors[0])
    hashes = _hex_hashes(_dihedral_dcts(*mirrors))
    return PdqResult(hash=hashes[0], quality=quality, dihedral=hashes)


def hamming(a: str, b: str) -> int:
    """Number of bits that differ between two 64-hex-digit hashes (ValueError if malformed)."""
    if not (_HEX64.fullmatch(a) and _HEX64.fullmatch(b)):
        raise ValueError("expected two 64-hex-digit PDQ hashes")
    return (int(a, 16) ^ int(b, 16)).bit_count()
