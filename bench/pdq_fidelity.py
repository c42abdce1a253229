#!/usr/bin/env python3
"""PDQ fidelity: how far mailfilter's PDQ is from the reference on real photos, stage by stage.

Reference: Meta's C++ PDQ (``pdqhash.compute``) on Pillow's full RGB decode after EXIF
transpose. Ours: ``mailfilter.images.decode`` (reduced decode) -> ``pdq_from_luma``. In
between, one stage at a time is done the reference's way, to see where the bits go:

- ``ours``: the product path: the reduced frame hashed as standing for the full-size image
  (``pdq_from_luma(frame, full_size)``: the reference's filter windows folded onto it).
- ``reduced as own image``: the reduced frame hashed as an image of its own (before the fix).
- ``full decode``: full-size RGB decode (no JPEG draft, no box reduction), our luma
  (Pillow RGB->F) and our PDQ: what the reduced decode costs.
- ``draft only`` / ``reduce only`` (as own images): the JPEG DCT-domain draft scale alone (no box
  reduction after it) / the box reduction alone on the full decode.
- ``ref luma``: the full decode with the luma computed in float64 from the uint8 RGB, as
  the C++ does, and our PDQ: our PDQ code vs the reference's on the same pixels.
- ``trimmed``: the fingerprint stage (``fingerprint_image``): the best of the untrimmed and
  (when borders are found) trimmed hash of the first frame, what the match stage compares.

Distances are reported (median, p95, max, count over 10 bits) over the photos whose
reference quality is >= 80, plus all photos. Photos: ``bench/photos/images``
(``bench/photos/gather_photos.py``).

    python bench/pdq_fidelity.py [--photos DIR] [--jobs 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pdqhash
from PIL import Image, ImageOps

from mailfilter import images as images_mod
from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.pdq import pdq_from_luma
from mailfilter.settings import ImageSettings, MatchSettings

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PHOTOS = BENCH_DIR / "photos" / "images"
LIMITS = ImageSettings()
PARAMS = FingerprintParams(images=LIMITS, pdq_min_quality=MatchSettings().pdq_min_quality)


def _bits_hex(bits: Any) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint8).ravel()


def _hex_bits(hexhash: str) -> np.ndarray:
    # bit k of the hex value is bit k of the hash
    value = int(hexhash, 16)
    return np.array([(value >> k) & 1 for k in range(256)], dtype=np.uint8)


def _ref_bits(bits: Any) -> np.ndarray:
    return _bits_hex(bits)[::-1]  # pdqhash lists bit 255 first


def _dist(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a != b))


def _oriented(im: Image.Image) -> Image.Image:
    out = ImageOps.exif_transpose(im)
    return out if out is not None else im


def _luma(rgb: Image.Image) -> np.ndarray:
    return np.asarray(rgb.convert("F"), dtype=np.float32)


def measure(path: str) -> dict[str, Any]:
    data = Path(path).read_bytes()
    with Image.open(path) as im:
        full = _oriented(im).convert("RGB")
    arr = np.asarray(full)
    ref_bits, ref_q = pdqhash.compute(arr)
    ref = _ref_bits(ref_bits)
    out: dict[str, Any] = {"path": Path(path).name, "size": list(full.size), "quality": int(ref_q)}

    def ours_of(luma: np.ndarray) -> int:
        return _dist(_hex_bits(pdq_from_luma(luma).hash), ref)

    decoded = images_mod.decode(data, LIMITS)
    frame = decoded.frames[0]
    out["ours"] = _dist(_hex_bits(pdq_from_luma(frame, (decoded.width, decoded.height)).hash),
                        ref)
    out["reduced as own image"] = ours_of(frame)
    out["ours_shape"] = list(decoded.frames[0].shape)
    out["full decode"] = ours_of(_luma(full))
    target = images_mod.WORKING_SHORT_SIDE
    with Image.open(path) as im:
        im.draft(im.mode, (target, target))
        drafted = _oriented(im).convert("RGB")
    out["draft only"] = ours_of(_luma(drafted))
    out["reduce only"] = ours_of(_luma(images_mod._reduce(full, target)))
    f64 = arr.astype(np.float64)
    ref_y = 0.299 * f64[..., 0] + 0.587 * f64[..., 1] + 0.114 * f64[..., 2]
    out["ref luma"] = ours_of(ref_y)
    fp = fingerprint_image(data, PARAMS)
    cands = [_hex_bits(f.pdq) for f in fp.frames if f.frame == 0 and f.pdq is not None]
    out["trimmed"] = min((_dist(c, ref) for c in cands), default=-1)
    return out


STAGES = ("ours", "reduced as own image", "full decode", "draft only", "reduce only",
          "ref luma", "trimmed")


def summarise(rows: list[dict[str, Any]], min_quality: int) -> dict[str, dict[str, float]]:
    sel = [r for r in rows if r["quality"] >= min_quality]
    out = {}
    for s in STAGES:
        d = np.array([r[s] for r in sel if r[s] >= 0])
        if d.size == 0:
            continue
        out[s] = {"n": int(d.size), "median": float(np.median(d)),
                  "p95": float(np.percentile(d, 95)), "max": int(d.max()),
                  "over10": int((d > 10).sum())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    files = sorted(str(p) for p in args.photos.glob("*.jpg"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"no photos in {args.photos}: run bench/photos/gather_photos.py", file=sys.stderr)
        return 2
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(measure, files, chunksize=4))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    for q in (80, 0):
        summ = summarise(rows, q)
        print(f"\nquality >= {q}: {next(iter(summ.values()))['n']} photos")
        print("| stage | median | p95 | max | > 10 bits |\n|---|---|---|---|---|")
        for s, v in summ.items():
            print(f"| {s} | {v['median']:g} | {v['p95']:g} | {v['max']} | {v['over10']} |")
    worst = sorted((r for r in rows if r["quality"] >= 80), key=lambda r: -r["ours"])[:8]
    print("\nworst (ours):", [(r["path"], r["size"], r["ours_shape"], r["ours"]) for r in worst])
    return 0


if __name__ == "__main__":
    sys.exit(main())
