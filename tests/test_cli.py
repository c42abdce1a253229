from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailfilter", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )


def test_help_lists_the_contract_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("serve", "check-config", "hash", "scan", "hashes", "quarantine"):
        assert command in out.stdout


def test_check_config_prints_effective_settings() -> None:
    out = run("check-config", "--config", "config/mailfilter.example.toml")
    assert out.returncode == 0, out.stderr
    assert "config/mailfilter.example.toml: valid" in out.stdout
    assert 'listen = "127.0.0.1:10025"' in out.stdout


def test_check_config_refuses_bad_file_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\non_error = "ignore"\n')
    out = run("check-config", "--config", str(bad))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    expected = f'mailfilter: {bad}: [policy] on_error = "ignore": expected one of tempfail, accept'
    assert lines == [expected]


def test_quarantine_commands_say_they_are_not_built() -> None:
    out = run("quarantine", "list")
    assert out.returncode == 2
    assert "not built yet" in out.stderr
    assert "Traceback" not in out.stderr
