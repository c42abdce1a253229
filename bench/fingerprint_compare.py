#!/usr/bin/env python3
"""Do two trees fingerprint the same way? Every hash of this tree against another tree's.

Runs one process per tree (``PYTHONPATH`` = the tree) that fingerprints the same inputs and
writes every result; then compares them field by field (PDQ hash, quality, the 8 dihedral
hashes, gridhist and its dihedral variants, trimmed frames, exact hashes). For a change meant
to make fingerprinting faster without changing a single bit:

    python bench/fingerprint_compare.py --other-tree /work/main [--photos DIR]

Inputs: every photo of ``--photos`` (bench/photos, see ORIGIN.md) through `fingerprint_image`;
the same photo's decoded frame hashed as an image of its own (no full size: the video path),
resized to 1280 x 720 (a video frame), and padded with a flat border (the trimmed path); the
shared PDQ vectors; and the images of bench/fingerprint_speed.py. Exit status 1 on any
difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VECTORS = REPO.parent / "shared" / "vectors" / "pdq" / "images"


def _dump(photos: Path, out: Path) -> None:
    """Fingerprint every input with the `mailfilter` on sys.path; one JSON line each."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(BENCH_DIR))
    from fingerprint_speed import test_images

    from mailfilter.fingerprint import FingerprintParams, fingerprint_decoded, fingerprint_image
    from mailfilter.hashing.exact import exact_hashes
    from mailfilter.hashing.pdq import pdq_from_luma
    from mailfilter.images import DecodedImage, decode
    from mailfilter.settings import load_settings

    params = FingerprintParams.from_settings(load_settings(None, {}).settings)
    inputs: list[tuple[str, bytes]] = [(f"photo:{p.name}", p.read_bytes())
                                       for p in sorted(photos.glob("*.jpg"))]
    inputs += [(f"vector:{p.relative_to(VECTORS)}", p.read_bytes())
               for p in sorted(VECTORS.rglob("*")) if p.is_file()]
    inputs += [(f"bench:{name}", data) for name, data in test_images().items()]
    with out.open("w") as f:
        for n, (name, data) in enumerate(inputs):
            fp = fingerprint_image(data, params)
            f.write(json.dumps([name, dataclasses.asdict(fp)]) + "\n")
            try:
                decoded = decode(data, params.images)
            except Exception:
                continue
            luma = decoded.frames[0]
            own = pdq_from_luma(luma)
            f.write(json.dumps([name + " own-size", dataclasses.asdict(own)]) + "\n")
            frame720 = np.asarray(Image.fromarray(luma, "F").resize((1280, 720)), np.float32)
            f.write(json.dumps([name + " 720p", dataclasses.asdict(pdq_from_luma(frame720))])
                    + "\n")
            if n % 4 == 0 and min(luma.shape) >= 64:
                # A flat border of 1/8 of each side (grey level varying per input) on two
                # or four sides: the trimmed fingerprint and its full-size fold.
                h, w = luma.shape
                grey = float(n % 256)
                pad = ((h // 8, h // 8), (w // 8, 0) if n % 8 else (w // 8, w // 8))
                padded = np.pad(luma, pad, constant_values=grey).astype(np.float32)
                ph, pw = padded.shape
                full = (round(pw * decoded.width / w), round(ph * decoded.height / h))
                framed = DecodedImage(width=full[0], height=full[1], image_format="JPEG",
                                      frame_count=1, frames=(padded,))
                fp = fingerprint_decoded(framed, exact_hashes(b""), params, 0.0)
                f.write(json.dumps([name + " framed", dataclasses.asdict(fp)]) + "\n")


def _run(tree: Path, photos: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, __file__, "--dump", str(out), "--photos", str(photos)],
                   check=True, env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=BENCH_DIR / "photos" / "images")
    ap.add_argument("--other-tree", type=Path)
    ap.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dump:
        _dump(args.photos, args.dump)
        return 0
    if args.other_tree is None:
        ap.error("--other-tree is required")
    with tempfile.TemporaryDirectory() as tmp:
        mine, other = Path(tmp) / "this.jsonl", Path(tmp) / "other.jsonl"
        _run(REPO, args.photos, mine)
        _run(args.other_tree, args.photos, other)
        a = [json.loads(line) for line in mine.read_text().splitlines()]
        b = [json.loads(line) for line in other.read_text().splitlines()]
    photos = sum(1 for name, _ in a if name.startswith("photo:") and " " not in name)
    differ = 0
    if [name for name, _ in a] != [name for name, _ in b]:
        print("the two trees fingerprinted different inputs", file=sys.stderr)
        return 1
    for (name, x), (_, y) in zip(a, b, strict=True):
        if x != y:
            differ += 1
            print(f"DIFFERS: {name}")
    print(f"{len(a)} results ({photos} photos from {args.photos}): {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
