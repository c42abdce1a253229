"""`mailfilter demo`: the evaluators' path, run as they run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.serving import clean_environ


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", "demo", *args],
                          capture_output=True, text=True, timeout=180, env=clean_environ())


def test_demo_json_relays_the_clean_message_and_quarantines_the_match(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    run = demo("--json", "--dir", str(work))
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["ok"] is True
    failed = [c for c in result["checks"] if not c["ok"]]
    assert not failed and len(result["checks"]) >= 8
    assert result["clean"]["relayed"] and result["clean"]["byte_identical"]
    assert result["clean"]["reply"].startswith("250")
    match = result["match"]
    assert match["reply"].startswith("250") and match["quarantine_id"]
    assert {m["list"] for m in match["matches"]} == {"demo-known"}
    assert all(m["labels"] == ["generated-benign-stand-in"] for m in match["matches"])
    # The copy sent is resized and re-compressed: only perceptual hashes can match it.
    assert {m["algorithm"] for m in match["matches"]} <= {"pdq", "gridhist"}
    assert match["record"]["id"] == match["quarantine_id"]
    report = result["report"]
    assert report["received"] and match["quarantine_id"] in report["subject"]
    assert "demo-known" in report["text"]
    assert all(not p["content_type"].startswith("image/") for p in report["other_parts"])
    # --dir keeps everything: the settings, the quarantined message and its record.
    assert (work / "mailfilter.toml").exists()
    assert list((work / "quarantine").glob(f"*/{match['quarantine_id']}.json"))
    assert (work / "serve.log").stat().st_size > 0


@pytest.mark.slow  # the whole demo (the JSON run stays in the quick suite): about 8 s
def test_demo_text_and_temporary_directory() -> None:
    run = demo()
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().splitlines()[-2] == "demo ok"
    removed = run.stdout.rstrip().splitlines()[-1]
    assert "removed" in removed
    assert not Path(removed.split()[0].lstrip("(")).exists()


def test_demo_refuses_a_directory_in_use(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    run = demo("--dir", str(tmp_path))
    assert run.returncode == 2
    assert "not empty" in run.stderr
