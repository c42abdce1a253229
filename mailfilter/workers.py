"""A pool of worker processes for the CPU work (image decode + hash).

Why not `multiprocessing.Pool` / `ProcessPoolExecutor`: a worker that dies there breaks the
whole executor (`BrokenProcessPool`), there are no per-task deadlines, and every task crosses
two queues and two threads. Here each worker has its own socket (a socketpair) and runs one
task at a time:

- `submit` pickles `(fn, args, deadline)` in the caller's thread (so an unpicklable task fails
  there and then) and, when a worker is idle and the message is small, writes it straight into
  that worker's socket; otherwise the task waits in a FIFO queue. Large `bytes` arguments (the
  image) are not copied into the pickle: they are written from the caller's object (pickle
  protocol 5, out of band) and read by the worker into a buffer it reuses.
- One dispatcher thread waits (epoll) on every worker's socket, every worker's exit sentinel
  and a wake-up pipe. It reads results and resolves futures, hands queued tasks to idle
  workers, kills (SIGKILL) a worker whose task runs past its deadline, notices a worker that
  died, and starts replacements.
- Workers come from the `forkserver` (a clean single-threaded process that has imported numpy,
  Pillow and the decoders once), so a new worker costs a fork, not an interpreter start, and
  nothing is forked from this multi-threaded process. `spawn` is the fallback.

Outcomes for a task's future: its result; the exception `fn` raised (the same class with its
attributes, the worker's traceback as `__cause__`); `RemoteError` when that exception could not
be pickled; `WorkerFailure("deadline")` when it ran past its deadline; `WorkerFailure(
"memory-limit")` when it raised MemoryError under the address-space limit (that worker is
replaced); `WorkerFailure("worker-crashed")` when the worker died under it (segfault,
`os._exit`, killed from outside); `WorkerFailure("worker-result-refused")` when its reply was
not what an honest worker sends (below; that worker is killed and replaced). A task is
never run twice: it is only re-queued when its
message provably never reached a worker (the write to its socket failed).

Workers are confined (sandbox.py: Landlock and seccomp, where the kernel has them) once they
have imported their decoders: they read only the Python installation and system libraries,
write only the pool's scratch directory, cannot reach the quarantine, the store or the
network. They still run as the service's user. Their replies are not trusted: a worker
writes them with `worker_results.dumps` and the dispatcher reads them with
`worker_results.loads`, which builds only plain data and the tasks' result types and calls
nothing else (a pickle from a compromised decoder could otherwise run its code here). The
dispatcher reads a reply as it comes, never waiting for the rest, and refuses one larger
than `max_result_bytes` before reading it, one that does not unpickle so, and one nobody
asked for; the log line says why, never what the reply held.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import ctypes
import ctypes.util
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import pickle
import resource
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mailfilter import sandbox, worker_results
from mailfilter.errors import WorkerFailure
from mailfilter.worker_results import ResultRefused

if TYPE_CHECKING:
    from types import TracebackType

    from mailfilter.settings import WorkerSettings

__all__ = ["PoolStats", "RemoteError", "TimeLimitExceeded", "WorkerPool", "time_limit"]

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

StartMethod = Literal["forkserver", "spawn"]

# Modules the forkserver imports once, so every worker starts with them loaded. Missing ones
# are left out. "__main__" is multiprocessing's default: the parent's main script is imported
# once in the forkserver instead of once in every worker.
FORKSERVER_PRELOAD = (
    "__main__",
    "mailfilter.workers",
    "numpy",
    "PIL.Image",
    "PIL.ImageCms",  # embedded ICC profiles (images.py)
    "pillow_heif",  # HEIC/HEIF: registered by images.py at the first one a worker decodes
    "mailfilter.images",
    "mailfilter.hashing.pdq",
    "mailfilter.fingerprint",
    "mailfilter.extract.walk",
    "mailfilter.scanner",  # extract_and_fingerprint: the task of every message
)

# Workers get their parallelism from being processes; a BLAS thread pool per worker would
# oversubscribe the CPUs and reserve address space that counts against the memory limit.
_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Messages up to this size are written to an idle worker's socket by the submitting thread
# (it fits the socket buffer, so the write never waits for the worker); larger ones are
# written by the dispatcher thread, so an event loop calling `run` never blocks on a big write.
_DIRECT_SEND_MAX = 128 * 1024
# bytes arguments this large are sent out of band (not copied into the pickle)
_OUT_OF_BAND_MIN = 16 * 1024
# a worker's receive buffer: its starting size, and the size above which it is not kept
_RECV_BUFFER = 256 * 1024
_RECV_BUFFER_KEEP = 16 * 1024 * 1024
# (a day; setitimer and friends want finite numbers)
_MAX_DEADLINE = 86400.0
# The dispatcher wakes up at least this often (it is woken early for shorter deadlines).
_MAX_SLEEP = 1.0
# A worker also arms a timer of its own at deadline + this: if the parent is gone (or stuck)
# a runaway task still ends. The parent kills at the deadline, well before.
_BACKSTOP_GRACE = 2.0
# After this many workers in a row die before becoming ready, queued tasks are failed and
# starts are retried every _START_RETRY seconds.
_MAX_START_FAILURES = 3
_START_RETRY = 1.0
# A worker that has not said it is ready after this long (a stuck initializer) is killed.
_START_TIMEOUT = 60.0
# close(): how long exiting workers get before they are killed.
_EXIT_GRACE = 2.0
# The largest reply read from a worker when it has no memory limit (with one, the limit).
_DEFAULT_RESULT_MAX = 1 << 30

# worker -> parent message tags
_READY, _OK, _ERROR, _MEMORY = 0, 1, 2, 3


class RemoteError(Exception):
    """`fn` raised an exception that could not be sent back as itself (it or its class could
    not be pickled / unpickled), or raised a BaseException such as SystemExit. The message is
    `Class: text`; the worker's traceback is the `__cause__`."""


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot for metrics. Counters are totals since the pool started."""

    processes: int  # configured number of workers
    alive: int  # worker processes that exist now (starting, ready, or exiting)
    busy: int  # tasks running on a worker now
    queued: int  # tasks waiting for a worker
    completed: int  # tasks that returned a result or raised an exception of their own
    crashes: int  # workers that died unexpectedly (with or without a task)
    timeouts: int  # tasks killed at their deadline
    restarts: int  # workers started to replace one (crash, deadline, memory, recycling)
    memory_limits: int = 0  # tasks that hit the worker memory limit
    last_start_seconds: float = 0.0  # how long the latest worker took to become ready
    sandbox: tuple[str, ...] = ()  # what the latest ready worker is confined in (sandbox.py)
    refused: int = 0  # replies refused (worker_results.py): those workers were killed


# --- the worker side ---------------------------------------------------------------------


class TimeLimitExceeded(BaseException):  # not an Exception: nothing may swallow it
    """Raised inside a worker task when a `time_limit` block runs out of time."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Inside a worker task: raise TimeLimitExceeded in this block once it has run for
    `seconds`, so one task can give each of several pieces of work its own deadline (one
    image of a message) and go on with the next. The exception comes when Python code runs
    (between decoder chunks, between frames); a C call that never returns is still ended by
    the task's own deadline. The task's backstop timer is suspended meanwhile and re-armed
    after; when it would fire first, the block runs under it alone. Worker main thread only.
    """
    backstop = signal.getitimer(signal.ITIMER_REAL)[0]
    if seconds <= 0 or (backstop and backstop <= seconds):
        yield
        return
    started = time.monotonic()
    armed = [True]

    def on_alarm(_signum: int, _frame: object) -> None:
        if armed[0]:  # (an alarm handled only once the block is over is ignored)
            raise TimeLimitExceeded(f"more than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed[0] = False  # first: nothing may interrupt the restoring below
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if backstop:
            left = backstop - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


# glibc serves allocations above a dynamic threshold (128 KiB at start) with fresh mmap()s
# and gives them back on free(), so every decoded frame (a few MB) is page-faulted in anew.
# The threshold only rises as large blocks happen to be freed, so a worker's speed would
# depend on its history: a 1 MP JPEG took 15.6 ms in a fresh worker and 7 ms after large
# allocations had raised it. Fixed thresholds keep such buffers in the heap for reuse; the
# memory a worker keeps is bounded by the trim threshold and by recycling workers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 128 << 20


def _tune_malloc() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _worker_main(
    sock: socket.socket, memory_limit: int, initializer: Callable[[], None] | None,
    plan: sandbox.Plan | None = None,
) -> None:
    """A worker: read (fn, args, deadline), run, write back one reply, until EOF."""
    for name in _THREAD_ENV:
        os.environ[name] = "1"
    # ^C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the backstop timer terminates
    _tune_malloc()
    if memory_limit > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    if initializer is not None:
        initializer()
    confined: tuple[str, ...] = ()
    if plan is not None:
        if plan.write[1:]:  # the scratch directory: the one place temporary files can go
            os.environ["TMPDIR"] = tempfile.tempdir = plan.write[-1]
        confined = sandbox.confine(plan)  # last: everything the worker needs is loaded
    # Tasks are read into one reused buffer: no fresh (page-faulting) allocation per task.
    buffer = bytearray(_RECV_BUFFER)
    try:
        _send_frame(sock, worker_results.dumps((_READY, (os.getpid(), confined))))
        while True:
            got = sock.recv_into(buffer)  # the header, and all of a small task
            if not got:
                return  # the parent closed: retire
            while got < _TASK_HEADER.size:
                got += _recv_some(sock, memoryview(buffer)[got:])
            size, nbuffers = _TASK_HEADER.unpack_from(buffer)
            end = _TASK_HEADER.size + size
            try:
                if end > len(buffer):
                    bigger = bytearray(end)
                    bigger[:got] = memoryview(buffer)[:got]
                    buffer = bigger
                while got < end:
                    got += _recv_some(sock, memoryview(buffer)[got:end])
                reply, out_of_memory = _run_one(buffer, end, nbuffers)
            except MemoryError:
                reply, out_of_memory = _memory_reply(), True
            _send_frame(sock, reply)
            if out_of_memory:  # the heap may be in pieces: let a fresh worker take over
                return
            if len(buffer) > _RECV_BUFFER_KEEP:
                buffer = bytearray(_RECV_BUFFER)
    except (OSError, EOFError):  # the parent went away
        return


def _run_one(buffer: bytearray, size: int, nbuffers: int) -> tuple[bytes, bool]:
    """The reply to the task in buffer[:size], and whether the worker ran out of memory."""
    try:
        with memoryview(buffer) as view:
            lengths = struct.unpack_from(f"!{nbuffers}Q", view, _TASK_HEADER.size)
            start = _TASK_HEADER.size + 8 * nbuffers
            end = size - sum(lengths)
            out_of_band = []
            at = end
            for length in lengths:  # large bytes arguments: sent as they are, after the pickle
                out_of_band.append(bytes(view[at:at + length]))
                at += length
            fn, args, deadline = pickle.loads(view[start:end], buffers=out_of_band)
            del out_of_band
        signal.setitimer(signal.ITIMER_REAL, deadline + _BACKSTOP_GRACE)
        try:
            result = fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        del args
        try:  # only as what the service accepts (worker_results.py)
            return worker_results.dumps((_OK, result)), False
        except (MemoryError, RecursionError):
            raise
        except Exception as exc:
            raise RemoteError(f"the result of {getattr(fn, '__qualname__', fn)} could not be "
                              f"pickled: {exc!r}") from exc
    except MemoryError:
        return _memory_reply(), True
    except BaseException as exc:
        try:
            return _error_reply(exc), False
        except MemoryError:
            return _memory_reply(), True


def _memory_reply() -> bytes:
    try:
        tb = traceback.format_exc()
    except MemoryError:
        tb = ""
    return worker_results.dumps((_MEMORY, tb))


def _error_reply(exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    blob: bytes | None = None
    if isinstance(exc, Exception):  # never re-raise SystemExit & co. in the caller
        try:  # (an exception of a class the service does not accept comes back by name)
            blob = worker_results.dumps(exc)
        except Exception as pickling_error:
            tb += f"\n(the exception could not be pickled: {pickling_error!r})\n"
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return worker_results.dumps((_ERROR, (blob, name, text, tb)))


# --- framing ---------------------------------------------------------------------------
# parent -> worker: 12-byte header (size of the rest, number of out-of-band buffers), then the
#   buffers' lengths (8 bytes each), the pickle of (fn, args, deadline), the buffers' bytes.
# worker -> parent: 8-byte size, then the pickle of (tag, body): worker_results.dumps, read
#   by worker_results.loads (an exception in an _ERROR body is such a pickle of its own).

_TASK_HEADER = struct.Struct("!QI")
_REPLY_HEADER = struct.Struct("!Q")
_REPLY_READ = 64 * 1024


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_REPLY_HEADER.pack(len(data)) + data)


def _send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Write all parts, in one system call when the socket buffer takes them."""
    sent = sock.sendmsg(parts, [], socket.MSG_NOSIGNAL)
    for part in parts:
        n = len(part)
        if sent >= n:
            sent -= n
            continue
        sock.sendall(memoryview(part)[sent:], socket.MSG_NOSIGNAL)
        sent = 0


def _recv_some(sock: socket.socket, view: memoryview) -> int:
    n = sock.recv_into(view)
    if not n:
        raise EOFError("connection closed in the middle of a message")
    return n


def _read_reply(worker: _Worker, limit: int) -> bytes | None:
    """Reads what the worker's socket holds now, without waiting (the dispatcher thread must
    never wait on a worker: one that sends half a reply and stops would stop the pool). The
    reply's pickle once it is complete, else None. EOFError when the worker closed its
    socket, BlockingIOError when nothing was there; ResultRefused for a size over `limit`
    (before reading it) or bytes past the end of the reply (an honest worker sends one reply
    and waits for its next task)."""
    if worker.inbox is None:
        data = worker.sock.recv(_REPLY_READ, socket.MSG_DONTWAIT)  # all of a small reply
        if not data:
            raise EOFError("worker closed its socket")
        if worker.head:
            data, worker.head = worker.head + data, b""
        if len(data) < _REPLY_HEADER.size:
            worker.head = data
            return None
        (size,) = _REPLY_HEADER.unpack_from(data)
        if size > limit:
            raise ResultRefused(f"a reply of {size} bytes, over the {limit}-byte limit")
        end = _REPLY_HEADER.size + size
        if len(data) > end:
            raise ResultRefused("bytes after the end of its reply")
        if len(data) == end:
            return data[_REPLY_HEADER.size:]
        worker.inbox = bytearray(size)
        worker.inbox[:len(data) - _REPLY_HEADER.size] = data[_REPLY_HEADER.size:]
        worker.inbox_got = len(data) - _REPLY_HEADER.size
        return None
    with memoryview(worker.inbox) as view:
        got = worker.sock.recv_into(view[worker.inbox_got:], 0, socket.MSG_DONTWAIT)
    if not got:
        raise EOFError("connection closed in the middle of a reply")
    worker.inbox_got += got
    if worker.inbox_got < len(worker.inbox):
        return None
    body, worker.inbox = bytes(worker.inbox), None
    return body


def _task_parts(
    fn: Callable[..., Any], args: tuple[Any, ...], deadline: float
) -> tuple[list[bytes | memoryview], int]:
    """The message for one task, and its size. Large bytes arguments (the image) travel
    out of band: written from the caller's own object, never copied into the pickle."""
    out_of_band: list[pickle.PickleBuffer] = []
    wrapped = tuple(
        pickle.PickleBuffer(a) if type(a) is bytes and len(a) >= _OUT_OF_BAND_MIN else a
        for a in args
    )
    data = pickle.dumps((fn, wrapped, deadline), 5, buffer_callback=out_of_band.append)
    views = [b.raw() for b in out_of_band]
    lengths = [len(v) for v in views]
    rest = 8 * len(views) + len(data) + sum(lengths)
    header = _TASK_HEADER.pack(rest, len(views)) + struct.pack(f"!{len(views)}Q", *lengths)
    return [header, data, *views], _TASK_HEADER.size + rest


# --- the parent side ---------------------------------------------------------------------


class _Task:
    __slots__ = ("claimed", "deadline", "future", "parts")

    def __init__(
        self, parts: list[bytes | memoryview], deadline: float, future: Future[Any]
    ) -> None:
        self.parts = parts  # the message; emptied once written
        self.deadline = deadline
        self.future = future
        self.claimed = False  # future moved to RUNNING (set_running_or_notify_cancel)


_STARTING, _IDLE, _BUSY, _EXITING = "starting", "idle", "busy", "exiting"


class _Worker:
    __slots__ = (
        "deadline_at", "exit_reason", "exited", "head", "inbox", "inbox_got", "process",
        "sending", "sentinel", "sentinel_registered", "sock", "sock_registered", "spawned_at",
        "state", "task", "tasks_done",
    )

    def __init__(self, process: BaseProcess, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.sentinel: int = process.sentinel
        self.state = _STARTING
        self.task: _Task | None = None
        self.deadline_at = 0.0
        self.tasks_done = 0
        self.spawned_at = time.monotonic()
        # the task a submitting thread is writing to this worker's socket right now
        self.sending: _Task | None = None
        self.exited = False  # sentinel fired while `sending`: reap once the write is over
        # None: an unexpected death. Otherwise why we ended it.
        self.exit_reason: str | None = None
        self.sock_registered = False
        self.sentinel_registered = False
        # a reply being read (_read_reply): the first bytes while fewer than its header, then
        # the pickle's buffer and how much of it has come
        self.head = b""
        self.inbox: bytearray | None = None
        self.inbox_got = 0


def default_processes() -> int:
    """The CPUs this process may run on (honours taskset/cpusets, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_forkserver_lock = threading.Lock()
_forkserver_prepared = False


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _single_threaded_blas_env() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _THREAD_ENV}
    os.environ.update(dict.fromkeys(_THREAD_ENV, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _context(start_method: StartMethod | None) -> BaseContext:
    if start_method is None:
        available = multiprocessing.get_all_start_methods()
        start_method = "forkserver" if "forkserver" in available else "spawn"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        global _forkserver_prepared
        with _forkserver_lock:
            if not _forkserver_prepared:
                preload = [m for m in FORKSERVER_PRELOAD if m == "__main__" or _module_exists(m)]
                ctx.set_forkserver_preload(preload)
                # The forkserver imports numpy at its start: give it one BLAS thread then.
                with _single_threaded_blas_env():
                    multiprocessing.forkserver.ensure_running()
                _forkserver_prepared = True
    return ctx


def _sandbox_plan(
    mode: sandbox.Mode, protect: Iterable[str | os.PathLike[str]]
) -> tuple[sandbox.Plan | None, str | None]:
    """The workers' sandbox plan and scratch directory; logs what the workers will be
    confined in. SandboxUnavailable in mode "require" when the kernel cannot do it."""
    if mode == "off":
        log.info("worker sandbox: off")
        return None, None
    sandbox.check(mode)
    scratch = tempfile.mkdtemp(prefix="mailfilter-workers-")
    plan = sandbox.plan(mode, scratch, protect)
    log.info("worker sandbox: %s", sandbox.describe(mode))
    if plan.dropped:
        log.warning("worker sandbox: these directories hold the quarantine or the store, so "
                    "workers may not read them: %s", ", ".join(plan.dropped))
    return plan, scratch


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "ended"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _decode_reply(data: bytes) -> tuple[int, Any]:
    """A worker's reply read without trusting it (worker_results.py): (tag, what it says),
    the exception of an _ERROR reply rebuilt. ResultRefused for anything an honest worker
    does not send."""
    reply = worker_results.loads(data)
    if type(reply) is not tuple or len(reply) != 2 or type(reply[0]) is not int:
        raise ResultRefused("not a reply")
    tag, body = reply
    if tag == _OK:
        return tag, body
    if tag == _ERROR and _is_error_body(body):
        return tag, _rebuild_exception(body)
    if tag == _MEMORY and type(body) is str:
        return tag, body
    if (tag == _READY and type(body) is tuple and len(body) == 2 and type(body[1]) is tuple
            and all(type(p) is str for p in body[1])):
        return tag, body
    raise ResultRefused("not a reply")


def _is_error_body(body: object) -> bool:
    return (type(body) is tuple and len(body) == 4 and (body[0] is None or type(body[0]) is bytes)
            and all(type(part) is str for part in body[1:]))


def _rebuild_exception(body: tuple[bytes | None, str, str, str]) -> BaseException:
    blob, name, text, tb = body
    exc: BaseException | None = None
    if blob is not None:
        # ResultRefused propagates: the worker pickled the exception itself (dumps), so an
        # honest one never sends what loads refuses.
        exc = worker_results.loads(blob)
        if not isinstance(exc, Exception):
            raise ResultRefused("an error reply without an exception")
    if exc is None:
        exc = RemoteError(f"{name}: {text}" if text else name)
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


def _resolve(future: Future[Any], outcome: object, failed: bool) -> None:
    try:
        if failed:
            assert isinstance(outcome, BaseException)
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:  # cancelled while queued; nothing waits for it
        pass


class WorkerPool:
    """Worker processes that run module-level functions with a deadline per task.

    `processes` 0 means one per available CPU; `memory_limit` is each worker's address-space
    limit in bytes (RLIMIT_AS, which counts the interpreter and its libraries, ~100 MB; 0: no
    limit); a worker is replaced after `max_tasks_per_worker` tasks (0: never); `initializer`
    (module-level) runs once in each worker before its first task. `sandbox` (sandbox.py):
    "auto" confines the workers as far as the kernel can, "require" raises
    SandboxUnavailable here when it cannot confine their files and network; `protect` are
    paths the workers must never reach (the quarantine, the store). A reply larger than
    `max_result_bytes` is refused unread (0: the memory limit, which no reply a worker
    holds can exceed; 1 GiB without one).

    Thread-safe. Workers start in the background; `submit` never waits for them.
    """

    def __init__(
        self,
        processes: int,
        memory_limit: int,
        max_tasks_per_worker: int = 1000,
        initializer: Callable[[], None] | None = None,
        *,
        start_method: StartMethod | None = None,
        sandbox: sandbox.Mode = "auto",
        protect: Iterable[str | os.PathLike[str]] = (),
        max_result_bytes: int = 0,
    ) -> None:
        if processes < 0:
            raise ValueError("processes must be 0 (one per CPU) or more")
        if memory_limit < 0 or max_tasks_per_worker < 0 or max_result_bytes < 0:
            raise ValueError("memory_limit, max_tasks_per_worker and max_result_bytes must be "
                             "0 or more")
        self._processes = processes or default_processes()
        self._memory_limit = memory_limit
        self._max_result = max_result_bytes or memory_limit or _DEFAULT_RESULT_MAX
        self._max_tasks = max_tasks_per_worker
        self._initializer = initializer
        self._ctx = _context(start_method)
        self.start_method: str = self._ctx.get_start_method()
        self._plan, self._scratch = _sandbox_plan(sandbox, protect)
        # the one directory workers may write to (their TMPDIR); None: no sandbox
        self.scratch: Path | None = Path(self._scratch) if self._scratch else None
        self._confined: tuple[str, ...] = ()

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a worker became ready / exited
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []  # a stack: the most recently used worker is warmest
        self._queue: collections.deque[_Task] = collections.deque()
        self._closing: Literal["wait", "now"] | None = None
        self._wake_at = 0.0  # when the dispatcher will look at deadlines next, at the latest
        self._started = 0
        self._completed = 0
        self._crashes = 0
        self._timeouts = 0
        self._restarts = 0
        self._memory_limits = 0
        self._refused = 0
        self._last_start = 0.0
        self._start_failures = 0  # consecutive workers that died before becoming ready
        self._start_retry_at = 0.0
        self._close_kill_at = 0.0  # closing: workers still alive then are killed

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._dispatch_forever, name="mailfilter-worker-pool", daemon=True
        )
        self._thread.start()
        atexit.register(self._close_at_exit)

    @classmethod
    def from_settings(
        cls, s: WorkerSettings, protect: Iterable[str | os.PathLike[str]] = ()
    ) -> WorkerPool:
        return cls(
            processes=s.processes,
            memory_limit=s.memory_limit,
            max_tasks_per_worker=s.max_tasks_per_worker,
            sandbox=s.sandbox,
            protect=protect,
        )

    @staticmethod
    def default_processes() -> int:
        return default_processes()

    @property
    def processes(self) -> int:
        return self._processes

    # --- submitting ---------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any, deadline: float) -> Future[T]:
        """Run `fn(*args)` in a worker; `deadline` seconds from when it starts there.

        `fn` must be a module-level function; it and `args` are pickled here, so an
        unpicklable task raises here (pickle.PicklingError, TypeError, AttributeError)."""
        if not 0 < deadline < _MAX_DEADLINE:
            raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
        deadline = float(deadline)
        parts, size = _task_parts(fn, args, deadline)
        future: Future[T] = Future()
        task = _Task(parts, deadline, future)
        with self._lock:
            if self._closing is not None:
                raise RuntimeError("the worker pool is closed")
            worker = None
            if self._idle and size <= _DIRECT_SEND_MAX and not self._queue:
                worker = self._idle.pop()
                task.claimed = future.set_running_or_notify_cancel()
                self._assign(worker, task)
                worker.sending = task
                wake = worker.deadline_at < self._wake_at
            else:
                self._queue.append(task)
                wake = bool(self._idle)
        if worker is not None:
            self._send(worker, task)
        if wake:
            self._wake()
        return future

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float) -> T:
        """`submit` for asyncio callers. Cancelling the caller drops the task if it has not
        started; a running task runs to its end (or deadline) and its result is dropped."""
        return await asyncio.wrap_future(self.submit(fn, *args, deadline=deadline))

    def map(
        self, fn: Callable[[A], T], iterable: Iterable[A], *, deadline: float,
        prefetch: int | None = None,
    ) -> Generator[T | WorkerFailure, None, None]:
        """`fn(item)` for each item, in order, at most `prefetch` (default: 2 per worker)
        submitted ahead. A WorkerFailure is yielded in the item's place; any other exception
        from `fn` is raised (the tasks submitted ahead are then cancelled)."""
        window = prefetch if prefetch is not None else 2 * self._processes
        window = max(1, window)
        pending: collections.deque[Future[T]] = collections.deque()
        items = iter(iterable)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        item = next(items)
                    except StopIteration:
                        exhausted = True
                    else:
                        pending.append(self.submit(fn, item, deadline=deadline))
                if not pending:
                    return
                future = pending.popleft()
                try:
                    value = future.result()
                except WorkerFailure as failure:
                    yield failure
                else:
                    yield value
        finally:
            for future in pending:
                future.cancel()

    # --- inspecting and closing -----------------------------------------------------------

    def stats(self) -> PoolStats:
        with self._lock:
            busy = sum(1 for w in self._workers if w.task is not None)
            return PoolStats(
                processes=self._processes,
                alive=len(self._workers),
                busy=busy,
                queued=len(self._queue),
                completed=self._completed,
                crashes=self._crashes,
                timeouts=self._timeouts,
                restarts=self._restarts,
                memory_limits=self._memory_limits,
                last_start_seconds=self._last_start,
                sandbox=self._confined,
                refused=self._refused,
            )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker is up (idle or busy); False on timeout or close."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._closing is not None:
                    return False
                ready = sum(1 for w in self._workers if w.state in (_IDLE, _BUSY))
                if ready >= self._processes:
                    return True
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)

    def close(self, wait: bool = True) -> None:
        """Stop the pool. `wait`: queued and running tasks finish first (each within its
        deadline); otherwise workers are killed and unfinished tasks fail with
        WorkerFailure("worker-crashed"). Either way every worker process is reaped and every
        pipe closed before this returns. Idempotent."""
        with self._lock:
            if self._closing is None or (self._closing == "wait" and not wait):
                self._closing = "wait" if wait else "now"
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        atexit.unregister(self._close_at_exit)

    def _close_at_exit(self) -> None:
        self.close(wait=False)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(wait=exc_type is None)

    # --- internals shared with submitting threads ---------------------------------------

    def _assign(self, worker: _Worker, task: _Task) -> None:
        """Under the lock: `task` now runs on `worker` (an idle one)."""
        worker.state = _BUSY
        worker.task = task
        worker.deadline_at = time.monotonic() + task.deadline

    def _send(self, worker: _Worker, task: _Task) -> None:
        """Write the task to the worker's socket (not under the lock)."""
        try:
            _send_parts(worker.sock, task.parts)
        except (OSError, ValueError):
            failed = True
        else:
            failed = False
            task.parts = []  # let go of the image while the task runs
        with self._lock:
            if worker.sending is task:
                worker.sending = None
            notify = worker.exited
            if failed:
                # The worker is dead or dying; it never got the whole payload.
                if worker.state != _EXITING:
                    worker.state = _EXITING
                    worker.exit_reason = None
                if worker.task is task:
                    worker.task = None
                    self._queue.appendleft(task)
                notify = True
        if failed:
            self._kill(worker)  # normally dead already; never leave a half-written socket
        if notify:
            self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    # --- the dispatcher thread ------------------------------------------------------------

    def _dispatch_forever(self) -> None:
        try:
            while self._dispatch_once():
                pass
        except BaseException:
            log.critical("worker pool dispatcher failed; closing the pool", exc_info=True)
            with self._lock:
                self._closing = "now"
            with contextlib.suppress(BaseException):
                while self._dispatch_once():
                    pass
        finally:
            self._teardown()

    def _dispatch_once(self) -> bool:
        """One round of the dispatcher. False when the pool has shut down."""
        if not self._keep_workers():
            return False
        now = time.monotonic()
        with self._lock:
            wake_at = now + _MAX_SLEEP
            for w in self._workers:
                if w.task is not None and w.deadline_at < wake_at:
                    wake_at = w.deadline_at
            for t in (self._start_retry_at, self._close_kill_at):
                if t > now:
                    wake_at = min(wake_at, t)
            self._wake_at = wake_at
        events = self._selector.select(max(0.0, wake_at - now))
        for key, _mask in events:
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            kind, worker = key.data
            if kind == "sock":
                if worker.sock_registered:  # not reaped earlier in this round
                    self._on_message(worker)
            elif worker.sentinel_registered:
                self._on_exit(worker)
        self._enforce_deadlines()
        self._reap_deferred()
        self._dispatch_queued()
        return True

    def _keep_workers(self) -> bool:
        """Start workers up to the configured number; shut them down when closing.
        False once closing is complete (no workers left)."""
        now = time.monotonic()
        to_kill: list[_Worker] = []
        to_release: list[_Worker] = []
        failed: list[tuple[_Task, str]] = []
        with self._lock:
            closing = self._closing
            live = [w for w in self._workers if w.state != _EXITING]
            missing = 0
            if closing == "now":
                for task in self._queue:
                    failed.append((task, "the worker pool was closed before the task started"))
                self._queue.clear()
                for w in live:
                    if w.task is not None:
                        failed.append((w.task, "the worker pool was closed before the task "
                                       "finished"))
                        w.task = None
                    w.state = _EXITING
                    w.exit_reason = "close"
                    to_kill.append(w)
                self._idle.clear()
            elif closing == "wait" and not self._queue and all(w.task is None for w in live):
                for w in live:
                    w.state = _EXITING
                    w.exit_reason = "close"
                    to_release.append(w)
                self._idle.clear()
                if live:
                    self._close_kill_at = now + _EXIT_GRACE
            elif self._start_retry_at <= now:
                missing = self._processes - len(live)
            if closing is not None:
                if self._close_kill_at and now >= self._close_kill_at:
                    to_kill.extend(w for w in self._workers if w not in to_kill)
                if not self._workers:
                    return False
        for w in to_release:
            self._close_sock(w)  # EOF: the worker exits by itself
        for w in to_kill:
            self._kill(w)
        self._fail(failed)
        for _ in range(missing):
            self._start_worker()
        return True

    def _fail(self, failed: list[tuple[_Task, str]], reason: str = "worker-crashed") -> None:
        """Not under the lock (callbacks run here)."""
        for task, detail in failed:
            if not task.claimed and not task.future.set_running_or_notify_cancel():
                continue  # cancelled
            task.claimed = True
            _resolve(task.future, WorkerFailure(reason, detail), failed=True)

    def _start_worker(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child_sock, self._memory_limit, self._initializer, self._plan),
            name="mailfilter-worker",
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:
            parent_sock.close()
            log.error("cannot start a worker process: %s", exc)
            with self._lock:
                failed = self._note_start_failure(f"cannot start a worker process: {exc}")
            self._fail(failed)
            return
        finally:
            child_sock.close()
        worker = _Worker(process, parent_sock)
        self._selector.register(parent_sock, selectors.EVENT_READ, ("sock", worker))
        worker.sock_registered = True
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("exit", worker))
        worker.sentinel_registered = True
        with self._lock:
            self._workers.append(worker)
            if self._started >= self._processes:
                self._restarts += 1
            self._started += 1

    def _note_start_failure(self, why: str) -> list[tuple[_Task, str]]:
        """Under the lock. After too many failures in a row, back off; if no worker is up,
        the queued tasks are returned to be failed."""
        self._start_failures += 1
        if self._start_failures < _MAX_START_FAILURES:
            return []
        self._start_retry_at = time.monotonic() + _START_RETRY
        if any(w.state in (_IDLE, _BUSY) for w in self._workers):
            return []
        failed = [(task, why) for task in self._queue]
        self._queue.clear()
        return failed

    def _on_message(self, worker: _Worker) -> None:
        try:
            data = _read_reply(worker, self._max_result)
            if data is None:
                return  # more to come
            tag, body = _decode_reply(data)
        except BlockingIOError:
            return
        except (EOFError, OSError):
            # The worker is gone; its sentinel says how, and that is where it is handled.
            self._unregister_sock(worker)
            return
        except ResultRefused as exc:
            self._refuse(worker, str(exc))
            return
        del data
        task: _Task | None = None
        recycle = False
        with self._lock:
            if worker.state == _EXITING:
                return  # it ran past its deadline or the pool is closing: already answered
            if tag == _READY:
                if worker.state != _STARTING:
                    unasked = "a second ready message"
                else:
                    self._confined = body[1]
                    if not worker.exited:
                        worker.state = _IDLE
                        self._idle.append(worker)
                        self._start_failures = 0
                        self._start_retry_at = 0.0
                        self._last_start = time.monotonic() - worker.spawned_at
                        self._changed.notify_all()
                    return
            elif worker.state != _BUSY:
                unasked = f"a reply while {worker.state}"
            else:
                unasked = ""
                assert worker.task is not None  # (busy means it has one)
                task, worker.task = worker.task, None
                if worker.sending is task:
                    worker.sending = None  # the worker read it all, so the write is over
                if tag == _MEMORY:
                    self._memory_limits += 1
                    worker.state = _EXITING
                    worker.exit_reason = "memory-limit"  # it exits by itself
                else:
                    self._completed += 1
                    worker.tasks_done += 1
                    if self._max_tasks and worker.tasks_done >= self._max_tasks:
                        worker.state = _EXITING
                        worker.exit_reason = "recycled"
                        recycle = True
                    elif worker.exited:  # read while reaping it: it is dead already
                        worker.state = _EXITING
                    else:
                        worker.state = _IDLE
                        self._idle.append(worker)
        if unasked:
            self._refuse(worker, unasked)
            return
        assert task is not None
        if recycle:
            self._close_sock(worker)
        if tag == _OK:
            _resolve(task.future, body, failed=False)
        elif tag == _MEMORY:
            _resolve(task.future, WorkerFailure(
                "memory-limit",
                f"the task ran out of memory under the {self._memory_limit}-byte limit",
            ), failed=True)
        else:
            _resolve(task.future, body, failed=True)

    def _refuse(self, worker: _Worker, why: str) -> None:
        """The worker sent what an honest one does not (a reply worker_results refuses, one
        too large, one nobody asked for): it is taken to run someone else's code now. Its
        task fails `worker-result-refused`, nothing more is read from it, it is killed and
        (by _keep_workers, once reaped) replaced. `why` never quotes the reply."""
        failed: list[tuple[_Task, str]] = []
        task: _Task | None = None
        with self._lock:
            if worker.state != _EXITING:
                if worker.state == _STARTING:
                    failed = self._note_start_failure(f"a new worker's reply refused: {why}")
                elif worker.state == _BUSY:
                    task, worker.task = worker.task, None
                if worker in self._idle:
                    self._idle.remove(worker)
                worker.state = _EXITING
                worker.exit_reason = "result-refused"
            self._refused += 1
        worker.inbox = None
        self._unregister_sock(worker)
        self._kill(worker)
        log.warning("worker %s: reply refused (%s); the worker is killed and replaced%s",
                    worker.process.pid, why, " (its task fails)" if task else "")
        self._fail(failed)
        if task is not None:
            self._fail([(task, f"worker {worker.process.pid}: {why}")],
                       "worker-result-refused")

    def _on_exit(self, worker: _Worker) -> None:
        with self._lock:
            worker.exited = True
            if worker in self._idle:  # nobody may start writing to it now
                self._idle.remove(worker)
                worker.state = _EXITING
            deferred = worker.sending is not None
        if deferred:
            # A submitting thread is writing to its pipe: reap when that write is over.
            self._unregister_sentinel(worker)
            return
        self._reap(worker)

    def _reap_deferred(self) -> None:
        with self._lock:
            ready = [w for w in self._workers if w.exited and w.sending is None]
        for w in ready:
            self._reap(w)

    def _reap(self, worker: _Worker) -> None:
        # What the worker wrote before it died (a result, the memory-limit reply) comes first.
        while worker.sock_registered and multiprocessing.connection.wait([worker.sock], 0):
            self._on_message(worker)
        self._unregister_sock(worker)
        self._unregister_sentinel(worker)
        worker.process.join(_EXIT_GRACE)
        if worker.process.exitcode is None:  # the sentinel fired, so this should not happen
            worker.process.kill()
            worker.process.join()
        exitcode = worker.process.exitcode
        pid = worker.process.pid
        worker.sock.close()
        worker.process.close()
        failed: list[tuple[_Task, str]] = []
        with self._lock:
            self._workers.remove(worker)
            if worker in self._idle:
                self._idle.remove(worker)
            task, worker.task = worker.task, None
            reason = worker.exit_reason
            if reason is None and exitcode == -signal.SIGALRM:
                reason = "deadline"  # the worker's own backstop timer
                self._timeouts += 1
            if reason is None:
                self._crashes += 1
                if worker.state == _STARTING:
                    failed = self._note_start_failure(
                        f"worker processes fail to start (the last one {_describe_exit(exitcode)})"
                    )
            self._changed.notify_all()
        self._fail(failed)
        if reason is None:
            log.warning("worker %s %s%s", pid, _describe_exit(exitcode),
                        " while running a task" if task else "")
        if task is not None:
            if reason == "deadline":
                self._fail([(task, f"no result within {task.deadline:g}s")], "deadline")
            else:
                self._fail([(task, f"worker {pid} {_describe_exit(exitcode)}")])

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        expired: list[tuple[_Worker, _Task]] = []
        stuck: list[_Worker] = []
        with self._lock:
            for w in self._workers:
                if w.state == _STARTING and now - w.spawned_at > _START_TIMEOUT:
                    stuck.append(w)
                if w.task is not None and w.state == _BUSY and w.deadline_at <= now:
                    expired.append((w, w.task))
                    w.task = None
                    w.state = _EXITING
                    w.exit_reason = "deadline"
                    self._timeouts += 1
        for w in stuck:
            log.error("worker %s did not start within %gs", w.process.pid, _START_TIMEOUT)
            self._kill(w)
        for w, _task in expired:
            self._kill(w)
        self._fail([(task, f"no result within {task.deadline:g}s") for _w, task in expired],
                   "deadline")

    def _dispatch_queued(self) -> None:
        while True:
            with self._lock:
                if not self._queue or not self._idle or self._closing == "now":
                    return
                task = self._queue.popleft()
                if not task.claimed:
                    task.claimed = task.future.set_running_or_notify_cancel()
                    if not task.claimed:
                        continue  # cancelled while it waited
                worker = self._idle.pop()
                self._assign(worker, task)
            self._send(worker, task)

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            worker.process.kill()

    def _close_sock(self, worker: _Worker) -> None:
        self._unregister_sock(worker)
        with self._lock:
            if worker.sending is not None:
                return  # a write is in progress; the reap closes it
        worker.sock.close()

    def _unregister_sock(self, worker: _Worker) -> None:
        if worker.sock_registered:
            self._selector.unregister(worker.sock)
            worker.sock_registered = False

    def _unregister_sentinel(self, worker: _Worker) -> None:
        if worker.sentinel_registered:
            self._selector.unregister(worker.sentinel)
            worker.sentinel_registered = False

    def _teardown(self) -> None:
        """Last act of the dispatcher thread: nothing may be left running or open."""
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
            leftover = [(t, "the worker pool stopped") for t in self._queue]
            leftover += [(w.task, "the worker pool stopped") for w in workers if w.task]
            self._queue.clear()
        for w in workers:  # only after a dispatcher failure
            self._kill(w)
            with contextlib.suppress(Exception):
                w.process.join(_EXIT_GRACE)
                w.sock.close()
                w.process.close()
        self._fail(leftover)
        with self._lock:
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
            self._closing = self._closing or "now"
            self._changed.notify_all()
        self._selector.close()
        os.close(wake_r)
        os.close(wake_w)
        if self._scratch is not None:  # what workers left there (a killed RAR unpack)
            shutil.rmtree(self._scratch, ignore_errors=True)


if sys.platform == "win32":  # pragma: no cover - mailfilter runs on Linux
    raise ImportError("mailfilter.workers needs a POSIX system")
