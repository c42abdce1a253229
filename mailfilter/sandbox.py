"""Least privilege for the worker processes, which parse hostile archives, PDFs, images and
video (Postfix's lesson: the part that touches untrusted input gets only what it needs).

A worker calls `confine(plan)` once it has imported its decoders, before its first task.
From then on it, its threads and anything it starts (the RAR tool) are held to this, by the
kernel, for good:

- files (Landlock, Linux >= 5.13): read and execute below the Python installation, the import
  path and the system's program and library directories; read and write only the pool's
  scratch directory and /dev/null. Anything else cannot be opened at all (EACCES): not the
  quarantine, not the local store, not the configuration file with its secrets, not the
  service's /proc entries. Landlock also refuses ptrace of processes outside the sandbox.
- network (Landlock ABI 4, Linux >= 6.7: no TCP bind or connect; and seccomp: `socket()`,
  `connect()` and `io_uring_setup()` fail with EPERM). A worker needs no new socket: its one
  socket, to the service, is connected before the worker starts. io_uring is refused
  because its requests would make the same calls where seccomp cannot see them.
- signals (Landlock ABI 6, Linux >= 6.12): no signal to a process outside the sandbox (the
  service, the forkserver) and no connect to their abstract unix sockets.

What a kernel lacks is left out (mode "auto") and `describe` says what is on; mode "require"
makes a missing files or network protection an error instead. Not done here: a separate uid
(the workers share the service's uid, so anything left readable to it by the rules above is
readable to them), and the results still come back to the service as pickles.

Python has no binding for Landlock or seccomp, so both are reached through `ctypes`; the
constants are from <linux/landlock.h>, <linux/seccomp.h>, <linux/filter.h> and <linux/audit.h>.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Mode", "Plan", "SandboxUnavailable", "available", "confine", "describe", "plan"]

Mode = Literal["auto", "require", "off"]

# The names of the protections, as logged and as the metrics label them.
FILES, NETWORK, SIGNALS = "files", "network", "signals"
REQUIRED = (FILES, NETWORK)  # what mode "require" insists on


class SandboxUnavailable(RuntimeError):
    """Mode "require", and this kernel cannot give the workers a protection."""


# --- Landlock ----------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
# ABI 1 knows bits 0-12 (also remove, make-*); 2 adds REFER (13); 3 TRUNCATE (14);
# 5 IOCTL_DEV (15). Every right the kernel knows is handled: what no rule grants is denied.
_FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_ALL_LATEST = (1 << 16) - 1
# Rights a rule on a file (not a directory) may carry.
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (1 << 14) | (1 << 15)
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_SECCOMP = 21
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _buffer(data: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(data, len(data))  # (no NUL added)


def _word(arg: int | ctypes.Array[ctypes.c_char] | None) -> ctypes.c_ulong:
    # Both calls are variadic in C: every argument is passed as a full register-sized word
    # (a plain int would leave the upper half undefined, and the kernel checks unused
    # arguments are 0).
    if arg is None:
        return ctypes.c_ulong(0)
    if isinstance(arg, int):
        return ctypes.c_ulong(arg)
    return ctypes.c_ulong(ctypes.addressof(arg))


def _syscall(number: int, *args: int | ctypes.Array[ctypes.c_char] | None) -> int:
    result: int = _libc.syscall(ctypes.c_long(number), *(_word(a) for a in args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _prctl(option: int, *args: int) -> None:
    words = [_word(a) for a in (*args, 0, 0, 0, 0)[:4]]
    if _libc.prctl(ctypes.c_int(option), *words) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers; 0: none (too old, or not enabled)."""
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except OSError:  # ENOSYS: not built in; EOPNOTSUPP: not enabled at boot
        return 0


def _fs_rights(abi: int) -> int:
    return _FS_ALL_BY_ABI.get(abi, _FS_ALL_LATEST)


def _landlock(abi: int, read: Iterable[str], write: Iterable[str]) -> None:
    handled_net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    all_fs = _fs_rights(abi)
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net (ABI 4), scoped (6);
    # an older kernel takes the longer struct as long as the fields it does not know are 0.
    attr = _buffer(struct.pack("=QQQ", all_fs, handled_net, scoped))
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
    try:
        for paths, rights in ((read, _FS_READ), (write, all_fs)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # not on this system: nothing to allow
                try:
                    allowed = rights & all_fs
                    if not stat.S_ISDIR(os.fstat(fd).st_mode):
                        allowed &= _FS_FILE_RIGHTS
                    # struct landlock_path_beneath_attr (packed): allowed_access, parent_fd
                    rule = _buffer(struct.pack("=Qi", allowed, fd))
                    _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                             rule, 0)
                finally:
                    os.close(fd)
        _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)


# --- seccomp -----------------------------------------------------------------------------

# AUDIT_ARCH_* and the syscall numbers a filter must refuse, per architecture.
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, {"socket": 41, "connect": 42, "io_uring_setup": 425}),
    "aarch64": (0xC00000B7, {"socket": 198, "connect": 203, "io_uring_setup": 425}),
}
_X32_SYSCALL_BIT = 0x40000000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000


def _seccomp_filter() -> bytes | None:
    """The BPF program: refuse (EPERM) socket, connect and io_uring_setup, and every system
    call of another ABI (an x86-64 process can make 32-bit and x32 calls, whose numbers mean
    other things); allow the rest. None: an architecture this does not know."""
    arch = _SECCOMP_ARCH.get(platform.machine())
    if arch is None:
        return None
    audit_arch, numbers = arch
    deny = _SECCOMP_RET_ERRNO | errno.EPERM
    calls = list(numbers.values())
    n = len(calls)

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter

    # seccomp_data: nr at offset 0, arch at 4. A jump skips that many instructions; the
    # last two are "allow" (at 4 + n) and "deny" (at 5 + n).
    program = [
        op(_BPF_LD_W_ABS, 4),
        op(_BPF_JEQ_K, audit_arch, 0, n + 3),  # another ABI (i386, arm compat): deny
        op(_BPF_LD_W_ABS, 0),
        op(_BPF_JGE_K, _X32_SYSCALL_BIT, n + 1, 0),  # x32: deny
        *(op(_BPF_JEQ_K, nr, n - i, 0) for i, nr in enumerate(calls)),
        op(_BPF_RET_K, _SECCOMP_RET_ALLOW),
        op(_BPF_RET_K, deny),
    ]
    return b"".join(program)


def _seccomp(program: bytes) -> None:
    filters = _buffer(program)
    # struct sock_fprog: unsigned short len (in instructions), then a pointer (aligned)
    fprog = _buffer(struct.pack("=H6xQ", len(program) // 8, ctypes.addressof(filters)))
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def _seccomp_supported() -> bool:
    try:
        _prctl(_PR_GET_SECCOMP)  # EINVAL: a kernel built without seccomp
    except OSError:
        return False
    return _seccomp_filter() is not None


# --- the plan ----------------------------------------------------------------------------

# Read-only, beside the Python installation and the import path: programs and libraries (the
# RAR tool, libraries loaded late), the dynamic loader's cache, the time zone, CPU topology
# (thread pools size themselves by it), this process's own /proc entries, randomness.
SYSTEM_READ = (
    "/usr", "/lib", "/lib64", "/bin", "/sbin",
    "/etc/ld.so.cache", "/etc/localtime",
    "/sys/devices/system/cpu",
    "/proc/self",  # (resolved when the rule is made: the worker's own pid)
    "/proc/meminfo",  # py7zr sizes its buffers by it when there is no address-space limit
    "/dev/urandom", "/dev/random", "/dev/zero",
)
SYSTEM_WRITE = ("/dev/null",)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the workers may use; made in the service, sent to each worker."""

    mode: Mode
    read: tuple[str, ...] = ()  # read and execute below these
    write: tuple[str, ...] = ()  # read and write below these
    dropped: tuple[str, ...] = ()  # left out of `read`: they hold a protected path


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def plan(mode: Mode, scratch: str | None, protect: Iterable[str | os.PathLike[str]] = ()) -> Plan:
    """The rules for `mode`: `scratch` the workers' writable directory, `protect` the paths
    that must stay out of their reach (quarantine, store). A directory that would be readable
    but holds a protected path is left out (the kernel cannot carve an exception out of an
    allowed tree); the worker then cannot import from it after it started."""
    if mode == "off":
        return Plan(mode)
    read: list[str] = []
    for entry in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  *sys.path, *SYSTEM_READ):
        if entry and Path(entry).is_absolute() and entry not in read:
            read.append(entry)
    guarded = [os.path.realpath(p) for p in protect]
    keep: list[str] = []
    dropped: list[str] = []
    for entry in read:
        real = os.path.realpath(entry)
        (dropped if any(_contains(real, g) for g in guarded) else keep).append(entry)
    write = [*SYSTEM_WRITE, *([scratch] if scratch else [])]
    return Plan(mode, tuple(keep), tuple(write), tuple(dropped))


def available() -> tuple[str, ...]:
    """The protections this kernel can give, by name."""
    abi = landlock_abi()
    out = [FILES] if abi else []
    if abi >= 4 or _seccomp_supported():
        out.append(NETWORK)
    if abi >= 6:
        out.append(SIGNALS)
    return tuple(out)


def describe(mode: Mode) -> str:
    """One line for the log at start: what the workers will be held to."""
    if mode == "off":
        return "off ([workers] sandbox)"
    abi = landlock_abi()
    on = available()
    parts = [f"Landlock ABI {abi}" if abi else "no Landlock",
             "seccomp" if _seccomp_supported() else "no seccomp"]
    missing = [p for p in (FILES, NETWORK, SIGNALS) if p not in on]
    return (f"{', '.join(on) or 'nothing'} confined ({'; '.join(parts)})"
            + (f"; not confined: {', '.join(missing)}" if missing else ""))


def check(mode: Mode) -> None:
    """Raise SandboxUnavailable in mode "require" when a required protection is missing."""
    if mode != "require":
        return
    missing = [p for p in REQUIRED if p not in available()]
    if missing:
        raise SandboxUnavailable(
            f"[workers] sandbox = \"require\", but this kernel cannot confine the workers' "
            f"{' and '.join(missing)} (files need Landlock, Linux >= 5.13 with landlock in "
            f"the lsm= boot list; network needs Landlock ABI 4 or seccomp); set sandbox = "
            f"\"auto\" to run without")


def confine_files(p: Plan) -> bool:
    """Only the files part of `p`, in this process: how the test suite runs the decoders'
    own tests (which decode in the test process) under the workers' file rules
    (MAILFILTER_TEST_SANDBOX=1, tests/conftest.py). The network and signals stay open for
    its servers and worker pools. False: no Landlock here."""
    abi = landlock_abi()
    if not abi:
        return False
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _landlock(min(abi, 3), p.read, p.write)  # ABI 3's rights: files only
    return True


def confine(p: Plan) -> tuple[str, ...]:
    """In the worker, once: apply `p`; the protections now on, by name. Mode "require"
    raises SandboxUnavailable where one of them cannot be had."""
    if p.mode == "off":
        return ()
    # Both Landlock and a seccomp filter cover the calling thread and what it starts later,
    # not threads that already run: a worker must still be single-threaded here.
    on: list[str] = []
    try:
        threads = sum(1 for _ in Path("/proc/self/task").iterdir())
        if threads != 1:
            raise OSError(f"{threads} threads")
        # Needed for an unprivileged process to install either, and keeps setuid programs
        # from regaining privileges below the sandbox.
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        if p.mode == "require":
            raise SandboxUnavailable(f"cannot confine the worker: {exc}") from exc
        return ()
    abi = landlock_abi()
    if abi:
        try:
            _landlock(abi, p.read, p.write)
        except OSError:
            abi = 0
        else:
            on.append(FILES)
            if abi >= 4:
                on.append(NETWORK)
            if abi >= 6:
                on.append(SIGNALS)
    program = _seccomp_filter()
    if program is not None:
        try:
            _seccomp(program)
        except OSError:
            pass
        else:
            if NETWORK not in on:
                on.append(NETWORK)
    missing = [name for name in REQUIRED if name not in on]
    if p.mode == "require" and missing:
        raise SandboxUnavailable(f"cannot confine the worker's {' and '.join(missing)}")
    return tuple(on)
