"""A stand-in for NCMEC's CyberTipline reporting service (its test environment needs an
account): a real HTTP server (http.server) in a thread, answering the documented request
and response shapes, with faults to inject, and a record of everything it received.

- basic auth against one username and password (401 and responseCode 2000 otherwise);
- POST /submit (`<report>`, text/xml) -> reportResponse with a new reportId;
- POST /upload (multipart: `id`, `file`) -> reportResponse with reportId, fileId, hash
  (the MD5 of the bytes received);
- POST /fileinfo (`<fileDetails>`) -> reportResponse; 5001/5002 for an unknown report/file;
- POST /finish (form `id`) -> reportDoneResponse with the report's file ids; 5102 when
  finished already, 5101 when retracted;
- POST /retract (form `id`) -> reportResponse; 5101/5102 likewise;
- GET /status -> reportResponse "Remote User : NAME";
- GET /xsd -> `STAND_IN_XSD`, a schema of our own with the top-level sequences of
  `report` and `fileDetails` (NCMEC's own comes only with an account).

`fail(step, fault)` queues a fault for the next request to that step:
- "500": HTTP 500 with responseCode 1000, nothing done (the documented server error);
- "500-after": the step is done, then HTTP 500 with an HTML page (a crash after saving);
- "slow": the step is done, the answer comes `slow_seconds` later (a client timeout);
- "drop": the step is done, the connection is closed without an answer;
- "reject": responseCode 4100 (validation failed), nothing done;
- "bad-md5": /upload done, the answer names another MD5.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import hashlib
import http.server
import itertools
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from ports import free_port


@dataclass
class Received:
    method: str
    path: str
    content_type: str
    body: bytes
    authorized: bool


@dataclass
class StoredFile:
    file_id: str
    filename: str
    data: bytes
    md5: str
    details: ET.Element | None = None


@dataclass
class StoredReport:
    report_id: int
    document: ET.Element
    raw: bytes
    files: list[StoredFile] = field(default_factory=list)
    finished: bool = False
    retracted: bool = False


def report_response(code: int, description: str, **fields: Any) -> bytes:
    parts = [f"<responseCode>{code}</responseCode>",
             f"<responseDescription>{escape(description)}</responseDescription>"]
    parts += [f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items() if v is not None]
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<reportResponse>'
            + "".join(parts) + "</reportResponse>").encode()


STAND_IN_XSD = b"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
  <xs:element name="report">
    <xs:complexType><xs:sequence>
      <xs:element name="incidentSummary" type="xs:anyType"/>
      <xs:element name="internetDetails" type="xs:anyType" minOccurs="0" maxOccurs="unbounded"/>
      <xs:element name="reporter" type="xs:anyType"/>
      <xs:element name="personOrUserReported" type="xs:anyType" minOccurs="0"/>
      <xs:element name="intendedRecipient" type="xs:anyType" minOccurs="0"
                  maxOccurs="unbounded"/>
      <xs:element name="additionalInfo" type="xs:string" minOccurs="0"/>
    </xs:sequence></xs:complexType>
  </xs:element>
  <xs:element name="fileDetails">
    <xs:complexType><xs:sequence>
      <xs:element name="reportId" type="xs:long"/>
      <xs:element name="fileId" type="xs:token"/>
      <xs:element name="originalFileName" type="xs:string" minOccurs="0"/>
      <xs:element name="fileViewedByEsp" type="xs:boolean" minOccurs="0"/>
      <xs:element name="exifViewedByEsp" type="xs:boolean" minOccurs="0"/>
      <xs:element name="publiclyAvailable" type="xs:boolean" minOccurs="0"/>
      <xs:element name="fileRelevance" type="xs:string" minOccurs="0"/>
      <xs:element name="originalFileHash" minOccurs="0" maxOccurs="unbounded">
        <xs:complexType><xs:simpleContent><xs:extension base="xs:string">
          <xs:attribute name="hashType" type="xs:string" use="required"/>
        </xs:extension></xs:simpleContent></xs:complexType>
      </xs:element>
      <xs:element name="ipCaptureEvent" type="xs:anyType" minOccurs="0"/>
      <xs:element name="additionalInfo" type="xs:string" minOccurs="0" maxOccurs="unbounded"/>
    </xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>
"""


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a connection dropped on purpose or given up by a client that timed out


class NcmecServer:
    def __init__(self, username: str = "esp-user", password: str = "s3cret pässword",
                 path: str = "/ispws") -> None:
        self.username = username
        self.password = password
        self.base = path
        self.received: list[Received] = []
        self.reports: dict[int, StoredReport] = {}
        self.faults: dict[str, list[str]] = {}
        self.slow_seconds = 1.5
        self._ids = itertools.count(1_000_001)
        self._file_ids = itertools.count(1)
        self._lock = threading.Lock()
        self.port = free_port()
        self._httpd = _QuietServer(("127.0.0.1", self.port), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def fail(self, step: str, fault: str) -> None:
        with self._lock:
            self.faults.setdefault(step, []).append(fault)

    def posts(self, step: str) -> list[Received]:
        return [r for r in self.received if r.path == f"{self.base}/{step}" and r.authorized]

    # --- request handling ---------------------------------------------------------------

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        return Handler

    def _authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    def _handle(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        authorized = self._authorized(h.headers.get("Authorization"))
        content_type = h.headers.get("Content-Type") or ""
        with self._lock:
            self.received.append(Received(method, h.path, content_type, body, authorized))
        if not authorized:
            self._answer(h, 401, report_response(2000, "Authentication required"),
                         {"WWW-Authenticate": 'Basic realm="ispws"'})
            return
        step = h.path.removeprefix(self.base + "/")
        with self._lock:
            queued = self.faults.get(step) or []
            fault = queued.pop(0) if queued else None
        if fault == "500":
            self._answer(h, 500, report_response(1000, "Server error"))
            return
        if fault == "reject":
            self._answer(h, 200, report_response(4100, "Validation failed"))
            return
        routes = {("GET", "status"): self._status, ("GET", "xsd"): self._xsd,
                  ("POST", "submit"): self._submit,
                  ("POST", "upload"): self._upload, ("POST", "fileinfo"): self._fileinfo,
                  ("POST", "finish"): self._finish, ("POST", "retract"): self._retract}
        route = routes.get((method, step))
        if route is None:
            self._answer(h, 404, report_response(1210, "Resource not found"))
            return
        with self._lock:
            status, answer = route(content_type, body, fault)
        if fault == "500-after":
            self._answer(h, 500, b"<html><body>Internal Server Error</body></html>",
                         content_type="text/html")
        elif fault == "drop":
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(2)
        else:
            if fault == "slow":
                time.sleep(self.slow_seconds)
            self._answer(h, status, answer)

    def _answer(self, h: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
                headers: dict[str, str] | None = None, content_type: str = "text/xml") -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass  # the client gave up (a timeout test)

    # --- the steps (called under the lock) ----------------------------------------------

    def _status(self, content_type: str, body: bytes, fault: str | None) -> tuple[int, bytes]:
        return 200, report_response(0, f"Remote User : {self.username}")

    def _xsd(self, content_type: str, body: bytes, fault: str | None) -> tuple[int, bytes]:
        return 200, STAND_IN_XSD

    def _submit(self, content_type: str, body: bytes, fault: str | None) -> tuple[int, bytes]:
        if not content_type.startswith("text/xml"):
            return 400, report_response(4000, "Invalid request")
        try:
            document = ET.fromstring(body)
        except ET.ParseError:
            return 400, report_response(4110, "Malformed XML submittal")
        if document.tag != "report":
            return 400, report_response(4110, "Malformed XML submittal")
        report_id = next(self._ids)
        self.reports[report_id] = StoredReport(report_id, document, body)
        return 200, report_response(0, "Success", reportId=report_id)

    def _open_report(self, raw_id: str | None) -> StoredReport | int:
        try:
            report = self.reports.get(int(raw_id or ""))
        except ValueError:
            report = None
        if report is None:
            return 5001
        if report.retracted:
            return 5101
        if report.finished:
            return 5102
        return report

    def _upload(self, content_type: str, body: bytes, fault: str | None) -> tuple[int, bytes]:
        if not content_type.startswith("multipart/form-data"):
            return 400, report_response(4200, "Malformed file submittal")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (part.get_filename(), payload)
        if "id" not in fields or "file" not in fields:
            return 400, report_response(4200, "Malformed file submittal")
        report = self._open_report(fields["id"][1].decode())
        if isinstance(report, int):
            return 200, report_response(report, "Report is not open")
        filename, data = fields["file"]
        stored = StoredFile(f"{next(self._file_ids):032x}", filename or "", data,
                            hashlib.md5(data).hexdigest())
        report.files.append(stored)
        answered = "0" * 32 if fault == "bad-md5" else stored.md5
        return 200, report_response(0, "Success", reportId=report.report_id,
                                    fileId=stored.file_id, hash=answered)

    def _fileinfo(self, content_type: str, body: bytes, fault: str | None
                  ) -> tuple[int, bytes]:
        try:
            document = ET.fromstring(body)
        except ET.ParseError:
            return 400, report_response(4110, "Malformed XML submittal")
        report = self._open_report(document.findtext("reportId"))
        if isinstance(report, int):
            return 200, report_response(report, "Report is not open")
        file_id = document.findtext("fileId")
        stored = next((f for f in report.files if f.file_id == file_id), None)
        if stored is None:
            return 200, report_response(5002, "File does not exist")
        stored.details = document
        return 200, report_response(0, "Success", reportId=report.report_id)

    def _finish(self, content_type: str, body: bytes, fault: str | None) -> tuple[int, bytes]:
        raw_id = parse_qs(body.decode()).get("id", [""])[0]
        report = self._open_report(raw_id)
        if isinstance(report, int):
            return 200, report_response(report, "Report is not open", reportId=raw_id)
        report.finished = True
        files = "".join(f"<fileId>{f.file_id}</fileId>" for f in report.files)
        return 200, (f'<?xml version="1.0" encoding="UTF-8"?>\n<reportDoneResponse>'
                     f"<responseCode>0</responseCode><reportId>{report.report_id}</reportId>"
                     f"<files>{files}</files></reportDoneResponse>").encode()

    def _retract(self, content_type: str, body: bytes, fault: str | None
                 ) -> tuple[int, bytes]:
        raw_id = parse_qs(body.decode()).get("id", [""])[0]
        report = self._open_report(raw_id)
        if isinstance(report, int):
            return 200, report_response(report, "Report is not open", reportId=raw_id)
        report.retracted = True
        return 200, report_response(0, "Success", reportId=report.report_id)


@contextlib.contextmanager
def running_ncmec_server() -> Iterator[NcmecServer]:
    server = NcmecServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
