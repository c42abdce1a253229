"""`python -m mailfilter.cybertip.check`, the operators' check of their account
(docs/cybertipline.md), run as a program against the stand-in NCMEC service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from cybertip.ncmec_server import STAND_IN_XSD, NcmecServer

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, server: NcmecServer, url: str | None = None,
           password: str | None = None) -> Path:
    secret = tmp_path / "cybertip.password"
    secret.write_text((password or server.password) + "\n")
    secret.chmod(0o600)
    path = tmp_path / "mailfilter.toml"
    path.write_text(f'[report]\nreporter_name = "Casey Compliance"\n'
                    f'reporter_email = "abuse@example.org"\n'
                    f'[cybertip]\nurl = "{url or server.url}"\n'
                    f'username = "{server.username}"\npassword_file = "{secret}"\n'
                    f'timeout = "1s"\n')
    return path


def check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mailfilter.cybertip.check",
                           *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_status(ncmec: NcmecServer, tmp_path: Path) -> None:
    done = check("--config", config(tmp_path, ncmec))
    assert done.returncode == 0, done.stderr
    assert "status ok (Remote User : esp-user)" in done.stdout
    refused = check("--config", config(tmp_path, ncmec, password="wrong"))
    assert refused.returncode == 1 and "2000" in refused.stderr


def test_a_test_report_resumes_after_a_failure(ncmec: NcmecServer, tmp_path: Path) -> None:
    journal = tmp_path / "journal.json"
    ncmec.fail("upload", "500")
    first = check("--config", config(tmp_path, ncmec), "--test-report", "--journal", journal)
    assert first.returncode == 1 and "run the same command again" in first.stderr
    second = check("--config", config(tmp_path, ncmec), "--test-report", "--journal", journal)
    assert second.returncode == 0, second.stderr
    assert "filed and finished" in second.stdout
    (stored,) = ncmec.reports.values()
    assert stored.finished and len(ncmec.posts("submit")) == 1
    assert stored.files[-1].details is not None
    assert stored.files[-1].details.findtext("fileViewedByEsp") == "false"


def test_the_xsd_is_saved_and_then_used(ncmec: NcmecServer, tmp_path: Path) -> None:
    pytest.importorskip("xmlschema")
    xsd = tmp_path / "cybertip.xsd"
    path = config(tmp_path, ncmec)
    saved = check("--config", path, "--save-xsd", xsd)
    assert saved.returncode == 0, saved.stderr
    assert xsd.read_bytes() == STAND_IN_XSD
    path.write_text(path.read_text() + f'xsd = "{xsd}"\n')
    done = check("--config", path, "--test-report", "--journal", tmp_path / "j.json")
    assert done.returncode == 0, done.stderr
    # a schema the documents break: refused before anything is filed
    xsd.write_bytes(STAND_IN_XSD.replace(b'name="reportId" type="xs:long"',
                                         b'name="reportNumber" type="xs:long"'))
    submitted = len(ncmec.posts("submit"))
    broken = check("--config", path, "--test-report", "--journal", tmp_path / "k.json")
    assert broken.returncode == 2 and "does not validate" in broken.stderr
    assert len(ncmec.posts("submit")) == submitted


def test_a_test_report_never_goes_to_production(ncmec: NcmecServer, tmp_path: Path) -> None:
    path = config(tmp_path, ncmec, url="https://report.cybertip.org/ispws")
    done = check("--config", path, "--test-report", "--journal", tmp_path / "j.json")
    assert done.returncode == 2 and "test environment" in done.stderr
    assert not (tmp_path / "j.json").exists()


def start_check(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "mailfilter.cybertip.check",
                             *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow  # a killed process and its rerun, per step
@pytest.mark.parametrize("step", ["submit", "upload", "finish"])
def test_killed_in_flight(ncmec: NcmecServer, tmp_path: Path, step: str) -> None:
    """SIGKILL while a request is in flight (NCMEC carries it out, the answer comes
    late), then the same command again: no second report."""
    path = config(tmp_path, ncmec)
    path.write_text(path.read_text().replace('timeout = "1s"', 'timeout = "30s"'))
    journal = tmp_path / "journal.json"
    ncmec.slow_seconds = 20
    ncmec.fail(step, "slow")
    process = start_check("--config", path, "--test-report", "--journal", journal)
    try:
        assert wait_until(lambda: ncmec.posts(step), timeout=30)
        assert wait_until(lambda: ncmec.reports, timeout=5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    again = check("--config", path, "--test-report", "--journal", journal)
    if step == "submit":
        assert again.returncode == 1 and "--decide" in again.stderr
        assert len(ncmec.posts("submit")) == 1
        (report_id,) = ncmec.reports
        again = check("--config", path, "--test-report", "--journal", journal,
                      "--decide", str(report_id))
    assert again.returncode == 0, again.stderr
    assert f"test report {next(iter(ncmec.reports))} filed and finished" in again.stdout
    assert len(ncmec.posts("submit")) == 1 and len(ncmec.reports) == 1


def test_a_readable_password_file_is_refused(ncmec: NcmecServer, tmp_path: Path) -> None:
    path = config(tmp_path, ncmec)
    (tmp_path / "cybertip.password").chmod(0o644)
    done = check("--config", path)
    assert done.returncode == 2 and "chmod 600" in done.stderr
    assert ncmec.received == []
