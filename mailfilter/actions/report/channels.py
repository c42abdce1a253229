"""Where reports go, and the other steps of an outbox job: one class each, behind one
small interface (`ReportStep`), in the order of `STEPS`. Another channel (a CyberTipline
submission, issue 19) is one more class there, before `StatusStep`.

A step's `name` is what outbox jobs remember (`mail`, `dir`, `webhook`, `status`,
`index`): a job lists the steps a new entry needs under the settings of its time
(`report_steps`), and the sender runs the ones not yet done, in order. A step that raises
is retried later with backoff; one that returns is done and never run again for that job.
A step that has several parts of its own (the mail's recipients; later a CyberTipline
submission's submit, uploads and finish) keeps its progress in `StepContext.state`, which
is saved in the job after every attempt, so a retry resumes where it stopped.

The channels:

- `mail` to `report.to` through the next hop: a plain-text summary with the JSON attached;
- `dir`: `<id>.json` in `report.dir`;
- `webhook`: a POST of the JSON to `report.webhook_url`, signed (`webhook_headers`):
  `X-Mailfilter-Timestamp: <unix seconds>` and
  `X-Mailfilter-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`, so a
  receiver can check both the body and its age (`verify_webhook`).

Then the bookkeeping: `status` (the record's "reported" event, naming where the report
went) and `index` (the entry's summary in the shared quarantine index).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

from mailfilter import __version__
from mailfilter.actions.deliver import deliver
from mailfilter.actions.quarantine import (
    SERVICE_ACTOR,
    OutboxJob,
    QuarantineStore,
    StoredEntry,
    write_file_durably,
)
from mailfilter.actions.quarantine_index import QuarantineIndex, open_index
from mailfilter.actions.records import (
    EntrySummary,
    HistoryEvent,
    JsonObject,
    QuarantineRecord,
    ReportDocument,
)
from mailfilter.actions.relay import RelayPool
from mailfilter.actions.report.document import report_json
from mailfilter.actions.report.text import report_mail
from mailfilter.settings import Settings, url_without_credentials

__all__ = [
    "CHANNELS",
    "STEPS",
    "CybertipChannel",
    "DeliveryFailed",
    "DirectoryChannel",
    "IndexStep",
    "MailChannel",
    "ReportStep",
    "StatusStep",
    "StepContext",
    "StepDeferred",
    "WebhookChannel",
    "report_steps",
    "verify_webhook",
    "webhook_headers",
]

log = logging.getLogger("mailfilter.report")

SIGNATURE_HEADER: Final = "X-Mailfilter-Signature"
TIMESTAMP_HEADER: Final = "X-Mailfilter-Timestamp"
WEBHOOK_TOLERANCE: Final = 300.0  # seconds a receiver should accept a signed request for


class DeliveryFailed(Exception):
    """A report step that did not work this time (it is retried)."""


class StepDeferred(Exception):
    """A report step that could not start yet, through no failure (another process holds
    what it needs): tried again after `retry_min`, not counted as a failed attempt or an
    error."""


@dataclass
class StepContext:
    """What a step works on: the job, its entry, the one document every channel sends."""

    settings: Settings
    store: QuarantineStore
    job: OutboxJob
    entry: StoredEntry
    document: ReportDocument
    relay: RelayPool
    hostname: str

    def state(self, step: str) -> JsonObject:
        """The step's own progress in the job (JSON values), saved after every attempt."""
        return self.job.progress.setdefault(step, {})


class ReportStep(Protocol):
    """One step of an outbox job, made once per sender (`cls()`): it may keep a
    connection, closed by `close`. `wanted` looks at settings only, so `report_steps` can
    ask it before there is a sender; `reported_as` at the settings and what the step
    left in its state."""

    name: ClassVar[str]
    error_kind: ClassVar[str | None]  # counted in metrics.error when the step fails

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """Whether a new entry's job includes this step."""
        ...

    @classmethod
    def reported_as(cls, settings: Settings, state: JsonObject) -> JsonObject:
        """What the record's "reported" event says about this step, done with this state
        ({}: nothing: it reported nothing)."""
        ...

    async def run(self, ctx: StepContext) -> None:
        """Do the step; any exception means "not done, try again later"."""
        ...

    def close(self) -> None:
        ...


class _Step:
    name: ClassVar[str]
    error_kind: ClassVar[str | None] = None

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        raise NotImplementedError

    @classmethod
    def reported_as(cls, settings: Settings, state: JsonObject) -> JsonObject:
        return {}

    async def run(self, ctx: StepContext) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


# --- the channels -------------------------------------------------------------------------------


class MailChannel(_Step):
    """The report mail to every `report.to` address; the addresses the next hop has not
    accepted yet are the step's state, so a retry never mails one twice."""

    name: ClassVar[str] = "mail"

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return bool(settings.report.to)

    @classmethod
    def reported_as(cls, settings: Settings, state: JsonObject) -> JsonObject:
        return {"mail_to": list(settings.report.to)}

    async def run(self, ctx: StepContext) -> None:
        r = ctx.settings.report
        state = ctx.state(self.name)
        pending = [str(a) for a in state.get("pending", r.to)]
        if not pending:
            return
        state["pending"] = pending
        message = report_mail(ctx.document, r, ctx.hostname, time.time())
        delivery = await deliver(ctx.relay, r.from_, (), [(a, ()) for a in pending], message)
        if delivery.delivered:
            state["pending"] = [a for a in pending if a not in delivery.accepted]
        if state["pending"]:
            raise DeliveryFailed(f"report mail: {delivery.describe()}")


class DirectoryChannel(_Step):
    """`<id>.json` in `report.dir` (0600, written durably)."""

    name: ClassVar[str] = "dir"

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return bool(settings.report.dir)

    @classmethod
    def reported_as(cls, settings: Settings, state: JsonObject) -> JsonObject:
        return {"dir": settings.report.dir}

    async def run(self, ctx: StepContext) -> None:
        directory = ctx.settings.report.dir
        if directory:
            await asyncio.to_thread(write_report_file, Path(directory), ctx.entry.id,
                                    report_json(ctx.document))


class WebhookChannel(_Step):
    """A signed POST of the document to `report.webhook_url`."""

    name: ClassVar[str] = "webhook"

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return bool(settings.report.webhook_url)

    @classmethod
    def reported_as(cls, settings: Settings, state: JsonObject) -> JsonObject:
        url = settings.report.webhook_url
        return {"webhook": url_without_credentials(url)} if url else {}

    async def run(self, ctx: StepContext) -> None:
        r = ctx.settings.report
        if r.webhook_url:
            body = report_json(ctx.document)
            headers = webhook_headers(r.webhook_secret, body, time.time(), ctx.job.job_id)
            await asyncio.to_thread(post_webhook, r.webhook_url, body, headers,
                                    r.webhook_timeout)


class CybertipChannel(_Step):
    """With `[cybertip] auto_submit`: the entry's CyberTipline report filed with NCMEC,
    as `mailfilter quarantine submit` files it (cybertip_submit.py), through the same step
    journal in the record, so the command and this step resume each other's report and
    never file a second one. Not done (retried with backoff) while a step fails or the
    settings are wrong; done when the report is finished, when the entry's matches are on
    no list in `[cybertip] lists`, when the entry itself cannot be reported (CannotReport:
    its message deleted, ...; the history says `cybertip-refused`), and when the outcome
    of /submit is unknown (the operator decides: `quarantine submit ID --decide …`; the
    record's history says so)."""

    name: ClassVar[str] = "cybertip"
    error_kind: ClassVar[str | None] = "cybertip"

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return settings.cybertip.auto_submit

    @classmethod
    def reported_as(cls, settings: Settings, state: JsonObject) -> JsonObject:
        # (a job of an earlier version has no outcome: it said the CyberTipline then)
        outcome = state.get("outcome", "finished")
        if outcome in ("finished", "already-finished"):
            return {"cybertip": settings.cybertip.url}
        if outcome == "unknown":  # a report may exist: the operator decides
            return {"cybertip": settings.cybertip.url, "cybertip_outcome": "unknown"}
        return {}  # nothing filed: the entry was gone, or on no list [cybertip] allows

    async def run(self, ctx: StepContext) -> None:
        await asyncio.to_thread(self._submit, ctx)

    def _submit(self, ctx: StepContext) -> None:
        # (imported here: the service imports this package)
        from mailfilter.actions.cybertip_submit import (
            Busy,
            CannotReport,
            eligible_lists,
            submit_entry,
        )
        from mailfilter.actions.quarantine_service import QuarantineService, Refused
        from mailfilter.cybertip.credentials import CredentialsError, client_of

        state = ctx.state(self.name)
        entry = ctx.store.find(ctx.job.entry_id)
        if entry is None:
            state["outcome"] = "gone"  # purged meanwhile
            return
        if not eligible_lists(entry.record, ctx.settings):
            state["outcome"] = "not-eligible"  # nothing this instance may report
            return
        service = QuarantineService(ctx.settings, log.warning)
        try:
            done = submit_entry(service, entry, SERVICE_ACTOR, client_of(ctx.settings))
        except Busy as exc:
            # A submission by hand, or a delete or purge, holds the quarantine's
            # CyberTipline lock for a moment: no failure, no growing backoff, no alert.
            raise StepDeferred(f"cybertip: {exc}") from exc
        except CannotReport as exc:
            # Final for this entry (its message deleted, say): trying again every hour
            # would keep the job, and with it the entry past its retention, for ever.
            state["outcome"] = "refused"
            log.warning("quarantine %s: not reported to the CyberTipline: %s", entry.id, exc)
            refused = HistoryEvent.now("cybertip-refused", time.time(), SERVICE_ACTOR,
                                       reason=str(exc)[:300])
            with contextlib.suppress(KeyError):  # (purged meanwhile)
                ctx.store.update(entry.id, lambda rec: rec.with_repeated_event(refused))
            return
        except (Refused, CredentialsError) as exc:
            raise DeliveryFailed(f"cybertip: {exc}") from exc
        if done.result == "failed":
            raise DeliveryFailed(f"cybertip: {done.message}")
        state["outcome"] = done.result
        if done.result == "unknown":
            log.warning("quarantine %s: %s", entry.id, done.message)


CHANNELS: Final[tuple[type[_Step], ...]] = (MailChannel, DirectoryChannel, WebhookChannel,
                                            CybertipChannel)


# --- the bookkeeping steps ----------------------------------------------------------------------


class StatusStep(_Step):
    """The record's "reported" event, with where the report went; a quarantined entry
    becomes reported."""

    name: ClassVar[str] = "status"

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return any(c.wanted(settings) for c in CHANNELS)

    async def run(self, ctx: StepContext) -> None:
        await asyncio.to_thread(self._mark_reported, ctx)

    def _mark_reported(self, ctx: StepContext) -> None:
        detail: dict[str, Any] = {}
        for channel in CHANNELS:
            if channel.name in ctx.job.steps:
                detail.update(channel.reported_as(ctx.settings,
                                                  ctx.job.progress.get(channel.name, {})))
        if not detail:
            return  # no channel reported anything (auto-submit alone, with nothing to file)

        def change(record: QuarantineRecord) -> QuarantineRecord:
            event = HistoryEvent.now("reported", time.time(), SERVICE_ACTOR, **detail)
            status = "reported" if record.status == "quarantined" else record.status
            return record.with_event(event, status=status)

        with contextlib.suppress(KeyError):  # purged meanwhile: nothing to mark
            ctx.store.update(ctx.job.entry_id, change)


class IndexStep(_Step):
    """The entry's summary in the shared quarantine index (with `store.redis_url`)."""

    name: ClassVar[str] = "index"
    error_kind: ClassVar[str | None] = "quarantine-index"

    def __init__(self) -> None:
        self.index: QuarantineIndex | None = None

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        return bool(settings.store.redis_url)

    async def run(self, ctx: StepContext) -> None:
        await asyncio.to_thread(self._update_index, ctx.settings, ctx.store, ctx.job.entry_id)

    def _update_index(self, settings: Settings, store: QuarantineStore, entry_id: str) -> None:
        if not settings.store.redis_url:
            return
        if self.index is None:
            self.index = open_index(settings.store)
        assert self.index is not None
        entry = store.find(entry_id)
        if entry is None:
            self.index.remove([entry_id])
            return
        pending = {j.entry_id for j in store.jobs()
                   if j.entry_id == entry_id and j.remaining != ["index"]}
        self.index.put(EntrySummary.of(entry.record, report_pending=bool(pending),
                                       has_message=entry.has_message))

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None


STEPS: Final[tuple[type[_Step], ...]] = (*CHANNELS, StatusStep, IndexStep)


def report_steps(settings: Settings) -> tuple[str, ...]:
    """What the outbox job of a new entry has to do, in order, under these settings."""
    return tuple(s.name for s in STEPS if s.wanted(settings))


# --- the webhook's signature and POST -----------------------------------------------------------


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def webhook_headers(secret: str, body: bytes, now: float, delivery: str) -> dict[str, str]:
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json",
        "User-Agent": f"mailfilter/{__version__}",
        "X-Mailfilter-Event": "quarantine-report",
        "X-Mailfilter-Delivery": delivery,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: webhook_signature(secret, timestamp, body),
    }


def verify_webhook(secret: str, body: bytes, timestamp: str, signature: str, now: float,
                   tolerance: float = WEBHOOK_TOLERANCE) -> bool:
    """What a receiver checks: the signature over timestamp and body, and that the
    timestamp is recent (a replayed request is refused once it is older)."""
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return False
    expected = webhook_signature(secret, timestamp, body)
    return age <= tolerance and hmac.compare_digest(expected, signature)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirected POST would lose its body or go somewhere unsigned-for: a failure.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_webhook(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST; the HTTP status when it is 2xx, else DeliveryFailed. Blocking."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"webhook answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"webhook not reachable: {reason}") from exc
    if not 200 <= status < 300:
        raise DeliveryFailed(f"webhook answered HTTP {status}")
    return status


def write_report_file(directory: Path, entry_id: str, body: bytes) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_durably(directory / f"{entry_id}.json", body)
