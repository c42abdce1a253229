"""A quarantine entry filed as a CyberTipline report (`mailfilter quarantine submit`).

The report is made from the entry's record (sender, recipients, the SMTP client's IP, the
time of receipt) and the matched files' bytes, recovered from the quarantined message by
the extract stage: the attachment at each matched MIME path whose hashes are the record's
(never the whole message). That extraction parses the quarantined message again, hostile
input like any other, so it runs in a worker process of its own (`workers.WorkerPool`,
sandboxed and memory-limited as the scanner's), never in the operator's command or the
service that calls this. The step journal (`cybertip.journal`) lives in the record's
`cybertip` field and is written with the store's durable update around every request,
so a crash, a timeout or a 5xx resumes the same report and never files a second one.

How long a reported entry is kept: preservation.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from mailfilter.actions.preservation import journal_of, submission_time
from mailfilter.actions.quarantine import QuarantineStore, StoredEntry
from mailfilter.actions.quarantine_service import QuarantineService, Refused
from mailfilter.actions.records import HistoryEvent, JsonObject, QuarantineRecord, iso_time
from mailfilter.actions.relay import local_hostname
from mailfilter.actions.report.cybertip import file_name_of, mail_incident, match_lines
from mailfilter.cybertip.client import CybertipClient
from mailfilter.cybertip.document import InvalidDocument
from mailfilter.cybertip.email_report import (
    MailIncident,
    MatchedFile,
    build_file_details,
    build_report,
)
from mailfilter.cybertip.journal import (
    Abandoned,
    Action,
    FileToReport,
    Finished,
    Journal,
    Retracted,
    Unknown,
    decide,
    next_step,
    plan,
    progress,
    run_steps,
)
from mailfilter.cybertip.protocol import CybertipError
from mailfilter.errors import WorkerFailure
from mailfilter.extract import extract
from mailfilter.model import Extraction
from mailfilter.sandbox import SandboxUnavailable
from mailfilter.settings import Settings
from mailfilter.workers import RemoteError, WorkerPool

__all__ = [
    "Busy",
    "CannotReport",
    "Submission",
    "already",
    "check_reportable",
    "cybertip_line",
    "eligible_lists",
    "extract_in_worker",
    "incident_of",
    "matched_files",
    "submit_entry",
]

Decision = Literal["no-report", "abandon"] | int  # an int: NCMEC holds that report


class CannotReport(Refused):
    """The entry itself cannot be reported, and no setting or later try changes that: it
    has no matches, its message was deleted, its record has no time of receipt or
    describes no attachment where it matched. Auto-submit ends its step on it (the
    history says `cybertip-refused`) rather than trying again for ever."""


def eligible_lists(record: QuarantineRecord, settings: Settings) -> list[str]:
    """The lists of the entry's matches that `[cybertip] lists` allows (empty: all)."""
    allowed = settings.cybertip.lists
    return [name for name in record.lists() if not allowed or name in allowed]


def check_reportable(entry: StoredEntry, settings: Settings) -> None:
    """Refused when the entry has nothing to report: no match on a list `[cybertip]
    lists` allows, or its message (with the files) deleted."""
    record = entry.record
    if not record.matches:
        raise CannotReport(f"{entry.id}: it has no matches to report")
    if not eligible_lists(record, settings):
        raise Refused(f"{entry.id}: its matches (lists {', '.join(record.lists())}) are on "
                      f"no list in [cybertip] lists ({', '.join(settings.cybertip.lists)})")
    if not entry.has_message:
        raise CannotReport(f"{entry.id}: the message was deleted; its files cannot be "
                           "reported")


def incident_of(record: QuarantineRecord, settings: Settings) -> MailIncident:
    """The incident of an entry. Refused when its record has no time of receipt (the
    incident time NCMEC is told must be the real one, never a placeholder)."""
    try:
        return mail_incident(record, local_hostname(settings.smtp.hostname))
    except ValueError as exc:
        raise CannotReport(f"{record.id}: {exc}") from exc


def matched_files(record: QuarantineRecord, raw: bytes, settings: Settings
                  ) -> list[tuple[MatchedFile, bytes]]:
    """Each matched attachment (on an eligible list) and its decoded bytes, found again
    in the message by the extract stage: the payload at the matched MIME path whose
    SHA-256 (else MD5) is the record's. Refused when one cannot be found again (a file
    whose bytes the extract stage does not hand on, other extract limits than when it
    was scanned)."""
    allowed = set(eligible_lists(record, settings))
    # A match on an allowed list at a path with no attachment in the record (a record read
    # in part) would leave its file out of the report without a word: refused instead.
    described = {a.mime_path for a in record.attachments}
    missing = sorted({m.mime_path for m in record.matches
                      if m.list_name in allowed and m.mime_path not in described})
    if missing:
        raise CannotReport(f"{record.id}: the record matches at {', '.join(missing)} but "
                           "describes no attachment there; file the report by hand from "
                           "`quarantine export`")
    # Files that are not images travel as hashes only; their bytes are asked for by SHA-256.
    found = extract_in_worker(raw, settings, record.id,
                              frozenset(a.sha256 for a in record.attachments if a.sha256))
    out: list[tuple[MatchedFile, bytes]] = []
    for attachment in record.attachments:
        lines = match_lines(record, attachment.mime_path, allowed)
        if not lines:
            continue
        data = _bytes_of(found.attachments, attachment.mime_path, attachment.sha256,
                         attachment.md5)
        if data is None and attachment.sha256:
            data = dict(found.kept_files).get(attachment.sha256)
        if data is None:
            raise Refused(f"{record.id}: the bytes of {attachment.mime_path} cannot be found "
                          "again in the quarantined message (its hashes are in the record); "
                          "file the report by hand from `quarantine export`")
        out.append((MatchedFile(
            name=file_name_of(attachment), mime_path=attachment.mime_path,
            content_type=attachment.content_type or "application/octet-stream",
            size=len(data), md5=hashlib.md5(data).hexdigest(),
            sha1=hashlib.sha1(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(),
            matches=lines), data))
    if not out:
        raise CannotReport(f"{record.id}: no matched file to report")
    return out


def extract_in_worker(raw: bytes, settings: Settings, entry_id: str,
                      keep: frozenset[str]) -> Extraction:
    """`extract(raw, settings.extract, keep)` in a worker process started for it (one
    submission is rare: no pool is kept waiting), under `[workers]` memory limit and
    sandbox, with the quarantine and the store out of its reach, and `[scan] timeout` as
    its deadline. A worker that dies or runs out of time is Refused with the reason."""
    # (the NCMEC password too: this worker parses hostile mail)
    protect: list[str | Path] = [settings.quarantine.path, settings.store.path]
    if settings.cybertip.password_file:
        protect.append(settings.cybertip.password_file)
    try:
        with WorkerPool(1, settings.workers.memory_limit, sandbox=settings.workers.sandbox,
                        protect=protect) as pool:
            return pool.submit(extract, raw, settings.extract, keep,
                               deadline=settings.scan.timeout).result()
    except (WorkerFailure, SandboxUnavailable, RemoteError) as exc:
        raise Refused(f"{entry_id}: the quarantined message could not be read again "
                      f"({exc}); file the report by hand from `quarantine export`") from exc


def _bytes_of(payloads: tuple[object, ...], mime_path: str, sha256: str | None,
              md5: str | None) -> bytes | None:
    def fits(data: bytes) -> bool:
        if sha256:
            return hashlib.sha256(data).hexdigest() == sha256
        return bool(md5) and hashlib.md5(data).hexdigest() == md5

    # The payload at the path first, then any other (paths move when limits differ).
    candidates = sorted(payloads, key=lambda p: getattr(p, "mime_path", None) != mime_path)
    for payload in candidates:
        data = getattr(payload, "data", None)
        if isinstance(data, bytes) and fits(data):
            return data
    return None


@dataclass(frozen=True, slots=True)
class Submission:
    """How `quarantine submit` ended: `result` is finished, already-finished, unknown
    (the operator decides), failed (resume by running it again), retracted or
    abandoned."""

    entry_id: str
    result: str
    report_id: int | None
    file_ids: tuple[str, ...]
    message: str
    steps: tuple[JsonObject, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result in ("finished", "already-finished")

    def to_json(self) -> JsonObject:
        return {"id": self.entry_id, "result": self.result, "report_id": self.report_id,
                "file_ids": list(self.file_ids), "message": self.message,
                "steps": list(self.steps)}


DECIDE_HINT: Final = ("ask NCMEC whether a report arrived, then run `mailfilter quarantine "
                      "submit ID --decide no-report` (none arrived: submit again), "
                      "`--decide REPORT_ID` (NCMEC holds it: go on with it) or "
                      "`--decide abandon`")


def _ending(entry_id: str, action: Action, journal: Journal) -> Submission:
    steps = tuple(e.to_dict() for e in journal.events)
    if isinstance(action, Finished):
        return Submission(entry_id, "finished", action.report_id, action.file_ids,
                          f"CyberTipline report {action.report_id} filed and finished "
                          f"(files {', '.join(action.file_ids) or '-'})", steps)
    if isinstance(action, Unknown):
        return Submission(entry_id, "unknown", None, (),
                          f"the outcome of /submit is unknown ({action.reason}): "
                          + DECIDE_HINT.replace("ID", entry_id), steps)
    if isinstance(action, Retracted):
        return Submission(entry_id, "retracted", action.report_id, (),
                          f"report {action.report_id} was retracted: {action.reason}", steps)
    assert isinstance(action, Abandoned)
    return Submission(entry_id, "abandoned", None, (), action.reason, steps)


def already(entry: StoredEntry) -> Submission | None:
    """The ending of an entry whose journal has ended (finished, retracted, abandoned),
    else None: there is something left to do (or to decide)."""
    journal = journal_of(entry.record)
    if journal is None:
        return None
    action = next_step(journal)
    if isinstance(action, Finished):
        done = _ending(entry.id, action, journal)
        return dataclasses.replace(done, result="already-finished",
                                   message=f"{entry.id} was already reported: " + done.message)
    if isinstance(action, Retracted | Abandoned):
        return _ending(entry.id, action, journal)
    return None


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


class Busy(Refused):
    """Another process is taking this instance's CyberTipline steps right now."""


@contextlib.contextmanager
def _submitting(store: QuarantineStore) -> Iterator[None]:
    # One submission at a time per quarantine: `quarantine submit` and the outbox's
    # auto-submission reading the same journal at once could both send /submit. (Delete
    # and purge wait for it: quarantine.py.)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(store.cybertip_lock())
        except BlockingIOError:
            raise Busy("the quarantine's CyberTipline lock is held (another submission, or "
                       "a delete or purge); try again in a moment") from None
        yield


def submit_entry(service: QuarantineService, entry: StoredEntry, actor: str,
                 client: CybertipClient, *, decision: Decision | None = None,
                 clock: Callable[[], float] = time.time) -> Submission:
    """Take the entry's report as far as it goes: submit, upload, fileinfo, finish, the
    journal saved in the record around every request. Refused when the entry cannot be
    reported (no match on an eligible list, the message deleted, a file not found again,
    the reporter not set, a document invalid against `[cybertip] xsd`); Busy while
    another process submits."""
    try:
        with _submitting(service.store):
            # Read again under the lock: the journal is the one the last submitter left.
            fresh = service.store.find(entry.id)
            if fresh is None:
                raise CannotReport(f"{entry.id} disappeared (purged meanwhile?)")
            ended = already(fresh)
            if ended is not None:
                return ended
            return _submit_locked(service, fresh, actor, client, decision, clock)
    except Refused as exc:
        # Who tried to report what, and why it was not done, as for every other command.
        service.store.audit(actor, "submit", entry.id, f"refused: {exc}")
        raise


def _submit_locked(service: QuarantineService, entry: StoredEntry, actor: str,
                   client: CybertipClient, decision: Decision | None,
                   clock: Callable[[], float]) -> Submission:
    settings, store = service.settings, service.store
    record = entry.record
    check_reportable(entry, settings)
    incident = incident_of(record, settings)
    found = matched_files(record, entry.message_path.read_bytes(), settings)
    try:
        report = build_report(incident, tuple(f for f, _ in found), settings)
    except ValueError as exc:
        raise Refused(f"{entry.id}: {exc}") from exc
    files = [FileToReport(f.name, _constant(data), build_file_details(incident, f, settings))
             for f, data in found]
    journal = journal_of(record) or plan(files)

    def save(j: Journal) -> None:
        service.change(entry, lambda rec: dataclasses.replace(rec, cybertip=j.to_dict()))

    if decision is not None:
        try:
            if isinstance(decision, int):
                journal = decide(journal, "report-exists", clock(), report_id=decision,
                                 note=f"by {actor}")
            else:
                journal = decide(journal, decision, clock(), note=f"by {actor}")
        except ValueError as exc:
            raise Refused(f"{entry.id}: --decide: {exc}") from exc
        save(journal)
        store.audit(actor, "submit-decide", entry.id, "ok", decision=str(decision))
    xsd = Path(settings.cybertip.xsd) if settings.cybertip.xsd else None
    try:
        journal, action = run_steps(journal, report, files, client, save, xsd=xsd,
                                    clock=clock)
    except InvalidDocument as exc:  # (audited by submit_entry, as every refusal)
        raise Refused(f"{entry.id}: the report does not validate: {exc}") from exc
    except ValueError as exc:
        # The files found now are not the ones the open report planned (`[cybertip] lists`
        # changed meanwhile, a file's bytes differ): a refusal to look at, not a traceback
        # and not a retry that would fail the same way.
        raise Refused(f"{entry.id}: {exc}; the open report cannot go on with these files"
                      ) from exc
    except CybertipError as exc:
        now_record = service.locate(entry.id).record
        journal = journal_of(now_record) or journal
        if exc.retry_safe:
            message = f"{exc}; run the same command again to resume the same report"
            result = "failed"
        else:
            message = f"{exc}; the outcome of /submit is unknown: " + DECIDE_HINT.replace(
                "ID", entry.id)
            result = "unknown"
        store.audit(actor, "submit", entry.id, f"{result}: {exc}")
        failed = HistoryEvent.now(f"cybertip-{result}", clock(), actor, error=str(exc)[:300])
        # A failure again is one line (repeated=N); each unknown outcome is its own line:
        # each may be a report at NCMEC.
        service.change(entry, lambda rec: rec.with_repeated_event(failed)
                       if result == "failed" else rec.with_event(failed))
        return Submission(entry.id, result, progress(journal).report_id, (), message,
                          tuple(e.to_dict() for e in journal.events))
    done = _ending(entry.id, action, journal)
    detail: JsonObject = {"result": done.result}
    if done.report_id is not None:
        detail["report_id"] = done.report_id
    if done.file_ids:
        detail["file_ids"] = list(done.file_ids)
    event = HistoryEvent.now(f"cybertip-{done.result}", clock(), actor, **detail)
    service.change(entry, lambda rec: rec.with_event(event))
    store.audit(actor, "submit", entry.id, done.result, **{k: v for k, v in detail.items()
                                                           if k != "result"})
    service.sync_index(service.locate(entry.id))
    return done


def cybertip_line(record: QuarantineRecord) -> str | None:
    """`quarantine show`'s line about the entry's CyberTipline report, if it has one."""
    journal = journal_of(record)
    if journal is None:
        return None
    action = next_step(journal)
    p = progress(journal)
    if isinstance(action, Finished):
        state = f"report {action.report_id} finished (files {', '.join(action.file_ids)})"
    elif isinstance(action, Unknown):
        state = f"outcome of /submit unknown ({action.reason}): decide with --decide"
    elif isinstance(action, Retracted):
        state = f"report {action.report_id} retracted ({action.reason})"
    elif isinstance(action, Abandoned):
        state = f"abandoned ({action.reason})"
    else:
        state = (f"report {p.report_id} unfinished" if p.report_id is not None
                 else "not filed yet") + ": run quarantine submit again to resume"
    submitted = submission_time(record)
    return state + (f"; submitted {iso_time(submitted)}" if submitted is not None else "")
