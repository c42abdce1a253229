"""How fast is a video fingerprinted? vPDQ + exact hashes against a one-thread full decode.

Generated material only: 60 s 1280x720 30 fps H.264 clips made by ffmpeg's testsrc2 (x264
defaults: keyframe every 250 frames, 3 B-frames; ~23 MB, busier than most camera footage;
and the same with a keyframe every second, as phone cameras write), and 10-minute clips made
of them repeated (stream copy). Measured in the same run:

- yardstick: ``ffmpeg -threads 1 -i clip -f null -``, FFmpeg decoding every frame on one
  thread (the issue's reference point);
- ours: `mailfilter.video.fingerprint_video` (decode with PyAV, 1 frame/s sampled, vPDQ,
  per-frame PDQ with border trimming, MD5/SHA-1/SHA-256), each run in a fresh process under
  the worker's address-space limit (``workers.memory_limit``, 1 GiB), peak RSS reported.

Targets: the 60 s clip in at most 0.5x the yardstick's time; the 10-minute clip in at most
30 s wall (on 2 cores), complete (no ``incomplete``) and within 1 GiB.

    python bench/video_speed.py [--json] [--workdir DIR] [--repeat N]

Needs the system ffmpeg (apt package ffmpeg) for the clips and the yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEMORY_LIMIT = 1024**3


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_clips(workdir: Path) -> tuple[Path, Path, Path, Path]:
    """The 60 s clips (x264 defaults; a keyframe a second) and the 10-minute clip, made
    once and kept in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    short = workdir / "testsrc2-720p30-60s.mp4"
    phone = workdir / "testsrc2-720p30-60s-keyint30.mp4"
    long = workdir / "testsrc2-720p30-600s.mp4"
    for clip, extra in ((short, []), (phone, ["-g", "30", "-keyint_min", "30"])):
        if clip.exists():
            continue
        partial = clip.with_suffix(".part.mp4")
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "60",
                "-c:v", "libx264", *extra, "-pix_fmt", "yuv420p", str(partial))
        partial.rename(clip)
    long_phone = workdir / "testsrc2-720p30-600s-keyint30.mp4"
    for clip, source in ((long, short), (long_phone, phone)):
        if clip.exists():
            continue
        listing = workdir / "ten.txt"
        listing.write_text(f"file '{source.name}'\n" * 10)
        partial = clip.with_suffix(".part.mp4")
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(partial))
        partial.rename(clip)
    return short, phone, long, long_phone


def yardstick(clip: Path) -> float:
    started = time.perf_counter()
    _ffmpeg("-threads", "1", "-i", str(clip), "-f", "null", "-")
    return time.perf_counter() - started


def child(clip: str) -> None:
    """Run in a fresh process: fingerprint one clip under the worker's memory limit."""
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, hard))
    from mailfilter.settings import Settings
    from mailfilter.video import VideoParams, fingerprint_video

    settings = Settings()
    # The 10-minute testsrc2 clip is 227 MB: past the default max_bytes (200 MB).
    video = settings.video.model_copy(update={"max_bytes": 2 * 1000**3})
    params = VideoParams.from_settings(settings.model_copy(update={"video": video}))
    data = Path(clip).read_bytes()
    started = time.perf_counter()
    result = fingerprint_video(data, params)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "frames": len(result.frames),
        "vpdq": len(result.vpdq),
        "decoded": result.decoded,
        "duration": result.duration,
        "skipped": result.skipped,
        "incomplete": result.incomplete,
        "detail": result.detail,
    }))


def ours(clip: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", str(clip)], check=True,
                         capture_output=True, text=True)
    measured: dict[str, Any] = json.loads(out.stdout)
    return measured


def _complete(run: dict[str, Any]) -> bool:
    return run["skipped"] is None and run["incomplete"] is None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailfilter-bench-video"),
                        help="where the generated clips are kept between runs")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if shutil.which("ffmpeg") is None:
        sys.exit("bench: the system ffmpeg is needed (apt-get install ffmpeg)")
    short, phone, long, long_phone = make_clips(args.workdir)

    rows: list[dict[str, Any]] = []
    for name, clip in (("60 s 720p30 H.264, x264 defaults (keyframe every 250)", short),
                       ("60 s 720p30 H.264, a keyframe a second (as phones write)", phone)):
        base = min(yardstick(clip) for _ in range(args.repeat))
        best = min((ours(clip) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        rows.append({"case": name, "bytes": clip.stat().st_size, "yardstick_s": base, **best,
                     "ratio": best["seconds"] / base, "target": "ratio <= 0.5",
                     "ok": best["seconds"] / base <= 0.5 and _complete(best)})
    for name, clip in (("10 min 720p30 H.264, x264 defaults", long),
                       ("10 min 720p30 H.264, a keyframe a second", long_phone)):
        run = min((ours(clip) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        rows.append({"case": name, "bytes": clip.stat().st_size, "yardstick_s": None, **run,
                     "ratio": None, "target": "<= 30 s, <= 1 GiB, complete",
                     "ok": run["seconds"] <= 30 and _complete(run) and run["peak_rss_mb"] <= 1024})
    context = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({"rows": rows, "context": context}, indent=2))
        return
    print("| case | one-thread full decode | ours (vPDQ + exact) | ratio | frames sampled "
          "| vpdq features | frames decoded | peak RSS | incomplete | target | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        yard = f"{row['yardstick_s']:.2f} s" if row["yardstick_s"] else "-"
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        print(f"| {row['case']} | {yard} | {row['seconds']:.2f} s | {ratio} | {row['frames']} "
              f"| {row['vpdq']} | {row['decoded']} | {row['peak_rss_mb']:.0f} MB "
              f"| {row['skipped'] or row['incomplete'] or '-'} | {row['target']} "
              f"| {'yes' if row['ok'] else 'NO'} |")
    print(f"\n{context['cpus']} CPUs, load average {context['load_average'][0]:.2f} "
          f"(other work on the machine slows both sides alike)")


if __name__ == "__main__":
    main()
