"""The quarantine's file system fails under the proxy: full (a tmpfs of a few hundred KB)
and read-only (the same tmpfs remounted read-only: root, as CI runs, ignores permission
bits, so chmod would test nothing). A match that cannot be held durably is refused 451
(4.3.1 when the disk is full), never acknowledged and never half-written; clean mail
still flows; once there is room again the senders' retries are held exactly once."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from proxy.proxy_harness import RunningProxy

from faults.client import deliver, make_message
from faults.ledger import Ledger, account, read_quarantine
from faults.nexthop import NextHop

Factory = Callable[..., RunningProxy]


def _mount(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["mount", *args], capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN, as CI has): "
                    + done.stderr.decode(errors="replace").strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path: Path, options: str) -> None:
    done = _mount("-o", f"remount,{options}", str(path))
    assert done.returncode == 0, done.stderr


def _send(p: RunningProxy, ledger: Ledger, kind: str) -> str:
    seq = ledger.new_seq()
    deliver(ledger, seq, make_message(seq, kind), p.host, p.port)
    return seq


def _retry(p: RunningProxy, ledger: Ledger, seqs: list[str], kind: str) -> None:
    for seq in seqs:
        if ledger.last(seq).refused:
            deliver(ledger, seq, make_message(seq, kind), p.host, p.port, retries=2)


def test_quarantine_disk_full(proxy_factory: Factory, faulty_hop: NextHop,
                              tmp_path: Path) -> None:
    with tmpfs(tmp_path / "qfs", "200k") as fs:
        p = proxy_factory(faulty_hop.address, quarantine={"path": str(fs / "quarantine")})
        ledger = Ledger()
        held = [_send(p, ledger, "known") for _ in range(5)]  # ~80 KB each
        codes = [ledger.last(q).reply[:9] for q in held]
        assert codes[0] == "250 2.0.0" and "451 4.3.1" in codes, codes
        assert set(codes) <= {"250 2.0.0", "451 4.3.1"}, codes
        clean = _send(p, ledger, "photo")  # only matches need the quarantine
        assert ledger.last(clean).accepted
        contents = read_quarantine(fs / "quarantine")
        assert contents.problems == []  # nothing half-written left by the failed writes
        assert len(contents.messages) == codes.count("250 2.0.0")

        remount(fs, "size=16m")
        _retry(p, ledger, held, "known")
        result = account(ledger, faulty_hop.kept(), read_quarantine(fs / "quarantine"))
        result.assert_exact()
        assert (result.quarantined, result.delivered) == (5, 1)
        assert 'mailfilter_errors_total{reason="quarantine-write"}' in p.metrics.render().decode()


def test_quarantine_read_only(proxy_factory: Factory, faulty_hop: NextHop,
                              tmp_path: Path) -> None:
    with tmpfs(tmp_path / "qfs", "16m") as fs:
        p = proxy_factory(faulty_hop.address, quarantine={"path": str(fs / "quarantine")})
        ledger = Ledger()
        first = _send(p, ledger, "known")
        assert ledger.last(first).accepted
        remount(fs, "ro")
        try:
            held = [_send(p, ledger, "known") for _ in range(3)]
            assert {ledger.last(q).reply[:9] for q in held} == {"451 4.3.0"}
            clean = _send(p, ledger, "text")
            assert ledger.last(clean).accepted
        finally:
            remount(fs, "rw")
        _retry(p, ledger, held, "known")
        result = account(ledger, faulty_hop.kept(), read_quarantine(fs / "quarantine"))
        result.assert_exact()
        assert (result.quarantined, result.delivered) == (4, 1)
