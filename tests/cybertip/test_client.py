"""The client and the step journal against the stand-in NCMEC service (ncmec_server.py):
a whole report, then a failure at each step (an error answer, a timeout, a dropped
connection, a process stopped between a request and the journal's update), each resumed
from the saved journal without a second report."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cybertip.material import material, order_problems, settings
from cybertip.ncmec_server import NcmecServer
from mailfilter.cybertip.client import CybertipClient
from mailfilter.cybertip.document import InvalidDocument
from mailfilter.cybertip.journal import (
    Action,
    Finished,
    Journal,
    Retracted,
    Unknown,
    decide,
    plan,
    run_steps,
)
from mailfilter.cybertip.protocol import (
    AuthFailed,
    CybertipError,
    NotDone,
    OutcomeUnknown,
    Rejected,
)

TIMEOUT = 0.5  # the stand-in's slow answers take 1.5 s


def client_of(server: NcmecServer, password: str | None = None) -> CybertipClient:
    return CybertipClient(server.url, server.username,
                          server.password if password is None else password, timeout=TIMEOUT)


class Disk:
    """Where the journal is kept between runs (the entry's history, later): what `save`
    was last given, as JSON would keep it."""

    def __init__(self, journal: Journal) -> None:
        self.data = journal.to_dict()
        self.saves = 0

    def save(self, journal: Journal) -> None:
        self.data = journal.to_dict()
        self.saves += 1

    @property
    def journal(self) -> Journal:
        return Journal.from_dict(self.data)


class Killed(BaseException):
    """Stands for the process being killed: nothing after it runs, no handler sees it."""


def run(server: NcmecServer, disk: Disk, count: int = 2) -> tuple[Journal, Action]:
    report, files, _ = material(settings(), count)
    return run_steps(disk.journal, report, files, client_of(server), disk.save)


def new_disk(count: int = 2) -> Disk:
    _, files, _ = material(settings(), count)
    return Disk(plan(files))


def assert_one_finished_report(server: NcmecServer, blobs: list[bytes],
                               action: Action) -> None:
    assert len(server.reports) == 1, "a second report was filed"
    (stored,) = server.reports.values()
    assert stored.finished and not stored.retracted
    assert isinstance(action, Finished) and action.report_id == stored.report_id
    described = [f for f in stored.files if f.details is not None]
    assert sorted(f.md5 for f in described) == sorted(hashlib.md5(b).hexdigest()
                                                      for b in blobs)
    assert set(action.file_ids) == {f.file_id for f in stored.files}


def test_a_whole_report(ncmec: NcmecServer) -> None:
    report, files, blobs = material(settings())
    disk = Disk(plan(files))
    journal, action = run_steps(disk.journal, report, files, client_of(ncmec), disk.save)
    assert [r.path.removeprefix("/ispws") for r in ncmec.received] == [
        "/submit", "/upload", "/upload", "/fileinfo", "/fileinfo", "/finish"]
    assert all(r.authorized for r in ncmec.received)
    (stored,) = ncmec.reports.values()
    assert stored.finished
    # one report with the email incident, in the schema's order
    assert order_problems(stored.document) == []
    assert stored.document.findtext("personOrUserReported/ipCaptureEvent/ipAddress") == (
        "192.0.2.44")
    assert [e.text for e in stored.document.findall("internetDetails/emailIncident/"
                                                    "emailAddress")] == [
        "sender@example.net", "alice@example.org", "bob@example.org"]
    assert ncmec.posts("submit")[0].content_type.startswith("text/xml")
    # one upload per file, the MD5 received equal to the file's, file details for each
    assert [f.md5 for f in stored.files] == [hashlib.md5(b).hexdigest() for b in blobs]
    assert [f.filename for f in stored.files] == ["picture 0.png", "picture 1.png"]
    for f in stored.files:
        assert f.details is not None
        assert order_problems(f.details) == []
        assert f.details.findtext("reportId") == str(stored.report_id)
        assert f.details.findtext("fileId") == f.file_id
        assert f.details.findtext("fileViewedByEsp") == "false"
        assert f.details.find("originalFileHash[@hashType='MD5']") is not None
        assert f.details.findtext("originalFileHash[@hashType='MD5']") == f.md5
    assert_one_finished_report(ncmec, blobs, action)
    # the journal holds NCMEC's ids, and every step was saved before and after
    events = [(e.step, e.state) for e in journal.events]
    assert events == [(s, state) for s in ("submit", "upload", "upload", "fileinfo",
                                           "fileinfo", "finish")
                      for state in ("started", "done")]
    assert disk.saves == 12
    assert journal.events[1].report_id == stored.report_id
    assert [e.file_id for e in journal.events if e.step == "upload" and e.state == "done"] == [
        f.file_id for f in stored.files]
    # run again: finished, nothing sent
    sent = len(ncmec.received)
    assert run(ncmec, disk)[1] == action
    assert len(ncmec.received) == sent


def test_status_and_credentials(ncmec: NcmecServer) -> None:
    assert "esp-user" in client_of(ncmec).status().response_description
    with pytest.raises(AuthFailed) as info:
        client_of(ncmec, password="wrong").status()
    assert info.value.http_status == 401
    disk = new_disk()
    report, files, _ = material(settings())
    with pytest.raises(AuthFailed):
        run_steps(disk.journal, report, files, client_of(ncmec, "wrong"), disk.save)
    assert not ncmec.reports
    # fixed credentials: the same journal goes on
    assert isinstance(run(ncmec, disk)[1], Finished)


def test_nothing_listening_is_not_done() -> None:
    from ports import free_port

    client = CybertipClient(f"http://127.0.0.1:{free_port()}/ispws", "u", "p",
                            timeout=TIMEOUT)
    with pytest.raises(NotDone) as info:
        client.submit(b"<report/>")
    assert info.value.retry_safe


# (step, fault, error class): a failure at each step, resumed by running again
RESUMABLE = [
    ("submit", "500", NotDone),
    ("upload", "500", NotDone),
    ("upload", "bad-md5", NotDone),
    ("upload", "slow", OutcomeUnknown),
    ("upload", "drop", OutcomeUnknown),
    ("fileinfo", "500", NotDone),
    ("fileinfo", "slow", OutcomeUnknown),
    ("fileinfo", "500-after", OutcomeUnknown),
    ("finish", "slow", OutcomeUnknown),
    ("finish", "500", NotDone),
    ("finish", "drop", OutcomeUnknown),
    ("finish", "500-after", OutcomeUnknown),
]


@pytest.mark.parametrize(("step", "fault", "error"), RESUMABLE)
def test_a_failure_resumes_without_a_second_report(ncmec: NcmecServer, step: str, fault: str,
                                                   error: type[CybertipError]) -> None:
    _, _, blobs = material(settings())
    disk = new_disk()
    ncmec.fail(step, fault)
    with pytest.raises(error) as info:
        run(ncmec, disk)
    assert info.value.retry_safe and info.value.step == step
    failed = disk.journal.events[-1]
    assert (failed.step, failed.state) == (step, "failed")
    _, action = run(ncmec, disk)
    assert_one_finished_report(ncmec, blobs, action)
    assert len([r for r in ncmec.posts("submit")]) == (2 if step == "submit" else 1)


@pytest.mark.parametrize("fault", ["slow", "drop", "500-after"])
def test_submit_without_an_answer_waits_for_the_operator(ncmec: NcmecServer,
                                                         fault: str) -> None:
    _, _, blobs = material(settings())
    disk = new_disk()
    ncmec.fail("submit", fault)
    with pytest.raises(OutcomeUnknown) as info:
        run(ncmec, disk)
    assert not info.value.retry_safe
    # NCMEC did file it; running again does not file another
    assert len(ncmec.reports) == 1
    journal, action = run(ncmec, disk)
    assert isinstance(action, Unknown) and len(ncmec.posts("submit")) == 1
    # the operator learns the report id from NCMEC and goes on with it
    (report_id,) = ncmec.reports
    disk.save(decide(journal, "report-exists", 100, report_id=report_id, note="ESP team"))
    _, action = run(ncmec, disk)
    assert_one_finished_report(ncmec, blobs, action)


# A process killed between a request and the journal's update: `save` stops it at the
# saving of the step's `started` (nothing sent yet) or `done` (carried out, unrecorded).
@pytest.mark.parametrize("state", ["started", "done"])
@pytest.mark.parametrize("step", ["submit", "upload", "fileinfo", "finish"])
def test_a_kill_between_request_and_journal(ncmec: NcmecServer, step: str,
                                            state: str) -> None:
    _, _, blobs = material(settings())
    disk = new_disk()

    def save(journal: Journal) -> None:
        last = journal.events[-1]
        if (last.step, last.state) == (step, state):
            if state == "started":
                disk.save(journal)  # saved, then killed before the request went out
            raise Killed
        disk.save(journal)

    report, files, _ = material(settings())
    with pytest.raises(Killed):
        run_steps(disk.journal, report, files, client_of(ncmec), save)
    journal, action = run(ncmec, disk)
    if step == "submit":
        # in flight as far as the journal knows: the operator decides
        assert isinstance(action, Unknown)
        assert len(ncmec.posts("submit")) == (1 if state == "done" else 0)
        if state == "done":
            (report_id,) = ncmec.reports
            journal = decide(journal, "report-exists", 100, report_id=report_id)
        else:
            journal = decide(journal, "no-report", 100, note="nothing reached NCMEC")
        disk.save(journal)
        _, action = run(ncmec, disk)
    assert_one_finished_report(ncmec, blobs, action)
    assert len(ncmec.posts("submit")) == 1


def test_a_refused_upload_retracts_the_report(ncmec: NcmecServer) -> None:
    disk = new_disk()
    ncmec.fail("upload", "reject")
    with pytest.raises(Rejected):
        run(ncmec, disk)
    _, action = run(ncmec, disk)
    assert isinstance(action, Retracted) and "4100" in action.reason
    (stored,) = ncmec.reports.values()
    assert stored.retracted and not stored.finished
    assert len(ncmec.posts("retract")) == 1
    assert run(ncmec, disk)[1] == action  # and stays so


def test_a_slow_retract_is_sent_again(ncmec: NcmecServer) -> None:
    disk = new_disk()
    ncmec.fail("fileinfo", "reject")
    ncmec.fail("retract", "slow")
    with pytest.raises(Rejected):
        run(ncmec, disk)
    with pytest.raises(OutcomeUnknown):
        run(ncmec, disk)
    _, action = run(ncmec, disk)  # NCMEC answers 5101 already retracted: done
    assert isinstance(action, Retracted)
    assert len(ncmec.posts("retract")) == 2 and len(ncmec.reports) == 1


def test_an_invalid_document_opens_no_report(ncmec: NcmecServer, tmp_path: Path) -> None:
    pytest.importorskip("xmlschema")
    xsd = tmp_path / "cybertip.xsd"
    xsd.write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
                   '<xs:element name="other"/></xs:schema>')
    report, files, _ = material(settings())
    disk = Disk(plan(files))
    with pytest.raises(InvalidDocument):
        run_steps(disk.journal, report, files, client_of(ncmec), disk.save, xsd=xsd)
    assert ncmec.received == [] and disk.journal.events == ()


def test_files_must_be_the_planned_ones(ncmec: NcmecServer) -> None:
    report, files, _ = material(settings(), 1)
    with pytest.raises(ValueError, match="planned"):
        run_steps(plan(files + files), report, files, client_of(ncmec), lambda j: None)
    assert ncmec.received == []
