"""What the worker pool itself costs per task, next to concurrent.futures.ProcessPoolExecutor.

    python bench/worker_overhead.py [--tasks 5000] [--processes 2] [--sandbox-only]

For each pool: start (constructor until the first no-op result; for ours also until every
worker is ready, and how long one replacement worker takes to come up), the round trip of a
no-op task one at a time (submit -> result, p50/p99 in µs), the same through asyncio, with a
256 KiB argument, and the cost per task with many in flight (all submitted, then all
awaited). The target: the whole decode + hash of a 1 MP JPEG in <= 5 ms, so the pool should
add well under 1 ms per task.

Our pool runs twice with the forkserver, without and with the workers' sandbox
([workers] sandbox, sandbox.py), and the sandboxed figures are given as ratios to the
unsandboxed ones. `--sandbox-only` leaves out spawn and ProcessPoolExecutor.

First, what reading one reply costs the service (worker_results.py, which does not trust
the worker) next to a plain `pickle.loads`, in this process: a no-op's reply, an image's
fingerprint (two framings, 8 dihedral hashes each), and the extraction of a message with
200 images (bytes left out, as extract_and_fingerprint returns it).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
import platform
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

from mailfilter import sandbox, worker_results
from mailfilter.errors import WorkerFailure
from mailfilter.model import (
    Attachment,
    ExactHashes,
    Extraction,
    FrameFingerprint,
    ImageFingerprint,
)
from mailfilter.sandbox import Mode
from mailfilter.workers import StartMethod, WorkerPool

PAYLOAD = os.urandom(256 * 1024)


def noop() -> None:
    return None


def size(data: bytes) -> int:
    return len(data)


def die() -> None:
    os._exit(1)


Submit = Callable[..., "Future[Any]"]


def percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e6
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6
    return f"p50 {p50:7.1f} µs   p99 {p99:7.1f} µs"


def serial(submit: Submit, n: int, *args: Any) -> list[float]:
    fn = size if args else noop
    for _ in range(200):  # warm up
        submit(fn, *args).result()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        submit(fn, *args).result()
        out.append(time.perf_counter() - t)
    return out


def in_flight(submit: Submit, n: int) -> float:
    t = time.perf_counter()
    futures = [submit(noop) for _ in range(n)]
    for f in futures:
        f.result()
    return (time.perf_counter() - t) / n


def via_asyncio(run: Callable[[], Any], n: int) -> list[float]:
    async def main() -> list[float]:
        for _ in range(200):
            await run()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await run()
            out.append(time.perf_counter() - t)
        return out

    return asyncio.run(main())


@contextmanager
def timed(label: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    print(f"  {label:<34}{(time.perf_counter() - t) * 1e3:8.1f} ms")


def bench_ours(
    processes: int, tasks: int, start_method: StartMethod, sandbox: Mode = "auto"
) -> dict[str, float]:
    """Prints the figures; returns the main ones (seconds) for comparing runs."""
    out: dict[str, float] = {}
    print(f"\nWorkerPool ({start_method}, {processes} workers, sandbox {sandbox})")
    t = time.perf_counter()
    pool = WorkerPool(processes, memory_limit=0, max_tasks_per_worker=0,
                      start_method=start_method, sandbox=sandbox)
    pool.submit(noop, deadline=30).result()
    print(f"  {'start: first result':<34}{(time.perf_counter() - t) * 1e3:8.1f} ms")
    pool.wait_ready(60)
    out["start: all workers ready"] = time.perf_counter() - t
    print(f"  {'start: all workers ready':<34}{out['start: all workers ready'] * 1e3:8.1f} ms"
          f"   (confined in: {', '.join(pool.stats().sandbox) or 'nothing'})")
    starts = []
    for _ in range(10 if start_method == "forkserver" else 1):
        with suppress(WorkerFailure):
            pool.submit(die, deadline=30).result()
        t = time.perf_counter()
        pool.wait_ready(60)
        starts.append(pool.stats().last_start_seconds)
    out["worker start (median of crashes)"] = statistics.median(starts)
    print(f"  {'crash -> replacement ready':<34}{(time.perf_counter() - t) * 1e3:8.1f} ms"
          f"   (worker start itself {pool.stats().last_start_seconds * 1e3:.1f} ms, median of "
          f"{len(starts)}: {statistics.median(starts) * 1e3:.1f} ms)")

    def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return pool.submit(fn, *args, deadline=30)

    if start_method == "forkserver":
        samples = serial(submit, tasks)
        out["no-op round trip p50"] = statistics.median(samples)
        print(f"  {'no-op round trip':<34}{percentiles(samples)}")
        print(f"  {'no-op via asyncio run()':<34}"
              f"{percentiles(via_asyncio(lambda: pool.run(noop, deadline=30), tasks))}")
        samples = serial(submit, tasks, PAYLOAD)
        out["256 KiB argument round trip p50"] = statistics.median(samples)
        print(f"  {'256 KiB argument round trip':<34}{percentiles(samples)}")
        out["no-op, many in flight"] = in_flight(submit, tasks * 4)
        print(f"  {'no-op, many in flight':<34}{out['no-op, many in flight'] * 1e6:7.1f} µs/task")
    with timed("close"):
        pool.close()
    return out


def confine_cost(n: int = 30) -> float:
    """What sandbox.confine takes (Landlock rules for every allowed path + the seccomp
    filter), timed in forked children: median seconds."""
    plan = sandbox.plan("auto", tempfile.gettempdir())
    times = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            t = time.perf_counter()
            sandbox.confine(plan)
            os.write(w, struct.pack("d", time.perf_counter() - t))
            os._exit(0)
        os.close(w)
        times.append(struct.unpack("d", os.read(r, 8))[0])
        os.close(r)
        os.waitpid(pid, 0)
    return statistics.median(times)


def reply_decoding(n: int = 2000) -> None:
    """Reading one reply: worker_results.loads against pickle.loads (median of n each, in
    turns so both see the same machine)."""
    frame = FrameFingerprint(0, False, "a" * 64, 100, ("b" * 64,) * 8, "c" * 64, None,
                             ("d" * 64,) * 8)
    fingerprint = ImageFingerprint(ExactHashes("0" * 32, "1" * 40, "2" * 64), 640, 480, "JPEG",
                                   (frame, frame), 1)
    extraction = Extraction(tuple(
        Attachment(f"2/photos.zip/{i}.jpg", f"{i}.jpg", "image/jpeg", b"", ("application/zip",))
        for i in range(200)))
    print("\nreading one reply: worker_results.loads / pickle.loads (median)")
    for name, value in (("no-op", None), ("image fingerprint", fingerprint),
                        ("extraction, 200 images", extraction)):
        ours = worker_results.dumps((1, value))
        plain = pickle.dumps((1, value), pickle.HIGHEST_PROTOCOL)
        reps = max(20, n // 10) if value is extraction else n
        a: list[float] = []
        b: list[float] = []
        for _ in range(reps):
            t = time.perf_counter()
            worker_results.loads(ours)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            pickle.loads(plain)
            b.append(time.perf_counter() - t)
        restricted, trusting = statistics.median(a), statistics.median(b)
        print(f"  {name:<34}{restricted / trusting:6.1f}x   ({trusting * 1e6:8.1f} -> "
              f"{restricted * 1e6:8.1f} µs, {len(ours)} bytes)")


def bench_executor(processes: int, tasks: int, start_method: str) -> None:
    print(f"\nProcessPoolExecutor ({start_method}, {processes} workers)")
    ctx = multiprocessing.get_context(start_method)
    t = time.perf_counter()
    executor: Executor = ProcessPoolExecutor(processes, mp_context=ctx)
    executor.submit(noop).result()
    print(f"  {'start: first result':<34}{(time.perf_counter() - t) * 1e3:8.1f} ms")
    submit = executor.submit
    print(f"  {'no-op round trip':<34}{percentiles(serial(submit, tasks))}")

    async def run_in_executor() -> None:
        await asyncio.get_running_loop().run_in_executor(executor, noop)

    print(f"  {'no-op via run_in_executor()':<34}"
          f"{percentiles(via_asyncio(run_in_executor, tasks))}")
    print(f"  {'256 KiB argument round trip':<34}{percentiles(serial(submit, tasks, PAYLOAD))}")
    print(f"  {'no-op, many in flight':<34}{in_flight(submit, tasks * 4) * 1e6:7.1f} µs/task")
    print(f"  {'crash -> replacement':<34}     n/a   (a dead worker breaks the executor)")
    with timed("close"):
        executor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--sandbox-only", action="store_true")
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}, "
          f"{args.tasks} tasks per measurement")
    with WorkerPool(1, memory_limit=0, sandbox="off"):  # the forkserver starts here, not
        pass  # inside the first measurement
    reply_decoding()
    print(f"\nconfine() itself, in a fresh process: {confine_cost() * 1e6:.0f} µs (median)")
    off = bench_ours(args.processes, args.tasks, "forkserver", "off")
    on = bench_ours(args.processes, args.tasks, "forkserver", "auto")
    print("\nsandbox on / off (forkserver)")
    for name, seconds in on.items():
        print(f"  {name:<34}{seconds / off[name]:6.2f}x"
              f"   ({off[name] * 1e6:9.1f} -> {seconds * 1e6:9.1f} µs)")
    if args.sandbox_only:
        return
    bench_ours(args.processes, args.tasks, "spawn")
    bench_executor(args.processes, args.tasks, "forkserver")
    bench_executor(args.processes, args.tasks, "fork")


if __name__ == "__main__":
    main()
