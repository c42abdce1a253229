"""Whatever the bytes, `extract` returns: mutated, truncated and spliced versions of real
messages never raise and never run long."""

from __future__ import annotations

import random
import time

import extract_corpus as ec
import pytest
from test_corpus import CORPUS

from mailfilter.extract import extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings(max_decoded_bytes=20_000_000)


def _samples() -> list[bytes]:
    raw = CORPUS[0]
    img = ec.png(1)
    return [
        raw,
        ec.crlf(raw),
        ec.message(ec.attachment("application/zip", ec.zip_bytes({"a.png": img}), "z.zip")),
        ec.message(ec.attachment("application/pdf", ec.pdf_with_images(ec.jpeg(2),
                                                                       ec.picture(3)), "d.pdf")),
        ec.message(ec.attachment("application/ms-tnef", ec.tnef([("t.png", img)]), "winmail.dat")),
        ec.message(ec.attachment("application/x-7z-compressed", ec.sevenzip_bytes({"a": img}))),
        ec.message(ec.attachment("application/pkcs7-mime", ec.cms_signed(b"Content-Type: "
                                                                         b"text/plain\r\n\r\nx"))),
    ]


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(max(1, len(data)))
        if kind == 0:  # flip bytes
            for i in range(pos, min(len(data), pos + rng.randint(1, 8))):
                data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del data[pos:]
        elif kind == 2:  # delete a stretch
            del data[pos : pos + rng.randint(1, 500)]
        elif kind == 3:  # duplicate a stretch
            data[pos:pos] = data[pos : pos + rng.randint(1, 2000)]
        elif kind == 4:  # insert junk
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 50)))
        else:  # insert structure
            data[pos:pos] = rng.choice([b"\n--outer-b\n", b"\n--outer-b--\n", b"\n\n", b"=",
                                        b"Content-Type: multipart/mixed\n", b"\x00", b"PK\x03\x04",
                                        b"begin 644 x\n", b"data:image/png;base64,"])
    return bytes(data)


@pytest.mark.parametrize("seed", range(12))
def test_mutated_messages_never_raise(seed: int) -> None:
    rng = random.Random(seed)
    for raw in _samples():
        for _ in range(4):
            mutated = _mutate(rng, raw)
            start = time.perf_counter()
            ex = extract(mutated, LIMITS)
            assert isinstance(ex, Extraction)
            assert time.perf_counter() - start < 5.0
