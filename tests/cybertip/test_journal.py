"""The step journal without a network: what `next_step` says after each kind of event,
and that the journal survives being stored as JSON (the entry's history)."""

from __future__ import annotations

import json

import pytest

from mailfilter.cybertip.journal import (
    Abandoned,
    Event,
    FileInfo,
    Finish,
    Finished,
    Journal,
    PlannedFile,
    Retract,
    Retracted,
    Submit,
    Unknown,
    Upload,
    decide,
    next_step,
)

PLAN = Journal((PlannedFile("a.png", "a" * 32, 10), PlannedFile("b.png", "b" * 32, 20)))


def after(*events: Event) -> Journal:
    journal = PLAN
    for e in events:
        journal = journal.record(e)
    return journal


SUBMITTED = (Event("submit", "started", 1), Event("submit", "done", 2, report_id=7))
UPLOADED = (*SUBMITTED,
            Event("upload", "started", 3, file=0),
            Event("upload", "done", 4, file=0, report_id=7, file_id="f0", md5="a" * 32),
            Event("upload", "started", 5, file=1),
            Event("upload", "done", 6, file=1, report_id=7, file_id="f1", md5="b" * 32))
DESCRIBED = (*UPLOADED,
             Event("fileinfo", "done", 7, file=0, report_id=7, file_id="f0"),
             Event("fileinfo", "done", 8, file=1, report_id=7, file_id="f1"))


def test_the_sequence() -> None:
    assert next_step(PLAN) == Submit()
    assert next_step(after(*SUBMITTED)) == Upload(0, 7)
    assert next_step(after(*UPLOADED[:4])) == Upload(1, 7)
    assert next_step(after(*UPLOADED)) == FileInfo(0, 7, "f0")
    assert next_step(after(*DESCRIBED[:-1])) == FileInfo(1, 7, "f1")
    assert next_step(after(*DESCRIBED)) == Finish(7)
    done = after(*DESCRIBED, Event("finish", "done", 9, report_id=7, file_id="f0,f1"))
    assert next_step(done) == Finished(7, ("f0", "f1"))
    assert next_step(Journal(())) == Submit()
    assert next_step(Journal((), SUBMITTED)) == Finish(7)  # nothing to upload


@pytest.mark.parametrize("failure", ["not-done", "unknown", "auth"])
@pytest.mark.parametrize("step", ["upload", "fileinfo", "finish"])
def test_a_failed_or_interrupted_step_is_taken_again(step: str, failure: str) -> None:
    before = {"upload": SUBMITTED, "fileinfo": UPLOADED, "finish": DESCRIBED}[step]
    expected = next_step(after(*before))
    file = 0 if step != "finish" else None
    started = Event(step, "started", 10, file=file)  # type: ignore[arg-type]
    assert next_step(after(*before, started)) == expected  # killed in flight
    failed = Event(step, "failed", 11, file=file, failure=failure,  # type: ignore[arg-type]
                   error="x")
    assert next_step(after(*before, started, failed)) == expected


def test_submit_not_done_is_submitted_again() -> None:
    for failure in ("not-done", "auth", "rejected"):
        journal = after(Event("submit", "started", 1),
                        Event("submit", "failed", 2, failure=failure, error="e"))  # type: ignore[arg-type]
        assert next_step(journal) == Submit()


def test_submit_in_flight_or_unanswered_is_for_the_operator() -> None:
    in_flight = after(Event("submit", "started", 1))
    unanswered = after(Event("submit", "started", 1),
                       Event("submit", "failed", 2, failure="unknown", error="timed out"))
    for journal in (in_flight, unanswered):
        step = next_step(journal)
        assert isinstance(step, Unknown)
        assert next_step(decide(journal, "no-report", 3)) == Submit()
        assert next_step(decide(journal, "report-exists", 3, report_id=55)) == Upload(0, 55)
        assert next_step(decide(journal, "abandon", 3)) == Abandoned(
            "abandoned by the operator before a report was filed")
    assert "in flight" in next_step(in_flight).reason  # type: ignore[union-attr]
    assert "timed out" in next_step(unanswered).reason  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="report id"):
        decide(in_flight, "report-exists", 3)
    with pytest.raises(ValueError, match="nothing to decide"):
        decide(after(*SUBMITTED), "no-report", 3)


def test_what_cannot_be_finished_is_retracted() -> None:
    refused = after(*SUBMITTED, Event("upload", "started", 3, file=0),
                    Event("upload", "failed", 4, file=0, failure="rejected",
                          error="/upload: NCMEC answered 4200 Malformed file submittal"))
    step = next_step(refused)
    assert isinstance(step, Retract) and step.report_id == 7 and "4200" in step.reason
    # a retraction that fails is tried again; one that is done ends the journal
    retry = refused.record(Event("retract", "failed", 5, failure="not-done", error="e"))
    assert next_step(retry) == step
    assert isinstance(next_step(retry.record(Event("retract", "done", 6, report_id=7))),
                      Retracted)
    # the operator abandons an open report: it is retracted
    abandoned = decide(after(*UPLOADED), "abandon", 9, note="wrong entry")
    assert next_step(abandoned) == Retract(7, "abandoned by the operator")


def test_the_journal_round_trips_through_json() -> None:
    journal = decide(after(Event("submit", "started", 1)), "report-exists", 2, report_id=9)
    again = Journal.from_dict(json.loads(json.dumps(journal.to_dict())))
    assert again == journal
    assert "file" not in journal.to_dict()["events"][0]  # no nulls stored
