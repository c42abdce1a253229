#!/usr/bin/env python3
"""Per edit: mailfilter's match rate against a list of reference PDQ hashes, next to the
reference's own, on the same real photos, with 95% binomial (Wilson) intervals.

List: the reference PDQ (Meta's C++ through ``pdqhash``, on Pillow's full RGB decode after
EXIF transpose) of each original photo, quality >= ``[match] pdq_min_quality``.
Queries: every edit of every original (the edits of issue 17 -- Pillow's Contrast 0.7,
Brightness 1.3, GaussianBlur 2, ``ImageOps.contain`` 320, ``quantize(256)`` saved as GIF,
centred 5% crop, each re-saved as JPEG q90 -- then every edit of ``bench/robustness.py``).

- reference (dihedral): ``pdqhash.compute_dihedral`` of the edited file (full RGB decode,
  EXIF transpose); a match when one of its 8 hashes is within ``[match] pdq_max_distance``
  (31) of the original's list hash.
- mailfilter: ``fingerprint_image`` (reduced decode, all frames, trimmed and untrimmed,
  8 dihedral hashes each), the same rule: what the match stage does.

A query of quality under the minimum counts as not matched for both. Originals: the photos
of ``bench/photos/images`` (``bench/photos/gather_photos.py``), every n-th for ``--limit``,
capped at ``--max-side`` px on the long side (Lanczos) and stored as JPEG q95 at that size,
so the 2-8x reduced decode paths are taken.

Output: a Markdown table on stdout (rates, intervals, and "below" where mailfilter is under
the lower bound of the reference's interval), ``bench/out/pdq_edits.png``, ``--json``.

    python bench/pdq_edits.py [--photos DIR] [--limit 240] [--jobs 2] [--max-side 2048]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import EDITS as ROBUSTNESS_EDITS

from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.settings import ImageSettings, MatchSettings

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PHOTOS = BENCH_DIR / "photos" / "images"
MATCH = MatchSettings()
PARAMS = FingerprintParams(images=ImageSettings(), pdq_min_quality=MATCH.pdq_min_quality)
MAX_DISTANCE = MATCH.pdq_max_distance
MIN_QUALITY = MATCH.pdq_min_quality

Bits = npt.NDArray[np.uint8]


def _jpeg90(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _gif_then_jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.quantize(256).save(buf, "GIF")
    with Image.open(io.BytesIO(buf.getvalue())) as gif:
        return _jpeg90(gif.convert("RGB"))


def _crop5(im: Image.Image) -> Image.Image:
    w, h = im.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    left, top = (w - cw) // 2, (h - ch) // 2
    return im.crop((left, top, left + cw, top + ch))


Edit = Callable[[Image.Image, int], bytes]

#: The edits of issue 17, each re-saved as JPEG q90.
ISSUE_EDITS: dict[str, Edit] = {
    "contrast 70%": lambda im, i: _jpeg90(ImageEnhance.Contrast(im).enhance(0.7)),
    "brighter 30%": lambda im, i: _jpeg90(ImageEnhance.Brightness(im).enhance(1.3)),
    "blur sigma 2": lambda im, i: _jpeg90(im.filter(ImageFilter.GaussianBlur(2))),
    "thumbnail 320 px": lambda im, i: _jpeg90(ImageOps.contain(im, (320, 320))),
    "GIF palette": lambda im, i: _gif_then_jpeg(im),
    "crop 5% (q90)": lambda im, i: _jpeg90(_crop5(im)),
}
EDITS: dict[str, Edit] = {**ISSUE_EDITS, **{f"rb: {k}": v for k, v in ROBUSTNESS_EDITS.items()}}


def _bits(hex_hash: str) -> Bits:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_hash), np.uint8))


def _ref_vector(bits: Any) -> Bits:
    # pdqhash lists bit 255 first: packed MSB first that is the hex string's byte order
    return np.asarray(bits, dtype=np.uint8).ravel()


def _reference_decode(data: bytes) -> npt.NDArray[np.uint8]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        upright = ImageOps.exif_transpose(im) or im
        return np.asarray(upright.convert("RGB"))


def _original(path: str, max_side: int) -> bytes:
    with Image.open(path) as im:
        upright = (ImageOps.exif_transpose(im) or im).convert("RGB")
    if max(upright.size) > max_side:
        upright = ImageOps.contain(upright, (max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    upright.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def run_photo(job: tuple[int, str, int, bool]) -> dict[str, Any] | None:
    index, path, max_side, issue_edits = job
    data = _original(path, max_side)
    bits, quality = pdqhash.compute(_reference_decode(data))
    if quality < MIN_QUALITY:
        return None  # not on the list
    listed = _ref_vector(bits)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        original = im.convert("RGB")
    out: dict[str, Any] = {"path": Path(path).name, "ref": {}, "ours": {}}
    for name, edit in (ISSUE_EDITS if issue_edits else EDITS).items():
        query = edit(original, index)
        hashes, qualities = pdqhash.compute_dihedral(_reference_decode(query))
        ref_best = min(int(np.count_nonzero(_ref_vector(h) != listed)) for h in hashes) \
            if qualities >= MIN_QUALITY else 256
        fp = fingerprint_image(query, PARAMS)
        ours = [_bits(h) for f in fp.frames for h in f.pdq_dihedral if f.pdq]
        our_best = min((int(np.count_nonzero(b != listed)) for b in ours), default=256)
        out["ref"][name] = ref_best
        out["ours"][name] = our_best
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in EDITS:
        n = len(rows)
        k_ref = sum(r["ref"][name] <= MAX_DISTANCE for r in rows)
        k_our = sum(r["ours"][name] <= MAX_DISTANCE for r in rows)
        lo_ref, hi_ref = wilson(k_ref, n)
        lo_our, hi_our = wilson(k_our, n)
        out.append({"edit": name, "n": n, "reference": k_ref / n, "ref_ci": [lo_ref, hi_ref],
                    "mailfilter": k_our / n, "ours_ci": [lo_our, hi_our],
                    "below": k_our / n < lo_ref - 1e-9})
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["edit"] for s in summary]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.5))
    for off, key, ci, label in ((-0.18, "reference", "ref_ci", "reference PDQ (dihedral)"),
                                (0.18, "mailfilter", "ours_ci", "mailfilter")):
        vals = np.array([s[key] for s in summary])
        err = np.array([[max(0.0, v - s[ci][0]), max(0.0, s[ci][1] - v)]
                        for v, s in zip(vals, summary, strict=True)]).T
        ax.barh(y + off, vals, height=0.36, xerr=err, capsize=2, label=label)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(f"match rate at distance {MAX_DISTANCE} against reference-PDQ lists "
                  f"(n = {summary[0]['n']} photos, 95% Wilson intervals)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--limit", type=int, default=240)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--glob", default="*.jpg", help="which photos of --photos")
    ap.add_argument("--issue-edits", action="store_true", help="only the six edits of issue 17")
    ap.add_argument("--from-json", type=Path, help="table and figure of an earlier --json")
    args = ap.parse_args()
    if args.from_json:
        rows = json.loads(args.from_json.read_text())["rows"]
        return report(rows, len(rows), args)
    if args.issue_edits:
        for name in list(EDITS):
            if name not in ISSUE_EDITS:
                del EDITS[name]
    files = sorted(str(p) for p in args.photos.glob(args.glob))
    if not files:
        print(f"no photos in {args.photos}: run bench/photos/gather_photos.py", file=sys.stderr)
        return 2
    if args.limit and len(files) > args.limit:
        step = len(files) / args.limit
        files = [files[int(i * step)] for i in range(args.limit)]
    jobs = [(i, f, args.max_side, args.issue_edits) for i, f in enumerate(files)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = [r for r in pool.map(run_photo, jobs, chunksize=2) if r is not None]
    return report(rows, len(files), args)


def report(rows: list[dict[str, Any]], photos: int, args: argparse.Namespace) -> int:
    summary = table(rows)
    print(f"{len(rows)} originals on the list (of {photos}), distance <= {MAX_DISTANCE}\n")
    print("| edit | reference (dihedral) | mailfilter | below? |\n|---|---|---|---|")
    for s in summary:
        print(f"| {s['edit']} | {s['reference']:.2f} ({s['ref_ci'][0]:.2f}-{s['ref_ci'][1]:.2f})"
              f" | {s['mailfilter']:.2f} ({s['ours_ci'][0]:.2f}-{s['ours_ci'][1]:.2f}) | "
              f"{'BELOW' if s['below'] else ''} |")
    if args.json and not args.from_json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    if not args.no_plot:
        plot(summary, args.out / "pdq_edits.png")
        print(f"\nfigure: {args.out / 'pdq_edits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
