"""The MIME walk: structures, transfer encodings, sniffing, text-borne payloads, and the
RFC violations real mail has (each tolerated and recorded as a defect)."""

from __future__ import annotations

import base64

import extract_corpus as ec
import pytest

from mailfilter.extract import extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()


def run(raw: bytes, eol: str = "LF", **limits: object) -> Extraction:
    if eol == "CRLF":
        raw = ec.crlf(raw)
    return extract(raw, ExtractSettings.model_validate(limits) if limits else LIMITS)


def found(ex: Extraction) -> dict[str, str]:
    return {a.mime_path: ec.sha(a.data) for a in ex.attachments}


def reasons(ex: Extraction) -> set[tuple[str, str]]:
    return {(u.mime_path, u.reason) for u in ex.unscannable}


def has_defect(ex: Extraction, code: str) -> bool:
    return any(d.startswith(code) for d in ex.defects)


EOLS = pytest.mark.parametrize("eol", ["LF", "CRLF"])


# --- structure ----------------------------------------------------------------------------


@EOLS
def test_single_part_message_body_is_part_1(eol: str) -> None:
    img = ec.png(1)
    ex = run(ec.message(ec.attachment("image/png", img, "a.png")), eol)
    assert found(ex) == {"1": ec.sha(img)}
    assert ex.parts == 1


@EOLS
def test_related_inline_cid_image(eol: str) -> None:
    img = ec.gif(2)
    raw = ec.message(ec.multipart("related", [
        ec.part("text/html", b'<img src="cid:logo">\n'),
        ec.attachment("image/gif", img, None, disposition="inline",
                      headers=("Content-ID: <logo>",)),
    ], "rb", params='; type="text/html"'))
    assert found(run(raw, eol)) == {"2": ec.sha(img)}


@EOLS
def test_forwarded_message_with_base64_transfer_encoding(eol: str) -> None:
    img = ec.jpeg(3)
    inner = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                              ec.attachment("image/jpeg", img, "i.jpg")], "ib"))
    raw = ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"see below\n"),
        ec.part("message/rfc822", ec.b64(ec.crlf(inner)), cte="base64"),
    ], "ob"))
    ex = run(raw, eol)
    assert found(ex) == {"2.2": ec.sha(img)}
    assert ex.attachments[0].containers == ("message/rfc822",)


@EOLS
def test_digest_parts_default_to_messages(eol: str) -> None:
    img1, img2 = ec.png(4), ec.png(5)
    m1 = ec.message(ec.attachment("image/png", img1, "1.png"))
    m2 = ec.message(ec.attachment("image/png", img2, "2.png"))
    raw = ec.message(ec.multipart("digest", [b"\n" + m1, b"\n" + m2], "db"))
    assert found(run(raw, eol)) == {"1.1": ec.sha(img1), "2.1": ec.sha(img2)}


@EOLS
def test_report_with_rfc822_headers_only(eol: str) -> None:
    img = ec.png(6)
    raw = ec.message(ec.multipart("mixed", [
        ec.multipart("report", [
            ec.part("text/plain", b"bounced\n"),
            ec.part("message/delivery-status", b"Reporting-MTA: dns; x\n\nAction: failed\n"),
            ec.part("text/rfc822-headers", b"From: a@b\nSubject: lost\nMessage-ID: <x@y>\n"),
        ], "repb", params="; report-type=delivery-status"),
        ec.attachment("image/png", img, "p.png"),
    ], "mb"))
    ex = run(raw, eol)
    assert found(ex) == {"2": ec.sha(img)}
    assert ex.unscannable == ()


def test_encrypted_parts_are_unscannable() -> None:
    pgp = ec.multipart("encrypted", [
        ec.part("application/pgp-encrypted", b"Version: 1\n"),
        ec.part("application/octet-stream", b"-----BEGIN PGP MESSAGE-----\n\nhQEM\n"
                b"-----END PGP MESSAGE-----\n"),
    ], "eb", params='; protocol="application/pgp-encrypted"')
    smime = ec.attachment('application/pkcs7-mime; smime-type=enveloped-data', ec.cms_enveloped(),
                          "smime.p7m")
    ex = run(ec.message(ec.multipart("mixed", [pgp, smime], "mb")))
    assert reasons(ex) == {("1", "encrypted-message"), ("2", "encrypted-message")}


def test_smime_enveloped_without_smime_type_is_found_by_content() -> None:
    ex = run(ec.message(ec.attachment("application/octet-stream", ec.cms_enveloped(), "x.p7m")))
    assert reasons(ex) == {("1", "encrypted-message")}


def test_message_partial_is_unscannable() -> None:
    raw = ec.message(ec.part('message/partial; id="abc"; number=1; total=2', b"From: x\n\nhi\n"))
    assert reasons(run(raw)) == {("1", "partial-message")}


# --- transfer encodings -------------------------------------------------------------------


def _b64_variants(img: bytes) -> dict[str, bytes]:
    text = base64.b64encode(img)
    odd = b"\n".join(text[i : i + n] for i, n in _chunks(len(text), [7, 61, 3, 200, 76]))
    return {
        "missing padding": ec.b64(img).rstrip(b"\n").rstrip(b"=") + b"\n",
        "stray characters": ec.b64(img).replace(b"A", b"A!", 3).replace(b"\n", b"*\n", 2),
        "odd line breaks": odd + b"\n",
        "spaces and tabs": b" \t".join(text[i : i + 50] for i in range(0, len(text), 50)),
        "one long line": text + b"\n",
    }


def _chunks(total: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, pos, k = [], 0, 0
    while pos < total:
        out.append((pos, sizes[k % len(sizes)]))
        pos += sizes[k % len(sizes)]
        k += 1
    return out


@EOLS
@pytest.mark.parametrize("variant", list(_b64_variants(b"x")))
def test_broken_base64_is_recovered(variant: str, eol: str) -> None:
    img = ec.png(7)
    for n in range(3):  # lengths with every remainder mod 3
        data = img + b"\x00" * n
        body = _b64_variants(data)[variant]
        ex = run(ec.message(ec.part("image/png", body, cte="base64", filename="b.png")), eol)
        assert found(ex) == {"1": ec.sha(data)}, (variant, n)


def test_base64_defects_are_recorded() -> None:
    img = ec.png(8)
    body = ec.b64(img).rstrip(b"\n").rstrip(b"=").replace(b"\n", b"\n!", 1)
    ex = run(ec.message(ec.part("image/png", body, cte="base64")))
    assert found(ex) == {"1": ec.sha(img)}
    assert has_defect(ex, "base64-invalid-characters")


def test_base64_encoded_in_separately_padded_chunks_is_kept_whole() -> None:
    img = ec.png(9)
    a, b = img[:1001], img[1001:]
    body = ec.b64(a) + ec.b64(b)  # "...==\n" then more data
    ex = run(ec.message(ec.part("image/png", body, cte="base64")))
    assert found(ex) == {"1": ec.sha(img)}
    assert has_defect(ex, "base64-data-after-padding")


@EOLS
def test_quoted_printable_binary_and_8bit_and_binary(eol: str) -> None:
    q, e = ec.jpeg(10), ec.png(11)
    raw = ec.message(ec.multipart("mixed", [
        ec.part("image/jpeg", ec.qp_binary(q), cte="quoted-printable"),
        ec.part("image/png", ec.b64(e), cte="base64"),
    ], "qb"))
    assert found(run(raw, eol)) == {"1": ec.sha(q), "2": ec.sha(e)}


@EOLS
def test_quoted_printable_soft_breaks_padded_with_blanks(eol: str) -> None:
    # RFC 2045 6.7: blanks after a soft break's "=" are transport padding, dropped by MIME
    # readers (reformime, ripmime); kept, they would corrupt the image.
    q = ec.jpeg(13)
    body = ec.qp_binary(q).replace(b"=\n", b"= \t\n")
    assert b"= \t\n" in body
    raw = ec.message(ec.multipart("mixed", [
        ec.part("image/jpeg", body, cte="quoted-printable")], "qs"))
    assert found(run(raw, eol)) == {"1": ec.sha(q)}


def test_binary_transfer_encoding_keeps_bytes_exactly() -> None:
    img = ec.png(12)  # contains CR, LF and NUL bytes
    for cte in ("binary", "8bit", "7bit", None):
        raw = ec.crlf(ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n")], "bb",
                                              close=False)))
        raw += b"\r\n--bb\r\n" + ec.part("image/png", b"", cte=cte).replace(b"\n", b"\r\n")
        raw += img + b"\r\n--bb--\r\n"
        assert found(extract(raw, LIMITS)) == {"2": ec.sha(img)}, cte


@EOLS
def test_uuencoded_blocks_in_text(eol: str) -> None:
    a, b = ec.gif(13), ec.jpeg(14)
    b64block = b"begin-base64 644 b.jpg\n" + ec.b64(b) + b"====\n"
    text = b"one:\n" + ec.uu_block(a, "a.gif") + b"\ntwo:\n" + b64block + b"end of mail\n"
    ex = run(ec.message(ec.part("text/plain", text)), eol)
    assert found(ex) == {"1/a.gif": ec.sha(a), "1/b.jpg": ec.sha(b)}
    assert all(x.containers == ("text/plain",) for x in ex.attachments)


def test_uuencode_without_end_and_with_stripped_trailing_spaces() -> None:
    img = ec.png(15)
    block = ec.uu_block(img, "s.png").replace(b"`", b" ").replace(b" \n", b"\n")
    block = block.replace(b"\nend\n", b"\n")
    ex = run(ec.message(ec.part("text/plain", block)))
    assert found(ex) == {"1/s.png": ec.sha(img)}


def test_unknown_transfer_encoding_is_a_defect() -> None:
    img = ec.png(16)
    ex = run(ec.message(ec.part("image/png", ec.b64(img), cte="x-weird")))
    assert has_defect(ex, "unknown-transfer-encoding")
    assert "1" in found(ex)  # declared image: passed on, the decode stage decides


def test_base64_body_without_transfer_encoding_header() -> None:
    img = ec.jpeg(17)
    ex = run(ec.message(ec.part("application/octet-stream", ec.b64(img), filename="x.jpg")))
    got = found(ex)
    assert ec.sha(img) in got.values()
    assert has_defect(ex, "base64-without-transfer-encoding")


# --- sniffing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ctype", "name"),
    [
        (ec.jpeg(20), "application/octet-stream", None),
        (ec.png(21), "application/octet-stream", "document.pdf.txt"),
        (ec.gif(22), "text/plain", "readme.txt"),
        (ec.webp(23), "application/x-unknown", "x"),
        (ec.bmp(24), "application/msword", "a.doc"),
        (ec.tiff(25), "video/mp4", "clip.mp4"),
        (ec.ico(26), "application/octet-stream", None),
        (ec.heic_header(), "application/octet-stream", "IMG_0001"),
        (ec.avif_header(), "application/octet-stream", None),
    ],
)
def test_images_are_found_by_content(data: bytes, ctype: str, name: str | None) -> None:
    ex = run(ec.message(ec.multipart("mixed", [ec.part("text/plain", b"hi\n"),
                                               ec.attachment(ctype, data, name)], "sb")))
    assert found(ex) == {"2": ec.sha(data)}
    assert ex.attachments[0].content_type == ctype
    assert ex.attachments[0].filename == name


def test_declared_images_that_are_not_images_are_still_candidates() -> None:
    junk = b"GIF? no." * 10
    raw = ec.message(ec.multipart("mixed", [
        ec.attachment("image/jpeg", junk, None),
        ec.attachment("application/octet-stream", junk + b"!", "photo.JPG"),
        ec.attachment("application/octet-stream", junk + b"?", "data.bin"),
    ], "db"))
    assert set(found(run(raw))) == {"1", "2"}


def test_text_parts_are_never_candidates() -> None:
    raw = ec.message(ec.multipart("alternative", [
        ec.part("text/plain", b"Hello there\n" * 50),
        ec.part("text/html", b"<p>Hello <b>there</b></p>\n" * 50),
        ec.attachment("text/csv", b"a,b\n1,2\n" * 30, "t.csv"),
    ], "tb"))
    ex = run(raw)
    assert ex.attachments == ()
    assert ex.unscannable == ()


# --- data: URIs ---------------------------------------------------------------------------


@EOLS
def test_data_uris_in_html(eol: str) -> None:
    a, b, c, d = ec.png(30), ec.jpeg(31), ec.gif(32), ec.webp(33)
    b64a = base64.b64encode(a).decode()
    wrapped_b = ec.b64(b).decode()  # with line breaks inside the attribute
    pct_c = base64.b64encode(c).decode().replace("+", "%2B").replace("/", "%2F")
    html = (
        f'<img src="data:image/png;base64,{b64a}" alt=x>'
        f"<img src='data:image/jpeg;charset=binary;base64,{wrapped_b}'>"
        f'<div style="background:url(data:image/gif;base64,{pct_c})"></div>'
        f'<img src="DATA:application/octet-stream;BASE64,{base64.b64encode(d).decode()}">'
        '<a href="data:text/plain;base64,aGVsbG8=">text</a>'
        '<a href="data:text/html,<b>hi</b>">html</a>'
    ).encode()
    ex = run(ec.message(ec.part("text/html; charset=utf-8", ec.qp(html),
                                cte="quoted-printable")), eol)
    assert found(ex) == {
        "1/data-uri-1": ec.sha(a), "1/data-uri-2": ec.sha(b),
        "1/data-uri-3": ec.sha(c), "1/data-uri-4": ec.sha(d),
    }
    assert [x.content_type for x in ex.attachments] == [
        "image/png", "image/jpeg", "image/gif", "application/octet-stream"]


# --- malformed MIME -----------------------------------------------------------------------


@EOLS
def test_multipart_without_boundary_parameter(eol: str) -> None:
    img = ec.png(40)
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                            ec.attachment("image/png", img, "p.png")], "guessme"))
    raw = raw.replace(b'; boundary="guessme"', b"")
    ex = run(raw, eol)
    assert found(ex) == {"2": ec.sha(img)}
    assert has_defect(ex, "multipart-without-boundary")


@EOLS
def test_boundary_never_present_body_is_scanned_as_text(eol: str) -> None:
    img = ec.gif(41)
    raw = ec.message(b'Content-Type: multipart/mixed; boundary="nothere"\n\n'
                     + ec.uu_block(img, "lost.gif"))
    ex = run(raw, eol)
    assert found(ex) == {"1/lost.gif": ec.sha(img)}
    assert has_defect(ex, "boundary-not-found")


@EOLS
def test_missing_end_boundary(eol: str) -> None:
    img = ec.png(42)
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                            ec.attachment("image/png", img, "p.png")], "eb",
                                  close=False))
    ex = run(raw, eol)
    assert found(ex) == {"2": ec.sha(img)}
    assert has_defect(ex, "missing-end-boundary")


def test_truncated_message_mid_base64() -> None:
    img = ec.jpeg(43)
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                            ec.attachment("image/jpeg", img, "t.jpg")], "tb"))
    cut = raw[: raw.index(b"--tb--") - 500]
    ex = run(cut)
    assert set(found(ex)) == {"2"}
    assert img.startswith(ex.attachments[0].data[:1000])
    assert has_defect(ex, "missing-end-boundary")


def test_parts_after_the_close_delimiter_are_still_walked() -> None:
    a, b = ec.png(44), ec.png(45)
    raw = ec.message(ec.multipart("mixed", [ec.attachment("image/png", a, "a.png")], "cb"))
    raw += b"\n--cb\n" + ec.attachment("image/png", b, "b.png") + b"\n--cb--\n"
    ex = run(raw)
    assert found(ex) == {"1": ec.sha(a), "2": ec.sha(b)}
    assert has_defect(ex, "parts-after-end-boundary")


def test_nul_bytes_and_8bit_headers() -> None:
    img = ec.png(46)
    raw = (
        "From: Jörg <j@example.org>\nSubject: Grüße\x00 aus Köln\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="nb"\n\n--nb\nContent-Type: text/plain\n\n'
        "a\x00b\n--nb\n"
        'Content-Type: image/png; name="Bild-ü.png"\nContent-Transfer-Encoding: base64\n\n'
    ).encode() + ec.b64(img) + b"--nb--\n"
    ex = run(raw)
    assert found(ex) == {"2": ec.sha(img)}
    assert ex.attachments[0].filename == "Bild-ü.png"
    assert ex.subject is not None and ex.subject.startswith("Grüße")
    assert has_defect(ex, "8bit-in-headers")
    assert has_defect(ex, "nul-in-headers")


def test_encoded_words_and_rfc2231_filenames() -> None:
    a, b = ec.png(47), ec.png(48)
    raw = ec.message(ec.multipart("mixed", [
        ec.part("image/png", ec.b64(a), cte="base64",
                headers=("Content-Disposition: attachment; "
                         'filename="=?UTF-8?B?w6TDtsO8LnBuZw==?="',)),
        ec.part("image/png", ec.b64(b), cte="base64",
                headers=("Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20b.png",)),
    ], "wb"), subject="=?utf-8?q?caf=C3=A9?=")
    ex = run(raw)
    names = {x.mime_path: x.filename for x in ex.attachments}
    assert names == {"1": "äöü.png", "2": "€ b.png"}
    assert ex.subject == "café"


def test_header_block_without_blank_line() -> None:
    img = ec.png(49)
    raw = b"Subject: x\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n" + ec.b64(img)
    ex = run(raw)
    assert found(ex) == {"1": ec.sha(img)}
    assert has_defect(ex, "missing-header-body-separator")


def test_base64_encoded_multipart_body() -> None:
    img = ec.png(50)
    inner = ec.multipart("mixed", [ec.attachment("image/png", img, "p.png")], "ib")
    head, body = inner.split(b"\n\n", 1)
    raw = ec.message(head + b"\nContent-Transfer-Encoding: base64\n\n" + ec.b64(body))
    ex = run(raw)
    assert found(ex) == {"1": ec.sha(img)}
    assert has_defect(ex, "encoded-multipart")


def test_garbage_content_type_and_transport_padding_after_boundary() -> None:
    img = ec.jpeg(51)
    raw = ec.message(ec.multipart("mixed", [ec.attachment("image", img, "x")], "pb"))
    raw = raw.replace(b"\n--pb\n", b"\n--pb \t \n")
    assert found(run(raw)) == {"1": ec.sha(img)}


def test_mixed_line_endings() -> None:
    img = ec.png(52)
    raw = ec.crlf(ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                                    ec.attachment("image/png", img)], "lb")))
    raw = raw.replace(b"\r\n--lb--", b"\n--lb--").replace(b"Subject: test\r\n", b"Subject: t\n")
    assert found(run(raw)) == {"2": ec.sha(img)}


def test_hidden_payload_in_the_epilogue() -> None:
    img = ec.gif(53)
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n")], "hb"))
    raw += b"\n" + ec.uu_block(img, "hidden.gif")
    ex = run(raw)
    assert found(ex) == {"epilogue/hidden.gif": ec.sha(img)}


def test_zip_appended_to_an_image() -> None:
    img, hidden = ec.jpeg(54), ec.png(55)
    polyglot = img + ec.zip_bytes({"h.png": hidden})
    ex = run(ec.message(ec.attachment("image/jpeg", polyglot, "cat.jpg")))
    assert found(ex) == {"1": ec.sha(polyglot), "1/cat.jpg/h.png": ec.sha(hidden)}
    assert has_defect(ex, "zip-appended")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\n", b"\r\n\r\n", b"Subject: only headers", b"\x00" * 100, b"--\n--\n--",
     b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n\n--\n",
     b"Content-Type: multipart/mixed; boundary=x\n\n--x\n--x\n--x--\n",
     b"Content-Type: message/rfc822\n\n", b"Content-Transfer-Encoding: base64\n\n====",
     bytes(range(256)) * 10],
)
def test_degenerate_input_never_raises(raw: bytes) -> None:
    ex = extract(raw, LIMITS)
    assert isinstance(ex, Extraction)
    assert not [u for u in ex.unscannable if u.reason == "parse-error"]


def test_saved_message_inside_a_zip_is_numbered_after_its_name() -> None:
    img = ec.png(56)
    eml = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"x\n"),
                                            ec.multipart("related", [
                                                ec.part("text/html", b"<p>x</p>\n"),
                                                ec.attachment("image/png", img, "i.png")],
                                                "rb")], "eb"))
    raw = ec.message(ec.attachment("application/zip", ec.zip_bytes({"fwd.eml": eml}), "m.zip"))
    ex = run(raw)
    assert found(ex) == {"1/m.zip/fwd.eml/2.2": ec.sha(img)}
    assert ex.attachments[0].containers == ("application/zip", "message/rfc822")


def test_mbox_from_line_before_the_headers() -> None:
    img = ec.png(57)
    raw = b"From alice@example.org Mon Jan  1 00:00:00 2024\n" + ec.message(
        ec.attachment("image/png", img, "p.png"), subject="with from line")
    ex = run(raw)
    assert found(ex) == {"1": ec.sha(img)}
    assert ex.subject == "with from line"
