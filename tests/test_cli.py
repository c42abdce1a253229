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


def test_lazy_commands_show_their_own_help() -> None:
    """`mailfilter --help` lists hashes, quarantine and demo without importing them: the
    short help it shows must be theirs."""
    import importlib

    from mailfilter.cli import _LazyGroup

    for name, (module, attr, short) in _LazyGroup.LAZY.items():
        command = getattr(importlib.import_module(module), attr)
        assert command.name == name
        assert command.get_short_help_str(80) == short, name
    out = run("hashes", "--help")
    assert out.returncode == 0 and "import" in out.stdout


def test_help_imports_no_settings_or_store() -> None:
    code = ("import sys; from mailfilter.cli import cli\n"
            "try:\n    cli(['--help'], prog_name='mailfilter')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('pydantic', 'redis', 'numpy', 'mailfilter.settings') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


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


def test_check_config_lists_every_problem_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\non_error = "ignore"\n[smtp]\nmax_connections = 0\n'
                   '[images]\nmax_frames = "many"\n')
    out = run("check-config", "--config", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"mailfilter: {bad}: [") for line in lines)
    assert {line.split("] ")[1].split(" =")[0] for line in lines} == {
        "on_error", "max_connections", "max_frames"}


def test_check_config_refuses_what_serve_refuses(tmp_path: Path) -> None:
    """Valid key by key, but nothing to serve: `serve` refuses it, so check-config must."""
    idle = tmp_path / "idle.toml"
    idle.write_text('[smtp]\nlisten = ""\n')
    out = run("check-config", "--config", str(idle))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"mailfilter: {idle}: [smtp] listen and [milter] listen "
                                  "are both empty: nothing to serve")


def test_quarantine_commands_on_an_empty_quarantine(tmp_path: Path) -> None:
    config = tmp_path / "mf.toml"
    config.write_text(f'[quarantine]\npath = "{tmp_path / "q"}"\n')
    out = run("quarantine", "list", "--config", str(config))
    assert (out.returncode, out.stdout) == (0, "no quarantined messages\n"), out.stderr
    assert not (tmp_path / "q").exists()  # looking creates nothing
    out = run("quarantine", "show", "--config", str(config), "7Q2KXGZ4M9B3RT5VW")
    assert out.returncode == 1
    assert out.stderr.startswith("mailfilter: no quarantine entry 7Q2KXGZ4M9B3RT5VW")
    out = run("quarantine", "show", "--config", str(config), "../../etc/passwd")
    assert out.returncode == 2 and "not a quarantine id" in out.stderr
    assert "Traceback" not in out.stderr


def test_one_entry_is_one_entry(tmp_path: Path) -> None:
    """`quarantine list` and `purge` count in English (issue 18: "1 entries")."""
    import time

    from mailfilter.actions.quarantine import QuarantineStore, build_record, new_id
    from mailfilter.model import Envelope
    from mailfilter.settings import QuarantineSettings

    store = QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine"))
    received = time.time() - 400 * 86400
    entry_id = new_id(received)
    store.write(entry_id, b"old\r\n", build_record(
        entry_id=entry_id, received=received, envelope=Envelope("a@example.org", ("b@x.net",)),
        result=None, action="quarantine", reason="unscannable", policy={}, size=5),
        received, ())
    config = tmp_path / "mailfilter.toml"
    config.write_text(f'[quarantine]\npath = "{tmp_path / "quarantine"}"\n'
                      f'[store]\npath = "{tmp_path / "store"}"\n')
    out = run("quarantine", "list", "--config", str(config))
    assert out.stdout.splitlines()[-1] == "1 entry (0 on legal hold, 0 with reports pending)"
    out = run("quarantine", "purge", "--dry-run", "--config", str(config))
    assert "would purge 1 entry received before" in out.stdout, out.stdout + out.stderr
