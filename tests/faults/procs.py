"""Processes from /proc (Linux): children, the worker processes of a `mailfilter serve`, and
memory figures. No psutil: what is needed is a few lines of /proc."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces): index 0 is
    the state, 1 the parent pid, 11/12 user/system CPU ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_pids(serve_pid: int) -> list[int]:
    """The worker processes of a process that runs a WorkerPool: the children of its
    multiprocessing forkserver (workers are forked from it, not from the process itself).
    With the spawn fallback they are its own children running spawn_main."""
    kids = children(serve_pid)
    for pid in kids:
        if b"forkserver" in cmdline(pid):
            return children(pid)
    return [pid for pid in kids if b"spawn_main" in cmdline(pid)]


def cpu_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])


def running(pid: int) -> bool:
    """On a CPU or waiting for one now (state R): a worker in the middle of a task."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "R"


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def status_kib(pid: int, key: str) -> int:
    """A `kB` figure of /proc/PID/status (VmRSS, VmHWM: peak resident, VmPeak...); 0 when
    the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> bool:
    """Start VmHWM over from the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
