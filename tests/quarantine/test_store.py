"""The quarantine store, outbox and audit log on a real filesystem, and the report
sender's handling of jobs whose entry never appeared."""

from __future__ import annotations

import asyncio
import email
import json
import stat
import threading
import time
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mailfilter.actions.quarantine import (
    QuarantineStore,
    build_record,
    id_time,
    is_entry_id,
    new_id,
)
from mailfilter.actions.records import (
    EntrySummary,
    HistoryEvent,
    QuarantineRecord,
    ReportDocument,
)
from mailfilter.actions.relay import RelayPool
from mailfilter.actions.report import ReportSender, report_document, report_mail, report_steps
from mailfilter.actions.report.channels import StepContext
from mailfilter.errors import ConfigError
from mailfilter.model import Envelope
from mailfilter.settings import QuarantineSettings, Settings, load_settings


def _store(tmp_path: Path) -> QuarantineStore:
    return QuarantineStore(QuarantineSettings(path=tmp_path / "q", instance_name="mx-1"))


def _record(entry_id: str, received: float, **extra: Any) -> QuarantineRecord:
    return build_record(entry_id=entry_id, received=received,
                        envelope=Envelope("a@example.org", ("b@example.net",)), result=None,
                        action="quarantine", reason="unscannable", policy={}, size=3,
                        host="mx-1", **extra)


def test_ids_carry_their_time_and_nothing_else_passes() -> None:
    now = time.time()
    entry_id = new_id(now)
    assert is_entry_id(entry_id)
    assert abs(id_time(entry_id) - now) < 0.001
    for bad in ("", "../etc", "7H3K/../x", "aeiou12345", "7h3kxxxxxxxx", "7" * 40):
        assert not is_entry_id(bad)


def test_write_puts_the_report_job_first_and_everything_private(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = time.time()
    entry_id = new_id(now)
    entry = store.write(entry_id, b"raw\r\n", _record(entry_id, now), now, ("mail", "status"))
    [job] = store.jobs()
    assert (job.entry_id, job.steps, job.done) == (entry_id, ["mail", "status"], [])
    job_file = store.outbox_dir / f"{job.job_id}.job"
    # The job was on disk before the entry (so a crash cannot leave an unreported entry).
    assert job_file.stat().st_mtime_ns <= entry.message_path.stat().st_mtime_ns \
        <= entry.record_path.stat().st_mtime_ns
    for f in (job_file, entry.message_path, entry.record_path):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for d in (store.root, store.outbox_dir, entry.record_path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    found = store.find(entry_id)
    assert found is not None and found.record.status == "quarantined"
    assert store.pending_entry_ids() == {entry_id}
    # A job file of an earlier version, with the record's path it no longer writes and the
    # mail's recipients outside `progress`, is read.
    old_job = {**job.to_json(), "record": f"{entry.record_path.parent.name}/{entry_id}.json",
               "mail_pending": ["abuse@example.org"]}
    del old_job["progress"]
    job_file.write_text(json.dumps(old_job))
    assert [(j.job_id, j.steps) for j in store.jobs()] == [(job.job_id, ["mail", "status"])]
    [read] = store.jobs()
    assert read.mail_pending == ["abuse@example.org"]
    assert read.progress == {"mail": {"pending": ["abuse@example.org"]}}
    # No steps: no job.
    other = new_id(now)
    store.write(other, b"raw\r\n", _record(other, now), now)
    assert store.pending_entry_ids() == {entry_id}


def test_a_failed_write_leaves_no_entry_and_no_job(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = time.time()
    entry_id = new_id(now)
    # Something in the way of the record: the write fails after the message.
    (store.day_dir(now) / f"{entry_id}.json").mkdir(parents=True)
    with pytest.raises(OSError):
        store.write(entry_id, b"raw\r\n", _record(entry_id, now), now, ("mail",))
    assert store.jobs() == []
    assert not (store.day_dir(now) / f"{entry_id}.eml").exists()
    assert not list(store.root.rglob(".*.tmp"))


def test_concurrent_record_updates_lose_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = time.time()
    entry_id = new_id(now)
    store.write(entry_id, b"raw\r\n", _record(entry_id, now), now)

    def add(n: int) -> None:
        for i in range(10):
            store.update(entry_id, lambda r, n=n, i=i: r.with_event(
                HistoryEvent(f"{n}.{i}", None, None)))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entry = store.find(entry_id)
    assert entry is not None
    assert len(entry.record.history) == 41
    with pytest.raises(KeyError):
        store.update(new_id(), lambda r: r)


def test_records_written_before_status_and_history_are_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = time.time()
    entry_id = new_id(now)
    written = store.write(entry_id, b"raw\r\n", _record(entry_id, now), now)
    data = _record(entry_id, now).to_json()
    for key in ("status", "history", "host", "legal_hold"):
        del data[key]
    written.record_path.write_text(json.dumps(data))
    entry = store.find(entry_id)
    assert entry is not None
    assert entry.record.status == "quarantined" and entry.record.legal_hold is False
    assert entry.record.host == "mx-1"
    assert entry.record.history[0].event == "quarantined"


# A record as the first quarantine (2026-11-25) wrote it: no format-1 fields added since
# (host, status, legal hold, history, ambiguities, front_end; in attachments kind,
# containers, gridhist, incomplete), and a key no version of this one knows.
OLD_RECORD = {
    "format": 1, "id": "", "received": "2026-11-25T10:00:00+00:00",
    "received_ts": 1795600800.0,
    "client": {"addr": "192.0.2.7", "name": "mx.client.example", "helo": "helo.example"},
    "queue_id": "4AbC12",
    "envelope": {"mail_from": "alice@example.org", "rcpt_tos": ["bob@example.net"],
                 "mail_options": ["BODY=8BITMIME"], "rcpt_options": [["NOTIFY=NEVER"]]},
    "size": 1234, "message_id": "<m1@example.org>", "subject": "holiday",
    "verdict": "match",
    "attachments": [{"mime_path": "2", "filename": "beach.jpg", "content_type": "image/jpeg",
                     "width": 64, "height": 48, "format": "JPEG", "md5": "aa", "sha1": "bb",
                     "sha256": "cc", "pdq": "dd", "pdq_quality": 100, "skipped": None,
                     "size": 999}],
    "unscannable": [],
    "matches": [{"mime_path": "2", "list": "stand-ins", "algorithm": "pdq", "distance": 0,
                 "labels": ["test"], "value": "dd"}],
    "action": "quarantine", "reason": "match", "policy": {"on_match": "quarantine"},
    "someday": {"a field": "of a later version"},
}


def test_a_record_in_the_old_shape_is_read_and_written_back_unchanged(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    received = time.time()
    entry_id = new_id(received)
    written = store.write(entry_id, b"raw\r\n", _record(entry_id, received), received)
    old = {**OLD_RECORD, "id": entry_id}
    written.record_path.write_text(json.dumps(old))

    entry = store.find(entry_id)
    assert entry is not None
    r = entry.record
    assert (r.status, r.legal_hold, r.host, r.front_end) == ("quarantined", False, "mx-1", None)
    assert [h.event for h in r.history] == ["quarantined"]
    assert r.envelope.rcpt_options == (("NOTIFY=NEVER",),)
    [a] = r.attachments
    assert (a.kind, a.is_image, a.filename, a.size) == ("image", True, "beach.jpg", 999)
    assert r.matches[0].list_name == "stand-ins" and r.matches[0].distance == 0
    # As JSON: the keys it had, in their order, and the normalised ones after them.
    out = r.to_json()
    assert list(out) == [*old, "legal_hold", "host", "status", "history"]
    assert {k: out[k] for k in old} == old
    assert "kind" not in out["attachments"][0]  # not made up

    # A change writes back what it does not understand, unchanged.
    store.update(entry_id, lambda rec: rec.with_event(
        HistoryEvent.now("hold", received, "tester"), legal_hold=True))
    on_disk = json.loads(written.record_path.read_text())
    assert {k: on_disk[k] for k in old} == old
    assert on_disk["legal_hold"] is True and on_disk["history"][1]["event"] == "hold"

    doc = report_document(r, received).to_json()
    assert doc["attachments"] == [{**old["attachments"][0], "matched": True}]  # type: ignore[index]
    assert doc["client"] == old["client"] and doc["front_end"] is None

    # A summary another version wrote into the shared index reads back as it was.
    foreign = {"id": entry_id, "host": "mx-2", "status": "reported", "lists": ["x"],
               "matches": 1, "later": True}
    assert EntrySummary.from_json(foreign).to_json() == {**foreign}
    with pytest.raises(ValueError):
        QuarantineRecord.from_json({"received": "no id"})


def test_the_same_failure_again_is_one_line_of_history() -> None:
    """An outbox retry failing the same way every hour folds into the last line (how
    often, since when); another error, actor or event starts a new one."""
    record = _record(new_id(1000.0), 1000.0)
    failed = [HistoryEvent.now("cybertip-failed", t, "mailfilter", error="/upload: HTTP 500")
              for t in (1000.0, 4600.0, 8200.0)]
    for event in failed:
        record = record.with_repeated_event(event)
    *before, last = record.history
    assert [h.event for h in before] == ["quarantined"]
    assert last.time == failed[2].time
    assert last.detail == {"error": "/upload: HTTP 500", "repeated": 3,
                           "since": failed[0].time}
    for other in (HistoryEvent.now("cybertip-failed", 9000.0, "mailfilter", error="HTTP 503"),
                  HistoryEvent.now("cybertip-failed", 9100.0, "root", error="HTTP 503"),
                  HistoryEvent.now("cybertip-unknown", 9200.0, "root", error="HTTP 503")):
        record = record.with_repeated_event(other)
        assert record.history[-1] == other
    assert len(record.history) == 5
    # Written and read back as it was.
    assert QuarantineRecord.from_json(record.to_json()).history == record.history


def test_audit_log_is_append_only_json_lines(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.audit("jane", "hold", "X1", "ok", reason="case 1")
    store.audit("joe", "purge", None, "ok", purged=["A", "B"])
    assert stat.S_IMODE(store.audit_path.stat().st_mode) == 0o600
    lines = [json.loads(x) for x in store.audit_path.read_text().splitlines()]
    assert [(x["actor"], x["action"], x["id"], x["result"], x["host"]) for x in lines] == [
        ("jane", "hold", "X1", "ok", "mx-1"), ("joe", "purge", None, "ok", "mx-1")]
    assert lines[0]["reason"] == "case 1" and lines[1]["purged"] == ["A", "B"]
    assert lines[0]["time"].endswith("Z")


def test_report_steps_follow_the_settings() -> None:
    s = Settings.model_validate({})
    assert report_steps(s) == ()
    s = Settings.model_validate({"report": {"to": ["a@example.org"], "dir": "/r"},
                                 "store": {"redis_url": "redis://127.0.0.1/0"}})
    assert report_steps(s) == ("mail", "dir", "status", "index")


def test_a_webhook_needs_a_secret(tmp_path: Path) -> None:
    config = tmp_path / "mf.toml"
    config.write_text('[report]\nwebhook_url = "https://hooks.example/x"\n')
    with pytest.raises(ConfigError, match=r"\[report\] webhook_secret = \"\": expected a "
                       "shared secret of at least 16 characters"):
        load_settings(config, {})
    config.write_text('[report]\nwebhook_url = "ftp://hooks.example/x"\n'
                      'webhook_secret = "0123456789abcdef"\n')
    with pytest.raises(ConfigError, match="expected an http:// or https:// URL"):
        load_settings(config, {})


def test_report_mail_passes_no_control_characters(tmp_path: Path) -> None:
    now = time.time()
    doc = {"id": "X1", "host": "mx-1", "reason": "match", "subject": "hi\x1b[2J\u202eevil",
           "matches": [{"list": "l\r\nBcc: x@example.org", "mime_path": "2"}],
           "attachments": [], "envelope": {"mail_from": "a@example.org", "rcpt_tos": []}}
    settings = Settings.model_validate({"report": {"to": ["abuse@example.org"]}}).report
    data = report_mail(ReportDocument.from_json(doc), settings, "mf.example", now)
    msg = email.message_from_bytes(data, policy=default)
    assert isinstance(msg, EmailMessage)
    assert msg["Bcc"] is None and msg["To"] == "abuse@example.org"
    assert "\\r\\nBcc" in msg["Subject"]
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "\x1b" not in text and "\u202e" not in text
    assert "hi\\x1b[2J\\u202eevil" in text


def test_sender_drops_jobs_whose_entry_never_appeared(tmp_path: Path) -> None:
    settings = Settings.model_validate({"quarantine": {"path": str(tmp_path / "q")},
                                        "report": {"dir": str(tmp_path / "reports")}})
    store = QuarantineStore(settings.quarantine)
    old = store.new_job(new_id(), ["dir", "status"], time.time() - 10)
    store.save_job(old)

    async def run() -> tuple[str, list[str]]:
        sender = ReportSender(settings, RelayPool(settings.smtp, "mf.test"))
        sender.started = time.time() - 5  # the old job is from before this start
        young = store.new_job(new_id(), ["dir", "status"], time.time())
        store.save_job(young)  # a write in progress: its record may still come
        await sender.run_once()
        await sender.stop()
        return young.job_id, [j.job_id for j in store.jobs()]

    young_id, left = asyncio.run(run())
    assert left == [young_id]
    assert not (tmp_path / "reports").exists()


class TwoParts:
    """A report step with parts of its own, as a CyberTipline submission will have (submit,
    then upload): the part done is kept in the job, so a retry, even by another process,
    does not do it again."""

    name: ClassVar[str] = "two-parts"
    error_kind: ClassVar[str | None] = None

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[str] = []

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return True

    @classmethod
    def reported_as(cls, settings: Settings) -> dict[str, Any]:
        return {}

    async def run(self, ctx: StepContext) -> None:
        state = ctx.state(self.name)
        if "first" not in state:
            self.calls.append("first")
            state["first"] = "report-1"
        if self.fail:
            raise RuntimeError("the second part failed")
        self.calls.append(f"second, for {state['first']}")

    def close(self) -> None:
        pass


def test_a_step_resumes_its_own_parts_and_steps_done_are_not_repeated(tmp_path: Path) -> None:
    settings = Settings.model_validate({"quarantine": {"path": str(tmp_path / "q")},
                                        "report": {"dir": str(tmp_path / "reports")}})
    store = QuarantineStore(settings.quarantine)
    now = time.time()
    entry_id = new_id(now)
    store.write(entry_id, b"raw\r\n", _record(entry_id, now), now,
                ("dir", "two-parts", "status"))
    report_file = tmp_path / "reports" / f"{entry_id}.json"

    async def one_pass(step: TwoParts) -> None:  # a sender of its own: a process restart
        sender = ReportSender(settings, RelayPool(settings.smtp, "mf.test"))
        sender.steps[step.name] = step
        await sender.run_once()
        await sender.stop()

    failing = TwoParts(fail=True)
    asyncio.run(one_pass(failing))
    assert failing.calls == ["first"] and report_file.exists()
    [job] = store.jobs()
    assert job.done == ["dir"] and job.attempts == 1 and job.next_attempt > now
    assert job.progress == {"two-parts": {"first": "report-1"}}
    assert job.last_error == "two-parts: the second part failed"
    report_file.unlink()
    job.next_attempt = 0.0  # due now
    store.save_job(job)

    working = TwoParts(fail=False)
    asyncio.run(one_pass(working))
    assert working.calls == ["second, for report-1"]
    assert not report_file.exists()  # the directory step was done: not again
    assert store.jobs() == []
    entry = store.find(entry_id)
    assert entry is not None and entry.record.status == "reported"
    assert [h.event for h in entry.record.history] == ["quarantined", "reported"]
    assert entry.record.history[1].detail == {"dir": str(tmp_path / "reports")}
