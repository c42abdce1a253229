"""The worker pool, with real worker processes (no mocks).

Task functions live in tests/worker_tasks.py: workers import them by name.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import worker_tasks as wt
from waiting import wait_until

from mailfilter.errors import SkipImage, WorkerFailure
from mailfilter.settings import WorkerSettings
from mailfilter.workers import RemoteError, WorkerPool

TESTS_DIR = str(Path(__file__).resolve().parent)
MB = 1024 * 1024


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(processes=2, memory_limit=0, max_tasks_per_worker=0) as p:
        assert p.wait_ready(30)
        yield p


def worker_pids(pool: WorkerPool) -> set[int]:
    """The pid of every worker: one slow task per worker, all at once."""
    futures = [pool.submit(wt.sleep_then_pid, 0.3, deadline=10) for _ in range(pool.processes)]
    pids = {f.result(timeout=10) for f in futures}
    assert len(pids) == pool.processes
    return pids


def gone(pid: int) -> bool:
    """No such process, or at most a zombie being reaped by its parent (the forkserver)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- results and exceptions --------------------------------------------------------------


def test_results_round_trip(pool: WorkerPool) -> None:
    assert pool.submit(wt.add, 2, 3, deadline=5).result() == 5
    value = {"bytes": b"\x00" * 1000, "nested": [1, (2.5, None)], "text": "é"}
    assert pool.submit(wt.echo, value, deadline=5).result() == value
    # large bytes travel beside the pickle, and arrive as bytes; larger than the direct-write
    # limit, this one is written by the dispatcher thread
    big = os.urandom(3 * MB)
    back = pool.submit(wt.echo, big, deadline=5).result()
    assert type(back) is bytes and back == big
    small, mutable = os.urandom(100 * 1024), bytearray(os.urandom(200 * 1024))
    assert pool.submit(wt.echo, (small, mutable), deadline=5).result() == (small, mutable)
    assert pool.submit(wt.concat, small, big, deadline=5).result() == small + big


def test_skip_image_round_trips_with_its_attributes(pool: WorkerPool) -> None:
    with pytest.raises(SkipImage) as info:
        pool.submit(wt.raise_skip, "too-many-pixels", "20000x20000", deadline=5).result()
    assert info.value.reason == "too-many-pixels"
    assert info.value.detail == "20000x20000"
    assert str(info.value) == "too-many-pixels: 20000x20000"
    # the worker's traceback is kept as the cause
    assert "raise_skip" in str(info.value.__cause__)


def test_other_exceptions_round_trip(pool: WorkerPool) -> None:
    with pytest.raises(ValueError, match="bad input"):
        pool.submit(wt.raise_value_error, "bad input", deadline=5).result()


def test_what_cannot_cross_processes(pool: WorkerPool) -> None:
    with pytest.raises(RemoteError, match="_Unpicklable: cannot cross processes"):
        pool.submit(wt.raise_unpicklable, deadline=5).result()
    with pytest.raises(RemoteError, match="could not be pickled"):
        pool.submit(wt.return_unpicklable, deadline=5).result()
    with pytest.raises(RemoteError, match="SystemExit"):  # never exits the caller
        pool.submit(wt.call_exit, deadline=5).result()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.submit(lambda: None, deadline=5)  # not module-level: refused at submit
    assert pool.submit(wt.add, 1, 1, deadline=5).result() == 2
    assert pool.stats().crashes == 0


def test_bad_deadline_is_refused(pool: WorkerPool) -> None:
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="deadline"):
            pool.submit(wt.noop, deadline=bad)


# --- deadlines, crashes, memory --------------------------------------------------------


def test_deadline_kills_the_worker_and_the_pool_goes_on(pool: WorkerPool) -> None:
    before = worker_pids(pool)
    other = pool.submit(wt.sleep_then, 0.8, "other", deadline=5)
    start = time.monotonic()
    runaway = pool.submit(wt.spin, 30, deadline=0.5)
    with pytest.raises(WorkerFailure) as info:
        runaway.result(timeout=10)
    elapsed = time.monotonic() - start
    assert info.value.reason == "deadline"
    assert 0.45 <= elapsed < 1.2
    assert other.result(timeout=5) == "other"
    assert pool.submit(wt.add, 1, 2, deadline=5).result() == 3
    stats = pool.stats()
    assert stats.timeouts == 1 and stats.crashes == 0
    assert wait_until(lambda: pool.stats().alive == 2)
    assert worker_pids(pool) != before


@pytest.mark.parametrize("crash", [wt.segfault, wt.hard_exit])
def test_a_crashing_task_kills_only_its_worker(pool: WorkerPool, crash: object) -> None:
    other = pool.submit(wt.sleep_then, 0.4, "other", deadline=5)
    time.sleep(0.05)  # the sleeper is running on one worker, the crash gets the other
    with pytest.raises(WorkerFailure) as info:
        pool.submit(crash, deadline=5).result(timeout=5)  # type: ignore[arg-type]
    assert info.value.reason == "worker-crashed"
    assert other.result(timeout=5) == "other"
    assert [pool.submit(wt.square, i, deadline=5).result() for i in range(5)] == [
        0, 1, 4, 9, 16
    ]
    assert pool.stats().crashes == 1


def scratch(pool: WorkerPool) -> Path:
    """The one directory sandboxed workers may write to."""
    assert pool.scratch is not None
    return pool.scratch


def test_worker_killed_from_outside(pool: WorkerPool) -> None:
    pid_file = scratch(pool) / "pid"
    future = pool.submit(wt.write_pid_then_sleep, str(pid_file), 5, deadline=10)
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text())
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(WorkerFailure) as info:
        future.result(timeout=5)
    assert info.value.reason == "worker-crashed"
    assert "SIGKILL" in info.value.detail
    assert pool.submit(wt.add, 2, 2, deadline=5).result() == 4
    assert pool.stats().crashes == 1


def test_idle_worker_killed_from_outside_is_replaced(pool: WorkerPool) -> None:
    victims = worker_pids(pool)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: pool.stats().crashes == 2 and pool.stats().alive == 2)
    assert pool.wait_ready(10)
    assert worker_pids(pool).isdisjoint(victims)


@pytest.mark.parametrize("allocate", [wt.allocate, wt.allocate_numpy])
def test_memory_limit(allocate: object) -> None:
    with WorkerPool(processes=1, memory_limit=300 * MB, max_tasks_per_worker=0) as pool:
        assert pool.submit(wt.address_space_limit, deadline=5).result() == 300 * MB
        assert pool.submit(allocate, 20 * MB, deadline=5).result() == 20 * MB  # type: ignore[arg-type]
        with pytest.raises(WorkerFailure) as info:
            pool.submit(allocate, 1024 * MB, deadline=5).result(timeout=10)  # type: ignore[arg-type]
        assert info.value.reason in ("memory-limit", "worker-crashed")
        assert pool.submit(wt.add, 1, 2, deadline=5).result() == 3
        stats = pool.stats()
        assert stats.memory_limits + stats.crashes == 1


def test_workers_use_one_blas_thread(pool: WorkerPool) -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert pool.submit(wt.environment, name, deadline=5).result() == "1"


def test_no_task_lost_or_run_twice() -> None:
    """Crashes, deadline kills and recycling in the middle of a stream of tasks: every
    future resolves, every good task ran exactly once (mark_once fails on a second run)."""
    with WorkerPool(processes=3, memory_limit=0, max_tasks_per_worker=4) as pool:
        marks = scratch(pool) / "marks"
        marks.mkdir()
        futures: list[tuple[str, Future[Any]]] = []
        for i in range(60):
            if i % 10 == 3:
                futures.append(("crash", pool.submit(wt.hard_exit, deadline=5)))
            elif i % 10 == 7:
                futures.append(("slow", pool.submit(wt.spin, 10, deadline=0.2)))
            else:
                futures.append(("ok", pool.submit(wt.mark_once, str(marks), str(i), 0.01,
                                                  deadline=5)))
        for kind, future in futures:
            if kind == "ok":
                assert future.result(timeout=20)
            else:
                with pytest.raises(WorkerFailure):
                    future.result(timeout=20)
        marked = sorted(int(p.name) for p in marks.iterdir())
        assert marked == [i for i in range(60) if i % 10 not in (3, 7)]
        stats = pool.stats()
        assert stats.completed == len(marked)
        assert stats.crashes == 6 and stats.timeouts == 6


# --- recycling, initializer, settings ---------------------------------------------------


def test_recycling_after_max_tasks() -> None:
    with WorkerPool(processes=1, memory_limit=0, max_tasks_per_worker=3) as pool:
        pids = [pool.submit(wt.pid, deadline=5).result() for _ in range(7)]
        assert pids[0] == pids[1] == pids[2]
        assert pids[3] == pids[4] == pids[5]
        assert len({pids[0], pids[3], pids[6]}) == 3
        stats = pool.stats()
        assert stats.restarts == 2 and stats.crashes == 0 and stats.completed == 7


def test_initializer_runs_once_per_worker() -> None:
    with WorkerPool(processes=1, memory_limit=0, initializer=wt.initializer) as pool:
        assert all(pool.submit(wt.was_initialized, deadline=5).result() for _ in range(3))


def test_from_settings() -> None:
    settings = WorkerSettings(processes=1, memory_limit="512MiB", max_tasks_per_worker=7)
    with WorkerPool.from_settings(settings) as pool:
        assert pool.submit(wt.address_space_limit, deadline=5).result() == 512 * MB
        assert pool.stats().processes == 1
    with WorkerPool(processes=0, memory_limit=0) as pool:
        assert pool.processes == WorkerPool.default_processes() >= 1


def test_workers_get_the_parents_sys_path(pool: WorkerPool) -> None:
    # that is how they import worker_tasks at all; with the forkserver it comes with every
    # new process (multiprocessing's preparation data), not from when the server started
    assert pool.start_method == "forkserver"
    assert TESTS_DIR in pool.submit(wt.sys_path, deadline=5).result()


def test_spawn_start_method() -> None:
    with WorkerPool(processes=1, memory_limit=0, start_method="spawn") as pool:
        assert pool.start_method == "spawn"
        assert pool.submit(wt.add, 20, 22, deadline=20).result() == 42
        with pytest.raises(WorkerFailure, match="worker-crashed"):
            pool.submit(wt.hard_exit, deadline=20).result()


# --- concurrency --------------------------------------------------------------------------


def test_submit_from_many_threads(pool: WorkerPool) -> None:
    results: dict[int, list[int]] = {}

    def client(n: int) -> None:
        futures = [pool.submit(wt.add, n, i, deadline=5) for i in range(100)]
        results[n] = [f.result(timeout=10) for f in futures]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [n + i for i in range(100)] for n in range(8)}
    assert pool.stats().completed == 800


async def test_run_from_many_coroutines(pool: WorkerPool) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:  # the loop keeps running while tasks are out
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(pool.run(wt.square, i, deadline=5) for i in range(200)))
    slow = await asyncio.gather(*(pool.run(wt.sleep_then, 0.1, i, deadline=5) for i in range(6)))
    stop.set()
    await tick_task
    assert results == [i * i for i in range(200)]
    assert slow == list(range(6))
    assert ticks >= 10
    with pytest.raises(SkipImage):
        await pool.run(wt.raise_skip, "r", "d", deadline=5)


async def test_cancelling_run_leaves_the_pool_working(pool: WorkerPool) -> None:
    running = [asyncio.create_task(pool.run(wt.sleep_then, 0.3, i, deadline=5)) for i in range(2)]
    queued = asyncio.create_task(pool.run(wt.sleep_then, 0.3, "never", deadline=5))
    await asyncio.sleep(0.1)
    assert pool.stats().queued == 1
    for task in [*running, queued]:
        task.cancel()
    for task in [*running, queued]:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await pool.run(wt.add, 1, 2, deadline=5) == 3
    # the running ones finished (results dropped); the queued one never ran
    assert wait_until(lambda: pool.stats().busy == 0)
    assert pool.stats().completed == 3


def test_map_keeps_order_and_yields_failures_in_place(pool: WorkerPool) -> None:
    assert list(pool.map(wt.square, range(50), deadline=5)) == [i * i for i in range(50)]
    out = list(pool.map(wt.crash_if, [1, 2, -1, 3, 4], deadline=5))
    assert out[:2] == [1, 2] and out[3:] == [3, 4]
    assert isinstance(out[2], WorkerFailure) and out[2].reason == "worker-crashed"


def test_map_prefetch_is_bounded(pool: WorkerPool) -> None:
    consumed = 0

    def items() -> Iterator[int]:
        nonlocal consumed
        for i in range(1000):
            consumed += 1
            yield i

    results = pool.map(wt.square, items(), deadline=5, prefetch=4)
    assert next(results) == 0
    assert consumed <= 5
    results.close()  # abandons the rest: the tasks submitted ahead are cancelled
    assert wait_until(lambda: pool.stats().busy == 0 and pool.stats().queued == 0)


# --- stats and close ----------------------------------------------------------------------


def test_stats(pool: WorkerPool) -> None:
    blocker = [pool.submit(wt.sleep_then, 0.3, None, deadline=5) for _ in range(3)]
    time.sleep(0.1)
    stats = pool.stats()
    assert (stats.processes, stats.alive, stats.busy, stats.queued) == (2, 2, 2, 1)
    for f in blocker:
        f.result()
    stats = pool.stats()
    assert (stats.busy, stats.queued, stats.completed) == (0, 0, 3)
    assert 0 < stats.last_start_seconds < 5


def _open_fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


def test_close_leaves_no_processes_threads_or_pipes() -> None:
    with WorkerPool(processes=1, memory_limit=0) as warm:  # the forkserver is up from here
        warm.submit(wt.noop, deadline=5).result()
    fds_before = _open_fds()
    threads_before = threading.active_count()
    pool = WorkerPool(processes=3, memory_limit=0, max_tasks_per_worker=2)
    pids = worker_pids(pool)
    for _ in range(10):  # some recycling, so some workers were replaced already
        pool.submit(wt.noop, deadline=5).result()
    pool.close()
    assert all(gone(pid) for pid in pids)
    assert not [p for p in multiprocessing.active_children() if p.name == "mailfilter-worker"]
    assert threading.active_count() == threads_before
    assert _open_fds() <= fds_before
    assert pool.stats().alive == 0
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(wt.noop, deadline=5)
    pool.close()  # idempotent


def test_close_waits_for_queued_tasks() -> None:
    pool = WorkerPool(processes=1, memory_limit=0)
    futures = [pool.submit(wt.sleep_then, 0.05, i, deadline=5) for i in range(4)]
    pool.close(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0, 1, 2, 3]


def test_close_without_waiting_fails_what_is_unfinished() -> None:
    pool = WorkerPool(processes=1, memory_limit=0)
    assert pool.wait_ready(30)
    running = pool.submit(wt.spin, 30, deadline=60)
    queued = pool.submit(wt.noop, deadline=60)
    time.sleep(0.1)
    start = time.monotonic()
    pool.close(wait=False)
    assert time.monotonic() - start < 2
    for future in (running, queued):
        with pytest.raises(WorkerFailure, match="worker-crashed"):
            future.result(timeout=0)


# --- time limits inside a task -------------------------------------------------------------


def test_time_limit_ends_one_piece_of_a_task_not_the_task(pool: WorkerPool) -> None:
    got = pool.submit(wt.spin_in_time_limits, 0.1, 3, 0.3, deadline=5).result(timeout=10)
    assert got == ["limit", "limit", "limit"]
    got = pool.submit(wt.spin_in_time_limits, 1.0, 2, 0.05, deadline=5).result(timeout=10)
    assert got == ["done", "done"]
    assert pool.stats().timeouts == 0 and pool.stats().crashes == 0


def test_task_deadline_still_applies_after_a_time_limit(pool: WorkerPool) -> None:
    start = time.monotonic()
    with pytest.raises(WorkerFailure) as info:
        pool.submit(wt.time_limit_then_spin, 5.0, 30, deadline=0.5).result(timeout=10)
    assert info.value.reason == "deadline"
    assert time.monotonic() - start < 2.0
