"""A thin blocking client of the CyberTipline reporting API over `protocol`: one HTTP
request per call (http.client, a new connection each, no redirects followed), basic auth,
a timeout per request, and the failures as `protocol` errors that say whether the request
may have been carried out.

Where a failure happens decides that: a failure to connect (refused, DNS, TLS handshake)
sent nothing, so the request is `NotDone`; once the first byte of the request may have
gone out, a timeout or a lost connection is `OutcomeUnknown`.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from mailfilter.cybertip import protocol
from mailfilter.cybertip.protocol import (
    DoneResponse,
    NotDone,
    OutcomeUnknown,
    ReportResponse,
    Request,
)

__all__ = ["CybertipClient", "Uploaded"]

MAX_ANSWER = 1024 * 1024  # answers are a few hundred bytes; a bigger one is not an answer
MAX_SCHEMA = 16 * 1024 * 1024  # NCMEC's XSD is about 150 kB


@dataclass(frozen=True, slots=True)
class Uploaded:
    file_id: str
    md5: str  # what NCMEC says it received (lower-case hex), checked against ours


class CybertipClient:
    def __init__(self, url: str, username: str, password: str, *, timeout: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._auth = protocol.basic_auth(username, password)
        self.timeout = timeout
        self._ssl = ssl_context or ssl.create_default_context()

    # --- the steps ----------------------------------------------------------------------

    def status(self) -> ReportResponse:
        """GET /status: are the service up and the credentials good."""
        status, body = self.send(protocol.status_request())
        return protocol.parse_report_response("status", status, body)

    def xsd(self) -> bytes:
        """GET /xsd: NCMEC's schema of the documents (for `[cybertip] xsd`)."""
        status, body = self.send(protocol.xsd_request(), limit=MAX_SCHEMA)
        return protocol.parse_xsd(status, body)

    def submit(self, report_xml: bytes) -> int:
        """POST /submit: NCMEC's report id."""
        status, body = self.send(protocol.submit_request(report_xml))
        report_id = protocol.parse_report_response("submit", status, body).report_id
        assert report_id is not None  # parse_report_response checks it for /submit
        return report_id

    def upload(self, report_id: int, filename: str, data: bytes) -> Uploaded:
        """POST /upload: the file id, and the MD5 NCMEC received. A different MD5 than
        the file's is `NotDone` (the copy NCMEC holds is not this file; it stays in the
        report without file details, and the upload is sent again)."""
        status, body = self.send(protocol.upload_request(report_id, filename, data))
        response = protocol.parse_report_response("upload", status, body)
        assert response.file_id is not None
        ours = hashlib.md5(data).hexdigest()
        theirs = (response.hash or "").strip().lower()
        if theirs and theirs != ours:
            raise NotDone("upload", f"NCMEC received MD5 {theirs}, the file's is {ours} "
                          f"(file id {response.file_id})", http_status=status)
        return Uploaded(response.file_id, theirs or ours)

    def fileinfo(self, file_details_xml: bytes) -> None:
        """POST /fileinfo."""
        status, body = self.send(protocol.fileinfo_request(file_details_xml))
        protocol.parse_report_response("fileinfo", status, body)

    def finish(self, report_id: int) -> DoneResponse:
        """POST /finish: the report is complete; the file ids NCMEC holds for it."""
        status, body = self.send(protocol.finish_request(report_id))
        return protocol.parse_done_response(status, body)

    def retract(self, report_id: int) -> ReportResponse:
        """POST /retract: abandon an unfinished report."""
        status, body = self.send(protocol.retract_request(report_id))
        return protocol.parse_retract_response(status, body)

    # --- transport ----------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def send(self, request: Request, limit: int = MAX_ANSWER) -> tuple[int, bytes]:
        """The HTTP status and body of the answer to `request`."""
        connection = self._connection()
        try:
            try:
                connection.connect()
            except (OSError, ssl.SSLError) as exc:  # socket.timeout is an OSError
                raise NotDone(request.step, f"cannot connect: {_describe(exc)}") from None
            try:
                connection.putrequest(request.method, self._base + request.path,
                                      skip_accept_encoding=True)
                connection.putheader("Authorization", self._auth)
                connection.putheader("User-Agent", "mailfilter")
                connection.putheader("Accept", "text/xml, application/xml")
                for name, value in request.headers:
                    connection.putheader(name, value)
                connection.putheader("Content-Length", str(len(request.body)))
                connection.endheaders(request.body or None)
                response = connection.getresponse()
                body = response.read(limit)
            except (OSError, http.client.HTTPException) as exc:
                raise OutcomeUnknown(request.step, f"no complete answer: {_describe(exc)}"
                                     ) from None
            return response.status, body
        finally:
            connection.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
