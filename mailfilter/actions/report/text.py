"""Reports for people: the plain-text summary of the report mail (with the JSON document
attached), and the findings lines that the mail and `quarantine show` share. Everything
that came from a message passes through `printable` first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from mailfilter.actions.records import (
    AttachmentRecord,
    MatchRecord,
    ReportDocument,
    UnscannableRecord,
)
from mailfilter.settings import ReportSettings

__all__ = ["distance_text", "findings_text", "printable", "report_mail", "report_text",
           "size_text"]


def printable(value: object) -> str:
    """A value as text safe for a terminal or a mail body: control and format characters
    (escape sequences, bidi overrides) shown as escapes, never passed on."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def distance_text(value: float) -> str:
    """A match distance for people: bits for PDQ (an int), one decimal for gridhist."""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"
    return str(value)


def size_text(n: int | None) -> str:
    return f"{n:,} bytes" if isinstance(n, int) else "size unknown"


def match_text(m: MatchRecord, names: dict[str, str]) -> str:
    p = printable
    labels = ", ".join(p(x) for x in m.labels) or "none"
    return (f"  {p(m.mime_path)} {p(names.get(m.mime_path, ''))}: list {p(m.list_name)}, "
            f"{m.algorithm}, distance {distance_text(m.distance)}, labels {labels}"
            + (f", frame at {m.at:g} s" if m.at is not None else ""))


def findings_text(attachments: Sequence[AttachmentRecord], matches: Sequence[MatchRecord],
                  unscannable: Sequence[UnscannableRecord]) -> list[str]:
    """The matches, the attachments (names, types, sizes, hashes; never content) and the
    parts not examined, as text lines: what the report mail and `quarantine show` share."""
    p = printable
    names = {a.mime_path: a.filename or "" for a in attachments}
    matched = {m.mime_path for m in matches}
    lines = [f"Matches ({len(matches)})"]
    lines += [match_text(m, names) for m in matches]
    if not matches:
        lines.append("  none")
    lines.append(f"Attachments ({len(attachments)})")
    for a in attachments:
        shape = (f"{a.width}x{a.height} {a.format or ''}".strip() if a.is_image
                 else "(file)")
        flag = "  MATCHED" if a.mime_path in matched else ""
        lines.append(f"  {p(a.mime_path)} {p(a.filename or '-')} "
                     f"{p(a.content_type or '-')} {size_text(a.size)} {shape}{flag}")
        for key, value in a.hashes():
            extra = f"  quality {a.pdq_quality}" if key == "pdq" else ""
            lines.append(f"    {key:<7}{value}{extra}")
        if a.skipped:
            lines.append(f"    not decoded: {p(a.skipped)}")
    for u in unscannable:
        lines.append(f"  {p(u.mime_path)} not examined: {p(u.reason)}")
    return lines


def report_text(doc: ReportDocument) -> str:
    """The plain-text part of the report mail."""
    client, envelope = doc.client, doc.envelope
    who = printable(client.name or "unknown")
    addr = printable(client.addr or "unknown address")
    lines = [
        f"mailfilter quarantined a message on {printable(doc.host)}.",
        "",
        f"  id           {doc.id}",
        f"  received     {doc.received}",
        f"  client       {who} [{addr}]",
        f"  helo         {printable(client.helo or '-')}",
        f"  queue id     {printable(doc.queue_id or '-')}",
        f"  sender       {printable(envelope.mail_from or '<>')}",
        f"  recipients   {', '.join(printable(r) for r in envelope.rcpt_tos)}",
        f"  message-id   {printable(doc.message_id or '-')}",
        f"  subject      {printable(doc.subject or '')}",
        f"  size         {size_text(doc.size)}",
        f"  verdict      {doc.verdict} (action {doc.action}: {doc.reason})",
        "",
    ]
    lines += findings_text(doc.attachments, doc.matches, doc.unscannable)
    lines += [
        "",
        "The message is held in the quarantine; neither it nor its images are part of",
        "this report. The same details are attached as JSON. To act on it, on "
        f"{printable(doc.host)}:",
        f"  mailfilter quarantine show {doc.id}",
        f"  mailfilter quarantine report {doc.id} --format cybertip-xml",
        "",
    ]
    return "\n".join(lines)


def report_mail(doc: ReportDocument, settings: ReportSettings, hostname: str,
                now: float) -> bytes:
    """The report as a message (wire form): summary text + the JSON document attached."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = settings.from_
    msg["To"] = ", ".join(settings.to)
    lists = doc.lists()
    what = f"match in {', '.join(lists)}" if lists else str(doc.reason)
    msg["Subject"] = f"[mailfilter] quarantined {doc.id}: {printable(what)[:120]}"
    msg["Date"] = formatdate(now, localtime=False)
    msg["Message-ID"] = make_msgid("report", domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Mailfilter-Report"] = doc.id
    msg.set_content(report_text(doc), charset="utf-8")
    body = json.dumps(doc.to_json(), ensure_ascii=False, indent=1).encode()
    msg.add_attachment(body, maintype="application", subtype="json",
                       filename=f"mailfilter-report-{doc.id}.json")
    return msg.as_bytes(policy=SMTP)
