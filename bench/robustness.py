#!/usr/bin/env python3
"""Robustness bench: does an edited copy of a photo still match its original?

Images: the natural photos scikit-image ships (``skimage.data``; ``cat`` is ``chelsea``
again and the right half of ``stereo_motorcycle`` is the left one seen from 6 cm away,
so both are left out), matplotlib's sample photo of Grace Hopper, plus, when present,
the benign photos of the shared PDQ test
vectors (labelme subset with PDQ quality >= 50, pen-and-coaster, bridge, exif-rotn-1).
Every original is capped at 1024 px on its long side and stored as JPEG quality 95.

Each original gets every edit in ``EDITS``. Methods:

- plain PDQ: the reference, Meta's C++ PDQ (``pdqhash``) on
  ``np.asarray(Image.open(f).convert("RGB"))`` -- full decode, no EXIF orientation, no
  dihedral hashes, no border trimming.
- our PDQ: ``mailfilter.images.decode`` + ``mailfilter.hashing.pdq.pdq_from_luma``, all
  8 dihedral hashes of the query, plus a second fingerprint of the frame trimmed by
  ``mailfilter.borders.content_box``.
- gridhist: ``mailfilter.hashing.gridhist`` on the same decode, untrimmed and trimmed,
  with ``gridhist_dihedral`` of each query hash (what ``mailfilter.fingerprint`` produces
  and the match stage compares).

The list side is always the original's (untrimmed) hash. As in the product, a PDQ hash of
quality under ``[match] pdq_min_quality`` (50) is not used, for the reference too, and
images under ``[images] min_dimension`` pixels are not hashed perceptually.

Thresholds: every query is compared with every original, for every edit. A method's
threshold is its default (PDQ: ``[match] pdq_max_distance`` = 31; gridhist:
``DEFAULT_MAX_DISTANCE``) unless some pair of different images comes that close; then it
is lowered to just under the nearest such pair, so that there are zero false matches,
and the output says so.

Output: a Markdown table (edit x method match rate) on stdout, a figure in
``bench/out/robustness.png`` (distance distributions of same-image and different-image
pairs per method, and the rates), or with ``--json`` one JSON object instead of the table.

    python bench/robustness.py [--json] [--jobs N] [--out DIR] [--shared DIR] [--no-plot]
    python bench/robustness.py --calibrate     # how gridhist's DEFAULT_MAX_DISTANCE was chosen

Needs the ``bench`` extra (pdqhash, scikit-image, matplotlib).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.gridhist import (
    DEFAULT_MAX_DISTANCE,
    gridhist_dihedral,
    gridhist_from_luma,
)
from mailfilter.images import decode
from mailfilter.settings import ImageSettings, MatchSettings

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_SHARED = BENCH_DIR.parent.parent / "shared" / "vectors" / "pdq" / "images"

SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page",
    "retina", "rocket", "stereo_motorcycle", "text",
)
SHARED_PHOTOS = (
    "reg-test-input/labelme-subset/q0122.jpg",
    "reg-test-input/labelme-subset/q0291.jpg",
    "reg-test-input/labelme-subset/q0746.jpg",
    "reg-test-input/labelme-subset/q1050.jpg",
    "reg-test-input/labelme-subset/q2821.jpg",
    "reg-test-input/pen-and-coaster.png",
    "reg-test-input/dih/bridge-1-original.jpg",
    "reg-test-input/exif-rotn/exif-rotn-1.jpg",
)
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)  # matplotlib's sample data (public domain)
MAX_SIDE = 1024

IMAGE_SETTINGS = ImageSettings()
FINGERPRINT_PARAMS = FingerprintParams(images=IMAGE_SETTINGS,
                                       pdq_min_quality=MatchSettings().pdq_min_quality)
MATCH_SETTINGS = MatchSettings()
PDQ_MIN_QUALITY = MATCH_SETTINGS.pdq_min_quality
PDQ_DEFAULT_THRESHOLD = MATCH_SETTINGS.pdq_max_distance

METHODS = ("plain PDQ", "our PDQ", "gridhist")
PDQ_METHODS = ("plain PDQ", "our PDQ")
METHOD_DEFAULTS: dict[str, float] = {
    "plain PDQ": PDQ_DEFAULT_THRESHOLD,
    "our PDQ": PDQ_DEFAULT_THRESHOLD,
    "gridhist": MATCH_SETTINGS.gridhist_max_distance,
}

# --- edits ------------------------------------------------------------------------------


def _save(im: Image.Image, fmt: str, **opts: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **opts)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    return _save(im, "PNG", compress_level=1)


def _jpeg(im: Image.Image, quality: int, **opts: Any) -> bytes:
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    return _save(im, "JPEG", quality=quality, **opts)


def _crop(im: Image.Image, frac: float, corner: int | None) -> Image.Image:
    """Keep (1 - frac) of each side: centred, or against one of the 4 corners."""
    w, h = im.size
    cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
    if corner is None:
        left, top = (w - cw) // 2, (h - ch) // 2
    else:
        left = 0 if corner in (0, 2) else w - cw
        top = 0 if corner in (0, 1) else h - ch
    return im.crop((left, top, left + cw, top + ch))


def _border(im: Image.Image, frac: float, colour: int) -> Image.Image:
    """Pad every side by `frac` of that side's length."""
    w, h = im.size
    px, py = round(w * frac), round(h * frac)
    fill: int | tuple[int, int, int] = colour if im.mode == "L" else (colour,) * 3
    canvas = Image.new(im.mode, (w + 2 * px, h + 2 * py), fill)
    canvas.paste(im, (px, py))
    return canvas


def _blur(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius=max(1.0, max(im.size) / 256)))


def _noise(im: Image.Image, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.asarray(im, dtype=np.float32)
    a = a + rng.normal(0.0, 10.0, a.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), im.mode)


def _text(im: Image.Image) -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = max(10, out.height // 12)
    font = ImageFont.load_default(size=size)
    fill: int | tuple[int, int, int] = 255 if out.mode == "L" else (255, 255, 255)
    stroke: int | tuple[int, int, int] = 0 if out.mode == "L" else (0, 0, 0)
    draw.text((size // 2, out.height - size * 3 // 2), "Greetings from the bench 2024",
              font=font, fill=fill, stroke_width=max(1, size // 12), stroke_fill=stroke)
    return out


# EXIF orientation -> the transpose that turns the upright picture into the stored pixels
# (the viewer applies the inverse): 6 = "rotate 90 clockwise to view".
_EXIF_STORE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _exif_rotated(im: Image.Image, index: int) -> bytes:
    orientation = (6, 8, 3)[index % 3]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(im.transpose(_EXIF_STORE[orientation]), 95, exif=exif)


Edit = Callable[[Image.Image, int], bytes]

EDITS: dict[str, Edit] = {
    "JPEG q90": lambda im, i: _jpeg(im, 90),
    "JPEG q50": lambda im, i: _jpeg(im, 50),
    "resize 50%": lambda im, i: _png(im.resize((im.width // 2, im.height // 2),
                                               Image.Resampling.LANCZOS)),
    "thumbnail 160 px": lambda im, i: _jpeg(ImageOps.contain(im, (160, 160)), 85),
    "PNG": lambda im, i: _png(im),
    "WebP q80": lambda im, i: _save(im, "WEBP", quality=80),
    "GIF 256 colours": lambda im, i: _save(im if im.mode == "L" else im.quantize(256), "GIF"),
    "grayscale": lambda im, i: _png(im.convert("L")),
    "brightness +30%": lambda im, i: _png(ImageEnhance.Brightness(im).enhance(1.3)),
    "contrast +30%": lambda im, i: _png(ImageEnhance.Contrast(im).enhance(1.3)),
    "blur": lambda im, i: _png(_blur(im)),
    "noise": lambda im, i: _png(_noise(im, i)),
    "crop 5%": lambda im, i: _png(_crop(im, 0.05, None)),
    "crop 10%": lambda im, i: _png(_crop(im, 0.10, None)),
    "crop 10% corner": lambda im, i: _png(_crop(im, 0.10, i % 4)),
    "border 10% black": lambda im, i: _jpeg(_border(im, 0.10, 0), 90),
    "border 10% white": lambda im, i: _jpeg(_border(im, 0.10, 255), 90),
    "text overlay": lambda im, i: _png(_text(im)),
    "flip horizontal": lambda im, i: _png(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "flip vertical": lambda im, i: _png(im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
    "rotate 90": lambda im, i: _png(im.transpose(Image.Transpose.ROTATE_90)),
    "rotate 180": lambda im, i: _png(im.transpose(Image.Transpose.ROTATE_180)),
    "rotate 270": lambda im, i: _png(im.transpose(Image.Transpose.ROTATE_270)),
    "EXIF-rotated": _exif_rotated,
}

EDIT_NOTES = {
    "thumbnail 160 px": "long side 160 px, JPEG q85",
    "blur": "Gaussian, radius = long side / 256",
    "noise": "Gaussian, sigma 10 grey levels, PNG",
    "crop 5%": "centred, keeps 95% of each side",
    "crop 10%": "centred, keeps 90% of each side",
    "crop 10% corner": "keeps 90% of each side, against a corner, cycled",
    "border 10% black": "10% of each side added on every side, JPEG q90",
    "text overlay": "one line, Pillow's default font at 1/12 of the height",
    "EXIF-rotated": "rotated pixels + orientation 6/8/3 (cycled), JPEG q95",
}

TARGETS: dict[str, float] = {
    "flip horizontal": 0.95, "flip vertical": 0.95, "rotate 90": 0.95, "rotate 180": 0.95,
    "rotate 270": 0.95, "EXIF-rotated": 0.95, "border 10% black": 0.9,
    "border 10% white": 0.9,
}

# --- sources ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "skimage" or "file"
    ref: str


def list_sources(shared: Path) -> list[Source]:
    sources = [Source(n, "skimage", n) for n in SKIMAGE_PHOTOS]
    import matplotlib

    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for fname in MATPLOTLIB_PHOTOS:
        if (sample_data / fname).is_file():
            sources.append(Source(Path(fname).stem, "file", str(sample_data / fname)))
    for rel in SHARED_PHOTOS:
        path = shared / rel
        if path.is_file():
            sources.append(Source(path.stem, "file", str(path)))
    return sources


def load_original(src: Source) -> Image.Image:
    """The original picture, upright, RGB or L, long side at most MAX_SIDE."""
    if src.kind == "skimage":
        from skimage import data as skdata

        arr = getattr(skdata, src.ref)()
        if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
            arr = arr[0]
        im = Image.fromarray(np.asarray(arr))
    else:
        im = ImageOps.exif_transpose(Image.open(src.ref))
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    if max(im.size) > MAX_SIDE:
        im = ImageOps.contain(im, (MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return im


# --- fingerprints -----------------------------------------------------------------------


@dataclass
class Fingerprints:
    """Query-side hashes of one file per method (as arrays), and the list-side hash."""

    plain: list[npt.NDArray[np.uint8]] = field(default_factory=list)  # 32-byte rows
    ours: list[str] = field(default_factory=list)
    grid: list[str] = field(default_factory=list)
    plain_list: npt.NDArray[np.uint8] | None = None
    ours_list: str | None = None
    grid_list: str | None = None
    trimmed: bool = False


def fingerprint(data: bytes) -> Fingerprints:
    fp = Fingerprints()
    # Reference: full decode, no EXIF, no dihedral, no trimming.
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"))
    bits, quality = pdqhash.compute(rgb)
    if quality >= PDQ_MIN_QUALITY:
        packed = np.packbits(np.asarray(bits, dtype=np.uint8))
        fp.plain.append(packed)
        fp.plain_list = packed
    # Ours: exactly what the product computes (decode with EXIF, reduced; PDQ and gridhist
    # with their 8 dihedral variants; a second fingerprint with borders trimmed).
    ours = fingerprint_image(data, FINGERPRINT_PARAMS)
    for frame in ours.frames:
        if frame.frame != 0:
            continue
        if frame.pdq is not None:
            fp.ours.extend(frame.pdq_dihedral)
            if not frame.trimmed:
                fp.ours_list = frame.pdq
        if frame.gridhist is not None:
            fp.grid.extend(frame.gridhist_dihedral)
            if not frame.trimmed:
                fp.grid_list = frame.gridhist
        fp.trimmed = fp.trimmed or frame.trimmed
    return fp


@dataclass
class SourceResult:
    name: str
    size: tuple[int, int]
    original: Fingerprints
    edited: dict[str, Fingerprints]
    seconds: float


def process_source(src: Source, index: int) -> SourceResult:
    t0 = time.perf_counter()
    im = load_original(src)
    original = fingerprint(_jpeg(im, 95))
    # Edits start from the original as stored (decoded JPEG q95), as a re-sender would.
    with Image.open(io.BytesIO(_jpeg(im, 95))) as stored:
        stored.load()
        base = stored.copy()
    edited = {name: fingerprint(edit(base, index)) for name, edit in EDITS.items()}
    return SourceResult(src.name, im.size, original, edited, time.perf_counter() - t0)


# --- distances --------------------------------------------------------------------------

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def _hex_bytes(hashes: list[str]) -> npt.NDArray[np.uint8]:
    return np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8).reshape(len(hashes), -1)


def _hamming_matrix(q: npt.NDArray[np.uint8],
                    lst: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    x = np.bitwise_xor(q[:, None, :], lst[None, :, :])
    out: npt.NDArray[np.float64] = _POPCOUNT[x].sum(axis=2).astype(np.float64)
    return out


def _euclid_matrix(q: npt.NDArray[np.uint8], lst: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    a = q.astype(np.float64)
    b = lst.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    out: npt.NDArray[np.float64] = np.sqrt(np.maximum(d2, 0.0))
    return out


def distance_matrices(results: list[SourceResult]) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """method -> edit -> N x N matrix: [i, j] = smallest distance between any query hash of
    edited image i and the list hash of original j (inf when either side has no hash)."""
    n = len(results)
    out: dict[str, dict[str, npt.NDArray[np.float64]]] = {m: {} for m in METHODS}
    list_sides: dict[str, list[Any]] = {
        "plain PDQ": [r.original.plain_list for r in results],
        "our PDQ": [r.original.ours_list for r in results],
        "gridhist": [r.original.grid_list for r in results],
    }
    for method in METHODS:
        entries = list_sides[method]
        have = [j for j, e in enumerate(entries) if e is not None]
        if method == "plain PDQ":
            lst = np.stack([entries[j] for j in have]) if have else np.zeros((0, 32), np.uint8)
        else:
            lst = _hex_bytes([entries[j] for j in have]) if have else np.zeros((0, 1), np.uint8)
        for edit in EDITS:
            mat = np.full((n, n), np.inf)
            for i, r in enumerate(results):
                fp = r.edited[edit]
                queries: Any
                if method == "plain PDQ":
                    if not fp.plain or not have:
                        continue
                    d = _hamming_matrix(np.stack(fp.plain), lst)
                else:
                    queries = {"our PDQ": fp.ours, "gridhist": fp.grid}[method]
                    if not queries or not have:
                        continue
                    qb = _hex_bytes(queries)
                    metric = _hamming_matrix if method in PDQ_METHODS else _euclid_matrix
                    d = metric(qb, lst)
                mat[i, have] = d.min(axis=0)
            out[method][edit] = mat
    return out


@dataclass
class MethodSummary:
    default: float
    threshold: float
    nearest_non_match: float
    nearest_pair: tuple[str, str, str]
    lowered: bool
    rates: dict[str, float]
    misses: dict[str, list[str]]
    same_by_edit: dict[str, tuple[float, float]]  # median, max (inf: no hash)
    same: list[float]
    different: list[float]


def summarise(results: list[SourceResult],
              mats: dict[str, dict[str, npt.NDArray[np.float64]]]) -> dict[str, MethodSummary]:
    names = [r.name for r in results]
    n = len(results)
    off = ~np.eye(n, dtype=bool)
    out: dict[str, MethodSummary] = {}
    for method in METHODS:
        nearest, pair = math.inf, ("", "", "")
        same: list[float] = []
        different: list[float] = []
        for edit, mat in mats[method].items():
            masked = np.where(off, mat, np.inf)
            k = int(np.argmin(masked))
            if masked.flat[k] < nearest:
                nearest = float(masked.flat[k])
                pair = (edit, names[k // n], names[k % n])
            diag = np.diag(mat)
            same.extend(float(x) for x in diag[np.isfinite(diag)])
            vals = mat[off]
            different.extend(float(x) for x in vals[np.isfinite(vals)])
        default = METHOD_DEFAULTS[method]
        lowered = nearest <= default
        if not lowered:
            threshold = default
        elif method in PDQ_METHODS:
            threshold = nearest - 1
        else:
            threshold = math.nextafter(nearest, 0.0)
        rates: dict[str, float] = {}
        misses: dict[str, list[str]] = {}
        same_by_edit: dict[str, tuple[float, float]] = {}
        for edit, mat in mats[method].items():
            diag = np.diag(mat)
            ok = diag <= threshold
            rates[edit] = float(ok.mean())
            misses[edit] = [names[i] for i in range(n) if not ok[i]]
            same_by_edit[edit] = (float(np.median(diag)), float(diag.max()))
        out[method] = MethodSummary(default, threshold, nearest, pair, lowered, rates, misses,
                                    same_by_edit, same, different)
    return out


# --- output -----------------------------------------------------------------------------


def _fmt_threshold(method: str, value: float) -> str:
    return f"{value:.0f}" if method in PDQ_METHODS else f"{value:.1f}"


def markdown(results: list[SourceResult], summary: dict[str, MethodSummary],
             seconds: float) -> str:
    lines = [
        f"Robustness of image matching: {len(results)} photos x {len(EDITS)} edits; "
        "match rate = fraction of photos whose edited copy matches its own original.",
        "",
        "| edit | " + " | ".join(METHODS) + " |",
        "|---|" + "---:|" * len(METHODS),
    ]
    for edit in EDITS:
        note = EDIT_NOTES.get(edit)
        label = f"{edit} ({note})" if note else edit
        cells = [f"{summary[m].rates[edit]:.2f}" for m in METHODS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    mean = [np.mean(list(summary[m].rates.values())) for m in METHODS]
    lines.append("| **mean** | " + " | ".join(f"**{v:.2f}**" for v in mean) + " |")
    lines += ["", "| method | default threshold | threshold used | nearest different-image pair |",
              "|---|---:|---:|---|"]
    for m in METHODS:
        s = summary[m]
        used = _fmt_threshold(m, s.threshold) + (" (lowered: default gave false matches)"
                                                   if s.lowered else "")
        edit, a, b = s.nearest_pair
        lines.append(f"| {m} | {_fmt_threshold(m, s.default)} | {used} | "
                     f"{s.nearest_non_match:.1f} ({a} after '{edit}' vs {b}) |")
    lines += ["", "Targets for our PDQ (dihedral + border trimming):", ""]
    for ok, text in check_targets(summary):
        lines.append(f"- [{'x' if ok else ' '}] {text}")
    missing = [r.name for r in results if r.original.plain_list is None
               or r.original.ours_list is None or r.original.grid_list is None]
    if missing:
        lines += ["", "Originals without a list hash for some method (count as misses): "
                  + ", ".join(missing)]
    lines += ["", f"Images: {', '.join(r.name for r in results)}.",
              f"Bench time: {seconds:.1f} s."]
    return "\n".join(lines)


def check_targets(summary: dict[str, MethodSummary]) -> list[tuple[bool, str]]:
    ours, plain = summary["our PDQ"].rates, summary["plain PDQ"].rates
    out = []
    for edit, want in TARGETS.items():
        out.append((ours[edit] >= want, f"{edit}: {ours[edit]:.2f} >= {want:.2f}"))
    below = [e for e in EDITS if ours[e] < plain[e]]
    out.append((not below, "no edit below plain PDQ"
                + (f" (below on: {', '.join(below)})" if below else "")))
    return out


def _finite(x: float) -> float | None:
    return round(x, 1) if math.isfinite(x) else None


def as_json(results: list[SourceResult], summary: dict[str, MethodSummary],
            seconds: float) -> dict[str, Any]:
    return {
        "images": [{"name": r.name, "width": r.size[0], "height": r.size[1]} for r in results],
        "edits": list(EDITS),
        "methods": {
            m: {
                "default_threshold": s.default,
                "threshold": s.threshold,
                "lowered": s.lowered,
                "nearest_non_match": _finite(s.nearest_non_match),
                "nearest_pair": {"edit": s.nearest_pair[0], "query": s.nearest_pair[1],
                                 "original": s.nearest_pair[2]},
                "rates": s.rates,
                "misses": s.misses,
                "same_image_distance": {
                    e: {"median": _finite(med), "max": _finite(mx)}
                    for e, (med, mx) in s.same_by_edit.items()
                },
            }
            for m, s in summary.items()
        },
        "targets": [{"met": ok, "what": text} for ok, text in check_targets(summary)],
        "seconds": round(seconds, 2),
    }


def plot(summary: dict[str, MethodSummary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    panels = [("plain PDQ", axes[0][0]), ("our PDQ", axes[0][1]), ("gridhist", axes[1][0])]
    for method, ax in panels:
        s = summary[method]
        top = 256.0 if method in PDQ_METHODS else max(max(s.different, default=1.0),
                                                      max(s.same, default=1.0),
                                                      1.1 * s.threshold)
        bins = np.linspace(0.0, top, 65)
        ax.hist(s.different, bins=bins, density=True, alpha=0.55, label="different images")
        ax.hist(s.same, bins=bins, density=True, alpha=0.55, label="same image, edited")
        ax.axvline(s.threshold, color="k", linestyle="--",
                   label=f"threshold {_fmt_threshold(method, s.threshold)}")
        ax.set_title(f"{method}: edited copy vs originals (all edits)")
        ax.set_xlabel("Hamming distance (bits)" if method in PDQ_METHODS
                      else "Euclidean distance")
        ax.set_ylabel("density")
        ax.legend()
    ax = axes[1][1]
    edits = list(EDITS)
    grid = np.array([[summary[m].rates[e] for m in METHODS] for e in edits])
    ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(METHODS)), METHODS, fontsize=8)
    ax.set_yticks(range(len(edits)), edits, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_title("match rate at the zero-false-match threshold", pad=22)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- calibration of gridhist's threshold --------------------------------------------------


def calibration_hashes(src: Source) -> list[tuple[str, str]]:
    """(parent name, gridhist) of the original and of its 2x2 and 3x3 tiles (each a picture
    of its own), every one stored as JPEG q90 and decoded by mailfilter."""
    im = load_original(src)
    w, h = im.size
    pictures = [im]
    for g in (2, 3):
        for r in range(g):
            for c in range(g):
                tile = im.crop((c * w // g, r * h // g, (c + 1) * w // g, (r + 1) * h // g))
                if min(tile.size) >= 64:
                    pictures.append(tile)
    out = []
    for pic in pictures:
        grid = gridhist_from_luma(decode(_jpeg(pic, 90), IMAGE_SETTINGS).frames[0])
        if grid is not None:
            out.append((src.name, grid))
    return out


def calibrate(sources: list[Source], jobs: int) -> dict[str, Any]:
    """Distances between gridhists of different photos (and tiles of different photos):
    how close do unrelated pictures come? DEFAULT_MAX_DISTANCE is ~0.65 x the nearest,
    rounded down to a multiple of 10."""
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            parts = list(pool.map(calibration_hashes, sources))
    else:
        parts = [calibration_hashes(s) for s in sources]
    items = [x for part in parts for x in part]
    parents = np.array([p for p, _ in items])
    vecs = _hex_bytes([g for _, g in items])
    different = parents[:, None] != parents[None, :]
    plain = _euclid_matrix(vecs, vecs)
    iu = np.triu_indices(len(items), 1)
    pairs = plain[iu][different[iu]]
    dih = np.full_like(plain, np.inf)
    for k in range(8):
        variant = _hex_bytes([gridhist_dihedral(g)[k] for _, g in items])
        dih = np.minimum(dih, _euclid_matrix(vecs, variant))
    nearest = float(pairs.min())
    return {
        "pictures": len(items),
        "different_photo_pairs": int(pairs.size),
        "nearest": round(nearest, 1),
        "quantile_0.001": round(float(np.quantile(pairs, 0.001)), 1),
        "median": round(float(np.median(pairs)), 1),
        "nearest_with_dihedral": round(float(dih[different].min()), 1),
        "suggested_max_distance": math.floor(0.8 * nearest / 10) * 10,
        "default_max_distance": DEFAULT_MAX_DISTANCE,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (default 2)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out",
                        help="directory for robustness.png")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help="shared PDQ test images (skipped when absent)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.add_argument("--calibrate", action="store_true",
                        help="only measure how close gridhists of different photos and their "
                        "tiles come (how DEFAULT_MAX_DISTANCE was chosen)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    sources = list_sources(args.shared)
    if args.calibrate:
        print(json.dumps(calibrate(sources, args.jobs), indent=2))
        return 0
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(process_source, sources, range(len(sources))))
    else:
        results = [process_source(s, i) for i, s in enumerate(sources)]
    mats = distance_matrices(results)
    summary = summarise(results, mats)
    if not args.no_plot:
        plot(summary, args.out / "robustness.png")
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps(as_json(results, summary, seconds)))
    else:
        print(markdown(results, summary, seconds))
    print(f"bench: {seconds:.1f} s, figure: "
          f"{'skipped' if args.no_plot else args.out / 'robustness.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
