"""How fast is fingerprinting? Ours against Meta's C++ PDQ and imagehash, same bytes, one run.

For each test image (a real 12 MP photo, the same photo at ~1 MP, a PNG, an animated GIF)
it times, on one core and including decode from the file bytes:

- ours: `fingerprint_image` = decode (reduced-size) + PDQ with 8 dihedral hashes + gridhist
  (untrimmed and, where borders are found, trimmed) + MD5/SHA-1/SHA-256;
- pdqhash: Meta's C++ PDQ (`pdqhash.compute`) on a full Pillow decode, as its users call it;
- imagehash: `imagehash.phash` on a Pillow image (a 64-bit DCT hash; the usual Python choice).

It also measures ours inside one worker process of the pool, one image after another (one
core; the worker is set up as in the server: tuned malloc, sandbox), and through the pool
on every core (images/s), which is how the server and `scan` run it. Ratios are against
pdqhash measured in the same run.

    python bench/fingerprint_speed.py [--json] [--seconds 2]

Needs the bench extra (`pip install -e ".[bench]"`) and ../shared/vectors beside the repo.
"""

from __future__ import annotations

import os

# One core means one core: no BLAS threads behind numpy's back.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.settings import load_settings
from mailfilter.workers import WorkerPool

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors" / "pdq" / "images"


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_images() -> dict[str, bytes]:
    photo_path = VECTORS / "reg-test-input" / "exif-rotn" / "exif-rotn-1.jpg"
    if not photo_path.exists():
        sys.exit(f"bench: {photo_path} not found (../shared/vectors must be beside the repo)")
    photo12 = photo_path.read_bytes()
    photo = Image.open(io.BytesIO(photo12)).convert("RGB")
    one_mp = photo.resize((1152, 864), Image.Resampling.LANCZOS)
    png_src = VECTORS / "reg-test-input" / "pen-and-coaster.png"
    frames = [
        one_mp.resize((480, 360)).rotate(angle, expand=False).quantize(256)
        for angle in range(0, 50, 5)
    ]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=80,
                   loop=0)
    return {
        "JPEG 12 MP (4032x3024)": photo12,
        "JPEG 1 MP (1152x864)": _encode(one_mp, "JPEG", quality=90),
        "PNG 0.7 MP RGBA (924x735)": png_src.read_bytes(),
        "GIF animated 10 frames (480x360)": gif.getvalue(),
    }


def per_second(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(images per second, median ms per image), running fn for about `seconds`."""
    fn()  # warm caches (DCT matrices, codecs)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return len(times) / sum(times), statistics.median(times) * 1000


def median_ms_in_worker(data: bytes, params: FingerprintParams, seconds: float) -> float:
    """A worker task: `fingerprint_image` timed where it runs in production (the bytes are
    sent once; no round trip is counted)."""
    return per_second(lambda: fingerprint_image(data, params), seconds)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()

    try:
        import imagehash
        import pdqhash
    except ImportError:
        sys.exit('bench: needs the bench extra: pip install -e ".[bench]"')

    settings = load_settings(None, {}).settings
    params = FingerprintParams.from_settings(settings)
    rows = []
    with WorkerPool.from_settings(settings.workers) as pool:
        cores = pool.stats().processes
        for name, data in test_images().items():
            def ours(data: bytes = data) -> object:
                return fingerprint_image(data, params)

            def reference(data: bytes = data) -> object:
                img = Image.open(io.BytesIO(data))
                return pdqhash.compute(np.asarray(img.convert("RGB")))

            def phash(data: bytes = data) -> object:
                return imagehash.phash(Image.open(io.BytesIO(data)))

            ours_rate, ours_ms = per_second(ours, args.seconds)
            with WorkerPool(1, settings.workers.memory_limit,
                            sandbox=settings.workers.sandbox) as one:
                worker_ms = one.submit(median_ms_in_worker, data, params, args.seconds,
                                       deadline=60 + 10 * args.seconds).result()
            ref_rate, ref_ms = per_second(reference, args.seconds)
            ph_rate, ph_ms = per_second(phash, args.seconds)

            batch = max(cores * 8, int(ours_rate * cores * args.seconds))
            start = time.perf_counter()
            futures = [pool.submit(fingerprint_image, data, params, deadline=30.0)
                       for _ in range(batch)]
            for f in futures:
                f.result()
            pool_rate = batch / (time.perf_counter() - start)
            rows.append({
                "image": name, "bytes": len(data),
                "ours_ms": ours_ms, "ours_per_s": ours_rate, "ours_worker_ms": worker_ms,
                "pdqhash_ms": ref_ms, "pdqhash_per_s": ref_rate,
                "phash_ms": ph_ms, "phash_per_s": ph_rate,
                "speedup_vs_pdqhash": ours_rate / ref_rate,
                "ours_pool_per_s": pool_rate, "pool_processes": cores,
            })

    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
        return
    print("| image | ours ms (1 core) | ours ms (1 core, in a worker) | pdqhash ms "
          "| imagehash.phash ms | ours ÷ pdqhash speed "
          f"| ours images/s, pool of {rows[0]['pool_processes']} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['image']} | {r['ours_ms']:.1f} | {r['ours_worker_ms']:.1f} | "
              f"{r['pdqhash_ms']:.1f} | "
              f"{r['phash_ms']:.1f} | {r['speedup_vs_pdqhash']:.1f}× | "
              f"{r['ours_pool_per_s']:.0f} |")
    print("\nours = decode + PDQ with 8 dihedral hashes + gridhist + MD5/SHA-1/SHA-256; "
          "pdqhash = full decode + Meta's C++ PDQ (one hash); phash = 64-bit imagehash.")


if __name__ == "__main__":
    main()
