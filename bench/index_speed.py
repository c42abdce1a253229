"""How fast does the in-memory index match PDQ hashes, and what does it cost in memory?

Builds a `HashIndex` over N random 256-bit PDQ hashes (default 10 million, spread over
three lists and four label sets) with `HashIndex.from_arrays`, the path a store's cold load
takes, then reports, on one core:

- query latency (p50/p90/p99/max) of `search_pdq` for a set of 8 hashes (the dihedral
  hashes of one image) at radius 31, over `--queries` sets: half are 8 random hashes, half
  have one hash planted within 1..31 bits of a list entry (which must be found: checked);
- the same sets through brute force over the same array (`method="brute"`, numpy XOR +
  popcount; fewer sets) and, if `faiss` is importable, `faiss.IndexBinaryFlat`
  range search on one thread; the first baseline sets are also checked for equal results;
- memory: bytes of the index's arrays per entry, and the growth of resident memory
  (RSS, after `malloc_trim`) per entry across the build;
- the build time of `from_arrays` (sort, collapse duplicates, multi-index tables);
- the same for the same hashes with 10 tables (`--no-alt` skips it): ~4 bytes less per
  entry, about twice the probes and candidates;
- the same for a clumpy list (`--no-clumpy` skips it): clusters of near-duplicates
  (sizes geometric, mean 8; members ~4, 8 or 16 bits from their centre), as real lists hold
  many re-encodes of one image; planted queries then hit whole clusters.

- vPDQ (`--vpdq-videos`, default 10,000; 0 skips it; `--only-vpdq` runs it alone):
  listed videos of `--vpdq-frames` (60) random frame hashes each, indexed as a store's
  cold load does (`from_arrays(vpdq=...)`: multi-index tables over the frames), queried
  with videos of as many frames (half transcodes of a listed video, every frame 0..24 bits
  off, which must match; half unrelated) through `search_vpdq`, against brute force over
  the same frames (`method="brute"`, fewer queries, results compared); bytes per frame
  and per video. The tables are built whatever the size (`vpdq_mih=True`; by default
  only from 131,072 frames) and searched with `method="mih"`.

Random hashes fill the buckets evenly; real lists are clumpier (near-duplicates share
chunks and crowd some buckets), which the clumpy case shows. Latency is wall clock with the
thread's CPU time beside it: the machine may be shared, so load averages are printed too.

    python bench/index_speed.py [--entries N] [--queries 1000] [--json] [--no-clumpy]
        [--no-alt] [--no-faiss] [--bits 23,23,21,...] [--tables M] [--radius 31]
        [--vpdq-videos 10000] [--vpdq-frames 60] [--vpdq-queries 200] [--only-vpdq]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mailfilter.matching.index import EntryArrays, HashIndex

U8 = npt.NDArray[np.uint8]

LISTS = ("ncmec", "iwf", "local")
ALT_TABLES = 10  # the memory-lean shape: ~64 B/entry at 10M, about twice the work per query
LABEL_SETS: tuple[tuple[str, ...], ...] = ((), ("A1",), ("B1",), ("A1", "sextortion"))


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Give freed heap back to the OS so RSS shows what is live (glibc only)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def flip_bits(rng: np.random.Generator, rows: U8, counts: npt.NDArray[np.int64]) -> U8:
    """Copies of `rows` with counts[i] distinct random bits flipped in row i."""
    out = rows.copy()
    for i, k in enumerate(counts.tolist()):
        if k:
            bits = rng.choice(256, size=k, replace=False)
            np.bitwise_xor.at(out[i], bits // 8, (1 << (bits % 8)).astype(np.uint8))
    return out


def random_hashes(rng: np.random.Generator, n: int) -> U8:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


def clumpy_hashes(rng: np.random.Generator, n: int) -> U8:
    """Clusters of near-duplicates: geometric sizes (mean 8); a member differs from its
    centre in each bit with probability 1/16, 1/32 or 1/64 (16, 8 or 4 bits on average)."""
    sizes = rng.geometric(1 / 8, size=n // 4 + 16)  # mean 8: enough to cover n
    count = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:count]
    sizes[-1] -= int(sizes.sum()) - n
    out = np.repeat(random_hashes(rng, sizes.size), sizes, axis=0)
    noise = random_hashes(rng, n)
    for _ in range(3):
        noise &= random_hashes(rng, n)  # each bit set with probability 1/16
    level = rng.integers(0, 3, size=n)
    for depth in (1, 2):  # 1/32 for level >= 1, 1/64 for level 2
        rows = np.flatnonzero(level >= depth)
        noise[rows] &= random_hashes(rng, rows.size)
    noise[np.cumsum(sizes) - sizes] = 0  # each cluster holds its centre itself
    out ^= noise
    return out


def hexes(rows: U8) -> list[str]:
    return [r.tobytes().hex() for r in rows]


def query_sets(
    rng: np.random.Generator, data: U8, count: int, radius: int
) -> tuple[list[list[str]], list[str | None]]:
    """`count` sets of 8 hashes; odd sets carry one hash planted near a list entry."""
    sets: list[list[str]] = []
    planted: list[str | None] = []
    for i in range(count):
        qs = random_hashes(rng, 8)
        target: str | None = None
        if i % 2:
            row = data[rng.integers(0, data.shape[0])]
            k = int(rng.integers(1, radius + 1))
            qs[int(rng.integers(0, 8))] = flip_bits(rng, row[None, :], np.array([k]))[0]
            target = row.tobytes().hex()
        sets.append(hexes(qs))
        planted.append(target)
    return sets, planted


def percentiles(times_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
    }


def parse_bits(text: str) -> int | list[int] | None:
    if not text:
        return None
    parts = [int(b) for b in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def run_case(
    name: str,
    data: U8,
    args: argparse.Namespace,
    rng: np.random.Generator,
    bits: int | list[int] | None,
    tables: int | None,
) -> dict[str, Any]:
    n = data.shape[0]
    list_ids = np.asarray(rng.integers(0, len(LISTS), size=n), dtype=np.int64)
    label_ids = np.asarray(rng.integers(0, len(LABEL_SETS), size=n), dtype=np.int64)
    trim()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = HashIndex.from_arrays(
        version=1,
        lists=LISTS,
        label_sets=LABEL_SETS,
        pdq=data,
        pdq_list=list_ids,
        pdq_labels=label_ids,
        pdq_chunk_bits=bits,
        pdq_tables=tables,
        threads=args.threads,
    )
    build_s = time.perf_counter() - t0
    trim()
    rss1 = rss_bytes()  # the inputs are still alive, so the growth is the index
    del list_ids, label_ids
    stats = index.stats()
    result: dict[str, Any] = {
        "case": name,
        "entries": n,
        "unique_hashes": stats["pdq"],
        "layout": {k: list(v) for k, v in index.pdq_layout.items()},
        "build_s": build_s,
        "build_threads": args.threads,
        "array_bytes_per_entry": stats["bytes:pdq"] / n,
        "rss_bytes_per_entry": (rss1 - rss0) / n,
        "load_before": load(),
    }

    sets, planted = query_sets(rng, data, args.queries, args.radius)
    for qs in sets[:3]:
        index.search_pdq(qs, args.radius)  # build the probe plan
    wall: list[float] = []
    cpu: list[float] = []
    missed = 0
    reported = 0
    gc.disable()
    try:
        for qs, target in zip(sets, planted, strict=True):
            c0 = time.thread_time()
            t0 = time.perf_counter()
            matches = index.search_pdq(qs, args.radius)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            reported += len(matches)
            if target is not None and not any(m.value == target for m in matches):
                missed += 1
    finally:
        gc.enable()
    result["index"] = percentiles(wall)
    result["index_cpu"] = percentiles(cpu)
    result["planted_missed"] = missed
    result["matches_reported"] = reported

    # Baselines over the same sets (fewer): brute force through the same arrays, faiss.
    nb = min(args.baseline_queries, len(sets))
    brute_times: list[float] = []
    mismatched = 0
    for i, qs in enumerate(sets[:nb]):
        t0 = time.perf_counter()
        brute = index.search_pdq(qs, args.radius, method="brute")
        brute_times.append(time.perf_counter() - t0)
        if i < args.check and brute != index.search_pdq(qs, args.radius):
            mismatched += 1
    result["numpy_brute"] = percentiles(brute_times)
    result["brute_vs_index_mismatches"] = mismatched
    if args.faiss:
        result["faiss_flat"] = faiss_baseline(data, sets[:nb], args.radius)
    else:
        result["faiss_flat"] = None
    result["load_after"] = load()
    del index
    trim()
    return result


def faiss_baseline(data: U8, sets: list[list[str]], radius: int) -> dict[str, Any] | None:
    try:
        import faiss  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexBinaryFlat(256)
    flat.add(data)
    times: list[float] = []
    for qs in sets:
        q = np.frombuffer(b"".join(bytes.fromhex(h) for h in qs), np.uint8).reshape(-1, 32)
        t0 = time.perf_counter()
        flat.range_search(q, radius + 1)  # faiss reports distances < radius
        times.append(time.perf_counter() - t0)
    del flat
    return percentiles(times)


def run_vpdq(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """Listed videos as frame rows in the index, queried with whole videos."""
    videos, per = args.vpdq_videos, args.vpdq_frames
    n = videos * per
    frames = random_hashes(rng, n)
    video_ids = rng.integers(0, 256, size=(videos, 8), dtype=np.uint8)
    rows = np.concatenate([frames, np.repeat(video_ids, per, axis=0)], axis=1)
    list_ids = np.repeat(rng.integers(0, len(LISTS), size=videos), per).astype(np.int64)
    label_ids = np.repeat(rng.integers(0, len(LABEL_SETS), size=videos), per).astype(np.int64)
    trim()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = HashIndex.from_arrays(version=1, lists=LISTS, label_sets=LABEL_SETS,
                                  vpdq=EntryArrays(rows, list_ids, label_ids), vpdq_mih=True)
    build_s = time.perf_counter() - t0
    trim()
    rss1 = rss_bytes()
    stats = index.stats()
    del rows, list_ids, label_ids

    def features(hashes: U8) -> list[str]:
        return [f"{h},90,{i}.000" for i, h in enumerate(hexes(hashes))]

    queries: list[tuple[list[str], int | None]] = []
    for i in range(args.vpdq_queries):
        if i % 2:
            v = int(rng.integers(0, videos))
            drift = rng.integers(0, 25, size=per)
            queries.append((features(flip_bits(rng, frames[v * per:(v + 1) * per], drift)), v))
        else:
            queries.append((features(random_hashes(rng, per)), None))
    for q, _ in queries[:3]:
        index.search_vpdq(q, args.radius, method="mih")  # build the probe plan

    wall: list[float] = []
    cpu: list[float] = []
    missed = 0
    gc.disable()
    try:
        for q, v in queries:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            matches = index.search_vpdq(q, args.radius, method="mih")
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            if v is not None and video_ids[v].tobytes().hex() not in {m.value for m in matches}:
                missed += 1
            if v is None and matches:
                missed += 1  # an unrelated random video cannot match
    finally:
        gc.enable()
    nb = min(args.baseline_queries, len(queries))
    brute: list[float] = []
    brute_cpu: list[float] = []
    mismatched = 0
    for q, _ in queries[:nb]:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        found = index.search_vpdq(q, args.radius, method="brute")
        brute.append(time.perf_counter() - t0)
        brute_cpu.append(time.thread_time() - c0)
        mismatched += found != index.search_vpdq(q, args.radius, method="mih")
    result: dict[str, Any] = {
        "case": "vpdq",
        "videos": videos,
        "frames_per_video": per,
        "frames": n,
        "build_s": build_s,
        "array_bytes_per_frame": stats["bytes:vpdq"] / n,
        "mih_bytes_per_frame": stats["bytes:vpdq_mih"] / n,
        "array_bytes_per_video": stats["bytes:vpdq"] / videos,
        "rss_bytes_per_frame": (rss1 - rss0) / n,
        "index": percentiles(wall),
        "index_cpu": percentiles(cpu),
        "numpy_brute": percentiles(brute),
        "numpy_brute_cpu": percentiles(brute_cpu),
        "planted_missed": missed,
        "brute_vs_index_mismatches": mismatched,
        "load": load(),
    }
    del index
    trim()
    return result


def markdown_vpdq(r: dict[str, Any], args: argparse.Namespace) -> str:
    ix, cpu = r["index"], r["index_cpu"]
    brute, brute_cpu = r["numpy_brute"], r["numpy_brute_cpu"]
    return "\n".join([
        f"vPDQ index, frame radius {args.radius}, queries of {r['frames_per_video']} frames "
        "(one video), one core; latency wall clock, CPU time of the thread in brackets",
        "",
        "| listed videos x frames | build s | array B/frame (tables) | B/video | RSS B/frame | "
        "p50 ms | p99 ms | max ms | brute p50 ms | brute/index CPU p50 | missed | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {r['videos']:,} x {r['frames_per_video']} | {r['build_s']:.1f} | "
        f"{r['array_bytes_per_frame']:.1f} ({r['mih_bytes_per_frame']:.1f}) | "
        f"{r['array_bytes_per_video']:,.0f} | {r['rss_bytes_per_frame']:.1f} | "
        f"{ix['p50_ms']:.2f} ({cpu['p50_ms']:.2f}) | {ix['p99_ms']:.2f} ({cpu['p99_ms']:.2f}) | "
        f"{ix['max_ms']:.1f} | {brute['p50_ms']:.0f} ({brute_cpu['p50_ms']:.0f}) | "
        f"{brute_cpu['p50_ms'] / cpu['p50_ms']:.1f}x | "
        f"{r['planted_missed']} | {r['load']} |",
        "",
        f"- index over {ix['n']} videos (half transcodes of a listed one), brute force over "
        f"{brute['n']}; brute/index result mismatches: {r['brute_vs_index_mismatches']}",
    ])


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"PDQ index, radius {args.radius}, sets of 8 hashes, one core "
        f"(numpy {np.__version__}, {os.cpu_count()} CPUs); latency wall clock, "
        "CPU time of the thread in brackets",
        "",
        "| case | entries | build s | array B/entry | RSS B/entry | p50 ms | p99 ms | "
        "max ms | numpy brute p50 ms | faiss flat p50 ms | planted missed | load 1/5/15 min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        faiss_p50 = f"{r['faiss_flat']['p50_ms']:.0f}" if r["faiss_flat"] else "n/a"
        ix, cpu = r["index"], r["index_cpu"]
        lines.append(
            f"| {r['case']} | {r['entries']:,} | {r['build_s']:.1f} | "
            f"{r['array_bytes_per_entry']:.1f} | {r['rss_bytes_per_entry']:.1f} | "
            f"{ix['p50_ms']:.2f} ({cpu['p50_ms']:.2f}) | "
            f"{ix['p99_ms']:.2f} ({cpu['p99_ms']:.2f}) | "
            f"{ix['max_ms']:.1f} | {r['numpy_brute']['p50_ms']:.0f} | {faiss_p50} | "
            f"{r['planted_missed']} | {r['load_before']} → {r['load_after']} |"
        )
    lines.append("")
    for r in results:
        lay = r["layout"]
        lines.append(
            f"- {r['case']}: {r['unique_hashes']:,} unique hashes; tables of "
            f"{lay.get('bits')} bits, probe radii at 31: {lay.get('thresholds_at_31')}; "
            f"index over {r['index']['n']} sets, baselines over {r['numpy_brute']['n']}; "
            f"brute/index result mismatches: {r['brute_vs_index_mismatches']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=1000, help="query sets of 8 hashes")
    ap.add_argument("--baseline-queries", type=int, default=10)
    ap.add_argument("--check", type=int, default=5, help="baseline sets compared with index")
    ap.add_argument("--radius", type=int, default=31)
    ap.add_argument("--bits", default="", help="chunk widths: one, or one per table")
    ap.add_argument("--tables", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="build threads")
    ap.add_argument("--no-clumpy", action="store_true", help="skip the clumpy list")
    ap.add_argument(
        "--no-alt", action="store_true", help="skip the smaller, slower 10-table layout"
    )
    ap.add_argument("--no-faiss", dest="faiss", action="store_false", help="skip faiss")
    ap.add_argument("--vpdq-videos", type=int, default=10_000, help="0 skips the vPDQ case")
    ap.add_argument("--vpdq-frames", type=int, default=60, help="frames per listed video")
    ap.add_argument("--vpdq-queries", type=int, default=200, help="query videos")
    ap.add_argument("--only-vpdq", action="store_true", help="skip the PDQ cases")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    results: list[dict[str, Any]] = []
    bits, tables = parse_bits(args.bits), args.tables
    vpdq: dict[str, Any] | None = None
    if args.vpdq_videos > 0:
        vpdq = run_vpdq(args, rng)
        print(f"# vpdq: done (load {load()})", file=sys.stderr)
    if args.only_vpdq:
        args.entries = 0
    data = random_hashes(rng, args.entries)
    if args.entries:
        results.append(run_case("random", data, args, rng, bits, tables))
        print(f"# random: done (load {load()})", file=sys.stderr)
    if args.entries and not args.no_alt:
        name = f"random, pdq_tables={ALT_TABLES}"
        results.append(run_case(name, data, args, rng, None, ALT_TABLES))
        print(f"# {name}: done (load {load()})", file=sys.stderr)
    del data
    trim()
    if args.entries and not args.no_clumpy:
        data = clumpy_hashes(rng, args.entries)
        results.append(run_case("clumpy", data, args, rng, bits, tables))
        del data
        trim()
        print(f"# clumpy: done (load {load()})", file=sys.stderr)
    if args.json:
        print(json.dumps({"radius": args.radius, "results": results, "vpdq": vpdq}, indent=2))
    else:
        if results:
            print(markdown(results, args))
        if vpdq is not None:
            print(("\n" if results else "") + markdown_vpdq(vpdq, args))
    bad = any(r["planted_missed"] or r["brute_vs_index_mismatches"]
              for r in [*results, *([vpdq] if vpdq else [])])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
