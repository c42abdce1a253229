"""Builders for the extract tests: generated benign images, MIME messages written by hand
(so every boundary, encoding and defect is exactly what the test says), and containers
(ZIP, TAR, gzip, 7z, a stored RAR, TNEF, PDF, CMS) built byte by byte where no writer exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import quopri
import struct
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw

# --- images -----------------------------------------------------------------------------


def picture(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A gradient with a few shapes; different seeds give different pictures."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.5, 3.0, 2)
        arr[..., c] = 127 + 110 * np.sin(fx * xx / w * 6.28 + c) * np.cos(fy * yy / h * 6.28)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x0 + int(rng.integers(5, 30)), y0 + int(rng.integers(5, 30))),
                     fill=colour)
    return img


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    if fmt in ("JPEG", "BMP") and img.mode != "RGB":
        img = img.convert("RGB")
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def jpeg(seed: int) -> bytes:
    return encode(picture(seed), "JPEG", quality=85)


def png(seed: int) -> bytes:
    return encode(picture(seed), "PNG")


def gif(seed: int) -> bytes:
    return encode(picture(seed).convert("P"), "GIF")


def webp(seed: int) -> bytes:
    return encode(picture(seed), "WEBP", quality=80)


def bmp(seed: int) -> bytes:
    return encode(picture(seed), "BMP")


def tiff(seed: int) -> bytes:
    return encode(picture(seed), "TIFF")


def ico(seed: int) -> bytes:
    return encode(picture(seed, (32, 32)), "ICO")


def heic_header() -> bytes:
    """Only the opening box of an HEIC file: enough for sniffing (no encoder is needed)."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 64


def avif_header() -> bytes:
    return struct.pack(">I", 20) + b"ftypavif" + b"\x00\x00\x00\x00" + b"mif1" + b"\x00" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- MIME -------------------------------------------------------------------------------


def b64(data: bytes, width: int = 76) -> bytes:
    text = base64.b64encode(data)
    return b"\n".join(text[i : i + width] for i in range(0, len(text), width)) + b"\n"


def qp(data: bytes) -> bytes:
    """Quoted-printable of text: its line breaks stay line breaks."""
    return quopri.encodestring(data, quotetabs=False).replace(b"\r\n", b"\n")


def qp_binary(data: bytes) -> bytes:
    """Quoted-printable of binary data: CR and LF bytes are escaped too."""
    return binascii.b2a_qp(data, istext=False)


def uu_block(data: bytes, name: str, mode: str = "644") -> bytes:
    lines = [f"begin {mode} {name}".encode()]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i : i + 45], backtick=True).rstrip(b"\n"))
    lines += [b"`", b"end"]
    return b"\n".join(lines) + b"\n"


def part(
    ctype: str,
    body: bytes,
    *,
    cte: str | None = None,
    filename: str | None = None,
    disposition: str | None = None,
    headers: tuple[str, ...] = (),
) -> bytes:
    """One MIME entity; `body` is given already encoded as `cte` says."""
    lines = [f"Content-Type: {ctype}"]
    if cte:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    if disposition or filename:
        disp = disposition or "attachment"
        lines.append(f'Content-Disposition: {disp}; filename="{filename}"' if filename
                     else f"Content-Disposition: {disp}")
    lines += list(headers)
    return "\n".join(lines).encode() + b"\n\n" + body


def attachment(ctype: str, data: bytes, filename: str | None = None, **kw: object) -> bytes:
    """A base64 attachment."""
    return part(ctype, b64(data), cte="base64", filename=filename, **kw)  # type: ignore[arg-type]


def multipart(
    subtype: str, parts: list[bytes], boundary: str, params: str = "", close: bool = True
) -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"{params}\n\n'.encode()
    body = b"This is a multi-part message in MIME format.\n"
    for p in parts:
        body += b"\n--" + boundary.encode() + b"\n" + p.rstrip(b"\n")
    if close:
        body += b"\n--" + boundary.encode() + b"--\n"
    return head + body


def message(entity: bytes, subject: str = "test", message_id: str = "<t@example.org>") -> bytes:
    head = (
        "From: Alice <alice@example.org>\n"
        "To: Bob <bob@example.org>\n"
        f"Subject: {subject}\n"
        f"Message-ID: {message_id}\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
        "MIME-Version: 1.0\n"
    ).encode()
    return head + entity


def rfc822(inner: bytes, cte: str | None = None) -> bytes:
    return part("message/rfc822", inner, cte=cte)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# --- containers -------------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def encrypted_flag_zip(members: dict[str, bytes], only: set[str] | None = None) -> bytes:
    """A zip whose members (or those named in `only`) are flagged as encrypted: the flag is
    all the extractor reads, so the data itself is left as it is."""
    data = bytearray(zip_bytes(members, zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        infos = zf.infolist()
    flagged = {i.header_offset for i in infos if only is None or i.filename in only}
    for offset in flagged:
        data[offset + 6] |= 0x1  # local header flags
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        (offset,) = struct.unpack_from("<I", data, central + 42)
        if offset in flagged:
            data[central + 8] |= 0x1  # central directory flags
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


def docx(media: dict[str, bytes]) -> bytes:
    members = {
        "[Content_Types].xml": b'<?xml version="1.0"?><Types xmlns="http://schemas.'
        b'openxmlformats.org/package/2006/content-types"/>',
        "word/document.xml": b"<w:document/>",
    }
    members.update({f"word/media/{k}": v for k, v in media.items()})
    return zip_bytes(members)


def odt(pictures: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), b"application/vnd.oasis.opendocument.text")
        zf.writestr("content.xml", b"<office:document-content/>")
        for name, data in pictures.items():
            zf.writestr(f"Pictures/{name}", data)
    return out.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def gzip_bytes(data: bytes, name: str | None = None) -> bytes:
    import gzip

    out = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def sevenzip_bytes(members: dict[str, bytes], password: str | None = None) -> bytes:
    import py7zr

    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w", password=password) as z:
        for name, data in members.items():
            z.writestr(data, name)
    return out.getvalue()


def _rar_block(head_type: int, flags: int, body: bytes) -> bytes:
    head = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head


def rar4(members: dict[str, bytes], *, method: int = 0x30, password: bool = False) -> bytes:
    """A RAR 4 archive. With method 0x30 (store) the data is stored as is, which rarfile
    reads without any external tool; other methods get the data as given (for tests of a
    missing tool)."""
    out = b"Rar!\x1a\x07\x00" + _rar_block(0x73, 0, b"\x00" * 6)
    for name, data in members.items():
        raw_name = name.encode()
        flags = 0x8000 | (0x04 if password else 0)
        body = struct.pack(
            "<IIBIIBBHI",
            len(data), len(data), 3, zlib.crc32(data), 0x21, 29, method, len(raw_name), 0o100644,
        ) + raw_name
        out += _rar_block(0x74, flags, body) + data
    return out + _rar_block(0x7B, 0x4000, b"")


def tnef_attr(level: int, attr_id: int, data: bytes) -> bytes:
    return (
        bytes([level]) + struct.pack("<II", attr_id, len(data)) + data
        + struct.pack("<H", sum(data) & 0xFFFF)
    )


def _mapi_string(prop_id: int, text: str) -> bytes:
    raw = text.encode("cp1252") + b"\x00"
    padded = raw + b"\x00" * (-len(raw) % 4)
    return struct.pack("<HHII", 0x001E, prop_id, 1, len(raw)) + padded


def _mapi_binary(prop_id: int, data: bytes) -> bytes:
    return struct.pack("<HHII", 0x0102, prop_id, 1, len(data)) + data + b"\x00" * (-len(data) % 4)


def tnef(attachments: list[tuple[str, bytes]], *, data_in_props: bool = False) -> bytes:
    """winmail.dat with the given attachments: short title, long filename in the MAPI
    properties and the data in attAttachData (or, with `data_in_props`, only in
    PR_ATTACH_DATA_BIN)."""
    out = struct.pack("<IH", 0x223E9F78, 0x0001)
    out += tnef_attr(1, 0x00089006, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += tnef_attr(1, 0x00069007, struct.pack("<II", 1252, 0))  # attOemCodepage
    out += tnef_attr(1, 0x00078008, b"IPM.Microsoft Mail.Note\x00")  # attMessageClass
    for name, data in attachments:
        out += tnef_attr(2, 0x00069002, b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 8)
        out += tnef_attr(2, 0x00018010, name[:8].encode() + b"\x00")
        props = [_mapi_string(0x3707, name)]
        if data_in_props:
            props.append(_mapi_binary(0x3701, data))
        else:
            out += tnef_attr(2, 0x0006800F, data)
        out += tnef_attr(2, 0x00069005, struct.pack("<I", len(props)) + b"".join(props))
    return out


def pdf(objects: list[bytes]) -> bytes:
    """A PDF whose object N (from 1) is objects[N-1]; object 1 must be the catalog."""
    out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return out


def pdf_stream(params: str, data: bytes) -> bytes:
    return f"<< {params} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream"


def pdf_with_images(jpeg_data: bytes, rgb: Image.Image, hidden_jpeg: bytes | None = None) -> bytes:
    """A one-page PDF showing a DCT (JPEG) image and a Flate RGB image; optionally an image
    object no page uses."""
    raw = rgb.convert("RGB").tobytes()
    w, h = rgb.size
    jw, jh = Image.open(io.BytesIO(jpeg_data)).size
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
        b"/Resources << /XObject << /Im1 4 0 R /Im2 5 0 R >> >> /Contents 6 0 R >>",
        pdf_stream(
            f"/Type /XObject /Subtype /Image /Width {jw} /Height {jh} /ColorSpace /DeviceRGB "
            "/BitsPerComponent 8 /Filter /DCTDecode",
            jpeg_data,
        ),
        pdf_stream(
            f"/Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceRGB "
            "/BitsPerComponent 8 /Filter /FlateDecode",
            zlib.compress(raw),
        ),
        pdf_stream("", b"q 100 0 0 100 0 0 cm /Im1 Do Q q 50 0 0 50 100 100 cm /Im2 Do Q"),
    ]
    if hidden_jpeg is not None:
        hw, hh = Image.open(io.BytesIO(hidden_jpeg)).size
        objects.append(pdf_stream(
            f"/Type /XObject /Subtype /Image /Width {hw} /Height {hh} /ColorSpace /DeviceGray "
            "/BitsPerComponent 8 /Filter /DCTDecode",
            hidden_jpeg,
        ))
    return pdf(objects)


# --- CMS (S/MIME) -----------------------------------------------------------------------


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def ber_indefinite(tag: int, content: bytes) -> bytes:
    return bytes([tag, 0x80]) + content + b"\x00\x00"


OID_DATA = bytes.fromhex("06092a864886f70d010701")
OID_SIGNED = bytes.fromhex("06092a864886f70d010702")
OID_ENVELOPED = bytes.fromhex("06092a864886f70d010703")
OID_COMPRESSED = bytes.fromhex("060b2a864886f70d0109100109")
OID_SHA256 = bytes.fromhex("0609608648016503040201")


def cms_signed(content: bytes, *, ber: bool = False) -> bytes:
    """A CMS SignedData carrying `content` (no signers: the extractor does not verify)."""
    if ber:  # indefinite lengths and a constructed OCTET STRING in 1000-byte chunks
        chunks = b"".join(der(0x04, content[i : i + 1000]) for i in range(0, len(content), 1000))
        econtent = ber_indefinite(0xA0, ber_indefinite(0x24, chunks))
        eci = ber_indefinite(0x30, OID_DATA + econtent)
        sd = ber_indefinite(
            0x30, der(0x02, b"\x01") + der(0x31, der(0x30, OID_SHA256)) + eci + der(0x31, b"")
        )
        return ber_indefinite(0x30, OID_SIGNED + ber_indefinite(0xA0, sd))
    eci = der(0x30, OID_DATA + der(0xA0, der(0x04, content)))
    sd = der(0x30, der(0x02, b"\x01") + der(0x31, der(0x30, OID_SHA256)) + eci + der(0x31, b""))
    return der(0x30, OID_SIGNED + der(0xA0, sd))


def cms_compressed(content: bytes) -> bytes:
    alg = der(0x30, bytes.fromhex("060b2a864886f70d0109100308"))
    eci = der(0x30, OID_DATA + der(0xA0, der(0x04, zlib.compress(content))))
    cd = der(0x30, der(0x02, b"\x00") + alg + eci)
    return der(0x30, OID_COMPRESSED + der(0xA0, cd))


def cms_enveloped() -> bytes:
    return der(0x30, OID_ENVELOPED + der(0xA0, der(0x30, der(0x02, b"\x00"))))


# --- bombs ------------------------------------------------------------------------------


def zeros_deflate(total: int, block: int = 1 << 20) -> tuple[bytes, int]:
    """A raw deflate stream of `total` zero bytes made without compressing them all: the
    compressed form of one block, after a full flush, repeats. Returns (stream, crc)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\x00" * block
    first = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    assert total % block == 0
    count = total // block
    stream = first + again * (count - 1) + comp.flush(zlib.Z_FINISH)
    # crc32 of zeros, by combining: cheap enough for a test at 1 MiB steps
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    return stream, crc


def raw_zip(entries: list[tuple[str, bytes, int, int, int]], method: int = 8) -> bytes:
    """A zip written field by field: (name, compressed data, crc, declared size, declared
    compressed size), so declared sizes can be anything."""
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, data, crc, size, csize in entries:
        raw = name.encode()
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, csize, size, len(raw), 0
        )
        local += [header, raw, data]
        central.append(struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, csize, size,
            len(raw), 0, 0, 0, 0, 0, offset,
        ) + raw)
        offset += len(header) + len(raw) + len(data)
    directory = b"".join(central)
    count = min(len(entries), 0xFFFF)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), offset, 0)
    return b"".join(local) + directory + end
