"""The content sweep under the MIME structure (issue 15 item 3): pictures hidden where the
MIME walk does not look (headers, unread bodies), in unknown binary and broken containers,
in BinHex, RTF pictures and objects, data: URIs written the ways browsers accept, UTF-16 and
UTF-7 text, vCard photos, flat ODF and SVG. Every construction is built here around a
generated JPEG, and the JPEG's own bytes must come out."""

from __future__ import annotations

import base64
import binascii
import io
import struct
import time
import zipfile

import extract_corpus as ec
import pytest
from factories import jpeg
from PIL import Image

from mailfilter.extract import decoders, extract, extract_text_only, sweep, textscan
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()
PHOTO = jpeg(7, 160, 120)
SMALL = jpeg(8, 64, 48)  # small enough for text-only messages (32 KiB)


def walk(raw: bytes, crlf: bool = True) -> Extraction:
    return extract(ec.crlf(raw) if crlf else raw, LIMITS)


def paths_of(ex: Extraction, data: bytes) -> list[str]:
    """Where `data` was found; and no piece of a photo was handed on besides (a reading
    that cuts a payload short would make the decode stage report it truncated)."""
    pieces = [a.mime_path for a in ex.attachments
              if a.data[:3] == b"\xff\xd8\xff" and a.data not in (PHOTO, SMALL)]
    assert pieces == []
    return [a.mime_path for a in ex.attachments if a.data == data]


def b64_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def html_message(html: bytes, ctype: str = "text/html") -> bytes:
    return ec.message(ec.part(ctype, html))


# --- BinHex: our own encoder (the stdlib's went with Python 3.11) ------------------------

_HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _rle90(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x90:
            out += b"\x90\x00"
            i += 1
            continue
        n = 1
        while i + n < len(data) and data[i + n] == c and n < 255:
            n += 1
        if n >= 3:
            out += bytes([c, 0x90, n])
        else:
            out += bytes([c]) * n
        i += n
    return bytes(out)


def _crc(data: bytes) -> bytes:
    return binascii.crc_hqx(data, 0).to_bytes(2, "big")


def binhex(name: str, data: bytes, resource: bytes = b"", bad_crc: bool = False) -> bytes:
    nb = name.encode("mac_roman")
    header = (bytes([len(nb)]) + nb + b"\x00" + b"JPEG" + b"ogle" + b"\x00\x00"
              + len(data).to_bytes(4, "big") + len(resource).to_bytes(4, "big"))
    data_crc = b"\x00\x00" if bad_crc else _crc(data)
    body = header + _crc(header) + data + data_crc + resource + _crc(resource)
    text = base64.b64encode(_rle90(body)).rstrip(b"=").translate(bytes.maketrans(_B64, _HQX))
    lines = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return b"(This file must be converted with BinHex 4.0)\n\n:" + lines + b":\n"


def test_binhex_decoder_round_trip_with_runs_and_literal_0x90() -> None:
    data = b"\x00" * 1000 + b"\x90\x90\x90" + b"ab" + b"\xff" * 300 + PHOTO
    found, over = decoders.binhex_decode(binhex("x.bin", data, b"rsrc" * 10).split(b"\n\n")[1],
                                         10**8)
    assert found is not None and not over
    assert (found.name, found.data, found.resource, found.defects) == (
        "x.bin", data, b"rsrc" * 10, ())


def test_binhex_in_a_text_body() -> None:
    ex = walk(ec.message(ec.part("text/plain", b"Here it is:\n\n" + binhex("photo.jpg", PHOTO))))
    assert paths_of(ex, PHOTO) == ["1/photo.jpg"]


def test_binhex_with_a_bad_crc_is_a_defect_and_kept() -> None:
    ex = walk(ec.message(ec.attachment("application/mac-binhex40",
                                       binhex("p.jpg", PHOTO, bad_crc=True), "p.hqx")))
    assert paths_of(ex, PHOTO) == ["1/p.hqx/p.jpg"]
    assert any(d.startswith("binhex-bad-crc") for d in ex.defects)


# --- the raw message ------------------------------------------------------------------------


def _folded_header(name: str, value: str) -> bytes:
    lines = [value[i : i + 70] for i in range(0, len(value), 70)]
    return (f"{name}: " + "\n ".join(lines) + "\n").encode()


def test_base64_in_a_header_is_found_by_the_raw_sweep() -> None:
    raw = _folded_header("X-Face-Photo", b64_text(PHOTO)) + ec.message(
        ec.part("text/plain", b"nothing to see\n"))
    ex = walk(raw)
    assert paths_of(ex, PHOTO) == ["sweep/b64-1"]
    assert ex.attachments[0].containers == ("sweep",)


def test_base64_as_one_long_line_in_a_header() -> None:
    raw = f"X-Blob: x={b64_text(PHOTO)}\n".encode() + ec.message(ec.part("text/plain", b"hi\n"))
    assert paths_of(walk(raw), PHOTO) == ["sweep/b64-1"]


def test_uuencode_and_binhex_in_a_body_the_walk_does_not_read() -> None:
    body = ec.uu_block(PHOTO, "uu.jpg") + b"\n" + binhex("hqx.jpg", SMALL)
    raw = ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"see below\n"),
        ec.part('message/external-body; access-type="x-none"', body),
    ], "eb"))
    ex = walk(raw)
    assert paths_of(ex, PHOTO) == ["sweep/uu.jpg"]
    assert paths_of(ex, SMALL) == ["sweep/hqx.jpg"]


def test_an_ordinary_message_makes_the_sweep_decode_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = sweep.decode_run

    def counting(run: bytes) -> tuple[bytes, str | None]:
        calls.append(len(run))
        return real(run)

    monkeypatch.setattr(sweep, "decode_run", counting)
    raw = ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"photos attached\n"),
        ec.attachment("image/jpeg", PHOTO, "a.jpg"),
        ec.attachment("application/zip", ec.zip_bytes({"b.jpg": SMALL}), "b.zip"),
        ec.part("text/plain", ec.b64(b"plain words " * 100), cte="base64"),
    ], "ord"))
    ex = walk(raw)
    assert paths_of(ex, PHOTO) == ["2"]
    assert paths_of(ex, SMALL) == ["3/b.zip/b.jpg"]
    assert calls == []


# --- carving ----------------------------------------------------------------------------


def test_a_jpeg_glued_inside_unknown_binary_is_carved_with_its_own_bytes() -> None:
    blob = bytes(range(256)) * 20 + PHOTO + b"\x00\x01trailing junk" * 50
    ex = walk(ec.message(ec.attachment("application/octet-stream", blob, "blob.bin")))
    assert paths_of(ex, PHOTO) == [f"1/blob.bin/carved-{256 * 20}"]


def test_a_zip_whose_reader_fails_is_carved() -> None:
    broken = b"PK\x03\x04" + b"\xff" * 26 + b"junk" * 10 + PHOTO
    ex = walk(ec.message(ec.attachment("application/zip", broken, "x.zip")))
    assert any(u.reason == "corrupt-archive" for u in ex.unscannable)
    assert paths_of(ex, PHOTO) and paths_of(ex, PHOTO)[0].startswith("1/x.zip/carved-")


def test_carving_stops_at_its_limit_and_says_so() -> None:
    tiny = []
    for n in range(sweep.MAX_CARVED + 8):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (n, 20, 30)).save(buf, "PNG")
        tiny.append(buf.getvalue())
    blob = b"\x00" * 16 + b"".join(png + b"\x00" * 8 for png in tiny)
    ex = walk(ec.message(ec.attachment("application/octet-stream", blob, "many.bin")))
    assert [a.data for a in ex.attachments] == tiny[: sweep.MAX_CARVED]
    assert ("1/many.bin", "carve-limit") in {(u.mime_path, u.reason) for u in ex.unscannable}


def test_a_carved_container_is_opened() -> None:
    blob = b"MZ" + bytes(range(256)) * 4 + ec.zip_bytes({"in.jpg": PHOTO}, zipfile.ZIP_DEFLATED)
    ex = walk(ec.message(ec.attachment("application/octet-stream", blob, "setup.exe")))
    assert paths_of(ex, PHOTO) == ["1/setup.exe/carved-1026/in.jpg"]


@pytest.mark.parametrize("cover", ["gif", "png", "jpeg"])
def test_an_archive_glued_after_a_picture_is_opened(cover: str) -> None:
    first = {"gif": ec.gif(3), "png": ec.png(4), "jpeg": SMALL}[cover]
    archive = ec.sevenzip_bytes({"in.jpg": PHOTO}) if cover == "gif" else ec.tar_bytes(
        {"in.jpg": PHOTO})
    ex = walk(ec.message(ec.attachment(f"image/{cover}", first + archive, f"a.{cover}")))
    assert [a.mime_path for a in ex.attachments] == ["1", f"1/a.{cover}/carved-{len(first)}/in.jpg"]
    assert ex.attachments[1].data == PHOTO


def _with_exif_thumbnail(main: bytes, thumb: bytes) -> bytes:
    """`main` with an APP1 Exif segment whose IFD1 holds `thumb`, as cameras write it."""
    ifd1_at = 8 + 2 + 4
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    ifd1 = struct.pack("<HHHIIHHII", 2, 0x0201, 4, 1, thumb_at, 0x0202, 4, 1, len(thumb))
    tiff = b"II*\0" + struct.pack("<IHI", 8, 0, ifd1_at) + ifd1 + struct.pack("<I", 0) + thumb
    body = b"Exif\0\0" + tiff
    return main[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + main[2:]


def test_the_exif_thumbnail_of_a_jpeg_is_a_candidate() -> None:
    # File managers show the Exif thumbnail as the file's picture, not the main image.
    decoy = jpeg(9, 320, 240)
    cover = _with_exif_thumbnail(decoy, PHOTO)
    ex = walk(ec.message(ec.attachment("image/jpeg", cover, "a.jpg")))
    assert [a.mime_path for a in ex.attachments] == ["1", "1/a.jpg/preview-56"]
    assert ex.attachments[1].data == PHOTO
    assert not ex.unscannable


def test_a_jpeg_without_app_pictures_has_no_children() -> None:
    ex = walk(ec.message(ec.attachment("image/jpeg", SMALL, "a.jpg")))
    assert [a.mime_path for a in ex.attachments] == ["1"]


# --- RTF ----------------------------------------------------------------------------------


def _wrapped_hex(data: bytes) -> str:
    text = data.hex()
    return "\n".join(text[i : i + 128] for i in range(0, len(text), 128))


def test_rtf_pict_picture_wrapped_by_the_writer() -> None:
    rtf = ("{\\rtf1\\ansi{\\fonttbl\\f0 Arial;}Look:\\par{\\pict\\jpegblip\\picw160\\pich120\n"
           + _wrapped_hex(PHOTO) + "\n}\\par}").encode()
    ex = walk(ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"see the document\n"),
        ec.attachment("application/rtf", rtf, "doc.rtf"),
    ], "rb")))
    assert paths_of(ex, PHOTO) == ["2/doc.rtf/pict-1"]


@pytest.mark.parametrize("mode", ["RGB", "P", "1"])
def test_rtf_dibitmap_is_handed_on_as_a_bmp(mode: str) -> None:
    # \\dibitmap holds a BMP without its 14-byte file header; Word draws it.
    buf = io.BytesIO()
    Image.open(io.BytesIO(SMALL)).convert(mode).save(buf, "BMP")
    bmp = buf.getvalue()
    rtf = ("{\\rtf1\\ansi Photo:\\par{\\pict\\dibitmap0\\picw64\\pich48\n"
           + _wrapped_hex(bmp[14:]) + "\n}\\par}").encode()
    ex = walk(ec.message(ec.attachment("application/rtf", rtf, "doc.rtf")))
    assert [(a.mime_path, a.data) for a in ex.attachments] == [("1/doc.rtf/pict-1", bmp)]


@pytest.mark.parametrize("depth", [1, 24])
def test_rtf_wbitmap_is_handed_on_as_a_bmp(depth: int) -> None:
    # \\wbitmap: a device-dependent bitmap, rows top first, each padded to an even length.
    img = Image.open(io.BytesIO(SMALL)).convert("1" if depth == 1 else "RGB")
    width, height = img.size
    raw = img.tobytes("raw", "1" if depth == 1 else "BGR")
    row = (width * depth + 7) // 8
    wide = row + row % 2
    bits = b"".join(raw[y * row : (y + 1) * row] + b"\0" * (wide - row) for y in range(height))
    rtf = (f"{{\\rtf1{{\\pict\\wbitmap0\\picw{width}\\pich{height}\\wbmbitspixel{depth}"
           f"\\wbmplanes1\\wbmwidthbytes{wide}\n" + _wrapped_hex(bits) + "\n}}").encode()
    ex = walk(ec.message(ec.attachment("application/rtf", rtf, "doc.rtf")))
    [picture] = ex.attachments
    assert picture.mime_path == "1/doc.rtf/pict-1"
    shown = Image.open(io.BytesIO(picture.data))
    assert shown.size == img.size
    assert shown.convert(img.mode).tobytes() == img.tobytes()


def test_dib_as_bmp_leaves_other_bytes_alone() -> None:
    assert sweep.dib_as_bmp(b"\x00" * 64) == b"\x00" * 64
    assert sweep.dib_as_bmp(PHOTO) == PHOTO


def test_rtf_objdata_holding_a_picture_after_a_header() -> None:
    ole = bytes.fromhex("0105000002000000") + b"\x08\x00\x00\x00Package\x00" + b"\x00" * 40 + PHOTO
    rtf = ("{\\rtf1{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata\n"
           + _wrapped_hex(ole) + "\n}}}").encode()
    ex = walk(ec.message(ec.part("text/rtf", rtf)))
    [path] = paths_of(ex, PHOTO)
    assert path.startswith("1/objdata-1/carved-")


def test_rtf_bin_control_word() -> None:
    rtf = b"{\\rtf1{\\pict\\jpegblip\\bin%d " % len(PHOTO) + PHOTO + b"}}"
    ex = walk(ec.message(ec.attachment("application/rtf", rtf, "b.rtf")))
    assert PHOTO in {a.data for a in ex.attachments}


# --- data: URIs as browsers read them -------------------------------------------------------

_S = b64_text(PHOTO)
_SPACED = "\t".join(_S[i : i + 60] for i in range(0, len(_S), 60))

DATA_URIS = {
    "colon and comma as decimal references": f'<img src="data&#58;image/jpeg;base64&#44;{_S}">',
    "named references": f'<img src="data&colon;image&sol;jpeg;base64&comma;{_S}">',
    "hex reference for slashes": '<img src="data:image/jpeg;base64,'
                                 + _S.replace("/", "&#x2F;") + '">',
    "plus and equals as references": '<img src="data:image/jpeg;base64,'
                                     + _S.replace("+", "&plus;").replace("=", "&equals;") + '">',
    "references without semicolons": f'<img src="data&#58image/jpeg;base64&#44{_S}">',
    "tab inside the scheme": f'<img src="da\tta:image/jpeg;base64,{_S}">',
    "newline before base64": f'<img src="data:image/jpeg;\n base64,{_S}">',
    "tabs inside the payload": f'<img src="data:image/jpeg;base64,{_SPACED}">',
    "quoted parameter with a semicolon": f'<img src=\'data:image/jpeg;name="a;b";base64,{_S}\'>',
    "space before base64": f'<img src="data:image/jpeg; base64,{_S}">',
    "upper case": f'<img src="DATA:IMAGE/JPEG;BASE64,{_S}">',
    "scheme spelled in references": '<img src="&#100;&#x61;&#116;&#97;&#58;'
                                    f'image/jpeg;base64,{_S}">',
    "base64 letters as references": '<img src="data:image/jpeg;base64,'
                                    + "".join(f"&#{ord(c)};" for c in _S[:400]) + _S[400:] + '">',
    "css url with newlines": "<div style=\"background:url(data:image/jpeg;base64,"
                             + "\n".join(_S[i : i + 76] for i in range(0, len(_S), 76)) + ')">',
}


@pytest.mark.parametrize("name", sorted(DATA_URIS))
def test_data_uri_written_the_ways_browsers_accept(name: str) -> None:
    ex = walk(html_message(DATA_URIS[name].encode()))
    assert [a.data for a in ex.attachments] == [PHOTO]  # once, and no piece of it


def test_css_url_written_in_escapes() -> None:
    escaped = "".join(f"\\{ord(ch):x} " for ch in f"data:image/jpeg;base64,{_S}")
    ex = walk(html_message(f'<div style="background:url({escaped})">x</div>'.encode()))
    assert [a.data for a in ex.attachments] == [PHOTO]


def test_a_data_stylesheet_holding_a_data_image() -> None:
    css = f".x {{ background: url(data:image/jpeg;base64,{_S}) }}".encode()
    html = f'<style>@import url(data:text/css;base64,{b64_text(css)});</style>'.encode()
    ex = walk(html_message(html))
    assert paths_of(ex, PHOTO) == ["1/data-uri-1/data-uri-1"]


def test_entity_encoded_data_uri_goes_to_a_worker() -> None:
    raw = ec.crlf(html_message(f'<img src="data&#58;image/jpeg;base64&#44;{b64_text(SMALL)}">'
                               .encode()))
    assert extract_text_only(raw, LIMITS) is None
    assert paths_of(extract(raw, LIMITS), SMALL)


# --- UTF-16 and UTF-7 -----------------------------------------------------------------------

_HTML = f'<html><body><img src="data:image/jpeg;base64,{_S}"></body></html>'


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_html_in_utf16_and_utf32(encoding: str) -> None:
    body = _HTML.encode(encoding)
    raw = ec.message(ec.part(f"text/html; charset={encoding}", ec.b64(body), cte="base64"))
    assert [a.data for a in walk(raw).attachments] == [PHOTO]


def _utf7_shifting_markup(text: str) -> bytes:
    """UTF-7 as a hostile writer produces it: the markup characters shifted (Python's own
    encoder writes them directly)."""
    out = []
    for ch in text:
        if ch == "+":
            out.append("+-")
        elif ch in '<>":;=,':
            out.append("+" + base64.b64encode(ch.encode("utf-16-be")).decode().rstrip("=") + "-")
        else:
            out.append(ch)
    return "".join(out).encode("ascii")


def test_html_in_utf7_as_python_writes_it() -> None:
    # Markup direct, "+" in the payload written "+-": the raw text holds only pieces.
    raw = ec.message(ec.part("text/html; charset=utf-7", _HTML.encode("utf-7")))
    assert [a.data for a in walk(raw).attachments] == [PHOTO]


def test_html_in_utf7_shifted_whole() -> None:
    shifted = base64.b64encode(_HTML.encode("utf-16-be")).rstrip(b"=")
    raw = ec.message(ec.part("text/html; charset=utf-7", b"+" + shifted + b"-"))
    assert [a.data for a in walk(raw).attachments] == [PHOTO]


def test_html_in_utf7() -> None:
    body = _utf7_shifting_markup(_HTML)
    assert b"+ADw-" in body and b"data:" not in body
    raw = ec.message(ec.part("text/html; charset=utf-7", body))
    assert [a.data for a in walk(raw).attachments] == [PHOTO]


def test_html_in_iso_2022_jp_with_redundant_escapes() -> None:
    # ESC ( B (to ASCII) where the text is ASCII already: decoders drop it, so the data: URI
    # a browser reads is whole though no run of the raw bytes holds it.
    ascii_html = _HTML.encode("ascii")
    body = b"\x1b(B".join(ascii_html[i : i + 40] for i in range(0, len(ascii_html), 40))
    body = "日本語".encode("iso2022_jp") + body
    raw = ec.message(ec.part("text/html; charset=iso-2022-jp", ec.b64(body), cte="base64"))
    assert [a.data for a in walk(raw).attachments] == [PHOTO]


# --- vCard, flat ODF, SVG ---------------------------------------------------------------------


def test_vcard_3_photo_folded() -> None:
    line = f"PHOTO;ENCODING=b;TYPE=JPEG:{_S}"
    folded = "\r\n ".join(line[i : i + 75] for i in range(0, len(line), 75))
    card = f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Bob\r\n{folded}\r\nEND:VCARD\r\n".encode()
    ex = walk(ec.message(ec.multipart("mixed", [
        ec.part("text/plain", b"my card\n"),
        ec.part("text/vcard", card, filename="bob.vcf"),
    ], "vc")))
    assert paths_of(ex, PHOTO) == ["2/bob.vcf/b64-1"]


def test_vcard_21_photo_base64() -> None:
    lines = "\r\n  ".join(_S[i : i + 72] for i in range(0, len(_S), 72))
    card = (f"BEGIN:VCARD\r\nVERSION:2.1\r\nN:Bob\r\nPHOTO;ENCODING=BASE64;JPEG:\r\n  {lines}"
            "\r\n\r\nEND:VCARD\r\n").encode()
    ex = walk(ec.message(ec.attachment("text/x-vcard", card, "bob.vcf")))
    assert len(paths_of(ex, PHOTO)) == 1


def test_flat_odf_binary_data() -> None:
    wrapped = "\n        ".join(_S[i : i + 76] for i in range(0, len(_S), 76))
    fodt = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<office:document office:mimetype='
        '"application/vnd.oasis.opendocument.text">\n<office:body><office:text><text:p>'
        '<draw:frame><draw:image>\n      <office:binary-data>\n        ' + wrapped
        + "\n      </office:binary-data>\n</draw:image></draw:frame></text:p>"
        "</office:text></office:body></office:document>\n"
    ).encode()
    ex = walk(ec.message(ec.attachment("application/vnd.oasis.opendocument.text", fodt,
                                       "doc.fodt")))
    assert paths_of(ex, PHOTO) == ["1/doc.fodt/b64-1"]


@pytest.mark.parametrize("attr", ["href", "xlink:href"])
def test_svg_with_an_embedded_raster(attr: str) -> None:
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
           f' width="160" height="120"><image {attr}="data:image/jpeg;base64,{_S}"'
           ' width="160" height="120"/></svg>').encode()
    ex = walk(ec.message(ec.attachment("image/svg+xml", svg, "pic.svg")))
    assert paths_of(ex, PHOTO) == ["1/pic.svg/data-uri-1"]


# --- text-only mode -------------------------------------------------------------------------


def _dkim_like() -> bytes:
    sig = b64_text(bytes(range(256)))
    return _folded_header("DKIM-Signature", "v=1; a=rsa-sha256; d=example.org; b=" + sig)


def test_text_mail_with_long_signatures_stays_text_only() -> None:
    raw = ec.crlf(_dkim_like() + _folded_header("Autocrypt", "keydata=" + b64_text(
        bytes(range(256)) * 8)) + ec.message(ec.part("text/plain", b"Hello Bob\n")))
    inline = extract_text_only(raw, LIMITS)
    assert inline is not None and inline.attachments == ()
    assert inline == extract(raw, LIMITS)


@pytest.mark.parametrize("what", ["header photo", "binhex", "rtf"])
def test_hidden_payloads_go_to_a_worker(what: str) -> None:
    if what == "header photo":
        raw = _folded_header("X-Photo", b64_text(SMALL)) + ec.message(
            ec.part("text/plain", b"hi\n"))
    elif what == "binhex":
        raw = ec.message(ec.part("text/plain", binhex("s.jpg", SMALL)))
    else:
        raw = ec.message(ec.part("text/plain", b"{\\rtf1 {\\pict\\jpegblip " + SMALL.hex().encode()
                                 + b"}}"))
    raw = ec.crlf(raw)
    assert len(raw) <= 32 * 1024
    assert extract_text_only(raw, LIMITS) is None
    assert paths_of(extract(raw, LIMITS), SMALL)


def test_what_a_text_scan_found_is_not_handed_on_again_by_the_raw_sweep() -> None:
    preamble = b"Archive follows.\n" + ec.b64(ec.zip_bytes({"in.jpg": PHOTO}))
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"hi\n")], "pre"))
    raw = raw.replace(b"This is a multi-part message in MIME format.\n", preamble)
    ex = walk(raw)
    assert paths_of(ex, PHOTO) == ["preamble/b64-1/in.jpg"]


def test_a_run_that_starts_in_the_headers_and_goes_on_into_the_body() -> None:
    # The first line of base64 is a header's value, the lines after it (no colon, no
    # indentation) end the header block: the walk reads them as a body from the 2nd line.
    lines = ec.b64(PHOTO).decode().splitlines()
    raw = (f"From: a@example.org\nSubject: x\nX-Data: {lines[0]}\n" + "\n".join(lines[1:])
           + "\n").encode()
    ex = walk(raw)
    assert paths_of(ex, PHOTO) == ["sweep/b64-1"]


# --- hostile input stays linear -------------------------------------------------------------

HOSTILE = {
    "lines of 15 base64 characters": ec.part("text/plain", (b"A" * 15 + b"\n") * 100_000),
    "JPEG signatures everywhere": ec.attachment("application/octet-stream",
                                                b"\xff\xd8\xff\xe0\x00\x10" * 150_000),
    "RTF hex with a space after every digit": ec.part("text/rtf",
                                                      b"{\\rtf1{\\pict " + b"0 " * 600_000 + b"}}"),
    "BinHex markers": ec.part("text/plain",
                              b"(This file must be converted with BinHex 4.0)\n:!!:\n" * 20_000),
    "begin lines in many bodies the walk does not read": ec.multipart("mixed", [
        ec.part("message/external-body", b"begin 644 a\n" + b"filler line\n" * 200)
        for _ in range(400)
    ], "many"),
    "a GIF of one-byte sub-blocks": ec.attachment(
        "application/octet-stream",
        b"xx" + b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + b"\x2c" + b"\x00" * 9 + b"\x02"
        + b"\x01a" * 1_000_000),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_swept_in_bounded_time(name: str) -> None:
    started = time.perf_counter()
    walk(ec.message(HOSTILE[name]), crlf=False)
    assert time.perf_counter() - started < 3.0


def test_base64_that_looks_like_utf7_is_not_read_as_utf7() -> None:
    # "+AD0A..." occurs in base64 by chance; read as UTF-7 it would cut a vCard photo into
    # pieces. Only shifted markup closed by "-" (never in base64) makes a UTF-7 reading.
    assert textscan._readings(b"PHOTO;ENCODING=b:/9j/4AAQ+ADwAAAAQ\r\n AAAA+ACIA\r\n") == []
    assert textscan._readings(b"+ADw-img src+AD0AIg-x+ACI-+AD4-") == [b'<img src="x">']


def test_two_jpegs_glued_in_binary_are_carved_apart() -> None:
    blob = b"\x00" * 100 + PHOTO + b"\x00" * 50 + SMALL + b"\xff\xd9 junk"
    ex = walk(ec.message(ec.attachment("application/octet-stream", blob, "two.bin")))
    assert paths_of(ex, PHOTO) == ["1/two.bin/carved-100"]
    assert paths_of(ex, SMALL) == [f"1/two.bin/carved-{150 + len(PHOTO)}"]


def test_a_tar_glued_inside_binary_is_carved_and_opened() -> None:
    blob = b"\x7fELF" + bytes(range(256)) * 3 + ec.tar_bytes({"t.jpg": PHOTO})
    ex = walk(ec.message(ec.attachment("application/octet-stream", blob, "a.out")))
    assert paths_of(ex, PHOTO) == ["1/a.out/carved-772/t.jpg"]


def test_binary_called_text_is_carved() -> None:
    blob = b"\x00\x01\x02 not text at all " * 10 + PHOTO
    ex = walk(ec.message(ec.attachment("text/plain", blob, "notes.txt")))
    assert paths_of(ex, PHOTO) == ["1/notes.txt/carved-200"]


def test_what_readers_say_against_a_carved_container_is_not_recorded() -> None:
    # Carved containers are guesses (an Office theme zip stored in pieces inside an OLE
    # document reads as a zip bomb): what their readers say against them is not recorded.
    flagged = ec.encrypted_flag_zip({"a.txt": b"x" * 1000})
    alone = walk(ec.message(ec.attachment("application/zip", flagged, "z.zip")))
    assert [u.reason for u in alone.unscannable] == ["encrypted-archive"]
    blob = b"\x00\x01" * 64 + flagged
    ex = walk(ec.message(ec.attachment("application/octet-stream", blob, "doc.bin")))
    assert ex.unscannable == ()
