"""What operators do to the quarantine, beside the store: find an entry (here or, through
the shared index, on which instance), release, delete, hold and unhold, purge, write its
report or export it, rebuild the index; every change recorded in the entry's history and
in the audit log, and followed in the shared index. `mailfilter quarantine …`
(cli/quarantine.py) parses arguments, calls these and prints.

Blocking, like the store. Errors are exceptions carrying the message for the operator:
`NotHere` (no such entry on this instance: exit 1) and `Refused` (a refusal or an error:
exit 2). Warnings (the index unreachable: the command still works from the directory) go
to the `warn` callback; questions to the operator to the `confirm` callback, which raises
to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mailfilter.actions.deliver import Delivery, deliver, release_params, released_message
from mailfilter.actions.preservation import preserved_until, report_id_of, submission_time
from mailfilter.actions.quarantine import QuarantineStore, StoredEntry, is_entry_id
from mailfilter.actions.quarantine_index import IndexUnavailable, QuarantineIndex, open_index
from mailfilter.actions.records import (
    EntrySummary,
    HistoryEvent,
    JsonObject,
    QuarantineRecord,
    iso_time,
)
from mailfilter.actions.relay import NextHopUnavailable, RelayPool, local_hostname
from mailfilter.actions.report.cybertip import cybertip_xml
from mailfilter.actions.report.document import report_document, report_json
from mailfilter.actions.report.text import printable
from mailfilter.settings import Settings

__all__ = ["JobState", "KeptReported", "NotHere", "PurgeResult", "QuarantineService",
           "Refused", "ReleaseResult"]

LEFTOVER_AGE = 3600.0  # unfinished writes older than this are removed by purge


class NotHere(Exception):
    """No such entry on this instance (the message says where it is, if known)."""


CYBERTIP_LOCK_WAIT: Final = 600.0
"""Seconds delete and purge wait for a CyberTipline submission in progress: a submission
takes seconds to minutes (its requests have `[cybertip] timeout`); one that holds the lock
longer is stopped or hanging, and purge must not hang with it."""


class Refused(Exception):
    """The operation was refused or failed (the message says why)."""


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class JobState:
    """An entry's outbox job as `quarantine show` tells it."""

    steps: tuple[str, ...]
    done: tuple[str, ...]
    attempts: int
    next_attempt: str | None
    last_error: str | None

    @property
    def waiting(self) -> list[str]:
        return [s for s in self.steps if s not in self.done]

    def to_json(self) -> JsonObject:
        return {"steps": list(self.steps), "done": list(self.done), "attempts": self.attempts,
                "next_attempt": self.next_attempt, "last_error": self.last_error}


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    entry: StoredEntry
    delivery: Delivery
    reply: str | None
    refused: dict[str, str]

    @property
    def result(self) -> str:
        """ok, partial (some recipients refused) or failed."""
        if self.delivery.delivered and not self.refused:
            return "ok"
        return "partial" if self.delivery.delivered else "failed"


@dataclass(frozen=True, slots=True)
class PurgeResult:
    dry_run: bool
    retention_days: int
    cutoff: str
    purged: tuple[StoredEntry, ...]
    kept_on_hold: tuple[str, ...]
    kept_report_pending: tuple[str, ...]
    leftovers: tuple[Path, ...]
    kept_reported: tuple[KeptReported, ...] = ()

    def to_json(self) -> JsonObject:
        """`quarantine purge --json` (and the audit line's details)."""
        return {"dry_run": self.dry_run, "retention_days": self.retention_days,
                "cutoff": self.cutoff, "purged": [e.id for e in self.purged],
                "kept_on_hold": list(self.kept_on_hold),
                "kept_report_pending": list(self.kept_report_pending),
                "kept_reported": [k.to_json() for k in self.kept_reported],
                "leftovers": [str(p) for p in self.leftovers]}


@dataclass(frozen=True, slots=True)
class KeptReported:
    """An entry past its retention kept because it was reported to the CyberTipline:
    preserved until the later of receipt + retention_days and submission + 365 days."""

    id: str
    report_id: int | None  # None: the outcome of /submit is unknown
    submitted: str
    until: str

    def to_json(self) -> JsonObject:
        return {"id": self.id, "report_id": self.report_id, "submitted": self.submitted,
                "until": self.until}


class QuarantineService:
    """The operations on one instance's quarantine under `settings`."""

    def __init__(self, settings: Settings, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.store = QuarantineStore(settings.quarantine)
        self.warn = warn

    def _index(self) -> QuarantineIndex | None:
        return open_index(self.settings.store)

    # --- finding ---------------------------------------------------------------------------

    def locate(self, entry_id: str) -> StoredEntry:
        """The entry on this instance; NotHere saying where it is (the shared index) or
        that there is none; Refused for what is not an id."""
        store = self.store
        if not is_entry_id(entry_id):
            raise Refused(f"{entry_id!r} is not a quarantine id")
        entry = store.find(entry_id)
        if entry is not None:
            return entry
        index = self._index()
        if index is not None:
            try:
                summary = index.get(entry_id)
            except IndexUnavailable as exc:
                self.warn(f"quarantine index not reachable ({exc.detail}): cannot tell where "
                          "else to look")
                summary = None
            finally:
                index.close()
            if summary is not None and summary.host != store.instance:
                raise NotHere(f"{entry_id} is held by instance {printable(summary.host)} "
                              f"(received {summary.received}, status {summary.status}): "
                              "run the command there")
            if summary is not None:
                raise NotHere(f"{entry_id} is in the quarantine index but not in "
                              f"{store.root}: the index is out of date (mailfilter quarantine "
                              "reindex)")
        raise NotHere(f"no quarantine entry {entry_id} on {store.instance} ({store.root})")

    def local_summaries(self, step: Callable[[], None] = _nothing) -> Iterator[EntrySummary]:
        """This instance's entries, oldest day first; `step` after each one."""
        pending = self.store.pending_entry_ids()
        for entry in self.store.entries():
            summary = EntrySummary.of(entry.record, report_pending=entry.id in pending,
                                      has_message=entry.has_message)
            yield summary
            step()

    def summaries(self, step: Callable[[], None] = _nothing,
                  finished: Callable[[], None] = _nothing) -> list[EntrySummary]:
        """Every entry, this instance's and (with a shared index) the others', oldest first.
        `finished` when the local ones have been read."""
        out = list(self.local_summaries(step))
        finished()
        index = self._index()
        if index is not None:
            try:
                out += [s for s in index.all() if s.host != self.store.instance]
            except IndexUnavailable as exc:
                self.warn(f"quarantine index not reachable ({exc.detail}): showing this "
                          "instance's entries only")
            finally:
                index.close()
        out.sort(key=lambda s: s.sort_key)
        return out

    def jobs(self, entry_id: str) -> list[JobState]:
        return [JobState(tuple(j.steps), tuple(j.done), j.attempts,
                         iso_time(j.next_attempt) if j.next_attempt else None, j.last_error)
                for j in self.store.jobs() if j.entry_id == entry_id]

    def show(self, entry: StoredEntry, actor: str) -> list[JobState]:
        """What `show` needs beside the record: its outbox jobs (the look is audited)."""
        jobs = self.jobs(entry.id)
        self.store.audit(actor, "show", entry.id, "ok")
        return jobs

    # --- changing ----------------------------------------------------------------------------

    def sync_index(self, entry: StoredEntry) -> None:
        """Best effort: the index follows an operator's change at once; if Redis is not
        reachable, an outbox job makes the service retry it."""
        index = self._index()
        if index is None:
            return
        store = self.store
        try:
            pending = entry.id in store.pending_entry_ids()
            index.put(EntrySummary.of(entry.record, report_pending=pending,
                                      has_message=entry.has_message))
        except IndexUnavailable as exc:
            store.add_job(entry, ["index"])
            self.warn(f"quarantine index not updated ({exc.detail}); the service will retry it")
        finally:
            index.close()

    def change(self, entry: StoredEntry, change: Callable[[QuarantineRecord], QuarantineRecord]
               ) -> StoredEntry:
        try:
            return self.store.update(entry.id, change)
        except KeyError:
            raise NotHere(f"{entry.id} disappeared (purged meanwhile?)") from None

    def _add_event(self, entry: StoredEntry, event: HistoryEvent) -> StoredEntry:
        return self.change(entry, lambda rec: rec.with_event(event))

    def release(self, entry: StoredEntry, actor: str, force: bool,
                confirm: Callable[[str], None]) -> ReleaseResult:
        """Deliver the original message to its original envelope through the next hop,
        with an X-Mailfilter-Released header; the history and audit log say how it went."""
        store, settings = self.store, self.settings
        record = entry.record
        if not entry.has_message:
            store.audit(actor, "release", entry.id, "refused: message deleted")
            raise Refused(f"{entry.id}: the message was deleted; there is nothing to release")
        if record.status == "released" and not force:
            last = record.last_event("released")
            store.audit(actor, "release", entry.id, "refused: already released")
            raise Refused(f"{entry.id} was already released by "
                          f"{printable(last.by if last else None)} at "
                          f"{last.time if last else None} (add --force to release it again)")
        envelope = record.envelope
        recipients = list(envelope.rcpt_tos)
        confirm(f"release {entry.id} to {', '.join(recipients)}")
        now = time.time()
        message = released_message(entry.message_path.read_bytes(), actor, iso_time(now),
                                   entry.id)
        params = release_params(list(envelope.mail_options), len(message))
        options = envelope.rcpt_options
        targets = [(addr, list(options[i]) if i < len(options) else [])
                   for i, addr in enumerate(recipients)]
        try:
            delivery = asyncio.run(self._deliver(envelope.mail_from or "", params, targets,
                                                 message))
        except NextHopUnavailable as exc:
            store.audit(actor, "release", entry.id, f"failed: {exc}")
            raise Refused(f"{entry.id} not released: next hop {settings.smtp.next_hop}: "
                          f"{exc}") from exc
        refused = {addr: str(reply) for addr, reply in delivery.refused}
        reply = str(delivery.reply) if delivery.reply is not None else None
        delivered_to = delivery.accepted if delivery.delivered else []
        event = HistoryEvent.now(
            "released" if delivery.delivered else "release-failed", now, actor,
            next_hop=settings.smtp.next_hop, reply=reply, delivered_to=delivered_to,
            refused=refused)
        entry = self.change(entry, lambda rec: rec.with_event(
            event, status="released" if delivery.delivered else rec.status))
        outcome = ReleaseResult(entry, delivery, reply, refused)
        store.audit(actor, "release", entry.id, outcome.result, next_hop=settings.smtp.next_hop,
                    reply=reply, delivered_to=delivered_to, refused=refused)
        self.sync_index(entry)
        return outcome

    async def _deliver(self, mail_from: str, params: Sequence[str],
                       recipients: Sequence[tuple[str, Sequence[str]]], message: bytes
                       ) -> Delivery:
        smtp = self.settings.smtp
        pool = RelayPool(smtp, local_hostname(smtp.hostname))
        try:
            return await deliver(pool, mail_from, params, recipients, message)
        finally:
            await pool.close()

    def delete(self, entry: StoredEntry, actor: str, confirm: Callable[[str], None]) -> bool:
        """Delete the message (the record stays until purged); False if it already was.
        Refused for an entry on legal hold or preserved for its CyberTipline report."""
        store = self.store
        self._check_deletable(entry, actor)
        if not entry.has_message:
            store.audit(actor, "delete", entry.id, "ok: already deleted")
            return False
        confirm(f"delete the message of {entry.id}")
        # Judged again on the record as it is now, under the CyberTipline lock: while the
        # operator answered, the service may have filed the entry's report (auto-submit),
        # or someone put it on hold; and a submission in progress, which has read the
        # message and is about to record its report, ends first.
        with self._cybertip_locked():
            fresh = store.find(entry.id)
            if fresh is None or not fresh.has_message:
                store.audit(actor, "delete", entry.id, "ok: already deleted")
                return False
            entry = fresh
            self._check_deletable(entry, actor)
            store.delete_message(entry)
        event = HistoryEvent.now("deleted", time.time(), actor)
        entry = self.change(entry, lambda rec: rec.with_event(event, status="deleted"))
        store.audit(actor, "delete", entry.id, "ok")
        self.sync_index(entry)
        return True

    @contextlib.contextmanager
    def _cybertip_locked(self) -> Iterator[None]:
        """The store's CyberTipline lock, waited for (with a word to the operator) while a
        submission (or another delete or purge) holds it, up to CYBERTIP_LOCK_WAIT; then
        Refused."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.store.cybertip_lock())
            except BlockingIOError:
                self.warn("waiting for the quarantine's CyberTipline lock (a submission, "
                          "delete or purge in progress)")
                try:
                    held.enter_context(self.store.cybertip_lock(wait=CYBERTIP_LOCK_WAIT))
                except BlockingIOError:
                    raise Refused(
                        f"the quarantine's CyberTipline lock was held for more than "
                        f"{CYBERTIP_LOCK_WAIT:g} s (a submission that is stopped or "
                        f"hanging?); try again later") from None
            yield

    def _check_deletable(self, entry: StoredEntry, actor: str) -> None:
        """Refused (and audited) when the entry is on legal hold or preserved for its
        CyberTipline report."""
        store = self.store
        if entry.record.legal_hold:
            store.audit(actor, "delete", entry.id, "refused: legal hold")
            raise Refused(f"{entry.id} is on legal hold: it cannot be deleted (unhold it first "
                          "if the hold has ended)")
        until = preserved_until(entry.record, store.retention_days)
        if until is not None and until > time.time():
            store.audit(actor, "delete", entry.id, "refused: reported to the CyberTipline")
            raise Refused(f"{entry.id} was reported to the CyberTipline: it is preserved until "
                          f"{iso_time(until)} and cannot be deleted before")

    def set_hold(self, entry: StoredEntry, actor: str, hold: bool, reason: str | None
                 ) -> bool:
        """Put on or lift a legal hold; False when it already was so."""
        action = "hold" if hold else "unhold"
        if entry.record.legal_hold == hold:
            self.store.audit(actor, action, entry.id, "ok: unchanged")
            return False
        detail = {"reason": reason} if reason else {}
        event = HistoryEvent.now(action, time.time(), actor, **detail)
        entry = self.change(entry, lambda rec: rec.with_event(event, legal_hold=hold))
        self.store.audit(actor, action, entry.id, "ok", **detail)
        self.sync_index(entry)
        return True

    def purge(self, actor: str, dry_run: bool, step: Callable[[], None] = _nothing,
              finished: Callable[[], None] = _nothing, now: float | None = None
              ) -> PurgeResult:
        """Remove entries received more than retention_days ago, except those on legal
        hold, those whose report still waits in the outbox and those reported to the
        CyberTipline less than 365 days ago (preservation.py), and files of writes that
        never finished (LEFTOVER_AGE old). `now`: the time to purge as of (tests)."""
        store = self.store
        now = time.time() if now is None else now
        cutoff = now - store.retention_days * 86400
        expired: list[StoredEntry] = []
        held: list[str] = []
        waiting: list[str] = []
        reported: list[KeptReported] = []

        def judge(entry: StoredEntry, pending: set[str]) -> None:
            received = entry.record.received_ts
            if float(received if received else now) >= cutoff:
                return
            until = preserved_until(entry.record, store.retention_days)
            if entry.record.legal_hold:
                held.append(entry.id)
            elif entry.id in pending:
                waiting.append(entry.id)
            elif until is not None and until > now:
                submitted = submission_time(entry.record)
                assert submitted is not None
                reported.append(KeptReported(entry.id, report_id_of(entry.record),
                                             iso_time(submitted), iso_time(until)))
            else:
                expired.append(entry)

        pending = store.pending_entry_ids()
        for entry in store.entries():
            step()
            judge(entry, pending)
        finished()
        # File ages are on the real clock, whatever `now` the entries are judged by.
        leftovers = store.leftovers(time.time() - LEFTOVER_AGE)
        if not dry_run:
            with self._cybertip_locked():
                # Judged again under the lock, on the records as they are now: a report
                # filed (or being filed) since the scan, a hold or a report job keeps the
                # entry.
                candidates, expired = expired, []
                pending = store.pending_entry_ids()
                for entry in candidates:
                    fresh = store.find(entry.id)
                    if fresh is not None:
                        judge(fresh, pending)
                for entry in expired:
                    store.remove(entry)
            for path in leftovers:
                path.unlink(missing_ok=True)
        result = PurgeResult(dry_run, store.retention_days, iso_time(cutoff), tuple(expired),
                             tuple(held), tuple(waiting), tuple(leftovers), tuple(reported))
        if expired and not dry_run:
            index = self._index()
            if index is not None:
                try:
                    index.remove([e.id for e in expired])
                except IndexUnavailable as exc:
                    self.warn(f"quarantine index not updated ({exc.detail}): run mailfilter "
                              "quarantine reindex")
                finally:
                    index.close()
        store.audit(actor, "purge", None, "dry-run" if dry_run else "ok", **{
            k: v for k, v in result.to_json().items() if k != "dry_run"})
        return result

    # --- reports, export, reindex ------------------------------------------------------------

    def report(self, entry: StoredEntry, actor: str, fmt: str, now: float) -> bytes:
        """The entry's report as `fmt` (json, cybertip-xml); Refused when there is nothing
        to report."""
        if fmt == "json":
            return report_json(report_document(entry.record, now))
        try:
            data = cybertip_xml(entry.record, self.settings, now,
                                local_hostname(self.settings.smtp.hostname))
        except ValueError as exc:
            self.store.audit(actor, "report", entry.id, f"refused: {exc}", format=fmt)
            raise Refused(f"{entry.id}: {exc}") from exc
        missing = [k for k in ("reporter_name", "reporter_email")
                   if not getattr(self.settings.report, k)
                   and not (k == "reporter_email" and self.settings.cybertip.reporter_email)]
        if missing:
            self.warn(f"[report] {' and '.join(missing)} not set: the reporter is left empty")
        return data

    def report_written(self, entry: StoredEntry, actor: str, fmt: str, to: Path | None,
                       now: float) -> None:
        where = str(to) if to else "stdout"
        self._add_event(entry, HistoryEvent.now("report-written", now, actor, format=fmt,
                                                to=where))
        self.store.audit(actor, "report", entry.id, "ok", format=fmt, to=where)

    def export(self, entry: StoredEntry, actor: str) -> bytes:
        """The message exactly as received; Refused when it was deleted."""
        if not entry.has_message:
            self.store.audit(actor, "export", entry.id, "refused: message deleted")
            raise Refused(f"{entry.id}: the message was deleted; there is nothing to export")
        return entry.message_path.read_bytes()

    def exported(self, entry: StoredEntry, actor: str, to: Path, size: int) -> None:
        self._add_event(entry, HistoryEvent.now("exported", time.time(), actor, to=str(to)))
        self.store.audit(actor, "export", entry.id, "ok", to=str(to), bytes=size)

    def reindex(self, actor: str, step: Callable[[], None] = _nothing,
                finished: Callable[[], None] = _nothing) -> tuple[int, int] | None:
        """Rebuild this instance's part of the shared index: (written, removed), or None
        without one. Refused when Redis cannot be reached."""
        index = self._index()
        if index is None:
            return None
        summaries = list(self.local_summaries(step))
        finished()
        try:
            written, removed = index.replace_host(self.store.instance, summaries)
        except IndexUnavailable as exc:
            self.store.audit(actor, "reindex", None, f"failed: {exc.detail}")
            raise Refused(f"quarantine index not reachable: {exc.detail}") from exc
        finally:
            index.close()
        self.store.audit(actor, "reindex", None, "ok", written=written, removed=removed)
        return written, removed
