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


# --- the raw sweep's gate in text-only mode (sweep.may_start_file) ------------------------

import base64 as _base64  # noqa: E402
import bz2 as _bz2  # noqa: E402
import lzma as _lzma  # noqa: E402
import os as _os  # noqa: E402
import random as _random  # noqa: E402

from mailfilter.extract import sweep  # noqa: E402


def _dkim_signed(sig: bytes) -> bytes:
    b64 = _base64.b64encode(sig).decode()
    folded = "\r\n\t ".join(b64[i : i + 70] for i in range(0, len(b64), 70))
    bh = _base64.b64encode(bytes(range(32))).decode()
    header = (f"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1;\r\n\th=from:to; bh={bh};"
              f"\r\n\tb={folded}\r\n")
    return header.encode() + ec.crlf(TEXT_ONLY["plain"])


def _formats() -> dict[str, bytes]:
    return {
        "jpeg": ec.jpeg(1), "png": ec.png(1), "gif": ec.gif(1), "webp": ec.webp(1),
        "bmp": ec.bmp(1), "tiff": ec.tiff(1), "ico": ec.ico(1), "heic": ec.heic_header(),
        "avif": ec.avif_header(), "zip": ec.zip_bytes({"a.txt": b"words"}),
        "tar": ec.tar_bytes({"a.txt": b"words"}), "gzip": ec.gzip_bytes(b"words"),
        "bzip2": _bz2.compress(b"words"), "xz": _lzma.compress(b"words"),
        "lzma": _lzma.compress(b"words", format=_lzma.FORMAT_ALONE),
        "7z": ec.sevenzip_bytes({"a.txt": b"words"}), "rar": ec.rar4({"a.txt": b"words"}),
        "tnef": ec.tnef([("a.txt", b"words")]), "pdf": ec.pdf([b"<< >>"]),
        "cms": ec.cms_signed(b"words"), "pgp armor": b"\n-----BEGIN PGP MESSAGE-----\n\nxx",
        "pgp literal": b"\xcb\x0bb\x00\x00\x00\x00\x00words",
        "pdf after junk": b"junk" * 10 + b"%PDF-1.4\n",
    }


@pytest.mark.parametrize("name", sorted(_formats()))
def test_the_gate_lets_every_format_through(name: str) -> None:
    data = _formats()[name]
    assert sweep.kind_at_start(data) is not None, name
    for size in (16, 64, 200, 511, len(data)):
        if sweep.kind_at_start(data[:size]) is not None:
            assert sweep.may_start_file(data[:size]), (name, size)


def test_the_gate_never_stops_what_sniff_finds_in_random_heads() -> None:
    rng = _random.Random(7)
    for first in range(256):
        for second in range(0, 256, 3):
            for _ in range(4):
                head = bytes([first, second]) + rng.randbytes(rng.choice((14, 62, 254, 600)))
                if sweep.kind_at_start(head) is not None:
                    assert sweep.may_start_file(head), head[:8]


@pytest.mark.parametrize("size", [64, 128, 256])
def test_dkim_signed_text_mail_stays_inline(size: int) -> None:
    handed_on = 0
    for _ in range(20):
        raw = _dkim_signed(_os.urandom(size))
        inline = extract_text_only(raw, LIMITS)
        full = extract(raw, LIMITS)
        if full.attachments:  # (random bytes that happen to be a file: a worker's job)
            assert inline is None
        elif inline is None:
            # Random bytes that start like an OpenPGP packet (about 1 in 500) go to a worker:
            # conservative, and allowed; what must not happen is a wrong inline result.
            handed_on += 1
        else:
            assert inline == full
    assert handed_on <= 3


@pytest.mark.parametrize("name", ["gif", "png", "zip", "pgp literal"])
def test_a_file_in_a_signature_header_goes_to_a_worker(name: str) -> None:
    # (the full walk hands it on from the sweep: a picture, or a container it opens)
    raw = _dkim_signed(_formats()[name] + b"\x00" * 300)
    if name in ("gif", "png"):
        assert extract(raw, LIMITS).attachments
    assert extract_text_only(raw, LIMITS) is None


def test_header_fields_are_stored_as_the_policy_would_store_them() -> None:
    # mime.Fields.add appends to the Message directly (compat32's __setitem__ does just that)
    from email.message import Message

    from mailfilter.extract import mime

    block = (b"From: a@example.com\r\nSubject: =?utf-8?q?hi?=\r\nContent-Type: text/plain;\r\n"
             b" charset=utf-8\r\nX-8bit: caf\xc3\xa9\r\nSubject: two\r\n")
    fields = mime.parse_headers(block)
    reference = Message()
    for name, value in fields.raw_items():
        reference[name] = value
    assert list(fields.raw_items()) == list(reference.raw_items())
    assert fields.get_all("subject") == reference.get_all("subject")
    assert fields.get_content_type() == "text/plain"
    assert fields.get_param("charset") == "utf-8"


def test_header_text_reads_the_first_field_of_a_name_in_any_case() -> None:
    from email.message import Message

    from mailfilter.extract import mime

    block = (b"subject: one\r\nMessage-ID: <a@x>\r\nSUBJECT: two\r\nContent-Transfer-Encoding:"
             b"\r\n BASE64\r\nX-Long: a\r\n  b\r\n")
    fields = mime.parse_headers(block)
    reference = Message()
    for name, value in fields.raw_items():
        reference[name] = value
    for name in ("Subject", "message-id", "Content-Transfer-Encoding", "X-Long", "Absent"):
        assert mime.header_text(fields, name) == mime.header_text(reference, name), name
    assert mime.header_text(fields, "Subject") == "one"


@pytest.mark.parametrize("body", [
    b"see https://example.com/" + b"aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9fG1hJ3kL5mN7pQ9rS" * 6
    + b"?utm_source=mail&amp;x=1\n",
    b"<p>Caf&eacute; &amp; cr&egrave;me, 10&nbsp;&euro;: see <a href=\"https://example.com/a\">"
    b"this</a></p>\n",
])
def test_ordinary_text_with_a_long_url_or_references_stays_inline(body: bytes) -> None:
    raw = ec.crlf(ec.message(ec.part("text/html", body)))
    for signature_bytes in (b"", _os.urandom(256)):
        signed = _dkim_signed(signature_bytes)[: -len(ec.crlf(TEXT_ONLY["plain"]))] + raw
        arc = (b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.com; s=a;\r\n\tb="
               + _base64.b64encode(_os.urandom(256)) + b"\r\n")
        for message in (signed, arc + signed):
            inline = extract_text_only(message, LIMITS)
            full = extract(message, LIMITS)
            if not full.attachments:  # (random signature bytes may be a file: rare)
                assert inline == full
