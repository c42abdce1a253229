"""How fast is a video fingerprinted? vPDQ + exact hashes against a one-thread full decode.

Generated material only: 60 s 1280x720 30 fps H.264 clips made by ffmpeg's testsrc2 (busier
than most camera footage, ~23 MB each) in several GOP shapes, since what must be decoded
depends on them (`mailfilter.video`: non-reference frames are skipped, and the frames of a
group after its last sample):

- ``keyint250``: x264 defaults (a keyframe every 250 frames, 3 B-frames, B-pyramid
  ``normal``: the middle B-frame of three is a reference);
- ``keyint600``: a keyframe every 600 frames (20 s), otherwise defaults;
- ``bframes7``: 7 B-frames with B-pyramid (a deeper pyramid: more of the B-frames are
  references, so fewer can be skipped);
- ``keyint30``: a keyframe a second (as phone cameras write);

and a 10-minute clip of ``keyint250`` repeated ten times (stream copy). Measured in the same
run, in rounds (each round runs every case once, one after the other, so load from other
work on the machine falls on both sides of a ratio alike; medians over the rounds):

- yardstick: ``ffmpeg -threads 1 -i clip -f null -``, FFmpeg decoding every frame on one
  thread (the issue's reference point), wall and CPU seconds;
- ours: `mailfilter.video.fingerprint_video` (decode with PyAV, 1 frame/s sampled, vPDQ,
  per-frame PDQ with border trimming, MD5/SHA-1/SHA-256), in a fresh process under the
  worker's address-space limit (``workers.memory_limit``, 1 GiB), wall and CPU seconds
  (all threads) from the bytes in memory to the fingerprint, peak RSS;
- ours in N parts (``--parts``, 2 by default: the machine's cores, and what the scanner
  does with these clips: `scanner.VIDEO_PART_BYTES`): parts 0..N-1 of the timeline
  (``fingerprint_video(data, params, part, parts)``) in N fresh processes started at once,
  each under the same limit; the time is the slowest part's, CPU the parts' sum, the samples
  all the parts' joined (checked against the 1-part run's), peak RSS the largest part's.

``ratio``: ours / yardstick wall time of the same round (median over rounds); ``cpu ratio``:
the same for CPU seconds, which load from other work moves far less (one core's worth of
work: the wall ratio on idle cores is about cpu ratio / parallelism).

Targets: each 60 s clip in at most 0.5x the yardstick's time; the 10-minute clip in at most
30 s wall (on 2 cores), complete (no ``incomplete``) and within 1 GiB per part.

    python bench/video_speed.py [--json] [--workdir DIR] [--rounds N] [--parts N]
                                [--shapes keyint250,...] [--no-long] [--long-yardstick]

Needs the system ffmpeg (apt package ffmpeg) for the clips and the yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEMORY_LIMIT = 1024**3

#: GOP shape -> (what it is, x264 options beyond the defaults)
SHAPES: dict[str, tuple[str, list[str]]] = {
    "keyint250": ("x264 defaults: keyframe every 250, 3 B-frames, B-pyramid", []),
    "keyint600": ("keyframe every 600 (20 s)", ["-g", "600"]),
    "bframes7": ("7 B-frames, B-pyramid (more reference B-frames)",
                 ["-x264-params", "bframes=7:b-pyramid=normal"]),
    "keyint30": ("a keyframe a second (as phones write)", ["-g", "30", "-keyint_min", "30"]),
}
LONG_SOURCE = "keyint250"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def make_clips(workdir: Path, shapes: list[str]) -> tuple[dict[str, Path], Path]:
    """The 60 s clip of each GOP shape and the 10-minute clip, made once and kept in
    `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    clips: dict[str, Path] = {}
    for shape in {*shapes, LONG_SOURCE}:
        clip = workdir / f"testsrc2-720p30-60s-{shape}.mp4"
        clips[shape] = clip
        if clip.exists():
            continue
        partial = clip.with_suffix(".part.mp4")
        _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "60",
                "-c:v", "libx264", *SHAPES[shape][1], "-pix_fmt", "yuv420p", str(partial))
        partial.rename(clip)
    long = workdir / f"testsrc2-720p30-600s-{LONG_SOURCE}.mp4"
    if not long.exists():
        listing = workdir / "ten.txt"
        listing.write_text(f"file '{clips[LONG_SOURCE].name}'\n" * 10)
        partial = long.with_suffix(".part.mp4")
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(partial))
        partial.rename(long)
    return clips, long


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def yardstick(clip: Path) -> dict[str, float]:
    cpu, started = _children_cpu(), time.perf_counter()
    _ffmpeg("-threads", "1", "-i", str(clip), "-f", "null", "-")
    return {"seconds": time.perf_counter() - started, "cpu_s": _children_cpu() - cpu}


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

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
        return usage.ru_utime + usage.ru_stime

    cpu_before, started = cpu(), time.perf_counter()
    result = fingerprint_video(data, params, part=part, parts=parts)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "samples": [[f.timestamp, f.frames[0].pdq] for f in result.frames],
        "features": result.vpdq_compact,
        "seconds": seconds,
        "cpu_s": cpu() - cpu_before,
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
        "cpu_s": sum(part["cpu_s"] for part in found),
        "part_cpu_s": [part["cpu_s"] for part in found],
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


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _summary(case: str, clip: Path, runs: list[dict[str, Any]],
             bases: list[dict[str, float]], ten_minutes: bool,
             one_part: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One row: medians over the rounds (ratios taken within each round first)."""
    last = runs[-1]
    row: dict[str, Any] = {
        "case": case, "bytes": clip.stat().st_size, "rounds": len(runs),
        "seconds": _median([r["seconds"] for r in runs]),
        "cpu_s": _median([r["cpu_s"] for r in runs]),
        "wall_s": _median([r["wall_s"] for r in runs]) if "wall_s" in last else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "frames": last["frames"], "vpdq": last["vpdq"], "decoded": last["decoded"],
        "skipped": last["skipped"],
        "incomplete": next((r["incomplete"] for r in runs if r["incomplete"]), None),
        "yardstick_s": _median([b["seconds"] for b in bases]) if bases else None,
        "yardstick_cpu_s": _median([b["cpu_s"] for b in bases]) if bases else None,
        "ratio": _median([r["seconds"] / b["seconds"] for r, b in zip(runs, bases, strict=True)])
        if bases else None,
        "ratios": [round(r["seconds"] / b["seconds"], 3)
                   for r, b in zip(runs, bases, strict=True)] if bases else [],
        "cpu_ratio": _median([r["cpu_s"] / b["cpu_s"] for r, b in zip(runs, bases, strict=True)])
        if bases else None,
    }
    if "part_cpu_s" in last:
        row["part_cpu_s"] = [round(_median([r["part_cpu_s"][i] for r in runs]), 2)
                             for i in range(len(last["part_cpu_s"]))]
    if one_part is not None:
        complete = [r for r in one_part if _complete(r)]
        row["same_samples_as_one_part"] = (
            all(r["samples"] == complete[0]["samples"] for r in runs) if complete else None)
    if ten_minutes:
        row["target"] = "<= 30 s, <= 1 GiB, complete"
        row["ok"] = bool(row["seconds"] <= 30 and row["incomplete"] is None
                         and row["skipped"] is None and row["peak_rss_mb"] <= 1024)
    else:
        row["target"] = "ratio <= 0.5"
        row["ok"] = bool(row["ratio"] is not None and row["ratio"] <= 0.5
                         and row["incomplete"] is None and row["skipped"] is None)
    if row.get("same_samples_as_one_part") is False:
        row["ok"] = False
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mailfilter-bench-video"),
                        help="where the generated clips are kept between runs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every 60 s case (medians over them)")
    parser.add_argument("--parts", type=int, default=2,
                        help="parts of the timeline run at once (rows 'in N parts')")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"GOP shapes of the 60 s clips (of {', '.join(SHAPES)})")
    parser.add_argument("--no-long", action="store_true", help="leave out the 10-minute clip")
    parser.add_argument("--long-rounds", type=int, default=1,
                        help="rounds of the 10-minute clip")
    parser.add_argument("--long-yardstick", action="store_true",
                        help="also decode the 10-minute clip with the yardstick (minutes)")
    parser.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.part, args.of)
        return
    if shutil.which("ffmpeg") is None:
        sys.exit("bench: the system ffmpeg is needed (apt-get install ffmpeg)")
    shapes = [shape for shape in args.shapes.split(",") if shape]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        sys.exit(f"bench: unknown shapes {sorted(unknown)} (known: {', '.join(SHAPES)})")
    clips, long = make_clips(args.workdir, shapes)
    in_parts = f"in {args.parts} parts at once"

    bases: dict[str, list[dict[str, float]]] = {shape: [] for shape in shapes}
    ones: dict[str, list[dict[str, Any]]] = {shape: [] for shape in shapes}
    splits: dict[str, list[dict[str, Any]]] = {shape: [] for shape in shapes}
    for _ in range(args.rounds):
        for shape in shapes:
            bases[shape].append(yardstick(clips[shape]))
            ones[shape].append(ours(clips[shape]))
            if args.parts > 1:
                splits[shape].append(ours_in_parts(clips[shape], args.parts))
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        name = f"60 s 720p30 H.264, {shape}: {SHAPES[shape][0]}"
        rows.append(_summary(name, clips[shape], ones[shape], bases[shape], False, None))
        if args.parts > 1:
            rows.append(_summary(f"{name}, {in_parts}", clips[shape], splits[shape],
                                 bases[shape], False, ones[shape]))
    if not args.no_long:
        long_bases = [yardstick(long)] if args.long_yardstick else []
        runs = [ours_in_parts(long, args.parts) if args.parts > 1 else ours(long)
                for _ in range(args.long_rounds)]
        name = f"10 min 720p30 H.264, {LONG_SOURCE}" + (f", {in_parts}" if args.parts > 1
                                                         else "")
        rows.append(_summary(name, long, runs, long_bases * len(runs), True, None))
    context: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({"rows": rows, "context": context}, indent=2))
        return
    print("| case | one-thread full decode (wall / CPU) | ours (wall / CPU) | ratio "
          "(per round) | cpu ratio | frames sampled / decoded | vpdq features | peak RSS "
          "| incomplete | target | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        yard = (f"{row['yardstick_s']:.2f} s / {row['yardstick_cpu_s']:.2f} s"
                if row["yardstick_s"] else "-")
        ratio = (f"{row['ratio']:.2f}x ({', '.join(f'{r:.2f}' for r in row['ratios'])})"
                 if row["ratio"] else "-")
        cpu_ratio = f"{row['cpu_ratio']:.2f}x" if row["cpu_ratio"] else "-"
        parts_cpu = (f" (parts {', '.join(f'{c:.1f}' for c in row['part_cpu_s'])})"
                     if "part_cpu_s" in row else "")
        print(f"| {row['case']} | {yard} | {row['seconds']:.2f} s / {row['cpu_s']:.2f} s"
              f"{parts_cpu} | {ratio} | {cpu_ratio} | {row['frames']} / {row['decoded']} "
              f"| {row['vpdq']} | {row['peak_rss_mb']:.0f} MB "
              f"| {row['skipped'] or row['incomplete'] or '-'} | {row['target']} "
              f"| {'yes' if row['ok'] else 'NO'} |")
    print(f"\n{context['cpus']} CPUs, load average {context['load_average'][0]:.2f} "
          "(other work on the machine slows both sides of a ratio alike, but a process "
          f"with threads or parts takes a larger share of a loaded machine). Rows {in_parts}: "
          "the time is the slowest part's, CPU the parts' sum; their samples equal the "
          "1-part run's (else NO).")


if __name__ == "__main__":
    main()
