"""The API codec without a network: requests as the API documents them, answers parsed,
and each failure classified by whether the request may have been carried out."""

from __future__ import annotations

import base64
import email.parser
import email.policy

import pytest

from mailfilter.cybertip import protocol
from mailfilter.cybertip.protocol import (
    AuthFailed,
    NotDone,
    OutcomeUnknown,
    Rejected,
    parse_done_response,
    parse_report_response,
    parse_retract_response,
)


def answer(code: int, **fields: object) -> bytes:
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    return (f'<?xml version="1.0"?><reportResponse><responseCode>{code}</responseCode>'
            f"<responseDescription>d</responseDescription>{inner}</reportResponse>").encode()


def test_requests() -> None:
    submit = protocol.submit_request(b"<report/>")
    assert (submit.method, submit.path, submit.body) == ("POST", "/submit", b"<report/>")
    assert dict(submit.headers)["Content-Type"].startswith("text/xml")
    assert protocol.fileinfo_request(b"<fileDetails/>").path == "/fileinfo"
    finish = protocol.finish_request(123)
    assert (finish.path, finish.body) == ("/finish", b"id=123")
    assert dict(finish.headers)["Content-Type"] == "application/x-www-form-urlencoded"
    assert protocol.retract_request(9).body == b"id=9"
    assert (protocol.status_request().method, protocol.status_request().path) == ("GET",
                                                                                "/status")
    header = protocol.basic_auth("user", "pä:ss")
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == "user:pä:ss"


def test_upload_is_multipart_with_id_and_file() -> None:
    data = bytes(range(256)) * 10
    request = protocol.upload_request(77, 'a "quoted"\r\nname.png', data)
    content_type = dict(request.headers)["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body)
    parts = {p.get_param("name", header="content-disposition"): p
             for p in message.iter_parts()}
    assert parts["id"].get_payload(decode=True) == b"77"
    assert parts["file"].get_payload(decode=True) == data
    assert parts["file"].get_filename() == "a _quoted___name.png"
    # a boundary that occurs in the data is not used
    clash = protocol.upload_request(1, "x", b"--fixed", boundary="fixed")
    assert "boundary=fixed" not in dict(clash.headers)["Content-Type"]


def test_success_answers() -> None:
    assert parse_report_response("submit", 200, answer(0, reportId=42)).report_id == 42
    upload = parse_report_response("upload", 200, answer(0, reportId=42, fileId="f1",
                                                         hash="ab" * 16))
    assert (upload.file_id, upload.hash) == ("f1", "ab" * 16)
    done = parse_done_response(200, b"<reportDoneResponse><responseCode>0</responseCode>"
                                    b"<reportId>42</reportId><files><fileId>f1</fileId>"
                                    b"<fileId>f2</fileId></files></reportDoneResponse>")
    assert (done.report_id, done.file_ids) == (42, ("f1", "f2"))
    # a finish or retract sent twice: the report is already where it should be
    assert parse_done_response(200, answer(5102)).response_code == 5102
    assert parse_retract_response(200, answer(5101)).response_code == 5101
    assert parse_retract_response(200, answer(5001)).response_code == 5001


@pytest.mark.parametrize(("step", "status", "body", "kind", "retry_safe"), [
    ("submit", 500, answer(1000), NotDone, True),  # NCMEC's application: not saved
    ("submit", 200, answer(1100), NotDone, True),
    ("upload", 200, answer(1111), NotDone, True),
    ("submit", 401, answer(2000), AuthFailed, True),
    ("submit", 401, b"", AuthFailed, True),
    ("submit", 403, answer(3100), AuthFailed, True),
    ("submit", 200, answer(4100), Rejected, True),
    ("fileinfo", 200, answer(5002), Rejected, True),
    ("upload", 200, answer(5001), Rejected, True),
    ("submit", 503, b"<html>maintenance</html>", NotDone, True),
    ("submit", 429, b"", NotDone, True),
    # not NCMEC's answer (a proxy's or web server's, a redirect): not done, never a
    # refusal (a rejected upload or finish would retract a filed report)
    ("submit", 400, b"bad", NotDone, True),
    ("upload", 408, b"<html>Request Timeout</html>", NotDone, True),
    ("finish", 404, b"", NotDone, True),
    ("upload", 413, b"", NotDone, True),
    ("submit", 302, b"", NotDone, True),
    # maybe done: an error page instead of an answer, a gateway giving up
    ("submit", 500, b"<html>Internal Server Error</html>", OutcomeUnknown, False),
    ("submit", 502, b"", OutcomeUnknown, False),
    ("submit", 504, b"", OutcomeUnknown, False),
    ("upload", 504, b"", OutcomeUnknown, True),
    ("fileinfo", 500, b"", OutcomeUnknown, True),
    ("submit", 200, b"not xml", OutcomeUnknown, False),
    ("submit", 200, answer(0), OutcomeUnknown, False),  # success without a report id
])
def test_failures_say_whether_a_retry_is_safe(step: protocol.Step, status: int, body: bytes,
                                              kind: type[Exception], retry_safe: bool) -> None:
    with pytest.raises(kind) as info:
        parse_report_response(step, status, body)
    error = info.value
    assert isinstance(error, protocol.CybertipError)
    assert type(error) is kind
    assert error.retry_safe is retry_safe
    assert error.permanent is isinstance(error, Rejected)
    assert str(error).startswith(f"/{step}: ")


def test_finish_failures() -> None:
    with pytest.raises(Rejected):
        parse_done_response(200, answer(5001))
    with pytest.raises(Rejected):
        parse_done_response(200, b"<reportDoneResponse><responseCode>5101</responseCode>"
                                 b"<reportId>1</reportId><files/></reportDoneResponse>")
    with pytest.raises(OutcomeUnknown) as info:
        parse_done_response(502, b"")
    assert info.value.retry_safe  # finishing twice is harmless
    with pytest.raises(NotDone):
        parse_done_response(500, answer(1000))
