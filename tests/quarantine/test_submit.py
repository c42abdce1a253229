"""`mailfilter quarantine submit` against the stand-in NCMEC service
(tests/cybertip/ncmec_server.py), on entries the real proxy quarantined: one report with
the email incident, one upload per matched file with the attachment's MD5, file details,
finish, the ids in the entry; resuming after a 5xx, a timeout, a dropped answer or a kill
without a second report; and preservation against purge with a moved clock."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cybertip.ncmec_server import NcmecServer, running_ncmec_server
from factories import jpeg, message, message_bytes
from PIL import Image
from proxy.proxy_harness import (
    KNOWN,
    IndexBox,
    RecordingSink,
    RunningProxy,
    make_settings,
    start_proxy,
)

from mailfilter.actions.preservation import report_id_of
from mailfilter.actions.quarantine import QuarantineStore
from mailfilter.actions.quarantine_service import QuarantineService
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.settings import QuarantineSettings, load_settings
from mailfilter.workers import WorkerPool
from quarantine.quarantine_harness import REPO, ReportingProxy, mf, wait_until
from quarantine.test_commands import audit, config_for, quarantine_via_proxy

Factory = Callable[..., RunningProxy]
DAY = 86400.0


@pytest.fixture
def ncmec() -> Iterator[NcmecServer]:
    with running_ncmec_server() as server:
        yield server


def known_as_png() -> bytes:
    """The known picture again, as a PNG: other bytes, the same perceptual hash."""
    out = io.BytesIO()
    Image.open(io.BytesIO(KNOWN)).save(out, "PNG")
    return out.getvalue()


def password_file(tmp_path: Path, server: NcmecServer) -> Path:
    secret = tmp_path / "cybertip.password"
    secret.write_text(server.password + "\n")
    secret.chmod(0o600)
    return secret


def auto_submitting(reporting_proxy: Any, sink: RecordingSink, server: NcmecServer,
                    tmp_path: Path, *, report: dict[str, Any] | None = None,
                    cybertip: dict[str, Any] | None = None) -> ReportingProxy:
    """A proxy whose report sender files CyberTipline reports with `server`
    (`[cybertip] auto_submit`); `report` and `cybertip` add settings to those sections."""
    proxy: ReportingProxy = reporting_proxy(
        sink.address,
        report={"reporter_name": "Casey Compliance", "reporter_email": "abuse@example.org",
                **(report or {})},
        cybertip={"url": server.url, "username": server.username,
                  "password_file": str(password_file(tmp_path, server)), "timeout": "2s",
                  "auto_submit": True, **(cybertip or {})})
    return proxy


def cybertip_config(tmp_path: Path, sink: RecordingSink, server: NcmecServer,
                    extra: str = "") -> Path:
    secret = password_file(tmp_path, server)
    return config_for(tmp_path, sink.address, f"""
[report]
reporter_name = "Casey Compliance"
reporter_email = "abuse@example.org"
[cybertip]
url = "{server.url}"
username = "{server.username}"
password_file = "{secret}"
timeout = "1s"
{extra}
""")


def quarantined(p: RunningProxy) -> str:
    raw = message_bytes(message(subject="holiday", attachments=[
        ("beach.jpg", "image/jpeg", KNOWN), ("clean.jpg", "image/jpeg", jpeg(7)),
        ("beach.png", "image/png", known_as_png())]))
    return quarantine_via_proxy(p, raw, rcpts=("RCPT TO:<bob@example.net>",
                                               "RCPT TO:<carol@example.net>"))


def canonical(element: ET.Element) -> str:
    """An XML element as canonical XML without the indentation between elements."""
    return ET.canonicalize(ET.tostring(element, encoding="unicode"), strip_text=True)


def store_of(tmp_path: Path) -> QuarantineStore:
    return QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine"))


def submit(config: Path, entry_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return mf("quarantine", "submit", entry_id, "--config", str(config), *args)


def test_submit_files_one_report_and_records_the_ids(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    entry_id = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec)

    refused = submit(config, entry_id)  # not a terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert not ncmec.received

    out = submit(config, entry_id, "--yes")
    assert out.returncode == 0, out.stderr
    (report,) = ncmec.reports.values()
    assert f"CyberTipline report {report.report_id} filed and finished" in out.stdout
    assert report.finished and len(ncmec.posts("submit")) == 1

    doc = report.document
    emails = [e.text for e in doc.iter("email")]
    assert {"alice@example.org", "bob@example.net", "carol@example.net"} <= set(emails)
    assert doc.find("internetDetails/emailIncident") is not None
    reported = doc.find("personOrUserReported")
    assert reported is not None
    assert reported.findtext("personOrUserReportedPerson/email") == "alice@example.org"
    assert reported.findtext("ipCaptureEvent/ipAddress") == "192.0.2.7"
    assert [r.findtext(".//email") for r in doc.findall("intendedRecipient")] == [
        "bob@example.net", "carol@example.net"]
    entry = store_of(tmp_path).find(entry_id)
    assert entry is not None
    received = entry.record.received_at
    assert doc.findtext("incidentSummary/incidentDateTime", "").startswith(received[:16])

    # One upload per matched file, the attachment's bytes (the clean one is not sent).
    assert sorted(f.md5 for f in report.files) == sorted(
        hashlib.md5(d).hexdigest() for d in (KNOWN, known_as_png()))
    assert sorted(f.filename for f in report.files) == ["beach.jpg", "beach.png"]
    for f in report.files:
        assert f.details is not None
        assert f.details.findtext("fileViewedByEsp") == "false"
        assert f.details.findtext("originalFileHash[@hashType='MD5']") == f.md5
        assert f.details.findtext("ipCaptureEvent/ipAddress") == "192.0.2.7"

    # The draft a compliance officer reviews is what was filed: its <report> is the body
    # of /submit, each <fileDetails> that of /fileinfo without the ids NCMEC assigned.
    draft = mf("quarantine", "report", entry_id, "--format", "cybertip-xml", "--config",
               str(config))
    assert draft.returncode == 0, draft.stderr
    draft_root = ET.fromstring(draft.stdout)
    draft_report = draft_root.find("report")
    assert draft_report is not None
    draft_report.attrib.clear()  # (the draft names the schema)
    (submitted,) = ncmec.posts("submit")
    assert canonical(draft_report) == canonical(ET.fromstring(submitted.body))
    filed = []
    for post in ncmec.posts("fileinfo"):
        details = ET.fromstring(post.body)
        for tag in ("reportId", "fileId"):
            element = details.find(tag)
            assert element is not None
            details.remove(element)
        filed.append(canonical(details))
    assert sorted(canonical(d) for d in draft_root.findall("fileDetails")) == sorted(filed)

    # The ids are in the entry; show and show --json carry the report id.
    assert report_id_of(entry.record) == report.report_id
    assert entry.record.last_event("cybertip-finished") is not None
    shown = json.loads(mf("quarantine", "show", entry_id, "--json", "--config",
                          str(config)).stdout)
    assert shown["cybertip_report_id"] == report.report_id
    text = mf("quarantine", "show", entry_id, "--config", str(config)).stdout
    assert f"cybertip    report {report.report_id} finished" in text

    # Idempotent: a second submit says so, sends nothing.
    posts = len(ncmec.received)
    again = submit(config, entry_id, "--yes", "--json")
    assert again.returncode == 0, again.stderr
    answer = json.loads(again.stdout)
    assert answer["result"] == "already-finished"
    assert answer["report_id"] == report.report_id
    assert sorted(answer["file_ids"]) == sorted(f.file_id for f in report.files)
    assert len(ncmec.received) == posts

    # What was reported is preserved: its message cannot be deleted.
    out = mf("quarantine", "delete", entry_id, "--yes", "--config", str(config))
    assert out.returncode == 2 and "preserved until" in out.stderr



def test_a_file_matched_by_its_md5_is_uploaded_from_inside_its_zip(
        tmp_path: Path, recording_sink: RecordingSink, ncmec: NcmecServer,
        worker_pool: WorkerPool) -> None:
    """A listed file that is not a picture travels as hashes only in a scan; submit asks
    the extract stage for its bytes again by SHA-256 (here a zip member)."""
    blob = random.Random(5).randbytes(20_000)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("notes.bin", blob)
    md5 = hashlib.md5(blob).hexdigest()
    index = IndexBox(HashIndex.build([IndexEntry("stand-ins", "md5", md5, ("test",))]))
    p = start_proxy(make_settings(tmp_path, recording_sink.address), worker_pool, index)
    try:
        entry_id = quarantine_via_proxy(p, message_bytes(message(
            subject="files", attachments=[("notes.zip", "application/zip",
                                           zipped.getvalue())])))
    finally:
        p.stop()
    out = submit(cybertip_config(tmp_path, recording_sink, ncmec), entry_id, "--yes")
    assert out.returncode == 0, out.stderr
    (report,) = ncmec.reports.values()
    assert [f.md5 for f in report.files] == [md5] and report.finished


def test_matches_on_no_allowed_list_are_refused(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    entry_id = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec, 'lists = ["other-list"]')
    out = submit(config, entry_id, "--yes")
    assert out.returncode == 2
    assert "stand-ins" in out.stderr and "other-list" in out.stderr
    assert not ncmec.received
    # The attempt is in the audit log with why it was refused, as for every command.
    (line,) = [a for a in audit(tmp_path) if a["action"] == "submit"]
    assert line["id"] == entry_id and line["result"].startswith("refused: ")
    assert "other-list" in line["result"]


def test_the_message_is_read_again_in_a_worker_under_its_deadline(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """submit parses the quarantined (hostile) message again to find the matched files:
    in a worker of its own, as the scanner does, never in the operator's process. Shown by
    the worker's deadline: `[scan] timeout` at a millisecond ends the task there (in the
    command's own process no deadline would apply and the report would be filed)."""
    p = proxy_factory(recording_sink.address)
    entry_id = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec)
    config.write_text(config.read_text() + "\n[scan]\ntimeout = 0.001\n")
    out = submit(config, entry_id, "--yes")
    assert out.returncode == 2, out.stdout
    assert "could not be read again (deadline" in out.stderr
    assert "Traceback" not in out.stderr
    assert not ncmec.received
    assert [a["result"].split(":")[0] for a in audit(tmp_path)
            if a["action"] == "submit"] == ["refused"]
    config.write_text(config.read_text().replace("timeout = 0.001", "timeout = 30"))
    out = submit(config, entry_id, "--yes")
    assert out.returncode == 0, out.stderr
    assert len(ncmec.reports) == 1


FAULTS = [(step, fault) for step in ("submit", "upload", "fileinfo", "finish")
          for fault in ("500", "500-after", "slow", "drop")]


@pytest.mark.slow  # 16 runs of the command against the stand-in: about a minute
@pytest.mark.parametrize(("step", "fault"), FAULTS)
def test_a_failure_at_each_step_resumes_without_a_second_report(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path, step: str, fault: str) -> None:
    p = proxy_factory(recording_sink.address)
    entry_id = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec)
    ncmec.fail(step, fault)
    first = submit(config, entry_id, "--yes")
    assert first.returncode == 2, first.stdout
    if step == "submit" and fault != "500":  # carried out, the answer lost
        assert "unknown" in first.stderr and "--decide" in first.stderr
        refused = submit(config, entry_id, "--yes")
        assert refused.returncode == 2 and "--decide" in refused.stderr
        assert len(ncmec.posts("submit")) == 1
        (report_id,) = ncmec.reports
        first = submit(config, entry_id, "--yes", "--decide", str(report_id))
    else:
        assert "run the same command again" in first.stderr
        first = submit(config, entry_id, "--yes")
    assert first.returncode == 0, first.stderr
    (report,) = ncmec.reports.values()  # one report, whatever was sent again
    assert report.finished and not report.retracted
    assert len(ncmec.posts("submit")) == (2 if (step, fault) == ("submit", "500") else 1)
    entry = store_of(tmp_path).find(entry_id)
    assert entry is not None and report_id_of(entry.record) == report.report_id
    described = [f for f in report.files if f.details is not None]
    assert sorted(f.md5 for f in described) == sorted(
        hashlib.md5(d).hexdigest() for d in (KNOWN, known_as_png()))


@pytest.mark.slow  # a killed command and its rerun, per step: 15-20 s
@pytest.mark.parametrize("step", ["submit", "upload", "finish"])
def test_killed_in_flight_resumes_without_a_second_report(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path, step: str) -> None:
    p = proxy_factory(recording_sink.address)
    entry_id = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec)
    config.write_text(config.read_text().replace('timeout = "1s"', 'timeout = "30s"'))
    ncmec.slow_seconds = 20
    ncmec.fail(step, "slow")
    process = subprocess.Popen(
        [sys.executable, "-m", "mailfilter", "quarantine", "submit", entry_id, "--yes",
         "--config", str(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "USER": "tester"})
    try:
        deadline = time.monotonic() + 30
        while not (ncmec.posts(step) and ncmec.reports) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    again = submit(config, entry_id, "--yes")
    if step == "submit":
        assert again.returncode == 2 and "--decide" in again.stderr
        (report_id,) = ncmec.reports
        again = submit(config, entry_id, "--yes", "--decide", str(report_id))
    assert again.returncode == 0, again.stderr
    assert len(ncmec.posts("submit")) == 1 and len(ncmec.reports) == 1
    assert next(iter(ncmec.reports.values())).finished


def test_a_reported_entry_is_preserved_a_year_after_submission(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    reported = quarantined(p)
    unreported = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec, "")
    short = config.read_text() + "\n"
    config.write_text(short.replace("[quarantine]\n", "[quarantine]\nretention_days = 30\n"))
    assert submit(config, reported, "--yes").returncode == 0
    (report_id,) = ncmec.reports
    service = QuarantineService(load_settings(config).settings, lambda _: None)

    def purge(days: float) -> dict[str, object]:
        result = service.purge("tester", False, now=time.time() + days * DAY)
        return result.to_json()

    kept = purge(10)  # within retention: nothing to say
    assert kept["purged"] == [] and kept["kept_reported"] == []
    kept = purge(300)  # past retention (30 days), within a year of submission
    assert kept["purged"] == [unreported]
    (why,) = kept["kept_reported"]  # type: ignore[misc]
    assert why["id"] == reported and why["report_id"] == report_id
    assert why["until"] > why["submitted"]
    assert store_of(tmp_path).find(reported) is not None
    assert purge(366)["purged"] == [reported]
    assert store_of(tmp_path).find(reported) is None


def test_purge_says_what_it_kept_for_the_cybertipline(
        proxy_factory: Factory, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """The command's text and --json: an entry past retention kept for its report (the
    record's receipt moved back 400 days, as if received then)."""
    p = proxy_factory(recording_sink.address)
    entry_id = quarantined(p)
    config = cybertip_config(tmp_path, recording_sink, ncmec)
    assert submit(config, entry_id, "--yes").returncode == 0
    (report_id,) = ncmec.reports
    store = store_of(tmp_path)
    store.update(entry_id, lambda rec: type(rec).from_json(
        {**rec.to_json(), "received_ts": float(rec.received_ts or 0) - 400 * DAY}))
    out = mf("quarantine", "purge", "--dry-run", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert f"kept {entry_id}: CyberTipline report {report_id} submitted" in out.stdout
    assert "1 reported to the CyberTipline" in out.stdout
    summary = json.loads(mf("quarantine", "purge", "--json", "--config", str(config)).stdout)
    assert summary["purged"] == []
    assert [k["id"] for k in summary["kept_reported"]] == [entry_id]
    assert store.find(entry_id) is not None


def test_auto_submit_with_nothing_to_file_does_not_say_reported_to_the_cybertipline(
        reporting_proxy: Any, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """An entry whose matches are on no list `[cybertip] lists` allows: the outbox's
    cybertip step files nothing, and the record's "reported" event names only the report
    directory, not the CyberTipline."""
    rp = auto_submitting(reporting_proxy, recording_sink, ncmec, tmp_path,
                         report={"dir": str(tmp_path / "reports")},
                         cybertip={"lists": ["some-other-list"]})
    quarantined(rp.proxy)
    (entry,) = rp.wait_reported(1, timeout=30)
    assert ncmec.received == []
    reported = entry.record.last_event("reported")
    assert reported is not None and "cybertip" not in reported.detail
    assert reported.detail["dir"] == str(tmp_path / "reports")


def test_auto_submit_with_an_unknown_outcome_leaves_it_to_the_operator(
        reporting_proxy: Any, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """/submit done but its answer lost: the outbox's step ends (nothing is sent again),
    the history says `cybertip-unknown` and the "reported" event says the outcome is
    unknown."""
    ncmec.fail("submit", "drop")
    rp = auto_submitting(reporting_proxy, recording_sink, ncmec, tmp_path)
    quarantined(rp.proxy)
    (entry,) = rp.wait_reported(1, timeout=30)
    assert len(ncmec.posts("submit")) == 1 and ncmec.posts("upload") == []
    assert entry.record.last_event("cybertip-unknown") is not None
    reported = entry.record.last_event("reported")
    assert reported is not None
    assert reported.detail == {"cybertip": ncmec.url, "cybertip_outcome": "unknown"}


def test_auto_submit_ends_when_the_entry_cannot_be_reported_any_more(
        reporting_proxy: Any, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """NCMEC answers 500 and the operator deletes the message meanwhile: the next try
    finds nothing it could report, and the outbox's step ends (`cybertip-refused` in the
    history) instead of trying every hour for ever, which kept the entry past its
    retention."""
    for _ in range(50):
        ncmec.fail("submit", "500")
    rp = auto_submitting(reporting_proxy, recording_sink, ncmec, tmp_path,
                         report={"retry_min": "0.3s", "retry_max": "0.5s"})
    entry_id = quarantined(rp.proxy)
    store = rp.store
    first_failure = wait_until(lambda: (e := store.find(entry_id)) is not None
                               and e.record.last_event("cybertip-failed"), 30)
    assert first_failure
    entry = store.find(entry_id)
    assert entry is not None
    service = QuarantineService(rp.settings, lambda _: None)
    assert service.delete(entry, "tester", lambda _: None)
    (entry,) = rp.wait_reported(1, timeout=30)
    refused = entry.record.last_event("cybertip-refused")
    assert refused is not None and "message was deleted" in refused.detail["reason"]
    assert entry.record.last_event("reported") is None  # (nothing was reported anywhere)
    tries = len(ncmec.posts("submit"))
    time.sleep(1.5)  # three retry periods: nothing more is sent
    assert len(ncmec.posts("submit")) == tries < 50


def test_auto_submit_waits_for_the_lock_without_counting_a_failure(
        reporting_proxy: Any, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """While another process holds the quarantine's CyberTipline lock (a submission by
    hand, a purge), the outbox's step is deferred: no failed attempt, no error, no
    growing backoff; it files the report once the lock is free."""
    rp = auto_submitting(reporting_proxy, recording_sink, ncmec, tmp_path,
                         report={"retry_min": "0.2s", "retry_max": "1h"})
    store = rp.store
    with store.cybertip_lock():
        quarantined(rp.proxy)
        metrics = rp.proxy.metrics
        assert metrics is not None

        def deferred() -> float:
            m = re.search(r'^mailfilter_report_deliveries_total\{result="deferred",'
                          r'step="cybertip"\} (\S+)$', metrics.render().decode(), re.M)
            return float(m.group(1)) if m else 0.0

        assert wait_until(lambda: deferred() >= 3, 30)
        (job,) = store.jobs()
        assert job.attempts == 0 and not job.last_error
        assert ncmec.received == []
    (entry,) = rp.wait_reported(1, timeout=30)
    (report,) = ncmec.reports.values()
    assert report.finished and report_id_of(entry.record) == report.report_id
    counted = [line for line in metrics.render().decode().splitlines()
               if line.startswith("mailfilter_report_deliveries_total")]
    assert counted and not any('result="failed"' in line for line in counted)


def test_auto_submit_from_the_outbox_resumes_and_shares_the_journal(
        reporting_proxy: Any, recording_sink: RecordingSink, ncmec: NcmecServer,
        tmp_path: Path) -> None:
    """`[cybertip] auto_submit`: the outbox's cybertip step files the report; a 500 on
    upload, three times, is retried with backoff, on the same report, and is one line of
    the history; `quarantine submit` afterwards finds it finished."""
    for _ in range(3):
        ncmec.fail("upload", "500")
    rp = auto_submitting(reporting_proxy, recording_sink, ncmec, tmp_path,
                         report={"dir": str(tmp_path / "reports"), "retry_min": "0.3s",
                                 "retry_max": "0.5s"})
    entry_id = quarantined(rp.proxy)
    (entry,) = rp.wait_reported(1, timeout=30)
    (report,) = ncmec.reports.values()
    assert report.finished and len(ncmec.posts("submit")) == 1
    assert len(ncmec.posts("upload")) == 5  # the refused one 3 times, then again, the other
    assert report_id_of(entry.record) == report.report_id
    events = [h.event for h in entry.record.history]
    assert events == ["quarantined", "cybertip-failed", "cybertip-finished", "reported"]
    assert entry.record.history[1].detail["repeated"] == 3
    # The audit log keeps every attempt.
    lines = rp.store.audit_path.read_text().splitlines()
    submits = [json.loads(line) for line in lines if '"action": "submit"' in line]
    assert [a["result"].split(":")[0] for a in submits] == ["failed"] * 3 + ["finished"]
    assert entry.record.history[3].detail["cybertip"] == ncmec.url
    config = cybertip_config(tmp_path, recording_sink, ncmec)
    again = submit(config, entry_id, "--yes")
    assert again.returncode == 0 and "already reported" in again.stdout
    assert len(ncmec.posts("submit")) == 1
