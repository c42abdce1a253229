"""The CyberTipline documents: what a mail incident's report and file details say, in the
order of NCMEC's schema sequences, and validation against an operator's XSD."""

from __future__ import annotations

import dataclasses
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cybertip.material import INCIDENT, SEQUENCES, material, order_problems, settings
from mailfilter.cybertip.document import (
    FileDetails,
    InvalidDocument,
    file_details_xml,
    report_xml,
    validate,
)
from mailfilter.cybertip.email_report import build_report
from mailfilter.settings import Settings


def test_the_report_of_a_mail_incident() -> None:
    report, _, _ = material(settings())
    root = ET.fromstring(report_xml(report))
    assert root.tag == "report" and not root.attrib  # no namespace: NCMEC's XSD has none
    assert order_problems(root) == []
    assert [c.tag for c in root] == ["incidentSummary", "internetDetails", "reporter",
                                     "personOrUserReported", "intendedRecipient",
                                     "intendedRecipient", "additionalInfo"]
    assert root.findtext("incidentSummary/incidentType") == (
        "Child Pornography (possession, manufacture, and distribution)")
    assert root.findtext("incidentSummary/incidentDateTime") == "2026-12-01T09:30:05Z"
    incident = root.find("internetDetails/emailIncident")
    assert incident is not None
    assert [e.text for e in incident.findall("emailAddress")] == [
        "sender@example.net", "alice@example.org", "bob@example.org"]
    person = root.find("reporter/reportingPerson")
    assert person is not None
    assert [person.findtext(t) for t in ("firstName", "lastName", "email")] == [
        "Casey", "Compliance", "abuse@example.org"]
    assert root.findtext("reporter/companyTemplate") == "Example Mail hosts mailboxes."
    assert root.findtext("reporter/termsOfService") == "https://example.org/terms"
    reported = root.find("personOrUserReported")
    assert reported is not None
    assert reported.findtext("personOrUserReportedPerson/email") == "sender@example.net"
    assert [reported.findtext(f"ipCaptureEvent/{t}") for t in ("ipAddress", "eventName",
                                                               "dateTime")] == [
        "192.0.2.44", "Upload", "2026-12-01T09:30:05Z"]
    assert [r.findtext("intendedRecipientPerson/email")
            for r in root.findall("intendedRecipient")] == ["alice@example.org",
                                                             "bob@example.org"]


def test_the_file_details() -> None:
    _, files, blobs = material(settings())
    details = dataclasses.replace(files[0].details, report_id=4711, file_id="f00d")
    root = ET.fromstring(file_details_xml(details))
    assert order_problems(root) == []
    assert [c.tag for c in root] == [
        "reportId", "fileId", "originalFileName", "fileViewedByEsp", "exifViewedByEsp",
        "publiclyAvailable", "fileRelevance", "originalFileHash", "originalFileHash",
        "originalFileHash", "ipCaptureEvent", "additionalInfo"]
    assert root.findtext("reportId") == "4711" and root.findtext("fileId") == "f00d"
    assert root.findtext("originalFileName") == "picture 0.png"
    assert root.findtext("fileViewedByEsp") == "false"
    hashes = {h.get("hashType"): h.text for h in root.findall("originalFileHash")}
    assert hashes == {"MD5": hashlib.md5(blobs[0]).hexdigest(),
                      "SHA1": hashlib.sha1(blobs[0]).hexdigest(),
                      "SHA256": hashlib.sha256(blobs[0]).hexdigest()}
    assert root.findtext("ipCaptureEvent/ipAddress") == "192.0.2.44"


def test_file_viewed_by_esp_follows_the_setting() -> None:
    _, files, _ = material(settings(file_viewed_by_esp=True))
    assert ET.fromstring(file_details_xml(files[0].details)).findtext("fileViewedByEsp") == (
        "true")


def test_every_optional_part_in_schema_order() -> None:
    """The writer's order for every element it can write, not only those a mail incident
    uses: all optional fields set."""
    from datetime import UTC, datetime

    from mailfilter.cybertip.document import (
        Email,
        EmailIncident,
        FileHash,
        IncidentSummary,
        IntendedRecipient,
        IpCaptureEvent,
        Person,
        Report,
        Reporter,
        UserReported,
    )

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = IpCaptureEvent("2001:db8::1", "Login", when, True, 587)
    person = Person("A", "B", ("+1 555 0100",), (Email("a@example.org", "Work", True),))
    report = Report(
        IncidentSummary("Child Sex Trafficking", when, "mail", "approximately"),
        Reporter(person, person, "template", "terms", "https://example.org/legal"),
        (EmailIncident((Email("x@example.org"),), "content", "info"),) * 2,
        UserReported(person, "id-1", "mail", ("Display",), (event, event), "info"),
        (IntendedRecipient(person, "id-2", "mail", ("D",), (event,), ("i1", "i2")),),
        "more")
    assert order_problems(ET.fromstring(report_xml(report))) == []
    details = FileDetails(1, "f", "original.png", "name.png", when, "/x", False, False, True,
                          "Supplemental Reported", (FileHash("ab"), FileHash("cd", "SHA1")),
                          event, (("k", "v"), ("k2", "v2")), ("a", "b"))
    root = ET.fromstring(file_details_xml(details))
    assert order_problems(root) == []
    assert root.findtext("fileName") == "name.png"
    assert root.find("originalFileName") is not None


def test_text_xml_cannot_hold_is_escaped_visibly() -> None:
    incident = dataclasses.replace(INCIDENT, subject="bad\x00\x1bsubject")
    report = build_report(incident, (), settings())
    text = report_xml(report).decode()
    ET.fromstring(text)  # still well-formed
    assert "bad\\x00\\x1bsubject" in text


def test_no_reporter_email_is_refused() -> None:
    with pytest.raises(ValueError, match="reporter_email"):
        build_report(INCIDENT, (), Settings())


# A small XSD of our own for the fileDetails sequence's head (NCMEC's comes only with an
# account): enough to show that `validate` takes an XSD and refuses what breaks it.
SMALL_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
  <xs:element name="fileDetails">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="reportId" type="xs:long"/>
        <xs:element name="fileId" type="xs:token"/>
        <xs:element name="originalFileName" minOccurs="0" type="xs:string"/>
        <xs:element name="fileViewedByEsp" minOccurs="0" type="xs:boolean"/>
        <xs:element name="exifViewedByEsp" minOccurs="0" type="xs:boolean"/>
        <xs:element name="publiclyAvailable" minOccurs="0" type="xs:boolean"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""


def test_validation_against_an_xsd(tmp_path: Path) -> None:
    pytest.importorskip("xmlschema")  # the cybertip extra (in the test extra too)
    xsd = tmp_path / "cybertip.xsd"
    xsd.write_text(SMALL_XSD)
    validate(file_details_xml(FileDetails(12, "abc", "a.png")), xsd)
    swapped = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
               b"<fileDetails><fileId>abc</fileId><reportId>12</reportId></fileDetails>")
    with pytest.raises(InvalidDocument, match=r"reportId|fileId"):
        validate(swapped, xsd)
    with pytest.raises(InvalidDocument, match=r"long|reportId"):
        validate(b"<fileDetails><reportId>x</reportId><fileId>a</fileId></fileDetails>", xsd)
    with pytest.raises(InvalidDocument, match="cannot read"):
        validate(swapped, tmp_path / "absent.xsd")
    broken = tmp_path / "broken.xsd"
    broken.write_text("<xs:schema")
    with pytest.raises(InvalidDocument, match="not a usable XML schema"):
        validate(swapped, broken)


def test_sequences_cover_what_the_writer_writes() -> None:
    """The check itself: a child out of order is found."""
    root = ET.fromstring("<fileDetails><fileId>a</fileId><reportId>1</reportId></fileDetails>")
    assert order_problems(root) == ["/fileDetails: reportId out of order"]
    assert "report" in SEQUENCES


def test_a_match_without_its_attachment_in_the_record_is_refused() -> None:
    """A record read in part (its match kept, the attachment it names lost) must not give a
    report with that file left out: refused, before the message is parsed again."""
    from mailfilter.actions.cybertip_submit import matched_files
    from mailfilter.actions.quarantine_service import Refused
    from mailfilter.actions.records import QuarantineRecord
    from mailfilter.settings import Settings

    record = QuarantineRecord.from_json({
        "id": "2Q47XF2X1NL0K8Y2F",
        "matches": [{"mime_path": "2", "list": "stand-ins", "algorithm": "pdq",
                     "distance": 0, "value": "0" * 64}],
        "attachments": []})
    with pytest.raises(Refused, match="matches at 2 but describes no attachment"):
        matched_files(record, b"", Settings())


def test_an_incident_without_a_time_of_receipt_is_refused() -> None:
    """NCMEC is told the incident's real time, never 1970 for a record that lost it."""
    from mailfilter.actions.cybertip_submit import incident_of
    from mailfilter.actions.quarantine_service import Refused
    from mailfilter.actions.records import QuarantineRecord

    timed = QuarantineRecord.from_json({"id": "A", "received": "2025-03-14T15:09:26Z"})
    assert incident_of(timed, Settings()).received.year == 2025
    with pytest.raises(Refused, match="no time of receipt"):
        incident_of(QuarantineRecord.from_json({"id": "B"}), Settings())


def test_the_draft_names_every_match_and_the_frame_of_a_video() -> None:
    """The draft (`quarantine report --format cybertip-xml`) holds every match of the
    entry, a video's with the time of the frame that matched; submit's lines are the same
    ones, on the lists `[cybertip] lists` allows."""
    from mailfilter.actions.records import QuarantineRecord
    from mailfilter.actions.report.cybertip import cybertip_xml, match_lines

    record = QuarantineRecord.from_json({
        "id": "2Q47XF2X1NL0K8Y2F", "received": "2025-03-14T14:50:02Z", "host": "mx1",
        "envelope": {"mail_from": "alice@example.org", "rcpt_tos": ["bob@example.net"]},
        "attachments": [
            {"mime_path": "2", "filename": "clip.mp4", "content_type": "video/mp4",
             "size": 5, "md5": "0" * 32},
            {"mime_path": "3", "content_type": "image/png", "size": 7, "md5": "1" * 32}],
        "matches": [
            {"mime_path": "2", "list": "ncmec", "algorithm": "pdq", "distance": 3,
             "value": "0" * 64, "at": 12.0},
            {"mime_path": "3", "list": "own", "algorithm": "md5", "distance": 0,
             "value": "1" * 32, "labels": ["A1"]},
            {"mime_path": "4", "list": "own", "algorithm": "md5", "distance": 0,
             "value": "2" * 32}]})
    assert match_lines(record, "2") == ("list ncmec by pdq, distance 3, the frame at 12 s",)
    assert match_lines(record, "3", ["ncmec"]) == ()
    root = ET.fromstring(cybertip_xml(record, Settings(), 0.0, "here"))
    files = root.findall("fileDetails")
    assert [f.findtext("originalFileName") for f in files] == ["clip.mp4", "part-3"]
    assert files[0].findtext("additionalInfo") == (
        "MIME part 2 (video/mp4, 5 bytes). list ncmec by pdq, distance 3, the frame at 12 s.")
    assert root.find("fileDetails/reportId") is None and root.get("host") == "mx1"
    # No reporter set: the draft is still written (submit is refused for it).
    assert root.find("report/reporter/reportingPerson/email") is None
    # Beside what is filed, the reviewer's notes: every match with its labels, one that
    # is in no <fileDetails> said so, the message's facts; none of it in <report>.
    notes = [n.text or "" for n in root.iterfind("reviewNotes/note")]
    assert notes[0] == ("Match at MIME part 2: list ncmec by pdq, distance 3, the frame at "
                        "12 s, labels none.")
    assert notes[1] == "Match at MIME part 3: list own by md5, distance 0, labels A1."
    assert notes[2].startswith("Match at MIME part 4: list own by md5, distance 0, labels "
                               "none; the record describes no attachment there")
    assert notes[3].startswith("Message: ") and "MTA queue id unknown" in notes[3]
    assert notes[-1] == ("The files were matched by hash; no person at the provider viewed "
                         "them.")
    report = root.find("report")
    assert report is not None and "labels" not in ET.tostring(report, encoding="unicode")
