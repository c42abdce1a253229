"""A quarantine entry as the CyberTipline's documents: its incident (`mail_incident`), the
lines that say how each file matched (`match_lines`), and the draft a compliance officer
reviews (`quarantine report --format cybertip-xml`), only ever written to a file or
stdout. Filing it through NCMEC's reporting API is `quarantine submit`
(actions/cybertip_submit.py, cybertip/), which takes the incident and the match lines from
here; the draft is made by the same builders (cybertip/email_report.py) from the same
values, so what is reviewed is what would be filed: the draft's `<report>` is the body
of /submit, and each `<fileDetails>` the body of /fileinfo without the ids NCMEC assigns
(a test compares them with what the stand-in NCMEC service received)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Final

from mailfilter import __version__
from mailfilter.actions.records import AttachmentRecord, MatchRecord, QuarantineRecord, iso_time
from mailfilter.actions.report.text import distance_text, size_text
from mailfilter.cybertip.document import file_details_element, report_element, xml_text
from mailfilter.cybertip.email_report import (
    MailIncident,
    MatchedFile,
    build_file_details,
    build_report,
)
from mailfilter.settings import CybertipSettings, Settings

__all__ = ["INCIDENT_TYPE", "cybertip_xml", "file_name_of", "mail_incident", "match_lines",
           "review_notes"]

INCIDENT_TYPE: Final = CybertipSettings().incident_type  # (the default of [cybertip])
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSD_LOCATION: Final = "https://report.cybertip.org/ispws/xsd"

ET.register_namespace("xsi", XSI)


def mail_incident(record: QuarantineRecord, host: str) -> MailIncident:
    """The incident of an entry (`host`: the instance's name when the record has none).
    ValueError when its record has no time of receipt: the incident time NCMEC is told
    must be the real one, never a placeholder."""
    try:
        received = (datetime.fromtimestamp(record.received_ts, UTC)
                    if record.received_ts is not None
                    else datetime.fromisoformat(str(record.received)))
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError("the record has no time of receipt") from exc
    return MailIncident(
        sender=record.envelope.mail_from or "", recipients=record.envelope.rcpt_tos,
        received=received, host=record.host or host, client_ip=record.client.addr,
        client_name=record.client.name, helo=record.client.helo,
        message_id=record.message_id, subject=record.subject, quarantine_id=record.id)


def _match_text(m: MatchRecord) -> str:
    return (f"list {m.list_name} by {m.algorithm}, distance {distance_text(m.distance)}"
            + (f", the frame at {m.at:g} s" if m.at is not None else ""))


def match_lines(record: QuarantineRecord, mime_path: str,
                lists: Collection[str] | None = None) -> tuple[str, ...]:
    """How the attachment at `mime_path` matched, a line per match on `lists` (None: any
    list): the list, the algorithm, the distance and, for a video, the time of the frame
    that matched."""
    return tuple(_match_text(m) for m in record.matches
                 if m.mime_path == mime_path and (lists is None or m.list_name in lists))


def file_name_of(attachment: AttachmentRecord) -> str:
    """The name a file is reported under: its own, else one made from its MIME path."""
    return attachment.filename or f"part-{attachment.mime_path.replace('/', '_')}"


def review_notes(record: QuarantineRecord, settings: Settings) -> list[str]:
    """What a reviewer needs beside the documents, which carry only what is filed: every
    match with its labels (one at a path the record describes no attachment for is in no
    <fileDetails> and must be filed by hand), the message's size and queue id, each
    matched picture's size and PDQ, who looked at the files, and which lists submit
    files."""
    described = {a.mime_path: a for a in record.attachments}
    notes = [
        f"Match at MIME part {m.mime_path}: {_match_text(m)}, labels "
        f"{', '.join(m.labels) or 'none'}"
        + ("" if m.mime_path in described else
           "; the record describes no attachment there, so it is in no <fileDetails>: "
           "file it by hand from `quarantine export`")
        + "." for m in record.matches]
    notes.append(f"Message: {size_text(record.size)}, Message-ID {record.message_id or 'none'}, "
                 f"MTA queue id {record.queue_id or 'unknown'}, received "
                 f"{record.received_at}.")
    for path in dict.fromkeys(m.mime_path for m in record.matches):
        a = described.get(path)
        if a is not None and (a.width or a.pdq):
            notes.append(f"MIME part {path}: "
                         + (f"{a.width}x{a.height} {a.format or ''}".rstrip()
                            if a.width else "no dimensions")
                         + (f", PDQ {a.pdq} (quality {a.pdq_quality})" if a.pdq else "")
                         + ".")
    notes.append("The files were matched by hash; no person at the provider viewed them."
                 if not settings.cybertip.file_viewed_by_esp else
                 "[cybertip] file_viewed_by_esp says a person at the provider viewed the "
                 "files: make sure one did.")
    if settings.cybertip.lists:
        notes.append("quarantine submit files only the matches on [cybertip] lists: "
                     f"{', '.join(settings.cybertip.lists)}.")
    return notes


def cybertip_xml(record: QuarantineRecord, settings: Settings, generated: float,
                 host: str) -> bytes:
    """The draft of an entry's CyberTipline report: the `<report>` and one `<fileDetails>`
    per matched attachment, as `quarantine submit` would file them, from the record alone
    (the hashes it holds; nothing is parsed). The API assigns reportId and fileId on
    submission, so they are not here. Every match is in it, whatever `[cybertip] lists`
    says (submit files those lists' only): the draft is for a person to decide on.
    ValueError when the entry has no matches (nothing to report) or no time of receipt."""
    if not record.matches:
        raise ValueError("the entry has no matches: there is nothing to report")
    incident = mail_incident(record, host)
    files = tuple(
        MatchedFile(name=file_name_of(a), mime_path=a.mime_path,
                    content_type=a.content_type or "application/octet-stream",
                    size=a.size, md5=a.md5 or "", sha1=a.sha1, sha256=a.sha256,
                    matches=lines)
        for a in record.attachments if (lines := match_lines(record, a.mime_path)))
    root = ET.Element("cybertiplineDraft", {
        "generator": f"mailfilter {__version__}", "generated": iso_time(generated),
        "quarantineId": record.id, "host": xml_text(incident.host),
    })
    root.append(ET.Comment(
        " A DRAFT prepared by mailfilter from a quarantine entry. Nothing has been sent. "
        "Review it, then submit <report> through the CyberTipline reporting API, upload "
        "the files, and send each <fileDetails> with the reportId and fileId it returns. "
        "<reviewNotes> is for the reviewer only: it is not part of what is filed. "))
    notes = ET.SubElement(root, "reviewNotes")
    for note in review_notes(record, settings):
        ET.SubElement(notes, "note").text = xml_text(note)
    report = report_element(build_report(incident, files, settings, require_reporter=False))
    report.set(f"{{{XSI}}}noNamespaceSchemaLocation", XSD_LOCATION)
    root.append(report)
    for f in files:
        root.append(file_details_element(build_file_details(incident, f, settings),
                                         with_ids=False))
    ET.indent(root)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode").encode() + b"\n")
