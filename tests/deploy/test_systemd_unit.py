"""deploy/systemd/mailfilter.service: the hardening and the stop/reload behaviour the
service needs, and systemd's own verdict on the file (`systemd-analyze verify` and
`security --offline`) where systemd is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailfilter.settings import Settings, _parse_duration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "mailfilter.service"
PURGE = UNIT.with_name("mailfilter-purge.service")
PURGE_TIMER = UNIT.with_name("mailfilter-purge.timer")
EXECUTABLE = "/opt/mailfilter/bin/mailfilter"
MAX_EXPOSURE = 2.0  # systemd-analyze security: 0 (locked down) .. 10 (unprotected)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows repeating most keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(key: str) -> str:
    values = service().get(key)
    assert values, f"{key}= missing"
    return values[-1]


def test_runs_the_proxy_as_its_own_user_with_its_state_directory() -> None:
    assert one("User") == one("Group") == "mailfilter"
    assert one("ExecStart") == f"{EXECUTABLE} serve --config /etc/mailfilter/mailfilter.toml"
    # StateDirectory makes /var/lib/mailfilter, the default state and quarantine directory
    # of a system service (settings.default_state_dir), owned by the service's user.
    assert one("StateDirectory") == "mailfilter" and one("StateDirectoryMode") == "0700"
    assert one("Type") == "exec"


def test_hardening() -> None:
    svc = service()
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert svc.get(key) == [value], f"{key}={svc.get(key)}, expected {value}"
    assert re.fullmatch(r"\d+[KMGT]", one("MemoryMax"))
    assert int(one("LimitNOFILE")) >= 4096
    # The worker pool sets RLIMIT_AS per worker: setrlimit (@resources) must stay allowed.
    assert "@system-service" in svc["SystemCallFilter"]
    assert not any("@resources" in v and v.startswith("~") for v in svc["SystemCallFilter"])
    # Each worker confines itself with Landlock (sandbox.py): its calls must be allowed.
    allowed = " ".join(v for v in svc["SystemCallFilter"] if not v.startswith("~")).split()
    for call in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
        assert call in allowed


def test_stop_drains_before_anything_is_killed_and_reload_is_sighup() -> None:
    # SIGTERM to the main process only: it drains with its workers alive, then closes
    # them; SIGKILL for leftovers only after TimeoutStopSec.
    assert one("KillMode") == "mixed"
    assert one("KillSignal") == "SIGTERM"
    stop = _parse_duration(one("TimeoutStopSec"))
    drain = Settings().smtp.shutdown_timeout
    assert stop >= drain + 15, f"TimeoutStopSec {stop}s leaves no time after the drain"
    assert re.fullmatch(r"(/usr)?/bin/kill -HUP \$MAINPID", one("ExecReload"))
    assert one("Restart") == "on-failure"
    # Exit 2 is a configuration error: restarting would repeat it forever.
    assert one("RestartPreventExitStatus") == "2"


def _systemd_tool() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    return tool


def _testable_copy(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at this checkout's mailfilter (verify checks that
    the executable exists)."""
    here = Path(sys.executable).with_name("mailfilter")
    if not here.exists():
        pytest.skip(f"{here} not installed")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(EXECUTABLE, str(here)))
    return copy


def test_purge_timer_runs_the_retention_daily_as_the_service_user() -> None:
    purge = parse_unit(PURGE.read_text())["Service"]
    assert purge["User"] == ["mailfilter"] and purge["Type"] == ["oneshot"]
    assert purge["ExecStart"] == [f"{EXECUTABLE} quarantine purge --config "
                                  "/etc/mailfilter/mailfilter.toml --by purge-timer"]
    assert purge["ProtectSystem"] == ["strict"] and purge["StateDirectory"] == ["mailfilter"]
    timer = parse_unit(PURGE_TIMER.read_text())
    assert timer["Timer"]["OnCalendar"] == ["daily"] and timer["Timer"]["Persistent"] == ["yes"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_tool()
    units = [_testable_copy(tmp_path, unit) for unit in (UNIT, PURGE, PURGE_TIMER)]
    run = subprocess.run([tool, "verify", *map(str, units)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert run.returncode == 0 and not run.stderr.strip() and not run.stdout.strip(), \
        run.stderr + run.stdout


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    tool = _systemd_tool()
    run = subprocess.run([tool, "security", "--offline=yes", str(_testable_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout + run.stderr)
    if m is None and "--offline" in run.stderr:
        pytest.skip("this systemd-analyze has no offline security check")
    assert m is not None, run.stdout + run.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, run.stdout


MILTER_DROPIN = UNIT.with_name("mailfilter.service.d") / "milter-socket.conf"


def test_milter_socket_dropin_opens_the_documented_socket_directory() -> None:
    """ProtectSystem=strict leaves only the state directory writable: the milter socket
    the docs recommend (under Postfix's chroot) needs the drop-in's ReadWritePaths."""
    rw = parse_unit(MILTER_DROPIN.read_text())["Service"]["ReadWritePaths"]
    for doc in (REPO / "docs" / "milter.md", REPO / "deploy" / "postfix" / "milter.cf"):
        sockets = set(re.findall(r"unix:(/var/spool/postfix/\S+?\.sock)", doc.read_text()))
        assert sockets, doc
        assert {str(Path(s).parent) for s in sockets} == set(rw), (doc, sockets, rw)
    assert "milter-socket.conf" in (REPO / "docs" / "milter.md").read_text()


def _verify_with_dropin(tmp_path: Path, dropin_text: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of the unit with the drop-in beside it, found the way
    systemd finds drop-ins (`NAME.service.d/` in the unit search path)."""
    tool = _systemd_tool()
    unit = _testable_copy(tmp_path)
    dropins = tmp_path / "mailfilter.service.d"
    dropins.mkdir()
    (dropins / MILTER_DROPIN.name).write_text(dropin_text)
    return subprocess.run([tool, "verify", unit.name], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})


def test_milter_socket_dropin_verifies(tmp_path: Path) -> None:
    run = _verify_with_dropin(tmp_path, MILTER_DROPIN.read_text())
    assert run.returncode == 0 and not (run.stderr + run.stdout).strip(), \
        run.stderr + run.stdout


def test_verify_reads_the_dropin(tmp_path: Path) -> None:
    """The check above would pass with the drop-in ignored: a mistake in it is seen."""
    run = _verify_with_dropin(tmp_path, MILTER_DROPIN.read_text() + "ReadWritePaths=relative\n")
    assert "milter-socket.conf" in run.stderr and "not absolute" in run.stderr, run.stderr
