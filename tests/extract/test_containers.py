"""Containers: archives, compressed streams, Office/ODF documents, TNEF, PDF and S/MIME —
found, nested, and refused (encrypted, corrupt, unsupported) with the right reason."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
import zlib
from pathlib import Path

import extract_corpus as ec
import numpy as np
import pytest
from PIL import Image

from mailfilter.extract import archives, extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()


def attached(data: bytes, name: str | None, ctype: str = "application/octet-stream") -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"see attached\n"),
                                            ec.attachment(ctype, data, name)], "cb"))
    return extract(raw, LIMITS)


def found(ex: Extraction) -> dict[str, str]:
    return {a.mime_path: ec.sha(a.data) for a in ex.attachments}


def reasons(ex: Extraction) -> set[tuple[str, str]]:
    return {(u.mime_path, u.reason) for u in ex.unscannable}


# --- ZIP and the formats built on it ------------------------------------------------------


@pytest.mark.parametrize(
    "method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_zip_methods(method: int) -> None:
    a, b = ec.png(1), ec.jpeg(2)
    z = ec.zip_bytes({"a.png": a, "dir/": b"", "dir/b.jpg": b}, method)
    ex = attached(z, "x.zip", "application/zip")
    assert found(ex) == {"2/x.zip/a.png": ec.sha(a), "2/x.zip/dir/b.jpg": ec.sha(b)}
    assert {x.containers for x in ex.attachments} == {("application/zip",)}


@pytest.mark.parametrize(
    ("builder", "media_dir"),
    [
        ("docx", "word/media/"),
        ("xlsx", "xl/media/"),
        ("pptx", "ppt/media/"),
        ("odt", "Pictures/"),
    ],
)
def test_office_documents(builder: str, media_dir: str) -> None:
    img = ec.png(3)
    if builder == "odt":
        doc = ec.odt({"p.png": img})
        name = "p.png"
    else:
        doc = ec.zip_bytes({"[Content_Types].xml": b"<Types/>", f"{media_dir}image1.png": img})
        name = "image1.png"
    ex = attached(doc, f"report.{builder}", "application/vnd.openxmlformats-officedocument")
    assert found(ex) == {f"2/report.{builder}/{media_dir}{name}": ec.sha(img)}


def test_nested_zips_keep_the_chain() -> None:
    img = ec.gif(4)
    z = ec.zip_bytes({"l1.zip": ec.zip_bytes({"l2.zip": ec.zip_bytes({"deep.gif": img})})})
    ex = attached(z, "l0.zip")
    assert found(ex) == {"2/l0.zip/l1.zip/l2.zip/deep.gif": ec.sha(img)}
    assert ex.attachments[0].containers == ("application/zip",) * 3


def test_encrypted_zip_members() -> None:
    img = ec.png(5)
    z = ec.encrypted_flag_zip({"secret.png": img})
    ex = attached(z, "s.zip")
    assert found(ex) == {}
    assert reasons(ex) == {("2/s.zip", "encrypted-archive")}


def test_zip_with_some_encrypted_members() -> None:
    a = ec.png(6)
    z = ec.encrypted_flag_zip({"open.png": a, "locked.png": b"x" * 100}, only={"locked.png"})
    ex = attached(z, "m.zip")
    assert found(ex) == {"2/m.zip/open.png": ec.sha(a)}
    assert reasons(ex) == {("2/m.zip", "encrypted-archive")}


def test_zip_cut_off_inside_a_member_hands_on_what_is_there() -> None:
    """Cut off inside a member: the member up to the cut is walked (the image decoder then
    says `truncated`), the cut is a defect; bytes that are not there hide nothing."""
    img = ec.png(7)
    z = ec.zip_bytes({"a.png": img}, zipfile.ZIP_STORED)
    ex = attached(z[: len(z) // 2], "broken.zip")
    assert reasons(ex) == set()
    [member] = [a for a in ex.attachments if a.mime_path == "2/broken.zip/a.png"]
    assert img.startswith(member.data) and 0 < len(member.data) < len(img)
    assert any(d.startswith("zip-entry-cut-off") for d in ex.defects), ex.defects
    deflated = ec.zip_bytes({"a.png": img})
    ex = attached(deflated[: len(deflated) // 2], "broken.zip")
    assert reasons(ex) == set()
    assert any(d.startswith("zip-entry-cut-off") for d in ex.defects), ex.defects


def test_zip_cut_off_in_its_first_header_is_a_defect() -> None:
    z = ec.zip_bytes({"a.png": ec.png(7)})
    ex = attached(z[:16], "stub.zip")
    assert reasons(ex) == set()
    assert any(d.startswith("zip-cut-off") for d in ex.defects), ex.defects


def test_corrupt_zip_is_unscannable() -> None:
    z = bytearray(ec.zip_bytes({"a.png": ec.png(7), "b.png": ec.png(8)}, zipfile.ZIP_DEFLATED))
    at = z.index(b"PK\x01\x02")  # no directory, and each member's deflate data starts
    for start in (0, z.index(b"PK\x03\x04", 4)):  # with a block of the reserved type 3
        z[start + 35] = 0xFF
    ex = attached(bytes(z[:at]), "broken.zip")
    assert ("2/broken.zip", "corrupt-archive") in reasons(ex)


def test_zip_with_a_bad_crc_keeps_the_data() -> None:
    img = ec.png(8)
    crc = zlib.crc32(img).to_bytes(4, "little")
    z = ec.zip_bytes({"a.png": img}, zipfile.ZIP_STORED).replace(crc, b"\x00\x00\x00\x00")
    ex = attached(z, "c.zip")
    assert found(ex) == {"2/c.zip/a.png": ec.sha(img)}
    assert any(d.startswith("zip-bad-crc") for d in ex.defects)


def test_zip_with_a_prefix_declared_as_zip() -> None:
    img = ec.png(9)
    z = b"MZ self-extractor stub" * 20 + ec.zip_bytes({"a.png": img})
    ex = attached(z, "setup.zip", "application/zip")
    assert found(ex) == {"2/setup.zip/a.png": ec.sha(img)}


def test_something_merely_called_zip_is_not_unscannable() -> None:
    ex = attached(b"plain words, not an archive at all\n" * 10, "notes.zip")
    assert ex.unscannable == ()
    assert any(d.startswith("declared-container-unreadable") for d in ex.defects)


# --- TAR and compressed streams ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax", "v7"])
def test_tar_formats(fmt: str) -> None:
    import tarfile

    img = ec.png(10)
    out = io.BytesIO()
    formats = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT,
               "pax": tarfile.PAX_FORMAT, "v7": tarfile.USTAR_FORMAT}
    with tarfile.open(fileobj=out, mode="w", format=formats[fmt]) as tf:
        info = tarfile.TarInfo("pics/a.png")
        info.size = len(img)
        tf.addfile(info, io.BytesIO(img))
    data = out.getvalue()
    if fmt == "v7":  # no magic: only the header checksum says it is a tar
        header = bytearray(data[:512])
        header[257:265] = b"\x00" * 8
        header[148:156] = b" " * 8
        header[148:155] = f"{sum(header):06o}\x00".encode()
        data = bytes(header) + data[512:]
    ex = attached(data, None)
    assert found(ex) == {"2/pics/a.png": ec.sha(img)}


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_compressed_tars(kind: str) -> None:
    import bz2
    import lzma

    img = ec.jpeg(11)
    tar = ec.tar_bytes({"t.jpg": img})
    packed = {"gz": lambda d: ec.gzip_bytes(d), "bz2": bz2.compress, "xz": lzma.compress}[kind](tar)
    ex = attached(packed, f"pics.tar.{kind}")
    assert found(ex) == {f"2/pics.tar.{kind}/pics.tar/t.jpg": ec.sha(img)}
    chain = {"gz": "application/gzip", "bz2": "application/x-bzip2", "xz": "application/x-xz"}
    assert ex.attachments[0].containers == (chain[kind], "application/x-tar")


def test_gzip_member_name_comes_from_the_header() -> None:
    img = ec.png(12)
    ex = attached(ec.gzip_bytes(img, "original.png"), "download")
    assert found(ex) == {"2/download/original.png": ec.sha(img)}


def test_concatenated_gzip_streams_and_truncated_gzip() -> None:
    img = ec.png(13)
    half = len(img) // 2
    two = ec.gzip_bytes(img[:half]) + ec.gzip_bytes(img[half:])
    assert found(attached(two, "x.png.gz")) == {"2/x.png.gz/x.png": ec.sha(img)}
    cut = ec.gzip_bytes(img)[:-100]
    ex = attached(cut, "y.png.gz")
    assert list(found(ex)) == ["2/y.png.gz/y.png"]
    assert any(d.startswith("compressed-stream-truncated") for d in ex.defects)


def test_corrupt_gzip() -> None:
    ex = attached(b"\x1f\x8b\x08\x00" + b"\xff" * 200, "z.gz")
    assert reasons(ex) == {("2/z.gz", "corrupt-archive")}


def test_corrupt_zstd() -> None:  # zstd is read (libarchive): see test_more_containers.py
    ex = attached(b"\x28\xb5\x2f\xfd" + b"\x00" * 50, "x.zst")
    assert reasons(ex) == {("2/x.zst", "corrupt-archive")}


# --- 7z and RAR ---------------------------------------------------------------------------


def test_7z() -> None:
    a, b = ec.png(14), ec.gif(15)
    ex = attached(ec.sevenzip_bytes({"a.png": a, "d/b.gif": b}), "s.7z")
    assert found(ex) == {"2/s.7z/a.png": ec.sha(a), "2/s.7z/d/b.gif": ec.sha(b)}


def test_7z_with_password() -> None:
    ex = attached(ec.sevenzip_bytes({"a.png": ec.png(16)}, password="secret"), "p.7z")
    assert found(ex) == {}
    assert reasons(ex) == {("2/p.7z", "encrypted-archive")}


def test_corrupt_7z() -> None:
    data = ec.sevenzip_bytes({"a.png": ec.png(17)})
    ex = attached(data[:40], "c.7z")
    assert reasons(ex) == {("2/c.7z", "corrupt-archive")}


def test_rar_stored_members_need_no_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "rar_tool_available", lambda: False)
    a, b = ec.jpeg(18), ec.png(19)
    ex = attached(ec.rar4({"a.jpg": a, "sub/b.png": b}), "r.rar")
    assert found(ex) == {"2/r.rar/a.jpg": ec.sha(a), "2/r.rar/sub/b.png": ec.sha(b)}
    assert ex.attachments[0].containers == ("application/vnd.rar",)


def test_compressed_rar_without_a_tool_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "rar_tool_available", lambda: False)
    ex = attached(ec.rar4({"a.jpg": b"\x11" * 300}, method=0x33), "r.rar")
    assert reasons(ex) == {("2/r.rar", "unsupported-archive")}
    assert "libarchive-tools" in ex.unscannable[0].detail


def test_rar_with_password() -> None:
    ex = attached(ec.rar4({"a.jpg": ec.jpeg(20)}, password=True), "p.rar")
    assert reasons(ex) == {("2/p.rar", "encrypted-archive")}


def test_corrupt_rar() -> None:
    ex = attached(b"Rar!\x1a\x07\x00" + b"\x00" * 300, "c.rar")
    assert reasons(ex) == {("2/c.rar", "corrupt-archive")}


# --- TNEF ---------------------------------------------------------------------------------


def test_tnef_attachments() -> None:
    a, b = ec.png(21), ec.jpeg(22)
    ex = attached(ec.tnef([("holiday picture.png", a), ("b.jpg", b)]), "winmail.dat",
                  "application/ms-tnef")
    assert found(ex) == {"2/winmail.dat/holiday picture.png": ec.sha(a),
                         "2/winmail.dat/b.jpg": ec.sha(b)}
    assert {x.filename for x in ex.attachments} == {"holiday picture.png", "b.jpg"}


def test_tnef_data_only_in_mapi_properties_and_undeclared() -> None:
    img = ec.gif(23)
    ex = attached(ec.tnef([("only-prop.gif", img)], data_in_props=True), None)
    assert found(ex) == {"2/only-prop.gif": ec.sha(img)}
    assert ex.attachments[0].containers == ("application/ms-tnef",)


def test_truncated_tnef_keeps_what_is_there() -> None:
    a, b = ec.png(24), ec.png(25)
    data = ec.tnef([("a.png", a), ("b.png", b)])
    ex = attached(data[: data.index(b) + 100], "winmail.dat")
    assert found(ex)["2/winmail.dat/a.png"] == ec.sha(a)


def test_declared_tnef_that_is_not() -> None:
    ex = attached(b"not tnef at all" * 5, "winmail.dat", "application/ms-tnef")
    assert ex.unscannable == ()


# --- PDF ----------------------------------------------------------------------------------


def test_pdf_images_jpeg_passthrough_and_rebuilt_and_unused() -> None:
    j, hidden = ec.jpeg(26), ec.jpeg(27)
    pic = ec.picture(28, (33, 21))
    ex = attached(ec.pdf_with_images(j, pic, hidden), "d.pdf")
    got = found(ex)
    assert got["2/d.pdf/image-4.jpg"] == ec.sha(j)
    assert got["2/d.pdf/image-7.jpg"] == ec.sha(hidden)
    rebuilt = next(a for a in ex.attachments if a.mime_path == "2/d.pdf/image-5.png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rebuilt.data))), np.asarray(pic))
    assert rebuilt.content_type == "image/png"


@pytest.mark.parametrize("space", ["gray", "indexed", "bilevel", "cmyk", "icc"])
def test_pdf_colour_spaces(space: str) -> None:
    pic = ec.picture(29, (24, 16))
    if space == "gray":
        src = pic.convert("L")
        params, raw = "/ColorSpace /DeviceGray /BitsPerComponent 8", src.tobytes()
    elif space == "indexed":
        src = pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal = bytes(src.getpalette()[: 16 * 3])  # type: ignore[index]
        params = f"/ColorSpace [/Indexed /DeviceRGB 15 <{pal.hex()}>] /BitsPerComponent 8"
        raw = src.tobytes()
    elif space == "bilevel":
        src = pic.convert("1")
        params, raw = "/ColorSpace /DeviceGray /BitsPerComponent 1", src.tobytes()
    elif space == "cmyk":
        src = pic.convert("CMYK")
        params, raw = "/ColorSpace /DeviceCMYK /BitsPerComponent 8", src.tobytes()
    else:
        src = pic
        params, raw = "/ColorSpace [/ICCBased 3 0 R] /BitsPerComponent 8", pic.tobytes()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
        ec.pdf_stream("/N 3", b"icc-profile-bytes"),
        ec.pdf_stream(f"/Type /XObject /Subtype /Image /Width 24 /Height 16 {params} "
                      "/Filter /FlateDecode", zlib.compress(raw)),
    ]
    ex = attached(ec.pdf(objects), "c.pdf")
    assert list(found(ex)) == ["2/c.pdf/image-4.png"]
    out = Image.open(io.BytesIO(ex.attachments[0].data))
    expected = src.convert("RGB") if space in ("indexed", "cmyk") else src
    assert np.array_equal(np.asarray(out.convert(expected.mode)), np.asarray(expected))


def test_pdf_embedded_file_is_walked() -> None:
    img = ec.png(30)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
        ec.pdf_stream("/Type /EmbeddedFile /Subtype /application#2Fzip /Filter /FlateDecode",
                      zlib.compress(ec.zip_bytes({"in-pdf.png": img}))),
    ]
    ex = attached(ec.pdf(objects), "e.pdf")
    assert found(ex) == {"2/e.pdf/embedded-3/in-pdf.png": ec.sha(img)}
    assert ex.attachments[0].containers == ("application/pdf", "application/zip")


def _encrypted_pdf(user: str, owner: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    src = PdfReader(io.BytesIO(ec.pdf_with_images(ec.jpeg(31), ec.picture(32, (16, 16)))))
    writer = PdfWriter()
    for page in src.pages:
        writer.add_page(page)
    writer.encrypt(user_password=user, owner_password=owner, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_with_a_user_password_is_encrypted_archive() -> None:
    ex = attached(_encrypted_pdf("secret", "owner"), "locked.pdf")
    assert reasons(ex) == {("2/locked.pdf", "encrypted-archive")}


def test_pdf_with_only_an_owner_password_is_read() -> None:
    ex = attached(_encrypted_pdf("", "owner"), "restricted.pdf")
    assert ex.unscannable == ()
    assert ec.sha(ec.jpeg(31)) in found(ex).values()


def test_corrupt_pdf() -> None:
    ex = attached(b"%PDF-1.4\n" + b"\x00garbage" * 50, "bad.pdf")
    assert reasons(ex) == {("2/bad.pdf", "corrupt-archive")} or not ex.attachments


# --- S/MIME -------------------------------------------------------------------------------


@pytest.mark.parametrize("ber", [False, True])
def test_opaque_signed_data(ber: bool) -> None:
    img = ec.jpeg(33)
    inner = ec.crlf(ec.multipart("mixed", [ec.part("text/plain", b"signed\n"),
                                           ec.attachment("image/jpeg", img, "o.jpg")], "ob"))
    raw = ec.message(ec.attachment("application/pkcs7-mime; smime-type=signed-data",
                                   ec.cms_signed(inner, ber=ber), "smime.p7m"))
    ex = extract(raw, LIMITS)
    assert found(ex) == {"1.2": ec.sha(img)}
    assert ex.attachments[0].containers == ("application/pkcs7-mime",)


def test_compressed_data() -> None:
    img = ec.png(34)
    inner = ec.crlf(ec.attachment("image/png", img, "c.png"))
    raw = ec.message(ec.attachment("application/pkcs7-mime; smime-type=compressed-data",
                                   ec.cms_compressed(inner), "smime.p7z"))
    assert found(extract(raw, LIMITS)) == {"1.1": ec.sha(img)}


def test_p7m_wrapping_a_plain_file() -> None:
    img = ec.png(35)
    ex = attached(ec.cms_signed(img), "scan.png.p7m", "application/pkcs7-mime")
    assert found(ex) == {"2/scan.png": ec.sha(img)}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_real_openssl_smime_sign_and_encrypt(tmp_path: Path) -> None:
    img = ec.png(36)
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=test", "-days", "1"],
        check=True, capture_output=True,
    )
    content = tmp_path / "content.eml"
    content.write_bytes(ec.crlf(ec.multipart("mixed", [ec.part("text/plain", b"hi\n"),
                                                       ec.attachment("image/png", img, "p.png")],
                                             "sb")))
    signed = subprocess.run(
        ["openssl", "smime", "-sign", "-nodetach", "-in", str(content), "-signer", str(cert),
         "-inkey", str(key), "-subject", "signed"],
        check=True, capture_output=True,
    ).stdout
    ex = extract(signed, LIMITS)
    assert found(ex) == {"1.2": ec.sha(img)}
    detached = subprocess.run(
        ["openssl", "smime", "-sign", "-in", str(content), "-signer", str(cert),
         "-inkey", str(key)],
        check=True, capture_output=True,
    ).stdout
    assert found(extract(detached, LIMITS)) == {"1.2": ec.sha(img)}
    encrypted = subprocess.run(
        ["openssl", "smime", "-encrypt", "-aes256", "-in", str(content), str(cert)],
        check=True, capture_output=True,
    ).stdout
    ex = extract(encrypted, LIMITS)
    assert found(ex) == {}
    assert reasons(ex) == {("1", "encrypted-message")}


def test_signed_data_labelled_as_enveloped_is_still_opened() -> None:
    img = ec.png(37)
    inner = ec.crlf(ec.attachment("image/png", img, "x.png"))
    raw = ec.message(ec.attachment("application/pkcs7-mime; smime-type=enveloped-data",
                                   ec.cms_signed(inner), "smime.p7m"))
    assert found(extract(raw, LIMITS)) == {"1.1": ec.sha(img)}


@pytest.mark.parametrize("ber", [False, True])
def test_signed_data_cut_off_after_its_content(ber: bool) -> None:
    """A .p7s/.p7m cut off in its certificates (the libraries' fixtures hold such stubs):
    the content before the cut is walked, the cut is a defect, nothing is unscannable."""
    img = ec.png(38)
    data = ec.cms_signed(img, ber=ber)
    # Cut after the content, inside what follows it (the signer infos; BER: the
    # end-of-contents octets).
    cut = data[:-4] if ber else data[:-1]
    ex = attached(cut, "scan.png.p7m", "application/pkcs7-mime")
    assert found(ex) == {"2/scan.png": ec.sha(img)}
    assert reasons(ex) == set()
    assert any(d.startswith("cms-cut-off") for d in ex.defects), ex.defects


def test_signed_data_cut_off_inside_its_content_walks_what_is_there() -> None:
    """Cut inside the content: the picture up to the cut is handed on (its decoder reports
    it truncated), so the cut is not a way to hide it."""
    img = ec.jpeg(39)
    data = ec.cms_signed(img)
    cut = data[: data.index(img) + len(img) // 2]
    ex = attached(cut, "scan.jpg.p7m", "application/pkcs7-mime")
    assert any(a.data == img[: len(img) // 2] for a in ex.attachments)


def test_garbage_labelled_cms_stays_corrupt() -> None:
    ex = attached(b"\x30\x80" + b"\x07" * 60, "x.p7m", "application/pkcs7-mime")
    assert ex.unscannable or ex.defects
