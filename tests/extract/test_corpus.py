"""One message with an image in every kind of place the extractor knows: it must find all of
them, with the right MIME paths and container chains, and nothing else, with LF or CRLF."""

from __future__ import annotations

import io

import extract_corpus as ec
import numpy as np
import pytest
from PIL import Image

from mailfilter.extract import extract
from mailfilter.settings import ExtractSettings

ZIP, TAR, GZ, SZ, RAR = (
    "application/zip", "application/x-tar", "application/gzip",
    "application/x-7z-compressed", "application/vnd.rar",
)
TNEF, PDF = "application/ms-tnef", "application/pdf"
P7, MSG = "application/pkcs7-mime", "message/rfc822"


def build_corpus() -> tuple[bytes, set[tuple[str, str, tuple[str, ...]]], Image.Image]:
    img = {n: f(n) for n, f in enumerate(
        [ec.jpeg, ec.png, ec.gif, ec.webp, ec.bmp, ec.tiff, ec.png, ec.jpeg, ec.png, ec.jpeg,
         ec.png, ec.jpeg, ec.png, ec.gif, ec.jpeg, ec.png, ec.png, ec.jpeg, ec.png, ec.png,
         ec.jpeg, ec.png, ec.gif, ec.png, ec.jpeg, ec.png, ec.jpeg, ec.png],
        start=1,
    )}
    expected: set[tuple[str, str, tuple[str, ...]]] = set()

    def want(path: str, n: int, *containers: str) -> None:
        expected.add((path, ec.sha(img[n]), containers))

    # 1: alternative: plain text with a uuencoded GIF; related HTML with a data: URI and a cid image
    text = b"Hello,\n\nthe picture:\n\n" + ec.uu_block(img[3], "uu.gif") + b"\nbye\n"
    html = (
        b'<html><body><p>inline: <img src="cid:img1@x"></p><p>pasted: <img src="data:image/png;'
        b"base64," + ec.b64(img[2], width=10_000).strip() + b'"></p></body></html>\n'
    )
    alternative = ec.multipart("alternative", [
        ec.part("text/plain; charset=utf-8", text, cte="7bit"),
        ec.multipart("related", [
            ec.part("text/html; charset=utf-8", ec.qp(html), cte="quoted-printable"),
            ec.attachment("image/png", img[1], "inline.png", disposition="inline",
                          headers=("Content-ID: <img1@x>",)),
        ], "rel-b"),
    ], "alt-b")
    want("1.1/uu.gif", 3, "text/plain")
    want("1.2.1/data-uri-1", 2, "text/html")
    want("1.2.2", 1)

    parts = [alternative]
    parts.append(ec.attachment("image/jpeg", img[4], "photo.jpg"))  # 2
    want("2", 4)
    parts.append(ec.attachment("application/octet-stream", img[5]))  # 3: no name, WebP
    want("3", 5)
    parts.append(ec.attachment('text/plain; name="notes.txt"', img[6]))  # 4: BMP as text
    want("4", 6)

    # 5: a zip with a folder, a zip inside, an OOXML document and an ODF document
    photos = ec.zip_bytes({
        "a.png": img[7],
        "sub/b.jpg": img[8],
        "inner.zip": ec.zip_bytes({"c.tiff": ec.tiff(9)}),
        "report.docx": ec.docx({"image1.png": img[10]}),
        "slides.odt": ec.odt({"pic.jpg": img[11]}),
    })
    img[9] = ec.tiff(9)
    parts.append(ec.attachment("application/zip", photos, "photos.zip"))
    want("5/photos.zip/a.png", 7, ZIP)
    want("5/photos.zip/sub/b.jpg", 8, ZIP)
    want("5/photos.zip/inner.zip/c.tiff", 9, ZIP, ZIP)
    want("5/photos.zip/report.docx/word/media/image1.png", 10, ZIP, ZIP)
    want("5/photos.zip/slides.odt/Pictures/pic.jpg", 11, ZIP, ZIP)

    parts.append(ec.attachment("application/x-tar", ec.tar_bytes({"t/one.png": img[12]}), "t.tar"))
    want("6/t.tar/t/one.png", 12, TAR)
    tgz = ec.gzip_bytes(ec.tar_bytes({"two.jpg": img[13]}), "pics.tar")
    parts.append(ec.attachment("application/gzip", tgz, "pics.tar.gz"))  # 7
    want("7/pics.tar.gz/pics.tar/two.jpg", 13, GZ, TAR)
    parts.append(ec.attachment("application/x-7z-compressed",
                               ec.sevenzip_bytes({"s/seven.gif": img[14]}), "s.7z"))  # 8
    want("8/s.7z/s/seven.gif", 14, SZ)
    parts.append(ec.attachment("application/x-rar", ec.rar4({"r.jpg": img[15]}), "r.rar"))  # 9
    want("9/r.rar/r.jpg", 15, RAR)
    parts.append(ec.attachment("application/ms-tnef",
                               ec.tnef([("tnef-photo.png", img[16])]), "winmail.dat"))  # 10
    want("10/winmail.dat/tnef-photo.png", 16, TNEF)

    # 11: a PDF: a JPEG image (passed on as is), a Flate image (rebuilt), an unused JPEG
    flate_picture = ec.picture(99, (40, 30))
    doc = ec.pdf_with_images(img[17], flate_picture, hidden_jpeg=ec.encode(
        ec.picture(18).convert("L"), "JPEG"))
    img[18] = ec.encode(ec.picture(18).convert("L"), "JPEG")
    parts.append(ec.attachment("application/pdf", doc, "doc.pdf"))
    want("11/doc.pdf/image-4.jpg", 17, PDF)
    want("11/doc.pdf/image-7.jpg", 18, PDF)

    # 12: three forwards deep, a zip inside the second one
    level3 = ec.message(ec.attachment("image/gif", img[23]), subject="level 3")
    level2 = ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"second\n"),
        ec.attachment("application/zip", ec.zip_bytes({"z1.png": img[20]}), "z.zip"),
        ec.rfc822(level3),
    ], "l2-b"), subject="level 2")
    level1 = ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"first\n"),
        ec.attachment("image/png", img[19], "fwd1.png"),
        ec.rfc822(level2),
    ], "l1-b"), subject="level 1")
    parts.append(ec.rfc822(level1))
    want("12.2", 19, MSG)
    want("12.3.2/z.zip/z1.png", 20, MSG, MSG, ZIP)
    want("12.3.3.1", 23, MSG, MSG, MSG)

    # 13: S/MIME detached signature (multipart/signed): the signed content is scanned
    parts.append(ec.multipart("signed", [
        ec.multipart("mixed", [ec.part("text/plain", b"signed\n"),
                               ec.attachment("image/png", img[21], "s.png")], "sig-in"),
        ec.attachment("application/pkcs7-signature", ec.cms_signed(b""), "smime.p7s"),
    ], "sig-b", params='; protocol="application/pkcs7-signature"; micalg=sha-256'))
    want("13.1.2", 21)

    # 14: opaque S/MIME signed-data
    inner_entity = ec.multipart("mixed", [ec.part("text/plain", b"opaque\n"),
                                          ec.attachment("image/jpeg", img[22], "o.jpg")], "op-b")
    parts.append(ec.attachment(
        'application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"',
        ec.cms_signed(ec.crlf(inner_entity), ber=True), "smime.p7m"))
    want("14.2", 22, P7)

    # 15: PGP/MIME signed, the signed content a single image part
    parts.append(ec.multipart("signed", [
        ec.attachment("image/png", img[24], "pgp.png"),
        ec.part("application/pgp-signature", b"-----BEGIN PGP SIGNATURE-----\n\niQEz\n"
                b"-----END PGP SIGNATURE-----\n"),
    ], "pgp-b", params='; protocol="application/pgp-signature"; micalg=pgp-sha256'))
    want("15.1", 24)

    # 16: a forwarded message attached as a file of unknown type
    eml = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"saved\n"),
                                            ec.attachment("image/jpeg", img[25], "e.jpg")],
                                  "eml-b"), subject="saved")
    parts.append(ec.attachment("application/octet-stream", eml, "forward.eml"))
    want("16.2", 25, MSG)

    # 17: claims to be an image, is not: still a candidate
    fake = b"this is not a picture at all" * 4
    parts.append(ec.attachment("image/png", fake, "fake.png"))
    expected.add(("17", ec.sha(fake), ()))

    # 18: plain text attachment: never a candidate
    parts.append(ec.part("text/plain", b"just words\n" * 20, filename="words.txt"))

    # 19: a delivery report returning the original message
    original = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"orig\n"),
                                                 ec.attachment("image/png", img[26], "r.png")],
                                       "orig-b"))
    parts.append(ec.multipart("report", [
        ec.part("text/plain", b"Delivery failed.\n"),
        ec.part("message/delivery-status", b"Reporting-MTA: dns; mx.example.org\n\n"
                b"Final-Recipient: rfc822; bob@example.org\nAction: failed\nStatus: 5.0.0\n"),
        ec.rfc822(original),
    ], "rep-b", params="; report-type=delivery-status"))
    want("19.3.2", 26, MSG)

    # 20: an image in quoted-printable; 21: uuencode as the transfer encoding
    parts.append(ec.part("image/jpeg", ec.qp_binary(img[27]), cte="quoted-printable",
                         filename="q.jpg"))
    want("20", 27)
    parts.append(ec.part("application/octet-stream", ec.uu_block(img[28], "u.png"),
                         cte="x-uuencode", filename="u.png"))
    want("21", 28)

    raw = ec.message(ec.multipart("mixed", parts, "outer-b"), subject="corpus")
    return raw, expected, flate_picture


CORPUS = build_corpus()


@pytest.mark.parametrize("eol", ["LF", "CRLF"])
def test_every_image_is_found_with_its_path_and_containers(eol: str) -> None:
    raw, expected, flate_picture = CORPUS
    if eol == "CRLF":
        raw = ec.crlf(raw)
    ex = extract(raw, ExtractSettings())

    assert ex.unscannable == ()
    found = {(a.mime_path, ec.sha(a.data), a.containers) for a in ex.attachments}
    rebuilt = [a for a in ex.attachments if a.mime_path == "11/doc.pdf/image-5.png"]
    assert len(rebuilt) == 1, sorted(p for p, _, _ in found)
    assert rebuilt[0].containers == (PDF,)
    pixels = np.asarray(Image.open(io.BytesIO(rebuilt[0].data)).convert("RGB"))
    assert np.array_equal(pixels, np.asarray(flate_picture))
    found.discard(("11/doc.pdf/image-5.png", ec.sha(rebuilt[0].data), (PDF,)))

    assert found == expected
    assert len(ex.attachments) == len(expected) + 1  # nothing found twice
    assert ex.subject == "corpus"
    assert ex.message_id == "<t@example.org>"
    assert ex.parts > 40


def test_filenames_and_declared_types_are_reported() -> None:
    raw, _, _ = CORPUS
    ex = extract(raw, ExtractSettings())
    by_path = {a.mime_path: a for a in ex.attachments}
    assert by_path["2"].filename == "photo.jpg"
    assert by_path["2"].content_type == "image/jpeg"
    assert by_path["3"].filename is None
    assert by_path["3"].content_type == "application/octet-stream"
    assert by_path["5/photos.zip/sub/b.jpg"].filename == "b.jpg"
    assert by_path["10/winmail.dat/tnef-photo.png"].filename == "tnef-photo.png"
    assert by_path["1.2.1/data-uri-1"].content_type == "image/png"
    assert by_path["1.1/uu.gif"].filename == "uu.gif"
