"""Reports of quarantined messages: what they say, where they go, and the sender that
delivers them from the durable outbox.

A report is one JSON document (`report_document`) built from an entry's record: who sent
what to whom from where, the attachments' names, sizes, types and hashes, every match
(list, algorithm, distance, labels), the verdict and policy, the entry's status. Never
message or image content. It goes, per `[report]`:

- by mail to `report.to` through the next hop: a plain-text summary with the same JSON
  attached (`report_mail`);
- into `report.dir` as `<id>.json`;
- to `report.webhook_url` as a POST of the JSON, signed (`webhook_headers`):
  `X-Mailfilter-Timestamp: <unix seconds>` and
  `X-Mailfilter-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`, so a
  receiver can check both the body and its age (`verify_webhook`).

The front ends put an outbox job on disk with the entry, before the 250 (quarantine.py);
`ReportSender`, a task of the service, works through the outbox: each step (`mail`, `dir`,
`webhook`, then `status`, the record's "reported" event, then `index`, the shared
quarantine index) is done once and remembered in the job, a failed step is retried with
backoff (`retry_min` doubling to `retry_max`) for as long as it takes, and the job is
deleted when every step is done. Nothing here ever delays or fails a reply to a client. A
crash between a delivery and the job's update sends that delivery again on restart:
duplicates are possible, loss is not.

`cybertip_xml` writes a draft shaped like an NCMEC CyberTipline report for a compliance
officer to review and submit; it is only ever written to a file or stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter, Gauge

from mailfilter import __version__
from mailfilter.actions.deliver import deliver
from mailfilter.actions.quarantine import (
    SERVICE_ACTOR,
    OutboxJob,
    QuarantineStore,
    StoredEntry,
    entry_summary,
    history_event,
    iso_time,
    write_file_durably,
)
from mailfilter.actions.quarantine_index import QuarantineIndex, open_index
from mailfilter.actions.relay import RelayPool, local_hostname
from mailfilter.settings import ReportSettings, Settings, url_without_credentials

if TYPE_CHECKING:
    from mailfilter.metrics import Metrics

__all__ = [
    "REPORT_FORMAT",
    "ReportSender",
    "cybertip_xml",
    "report_document",
    "report_mail",
    "report_steps",
    "report_text",
    "verify_webhook",
    "webhook_headers",
]

log = logging.getLogger("mailfilter.report")

REPORT_FORMAT: Final = 1
REPORT_TYPE: Final = "mailfilter.quarantine-report"
SIGNATURE_HEADER: Final = "X-Mailfilter-Signature"
TIMESTAMP_HEADER: Final = "X-Mailfilter-Timestamp"
WEBHOOK_TOLERANCE: Final = 300.0  # seconds a receiver should accept a signed request for
REPORT_STEPS: Final = ("mail", "dir", "webhook")
POLL_INTERVAL: Final = 2.0  # the outbox is looked at this often even without a wake-up
ORPHAN_GRACE: Final = 300.0  # a job of this process whose record never appeared, dropped
INCIDENT_TYPE: Final = "Child Pornography (possession, manufacture, and distribution)"
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSD_LOCATION: Final = "https://report.cybertip.org/ispws/xsd"

ET.register_namespace("xsi", XSI)


def report_steps(settings: Settings) -> tuple[str, ...]:
    """What the outbox job of a new entry has to do, in order, under these settings."""
    r = settings.report
    steps = [step for step, on in zip(REPORT_STEPS, (bool(r.to), bool(r.dir),
                                                     bool(r.webhook_url)), strict=True) if on]
    if steps:
        steps.append("status")
    if settings.store.redis_url:
        steps.append("index")
    return tuple(steps)


# --- the document -----------------------------------------------------------------------


def report_document(record: Mapping[str, Any], generated: float) -> dict[str, Any]:
    """The report of one entry (the JSON attached to the mail, written to `report.dir`,
    POSTed to the webhook, printed by `quarantine report --format json`)."""
    envelope = record.get("envelope") or {}
    matched = {m.get("mime_path") for m in record.get("matches") or []}
    return {
        "type": REPORT_TYPE,
        "report_format": REPORT_FORMAT,
        "generated": iso_time(generated),
        "generator": f"mailfilter {__version__}",
        "id": record.get("id"),
        "host": record.get("host"),
        "received": iso_time(float(record.get("received_ts") or 0)),
        "queue_id": record.get("queue_id"),
        "front_end": record.get("front_end"),
        "client": dict(record.get("client") or {}),
        "envelope": {"mail_from": envelope.get("mail_from"),
                     "rcpt_tos": list(envelope.get("rcpt_tos") or [])},
        "message_id": record.get("message_id"),
        "subject": record.get("subject"),
        "size": record.get("size"),
        "verdict": record.get("verdict"),
        "action": record.get("action"),
        "reason": record.get("reason"),
        "policy": dict(record.get("policy") or {}),
        "attachments": [{**a, "matched": a.get("mime_path") in matched}
                        for a in record.get("attachments") or []],
        "matches": [dict(m) for m in record.get("matches") or []],
        "unscannable": [dict(u) for u in record.get("unscannable") or []],
        "status": record.get("status"),
        "legal_hold": bool(record.get("legal_hold")),
    }


def printable(value: Any) -> str:
    """A value as text safe for a terminal or a mail body: control and format characters
    (escape sequences, bidi overrides) shown as escapes, never passed on."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def distance_text(value: Any) -> str:
    """A match distance for people: bits for PDQ (an int), one decimal for gridhist."""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"
    return str(value)


def size_text(n: Any) -> str:
    return f"{n:,} bytes" if isinstance(n, int) else "size unknown"


def findings_text(record: Mapping[str, Any]) -> list[str]:
    """The matches, the attachments (names, types, sizes, hashes; never content) and the
    parts not examined, as text lines: what the report mail and `quarantine show` share."""
    p = printable
    attachments = record.get("attachments") or []
    names = {str(a.get("mime_path")): str(a.get("filename") or "") for a in attachments}
    matches = record.get("matches") or []
    matched = {str(m.get("mime_path")) for m in matches}
    lines = [f"Matches ({len(matches)})"]
    for m in matches:
        where = str(m.get("mime_path"))
        labels = ", ".join(p(x) for x in m.get("labels") or []) or "none"
        lines.append(f"  {p(where)} {p(names.get(where, ''))}: list {p(m.get('list'))}, "
                     f"{m.get('algorithm')}, distance {distance_text(m.get('distance'))}, "
                     f"labels {labels}"
                     + (f", frame at {m['at']:g} s" if isinstance(m.get("at"), float | int)
                        else ""))
    if not matches:
        lines.append("  none")
    lines.append(f"Attachments ({len(attachments)})")
    for a in attachments:
        shape = (f"{a.get('width')}x{a.get('height')} {a.get('format') or ''}".strip()
                 if a.get("kind", "image") == "image" else "(file)")
        flag = "  MATCHED" if str(a.get("mime_path")) in matched else ""
        lines.append(f"  {p(a.get('mime_path'))} {p(a.get('filename') or '-')} "
                     f"{p(a.get('content_type') or '-')} {size_text(a.get('size'))} {shape}{flag}")
        for key in ("md5", "sha1", "sha256", "pdq"):
            if a.get(key):
                extra = f"  quality {a.get('pdq_quality')}" if key == "pdq" else ""
                lines.append(f"    {key:<7}{a[key]}{extra}")
        if a.get("skipped"):
            lines.append(f"    not decoded: {p(a['skipped'])}")
    for u in record.get("unscannable") or []:
        lines.append(f"  {p(u.get('mime_path'))} not examined: {p(u.get('reason'))}")
    return lines


def report_text(doc: Mapping[str, Any]) -> str:
    """The plain-text part of the report mail."""
    client = doc.get("client") or {}
    envelope = doc.get("envelope") or {}
    who = printable(client.get("name") or "unknown")
    addr = printable(client.get("addr") or "unknown address")
    lines = [
        f"mailfilter quarantined a message on {printable(doc.get('host'))}.",
        "",
        f"  id           {doc.get('id')}",
        f"  received     {doc.get('received')}",
        f"  client       {who} [{addr}]",
        f"  helo         {printable(client.get('helo') or '-')}",
        f"  queue id     {printable(doc.get('queue_id') or '-')}",
        f"  sender       {printable(envelope.get('mail_from') or '<>')}",
        f"  recipients   {', '.join(printable(r) for r in envelope.get('rcpt_tos') or [])}",
        f"  message-id   {printable(doc.get('message_id') or '-')}",
        f"  subject      {printable(doc.get('subject') or '')}",
        f"  size         {size_text(doc.get('size'))}",
        f"  verdict      {doc.get('verdict')} (action {doc.get('action')}: "
        f"{doc.get('reason')})",
        "",
    ]
    lines += findings_text(doc)
    lines += [
        "",
        "The message is held in the quarantine; neither it nor its images are part of",
        "this report. The same details are attached as JSON. To act on it, on "
        f"{printable(doc.get('host'))}:",
        f"  mailfilter quarantine show {doc.get('id')}",
        f"  mailfilter quarantine report {doc.get('id')} --format cybertip-xml",
        "",
    ]
    return "\n".join(lines)


def report_mail(doc: Mapping[str, Any], settings: ReportSettings, hostname: str,
                now: float) -> bytes:
    """The report as a message (wire form): summary text + the JSON document attached."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = settings.from_
    msg["To"] = ", ".join(settings.to)
    lists = sorted({str(m.get("list")) for m in doc.get("matches") or []})
    what = f"match in {', '.join(lists)}" if lists else str(doc.get("reason"))
    msg["Subject"] = f"[mailfilter] quarantined {doc.get('id')}: {printable(what)[:120]}"
    msg["Date"] = formatdate(now, localtime=False)
    msg["Message-ID"] = make_msgid("report", domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Mailfilter-Report"] = str(doc.get("id"))
    msg.set_content(report_text(doc), charset="utf-8")
    body = json.dumps(doc, ensure_ascii=False, indent=1).encode()
    msg.add_attachment(body, maintype="application", subtype="json",
                       filename=f"mailfilter-report-{doc.get('id')}.json")
    return msg.as_bytes(policy=SMTP)


def report_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=1).encode() + b"\n"


# --- the webhook --------------------------------------------------------------------------


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


class DeliveryFailed(Exception):
    """A report step that did not work this time (it is retried)."""


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


# --- CyberTipline-shaped XML ---------------------------------------------------------------


_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(value: str) -> str:
    """Text XML 1.0 can hold: the characters it cannot (controls from a subject or a file
    name) as visible escapes."""
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], value)


def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: _xml_text(v) for k, v in attrs.items()})
    if text is not None:
        element.text = _xml_text(text)
    return element


def _split_name(name: str) -> tuple[str, str]:
    first, _, last = name.strip().rpartition(" ")
    return (first, last) if first else (last, "")


def _ip_capture(parent: ET.Element, addr: str | None, when: str) -> None:
    if not addr:
        return
    event = _el(parent, "ipCaptureEvent")
    _el(event, "ipAddress", addr)
    _el(event, "eventName", "Upload")  # the client handed the file to us at that time
    _el(event, "dateTime", when)


def cybertip_xml(record: Mapping[str, Any], settings: ReportSettings, generated: float
                 ) -> bytes:
    """A draft for a CyberTipline report of one entry, shaped after NCMEC's reporting API:
    the `<report>` document (incident summary, email incident, reporter, reported person
    with the IP capture event) and one `<fileDetails>` per matched attachment (original
    name, MD5/SHA-1/SHA-256, fileViewedByEsp false: nobody looked at it). The API assigns
    reportId and fileId on submission, so they are not here. ValueError when the entry
    has no matches (nothing to report)."""
    matches = list(record.get("matches") or [])
    if not matches:
        raise ValueError("the entry has no matches: there is nothing to report")
    envelope = record.get("envelope") or {}
    client = record.get("client") or {}
    sender = str(envelope.get("mail_from") or "")
    recipients = [str(r) for r in envelope.get("rcpt_tos") or []]
    when = iso_time(float(record.get("received_ts") or 0))
    root = ET.Element("cybertiplineDraft", {
        "generator": f"mailfilter {__version__}", "generated": iso_time(generated),
        "quarantineId": str(record.get("id")), "host": str(record.get("host") or ""),
    })
    root.append(ET.Comment(
        " A DRAFT prepared by mailfilter from a quarantine entry. Nothing has been sent. "
        "Review it, then submit <report> through the CyberTipline reporting API, upload "
        "the files, and send each <fileDetails> with the reportId and fileId it returns. "))

    report = _el(root, "report", **{f"{{{XSI}}}noNamespaceSchemaLocation": XSD_LOCATION})
    summary = _el(report, "incidentSummary")
    _el(summary, "incidentType", INCIDENT_TYPE)
    _el(summary, "incidentDateTime", when)

    internet = _el(report, "internetDetails")
    incident = _el(internet, "emailIncident")
    for address in [sender, *recipients]:
        if address:
            _el(incident, "emailAddress", address)
    _el(incident, "additionalInfo",
        f"Envelope sender (MAIL FROM): {sender or '<>'}. Envelope recipients (RCPT TO): "
        f"{', '.join(recipients)}. Message-ID: {record.get('message_id') or 'none'}. "
        f"Subject: {record.get('subject') or ''}. Size: {record.get('size')} bytes.")

    reporter = _el(report, "reporter")
    person = _el(reporter, "reportingPerson")
    first, last = _split_name(settings.reporter_name)
    _el(person, "firstName", first)
    _el(person, "lastName", last)
    _el(person, "email", settings.reporter_email)

    reported = _el(report, "personOrUserReported")
    if sender:
        _el(_el(reported, "personOrUserReportedPerson"), "email", sender)
    _ip_capture(reported, client.get("addr"), when)
    _el(reported, "additionalInfo",
        f"The IP address is that of the SMTP client that handed the message to "
        f"{record.get('host')} (client name {client.get('name') or 'unknown'}, "
        f"HELO {client.get('helo') or 'unknown'}, MTA queue id "
        f"{record.get('queue_id') or 'unknown'}).")

    found = "; ".join(
        f"{m.get('mime_path')}: list {m.get('list')}, {m.get('algorithm')}, distance "
        f"{distance_text(m.get('distance'))}, labels {', '.join(m.get('labels') or []) or 'none'}"
        for m in matches)
    _el(report, "additionalInfo",
        f"Detected automatically by hash matching (mailfilter, quarantine id "
        f"{record.get('id')} on {record.get('host')}); no person viewed the files. "
        f"Matches: {found}. The message and its attachments are preserved in quarantine.")

    matched = {m.get("mime_path") for m in matches}
    for a in record.get("attachments") or []:
        if a.get("mime_path") not in matched:
            continue
        details = _el(root, "fileDetails")
        _el(details, "originalFileName", str(a.get("filename") or a.get("mime_path")))
        _el(details, "fileViewedByEsp", "false")
        _el(details, "exifViewedByEsp", "false")
        _el(details, "publiclyAvailable", "false")
        _el(details, "fileRelevance", "Reported")
        for kind, key in (("MD5", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256")):
            if a.get(key):
                _el(details, "originalFileHash", str(a[key]), hashType=kind)
        _ip_capture(details, client.get("addr"), when)
        own = [m for m in matches if m.get("mime_path") == a.get("mime_path")]
        _el(details, "additionalInfo",
            f"MIME part {a.get('mime_path')} ({a.get('content_type')}, {a.get('size')} bytes"
            + (f", {a.get('width')}x{a.get('height')} {a.get('format') or ''}"
               if a.get("kind", "image") == "image" else "")
            + "). "
            + " ".join(f"Matched list {m.get('list')} by {m.get('algorithm')} at distance "
                       f"{distance_text(m.get('distance'))}"
                       + (f" (the frame at {m['at']:g} s)" if isinstance(m.get("at"), float | int)
                          else "") + "." for m in own)
            + (f" PDQ {a.get('pdq')}." if a.get("pdq") else ""))
    ET.indent(root)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode").encode() + b"\n")


# --- the sender -----------------------------------------------------------------------------


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
        self.index: QuarantineIndex | None = None
        self.metrics = metrics
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
        if settings.store != old.store and self.index is not None:
            self.index.close()
            self.index = None
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
        if self.index is not None:
            self.index.close()
            self.index = None

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
            except Exception as exc:
                job.attempts += 1
                delay = self._backoff(job.attempts)
                job.next_attempt = time.time() + delay
                job.last_error = f"{step}: {exc}"[:500]
                await asyncio.to_thread(self.store.save_job, job)
                self._count(step, "failed")
                if step == "index" and self.metrics is not None:
                    self.metrics.error("quarantine-index")
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

    async def _step(self, step: str, job: OutboxJob, entry: StoredEntry,
                    doc: Mapping[str, Any]) -> None:
        r = self.settings.report
        if step == "mail":
            await self._mail(job, doc)
        elif step == "dir":
            if r.dir:
                await asyncio.to_thread(_write_report_file, Path(r.dir), entry.id,
                                        report_json(doc))
        elif step == "webhook":
            if r.webhook_url:
                body = report_json(doc)
                headers = webhook_headers(r.webhook_secret, body, time.time(), job.job_id)
                await asyncio.to_thread(post_webhook, r.webhook_url, body, headers,
                                        r.webhook_timeout)
        elif step == "status":
            await asyncio.to_thread(self._mark_reported, job)
        elif step == "index":
            await asyncio.to_thread(self._update_index, job.entry_id)
        else:
            log.error("unknown outbox step skipped", extra={"fields": {
                "id": job.entry_id, "step": step}})

    async def _mail(self, job: OutboxJob, doc: Mapping[str, Any]) -> None:
        r = self.settings.report
        pending = list(r.to) if job.mail_pending is None else job.mail_pending
        if not pending:
            return
        job.mail_pending = pending
        message = report_mail(doc, r, self.hostname, time.time())
        delivery = await deliver(self.relay, r.from_, (), [(a, ()) for a in pending], message)
        if delivery.delivered:
            job.mail_pending = [a for a in pending if a not in delivery.accepted]
        if job.mail_pending:
            raise DeliveryFailed(f"report mail: {delivery.describe()}")

    def _what_was_done(self, job: OutboxJob) -> dict[str, Any]:
        r = self.settings.report
        done: dict[str, Any] = {}
        if "mail" in job.steps:
            done["mail_to"] = list(r.to)
        if "dir" in job.steps:
            done["dir"] = r.dir
        if "webhook" in job.steps and r.webhook_url:
            done["webhook"] = url_without_credentials(r.webhook_url)
        return done

    def _mark_reported(self, job: OutboxJob) -> None:
        detail = self._what_was_done(job)

        def change(record: dict[str, Any]) -> None:
            record["history"].append(history_event("reported", time.time(), SERVICE_ACTOR,
                                                   **detail))
            if record.get("status") == "quarantined":
                record["status"] = "reported"

        with contextlib.suppress(KeyError):  # purged meanwhile: nothing to mark
            self.store.update(job.entry_id, change)

    def _update_index(self, entry_id: str) -> None:
        if not self.settings.store.redis_url:
            return
        if self.index is None:
            self.index = open_index(self.settings.store)
        assert self.index is not None
        entry = self.store.find(entry_id)
        if entry is None:
            self.index.remove([entry_id])
            return
        pending = {j.entry_id for j in self.store.jobs()
                   if j.entry_id == entry_id and j.remaining != ["index"]}
        self.index.put(entry_summary(entry.record, report_pending=bool(pending),
                                     has_message=entry.has_message))


def _write_report_file(directory: Path, entry_id: str, body: bytes) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_durably(directory / f"{entry_id}.json", body)
