"""`mailfilter quarantine …` as operators run it (a subprocess, not on a terminal), on
entries the real proxy quarantined: list, show, export, release through the next hop,
hold, delete, purge with retention and legal hold, reports, and the audit log."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from proxy.proxy_harness import KNOWN, RawClient, RecordingSink, RunningProxy, free_port

from mailfilter.actions.quarantine import QuarantineStore, build_record, new_id
from mailfilter.actions.report import INCIDENT_TYPE
from mailfilter.model import Envelope
from mailfilter.settings import QuarantineSettings
from quarantine.quarantine_harness import json_lines, known_message, mf, write_config

Factory = Callable[..., RunningProxy]


def config_for(tmp_path: Path, next_hop: str, extra: str = "") -> Path:
    """A settings file for the command line, naming the quarantine the proxy writes."""
    return write_config(tmp_path / "mf.toml", f"""
[smtp]
next_hop = "{next_hop}"
hostname = "mailfilter.test"
next_hop_timeout = "5s"
[store]
path = "{tmp_path / 'store'}"
[quarantine]
path = "{tmp_path / 'quarantine'}"
{extra}
""")


def quarantine_via_proxy(p: RunningProxy, raw: bytes, *,
                         mail: str = "MAIL FROM:<alice@example.org>",
                         rcpts: tuple[str, ...] = ("RCPT TO:<bob@example.net>",)) -> str:
    """Send `raw` through the proxy as Postfix would (XFORWARD first); the entry's id."""
    c = RawClient(p.host, p.port)
    c.cmd("EHLO postfix.test")
    assert c.cmd("XFORWARD NAME=mx.client.example ADDR=192.0.2.7 HELO=helo.client.example "
                 "IDENT=4AbC12").startswith("250")
    assert c.cmd(mail).startswith("250")
    for rcpt in rcpts:
        assert c.cmd(rcpt).startswith("250")
    assert c.cmd("DATA").startswith("354")
    c.send(raw + b".\r\n")
    reply = c.read_reply()
    c.cmd("QUIT")
    c.close()
    assert reply.startswith("250 2.0.0 Ok "), reply
    return reply.split()[3]


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "quarantine" / "audit.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json_lines(path.read_text())


def test_list_show_and_export(proxy_factory: Factory, recording_sink: RecordingSink,
                              tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    raw = known_message("holiday")
    first = quarantine_via_proxy(p, raw)
    second = quarantine_via_proxy(p, known_message("second \x1b[31mred\x1b[0m"))
    config = config_for(tmp_path, recording_sink.address)

    out = mf("quarantine", "list", "--config", str(config))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "RECEIVED", "(UTC)", "HOST", "STATUS", "FROM", "TO",
                                "LISTS", "SUBJECT"]
    assert first in lines[1] and "holiday" in lines[1] and "stand-ins" in lines[1]
    assert "alice@example.org" in lines[1] and "quarantined" in lines[1]
    assert second in lines[2] and "\x1b" not in out.stdout  # no terminal escapes passed on
    assert "\\x1b[31mred" in lines[2]
    assert lines[-1] == "2 entries (0 on legal hold, 0 with reports pending)"

    rows = json_lines(mf("quarantine", "list", "--json", "--config", str(config)).stdout)
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["from"] == "alice@example.org" and rows[0]["to"] == ["bob@example.net"]
    assert rows[0]["lists"] == ["stand-ins"] and rows[0]["status"] == "quarantined"
    for args, count in ((["--since", "1h"], 2), (["--since", "2000-01-01"], 2),
                        (["--since", "2999-01-01T00:00"], 0), (["--list", "stand-ins"], 2),
                        (["--list", "other"], 0), (["--status", "released"], 0),
                        (["--held"], 0), (["--limit", "1"], 1)):
        out = mf("quarantine", "list", "--json", "--config", str(config), *args)
        assert out.returncode == 0 and len(json_lines(out.stdout)) == count, args
    out = mf("quarantine", "list", "--since", "yesterday", "--config", str(config))
    assert out.returncode == 2 and "expected a date" in out.stderr

    out = mf("quarantine", "show", first, "--config", str(config))
    assert out.returncode == 0, out.stderr
    for expected in (f"entry {first}", "mx.client.example [192.0.2.7]", "helo.client.example",
                     "4AbC12", "alice@example.org", "bob@example.net", "holiday",
                     "list stand-ins, pdq", hashlib.sha256(KNOWN).hexdigest(), "beach.jpg",
                     "quarantined      by mailfilter"):
        assert expected in out.stdout, expected
    # Never the message: no body text, no image data.
    assert "Hello." not in out.stdout
    for line in raw.split(b"\r\n"):
        if len(line) > 40 and re.fullmatch(rb"[A-Za-z0-9+/=]+", line):
            assert line.decode() not in out.stdout
    shown = json.loads(mf("quarantine", "show", "--json", first, "--config",
                          str(config)).stdout)
    assert shown["id"] == first and shown["message_held"] is True
    assert shown["envelope"]["rcpt_tos"] == ["bob@example.net"]
    assert "Hello." not in json.dumps(shown)

    target = tmp_path / "out.eml"
    out = mf("quarantine", "export", first, "--to", str(target), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == raw
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    out = mf("quarantine", "export", first, "--to", str(target), "--config", str(config))
    assert out.returncode == 2 and "exists (add --force" in out.stderr
    target.write_bytes(b"something else")
    target.chmod(0o644)
    out = mf("quarantine", "export", first, "--to", str(target), "--force", "--by", "Jane Ops",
             "--config", str(config))
    assert out.returncode == 0 and target.read_bytes() == raw
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    lines = audit(tmp_path)
    assert [(x["action"], x["id"], x["actor"], x["result"]) for x in lines] == [
        ("show", first, "tester", "ok"), ("show", first, "tester", "ok"),
        ("export", first, "tester", "ok"), ("export", first, "Jane Ops", "ok")]
    history = QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine")).find(first)
    assert history is not None
    assert [h["event"] for h in history.record.to_json()["history"]] == ["quarantined", "exported",
                                                               "exported"]


def test_release_delivers_the_original_bytes_to_the_original_envelope(
        proxy_factory: Factory, recording_sink: RecordingSink, tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    raw = known_message()
    mail = f"MAIL FROM:<alice@example.org> SIZE={len(raw)} BODY=8BITMIME RET=HDRS ENVID=QQ314"
    rcpts = ("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
             "RCPT TO:<carol@example.net>")
    entry_id = quarantine_via_proxy(p, raw, mail=mail, rcpts=rcpts)
    assert recording_sink.messages == []
    config = config_for(tmp_path, recording_sink.address)

    out = mf("quarantine", "release", entry_id, "--config", str(config))
    assert out.returncode == 2 and "add --yes" in out.stderr  # not on a terminal
    assert recording_sink.messages == []
    out = mf("quarantine", "release", entry_id, "--yes", "--by", "bad\nname",
             "--config", str(config))
    assert out.returncode == 2 and recording_sink.messages == []

    out = mf("quarantine", "release", entry_id, "--yes", "--by", "Jane Ops",
             "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"released {entry_id} to bob@example.net, carol@example.net")
    [got] = recording_sink.wait_for(1)
    header, _, rest = got.data.partition(b"\r\n")
    assert rest == raw  # every byte of the original
    assert re.fullmatch(rf"X-Mailfilter-Released: by Jane Ops at "
                        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(id {entry_id}\)",
                        header.decode())
    assert got.mail == (f"MAIL FROM:<alice@example.org> SIZE={len(got.data)} BODY=8BITMIME "
                        "RET=HDRS ENVID=QQ314")
    assert got.rcpts == list(rcpts)
    assert got.xforward == []  # mailfilter itself is the client of a release

    store = QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine"))
    entry = store.find(entry_id)
    assert entry is not None and entry.record.status == "released"
    event = entry.record.to_json()["history"][-1]
    assert (event["event"], event["by"]) == ("released", "Jane Ops")
    assert event["delivered_to"] == ["bob@example.net", "carol@example.net"]
    assert entry.message_path.read_bytes() == raw  # still held

    out = mf("quarantine", "release", entry_id, "--yes", "--config", str(config))
    assert out.returncode == 2 and "already released by Jane Ops" in out.stderr
    recording_sink.rcpt_replies = {"carol@example.net": "550 5.1.1 <carol@example.net>: gone"}
    out = mf("quarantine", "release", entry_id, "--yes", "--force", "--config", str(config))
    assert out.returncode == 2
    assert "released" in out.stdout and "bob@example.net" in out.stdout
    assert "not released to carol@example.net: 550 5.1.1" in out.stderr
    assert len(recording_sink.wait_for(2)) == 2

    dead = config_for(tmp_path, f"127.0.0.1:{free_port()}")
    out = mf("quarantine", "release", entry_id, "--yes", "--force", "--config", str(dead))
    assert out.returncode == 2 and "not released: next hop" in out.stderr
    results = [(x["action"], x["actor"], x["result"][:7]) for x in audit(tmp_path)]
    assert results == [("release", "Jane Ops", "ok"), ("release", "tester", "refused"),
                       ("release", "tester", "partial"), ("release", "tester", "failed:")]


def _old_entry(store: QuarantineStore, days_ago: float, *, legacy: bool = False,
               report_steps: tuple[str, ...] = ()) -> str:
    """An entry received `days_ago` days ago (as the proxy would have written it then);
    `legacy`: a record as written before status and history existed."""
    received = time.time() - days_ago * 86400
    entry_id = new_id(received)
    record = build_record(
        entry_id=entry_id, received=received,
        envelope=Envelope("old@example.org", ("bob@example.net",), client_addr="192.0.2.9"),
        result=None, action="quarantine", reason="unscannable", policy={}, size=5)
    entry = store.write(entry_id, b"old\r\n", record, received, report_steps)
    if legacy:  # the file as it was written then
        data = record.to_json()
        for key in ("status", "history", "host"):
            del data[key]
        entry.record_path.write_text(json.dumps(data))
    return entry_id


def test_delete_judges_the_entry_again_after_the_question(tmp_path: Path) -> None:
    """While the operator answers "delete?", the entry may be put on hold (or its report
    filed by the service): the delete is judged again on the record as it is then."""
    from mailfilter.actions.quarantine_service import QuarantineService, Refused
    from mailfilter.settings import Settings

    settings = Settings(quarantine=QuarantineSettings(path=tmp_path / "quarantine"))
    service = QuarantineService(settings, lambda _: None)
    entry_id = _old_entry(service.store, 1)
    entry = service.store.find(entry_id)
    assert entry is not None

    def meanwhile_held(question: str) -> None:
        service.set_hold(entry, "colleague", True, "case 7")

    with pytest.raises(Refused, match="legal hold"):
        service.delete(entry, "tester", meanwhile_held)
    kept = service.store.find(entry_id)
    assert kept is not None and kept.has_message
    assert [a["result"] for a in audit(tmp_path) if a["action"] == "delete"] == [
        "refused: legal hold"]


@pytest.mark.parametrize("command", ["purge", "delete"])
def test_purge_and_delete_wait_for_a_submission_in_progress(tmp_path: Path,
                                                            command: str) -> None:
    """A CyberTipline submission holds the quarantine's lock for its whole run: purge and
    delete wait for it (saying so) and judge the entry again on the record it leaves, so
    an entry is never removed under the report being filed for it."""
    import dataclasses
    import threading

    from mailfilter.actions.quarantine_service import QuarantineService, Refused
    from mailfilter.cybertip.journal import Event, Journal, PlannedFile
    from mailfilter.settings import Settings

    waiting = threading.Event()
    settings = Settings(quarantine=QuarantineSettings(path=tmp_path / "quarantine",
                                                      retention_days=30))
    service = QuarantineService(settings, lambda _: waiting.set())
    entry_id = _old_entry(service.store, 400)  # past its retention
    entry = service.store.find(entry_id)
    assert entry is not None
    outcome: list[object] = []

    def run() -> None:
        try:
            if command == "purge":
                outcome.append(service.purge("tester", dry_run=False))
            else:
                outcome.append(service.delete(entry, "tester", lambda _: None))
        except Refused as exc:
            outcome.append(exc)

    with service.store.cybertip_lock():  # a submission in progress
        other = threading.Thread(target=run)
        other.start()
        assert waiting.wait(30), f"{command} did not wait for the submission"
        assert outcome == [] and service.store.find(entry_id) is not None
        now = time.time()
        filed = Journal((PlannedFile("a.jpg", "0" * 32, 3),)).record(
            Event("submit", "started", now)).record(
            Event("submit", "done", now, report_id=1000001))
        service.store.update(entry_id, lambda rec: dataclasses.replace(
            rec, cybertip=filed.to_dict()))
    other.join(30)
    kept = service.store.find(entry_id)
    assert kept is not None and kept.has_message
    (result,) = outcome
    if command == "purge":
        assert not isinstance(result, Exception)
        summary = result.to_json()  # type: ignore[attr-defined]
        assert summary["purged"] == []
        assert [k["id"] for k in summary["kept_reported"]] == [entry_id]
    else:
        assert isinstance(result, Refused) and "reported to the CyberTipline" in str(result)


def test_purge_waits_for_the_cybertipline_lock_for_a_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A submission that holds the lock for ever (a stopped command) does not hang purge:
    it is refused after CYBERTIP_LOCK_WAIT, having removed nothing."""
    from mailfilter.actions import quarantine_service
    from mailfilter.actions.quarantine_service import QuarantineService, Refused
    from mailfilter.settings import Settings

    monkeypatch.setattr(quarantine_service, "CYBERTIP_LOCK_WAIT", 0.3)
    settings = Settings(quarantine=QuarantineSettings(path=tmp_path / "quarantine",
                                                      retention_days=30))
    said: list[str] = []
    service = QuarantineService(settings, said.append)
    entry_id = _old_entry(service.store, 400)
    with service.store.cybertip_lock(), pytest.raises(Refused, match="held for more than"):
        service.purge("tester", dry_run=False)
    assert said == ["waiting for the quarantine's CyberTipline lock (a submission, delete or "
                    "purge in progress)"]
    assert service.store.find(entry_id) is not None


@pytest.mark.slow  # a dozen quarantine commands as processes: about 16 s
def test_hold_delete_and_purge_with_retention(proxy_factory: Factory,
                                              recording_sink: RecordingSink,
                                              tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    fresh = quarantine_via_proxy(p, known_message())
    store = QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine"))
    expired = _old_entry(store, 400, legacy=True)
    held = _old_entry(store, 500)
    waiting = _old_entry(store, 450, report_steps=("mail",))
    young = _old_entry(store, 300)
    # Leftovers of writes that never finished: an old one goes, a new one may be in
    # progress and stays.
    day = store.day_dir(time.time() - 400 * 86400)
    stale, recent = day / f"{new_id()}.eml", day / f".{new_id()}.json.1234.tmp"
    stale.write_bytes(b"half")
    recent.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    config = config_for(tmp_path, recording_sink.address)

    rows = json_lines(mf("quarantine", "list", "--json", "--config", str(config)).stdout)
    assert [r["id"] for r in rows] == [held, waiting, expired, young, fresh]
    assert rows[2]["status"] == "quarantined"  # a legacy record reads as quarantined
    assert mf("quarantine", "show", expired, "--config", str(config)).returncode == 0

    out = mf("quarantine", "hold", held, "--reason", "case 42", "--config", str(config))
    assert out.returncode == 0 and "on legal hold" in out.stdout
    out = mf("quarantine", "delete", held, "--yes", "--config", str(config))
    assert out.returncode == 2 and "legal hold" in out.stderr
    assert store.find(held).has_message  # type: ignore[union-attr]
    rows = json_lines(mf("quarantine", "list", "--held", "--json", "--config",
                         str(config)).stdout)
    assert [r["id"] for r in rows] == [held]

    out = mf("quarantine", "purge", "--dry-run", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert f"would purge {expired}" in out.stdout
    assert ("kept 1 on legal hold, 1 with reports pending, 0 reported to the CyberTipline; "
            "would remove 1 leftover") in out.stdout
    assert store.find(expired) is not None and stale.exists()

    out = mf("quarantine", "purge", "--json", "--config", str(config))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["purged"] == [expired] and summary["kept_on_hold"] == [held]
    assert summary["kept_report_pending"] == [waiting] and summary["retention_days"] == 365
    assert store.find(expired) is None and not stale.exists() and recent.exists()
    assert not list((tmp_path / "quarantine").glob(f"*/{expired}.*"))
    for kept in (held, waiting, young, fresh):
        assert store.find(kept) is not None

    assert mf("quarantine", "unhold", held, "--config", str(config)).returncode == 0
    out = mf("quarantine", "delete", held, "--yes", "--by", "Jane Ops", "--config", str(config))
    assert out.returncode == 0, out.stderr
    entry = store.find(held)
    assert entry is not None and not entry.has_message and entry.record.status == "deleted"
    assert [(h["event"], h["by"]) for h in entry.record.to_json()["history"]] == [
        ("quarantined", "mailfilter"), ("hold", "tester"), ("unhold", "tester"),
        ("deleted", "Jane Ops")]
    assert entry.record.history[1].detail["reason"] == "case 42"
    assert "message held: no (deleted)" in mf("quarantine", "show", held, "--config",
                                              str(config)).stdout
    for command in (["export", held, "--to", str(tmp_path / "x.eml")], ["release", held, "--yes"]):
        out = mf("quarantine", *command, "--config", str(config))
        assert out.returncode == 2 and "deleted" in out.stderr

    # A shorter retention (from the settings) takes the younger ones too.
    short = config_for(tmp_path, recording_sink.address, "retention_days = 200")
    summary = json.loads(mf("quarantine", "purge", "--json", "--config", str(short)).stdout)
    assert sorted(summary["purged"]) == sorted([held, young])
    assert summary["kept_report_pending"] == [waiting]
    assert [r["id"] for r in json_lines(mf("quarantine", "list", "--json", "--config",
                                           str(config)).stdout)] == [waiting, fresh]
    actions = [x["action"] for x in audit(tmp_path)]
    assert actions == ["show", "hold", "delete", "purge", "purge", "unhold", "delete", "show",
                       "export", "release", "purge"]


def test_report_command_writes_json_and_cybertip_xml_and_sends_nothing(
        proxy_factory: Factory, recording_sink: RecordingSink, tmp_path: Path) -> None:
    p = proxy_factory(recording_sink.address)
    raw = known_message()
    entry_id = quarantine_via_proxy(p, raw)
    config = config_for(tmp_path, recording_sink.address,
                        '[report]\nreporter_name = "Jane Q. Doe"\n'
                        'reporter_email = "compliance@example.org"\n')

    out = mf("quarantine", "report", entry_id, "--config", str(config))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["id"] == entry_id and doc["matches"][0]["list"] == "stand-ins"

    target = tmp_path / "tip.xml"
    out = mf("quarantine", "report", entry_id, "--format", "cybertip-xml", "--to", str(target),
             "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    data = target.read_bytes()
    assert KNOWN[:48] not in data and b"Hello." not in data
    root = ET.fromstring(data)
    assert root.tag == "cybertiplineDraft" and root.get("quarantineId") == entry_id
    report = root.find("report")
    assert report is not None
    assert [c.tag for c in report] == ["incidentSummary", "internetDetails", "reporter",
                                       "personOrUserReported", "intendedRecipient",
                                       "additionalInfo"]
    assert report.findtext("incidentSummary/incidentType") == INCIDENT_TYPE
    store = QuarantineStore(QuarantineSettings(path=tmp_path / "quarantine"))
    entry = store.find(entry_id)
    assert entry is not None
    assert report.findtext("incidentSummary/incidentDateTime") == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.record.received_ts))
    assert [e.text for e in report.iterfind("internetDetails/emailIncident/emailAddress")] \
        == ["alice@example.org", "bob@example.net"]
    person = report.find("reporter/reportingPerson")
    assert person is not None
    assert [(c.tag, c.text) for c in person] == [
        ("firstName", "Jane Q."), ("lastName", "Doe"), ("email", "compliance@example.org")]
    assert report.findtext("personOrUserReported/personOrUserReportedPerson/email") == \
        "alice@example.org"
    assert report.findtext("personOrUserReported/ipCaptureEvent/ipAddress") == "192.0.2.7"
    [details] = root.findall("fileDetails")
    assert [c.tag for c in details] == [
        "originalFileName", "fileViewedByEsp", "exifViewedByEsp", "publiclyAvailable",
        "fileRelevance", "originalFileHash", "originalFileHash", "originalFileHash",
        "ipCaptureEvent", "additionalInfo"]
    assert details.findtext("originalFileName") == "beach.jpg"
    assert details.findtext("fileViewedByEsp") == "false"
    assert {h.get("hashType"): h.text for h in details.iterfind("originalFileHash")} == {
        "MD5": hashlib.md5(KNOWN).hexdigest(), "SHA1": hashlib.sha1(KNOWN).hexdigest(),
        "SHA256": hashlib.sha256(KNOWN).hexdigest()}

    out = mf("quarantine", "report", entry_id, "--format", "cybertip-xml", "--to", str(target),
             "--config", str(config))
    assert out.returncode == 2 and "exists" in out.stderr
    unscannable = _old_entry(store, 1)
    out = mf("quarantine", "report", unscannable, "--format", "cybertip-xml",
             "--config", str(config))
    assert out.returncode == 2 and "no matches" in out.stderr
    bare = config_for(tmp_path, recording_sink.address)
    out = mf("quarantine", "report", entry_id, "--format", "cybertip-xml", "--config", str(bare))
    assert out.returncode == 0 and "reporter_name and reporter_email not set" in out.stderr
    assert recording_sink.messages == [] and recording_sink.connections == 1  # sent nothing
    entry = store.find(entry_id)
    assert entry is not None
    assert [h.get("format") for h in entry.record.to_json()["history"][1:]] == [
        "json", "cybertip-xml", "cybertip-xml"]


@pytest.mark.slow  # many command processes: about 8 s
def test_unknown_and_malformed_ids(tmp_path: Path) -> None:
    config = config_for(tmp_path, "127.0.0.1:25")
    for command in ("show", "release", "delete", "hold", "unhold", "report"):
        out = mf("quarantine", command, new_id(), "--config", str(config))
        assert out.returncode == 1, (command, out.stderr)
        assert "no quarantine entry" in out.stderr
    out = mf("quarantine", "export", "../x", "--to", str(tmp_path / "x"), "--config",
             str(config))
    assert out.returncode == 2 and "not a quarantine id" in out.stderr
    out = mf("quarantine", "reindex", "--config", str(config))
    assert out.returncode == 0 and "the quarantine directory is the index" in out.stdout


def test_help_documents_exit_codes() -> None:
    out = mf("quarantine", "--help")
    assert out.returncode == 0
    for command in ("list", "show", "release", "delete", "hold", "unhold", "purge", "report",
                    "export", "reindex"):
        assert command in out.stdout
    assert "Exit 0 done, 1 no such entry on this instance, 2 an error" in out.stdout

