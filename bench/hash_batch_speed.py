#!/usr/bin/env python3
"""`mailfilter hash` over a batch of large camera photos, against the reference in the same run.

Times the whole command (``python -m mailfilter hash FILE...``, one process) and, as the
yardstick, one Python process that hashes the same files with Meta's C++ PDQ (``pdqhash``)
on Pillow's full RGB decode after EXIF transpose. The two alternate, ``--runs`` times; the
medians and their ratio are printed. With ``--other-tree DIR`` the command is also timed
with DIR's ``mailfilter`` package (e.g. a checkout of main), in the same alternation, so a
change is measured before/after on the same machine load.

    python bench/hash_batch_speed.py [--photos DIR] [--count 20] [--runs 3] [--other-tree DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

REFERENCE = """
import sys, numpy as np, pdqhash
from PIL import Image, ImageOps
for f in sys.argv[1:]:
    with Image.open(f) as im:
        rgb = (ImageOps.exif_transpose(im) or im).convert("RGB")
    pdqhash.compute(np.asarray(rgb))
"""


def _seconds(args: list[str], tree: Path | None) -> float:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=BENCH_DIR / "photos" / "images")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--other-tree", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sized = []
    for p in args.photos.glob("*.jpg"):
        with Image.open(p) as im:
            sized.append((im.size[0] * im.size[1], str(p)))
    files = [f for _, f in sorted(sized, reverse=True)[: args.count]]
    if not files:
        print(f"no photos in {args.photos}", file=sys.stderr)
        return 2
    mp = sorted(sized, reverse=True)[len(files) - 1][0] / 1e6
    times: dict[str, list[float]] = {"this tree": [], "reference": []}
    if args.other_tree:
        times["other tree"] = []
    for _ in range(args.runs):
        times["this tree"].append(_seconds(["-m", "mailfilter", "hash", *files], REPO))
        times["reference"].append(_seconds(["-c", REFERENCE, *files], None))
        if args.other_tree:
            times["other tree"].append(
                _seconds(["-m", "mailfilter", "hash", *files], args.other_tree))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"files": len(files), "min_megapixels": round(mp, 1), "median_seconds": med,
              "reference_over": {k: med["reference"] / v for k, v in med.items()
                                 if k != "reference"}}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{len(files)} photos of >= {mp:.1f} MP, median of {args.runs} runs")
        for k, v in med.items():
            ratio = "" if k == "reference" else f"  ({med['reference'] / v:.1f}x the reference)"
            print(f"  {k:10s} {v:6.2f} s{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
