"""A fuzz target for the extraction stage (hypothesis): generated MIME trees (multiparts,
forwarded messages, every transfer encoding, archives of them, images and garbage as
leaves), then mutated bytes (flips, cuts, splices, stray delimiters). For every input
`extract` must return (never raise), within a time bound, with bounded output (at most
`max_images` payloads, at most `max_decoded_bytes` decoded), and say "unscannable" only
with one of its documented reasons. An unexpected exception inside the walk shows as the
reason `parse-error`: it is documented as a last resort, so here it fails the test too.

Bounded for CI: FUZZ_EXAMPLES examples (MAILFILTER_FUZZ_EXAMPLES to run more), a few
tens of seconds. A failure prints the input that reproduces it."""

from __future__ import annotations

import base64
import binascii
import os
import quopri
import struct
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailfilter.extract import extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "extract"))
import extract_corpus as ec

FUZZ_EXAMPLES = int(os.environ.get("MAILFILTER_FUZZ_EXAMPLES", "4000"))
LIMITS = ExtractSettings(max_depth=6, max_parts=200, max_decoded_bytes=4_000_000,
                         max_archive_members=100, max_images=40)
TIME_BOUND = 5.0
# The reasons `extract` documents, less parse-error (an exception inside the walk).
DOCUMENTED = {
    "max-depth", "max-parts", "max-decoded-bytes", "max-archive-members",
    "max-expansion-ratio", "max-images", "zip-bomb", "encrypted-archive",
    "encrypted-message", "corrupt-archive", "unsupported-archive",
    "unsupported-image-encoding", "partial-message", "pages-past-limit", "max-readings",
}


def _seeds() -> list[bytes]:
    img = ec.png(1)
    return [
        img, ec.jpeg(2), ec.gif(3), ec.webp(4), ec.bmp(5), ec.tiff(6), ec.ico(7),
        ec.zip_bytes({"a.png": img, "b.jpg": ec.jpeg(8)}),
        ec.zip_bytes({"in.zip": ec.zip_bytes({"c.gif": ec.gif(9)})}),
        ec.tar_bytes({"d.png": img}), ec.gzip_bytes(img, "e.png"),
        ec.sevenzip_bytes({"f.png": img}), ec.tnef([("t.png", img)]),
        ec.pdf_with_images(ec.jpeg(10), ec.picture(11)),
        ec.cms_signed(b"Content-Type: image/png\r\n\r\n" + img),
        ec.rar4({"r.png": img}),
        ec.zeros_deflate(1 << 20)[0],
        *_audio_seeds(img),
    ]


def _audio_seeds(img: bytes) -> list[bytes]:
    """Cover art (extract/audio.py): an unsynchronised ID3v2.3 tag with a compressed APIC
    frame, a FLAC PICTURE block, and an Ogg Opus comment split over pages."""
    apic = b"\0image/png\0\x03\0" + img
    packed = struct.pack(">I", len(apic)) + zlib.compress(apic)
    frames = (b"APIC" + struct.pack(">IH", len(packed), 0x0080) + packed).replace(
        b"\xff", b"\xff\x00")
    size = len(frames)
    id3 = (b"ID3\x03\x00\x80" + bytes((size >> s) & 0x7F for s in (21, 14, 7, 0)) + frames
           + b"\xff\xfb\x90\x64" + bytes(100))
    picture = (struct.pack(">II", 3, 9) + b"image/png" + struct.pack(">I", 0)
               + struct.pack(">IIIII", 1, 1, 24, 0, len(img)) + img)
    flac = (b"fLaC\x00\x00\x00\x22" + bytes(34) + b"\x86" + len(picture).to_bytes(3, "big")
            + picture)
    comment = b"METADATA_BLOCK_PICTURE=" + base64.b64encode(picture)
    tags = (b"OpusTags\x04\x00\x00\x00test\x01\x00\x00\x00" + struct.pack("<I", len(comment))
            + comment)
    ogg = b""
    for seq, (flags, chunk) in enumerate(
        [(0x02, b"OpusHead\x01\x01" + bytes(9))]
        + [(0x01 if at else 0, tags[at : at + 1020]) for at in range(0, len(tags), 1020)]
    ):
        laces = [255] * (len(chunk) // 255) + ([len(chunk) % 255] if len(chunk) % 1020 else [])
        ogg += (b"OggS\x00" + bytes([flags]) + struct.pack("<qII", 0, 1, seq) + bytes(4)
                + bytes([len(laces)]) + bytes(laces) + chunk)
    return [id3, flac, ogg]


SEEDS = _seeds()


STRUCTURE = [
    b"\r\n--b0\r\n", b"\r\n--b1--\r\n", b"\r\n\r\n", b"=\r\n", b"\x00", b"PK\x03\x04",
    b"PK\x05\x06", b"begin 644 x.png\r\n", b"\r\n.\r\n",
    b"Content-Type: multipart/mixed; boundary=b0\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"data:image/png;base64,",
]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, max(0, len(buf))))
        if op == 0 and buf:  # flip a byte
            at = min(pos, len(buf) - 1)
            buf[at] ^= draw(st.integers(1, 255))
        elif op == 1:  # cut
            del buf[pos:]
        elif op == 2:  # delete a stretch
            del buf[pos:pos + draw(st.integers(1, 300))]
        elif op == 3:  # duplicate a stretch
            buf[pos:pos] = buf[pos:pos + draw(st.integers(1, 500))]
        else:  # insert structure or junk
            buf[pos:pos] = draw(st.sampled_from(STRUCTURE) if draw(st.booleans())
                                else st.binary(max_size=40))
    return bytes(buf)


payloads = st.one_of(
    st.sampled_from(SEEDS),
    st.sampled_from(SEEDS).flatmap(mutated),
    st.binary(max_size=600),
)

CTYPES = ["image/png", "image/jpeg", "application/octet-stream", "application/zip",
          "application/x-tar", "application/gzip", "application/pdf",
          "application/ms-tnef", "application/pkcs7-mime", "text/plain", "text/html",
          "message/rfc822", "application/x-7z-compressed", "image/x-unknown"]


def _encode(payload: bytes, cte: str | None) -> bytes:
    if cte == "base64":
        return base64.encodebytes(payload).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return quopri.encodestring(payload).replace(b"\n", b"\r\n")
    if cte == "x-uuencode":
        lines = [binascii.b2a_uu(payload[i:i + 45]) for i in range(0, len(payload), 45)]
        return b"begin 644 u.bin\r\n" + b"".join(lines).replace(b"\n", b"\r\n") + b"`\r\nend\r\n"
    return payload


@st.composite
def leaves(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(CTYPES))
    cte = draw(st.sampled_from([None, "base64", "quoted-printable", "7bit", "8bit", "binary",
                                "x-uuencode", "bogus"]))
    payload = draw(payloads)
    if ctype == "text/html" and draw(st.booleans()):
        payload = (b'<img src="data:image/png;base64,' + base64.b64encode(payload) + b'">')
    head = f"Content-Type: {ctype}".encode()
    if draw(st.booleans()):
        head += f'; name="{draw(st.sampled_from(["a.png", "x.zip", "m.eml", "", "z"]))}"'.encode()
    head += b"\r\n"
    if cte is not None:
        head += f"Content-Transfer-Encoding: {cte}\r\n".encode()
    return head + b"\r\n" + _encode(payload, cte)


@st.composite
def multiparts(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    boundary = draw(st.sampled_from(["b0", "b1", "=_x", "a b", ""]))
    parts = draw(st.lists(children, min_size=0, max_size=4))
    kind = draw(st.sampled_from(["mixed", "alternative", "related", "signed", "digest",
                                 "encrypted", "report"]))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    if draw(st.booleans()):
        body += b"--" + boundary.encode() + b"--\r\n"  # (sometimes missing)
    return (f'Content-Type: multipart/{kind}; boundary="{boundary}"\r\n\r\n'.encode()
            + draw(st.sampled_from([b"", b"preamble\r\n"])) + body)


@st.composite
def containers(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    inner = draw(children)
    how = draw(st.sampled_from(["rfc822", "zip", "gzip", "tar"]))
    if how == "rfc822":
        return (b"Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
                + inner)
    packed = {"zip": lambda d: ec.zip_bytes({"m.eml": d, "p.png": ec.png(12)}),
              "gzip": lambda d: ec.gzip_bytes(d, "m.eml"),
              "tar": lambda d: ec.tar_bytes({"m.eml": d})}[how](inner)
    return (b"Content-Type: application/octet-stream; name=\"c\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(packed).replace(b"\n", b"\r\n"))


entities = st.recursive(leaves(), lambda children: st.one_of(
    multiparts(children), containers(children)), max_leaves=10)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    raw = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: fuzz\r\nMIME-Version: 1.0\r\n"
           + draw(entities))
    raw = draw(mutated(raw)) if draw(st.booleans()) else raw
    if draw(st.booleans()):
        raw = raw.replace(b"\r\n", b"\n")
    return raw


def _check(raw: bytes) -> None:
    started = time.perf_counter()
    ex = extract(raw, LIMITS)
    elapsed = time.perf_counter() - started
    assert isinstance(ex, Extraction)
    assert elapsed < TIME_BOUND, f"{elapsed:.2f}s"
    assert len(ex.attachments) <= LIMITS.max_images
    assert sum(len(a.data) for a in ex.attachments) <= LIMITS.max_decoded_bytes
    assert all(isinstance(a.data, bytes) and a.mime_path for a in ex.attachments)
    odd = [(u.reason, u.mime_path, u.detail) for u in ex.unscannable
           if u.reason not in DOCUMENTED]
    assert not odd, odd


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=TIME_BOUND * 2),
                database=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


@pytest.mark.slow  # 4,000 generated messages: about a minute on two cores
@FUZZ
@given(messages())
def test_extract_generated_messages(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(st.binary(max_size=4000))
def test_extract_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)
