"""Text-only mode (`extract_text_only`): the event loop walks small text-only messages itself
and hands everything else to a worker. It must never decide about a message that holds
anything the full walk would look into, and what it returns must be what the full walk
returns."""

from __future__ import annotations

import time

import extract_corpus as ec
import pytest

from mailfilter.extract import TEXT_ONLY_MAX_BYTES, extract, extract_text_only
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()

TEXT_ONLY = {
    "plain": ec.message(ec.part("text/plain", b"Hello Bob,\n\nsee you at noon.\n")),
    "no content type": ec.message(b"\nJust text.\n"),
    "alternative": ec.message(ec.multipart("alternative", [
        ec.part("text/plain", b"Hi\n"),
        ec.part("text/html", b"<p>Hi <img src=\"cid:none\"></p>\n"),
    ], "alt")),
    "base64 utf-8 text": ec.message(
        ec.part("text/plain; charset=utf-8", ec.b64("Grüße\n".encode()), cte="base64")),
    "quoted-printable": ec.message(
        ec.part("text/plain", ec.qp(b"caf\xc3\xa9 = coffee\n"), cte="quoted-printable")),
    "base64 text body without encoding header": ec.message(
        ec.part("text/plain", ec.b64(b"just words, nothing else " * 20))),
}

NOT_TEXT = {
    "image part": ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"look\n"), ec.attachment("image/png", ec.png(1), "a.png"),
    ], "m")),
    "image without a name or type": ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"look\n"),
        ec.attachment("application/octet-stream", ec.jpeg(2)),
    ], "m")),
    "zip": ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"zip\n"),
        ec.attachment("application/zip", ec.zip_bytes({"notes.txt": b"words"}), "n.zip"),
    ], "m")),
    "forwarded text-only message": ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"fwd\n"),
        ec.rfc822(ec.message(ec.part("text/plain", b"inner\n"))),
    ], "m")),
    "data URI": ec.message(ec.part("text/html", b"<img src=\"data:image/png;base64,"
                                   + ec.b64(ec.png(3), 10**9).strip() + b"\">")),
    "mixed-case data URI": ec.message(ec.part("text/html", b"<img src=\"Data:image/png;base64,"
                                              + ec.b64(ec.png(4), 10**9).strip() + b"\">")),
    "uuencoded": ec.message(ec.part("text/plain", b"file:\n" + ec.uu_block(ec.gif(5), "x.gif"))),
    "bare base64 image": ec.message(ec.part("text/plain", ec.b64(ec.png(6)))),
    "pdf declared": ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"pdf\n"), ec.attachment("application/pdf", b"%PDF-1.4\n", "a.pdf"),
    ], "m")),
    "many parts": ec.message(ec.multipart(
        "mixed", [ec.part("text/plain", b"p%d\n" % i) for i in range(40)], "m")),
    "too big": ec.message(ec.part("text/plain", b"word " * (TEXT_ONLY_MAX_BYTES // 4))),
}


@pytest.mark.parametrize("name", sorted(TEXT_ONLY))
def test_text_only_message_is_walked_inline_with_the_full_walks_result(name: str) -> None:
    raw = ec.crlf(TEXT_ONLY[name])
    inline = extract_text_only(raw, LIMITS)
    assert inline is not None
    assert inline == extract(raw, LIMITS)
    assert inline.attachments == ()


@pytest.mark.parametrize("name", sorted(NOT_TEXT))
def test_anything_but_text_goes_to_a_worker(name: str) -> None:
    raw = ec.crlf(NOT_TEXT[name])
    assert extract_text_only(raw, LIMITS) is None


def test_mixed_case_data_uri_is_found_by_the_full_walk() -> None:
    # A browser takes "Data:" like "data:"; the walk once only looked for two spellings.
    raw = ec.crlf(NOT_TEXT["mixed-case data URI"])
    assert [a.mime_path for a in extract(raw, LIMITS).attachments] == ["1/data-uri-1"]


def test_repeated_data_uri_prefixes_take_linear_time() -> None:
    # "data:image/gif,data:image/gif,..." once made the walk search each URI's data again
    # for the next one: 60 KB took 0.8 s, so 1 MB would take minutes. Linear: well under 1 s.
    for unit in (b"data:,", b"data:image/gif,", b"data:;base64,"):
        raw = ec.crlf(ec.message(ec.part("text/html", unit * (1_000_000 // len(unit)))))
        started = time.perf_counter()
        extract(raw, LIMITS)
        assert time.perf_counter() - started < 5.0, unit
