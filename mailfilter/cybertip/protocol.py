"""The CyberTipline reporting API as a sans-IO codec: requests as values, answers parsed
into values or into typed errors. No sockets here (`client` sends them).

Every step answers an XML `reportResponse` (`responseCode`, 0 = success,
`responseDescription`, and by step `reportId`, `fileId`, `hash`); /finish answers a
`reportDoneResponse` (`responseCode`, `reportId`, `files/fileId*`).

The API has no idempotency key, so what matters about a failure is whether NCMEC may have
carried the request out. Each error says so:

- `NotDone`: certainly not carried out (nothing was sent, or NCMEC's application answered
  with a server-side code 1000-1999 or HTTP 503/429): sending it again is safe and may work.
- `Rejected`: NCMEC's application refused it (validation 4xxx, unknown report or file
  5001/5002, a finished or retracted report): not carried out, sending the same again
  fails again. `AuthFailed` (2000-3999, HTTP 401/403) is the credentials' fault, not the
  report's.
- `OutcomeUnknown`: it may have been carried out (timeout or a lost connection after the
  request went out, a gateway's 502/504, an answer that is not a reportResponse). Sending
  it again is safe for every step except /submit, where it may file a second report.

`retry_safe` on each error is that answer for the step that failed.
"""

from __future__ import annotations

import base64
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlencode

__all__ = [
    "ALREADY_FINISHED",
    "ALREADY_RETRACTED",
    "REPORT_DOES_NOT_EXIST",
    "AuthFailed",
    "CybertipError",
    "DoneResponse",
    "NotDone",
    "OutcomeUnknown",
    "Rejected",
    "ReportResponse",
    "Request",
    "Step",
    "basic_auth",
    "failure_for_status",
    "fileinfo_request",
    "finish_request",
    "parse_done_response",
    "parse_report_response",
    "parse_xsd",
    "retract_request",
    "status_request",
    "submit_request",
    "upload_request",
    "xsd_request",
]

Step = Literal["status", "xsd", "submit", "upload", "fileinfo", "finish", "retract"]

SUCCESS: Final = 0
REPORT_DOES_NOT_EXIST: Final = 5001
FILE_DOES_NOT_EXIST: Final = 5002
ALREADY_RETRACTED: Final = 5101
ALREADY_FINISHED: Final = 5102
# NCMEC's documented codes (a non-exhaustive list): 1000 server error, 1100 save failed,
# 1110/1111 upload failed, 1210 resource not found, 1300 update failed; 2000 authentication
# required; 3000/3100/3300 not authorized; 4000 invalid request, 4100 validation failed,
# 4110 malformed XML, 4200 malformed file; 5001/5002 no such report/file; 5101/5102
# report already retracted/finished.
_SERVER_SIDE: Final = range(1000, 2000)
_CREDENTIALS: Final = range(2000, 4000)


# --- errors -------------------------------------------------------------------------------


class CybertipError(Exception):
    """A step did not succeed. `step` is the endpoint; `code` NCMEC's responseCode when
    it answered with one; `http_status` the HTTP status when there was an answer."""

    retry_safe: bool = True
    permanent: bool = False

    def __init__(self, step: Step, detail: str, *, code: int | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(f"/{step}: {detail}")
        self.step: Step = step
        self.detail = detail
        self.code = code
        self.http_status = http_status


class NotDone(CybertipError):
    """Certainly not carried out; sending it again later is safe."""


class Rejected(CybertipError):
    """NCMEC's application refused the request: not carried out, and the same request
    will be refused again."""

    permanent = True


class AuthFailed(Rejected):
    """The credentials were refused or lack the right: fix them and resume."""


class OutcomeUnknown(CybertipError):
    """May have been carried out. Safe to send again for every step but /submit."""

    def __init__(self, step: Step, detail: str, *, code: int | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(step, detail, code=code, http_status=http_status)
        self.retry_safe = step != "submit"


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, relative to the service URL (`path` is appended to it)."""

    step: Step
    method: Literal["GET", "POST"]
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


def basic_auth(username: str, password: str) -> str:
    """The Authorization header value. RFC 7617 allows any UTF-8 in the password."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def status_request() -> Request:
    return Request("status", "GET", "/status", ())


def xsd_request() -> Request:
    return Request("xsd", "GET", "/xsd", ())


def parse_xsd(http_status: int, body: bytes) -> bytes:
    """The schema NCMEC serves, or the error its answer stands for."""
    if 200 <= http_status < 300 and b"schema" in body[:2000]:
        return body
    response = _read_report_response(body)
    if response is not None and response.response_code != SUCCESS:
        raise failure_for_code("xsd", response.response_code,
                               response.response_description, http_status)
    raise failure_for_status("xsd", http_status, body)


def submit_request(report_xml: bytes) -> Request:
    return Request("submit", "POST", "/submit",
                   (("Content-Type", "text/xml; charset=utf-8"),), report_xml)


def fileinfo_request(file_details_xml: bytes) -> Request:
    return Request("fileinfo", "POST", "/fileinfo",
                   (("Content-Type", "text/xml; charset=utf-8"),), file_details_xml)


def _form(step: Step, report_id: int) -> Request:
    return Request(step, "POST", f"/{step}",
                   (("Content-Type", "application/x-www-form-urlencoded"),),
                   urlencode({"id": str(report_id)}).encode("ascii"))


def finish_request(report_id: int) -> Request:
    return _form("finish", report_id)


def retract_request(report_id: int) -> Request:
    return _form("retract", report_id)


def _quoted(value: str) -> str:
    """A filename for a Content-Disposition parameter: quotes, backslashes and line
    breaks would end it early; non-ASCII is kept (UTF-8, as browsers send it)."""
    return "".join("_" if c in '"\\\r\n' else c for c in value)


def upload_request(report_id: int, filename: str, data: bytes,
                   boundary: str | None = None) -> Request:
    """multipart/form-data with the fields `id` (the report) and `file`."""
    boundary = boundary or f"mailfilter-{secrets.token_hex(16)}"
    if f"--{boundary}".encode() in data:  # a boundary must not occur in the content
        return upload_request(report_id, filename, data, None)
    body = b"".join([
        f"--{boundary}\r\n".encode(),
        b'Content-Disposition: form-data; name="id"\r\n\r\n',
        str(report_id).encode("ascii"), b"\r\n",
        f"--{boundary}\r\n".encode(),
        f'Content-Disposition: form-data; name="file"; filename="{_quoted(filename)}"\r\n'
        .encode(),
        b"Content-Type: application/octet-stream\r\n\r\n",
        data, b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])
    return Request("upload", "POST", "/upload",
                   (("Content-Type", f"multipart/form-data; boundary={boundary}"),), body)


# --- answers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportResponse:
    response_code: int
    response_description: str = ""
    report_id: int | None = None
    file_id: str | None = None
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class DoneResponse:
    response_code: int
    report_id: int | None
    file_ids: tuple[str, ...]


def _root(body: bytes, tag: str) -> ET.Element | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    return root if root.tag == tag else None


def _child_text(root: ET.Element, tag: str) -> str | None:
    element = root.find(tag)
    return None if element is None or element.text is None else element.text.strip()


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _read_report_response(body: bytes) -> ReportResponse | None:
    root = _root(body, "reportResponse")
    if root is None:
        return None
    code = _int(_child_text(root, "responseCode"))
    if code is None:
        return None
    return ReportResponse(code, _child_text(root, "responseDescription") or "",
                          _int(_child_text(root, "reportId")), _child_text(root, "fileId"),
                          _child_text(root, "hash"))


def failure_for_code(step: Step, code: int, description: str, http_status: int
                     ) -> CybertipError:
    """The error for a non-zero responseCode."""
    detail = f"NCMEC answered {code} {description}".rstrip()
    if code in _SERVER_SIDE:
        return NotDone(step, detail, code=code, http_status=http_status)
    if code in _CREDENTIALS:
        return AuthFailed(step, detail, code=code, http_status=http_status)
    return Rejected(step, detail, code=code, http_status=http_status)


def failure_for_status(step: Step, http_status: int, body: bytes) -> CybertipError:
    """The error for an answer that is not a reportResponse (a proxy's or a server's error
    page): by HTTP status."""
    snippet = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    detail = f"HTTP {http_status}" + (f": {snippet}" if snippet else "")
    if http_status in (401, 403):
        return AuthFailed(step, detail, http_status=http_status)
    if http_status in (429, 503):  # not taken in: overloaded or in maintenance
        return NotDone(step, detail, http_status=http_status)
    if 300 <= http_status < 500:
        # Not carried out, but not NCMEC's refusal either: a redirect (never followed),
        # or a proxy's or web server's 4xx (408, 404, 413, ...) without a reportResponse.
        # Only NCMEC's own answer is `Rejected`, which the journal may answer with a
        # retraction: a gateway's timeout must not withdraw a report that was filed.
        hint = "; check [cybertip] url" if http_status < 400 else ""
        return NotDone(step, detail + hint, http_status=http_status)
    # 2xx with a body that is not an answer, 500, a gateway's 502/504: the application may
    # have done it before it or the gateway gave up.
    return OutcomeUnknown(step, detail, http_status=http_status)


def parse_report_response(step: Step, http_status: int, body: bytes) -> ReportResponse:
    """The reportResponse of a successful step, or the error it stands for. Success needs
    both HTTP 2xx and responseCode 0, plus what the step returns (a reportId for /submit,
    a fileId for /upload)."""
    response = _read_report_response(body)
    if response is None:
        raise failure_for_status(step, http_status, body)
    if response.response_code != SUCCESS:
        raise failure_for_code(step, response.response_code,
                               response.response_description, http_status)
    if not 200 <= http_status < 300:
        raise failure_for_status(step, http_status, body)
    if step == "submit" and response.report_id is None:
        raise OutcomeUnknown(step, "success without a reportId", http_status=http_status)
    if step == "upload" and not response.file_id:
        raise OutcomeUnknown(step, "success without a fileId", http_status=http_status)
    return response


def parse_done_response(http_status: int, body: bytes) -> DoneResponse:
    """The reportDoneResponse of /finish; a finish refused with 5102 (already finished)
    is the success it is. A reportResponse in its place is read for its code."""
    root = _root(body, "reportDoneResponse")
    if root is None:
        response = _read_report_response(body)
        if response is not None and response.response_code == ALREADY_FINISHED:
            return DoneResponse(ALREADY_FINISHED, response.report_id, ())
        if response is not None and response.response_code != SUCCESS:
            raise failure_for_code("finish", response.response_code,
                                   response.response_description, http_status)
        raise failure_for_status("finish", http_status, body)
    code = _int(_child_text(root, "responseCode"))
    if code is None:
        raise failure_for_status("finish", http_status, body)
    if code not in (SUCCESS, ALREADY_FINISHED):
        raise failure_for_code("finish", code, "", http_status)
    files = tuple((e.text or "").strip() for e in root.findall("files/fileId"))
    return DoneResponse(code, _int(_child_text(root, "reportId")), files)


def parse_retract_response(http_status: int, body: bytes) -> ReportResponse:
    """/retract's answer; already retracted (5101) or no such report (5001) leave the
    report as retracting wants it: not open, and are taken as success."""
    response = _read_report_response(body)
    if response is not None and response.response_code in (ALREADY_RETRACTED,
                                                           REPORT_DOES_NOT_EXIST):
        return response
    return parse_report_response("retract", http_status, body)
