"""What every front end does with a received message, whatever its protocol: scan it under
the scan deadline, let the policy decide, hold it durably when the action is quarantine,
and write the one log line and the metrics.

The front ends (SMTP proxy, milter) keep what is theirs: turning protocol events into an
envelope and raw bytes, relaying (the proxy) or telling the MTA (the milter), and turning
the outcome into protocol replies. Keeping this part in one place means a policy or
quarantine change cannot make the two front ends disagree.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from mailfilter.actions.quarantine import QuarantineEntry, QuarantineStore, build_record
from mailfilter.actions.records import QuarantineRecord
from mailfilter.actions.report import report_steps
from mailfilter.errors import TemporaryFailure
from mailfilter.model import AttachmentKind, Envelope, Reply, ScanResult
from mailfilter.policy import Action, ActionKind, decide, decide_error
from mailfilter.scanner import Scanner, ScanTrace
from mailfilter.settings import Settings

if TYPE_CHECKING:
    from mailfilter.metrics import Metrics

__all__ = [
    "QUARANTINE_FULL",
    "QUARANTINE_UNAVAILABLE",
    "Decision",
    "MessageHandler",
    "MessageOutcome",
]

log = logging.getLogger("mailfilter.message")

QUARANTINE_FULL: Final = Reply(451, "4.3.1", "Insufficient system storage, try again later")
QUARANTINE_UNAVAILABLE: Final = Reply(451, "4.3.0", "Quarantine unavailable, try again later")
# A milter passes nothing on: the MTA keeps the message, mailfilter accepts it.
_MILTER_WORDS: Final = {ActionKind.RELAY: "accept", ActionKind.TAG: "accept-with-tag"}


def _logged_action(front_end: str, kind: ActionKind) -> str:
    return _MILTER_WORDS.get(kind, kind.value) if front_end == "milter" else kind.value


@dataclass
class Decision:
    """A scanned (or failed-to-scan) message and what the policy says to do with it."""

    id: str
    received: float
    action: Action
    result: ScanResult | None
    trace: ScanTrace
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What happened to one message (for the log line, metrics and tests)."""

    id: str
    action: Action
    reply: Reply
    result: ScanResult | None
    stages: dict[str, float]


class MessageHandler:
    """One for the whole service, shared by every front end, so that its limit on messages
    in flight is one limit however many listeners there are. `settings`, `scanner` and
    `quarantine` are replaced on SIGHUP through `reconfigure`.

    `on_quarantined` is called after each durable quarantine write; the service passes the
    report sender's wake-up (the sender also looks at the outbox every few seconds)."""

    def __init__(self, settings: Settings, scanner: Scanner, quarantine: QuarantineStore,
                 metrics: Metrics | None = None,
                 on_quarantined: Callable[[QuarantineEntry], None] | None = None) -> None:
        self.settings = settings
        self.scanner = scanner
        self.quarantine = quarantine
        self.metrics = metrics
        # At most `max_concurrent_messages` messages between end of data and reply.
        self.slots = asyncio.Semaphore(settings.smtp.max_concurrent_messages)
        self.on_quarantined = on_quarantined

    def reconfigure(self, settings: Settings, scanner: Scanner) -> None:
        old, self.settings = self.settings, settings
        # (compared with the old setting: the semaphore's free count is lower while
        # messages are in flight, and replacing it then would lift the limit)
        if settings.smtp.max_concurrent_messages != old.smtp.max_concurrent_messages:
            self.slots = asyncio.Semaphore(settings.smtp.max_concurrent_messages)
        self.scanner = scanner
        self.quarantine = QuarantineStore(settings.quarantine)

    def count_error(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.error(reason)

    async def _scan(self, msg_id: str, raw: bytes, trace: ScanTrace
                    ) -> tuple[ScanResult | None, str | None]:
        try:
            async with asyncio.timeout(self.settings.scan.timeout):  # (no extra task)
                result = await self.scanner.scan(raw, msg_id, trace)
        except TimeoutError:
            return None, "scan-timeout"
        except TemporaryFailure as exc:
            return None, exc.reason
        except Exception:
            log.exception("scan failed", extra={"fields": {"id": msg_id}})
            return None, "scan-failed"
        return result, None

    async def decide(self, msg_id: str, received: float, raw: bytes) -> Decision:
        """Scan and decide. Never raises for a scan failure: that is a decision too
        (`on_error`)."""
        trace = ScanTrace()
        result, failure = await self._scan(msg_id, raw, trace)
        if result is not None:
            action = decide(result, self.settings.policy)
        else:
            action = decide_error(failure or "scan-failed", self.settings.policy)
        if action.reason not in ("clean", "match", "unscannable", "ambiguous"):
            # no verdict: a failure of ours (tempfail, or relayed unscanned when fail-open)
            self.count_error(action.reason)
            log.warning("message not scanned", extra={"fields": {
                "id": msg_id, "reason": action.reason, "action": action.kind.value}})
        if result is not None and self.metrics is not None:
            self.metrics.scanned(result, trace)
        return Decision(msg_id, received, action, result, trace, dict(trace.stages))

    def record(self, decision: Decision, envelope: Envelope, size: int, front_end: str,
               extra: dict[str, Any] | None = None) -> QuarantineRecord:
        return build_record(
            entry_id=decision.id, received=decision.received, envelope=envelope,
            result=decision.result, action=decision.action.kind.value,
            reason=decision.action.reason,
            policy=self.settings.policy.model_dump(mode="json"), size=size,
            subject=decision.trace.subject, attachment_sizes=decision.trace.sizes,
            extra={"front_end": front_end, **(extra or {})},
            host=self.quarantine.instance,
        )

    async def quarantine_message(self, decision: Decision, envelope: Envelope, raw: bytes,
                                 front_end: str, extra: dict[str, Any] | None = None
                                 ) -> tuple[Reply, QuarantineEntry | None]:
        """Hold the message durably, with its report job in the outbox (report.py). The
        reply is 250 only once both are on disk; a failure to write is 451 (the sender
        keeps the message). Reports are sent later by the service's report sender and
        never delay this reply."""
        started = time.perf_counter()
        record = self.record(decision, envelope, len(raw), front_end, extra)
        store = self.quarantine
        try:
            entry = await asyncio.to_thread(store.write, decision.id, raw, record,
                                            decision.received, report_steps(self.settings))
        except OSError as exc:
            log.error("quarantine write failed", extra={"fields": {
                "id": decision.id, "path": str(store.root), "error": str(exc)}})
            self.count_error("quarantine-write")
            reply = QUARANTINE_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) \
                else QUARANTINE_UNAVAILABLE
            return reply, None
        finally:
            decision.stages["quarantine"] = time.perf_counter() - started
        if self.on_quarantined is not None:
            self.on_quarantined(entry)
        return Reply(250, "2.0.0", f"Ok {decision.id}"), entry

    def finish(self, outcome: MessageOutcome, envelope: Envelope, size: int,
               front_end: str) -> None:
        """The one log line per message (`front_end`: the name of the one that took it),
        and the message metrics."""
        result = outcome.result
        fields: dict[str, Any] = {
            "id": outcome.id,
            "queue_id": envelope.queue_id,
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "client": envelope.client_addr,
            "client_name": envelope.client_name,
            "helo": envelope.helo,
            "size": size,
            # (no result: never scanned, e.g. too big or a failed scan; `reason` says why)
            "verdict": result.verdict.value if result is not None else "unscanned",
            "action": _logged_action(front_end, outcome.action.kind),
            "reason": outcome.action.reason,
            "reply": str(outcome.reply),
            "images": sum(1 for a in result.attachments if a.kind is AttachmentKind.IMAGE)
            if result is not None else 0,
            "files": sum(1 for a in result.attachments if a.kind is not AttachmentKind.IMAGE)
            if result is not None else 0,
        }
        if result is not None and result.ambiguities:
            fields["ambiguities"] = list(result.ambiguities)
        if front_end != "smtp":
            fields["front_end"] = front_end
        if result is not None:
            hits = [f"{m.list_name}/{m.algorithm}" for a in result.attachments
                    for m in a.matches]
            if hits:
                fields["matches"] = hits
        for stage, seconds in outcome.stages.items():
            fields[f"{stage}_ms"] = round(seconds * 1000, 1)
        log.info("message", extra={"fields": fields})
        if self.metrics is not None:
            self.metrics.message(result.verdict.value if result is not None else None,
                                 outcome.action.kind.value, outcome.stages)
