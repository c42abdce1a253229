"""How fast do hash lists get into the store, and out of it into a filter's memory?

1. Generates a `pdq` list file of `--lines` random PDQ hashes (default 1 million) and
   times ``mailfilter hashes import --format pdq`` on it, as an operator runs it (a new
   process: interpreter start, parsing, merging, writing, the atomic switch).
   Target: 30 s for 1 million lines.
2. Fills the store with `--entries` PDQ entries (default 10 million; written through the
   store's import path from generated arrays, not from a file) and times a cold
   ``load_index()`` in a fresh process, as a filter instance does at start: reading the
   lists, then building the in-memory index. Target: 20 s for 10 million.

Everything goes under a unique key prefix (``mfbench:…``), deleted at the end, so a
shared Redis is left as it was; `--backend local` measures the SQLite store in a
temporary directory instead.

`--cluster` measures the same on the single Redis and then on a Redis Cluster of three
masters and three replicas that it starts for the run (real `redis-server` processes on
free ports, in a temporary directory, stopped at the end: `tests/ha/servers.py`, the
starter the HA tests use), and prints the two side by side. All of a deployment's keys
are in one slot, so the cluster writes to one master (which also feeds its replica and
waits for it to acknowledge the commit): this shows what the cluster costs, not a
speed-up.

    python bench/import_speed.py [--redis-url redis://127.0.0.1:6379/0] [--lines 1000000]
                                 [--entries 10000000] [--backend redis|local] [--cluster]
                                 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mailfilter.matching.backends import open_store
from mailfilter.matching.formats import Column, LabelTable, ParsedBatch
from mailfilter.matching.store_redis import RedisHashStore
from mailfilter.settings import StoreSettings

REPO = Path(__file__).resolve().parents[1]

IMPORT_TARGET = 30.0
LOAD_TARGET = 20.0

LOAD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from mailfilter.matching.backends import open_store
from mailfilter.matching.store import read_index_arrays, build_index
from mailfilter.settings import StoreSettings
store = open_store(StoreSettings.model_validate_json(sys.argv[1]))
t1 = time.perf_counter()
arrays = store._retrying(read_index_arrays)
t2 = time.perf_counter()
index = build_index(arrays)
t3 = time.perf_counter()
print(json.dumps({"entries": len(index), "version": index.version, "imports": t1 - t0,
                  "read": t2 - t1, "build": t3 - t2, "total": t3 - t1}))
"""


def write_pdq_file(path: Path, lines: int, seed: int = 1) -> float:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for start in range(0, lines, 100_000):
            n = min(100_000, lines - start)
            rows = rng.integers(0, 256, (n, 32), dtype=np.uint8)
            fh.write("".join(f"{row.tobytes().hex()},100\n" for row in rows))
    return time.perf_counter() - started


def hashes_command() -> list[str]:
    """`mailfilter hashes` as a command line: the real one when wired into the CLI."""
    from mailfilter import cli
    from mailfilter.cli.hashes import hashes

    if cli.cli.commands.get("hashes") is hashes:
        return [sys.executable, "-m", "mailfilter", "hashes"]
    return [sys.executable, "-c",
            "from mailfilter.cli.hashes import hashes; hashes()"]


def write_config(path: Path, settings: StoreSettings) -> None:
    lines = ["[store]"]
    if settings.redis_url:
        lines += [f'redis_url = "{settings.redis_url}"', f'key_prefix = "{settings.key_prefix}"']
    if settings.redis_cluster:
        lines.append("redis_cluster = true")
    lines.append(f'path = "{settings.path}"')
    path.write_text("\n".join(lines) + "\n")


def generated_batches(entries: int, seed: int = 2) -> Iterator[ParsedBatch]:
    rng = np.random.default_rng(seed)
    table = LabelTable()
    label_ids = [table.id_of(("bench",)), table.id_of(("bench", "second"))]
    for start in range(0, entries, 1_000_000):
        n = min(1_000_000, entries - start)
        col = Column()
        col.values = bytearray(rng.integers(0, 256, (n, 32), dtype=np.uint8).tobytes())
        col.label_ids = array("I", np.asarray(label_ids, np.uint32)[rng.integers(0, 2, n)]
                              .tobytes())
        col.added = array("q", bytes(8 * n))
        yield ParsedBatch(labels=table, columns={"pdq": col}, lines=n)


def run(args: argparse.Namespace, cluster_url: str = "") -> dict[str, Any]:
    """One backend: the local store, the Redis at `args.redis_url`, or (`cluster_url`) a
    Redis Cluster reached through that node."""
    workdir = Path(tempfile.mkdtemp(prefix="mfbench-"))
    prefix = f"mfbench:{uuid.uuid4().hex[:12]}"
    if cluster_url:
        settings = StoreSettings(redis_url=cluster_url, redis_cluster=True, key_prefix=prefix,
                                 path=workdir / "unused")
    elif args.backend == "redis":
        settings = StoreSettings(redis_url=args.redis_url, key_prefix=prefix,
                                 path=workdir / "unused")
    else:
        settings = StoreSettings(path=workdir / "store")
    backend = "redis cluster (3 masters + 3 replicas)" if cluster_url else args.backend
    results: dict[str, Any] = {"backend": backend, "lines": args.lines,
                               "entries": args.entries, "cpus": os.cpu_count()}
    try:
        listing = workdir / "list.pdq"
        results["generate_file_seconds"] = round(write_pdq_file(listing, args.lines), 2)
        results["file_bytes"] = listing.stat().st_size
        config = workdir / "mailfilter.toml"
        write_config(config, settings)

        started = time.perf_counter()
        proc = subprocess.run(
            [*hashes_command(), "import", "--config", str(config), "--list", "bench-file",
             "--format", "pdq", "--replace", "--json", str(listing)],
            capture_output=True, text=True, cwd=REPO,
        )
        results["import_seconds"] = round(time.perf_counter() - started, 2)
        if proc.returncode != 0:
            raise SystemExit(f"import failed ({proc.returncode}): {proc.stderr.strip()}")
        report = json.loads(proc.stdout)
        results["import_loaded"] = report["loaded_total"]
        results["import_lines_per_second"] = round(args.lines / results["import_seconds"])

        with open_store(settings) as store:
            store.remove("bench-file")  # the cold load measures exactly --entries
            started = time.perf_counter()
            filled = store.import_list("bench-load", "generated", generated_batches(args.entries),
                                       replace=True)
            results["fill_seconds"] = round(time.perf_counter() - started, 2)
            assert filled.totals == {"pdq": args.entries}, filled.totals

        proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, settings.model_dump_json()],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"cold load failed: {proc.stderr.strip()}")
        load = json.loads(proc.stdout)
        assert load["entries"] == args.entries, load
        results["load_read_seconds"] = round(load["read"], 2)
        results["load_build_seconds"] = round(load["build"], 2)
        results["load_seconds"] = round(load["total"], 2)
    finally:
        if settings.redis_url:
            with RedisHashStore(settings) as store:
                results["keys_deleted"] = store.purge()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def markdown(r: dict[str, Any]) -> str:
    # Targets scale linearly with the sizes asked for (30 s per 1M lines, 20 s per 10M).
    import_target = IMPORT_TARGET * r["lines"] / 1e6
    load_target = LOAD_TARGET * r["entries"] / 1e7

    def met(value: float, target: float) -> str:
        return "yes" if value <= target else "NO"

    size_l = f"{r['lines']:,} lines"
    size_e = f"{r['entries']:,} PDQ"
    rows = [
        ("`hashes import` of a pdq file (new process)", size_l, r["import_seconds"],
         f"{import_target:.1f} s", met(r["import_seconds"], import_target)),
        ("cold `load_index()`: read lists", size_e, r["load_read_seconds"], "", ""),
        ("cold `load_index()`: build index", size_e, r["load_build_seconds"], "", ""),
        ("cold `load_index()` total", size_e, r["load_seconds"], f"{load_target:.1f} s",
         met(r["load_seconds"], load_target)),
        ("(filling the store for the load; no target)", size_e, r["fill_seconds"], "", ""),
    ]
    out = [f"Backend: {r['backend']}, {r['cpus']} CPUs; import rate "
           f"{r['import_lines_per_second']:,} lines/s.", "",
           "| step | size | seconds | target | met |", "|---|---|---:|---|---|"]
    out += [f"| {a} | {b} | {c:.2f} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(out)


def side_by_side(single: dict[str, Any], cluster: dict[str, Any]) -> str:
    rows = [("`hashes import` of a pdq file (new process)", "import_seconds", single["lines"]),
            ("import rate, lines/s", "import_lines_per_second", single["lines"]),
            ("filling the store (import path, generated)", "fill_seconds", single["entries"]),
            ("cold `load_index()`: read lists", "load_read_seconds", single["entries"]),
            ("cold `load_index()`: build index", "load_build_seconds", single["entries"]),
            ("cold `load_index()` total", "load_seconds", single["entries"])]
    out = [f"{single['cpus']} CPUs, the cluster's six servers on this machine too.", "",
           f"| step | size | {single['backend']} | {cluster['backend']} | cluster/single |",
           "|---|---|---:|---:|---:|"]
    for label, key, size in rows:
        a, b = single[key], cluster[key]
        out.append(f"| {label} | {size:,} | {a:,} | {b:,} | {b / a:.2f}x |")
    return "\n".join(out)


def run_with_cluster(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from ha.servers import ClusterLayout  # the starter the HA tests use

    single = run(args)
    with tempfile.TemporaryDirectory(prefix="mfbench-cluster-") as root, \
            ClusterLayout(Path(root)).start() as layout:
        cluster = run(args, cluster_url=layout.url)
    return {"single": single, "cluster": cluster}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    parser.add_argument("--backend", choices=("redis", "local"), default="redis")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--cluster", action="store_true",
                        help="also on a Redis Cluster started for the run, side by side")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.cluster:
        both = run_with_cluster(args)
        print(json.dumps(both) if args.json else side_by_side(both["single"], both["cluster"]))
        return
    results = run(args)
    print(json.dumps(results) if args.json else markdown(results))


if __name__ == "__main__":
    main()
