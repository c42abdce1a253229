"""`mailfilter scan` end to end: messages on disk, lists from a file or the Redis store."""

from __future__ import annotations

import io
import json
import mailbox
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from factories import jpeg, message, message_bytes, png

from mailfilter.actions.report.text import distance_text
from mailfilter.cli.scan import ScanSummary, scan_text
from mailfilter.model import (
    AttachmentResult,
    ExactHashes,
    ImageFingerprint,
    Match,
    ScanResult,
    Verdict,
)

KNOWN = jpeg(42)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                          text=True, timeout=180, env=full_env)


def known_pdq(tmp_path: Path) -> str:
    path = tmp_path / "known.jpg"
    path.write_bytes(KNOWN)
    out = run("hash", "--json", str(path))
    pdq: str = json.loads(out.stdout)["pdq"]
    return pdq


@pytest.fixture
def mbox_path(tmp_path: Path) -> Path:
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("holiday/x.jpg", KNOWN)
    path = tmp_path / "test.mbox"
    box = mailbox.mbox(str(path))
    box.add(message_bytes(message(subject="text only")))
    box.add(message_bytes(message(subject="a photo", attachments=[("a.jpg", "image/jpeg",
                                                                   jpeg(1))])))
    box.add(message_bytes(message(subject="zipped", attachments=[
        ("p.zip", "application/zip", zipped.getvalue())])))
    box.add(message_bytes(message(subject="disguised", attachments=[
        ("data.bin", "application/octet-stream", KNOWN)])))
    box.close()
    return path


def test_scan_json_finds_known_image_in_zip_and_disguised(tmp_path: Path, mbox_path: Path) -> None:
    hashes = tmp_path / "list.hma"
    hashes.write_text(f"pdq {known_pdq(tmp_path)}\n")
    out = run("scan", "--json", "--hashes", str(hashes), str(mbox_path))
    assert out.returncode == 1, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["verdict"] for r in records] == ["clean", "clean", "match", "match"]
    assert [r["source"] for r in records] == [f"{mbox_path}:{n}" for n in range(1, 5)]
    zipped = records[2]["attachments"][0]
    assert zipped["mime_path"].endswith("holiday/x.jpg")
    assert zipped["matches"][0]["algorithm"] == "pdq"
    assert zipped["matches"][0]["distance"] == 0
    for key in ("mime_path", "filename", "content_type", "sha256", "pdq", "pdq_quality",
                "matches", "skipped"):
        assert key in zipped
    summary = json.loads(out.stderr.strip().splitlines()[-1])["summary"]
    assert summary["messages"] == 4 and summary["matched"] == 2


def test_scan_clean_exits_0_and_prints_a_summary(tmp_path: Path, mbox_path: Path) -> None:
    hashes = tmp_path / "other.md5"
    hashes.write_text("0" * 31 + "1\n")
    out = run("scan", "--hashes", str(hashes), "--hashes-format", "md5", str(mbox_path))
    assert out.returncode == 0, out.stderr
    assert "4 messages, 3 images, 1 other file, 0 matched" in out.stdout


def test_scan_exact_hash_list_matches(tmp_path: Path) -> None:
    import hashlib

    eml = tmp_path / "one.eml"
    eml.write_bytes(message_bytes(message(attachments=[("k.png", "image/png", png(7))])))
    hashes = tmp_path / "list.sha256"
    hashes.write_text(hashlib.sha256(png(7)).hexdigest() + "\n")
    out = run("scan", "--json", "--hashes", str(hashes), "--hashes-format", "sha256", str(eml))
    assert out.returncode == 1, out.stderr
    match = json.loads(out.stdout)["attachments"][0]["matches"][0]
    assert match["algorithm"] == "sha256" and match["distance"] == 0


def test_scan_maildir_and_directory(tmp_path: Path) -> None:
    maildir = mailbox.Maildir(str(tmp_path / "Maildir"))
    for n in range(3):
        maildir.add(message_bytes(message(subject=f"m{n}")))
    emls = tmp_path / "emls"
    emls.mkdir()
    (emls / "a.eml").write_bytes(message_bytes(message(subject="a")))
    out = run("scan", "--json", str(tmp_path / "Maildir"), str(emls),
              env={"MAILFILTER_STORE__PATH": str(tmp_path / "state")})
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4


def test_scan_missing_path_exits_2(tmp_path: Path) -> None:
    out = run("scan", str(tmp_path / "nope.mbox"),
              env={"MAILFILTER_STORE__PATH": str(tmp_path / "state")})
    assert out.returncode == 2
    assert "nope.mbox" in out.stderr and "Traceback" not in out.stderr


def test_scan_against_the_redis_store(tmp_path: Path, mbox_path: Path, redis_url: str,
                                      redis_prefix: str) -> None:
    env = {"MAILFILTER_STORE__REDIS_URL": redis_url, "MAILFILTER_STORE__KEY_PREFIX": redis_prefix}
    known = tmp_path / "known.jpg"
    known.write_bytes(KNOWN)
    added = run("hashes", "add", "--list", "stand-ins", str(known), env=env)
    assert added.returncode == 0, added.stderr
    out = run("scan", "--json", str(mbox_path), env=env)
    assert out.returncode == 1, out.stderr
    verdicts = [json.loads(line)["verdict"] for line in out.stdout.splitlines()]
    assert verdicts == ["clean", "clean", "match", "match"]
    lists = {m["list"] for line in out.stdout.splitlines()
             for a in json.loads(line)["attachments"] for m in a["matches"]}
    assert lists == {"stand-ins"}


# --- wording (issue 18: "1 entries", "0 messages/s", 8.60233 here and 8.6 in `show`) ------


def _one_match(distance: float) -> ScanResult:
    fp = ImageFingerprint(exact=ExactHashes("0" * 32, "0" * 40, "0" * 64))
    hit = AttachmentResult(mime_path="2", filename="x.jpg", content_type="image/jpeg",
                           fingerprint=fp, matches=(Match("known", "gridhist", distance),))
    return ScanResult(source="m.eml", message_id=None, verdict=Verdict.MATCH,
                      attachments=(hit,))


def test_a_distance_reads_as_in_quarantine_show() -> None:
    for distance in (8.60233, 0.0, 12.0):
        text = scan_text(_one_match(distance))
        assert f"at distance {distance_text(distance)}\n" in text + "\n", text
    assert "at distance 8.6\n" in scan_text(_one_match(8.60233)) + "\n"
    assert "at distance 0\n" in scan_text(_one_match(0.0)) + "\n"
    assert "m.eml: match (1 image, 0 other files)" in scan_text(_one_match(1.0))


def test_summary_counts_and_rate_read_as_english() -> None:
    summary = ScanSummary(messages=1, images=1, files=1, matches=1)
    summary.started -= 2.6  # one message in 2.6 s
    line = summary.line()
    assert line.startswith("1 message, 1 image, 1 other file, 1 matched, 0 unscannable, "
                           "0 errors, 2.6 s (0.38 messages/s)"), line
    summary = ScanSummary(messages=300, images=2)
    summary.started -= 2.0
    assert "300 messages, 2 images, 0 other files" in summary.line()
    assert "(150 messages/s)" in summary.line()
