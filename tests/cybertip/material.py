"""What the CyberTipline tests report: a mail incident, benign generated images as its
matched files, settings with a reporter, and the element sequences of NCMEC's schema
(shared/CYBERTIP-SCHEMA.md) to check the documents' order against."""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from PIL import Image

from mailfilter.cybertip.document import Report
from mailfilter.cybertip.email_report import (
    MailIncident,
    MatchedFile,
    build_file_details,
    build_report,
)
from mailfilter.cybertip.journal import FileToReport
from mailfilter.settings import Settings

RECEIVED = datetime(2026, 12, 1, 9, 30, 5, tzinfo=UTC)

INCIDENT = MailIncident(
    sender="sender@example.net",
    recipients=("alice@example.org", "bob@example.org"),
    received=RECEIVED,
    host="mx1.example.org",
    client_ip="192.0.2.44",
    client_name="mail.example.net",
    helo="mail.example.net",
    message_id="<m1@example.net>",
    subject="holiday pictures",
    quarantine_id="q-0001",
)


def settings(**cybertip: object) -> Settings:
    return Settings.model_validate({
        "report": {"reporter_name": "Casey Compliance", "reporter_email": "abuse@example.org"},
        "cybertip": {"company_template": "Example Mail hosts mailboxes.",
                     "terms_of_service": "https://example.org/terms", **cybertip},
    })


def png(seed: int, size: int = 64) -> bytes:
    """A benign generated picture, different per seed."""
    image = Image.new("RGB", (size, size))
    image.putdata([((x * seed) % 256, (y * 7 + seed) % 256, (x ^ y) % 256)
                   for y in range(size) for x in range(size)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def matched(name: str, data: bytes, path: str) -> MatchedFile:
    return MatchedFile(name=name, mime_path=path, content_type="image/png", size=len(data),
                       md5=hashlib.md5(data).hexdigest(),
                       sha1=hashlib.sha1(data).hexdigest(),
                       sha256=hashlib.sha256(data).hexdigest(),
                       matches=("list known by pdq at distance 4",))


def material(s: Settings, count: int = 2) -> tuple[Report, list[FileToReport], list[bytes]]:
    """The report, the files to report and their bytes."""
    blobs = [png(i + 1) for i in range(count)]
    files = [matched(f"picture {i}.png", b, f"1.{i + 2}") for i, b in enumerate(blobs)]
    report = build_report(INCIDENT, tuple(files), s)
    to_report = [FileToReport(f.name, (lambda b=b: b), build_file_details(INCIDENT, f, s))
                 for f, b in zip(files, blobs, strict=True)]
    return report, to_report, blobs


# The element sequences of NCMEC's schema, as shared/CYBERTIP-SCHEMA.md gives them (only
# the elements whose children the documents have). `?` and `*` are left off: the check is
# that the children appear in this order.
SEQUENCES: dict[str, tuple[str, ...]] = {
    "report": ("batchedReport", "incidentSummary", "internetDetails", "lawEnforcement",
               "reporter", "personOrUserReported", "intendedRecipient", "victim",
               "additionalInfo"),
    "incidentSummary": ("incidentType", "platform", "escalateToHighPriority",
                        "reportAnnotations", "incidentDateTime",
                        "incidentDateTimeDescription"),
    "internetDetails": ("emailIncident",),
    "emailIncident": ("emailAddress", "content", "additionalInfo"),
    "reporter": ("reportingPerson", "contactPerson", "companyTemplate", "termsOfService",
                 "legalURL"),
    "reportingPerson": ("firstName", "lastName", "phone", "email", "address", "age",
                        "dateOfBirth"),
    "personOrUserReported": (
        "personOrUserReportedPerson", "vehicleDescription", "espIdentifier", "espService",
        "compromisedAccount", "screenName", "displayName", "profileUrl", "profileBio",
        "ipCaptureEvent", "deviceId", "thirdPartyUserReported", "priorCTReports",
        "groupIdentifier", "accountTemporarilyDisabled", "accountPermanentlyDisabled",
        "estimatedLocation", "allEmailsReported", "associatedAccount", "additionalInfo"),
    "intendedRecipient": (
        "intendedRecipientPerson", "espIdentifier", "espService", "compromisedAccount",
        "screenName", "displayName", "profileUrl", "profileBio", "ipCaptureEvent", "deviceId",
        "priorCTReports", "groupIdentifier", "additionalInfo"),
    "ipCaptureEvent": ("ipAddress", "eventName", "dateTime", "possibleProxy", "port"),
    "fileDetails": (
        "reportId", "fileId", "fileName", "originalFileName", "uploadedToEspTimestamp",
        "locationOfFile", "fileViewedByEsp", "exifViewedByEsp", "publiclyAvailable",
        "fileRelevance", "potentialMeme", "fileAnnotations", "industryClassification",
        "originalFileHash", "ipCaptureEvent", "deviceId", "details", "additionalInfo"),
    "details": ("nameValuePair",),
    "nameValuePair": ("name", "value"),
}
# contactPerson: the person sequence without age and dateOfBirth (NCMEC's XSD)
for _person in ("personOrUserReportedPerson", "intendedRecipientPerson", "contactPerson"):
    SEQUENCES[_person] = SEQUENCES["reportingPerson"]
REPEATABLE = {"internetDetails", "personOrUserReported", "intendedRecipient", "victim",
              "emailAddress", "phone", "email", "address", "displayName", "profileUrl",
              "ipCaptureEvent", "deviceId", "priorCTReports", "associatedAccount",
              "originalFileHash", "details", "nameValuePair"}


def order_problems(element: ET.Element, path: str = "") -> list[str]:
    """Where the children of `element` (recursively) break their schema sequence: an
    element the sequence does not have, one out of order, a single one repeated."""
    where = f"{path}/{element.tag}"
    problems: list[str] = []
    sequence = SEQUENCES.get(element.tag)
    children = list(element)
    if sequence is None:
        if children:
            problems.append(f"{where}: children but no sequence known")
        return problems
    last = -1
    for child in children:
        if child.tag not in sequence:
            problems.append(f"{where}: {child.tag} is not in the sequence")
            continue
        position = sequence.index(child.tag)
        if position < last or (position == last and child.tag not in REPEATABLE
                               and not (element.tag == "intendedRecipient"
                                        and child.tag == "additionalInfo")
                               and not (element.tag == "fileDetails"
                                        and child.tag == "additionalInfo")):
            problems.append(f"{where}: {child.tag} out of order")
        last = position
        problems += order_problems(child, where)
    return problems
