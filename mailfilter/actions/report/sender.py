"""The report sender: a task of the service that works through the durable outbox.

The front ends put an outbox job on disk with the entry, before the 250 (quarantine.py);
`ReportSender` works through the outbox: each step of a job (channels.py: `mail`, `dir`,
`webhook`, then `status`, the record's "reported" event, then `index`, the shared
quarantine index) is done once and remembered in the job, a failed step is retried with
backoff (`retry_min` doubling to `retry_max`) for as long as it takes, and the job is
deleted when every step is done. Nothing here ever delays or fails a reply to a client. A
crash between a delivery and the job's update sends that delivery again on restart:
duplicates are possible, loss is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge

from mailfilter.actions.quarantine import OutboxJob, QuarantineStore, StoredEntry
from mailfilter.actions.records import ReportDocument
from mailfilter.actions.relay import RelayPool, local_hostname
from mailfilter.actions.report.channels import STEPS, ReportStep, StepContext, StepDeferred
from mailfilter.actions.report.document import report_document
from mailfilter.settings import Settings

if TYPE_CHECKING:
    from mailfilter.metrics import Metrics

__all__ = ["ReportSender"]

log = logging.getLogger("mailfilter.report")

POLL_INTERVAL: Final = 2.0  # the outbox is looked at this often even without a wake-up
ORPHAN_GRACE: Final = 300.0  # a job of this process whose record never appeared, dropped


class ReportSender:
    """Works through the outbox (see the module's docstring). Started and stopped by the
    service; `wake` makes it look at once (after a quarantine write), otherwise it looks
    every POLL_INTERVAL. Only one process sends from a quarantine directory at a time
    (an flock on `outbox/.sender.lock`); another one waits its turn."""

    def __init__(self, settings: Settings, relay: RelayPool,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.relay = relay
        self.store = QuarantineStore(settings.quarantine)
        self.metrics = metrics
        self.steps: dict[str, ReportStep] = {step.name: step() for step in STEPS}
        self.hostname = local_hostname(settings.smtp.hostname)
        self.started = time.time()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._lock_problem = ""  # what was last logged about the outbox lock (said once)
        self._deliveries: Counter | None = None
        self._waiting: Gauge | None = None
        if metrics is not None:
            self._deliveries = Counter("mailfilter_report_deliveries",
                                       "Report outbox steps by result", ["step", "result"],
                                       registry=metrics.registry)
            self._waiting = Gauge("mailfilter_report_outbox",
                                  "Outbox jobs waiting (reports not yet fully delivered)",
                                  registry=metrics.registry)

    def reconfigure(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        self.hostname = local_hostname(settings.smtp.hostname)
        if settings.quarantine != old.quarantine:
            self._unlock()
            self.store = QuarantineStore(settings.quarantine)
        if settings.store != old.store:
            for step in self.steps.values():
                step.close()  # (the index step's Redis connection)
        self.wake()

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.started = time.time()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reports")

    async def stop(self, timeout: float = 5.0) -> None:
        """Let a step in progress finish (up to `timeout`), then stop; what is left stays
        in the outbox for the next start."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._unlock()
        for step in self.steps.values():
            step.close()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                delay = await self.run_once()
            except Exception:
                log.exception("report outbox pass failed")
                delay = POLL_INTERVAL
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _lock(self) -> bool:
        """The outbox is ours (this process sends from it)."""
        if self._lock_fd is not None:
            return True
        try:
            self.store.check_writable()
            fd = self.store.open_sender_lock()
        except OSError as exc:
            self._lock_failed("report outbox not usable, reports wait", str(exc))
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._lock_failed("another process sends the reports of this quarantine", "")
            return False
        self._lock_fd = fd
        if self._lock_problem:
            log.info("report outbox usable again", extra={"fields": {
                "path": str(self.store.outbox_dir)}})
            self._lock_problem = ""
        return True

    def _lock_failed(self, what: str, error: str) -> None:
        if self._lock_problem != what + error:  # (every POLL_INTERVAL: say it once)
            self._lock_problem = what + error
            log.error(what, extra={"fields": {"path": str(self.store.outbox_dir),
                                              "error": error}})

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run_once(self) -> float:
        """One pass over the outbox: every job that is due is worked on. The seconds until
        the next job is due (at most POLL_INTERVAL)."""
        if not await asyncio.to_thread(self._lock):
            return POLL_INTERVAL
        jobs = await asyncio.to_thread(self.store.jobs)
        if self._waiting is not None:
            self._waiting.set(len(jobs))
        delay = POLL_INTERVAL
        for job in jobs:
            if self._stopping:
                break
            now = time.time()
            if job.next_attempt > now:
                delay = min(delay, job.next_attempt - now)
                continue
            await self._process(job)
            if job.next_attempt > time.time():
                delay = min(delay, job.next_attempt - time.time())
        return max(0.05, delay)

    def _backoff(self, attempts: int) -> float:
        r = self.settings.report
        base = min(r.retry_max, r.retry_min * 2.0 ** min(attempts - 1, 30))
        return float(base * random.uniform(0.9, 1.1))

    def _count(self, step: str, result: str) -> None:
        if self._deliveries is not None:
            self._deliveries.labels(step, result).inc()

    async def _process(self, job: OutboxJob) -> None:
        entry = await asyncio.to_thread(self._entry_of, job)
        if entry is None:
            # The write never finished (a crash, or a failed write whose job could not be
            # removed): no 250 was given, the client sends the message again.
            if job.created < self.started or time.time() - job.created > ORPHAN_GRACE:
                log.warning("outbox job without its record dropped (the message was never "
                            "accepted)", extra={"fields": {"id": job.entry_id}})
                await asyncio.to_thread(self.store.drop_job, job)
            return
        doc = report_document(entry.record, time.time())  # one document for every target
        for step in job.remaining:
            try:
                await self._step(step, job, entry, doc)
            except StepDeferred as exc:
                job.next_attempt = time.time() + self.settings.report.retry_min
                self._count(step, "deferred")
                await asyncio.to_thread(self.store.save_job, job)
                log.info("report step deferred", extra={"fields": {
                    "id": job.entry_id, "step": step, "reason": str(exc)[:300],
                    "retry_in_s": self.settings.report.retry_min}})
                return
            except Exception as exc:
                job.attempts += 1
                delay = self._backoff(job.attempts)
                job.next_attempt = time.time() + delay
                job.last_error = f"{step}: {exc}"[:500]
                # Counted before the job is saved: whoever sees the failure in the outbox
                # sees it in the metrics too.
                self._count(step, "failed")
                kind = self.steps[step].error_kind if step in self.steps else None
                if kind is not None and self.metrics is not None:
                    self.metrics.error(kind)
                await asyncio.to_thread(self.store.save_job, job)
                log.warning("report step failed, will retry", extra={"fields": {
                    "id": job.entry_id, "step": step, "error": str(exc)[:300],
                    "attempt": job.attempts, "retry_in_s": round(delay, 1)}})
                return
            job.done.append(step)
            self._count(step, "ok")
            if job.remaining:
                await asyncio.to_thread(self.store.save_job, job)
        await asyncio.to_thread(self.store.drop_job, job)
        log.info("quarantine entry reported", extra={"fields": {
            "id": job.entry_id, "steps": job.steps, "attempts": job.attempts + 1}})

    def _entry_of(self, job: OutboxJob) -> StoredEntry | None:
        return self.store.find(job.entry_id)

    async def _step(self, name: str, job: OutboxJob, entry: StoredEntry,
                    doc: ReportDocument) -> None:
        step = self.steps.get(name)
        if step is None:  # (a job of a later version: nothing this one can do)
            log.error("unknown outbox step skipped", extra={"fields": {
                "id": job.entry_id, "step": name}})
            return
        await step.run(StepContext(self.settings, self.store, job, entry, doc, self.relay,
                                   self.hostname))
