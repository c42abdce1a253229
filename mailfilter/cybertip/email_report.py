"""A CyberTipline report of one mail incident, from typed facts about the message and
the settings: the email incident (sender and recipients), the reporter (`[report]
reporter_name`, `[cybertip] reporter_email` or else `[report] reporter_email`, the company
template and terms of service), the sender as `personOrUserReported` with the SMTP
client's IP as its capture event, each recipient as an `intendedRecipient`, and per matched
file its `fileDetails` (hashes, nothing viewed unless `[cybertip] file_viewed_by_esp`).

The quarantine integration turns an entry into `MailIncident` and `MatchedFile` values;
nothing here reads a quarantine record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailfilter.cybertip.document import (
    Email,
    EmailIncident,
    FileDetails,
    FileHash,
    IncidentSummary,
    IntendedRecipient,
    IpCaptureEvent,
    Person,
    Report,
    Reporter,
    UserReported,
)
from mailfilter.settings import Settings

__all__ = ["MailIncident", "MatchedFile", "build_file_details", "build_report", "reporter",
           "split_name"]


@dataclass(frozen=True, slots=True)
class MailIncident:
    sender: str  # the envelope sender (MAIL FROM); empty for the null sender <>
    recipients: tuple[str, ...]  # the envelope recipients (RCPT TO)
    received: datetime  # when the message was received
    host: str  # the mailfilter instance that received it
    client_ip: str | None = None  # the SMTP client that handed it over
    client_name: str | None = None
    helo: str | None = None
    message_id: str | None = None
    subject: str | None = None
    quarantine_id: str = ""


@dataclass(frozen=True, slots=True)
class MatchedFile:
    name: str  # the attachment's file name, else its MIME path
    mime_path: str
    content_type: str
    size: int | None  # bytes (None: not known, in a draft from an old record)
    md5: str
    sha1: str | None = None
    sha256: str | None = None
    matches: tuple[str, ...] = ()  # how it matched, one line each ("list X by pdq, distance 4")


def split_name(name: str) -> tuple[str | None, str | None]:
    first, _, last = name.strip().rpartition(" ")
    if not last:
        return None, None
    return (first, last) if first else (None, last)


def reporter(settings: Settings, *, required: bool = True) -> Reporter:
    """The reporting person and company texts. ValueError without a reporter email when
    `required` (NCMEC needs someone to contact about the report; a draft may leave it
    empty)."""
    address = settings.cybertip.reporter_email or settings.report.reporter_email
    if not address and required:
        raise ValueError("no reporter email: set [report] reporter_email (or [cybertip] "
                         "reporter_email)")
    first, last = split_name(settings.report.reporter_name)
    return Reporter(Person(first, last, emails=(Email(address),) if address else ()),
                    company_template=settings.cybertip.company_template or None,
                    terms_of_service=settings.cybertip.terms_of_service or None)


def _capture(incident: MailIncident) -> tuple[IpCaptureEvent, ...]:
    # "Upload": the client handed the message, and with it the files, over at that time.
    if not incident.client_ip:
        return ()
    return (IpCaptureEvent(incident.client_ip, "Upload", incident.received),)


def build_report(incident: MailIncident, files: tuple[MatchedFile, ...],
                 settings: Settings, *, require_reporter: bool = True) -> Report:
    sender = incident.sender
    addresses = tuple(Email(a) for a in (sender, *incident.recipients) if a)
    envelope = (f"Envelope sender (MAIL FROM): {sender or '<>'}. Envelope recipients "
                f"(RCPT TO): {', '.join(incident.recipients)}. Message-ID: "
                f"{incident.message_id or 'none'}. Subject: {incident.subject or ''}.")
    client = (f"The IP address is that of the SMTP client that handed the message to "
              f"{incident.host} (client name {incident.client_name or 'unknown'}, HELO "
              f"{incident.helo or 'unknown'}).")
    found = " ".join(f"{f.name}: {'; '.join(f.matches) or 'matched'}." for f in files)
    return Report(
        IncidentSummary(settings.cybertip.incident_type, incident.received),
        reporter(settings, required=require_reporter),
        (EmailIncident(addresses, additional_info=envelope),),
        UserReported(Person(emails=(Email(sender),)) if sender else None,
                     ip_capture_events=_capture(incident), additional_info=client),
        tuple(IntendedRecipient(Person(emails=(Email(r),))) for r in incident.recipients if r),
        "Detected automatically by hash matching (mailfilter"
        + (f", quarantine id {incident.quarantine_id}" if incident.quarantine_id else "")
        + f" on {incident.host}). {found} The message and its attachments are preserved.",
    )


def build_file_details(incident: MailIncident, file: MatchedFile, settings: Settings
                       ) -> FileDetails:
    """The file's details; report_id and file_id are NCMEC's, filled in when known."""
    hashes = [FileHash(file.md5, "MD5")] if file.md5 else []
    if file.sha1:
        hashes.append(FileHash(file.sha1, "SHA1"))
    if file.sha256:
        hashes.append(FileHash(file.sha256, "SHA256"))
    captures = _capture(incident)
    return FileDetails(
        report_id=0, file_id="",
        original_file_name=file.name,
        file_viewed_by_esp=settings.cybertip.file_viewed_by_esp,
        exif_viewed_by_esp=False,
        publicly_available=False,
        file_relevance="Reported",
        original_file_hashes=tuple(hashes),
        ip_capture_event=captures[0] if captures else None,
        additional_info=(f"MIME part {file.mime_path} ({file.content_type}, "
                         + ("size unknown" if file.size is None else f"{file.size} bytes")
                         + "). " + " ".join(f"{m}." for m in file.matches),),
    )
