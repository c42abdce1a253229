"""The CyberTipline documents mailfilter sends: `<report>` (POST /submit) and
`<fileDetails>` (POST /fileinfo), as typed frozen values in and UTF-8 XML bytes out.

Only the parts of NCMEC's schema an email incident needs are modelled; each element is
written in the order of its schema sequence (shared/CYBERTIP-SCHEMA.md, taken from a client
generated from NCMEC's XSD), optional elements left out when they have no value. The
documents carry no namespace: NCMEC's XSD has no target namespace.

`validate` checks a document against the XSD an operator downloaded from the service
(`GET /xsd`, `[cybertip] xsd`) with `xmlschema` (the `cybertip` extra): NCMEC only
publishes the schema to registered reporters, so it cannot ship with mailfilter.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args

__all__ = [
    "INCIDENT_TYPES",
    "Email",
    "EmailIncident",
    "FileDetails",
    "FileHash",
    "IncidentSummary",
    "IntendedRecipient",
    "InvalidDocument",
    "IpCaptureEvent",
    "Person",
    "Report",
    "Reporter",
    "UserReported",
    "file_details_xml",
    "report_xml",
    "validate",
    "xml_datetime",
    "xml_text",
]

IncidentType = Literal[
    "Child Pornography (possession, manufacture, and distribution)",
    "Child Sex Trafficking",
    "Child Sex Tourism",
    "Child Sexual Molestation",
    "Misleading Domain Name",
    "Misleading Words or Digital Images on the Internet",
    "Online Enticement of Children for Sexual Acts",
    "Unsolicited Obscene Material Sent to a Child",
]
INCIDENT_TYPES: Final[tuple[str, ...]] = get_args(IncidentType)
IpEventName = Literal["Login", "Registration", "Purchase", "Upload", "Other", "Unknown"]
EmailType = Literal["Home", "Work", "Business", "Recovery"]
FileRelevance = Literal["Reported", "Supplemental Reported"]


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Email:
    address: str
    type: EmailType | None = None
    verified: bool | None = None


@dataclass(frozen=True, slots=True)
class Person:
    """`person` in the schema (reportingPerson, personOrUserReportedPerson,
    intendedRecipientPerson): the parts mailfilter knows."""

    first_name: str | None = None
    last_name: str | None = None
    phones: tuple[str, ...] = ()
    emails: tuple[Email, ...] = ()


@dataclass(frozen=True, slots=True)
class IpCaptureEvent:
    ip_address: str
    event_name: IpEventName | None = None
    date_time: datetime | None = None
    possible_proxy: bool | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    incident_type: IncidentType
    incident_date_time: datetime
    platform: str | None = None
    incident_date_time_description: str | None = None


@dataclass(frozen=True, slots=True)
class EmailIncident:
    """`internetDetails/emailIncident`: the addresses involved and a description."""

    email_addresses: tuple[Email, ...] = ()
    content: str | None = None
    additional_info: str | None = None


@dataclass(frozen=True, slots=True)
class Reporter:
    reporting_person: Person
    contact_person: Person | None = None
    company_template: str | None = None
    terms_of_service: str | None = None
    legal_url: str | None = None


@dataclass(frozen=True, slots=True)
class UserReported:
    """`personOrUserReported`: for mail, the sender (address, the SMTP client's IP)."""

    person: Person | None = None
    esp_identifier: str | None = None
    esp_service: str | None = None
    display_names: tuple[str, ...] = ()
    ip_capture_events: tuple[IpCaptureEvent, ...] = ()
    additional_info: str | None = None


@dataclass(frozen=True, slots=True)
class IntendedRecipient:
    person: Person | None = None
    esp_identifier: str | None = None
    esp_service: str | None = None
    display_names: tuple[str, ...] = ()
    ip_capture_events: tuple[IpCaptureEvent, ...] = ()
    additional_info: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    incident_summary: IncidentSummary
    reporter: Reporter
    internet_details: tuple[EmailIncident, ...] = ()
    user_reported: UserReported | None = None
    intended_recipients: tuple[IntendedRecipient, ...] = ()
    additional_info: str | None = None


@dataclass(frozen=True, slots=True)
class FileHash:
    value: str
    hash_type: str = "MD5"


@dataclass(frozen=True, slots=True)
class FileDetails:
    """`fileDetails` of one uploaded file. `report_id` and `file_id` are NCMEC's answers
    to /submit and /upload. `file_viewed_by_esp` defaults to false: mailfilter matches
    hashes, nobody looks at the pictures."""

    report_id: int
    file_id: str
    original_file_name: str | None = None
    file_name: str | None = None
    uploaded_to_esp_timestamp: datetime | None = None
    location_of_file: str | None = None
    file_viewed_by_esp: bool | None = False
    exif_viewed_by_esp: bool | None = False
    publicly_available: bool | None = False
    file_relevance: FileRelevance | None = None
    original_file_hashes: tuple[FileHash, ...] = ()
    ip_capture_event: IpCaptureEvent | None = None
    details: tuple[tuple[str, str], ...] = ()  # name-value pairs
    additional_info: tuple[str, ...] = ()


# --- XML ----------------------------------------------------------------------------------


_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: str) -> str:
    """Text XML 1.0 can hold: characters it cannot (controls from a subject or a file
    name) become visible escapes instead of making the document unreadable."""
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], value)


def xml_datetime(value: datetime) -> str:
    """xs:dateTime in UTC with a Z; a naive value is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _add(parent: ET.Element, tag: str, value: str | int | bool | datetime | None,
         **attrs: str | None) -> None:
    """A leaf element, left out when its value is None."""
    if value is None:
        return
    if isinstance(value, bool):
        text = _bool(value)
    elif isinstance(value, datetime):
        text = xml_datetime(value)
    else:
        text = str(value)
    element = ET.SubElement(parent, tag,
                            {k: xml_text(v) for k, v in attrs.items() if v is not None})
    element.text = xml_text(text)


def _email(parent: ET.Element, tag: str, email: Email) -> None:
    _add(parent, tag, email.address, type=email.type,
         verified=None if email.verified is None else _bool(email.verified))


def _person(parent: ET.Element, tag: str, person: Person | None) -> None:
    if person is None:
        return
    element = ET.SubElement(parent, tag)
    _add(element, "firstName", person.first_name)
    _add(element, "lastName", person.last_name)
    for phone in person.phones:
        _add(element, "phone", phone)
    for email in person.emails:
        _email(element, "email", email)


def _ip_capture_event(parent: ET.Element, event: IpCaptureEvent) -> None:
    element = ET.SubElement(parent, "ipCaptureEvent")
    _add(element, "ipAddress", event.ip_address)
    _add(element, "eventName", event.event_name)
    _add(element, "dateTime", event.date_time)
    _add(element, "possibleProxy", event.possible_proxy)
    _add(element, "port", event.port)


def _account(element: ET.Element, esp_identifier: str | None, esp_service: str | None,
             display_names: Iterable[str], events: Iterable[IpCaptureEvent]) -> None:
    """The part personOrUserReported and intendedRecipient share, in their order:
    espIdentifier, espService, (compromisedAccount, screenName,) displayName*,
    (profileUrl*, profileBio,) ipCaptureEvent*."""
    _add(element, "espIdentifier", esp_identifier)
    _add(element, "espService", esp_service)
    for name in display_names:
        _add(element, "displayName", name)
    for event in events:
        _ip_capture_event(element, event)


def _document(root: ET.Element) -> bytes:
    ET.indent(root)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode").encode() + b"\n")


def report_element(report: Report) -> ET.Element:
    root = ET.Element("report")
    summary = ET.SubElement(root, "incidentSummary")
    s = report.incident_summary
    _add(summary, "incidentType", s.incident_type)
    _add(summary, "platform", s.platform)
    _add(summary, "incidentDateTime", s.incident_date_time)
    _add(summary, "incidentDateTimeDescription", s.incident_date_time_description)

    for incident in report.internet_details:
        email_incident = ET.SubElement(ET.SubElement(root, "internetDetails"), "emailIncident")
        for address in incident.email_addresses:
            _email(email_incident, "emailAddress", address)
        _add(email_incident, "content", incident.content)
        _add(email_incident, "additionalInfo", incident.additional_info)

    r = report.reporter
    reporter = ET.SubElement(root, "reporter")
    _person(reporter, "reportingPerson", r.reporting_person)
    _person(reporter, "contactPerson", r.contact_person)
    _add(reporter, "companyTemplate", r.company_template)
    _add(reporter, "termsOfService", r.terms_of_service)
    _add(reporter, "legalURL", r.legal_url)

    if (u := report.user_reported) is not None:
        reported = ET.SubElement(root, "personOrUserReported")
        _person(reported, "personOrUserReportedPerson", u.person)
        _account(reported, u.esp_identifier, u.esp_service, u.display_names,
                 u.ip_capture_events)
        _add(reported, "additionalInfo", u.additional_info)

    for recipient in report.intended_recipients:
        element = ET.SubElement(root, "intendedRecipient")
        _person(element, "intendedRecipientPerson", recipient.person)
        _account(element, recipient.esp_identifier, recipient.esp_service,
                 recipient.display_names, recipient.ip_capture_events)
        for info in recipient.additional_info:
            _add(element, "additionalInfo", info)

    _add(root, "additionalInfo", report.additional_info)
    return root


def file_details_element(details: FileDetails, *, with_ids: bool = True) -> ET.Element:
    """`with_ids` false: without reportId and fileId (a draft, before NCMEC assigned
    them)."""
    root = ET.Element("fileDetails")
    if with_ids:
        _add(root, "reportId", details.report_id)
        _add(root, "fileId", details.file_id)
    _add(root, "fileName", details.file_name)
    _add(root, "originalFileName", details.original_file_name)
    _add(root, "uploadedToEspTimestamp", details.uploaded_to_esp_timestamp)
    _add(root, "locationOfFile", details.location_of_file)
    _add(root, "fileViewedByEsp", details.file_viewed_by_esp)
    _add(root, "exifViewedByEsp", details.exif_viewed_by_esp)
    _add(root, "publiclyAvailable", details.publicly_available)
    _add(root, "fileRelevance", details.file_relevance)
    for file_hash in details.original_file_hashes:
        _add(root, "originalFileHash", file_hash.value, hashType=file_hash.hash_type)
    if details.ip_capture_event is not None:
        _ip_capture_event(root, details.ip_capture_event)
    if details.details:
        group = ET.SubElement(root, "details")
        for name, value in details.details:
            pair = ET.SubElement(group, "nameValuePair")
            _add(pair, "name", name)
            _add(pair, "value", value)
    for info in details.additional_info:
        _add(root, "additionalInfo", info)
    return root


def report_xml(report: Report) -> bytes:
    """The body of POST /submit."""
    return _document(report_element(report))


def file_details_xml(details: FileDetails) -> bytes:
    """The body of POST /fileinfo."""
    return _document(file_details_element(details))


# --- validation against NCMEC's XSD -------------------------------------------------------


class InvalidDocument(ValueError):
    """A document does not validate against the configured XSD: it is not sent."""


@functools.lru_cache(maxsize=4)
def _schema(path: str, mtime_ns: int) -> Any:
    # Loading NCMEC's XSD (3,000 lines) takes a while: once per file version.
    try:
        import xmlschema
    except ImportError:
        raise InvalidDocument(
            "[cybertip] xsd is set but the xmlschema package is not installed "
            "(pip install 'mailfilter[cybertip]')") from None
    try:
        return xmlschema.XMLSchema(path)
    except (xmlschema.XMLSchemaException, ET.ParseError, OSError) as exc:
        raise InvalidDocument(f"{path}: not a usable XML schema: {exc}") from None


def validate(document: bytes, xsd: Path) -> None:
    """InvalidDocument, naming every problem the validator found, unless `document`
    validates against the XSD at `xsd`."""
    try:
        mtime = xsd.stat().st_mtime_ns
    except OSError as exc:
        raise InvalidDocument(f"{xsd}: cannot read the schema: {exc.strerror}") from None
    schema = _schema(str(xsd), mtime)
    problems = [f"{e.path}: {e.reason}" for e in schema.iter_errors(document.decode())]
    if problems:
        raise InvalidDocument("; ".join(problems))
