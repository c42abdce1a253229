"""How fast is a video fingerprinted? vPDQ + exact hashes against a one-thread full decode.

Generated material only: 60 s 1280x720 30 fps H.264 clips made by ffmpeg's testsrc2 (x264
defaults: keyframe every 250 frames, 3 B-frames; ~23 MB, busier than most camera footage;
and the same with a keyframe every second, as phone cameras write), and 10-minute clips made
of them repeated (stream copy). Measured in the same run:

- yardstick: ``ffmpeg -threads 1 -i clip -f null -``, FFmpeg decoding every frame on one
  thread (the issue's reference point);
- ours: `mailfilter.video.fingerprint_video` (decode with PyAV, 1 frame/s sampled, vPDQ,
  per-frame PDQ with border trimming, MD5/SHA-1/SHA-256), each run in a fresh process under
  the worker's address-space limit (``workers.memory_limit``, 1 GiB), peak RSS reported;
- ours in N parts (``--parts``, 2 by default: the machine's cores): parts 0..N-1 of the
  timeline (``fingerprint_video(data, params, part, parts)``) in N fresh processes started
  at once, each under the same limit; the time is the slowest part's (as the 1-part rows:
  from the bytes in memory to the fingerprint; ``wall`` adds the processes' start and the
  import of PyAV), the samples are all the parts' joined (checked against the 1-part run's
  when that is complete), peak RSS the largest part's.

Targets: the 60 s clip in at most 0.5x the yardstick's time; the 10-minute clip in at most
30 s wall (on 2 cores), complete (no ``incomplete``) and within 1 GiB.

    python bench/video_speed.py [--json] [--workdir DIR] [--repeat N] [--parts N]

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


def child(clip: str, part: int = 0, parts: int = 1) -> None:
    """Run in a fresh process: fingerprint one clip (or a part of it) under the worker's
    memory limit."""
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
    result = fingerprint_video(data, params, part=part, parts=parts)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "samples": [[f.timestamp, f.frames[0].pdq] for f in result.frames],
        "features": result.vpdq_compact,
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


def ours_in_parts(clip: Path, parts: int) -> dict[str, Any]:
    """The clip's parts fingerprinted at once, in a process each (as the worker pool runs
    them); joined as the main process would join them."""
    from mailfilter.hashing.vpdq import VpdqFeature, prune

    started = time.perf_counter()
    children = [subprocess.Popen([sys.executable, __file__, "--child", str(clip),
                                  "--part", str(part), "--of", str(parts)],
                                 stdout=subprocess.PIPE, text=True) for part in range(parts)]
    outputs = [child.communicate()[0] for child in children]
    wall = time.perf_counter() - started
    if any(child.returncode for child in children):
        sys.exit(f"bench: a part of {clip} failed")
    found = [json.loads(out) for out in outputs]
    features = [VpdqFeature.from_str(f) for part in found for f in part["features"]]
    return {
        "seconds": max(part["seconds"] for part in found), "wall_s": wall,
        "part_seconds": [part["seconds"] for part in found],
        "peak_rss_mb": max(part["peak_rss_mb"] for part in found),
        "samples": [s for part in found for s in part["samples"]],
        "frames": sum(part["frames"] for part in found), "vpdq": len(prune(features)),
        "decoded": sum(part["decoded"] for part in found), "duration": found[0]["duration"],
        "skipped": found[0]["skipped"],
        "incomplete": next((p["incomplete"] for p in found if p["incomplete"]), None),
        "detail": "; ".join(p["detail"] for p in found if p["detail"]),
    }


def _complete(run: dict[str, Any]) -> bool:
    return run["skipped"] is None and run["incomplete"] is None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailfilter-bench-video"),
                        help="where the generated clips are kept between runs")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--parts", type=int, default=2,
                        help="parts of the timeline run at once (rows 'in N parts')")
    parser.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.part, args.of)
        return
    if shutil.which("ffmpeg") is None:
        sys.exit("bench: the system ffmpeg is needed (apt-get install ffmpeg)")
    short, phone, long, long_phone = make_clips(args.workdir)

    rows: list[dict[str, Any]] = []
    in_parts = f"in {args.parts} parts at once"
    clips = (("60 s 720p30 H.264, x264 defaults (keyframe every 250)", short, False),
             ("60 s 720p30 H.264, a keyframe a second (as phones write)", phone, False),
             ("10 min 720p30 H.264, x264 defaults", long, True),
             ("10 min 720p30 H.264, a keyframe a second", long_phone, True))
    for name, clip, ten_minutes in clips:
        # The 10-minute yardstick takes a minute or so: measured once.
        base = min(yardstick(clip) for _ in range(1 if ten_minutes else args.repeat))
        target = "<= 30 s, <= 1 GiB, complete" if ten_minutes else "ratio <= 0.5"

        def ok(run: dict[str, Any], ten_minutes: bool = ten_minutes,
               base: float = base) -> bool:
            if ten_minutes:
                return bool(run["seconds"] <= 30 and _complete(run)
                            and run["peak_rss_mb"] <= 1024)
            return bool(run["seconds"] / base <= 0.5 and _complete(run))

        one = min((ours(clip) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        rows.append({"case": name, "bytes": clip.stat().st_size, "yardstick_s": base, **one,
                     "wall_s": None, "ratio": one["seconds"] / base, "target": target,
                     "ok": ok(one)})
        if args.parts > 1:
            split = min((ours_in_parts(clip, args.parts) for _ in range(args.repeat)),
                        key=lambda r: r["seconds"])
            same = (split["samples"] == one["samples"]) if _complete(one) else None
            rows.append({"case": f"{name}, {in_parts}", "bytes": clip.stat().st_size,
                         "yardstick_s": base, **split, "ratio": split["seconds"] / base,
                         "same_samples_as_one_part": same, "target": target,
                         "ok": ok(split) and same is not False})
    for row in rows:
        row.pop("samples", None)
        row.pop("features", None)
    context: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({"rows": rows, "context": context}, indent=2))
        return
    print("| case | one-thread full decode | ours (vPDQ + exact) | wall with process start "
          "| ratio | frames sampled | vpdq features | frames decoded | peak RSS | incomplete "
          "| target | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        yard = f"{row['yardstick_s']:.2f} s" if row["yardstick_s"] else "-"
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        wall = f"{row['wall_s']:.2f} s" if row.get("wall_s") else "-"
        print(f"| {row['case']} | {yard} | {row['seconds']:.2f} s | {wall} | {ratio} "
              f"| {row['frames']} "
              f"| {row['vpdq']} | {row['decoded']} | {row['peak_rss_mb']:.0f} MB "
              f"| {row['skipped'] or row['incomplete'] or '-'} | {row['target']} "
              f"| {'yes' if row['ok'] else 'NO'} |")
    print(f"\n{context['cpus']} CPUs, load average {context['load_average'][0]:.2f} "
          f"(other work on the machine slows both sides alike). Rows {in_parts}: the time "
          "is the slowest part's; their samples equal the 1-part run's where that is "
          "complete (else NO).")


if __name__ == "__main__":
    main()
