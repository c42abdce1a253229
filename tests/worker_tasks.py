"""Task functions for tests/test_workers.py. They run inside worker processes, so they live in
a module the workers can import (tests/ is on sys.path via conftest.py, and workers get the
parent's sys.path)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from mailfilter.errors import SkipImage


def noop() -> None:
    return None


def add(a: int, b: int) -> int:
    return a + b


def echo(value: object) -> object:
    return value


def square(x: int) -> int:
    return x * x


def pid() -> int:
    return os.getpid()


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def spin(seconds: float) -> int:
    """Busy CPU loop, no syscalls: only SIGKILL stops it."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def raise_skip(reason: str, detail: str) -> None:
    raise SkipImage(reason, detail)


def raise_value_error(text: str) -> None:
    raise ValueError(text)


class _Unpicklable(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = __import__("threading").Lock()


def raise_unpicklable() -> None:
    raise _Unpicklable("cannot cross processes")


def return_unpicklable() -> object:
    return lambda: None


def call_exit() -> None:
    sys.exit(3)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


def hard_exit() -> None:
    os._exit(1)


def allocate(nbytes: int) -> int:
    block = bytearray(nbytes)
    return len(block)


def allocate_numpy(nbytes: int) -> int:
    import numpy as np

    block = np.ones(nbytes, dtype=np.uint8)
    return int(block.size)


def sys_path() -> list[str]:
    return list(sys.path)


def environment(name: str) -> str | None:
    return os.environ.get(name)


def address_space_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)[0]


_initialized: list[int] = []


def initializer() -> None:
    _initialized.append(os.getpid())


def was_initialized() -> bool:
    return _initialized == [os.getpid()]


def address_space_in_use() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[20])


def crash_if(x: int) -> int:
    if x < 0:
        os._exit(1)
    return x


def mark_once(directory: str, name: str, seconds: float) -> str:
    """Creates directory/name, failing if it exists: proves a task never runs twice."""
    with (Path(directory) / name).open("x"):
        pass
    time.sleep(seconds)
    return name


def write_pid_then_sleep(path: str, seconds: float) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)
    time.sleep(seconds)


def concat(a: bytes, b: bytes) -> bytes:
    assert type(a) is bytes and type(b) is bytes
    return a + b


def spin_in_time_limits(limit: float, pieces: int, seconds: float) -> list[str]:
    """`pieces` busy loops of `seconds`, each in its own `time_limit(limit)`."""
    from mailfilter.workers import TimeLimitExceeded, time_limit

    out = []
    for _ in range(pieces):
        try:
            with time_limit(limit):
                spin(seconds)
            out.append("done")
        except TimeLimitExceeded:
            out.append("limit")
    return out


def time_limit_then_spin(limit: float, seconds: float) -> int:
    """A `time_limit` block that ends early, then a busy loop: the task's own deadline
    (backstop included) must still apply after the block."""
    from mailfilter.workers import time_limit

    with time_limit(limit):
        pass
    return spin(seconds)


# --- what a sandboxed worker may not do (tests/test_sandbox.py) --------------------------


def read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def list_dir(path: str) -> list[str]:
    return sorted(p.name for p in Path(path).iterdir())


def write_bytes(path: str, data: bytes) -> int:
    return Path(path).write_bytes(data)


def tcp_connect(host: str, port: int) -> str:
    import socket

    with socket.create_connection((host, port), timeout=5) as sock:
        return str(sock.getpeername())


def unix_connect(path: str) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        return path


def udp_socket() -> str:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return str(sock.getsockname())


def send_signal(pid: int, signum: int) -> None:
    os.kill(pid, signum)


def extract_message(raw: bytes) -> object:
    from mailfilter.extract import extract
    from mailfilter.settings import ExtractSettings

    return extract(raw, ExtractSettings())


# --- a worker that no longer runs our code (tests/test_worker_results.py) ----------------
# A decoder exploited by an attachment can write anything to the worker's socket: these
# tasks do, as such a worker would, bypassing the honest reply.


class RunsCodeWhenUnpickled:
    """What a compromised worker would send: unpickling it calls `fn(*args)` (in these
    tests: creating a marker file, nothing harmful)."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.fn, self.args


def _reply_socket() -> object:
    """The worker's socket to the service, found the way injected code would find it."""
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != "_worker_main":
        frame = frame.f_back  # type: ignore[assignment]
    assert frame is not None, "not running in a pool worker"
    return frame.f_locals["sock"]


def write_raw(data: bytes, then_sleep: float = 10.0) -> None:
    """Writes `data` to the service as it is (no framing of ours), then waits to be killed."""
    _reply_socket().sendall(data)  # type: ignore[attr-defined]
    time.sleep(then_sleep)


def write_reply(payload: bytes, then_sleep: float = 10.0) -> None:
    """Writes `payload` framed as a reply (8-byte size, then the bytes)."""
    import struct

    write_raw(struct.pack("!Q", len(payload)) + payload, then_sleep)


def return_runs_code(marker: str) -> object:
    """An honest worker asked to return such an object: refused on this side already."""
    return RunsCodeWhenUnpickled(open, marker, "w")


def raise_with_runs_code(marker: str) -> None:
    exc = ValueError("carries an object that runs code")
    exc.payload = RunsCodeWhenUnpickled(open, marker, "w")  # type: ignore[attr-defined]
    raise exc


def return_bytes(size: int) -> bytes:
    return b"x" * size


def raise_with_note() -> None:
    exc = KeyError("k")
    exc.add_note("a note")
    raise exc


def compromise_one_task_scans() -> None:
    """A worker initializer: from now on this worker's `extract_and_fingerprint` task
    answers with bytes that are no reply of ours, as a worker taken over by a decoder
    exploit would (tests/test_scanner.py)."""
    import mailfilter.scanner

    def answer_garbage(*_args: object) -> None:
        write_reply(b"not a pickle of ours")

    mailfilter.scanner.extract_and_fingerprint = answer_garbage  # type: ignore[assignment]
