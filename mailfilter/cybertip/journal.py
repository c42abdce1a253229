"""The steps of one CyberTipline report as recorded data, and what to do next.

A report is filed in steps: submit (NCMEC answers a report id) -> upload each file (a file
id each) -> fileinfo for each file -> finish. The `Journal` is the plan (the files, by
name, MD5 and size) and the events so far, each step `started` before its request goes
out and `done` (with the ids NCMEC returned) or `failed` (with how) after. Whoever runs the
steps saves the journal around every request, so a crash leaves it at most one step
behind, and `next_step` (pure) says where to go on:

- a step that failed without being carried out, or whose outcome is unknown, or that was
  in flight at a crash, is done again: uploads, file details, finish and retract can be
  sent twice without filing a second report (at worst a lost upload answer leaves an
  extra copy of that file, without details, in the same report);
- except /submit: it creates a report and the API has no idempotency key, so a /submit in
  flight at a crash or without an answer leaves the outcome unknown (`Unknown`) until the
  operator decides (`decide`): no report was made (submit again), NCMEC has report N
  (go on with it), or abandon;
- a report NCMEC refuses to complete (a file or its details rejected, the report gone) is
  retracted (`Retract`) rather than left open; refused credentials are not the report's
  fault and leave the step to be done again once they are fixed;
- the journal ends `Finished` (report id and file ids) or `Retracted`/`Abandoned`.

`run_steps` drives a `CybertipClient` through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from mailfilter.cybertip.client import CybertipClient
from mailfilter.cybertip.document import (
    FileDetails,
    Report,
    file_details_xml,
    report_xml,
    validate,
)
from mailfilter.cybertip.protocol import AuthFailed, CybertipError, NotDone, Rejected

__all__ = [
    "Abandoned",
    "Action",
    "Event",
    "FileInfo",
    "FileToReport",
    "Finish",
    "Finished",
    "Journal",
    "PlannedFile",
    "Progress",
    "Retract",
    "Retracted",
    "Submit",
    "Unknown",
    "Upload",
    "decide",
    "next_step",
    "progress",
    "run_steps",
]

StepName = Literal["submit", "upload", "fileinfo", "finish", "retract"]
EventStep = Literal["submit", "upload", "fileinfo", "finish", "retract", "operator"]
# started/done/failed for the API steps; the operator's decisions on an unknown /submit
EventState = Literal["started", "done", "failed", "no-report", "report-exists", "abandon"]
# how a step failed: not carried out (retry), refused (the report cannot be finished),
# credentials refused (fix them, retry), outcome unknown (maybe carried out)
Failure = Literal["not-done", "rejected", "auth", "unknown"]


@dataclass(frozen=True, slots=True)
class PlannedFile:
    name: str
    md5: str
    size: int


@dataclass(frozen=True, slots=True)
class Event:
    step: EventStep
    state: EventState
    at: float
    file: int | None = None  # index into the plan
    report_id: int | None = None
    file_id: str | None = None
    md5: str | None = None  # what NCMEC said it received
    failure: Failure | None = None
    error: str | None = None
    note: str | None = None  # why (a retraction's reason, an operator's note)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class Journal:
    files: tuple[PlannedFile, ...]
    events: tuple[Event, ...] = ()

    def record(self, event: Event) -> Journal:
        return dataclasses.replace(self, events=(*self.events, event))

    def to_dict(self) -> dict[str, Any]:
        return {"files": [dataclasses.asdict(f) for f in self.files],
                "events": [e.to_dict() for e in self.events]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Journal:
        return cls(tuple(PlannedFile(str(f["name"]), str(f["md5"]), int(f["size"]))
                         for f in data.get("files") or ()),
                   tuple(Event.from_dict(e) for e in data.get("events") or ()))


# --- where the report stands -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    report_id: int | None
    submit_unknown: str | None  # why the outcome of /submit is not known
    file_ids: tuple[str | None, ...]
    md5s: tuple[str | None, ...]
    described: tuple[bool, ...]  # fileinfo done, per file
    finished: bool
    finish_file_ids: tuple[str, ...]
    retracted: bool
    abandoned: bool
    unfinishable: str | None  # the refusal that means the report cannot be finished


def progress(journal: Journal) -> Progress:
    n = len(journal.files)
    report_id: int | None = None
    in_flight: Event | None = None  # a /submit started and not ended
    unknown: str | None = None
    file_ids: list[str | None] = [None] * n
    md5s: list[str | None] = [None] * n
    described = [False] * n
    finished, retracted, abandoned = False, False, False
    finish_ids: tuple[str, ...] = ()
    unfinishable: str | None = None
    for e in journal.events:
        if e.step == "submit":
            in_flight = e if e.state == "started" else None
            if e.state == "done":
                report_id, unknown = e.report_id, None
            elif e.state == "failed" and e.failure == "unknown":
                unknown = f"/submit had no clear answer ({e.error})"
        elif e.step == "operator":
            in_flight, unknown = None, None
            if e.state == "report-exists":
                report_id = e.report_id
            elif e.state == "abandon":
                abandoned = True
        elif e.state == "failed" and e.failure == "rejected" and e.step != "retract":
            unfinishable = f"/{e.step} refused: {e.error}"
        elif e.state == "done" and e.file is not None and 0 <= e.file < n:
            if e.step == "upload":
                file_ids[e.file], md5s[e.file] = e.file_id, e.md5
            elif e.step == "fileinfo":
                described[e.file] = True
        elif e.state == "done" and e.step == "finish":
            finished, finish_ids = True, _ids(e.file_id)
        elif e.state == "done" and e.step == "retract":
            retracted = True
    if in_flight is not None and report_id is None:
        unknown = "/submit was in flight when the process stopped"
    return Progress(report_id, unknown if report_id is None else None, tuple(file_ids),
                    tuple(md5s), tuple(described), finished, finish_ids, retracted, abandoned,
                    unfinishable)


def _ids(joined: str | None) -> tuple[str, ...]:
    return tuple(i for i in (joined or "").split(",") if i)


# --- what to do next -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    pass


@dataclass(frozen=True, slots=True)
class Upload:
    file: int
    report_id: int


@dataclass(frozen=True, slots=True)
class FileInfo:
    file: int
    report_id: int
    file_id: str


@dataclass(frozen=True, slots=True)
class Finish:
    report_id: int


@dataclass(frozen=True, slots=True)
class Retract:
    report_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Finished:
    report_id: int
    file_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retracted:
    report_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abandoned:
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """The outcome of /submit is not known: the operator decides (`decide`)."""

    reason: str


Action = (Submit | Upload | FileInfo | Finish | Retract | Finished | Retracted | Abandoned
          | Unknown)
TERMINAL: Final = (Finished, Retracted, Abandoned, Unknown)


def next_step(journal: Journal) -> Action:
    p = progress(journal)
    if p.report_id is None:
        if p.abandoned:
            return Abandoned("abandoned by the operator before a report was filed")
        if p.submit_unknown is not None:
            return Unknown(p.submit_unknown)
        return Submit()
    report_id = p.report_id
    if p.finished:
        file_ids = p.finish_file_ids or tuple(i for i in p.file_ids if i)
        return Finished(report_id, file_ids)
    if p.retracted:
        return Retracted(report_id, p.unfinishable or "abandoned by the operator")
    if p.abandoned:
        return Retract(report_id, "abandoned by the operator")
    if p.unfinishable is not None:
        return Retract(report_id, p.unfinishable)
    for i, file_id in enumerate(p.file_ids):
        if file_id is None:
            return Upload(i, report_id)
    for i, (file_id, described) in enumerate(zip(p.file_ids, p.described, strict=True)):
        if not described:
            assert file_id is not None
            return FileInfo(i, report_id, file_id)
    return Finish(report_id)


def decide(journal: Journal, decision: Literal["no-report", "report-exists", "abandon"],
           at: float, report_id: int | None = None, note: str = "") -> Journal:
    """The operator's decision on a /submit whose outcome is unknown: no report was made
    (submit again), NCMEC holds report `report_id` (go on with it), or abandon. Recorded
    as an event so the history says who decided what."""
    if decision == "report-exists" and report_id is None:
        raise ValueError("report-exists needs the report id NCMEC holds")
    if not isinstance(next_step(journal), Unknown) and decision != "abandon":
        raise ValueError("the outcome of /submit is known: nothing to decide")
    return journal.record(Event("operator", decision, at, report_id=report_id,
                                note=note or None))


# --- running the steps -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileToReport:
    """One file to report: its name, its bytes (read when it is uploaded) and its file
    details (`report_id` and `file_id` are filled in from the journal)."""

    name: str
    data: Callable[[], bytes]
    details: FileDetails


def plan(files: Sequence[FileToReport]) -> Journal:
    planned = []
    for f in files:
        data = f.data()
        planned.append(PlannedFile(f.name, hashlib.md5(data).hexdigest(), len(data)))
    return Journal(tuple(planned))


def _failure(exc: CybertipError) -> Failure:
    if isinstance(exc, AuthFailed):
        return "auth"
    if isinstance(exc, Rejected):
        return "rejected"
    if isinstance(exc, NotDone):
        return "not-done"
    return "unknown"


def _check_documents(report: Report, files: Sequence[FileToReport], xsd: Path | None) -> bytes:
    """The report's XML, every document validated against the XSD first (file details
    with stand-in ids), so that an invalid document never opens a report."""
    body = report_xml(report)
    if xsd is not None:
        validate(body, xsd)
        for f in files:
            validate(file_details_xml(dataclasses.replace(f.details, report_id=1,
                                                          file_id="0")), xsd)
    return body


def run_steps(journal: Journal, report: Report, files: Sequence[FileToReport],
              client: CybertipClient, save: Callable[[Journal], None], *,
              xsd: Path | None = None, clock: Callable[[], float] = time.time,
              ) -> tuple[Journal, Action]:
    """Take the steps `next_step` names until the report is finished, retracted or
    needs the operator, or a step fails: returns the journal and where it stands
    (`next_step` of it), or raises the step's `CybertipError` after saving the failure.
    `save` is called with the journal before every request and after every answer.
    InvalidDocument (nothing sent) when a document does not validate against `xsd`;
    ValueError when `files` are not the files the journal planned."""
    if tuple(f.name for f in files) != tuple(f.name for f in journal.files):
        raise ValueError("the files to report are not the ones this journal planned")
    body = _check_documents(report, files, xsd)
    while True:
        action = next_step(journal)
        if isinstance(action, TERMINAL):
            return journal, action
        assert isinstance(action, Submit | Upload | FileInfo | Finish | Retract)
        step: StepName = _STEP_OF[type(action)]
        index = action.file if isinstance(action, Upload | FileInfo) else None
        journal = journal.record(Event(step, "started", clock(), file=index))
        save(journal)
        try:
            done = _take(action, body, files, journal, client, clock)
        except CybertipError as exc:
            journal = journal.record(Event(step, "failed", clock(), file=index,
                                           failure=_failure(exc), error=str(exc)))
            save(journal)
            raise
        journal = journal.record(done)
        save(journal)


_STEP_OF: Final[dict[type, StepName]] = {Submit: "submit", Upload: "upload",
                                         FileInfo: "fileinfo", Finish: "finish",
                                         Retract: "retract"}


def _take(action: Action, body: bytes, files: Sequence[FileToReport], journal: Journal,
          client: CybertipClient, clock: Callable[[], float]) -> Event:
    if isinstance(action, Submit):
        return Event("submit", "done", clock(), report_id=client.submit(body))
    if isinstance(action, Upload):
        data = files[action.file].data()
        if hashlib.md5(data).hexdigest() != journal.files[action.file].md5:
            raise ValueError(f"{files[action.file].name} changed since the report was "
                             "planned")
        uploaded = client.upload(action.report_id, files[action.file].name, data)
        return Event("upload", "done", clock(), file=action.file,
                     report_id=action.report_id, file_id=uploaded.file_id, md5=uploaded.md5)
    if isinstance(action, FileInfo):
        details = dataclasses.replace(files[action.file].details, report_id=action.report_id,
                                      file_id=action.file_id)
        client.fileinfo(file_details_xml(details))
        return Event("fileinfo", "done", clock(), file=action.file,
                     report_id=action.report_id, file_id=action.file_id)
    if isinstance(action, Finish):
        done = client.finish(action.report_id)
        return Event("finish", "done", clock(), report_id=action.report_id,
                     file_id=",".join(done.file_ids) or None)
    assert isinstance(action, Retract)
    client.retract(action.report_id)
    return Event("retract", "done", clock(), report_id=action.report_id,
                 note=action.reason)
