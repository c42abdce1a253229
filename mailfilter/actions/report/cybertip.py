"""A draft shaped like an NCMEC CyberTipline report of one entry, for a compliance officer
to review and submit; it is only ever written to a file or stdout (`quarantine report
--format cybertip-xml`). Filing it through NCMEC's reporting API is `quarantine submit`
(actions/cybertip_submit.py, cybertip/); the draft takes that report's incident type,
reporter and text escaping from there, so what is reviewed is what would be filed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final

from mailfilter import __version__
from mailfilter.actions.records import QuarantineRecord, iso_time
from mailfilter.actions.report.text import distance_text
from mailfilter.cybertip.document import xml_text
from mailfilter.cybertip.email_report import split_name
from mailfilter.settings import CybertipSettings, Settings

__all__ = ["INCIDENT_TYPE", "cybertip_xml"]

INCIDENT_TYPE: Final = CybertipSettings().incident_type  # (the default of [cybertip])
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSD_LOCATION: Final = "https://report.cybertip.org/ispws/xsd"

ET.register_namespace("xsi", XSI)

def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: xml_text(v) for k, v in attrs.items()})
    if text is not None:
        element.text = xml_text(text)
    return element


def _ip_capture(parent: ET.Element, addr: str | None, when: str) -> None:
    if not addr:
        return
    event = _el(parent, "ipCaptureEvent")
    _el(event, "ipAddress", addr)
    _el(event, "eventName", "Upload")  # the client handed the file to us at that time
    _el(event, "dateTime", when)


def cybertip_xml(record: QuarantineRecord, settings: Settings, generated: float
                 ) -> bytes:
    """A draft for a CyberTipline report of one entry, shaped after NCMEC's reporting API:
    the `<report>` document (incident summary, email incident, reporter, reported person
    with the IP capture event) and one `<fileDetails>` per matched attachment (original
    name, MD5/SHA-1/SHA-256, fileViewedByEsp false: nobody looked at it). The API assigns
    reportId and fileId on submission, so they are not here. ValueError when the entry
    has no matches (nothing to report)."""
    matches = record.matches
    if not matches:
        raise ValueError("the entry has no matches: there is nothing to report")
    client = record.client
    sender = record.envelope.mail_from or ""
    recipients = list(record.envelope.rcpt_tos)
    when = record.received_at
    root = ET.Element("cybertiplineDraft", {
        "generator": f"mailfilter {__version__}", "generated": iso_time(generated),
        "quarantineId": record.id, "host": record.host or "",
    })
    root.append(ET.Comment(
        " A DRAFT prepared by mailfilter from a quarantine entry. Nothing has been sent. "
        "Review it, then submit <report> through the CyberTipline reporting API, upload "
        "the files, and send each <fileDetails> with the reportId and fileId it returns. "))

    report = _el(root, "report", **{f"{{{XSI}}}noNamespaceSchemaLocation": XSD_LOCATION})
    summary = _el(report, "incidentSummary")
    _el(summary, "incidentType", settings.cybertip.incident_type)
    _el(summary, "incidentDateTime", when)

    internet = _el(report, "internetDetails")
    incident = _el(internet, "emailIncident")
    for address in [sender, *recipients]:
        if address:
            _el(incident, "emailAddress", address)
    _el(incident, "additionalInfo",
        f"Envelope sender (MAIL FROM): {sender or '<>'}. Envelope recipients (RCPT TO): "
        f"{', '.join(recipients)}. Message-ID: {record.message_id or 'none'}. "
        f"Subject: {record.subject or ''}. Size: {record.size} bytes.")

    reporter = _el(report, "reporter")
    person = _el(reporter, "reportingPerson")
    first, last = split_name(settings.report.reporter_name)
    _el(person, "firstName", first)
    _el(person, "lastName", last)
    _el(person, "email", settings.cybertip.reporter_email or settings.report.reporter_email)

    reported = _el(report, "personOrUserReported")
    if sender:
        _el(_el(reported, "personOrUserReportedPerson"), "email", sender)
    _ip_capture(reported, client.addr, when)
    _el(reported, "additionalInfo",
        f"The IP address is that of the SMTP client that handed the message to "
        f"{record.host} (client name {client.name or 'unknown'}, "
        f"HELO {client.helo or 'unknown'}, MTA queue id "
        f"{record.queue_id or 'unknown'}).")

    found = "; ".join(
        f"{m.mime_path}: list {m.list_name}, {m.algorithm}, distance "
        f"{distance_text(m.distance)}, labels {', '.join(m.labels) or 'none'}"
        for m in matches)
    _el(report, "additionalInfo",
        f"Detected automatically by hash matching (mailfilter, quarantine id "
        f"{record.id} on {record.host}); no person viewed the files. "
        f"Matches: {found}. The message and its attachments are preserved in quarantine.")

    matched = record.matched_paths()
    for a in record.attachments:
        if a.mime_path not in matched:
            continue
        details = _el(root, "fileDetails")
        _el(details, "originalFileName", a.filename or a.mime_path)
        _el(details, "fileViewedByEsp", "false")
        _el(details, "exifViewedByEsp", "false")
        _el(details, "publiclyAvailable", "false")
        _el(details, "fileRelevance", "Reported")
        for kind, value in (("MD5", a.md5), ("SHA1", a.sha1), ("SHA256", a.sha256)):
            if value:
                _el(details, "originalFileHash", value, hashType=kind)
        _ip_capture(details, client.addr, when)
        own = [m for m in matches if m.mime_path == a.mime_path]
        _el(details, "additionalInfo",
            f"MIME part {a.mime_path} ({a.content_type}, {a.size} bytes"
            + (f", {a.width}x{a.height} {a.format or ''}" if a.is_image else "")
            + "). "
            + " ".join(f"Matched list {m.list_name} by {m.algorithm} at distance "
                       f"{distance_text(m.distance)}"
                       + (f" (the frame at {m.at:g} s)" if m.at is not None else "") + "."
                       for m in own)
            + (f" PDQ {a.pdq}." if a.pdq else ""))
    ET.indent(root)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode").encode() + b"\n")
