"""Every limit of ExtractSettings has a clear outcome, and hostile messages (a 1 GB zip bomb,
100 000 parts, 50 levels of nesting) finish fast with the right reason and bounded work."""

from __future__ import annotations

import functools
import struct
import time
import tracemalloc
import zlib

import extract_corpus as ec
import pytest

from mailfilter.extract import archives, extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

GiB = 1 << 30
FAST = 5.0  # seconds: loose, the real figures are far lower


def found(ex: Extraction) -> dict[str, str]:
    return {a.mime_path: ec.sha(a.data) for a in ex.attachments}


def reasons(ex: Extraction) -> set[tuple[str, str]]:
    return {(u.mime_path, u.reason) for u in ex.unscannable}


def timed(raw: bytes, limits: ExtractSettings | None = None) -> tuple[Extraction, float]:
    start = time.perf_counter()
    ex = extract(raw, limits or ExtractSettings())
    return ex, time.perf_counter() - start


def with_attachment(data: bytes, name: str, ctype: str = "application/octet-stream") -> bytes:
    return ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                             ec.attachment(ctype, data, name)], "lb"))


@functools.cache
def gib_of_zeros() -> tuple[bytes, int]:
    return ec.zeros_deflate(GiB)


# --- the hostile three --------------------------------------------------------------------


def test_one_gigabyte_zip_is_refused_before_expanding() -> None:
    stream, crc = gib_of_zeros()
    assert len(stream) < 2 << 20  # about 1 MB on the wire
    img = ec.png(1)
    bomb = ec.raw_zip([("zeros.bin", stream, crc, GiB, len(stream))])
    raw = with_attachment(bomb, "bomb.zip")
    extra = ec.attachment("image/png", img, "ok.png")
    raw = raw.replace(b"--lb--", b"--lb\n" + extra + b"\n--lb--")
    tracemalloc.start()
    ex, seconds = timed(raw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert reasons(ex) == {("2/bomb.zip", "max-expansion-ratio")}
    assert found(ex) == {"3": ec.sha(img)}  # the rest of the message is still scanned
    assert seconds < FAST
    assert peak < 64 << 20  # nothing near a gigabyte was ever held


def test_zip_whose_members_each_look_small_but_add_up_to_a_gigabyte() -> None:
    one_mib = zlib.compress(b"\x00" * (1 << 20))[2:-4]
    crc = zlib.crc32(b"\x00" * (1 << 20))
    entries = [(f"f{n}.bin", one_mib, crc, 1 << 20, len(one_mib)) for n in range(1024)]
    ex, seconds = timed(with_attachment(ec.raw_zip(entries), "many.zip"))
    assert reasons(ex) == {("2/many.zip", "max-expansion-ratio")}
    assert seconds < FAST


def test_zip_member_whose_declared_size_lies_is_cut_at_the_declared_size() -> None:
    stream, crc = gib_of_zeros()
    bomb = ec.raw_zip([("liar.bin", stream, crc, 4096, len(stream))])
    ex, seconds = timed(with_attachment(bomb, "liar.zip"))
    assert seconds < FAST
    assert ex.attachments == ()  # zeros are no image; nothing past 4096 bytes was expanded
    assert not [u for u in ex.unscannable if u.reason == "parse-error"]


def test_gzip_bomb() -> None:
    stream, crc = gib_of_zeros()
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03" + stream + struct.pack("<II", crc, GiB % 2**32)
    ex, seconds = timed(with_attachment(gz, "zeros.gz"))
    assert reasons(ex) == {("2/zeros.gz", "max-expansion-ratio")}
    assert seconds < FAST


def test_many_gzip_bombs_in_one_message_share_one_budget() -> None:
    stream, crc = gib_of_zeros()
    gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03" + stream + struct.pack("<II", crc, 0)
    raw = ec.message(ec.multipart("mixed", [ec.attachment("application/gzip", gz, f"{n}.gz")
                                            for n in range(10)], "gb"))
    ex, seconds = timed(raw)
    got = [(u.mime_path, u.reason) for u in ex.unscannable]
    assert len(got) == 10
    assert got[0] == ("1/0.gz", "max-expansion-ratio")
    assert {reason for _, reason in got[2:]} == {"max-decoded-bytes"}
    assert seconds < FAST


def test_hundred_thousand_parts() -> None:
    img = ec.png(2)
    body = b"".join(b"\n--hb\nContent-Type: text/plain\n\npart %d" % n for n in range(100_000))
    raw = ec.message(b'Content-Type: multipart/mixed; boundary="hb"\n\npreamble' + body
                     + b"\n--hb\n" + ec.attachment("image/png", img, "last.png") + b"\n--hb--\n")
    assert len(raw) > 3_000_000
    ex, seconds = timed(raw)
    assert reasons(ex) == {("1000", "max-parts")}
    assert ex.parts == 1000  # the root and 999 parts: the walk stopped at the limit
    assert ex.attachments == ()
    assert seconds < FAST


@pytest.mark.parametrize("eol", ["LF", "CRLF"])
def test_fifty_nested_forwards(eol: str) -> None:
    img = ec.jpeg(3)
    raw = ec.message(ec.attachment("image/jpeg", img, "bottom.jpg"))
    for level in range(50):
        raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"fwd %d\n" % level),
                                                ec.rfc822(raw)], f"b{level}"))
    if eol == "CRLF":
        raw = ec.crlf(raw)
    ex, seconds = timed(raw)
    # ten forwarded messages are opened; the eleventh is at 2.2.2. ... (11 times) and refused
    assert reasons(ex) == {(".".join(["2"] * 11), "max-depth")}
    assert ex.attachments == ()
    assert ex.parts == 1 + 10 * 3 + 2
    assert seconds < FAST


def test_fifty_nested_multiparts() -> None:
    img = ec.png(4)
    entity = ec.attachment("image/png", img, "deep.png")
    for level in range(50):
        entity = ec.multipart("mixed", [entity], f"m{level}")
    ex, seconds = timed(ec.message(entity))
    assert reasons(ex) == {(".".join(["1"] * 10), "max-depth")}
    assert seconds < FAST


def test_fifty_nested_zips() -> None:
    img = ec.png(5)
    data = img
    name = "deep.png"
    for level in range(50):
        data = ec.zip_bytes({name: data})
        name = f"z{level}.zip"
    ex, seconds = timed(with_attachment(data, name))
    [(path, reason)] = reasons(ex)
    assert reason == "max-depth"
    assert path.count(".zip") == 11  # the tenth zip's member, the eleventh zip, is not opened
    assert seconds < FAST


# --- each limit ---------------------------------------------------------------------------


def test_max_depth_allows_exactly_that_many_containers() -> None:
    img = ec.png(6)
    raw = ec.message(ec.attachment("image/png", img, "p.png"))
    for _ in range(3):
        raw = ec.message(ec.rfc822(raw))
    assert found(extract(raw, ExtractSettings(max_depth=3))) == {"1.1.1.1": ec.sha(img)}
    ex = extract(raw, ExtractSettings(max_depth=2))
    assert found(ex) == {}
    assert reasons(ex) == {("1.1.1", "max-depth")}


def test_max_parts() -> None:
    imgs = [ec.png(n) for n in range(10, 15)]
    raw = ec.message(ec.multipart("mixed", [ec.attachment("image/png", i) for i in imgs], "pb"))
    ex = extract(raw, ExtractSettings(max_parts=4))
    assert found(ex) == {str(n + 1): ec.sha(imgs[n]) for n in range(3)}
    assert reasons(ex) == {("4", "max-parts")}
    assert ex.parts == 4


def test_max_decoded_bytes() -> None:
    small, big = ec.png(16), ec.encode(ec.picture(17, (400, 300)), "BMP")
    raw = ec.message(ec.multipart("mixed", [ec.attachment("image/bmp", big, "big.bmp"),
                                            ec.attachment("image/png", small, "s.png")], "db"))
    ex = extract(raw, ExtractSettings(max_decoded_bytes=len(big) // 2))
    assert found(ex) == {"2": ec.sha(small)}
    assert reasons(ex) == {("1", "max-decoded-bytes")}


def test_max_decoded_bytes_inside_archives() -> None:
    a, b = ec.png(18), ec.png(19)
    z = ec.zip_bytes({"a.png": a, "b.png": b}, 0)
    raw = with_attachment(z, "z.zip")
    # the text part, the zip and a.png fit; b.png does not
    ex = extract(raw, ExtractSettings(max_decoded_bytes=2 + len(z) + len(a) + 100))
    assert found(ex) == {"2/z.zip/a.png": ec.sha(a)}
    assert reasons(ex) == {("2/z.zip/b.png", "max-decoded-bytes")}


def test_max_archive_members() -> None:
    imgs = {f"{n}.png": ec.png(20 + n) for n in range(6)}
    raw = with_attachment(ec.zip_bytes(imgs), "m.zip")
    ex = extract(raw, ExtractSettings(max_archive_members=4))
    assert set(found(ex)) == {f"2/m.zip/{n}.png" for n in range(4)}
    assert reasons(ex) == {("2/m.zip", "max-archive-members")}


def test_max_expansion_ratio_per_member() -> None:
    img = ec.png(27)
    z = ec.zip_bytes({"zeros.bin": b"\x00" * (8 << 20), "ok.png": img})
    ex = extract(with_attachment(z, "r.zip"), ExtractSettings(max_expansion_ratio=1000))
    assert found(ex) == {"2/r.zip/ok.png": ec.sha(img)}
    assert reasons(ex) == {("2/r.zip/zeros.bin", "max-expansion-ratio")}


def test_max_images_stops_the_walk() -> None:
    imgs = [ec.png(n) for n in range(30, 36)]
    raw = ec.message(ec.multipart("mixed", [ec.attachment("image/png", i) for i in imgs], "ib"))
    ex = extract(raw, ExtractSettings(max_images=3))
    assert found(ex) == {str(n + 1): ec.sha(imgs[n]) for n in range(3)}
    assert reasons(ex) == {("4", "max-images")}
    assert ex.parts == 5  # the root and parts 1-4: nothing after the limit was walked


def test_many_uuencode_begin_lines_are_bounded() -> None:
    text = b"begin 644 x.gif\nM" + b"\n" + b"begin 644 y.gif\n" * 200_000
    ex, seconds = timed(ec.message(ec.part("text/plain", text)))
    assert seconds < FAST
    assert ("1", "max-archive-members") in reasons(ex)


# --- containment ----------------------------------------------------------------------------


def test_an_unexpected_error_in_a_container_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(archives, "zip_members", explode)
    img = ec.png(40)
    raw = ec.message(ec.multipart("mixed", [
        ec.attachment("application/zip", ec.zip_bytes({"a.png": ec.png(41)}), "z.zip"),
        ec.attachment("image/png", img, "after.png"),
    ], "xb"))
    ex = extract(raw, ExtractSettings())
    assert found(ex) == {"2": ec.sha(img)}
    [u] = ex.unscannable
    assert (u.mime_path, u.reason) == ("1/z.zip", "parse-error")
    assert "boom" in u.detail


def test_an_unexpected_error_in_a_generator_keeps_what_it_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = archives.zip_members

    def half(ctx, node, quiet=False):  # type: ignore[no-untyped-def]
        gen = real(ctx, node, quiet)
        yield next(gen)
        raise ValueError("second member broke")

    monkeypatch.setattr(archives, "zip_members", half)
    a, b = ec.png(42), ec.png(43)
    ex = extract(with_attachment(ec.zip_bytes({"a.png": a, "b.png": b}), "h.zip"),
                 ExtractSettings())
    assert found(ex) == {"2/h.zip/a.png": ec.sha(a)}
    assert reasons(ex) == {("2/h.zip", "parse-error")}


def test_zip_with_a_huge_directory_is_refused_unread() -> None:
    entries = [(f"{n}", b"", 0, 0, 0) for n in range(60_000)]
    ex, seconds = timed(with_attachment(ec.raw_zip(entries, method=0), "many.zip"))
    assert reasons(ex) == {("2/many.zip", "max-archive-members")}
    assert "zip directory" in ex.unscannable[0].detail
    assert seconds < 1.0


def test_pdfs_with_many_objects_share_one_allowance() -> None:
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    objects += [ec.pdf_stream("/Type /XObject /Subtype /Form", b"q Q") for _ in range(6000)]
    doc = ec.pdf(objects)
    raw = ec.message(ec.multipart("mixed", [ec.attachment("application/pdf", doc, f"{n}.pdf")
                                            for n in range(4)], "pb"))
    ex, seconds = timed(raw)
    assert reasons(ex) == {("2/1.pdf", "max-parts"), ("3/2.pdf", "max-parts"),
                           ("4/3.pdf", "max-parts")}
    assert seconds < FAST
