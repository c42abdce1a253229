"""The workers' sandbox (mailfilter/sandbox.py), with real worker processes and the real
kernel: what a confined worker cannot reach, and that the decoders still work inside it.

Needs Landlock (Linux >= 5.13) and seccomp: skipped where the kernel has neither, since then
mode "require" (what these tests use) refuses to start a pool, which one test checks.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_tasks as wt

from mailfilter import sandbox
from mailfilter.extract import extract
from mailfilter.settings import ExtractSettings
from mailfilter.workers import WorkerPool

pytestmark = pytest.mark.skipif(
    not set(sandbox.REQUIRED) <= set(sandbox.available()),
    reason="this kernel cannot confine files and network (Landlock, seccomp)",
)


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, Path]:
    """A quarantine and a store directory, each with a file in it."""
    quarantine, store = tmp_path / "quarantine", tmp_path / "store"
    for directory in (quarantine, store):
        directory.mkdir()
        (directory / "secret").write_bytes(b"not for workers")
    return quarantine, store


@pytest.fixture
def pool(state: tuple[Path, Path]) -> Iterator[WorkerPool]:
    with WorkerPool(processes=1, memory_limit=0, max_tasks_per_worker=0, sandbox="require",
                    protect=state) as p:
        assert p.wait_ready(30)
        yield p


def test_the_workers_say_what_confines_them(pool: WorkerPool) -> None:
    sandbox.check("require")  # (would raise SandboxUnavailable on a kernel without)
    assert set(pool.stats().sandbox) == set(sandbox.available()) >= {"files", "network"}


def test_a_worker_cannot_open_the_quarantine_or_the_store(
    pool: WorkerPool, state: tuple[Path, Path]
) -> None:
    for directory in state:
        with pytest.raises(PermissionError):
            pool.submit(wt.read_bytes, str(directory / "secret"), deadline=5).result()
        with pytest.raises(PermissionError):
            pool.submit(wt.list_dir, str(directory), deadline=5).result()
        with pytest.raises(PermissionError):
            pool.submit(wt.write_bytes, str(directory / "new"), b"x", deadline=5).result()
        assert not (directory / "new").exists()
    # nor anything else of the service's: its configuration, its home, its /proc entries
    for path in ("/etc/passwd", str(Path.home()), f"/proc/{os.getpid()}/environ"):
        with pytest.raises(PermissionError):
            pool.submit(wt.read_bytes, path, deadline=5).result()


def test_without_the_sandbox_the_same_tasks_succeed(state: tuple[Path, Path]) -> None:
    """The control: what the tests above refuse is the sandbox's doing."""
    quarantine, _store = state
    with WorkerPool(processes=1, memory_limit=0, sandbox="off") as pool:
        assert pool.stats().sandbox == () and pool.scratch is None
        secret = str(quarantine / "secret")
        assert pool.submit(wt.read_bytes, secret, deadline=5).result() == b"not for workers"


def test_a_worker_has_a_private_scratch_directory(pool: WorkerPool) -> None:
    assert pool.scratch is not None
    target = pool.scratch / "file"
    assert pool.submit(wt.write_bytes, str(target), b"ok", deadline=5).result() == 2
    assert target.read_bytes() == b"ok"
    assert pool.submit(wt.environment, "TMPDIR", deadline=5).result() == str(pool.scratch)
    scratch = pool.scratch
    pool.close()
    assert not scratch.exists()  # what workers leave there goes with the pool


def test_a_worker_cannot_connect_to_redis(pool: WorkerPool, redis_url: str) -> None:
    # the control: Redis answers this process on 127.0.0.1:6379 (conftest's redis_url
    # fixture made sure something answers; only the default address is tried here)
    if redis_url != "redis://127.0.0.1:6379/0":
        pytest.skip("Redis is not on 127.0.0.1:6379 here")
    socket.create_connection(("127.0.0.1", 6379), timeout=5).close()
    with pytest.raises(PermissionError):
        pool.submit(wt.tcp_connect, "127.0.0.1", 6379, deadline=5).result()
    with pytest.raises(PermissionError):
        pool.submit(wt.tcp_connect, "::1", 6379, deadline=5).result()
    with pytest.raises(PermissionError):
        pool.submit(wt.udp_socket, deadline=5).result()


def test_a_worker_cannot_connect_to_a_unix_socket(pool: WorkerPool, tmp_path: Path) -> None:
    path = str(tmp_path / "listener")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        with pytest.raises(PermissionError):
            pool.submit(wt.unix_connect, path, deadline=5).result()


def test_a_worker_cannot_signal_the_service(pool: WorkerPool) -> None:
    if "signals" not in sandbox.available():
        pytest.skip("Landlock ABI < 6: no signal scoping on this kernel")
    with pytest.raises(PermissionError):
        pool.submit(wt.send_signal, os.getpid(), signal.SIGTERM, deadline=5).result()


def test_a_directory_holding_a_protected_path_is_not_readable() -> None:
    inside = Path(sys.prefix) / "quarantine"
    plan = sandbox.plan("auto", None, [inside])
    assert sys.prefix in plan.dropped and sys.prefix not in plan.read
    assert "/usr" in plan.read


def test_the_decoders_work_in_a_confined_worker(pool: WorkerPool) -> None:
    """The extraction corpus (MIME, zip, tar, gzip, 7z, RAR through the bsdtar tool, TNEF,
    PDF with rendered pages, S/MIME, …) gives the same result in a confined worker as
    here. Images, video and the rest of the decoders are run confined by their own tests
    (their pools are sandboxed by default)."""
    extract_tests = str(Path(__file__).parent / "extract")
    if extract_tests not in sys.path:  # (where pytest puts it when it collects them)
        sys.path.insert(0, extract_tests)
    raw, _expected, _picture = importlib.import_module("test_corpus").CORPUS
    assert pool.submit(wt.extract_message, raw, deadline=60).result() == extract(
        raw, ExtractSettings()
    )

