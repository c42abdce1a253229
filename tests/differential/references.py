"""Reference readers of the differential suite: what other software shows a recipient.

A reference is a chain: a MIME parser (Python `email` with two policies, mail-parser,
GMime via `mu extract`, ripmime, munpack, reformime; Python's `mailbox` for mbox files)
followed by the openers a recipient would use on what it yields (bsdtar, 7z, tnef, gpg,
pdftoppm, pdfdetach, openssl cms, cabextract, cpio, a mail client for attached messages, and
small decoders written to published formats where no program is installed: HTML/SVG `data:`
URLs after the WHATWG URL and data-URL rules, vCard PHOTO, iCalendar ATTACH, RTF `\\pict`,
flat ODF, BinHex 4.0). Every file a chain yields is opened again, to a bounded depth; the
chain "shows the photo" when a file is the photo's bytes or decodes (all frames; EXIF
orientation and ICC profile applied, as viewers do) to an image within PDQ distance
`PDQ_THRESHOLD` of the photo's.

Chains are named like `mu>bsdtar>pdftoppm`. Programs that are not installed are left out
(`available()`); CI installs them all.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import email.policy
import hashlib
import html
import html.parser
import io
import logging
import mailbox
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mailparser
import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

from mailfilter.hashing.pdq import hamming, pdq_from_luma

PDQ_THRESHOLD = 31
# What a recipient types when the message says "the password is ...".
PASSWORD = "photo123"
MAX_DEPTH = 6
MAX_FRAMES = 300
TOOL_TIMEOUT = 30.0
# mail-parser logs a warning for every content type it does not handle itself.
logging.getLogger("mailparser").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Leaf:
    """A payload a reader yields, with the MIME type and charset when the reader says them."""

    data: bytes
    ctype: str | None = None
    charset: str | None = None
    via: str | None = None  # a program the parser's files went through (in the chain name)


# ----------------------------------------------------------------------------- the photo


_truncated_lock = threading.Lock()


def _frames(data: bytes) -> list[Image.Image]:
    """Every view a viewer may draw of `data`: each frame as stored, and each frame with
    EXIF orientation and the ICC profile applied. A cut-off image is drawn as far as it
    decodes, as viewers do (Pillow's switch for that is process-wide: set only here)."""
    with _truncated_lock:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return list(_decoded_frames(data))
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decoded_frames(data: bytes) -> Iterator[Image.Image]:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception:
        return
    icc = im.info.get("icc_profile")
    if im.format == "ICO":
        # Every entry of an icon: file managers draw the one nearest their icon size.
        for size in sorted(im.ico.sizes()):  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                yield im.ico.getimage(size).convert("RGB")  # type: ignore[attr-defined]
    for i in range(MAX_FRAMES):
        try:
            im.seek(i)
            frame = _eight_bit(im).convert("RGB")
        except Exception:
            return
        yield frame
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            # Mail clients and browsers draw transparent pictures over a white page.
            with contextlib.suppress(Exception):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                yield Image.alpha_composite(white, rgba).convert("RGB")
        if i == 0:
            with contextlib.suppress(Exception):
                turned = ImageOps.exif_transpose(im)
                if turned is not None:
                    yield turned.convert("RGB")
        if icc:
            with contextlib.suppress(Exception):
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                managed = ImageCms.profileToProfile(frame, src, ImageCms.createProfile("sRGB"))
                if managed is not None:
                    yield managed


def _eight_bit(im: Image.Image) -> Image.Image:
    """16- and 32-bit grey as a viewer scales it (PIL's convert clips it instead)."""
    if im.mode.startswith("I"):
        arr = np.asarray(im, np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    return im


def pdq_of(frame: Image.Image) -> str:
    return pdq_from_luma(np.asarray(frame.convert("L"), np.float32)).hash


@dataclass(frozen=True)
class Target:
    data: bytes
    pdq: str

    @classmethod
    def of(cls, data: bytes) -> Target:
        first = _frames(data)[0]
        return cls(data, pdq_of(first))


_image_cache: dict[tuple[str, str], bool] = {}


def shows(target: Target, data: bytes) -> bool:
    if data == target.data:
        return True
    key = (target.pdq, hashlib.sha256(data).hexdigest())
    if key not in _image_cache:
        _image_cache[key] = any(hamming(pdq_of(f), target.pdq) <= PDQ_THRESHOLD
                                for f in _frames(data))
    return _image_cache[key]


# ----------------------------------------------------------------------------- tools


def available(program: str) -> bool:
    return shutil.which(program) is not None


def seven_zip() -> str | None:
    for name in ("7z", "7zz"):
        if available(name):
            return name
    return None


def _run(args: list[str], *, stdin: bytes | None = None, cwd: Path | None = None) -> bytes:
    """Run a reader; its exit status is ignored (many exit non-zero yet write files)."""
    try:
        # A session of its own: no controlling terminal to prompt on (bsdtar asks for
        # passphrases on /dev/tty).
        proc = subprocess.run(args, input=stdin if stdin is not None else b"", cwd=cwd,
                              capture_output=True, timeout=TOOL_TIMEOUT, check=False,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return b""
    return proc.stdout


def _files_under(d: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()]


def _scratch() -> str | None:
    """Readers write many small files: in memory where the system offers enough of it
    (a container's 64 MB /dev/shm is not enough, and a full disk would hide photos)."""
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 1024**3:
            return "/dev/shm"
    return None


_SCRATCH = _scratch()


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mfdiff-ref-", dir=_SCRATCH) as tmp:
        yield Path(tmp)


# ----------------------------------------------------------------------------- MIME parsers


def _python_email(raw: bytes, policy: email.policy.Policy) -> list[Leaf]:
    msg = email.message_from_bytes(raw, policy=policy)
    leaves = []
    for p in msg.walk():
        if p.is_multipart():
            continue
        data = p.get_payload(decode=True)
        if isinstance(data, bytes):
            leaves.append(Leaf(data, p.get_content_type(), p.get_content_charset()))
    return leaves


def python_default(raw: bytes) -> list[Leaf]:
    return _python_email(raw, email.policy.default)


def python_compat32(raw: bytes) -> list[Leaf]:
    return _python_email(raw, email.policy.compat32)


def mail_parser(raw: bytes) -> list[Leaf]:
    parsed = mailparser.parse_from_bytes(raw)
    leaves = []
    for a in parsed.attachments:
        payload = a.get("payload") or ""
        if a.get("binary"):
            data = base64.b64decode(payload)
        else:
            data = payload.encode("utf-8", "surrogateescape")
        leaves.append(Leaf(data, a.get("mail_content_type"), a.get("charset")))
    leaves += [Leaf(t.encode("utf-8", "surrogateescape"), "text/html", "utf-8")
               for t in parsed.text_html]
    leaves += [Leaf(t.encode("utf-8", "surrogateescape"), "text/plain", "utf-8")
               for t in parsed.text_plain]
    return leaves


def _with_file(raw: bytes, fn: Callable[[Path, Path], None]) -> list[Leaf]:
    with _workdir() as d:
        src = d / "msg.eml"
        src.write_bytes(raw)
        out = d / "out"
        out.mkdir()
        fn(src, out)
        return [Leaf(data) for data in _files_under(out)] + _volumes(out)


def _volumes(saved: Path) -> list[Leaf]:
    """A multi-volume 7z archive sent as several attachments: saved side by side by the
    reader, 7-Zip joins the volumes when opening the first."""
    program = seven_zip()
    if program is None:
        return []
    leaves: list[Leaf] = []
    for first in sorted(saved.rglob("*.001")):
        with _workdir() as d:
            _run([program, "x", "-y", "-bd", f"-p{PASSWORD}", f"-o{d}", str(first)])
            leaves += [Leaf(data, via="7z-volumes") for data in _files_under(d)]
    return leaves


def mu(raw: bytes) -> list[Leaf]:
    def run(src: Path, out: Path) -> None:
        _run(["mu", "extract", "--save-all", "--overwrite", f"--target-dir={out}", str(src)])
    return _with_file(raw, run)


def ripmime(raw: bytes) -> list[Leaf]:
    def run(src: Path, out: Path) -> None:
        _run(["ripmime", "-i", str(src), "-d", str(out)])
    return _with_file(raw, run)


def munpack(raw: bytes) -> list[Leaf]:
    def run(src: Path, out: Path) -> None:
        _run(["munpack", "-q", "-t", "-C", str(out), str(src)])
    return _with_file(raw, run)


def reformime(raw: bytes) -> list[Leaf]:
    """`reformime -i` lists the sections; each leaf section is taken with `-e -s` (the
    `-x` extraction of maildrop 2.9.3 crashes)."""
    listing = _run(["reformime", "-i"], stdin=raw).decode("latin-1")
    leaves = []
    seen: set[bytes] = set()
    for block in listing.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        section, ctype = fields.get("section"), fields.get("content-type", "")
        if not section or ctype.startswith("multipart/"):
            continue
        # Sections with the same bytes give the same leaf: one `reformime -e` each.
        with contextlib.suppress(KeyError, ValueError):
            span = raw[int(fields["starting-pos"]):int(fields["ending-pos"])]
            if span in seen:
                continue
            seen.add(span)
        data = _run(["reformime", "-e", "-s", section], stdin=raw)
        leaves.append(Leaf(data, ctype, fields.get("charset")))
    return leaves


MimeParser = Callable[[bytes], list[Leaf]]

MIME_PARSERS: dict[str, tuple[MimeParser, str | None]] = {
    "python-default": (python_default, None),
    "python-compat32": (python_compat32, None),
    "mail-parser": (mail_parser, None),
    "mu": (mu, "mu"),
    "ripmime": (ripmime, "ripmime"),
    "munpack": (munpack, "munpack"),
    "reformime": (reformime, "reformime"),
}


def mime_parsers() -> dict[str, MimeParser]:
    return {name: fn for name, (fn, program) in MIME_PARSERS.items()
            if program is None or available(program)}


def mbox_messages(raw: bytes) -> list[bytes]:
    """Python's `mailbox.mbox`: a new message at every line starting `From `."""
    with _workdir() as d:
        path = d / "box.mbox"
        path.write_bytes(raw)
        box = mailbox.mbox(str(path), create=False)
        try:
            return [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.close()


# ----------------------------------------------------------------------------- openers

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\0", b"MM\0*", b"RIFF",
                b"\0\0\0\x0cjP", b"\xff\x4f\xff\x51")


def _is_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_MAGIC) or data[4:12] in (b"ftypheic", b"ftypmif1")


def _is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


def _texty(data: bytes) -> bool:
    head = data[:4096]
    if not head:
        return True
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def _archive_candidate(data: bytes) -> bool:
    if len(data) <= 64:
        return False
    if _is_image(data) or _is_pdf(data) or _texty(data):
        # A picture, document or text with an archive glued after it (a polyglot).
        return b"PK\x05\x06" in data[-65536:] or b"7z\xbc\xaf\x27\x1c" in data[64:]
    return True


def open_bsdtar(data: bytes) -> list[bytes]:
    with _workdir() as d:
        (d / "in").write_bytes(data)
        (d / "x").mkdir()
        _run(["bsdtar", "--passphrase", PASSWORD, "-xf", str(d / "in"), "-C", str(d / "x")])
        return _files_under(d / "x")


def open_bsdtar_stream(data: bytes) -> list[bytes]:
    """libarchive's streaming reader (reading a pipe): local zip headers, not the central
    directory."""
    with _workdir() as d:
        _run(["bsdtar", "--passphrase", PASSWORD, "-xf", "-", "-C", str(d)], stdin=data)
        return _files_under(d)


def open_7z(data: bytes) -> list[bytes]:
    program = seven_zip()
    assert program is not None
    with _workdir() as d:
        (d / "in").write_bytes(data)
        (d / "x").mkdir()
        # The password the constructions' messages tell the recipient (never a prompt).
        _run([program, "x", "-y", "-bd", f"-p{PASSWORD}", f"-o{d / 'x'}", str(d / "in")])
        return _files_under(d / "x")


def open_tnef(data: bytes) -> list[bytes]:
    with _workdir() as d:
        (d / "in").write_bytes(data)
        (d / "x").mkdir()
        _run(["tnef", "--save-body", "--body-pref=ALL", "-C", str(d / "x"), "-f", str(d / "in")])
        return _files_under(d / "x")


def open_exif_thumbnail(data: bytes) -> list[bytes]:
    """The JPEG preview in a JPEG's Exif segment (IFD1), which file managers show."""
    app1 = data.find(b"\xff\xe1")
    if app1 < 0 or data[app1 + 4:app1 + 10] != b"Exif\0\0":
        return []
    seg_len = int.from_bytes(data[app1 + 2:app1 + 4], "big")
    segment = data[app1 + 10:app1 + 2 + seg_len]
    start = segment.find(b"\xff\xd8\xff")
    end = segment.rfind(b"\xff\xd9")
    return [segment[start:end + 2]] if 0 <= start < end else []


def open_wmf(data: bytes) -> list[bytes]:
    """Bitmaps drawn by a Windows metafile's META_STRETCHDIB and META_DIBSTRETCHBLT records
    (MS-WMF 2.3.1), as BMP files; a placeable header (.wmf files) is skipped."""
    if data[:4] == b"\xd7\xcd\xc6\x9a":
        data = data[22:]
    if len(data) < 18:
        return []
    pos = int.from_bytes(data[2:4], "little") * 2
    out = []
    while pos + 6 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little") * 2
        function = int.from_bytes(data[pos + 4:pos + 6], "little")
        if size < 6:
            break
        # META_STRETCHDIB (0x0F43) and META_DIBSTRETCHBLT (0x0B41): where the DIB starts.
        start = {0x0F43: 28, 0x0B41: 26}.get(function)
        if start is not None:
            dib = data[pos + start:pos + size]
            if len(dib) > 40:
                header_size = int.from_bytes(dib[:4], "little")
                colours = int.from_bytes(dib[32:36], "little")
                offset = 14 + header_size + 4 * colours
                out.append(b"BM" + (14 + len(dib)).to_bytes(4, "little") + b"\0" * 4
                           + offset.to_bytes(4, "little") + dib)
        pos += size
    return out


def open_emf(data: bytes) -> list[bytes]:
    """Bitmaps drawn by an enhanced metafile's EMR_STRETCHDIBITS and EMR_STRETCHBLT records
    (MS-EMF 2.3.1), as BMP files."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<II", data, pos)
        if size < 8:
            break
        # EMR_STRETCHDIBITS (81) and EMR_STRETCHBLT (77): where their bitmap fields are.
        fields = {81: 48, 77: 84}.get(kind)
        if fields is not None and size >= fields + 16:
            off_bmi, cb_bmi, off_bits, cb_bits = struct.unpack_from("<4I", data, pos + fields)
            bmi = data[pos + off_bmi:pos + off_bmi + cb_bmi]
            bits = data[pos + off_bits:pos + off_bits + cb_bits]
            out.append(b"BM" + (14 + len(bmi) + len(bits)).to_bytes(4, "little") + b"\0" * 4
                       + (14 + len(bmi)).to_bytes(4, "little") + bmi + bits)
        pos += size
    return out


def open_eps_preview(data: bytes) -> list[bytes]:
    """The WMF and TIFF previews of a DOS EPS file (binary header C5 D0 D3 C6)."""
    if len(data) < 30:
        return []
    _, _, _, wmf_at, wmf_len, tiff_at, tiff_len = struct.unpack_from("<7I", data)
    return [data[at:at + n] for at, n in ((wmf_at, wmf_len), (tiff_at, tiff_len)) if at and n]


def open_id3_pictures(data: bytes) -> list[bytes]:
    """APIC pictures of an ID3v2.3/2.4 tag, after undoing unsynchronisation (ID3v2.3 3.1)."""
    if len(data) < 10 or data[:3] != b"ID3":
        return []
    version, flags = data[3], data[5]
    size = 0
    for b in data[6:10]:
        size = (size << 7) | (b & 0x7F)
    tag = data[10:10 + size]
    if flags & 0x80:
        tag = tag.replace(b"\xff\x00", b"\xff")
    out = []
    pos = 0
    while pos + 10 <= len(tag) and tag[pos:pos + 4].strip(b"\0"):
        frame_id = tag[pos:pos + 4]
        raw_size = tag[pos + 4:pos + 8]
        if version >= 4:
            n = 0
            for b in raw_size:
                n = (n << 7) | (b & 0x7F)
        else:
            n = int.from_bytes(raw_size, "big")
        body = tag[pos + 10:pos + 10 + n]
        if version == 3 and tag[pos + 9] & 0x80 and len(body) > 4:
            # A compressed frame (ID3v2.3 3.3.1): decompressed size, then zlib data.
            with contextlib.suppress(zlib.error):
                body = zlib.decompress(body[4:])
        if frame_id == b"APIC" and body:
            encoding = body[0]
            mime_end = body.index(b"\0", 1)
            rest = body[mime_end + 2:]  # past the MIME type's NUL and the picture type
            terminator = b"\0\0" if encoding in (1, 2) else b"\0"
            out.append(rest[rest.index(terminator) + len(terminator):])
        pos += 10 + n
    return out


def _ogg_packets(data: bytes) -> list[bytes]:
    packets: list[bytes] = []
    current = b""
    pos = 0
    while data[pos:pos + 4] == b"OggS" and pos + 27 <= len(data):
        n = data[pos + 26]
        table = data[pos + 27:pos + 27 + n]
        body = pos + 27 + n
        for length in table:
            current += data[body:body + length]
            body += length
            if length < 255:
                packets.append(current)
                current = b""
        pos = body
    return packets


def open_ogg_pictures(data: bytes) -> list[bytes]:
    """Cover pictures in Vorbis comments (OpusTags or the Vorbis comment header) of an Ogg
    file: METADATA_BLOCK_PICTURE, a FLAC picture block in base64."""
    out = []
    for packet in _ogg_packets(data):
        for m in re.finditer(rb"METADATA_BLOCK_PICTURE=([A-Za-z0-9+/=]+)", packet,
                             re.IGNORECASE):
            with contextlib.suppress(binascii.Error, struct.error, ValueError):
                block = base64.b64decode(m.group(1))
                pos = 4
                (mime_len,) = struct.unpack_from(">I", block, pos)
                pos += 4 + mime_len
                (desc_len,) = struct.unpack_from(">I", block, pos)
                pos += 4 + desc_len + 16
                (data_len,) = struct.unpack_from(">I", block, pos)
                out.append(block[pos + 4:pos + 4 + data_len])
    return out


def open_flac_pictures(data: bytes) -> list[bytes]:
    """PICTURE metadata blocks (type 6) of a FLAC stream."""
    out = []
    pos = 4
    while pos + 4 <= len(data):
        head = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        block = data[pos + 4:pos + 4 + length]
        if head & 0x7F == 6:
            with contextlib.suppress(struct.error):
                p = 4
                (mime_len,) = struct.unpack_from(">I", block, p)
                p += 4 + mime_len
                (desc_len,) = struct.unpack_from(">I", block, p)
                p += 4 + desc_len + 16
                (data_len,) = struct.unpack_from(">I", block, p)
                out.append(block[p + 4:p + 4 + data_len])
        pos += 4 + length
        if head & 0x80:
            break
    return out


def _is_wmf(data: bytes) -> bool:
    return data[:4] == b"\xd7\xcd\xc6\x9a" or data[:6] in (b"\x01\x00\x09\x00\x00\x03",
                                                           b"\x02\x00\x09\x00\x00\x03")


def _is_openpgp(data: bytes) -> bool:
    if b"-----BEGIN PGP MESSAGE-----" in data[:65536]:
        return True
    if not data or not data[0] & 0x80:
        return False
    tag = (data[0] & 0x3F) if data[0] & 0x40 else (data[0] >> 2) & 0x0F
    return tag in (3, 8, 11)  # symmetric session key, compressed data, literal data


def open_gpg(data: bytes) -> list[bytes]:
    with _workdir() as d:
        (d / "in").write_bytes(data)
        (d / "home").mkdir(mode=0o700)
        _run(["gpg", "--batch", "--homedir", str(d / "home"), "--pinentry-mode", "loopback",
              "--passphrase", PASSWORD, "--yes", "--decrypt", "-o", str(d / "out"),
              str(d / "in")])
        return [(d / "out").read_bytes()] if (d / "out").exists() else []


def open_pdftoppm(data: bytes) -> list[bytes]:
    """Pages rendered at 36 dpi: the constructions' pages are photo-sized, so a page is the
    photo at half size (PDQ works on 64 x 64 anyway); PPM, as PNG compression would cost
    more than the rendering."""
    with _workdir() as d:
        (d / "in.pdf").write_bytes(data)
        (d / "x").mkdir()
        for password in ([], ["-upw", PASSWORD]):
            # -cropbox: what viewers show of a page (pdftoppm's default is the media box).
            _run(["pdftoppm", "-cropbox", "-r", "36", "-l", "100", *password, str(d / "in.pdf"),
                  str(d / "x" / "p")])
            pages = _files_under(d / "x")
            if pages:
                return pages
        return []


def open_pdfdetach(data: bytes) -> list[bytes]:
    with _workdir() as d:
        (d / "in.pdf").write_bytes(data)
        (d / "x").mkdir()
        _run(["pdfdetach", "-saveall", "-o", str(d / "x"), str(d / "in.pdf")])
        return _files_under(d / "x")


def _is_cms_signed(data: bytes) -> bool:
    return data[:1] == b"\x30" and b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02" in data[:64]


def open_openssl_cms(data: bytes) -> list[bytes]:
    """The signed content of an opaque S/MIME signature (not verified: a recipient's
    client shows it with a warning)."""
    with _workdir() as d:
        (d / "in").write_bytes(data)
        _run(["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", str(d / "in"),
              "-out", str(d / "out")])
        return [(d / "out").read_bytes()] if (d / "out").exists() else []


def _decompressor(program: str) -> Callable[[bytes], list[bytes]]:
    """A single-stream decompressor (`program -dc`): a compressed file is its content."""
    def run(data: bytes) -> list[bytes]:
        out = _run([program, "-dc"], stdin=data)
        return [out] if out else []
    return run


def open_cabextract(data: bytes) -> list[bytes]:
    with _workdir() as d:
        (d / "in.cab").write_bytes(data)
        (d / "x").mkdir()
        _run(["cabextract", "-q", "-d", str(d / "x"), str(d / "in.cab")])
        return _files_under(d / "x")


def _is_cpio(data: bytes) -> bool:
    return data[:6] in (b"070701", b"070702", b"070707") or data[:2] in (b"\xc7\x71", b"\x71\xc7")


def open_cpio(data: bytes) -> list[bytes]:
    with _workdir() as d:
        _run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], stdin=data, cwd=d)
        return _files_under(d)


# Published formats with no program installed: decoders written to the format's text.

_WS = " \t\n\r\f"


def forgiving_base64(text: str) -> bytes | None:
    """WHATWG forgiving-base64 decode."""
    text = re.sub(f"[{_WS}]", "", text)
    if len(text) % 4 == 0 and text.endswith("="):
        text = text[:-2] if text.endswith("==") else text[:-1]
    if len(text) % 4 == 1 or re.search(r"[^A-Za-z0-9+/]", text):
        return None
    return base64.b64decode(text + "=" * (-len(text) % 4))


def data_url_body(url: str) -> bytes | None:
    """WHATWG URL parsing (strip C0/space at the ends, drop tab and newline anywhere), then
    the data: URL processor (percent-decode the body; `;base64` after the type, spaces
    allowed before `base64`)."""
    url = re.sub("[\t\n\r]", "", url.strip("".join(map(chr, range(33)))))
    if url[:5].lower() != "data:":
        return None
    mime, comma, body = url[5:].partition(",")
    if not comma:
        return None
    raw = urllib.parse.unquote_to_bytes(body)
    mime = mime.strip(_WS)
    if re.search(r";[ ]*base64$", mime, re.IGNORECASE):
        return forgiving_base64(raw.decode("latin-1"))
    return raw


class _UrlCollector(html.parser.HTMLParser):
    """Attribute values (the parser resolves character references, as browsers do) and
    CSS `url(...)` in style attributes and <style> elements."""

    URL_ATTRS = frozenset({"src", "href", "xlink:href", "srcset", "background", "poster",
                           "data"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if name in self.URL_ATTRS:
                self.urls.append(value.split(" ")[0] if name == "srcset" else value)
            elif name == "style":
                self._css(value)

    handle_startendtag = handle_starttag

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css(data)

    def _css(self, css: str) -> None:
        self.urls += css_urls(css)


def _css_unescape(css: str) -> str:
    """CSS escapes (CSS Syntax 3, 4.3.7): `\\` + 1-6 hex digits (+ one optional space) is
    that code point, `\\` + any other character is the character."""
    def one(m: re.Match[str]) -> str:
        if m.group(1):
            cp = int(m.group(1), 16)
            return chr(cp) if 0 < cp <= 0x10FFFF else "\ufffd"
        return m.group(2)
    return re.sub(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n]?|(.))", one, css, flags=re.DOTALL)


def css_urls(css: str, depth: int = 0) -> list[str]:
    """`url(...)`, `@import "..."` and `image-set("...")` targets; a `data:` stylesheet is
    read in turn."""
    text = _css_unescape(css)
    found = [m.group(2) for m in re.finditer(r"url\(\s*(['\"]?)(.*?)\1\s*\)", text,
                                             re.DOTALL | re.IGNORECASE)]
    found += [m.group(2) for m in re.finditer(r"@import\s+(['\"])(.*?)\1", text, re.DOTALL)]
    # image-set() takes plain strings as well as url()s.
    for m in re.finditer(r"image-set\((.*?)\)", text, re.DOTALL | re.IGNORECASE):
        found += [q.group(2) for q in re.finditer(r"(['\"])(.*?)\1", m.group(1), re.DOTALL)]
    for url in list(found):
        if depth < 3 and re.match(r"\s*data:\s*text/css", url, re.IGNORECASE):
            body = data_url_body(url)
            if body:
                found += css_urls(body.decode("utf-8", "replace"), depth + 1)
    return found


def _as_text(leaf: Leaf) -> str:
    data = leaf.data
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    for charset in (leaf.charset, "utf-8"):
        if charset:
            with contextlib.suppress(LookupError, UnicodeDecodeError):
                return data.decode(charset)
    return data.decode("latin-1")


def _is_markup(leaf: Leaf) -> bool:
    if leaf.ctype in ("text/html", "image/svg+xml", "text/xml", "application/xhtml+xml"):
        return True
    head = _as_text(Leaf(leaf.data[:8192], None, leaf.charset)).lower()
    return any(tag in head for tag in ("<html", "<svg", "<img", "<!doctype html", "<body"))


def open_html(leaf: Leaf) -> list[bytes]:
    collector = _UrlCollector()
    with contextlib.suppress(Exception):
        collector.feed(_as_text(leaf))
        collector.close()
    found = (data_url_body(u) for u in collector.urls)
    return [b for b in found if b]


def _unfold(text: str) -> str:
    return re.sub(r"\r?\n[ \t]", "", text)


def open_vcard(leaf: Leaf) -> list[bytes]:
    """vCard PHOTO/LOGO and iCalendar ATTACH properties with inline (base64) values."""
    out = []
    for line in _unfold(_as_text(leaf)).splitlines():
        name, colon, value = line.partition(":")
        if not colon or name.split(";")[0].upper() not in ("PHOTO", "LOGO", "ATTACH"):
            continue
        params = name.upper().split(";")[1:]
        if value.lower().startswith("data:"):
            body = data_url_body(value)
            if body:
                out.append(body)
        elif any(p in ("ENCODING=B", "ENCODING=BASE64", "BASE64") for p in params):
            with contextlib.suppress(binascii.Error):
                out.append(base64.b64decode(re.sub(r"\s", "", value)))
    return out


def open_rtf_pict(leaf: Leaf) -> list[bytes]:
    out = []
    text = leaf.data.decode("latin-1")
    for m in re.finditer(r"\{\\pict", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        group = text[m.end():i - 1]
        binary = re.search(r"\\bin(\d+) ?", group)
        if binary:
            # \binN: N raw bytes follow (the brace counting above may stop inside them).
            start = m.end() + binary.end()
            out.append(leaf.data[start:start + int(binary.group(1))])
            continue
        # Control words first, then the picture as hex digits.
        body = re.sub(r"\\[a-z]+-?\d* ?", "", group)
        body = re.sub(r"\{[^}]*\}", "", body)
        digits = re.sub(r"[^0-9a-fA-F]", "", body)
        with contextlib.suppress(binascii.Error, ValueError):
            picture = binascii.unhexlify(digits[: len(digits) // 2 * 2])
            if "\\dibitmap" in group and len(picture) > 40:
                # A device-independent bitmap: the BMP file header is all it lacks.
                header_size = int.from_bytes(picture[:4], "little")
                colours = int.from_bytes(picture[32:36], "little")
                offset = 14 + header_size + 4 * colours
                picture = (b"BM" + (14 + len(picture)).to_bytes(4, "little") + b"\0" * 4
                           + offset.to_bytes(4, "little") + picture)
            out.append(picture)
    return out


def open_flat_odf(leaf: Leaf) -> list[bytes]:
    out = []
    for m in re.finditer(rb"<office:binary-data>(.*?)</office:binary-data>", leaf.data, re.DOTALL):
        with contextlib.suppress(binascii.Error):
            out.append(base64.b64decode(re.sub(rb"\s", b"", m.group(1))))
    return out


_HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_HQX_VALUE = {c: i for i, c in enumerate(_HQX)}


def open_binhex(leaf: Leaf) -> list[bytes]:
    """BinHex 4.0: 6-bit text between colons, run-length 0x90, header, data fork."""
    text = leaf.data
    start = text.find(b"(This file must be converted with BinHex")
    colon = text.find(b":", text.find(b"\n", start))
    end = text.find(b":", colon + 1)
    if start < 0 or colon < 0 or end < 0:
        return []
    chars = [c for c in text[colon + 1:end] if c not in b"\r\n\t "]
    bits = "".join(f"{_HQX_VALUE.get(c, 0):06b}" for c in chars)
    packed = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits) - 7, 8))
    out = bytearray()
    i = 0
    while i < len(packed):
        b = packed[i]
        if b == 0x90 and i + 1 < len(packed):
            n = packed[i + 1]
            if n == 0:
                out.append(0x90)
            elif out:
                out.extend(out[-1:] * (n - 1))
            i += 2
        else:
            out.append(b)
            i += 1
    if not out:
        return []
    n = out[0]
    pos = 1 + n + 1 + 4 + 4 + 2
    data_len = int.from_bytes(out[pos:pos + 4], "big")
    pos += 8 + 2
    return [bytes(out[pos:pos + data_len])]


def _looks_like_message(data: bytes) -> bool:
    head, sep, _ = data[:65536].partition(b"\n\n")
    if not sep:
        head, sep, _ = data[:65536].partition(b"\r\n\r\n")
    return bool(sep and re.match(rb"[!-9;-~]+:", head)
                and re.search(rb"(?im)^(content-type|mime-version|from|subject):", head))


@dataclass(frozen=True)
class Opener:
    name: str
    applies: Callable[[Leaf], bool]
    open: Callable[[Leaf], list[bytes]]
    program: str | None = None
    typed: bool = False  # reads the leaf's MIME type and charset, not only its bytes


def _on_data(fn: Callable[[bytes], list[bytes]]) -> Callable[[Leaf], list[bytes]]:
    return lambda leaf: fn(leaf.data)


OPENERS: tuple[Opener, ...] = (
    Opener("bsdtar", lambda lf: _archive_candidate(lf.data), _on_data(open_bsdtar), "bsdtar"),
    Opener("bsdtar-stream", lambda lf: lf.data.startswith(b"PK\x03\x04"),
           _on_data(open_bsdtar_stream), "bsdtar"),
    Opener("7z", lambda lf: _archive_candidate(lf.data), _on_data(open_7z), "7z"),
    Opener("tnef", lambda lf: lf.data.startswith(b"\x78\x9f\x3e\x22"), _on_data(open_tnef),
           "tnef"),
    Opener("gpg", lambda lf: _is_openpgp(lf.data), _on_data(open_gpg), "gpg"),
    Opener("exif-thumbnail", lambda lf: lf.data.startswith(b"\xff\xd8\xff"),
           _on_data(open_exif_thumbnail)),
    Opener("pdftoppm", lambda lf: _is_pdf(lf.data), _on_data(open_pdftoppm), "pdftoppm"),
    Opener("pdfdetach", lambda lf: _is_pdf(lf.data), _on_data(open_pdfdetach), "pdfdetach"),
    Opener("openssl-cms", lambda lf: _is_cms_signed(lf.data), _on_data(open_openssl_cms),
           "openssl"),
    # cabextract also finds cabinets inside other files (self-extractors).
    Opener("cabextract", lambda lf: b"MSCF\0\0\0\0" in lf.data, _on_data(open_cabextract),
           "cabextract"),
    Opener("cpio", lambda lf: _is_cpio(lf.data), _on_data(open_cpio), "cpio"),
    Opener("lzip", lambda lf: lf.data.startswith(b"LZIP"), _on_data(_decompressor("lzip")),
           "lzip"),
    Opener("lz4", lambda lf: lf.data.startswith(b"\x04\x22\x4d\x18"),
           _on_data(_decompressor("lz4")), "lz4"),
    Opener("html-data-url", _is_markup, open_html, typed=True),
    Opener("vcard", lambda lf: lf.data.lstrip()[:11].upper() == b"BEGIN:VCARD", open_vcard),
    Opener("icalendar", lambda lf: lf.data.lstrip()[:15].upper() == b"BEGIN:VCALENDAR",
           open_vcard),
    Opener("rtf-pict", lambda lf: lf.data.lstrip().startswith(b"{\\rtf"), open_rtf_pict),
    Opener("wmf", lambda lf: _is_wmf(lf.data), _on_data(open_wmf)),
    Opener("id3-picture", lambda lf: lf.data[:3] == b"ID3", _on_data(open_id3_pictures)),
    Opener("flac-picture", lambda lf: lf.data[:4] == b"fLaC", _on_data(open_flac_pictures)),
    Opener("ogg-picture", lambda lf: lf.data[:4] == b"OggS", _on_data(open_ogg_pictures)),
    Opener("eps-preview", lambda lf: lf.data[:4] == b"\xc5\xd0\xd3\xc6",
           _on_data(open_eps_preview)),
    Opener("emf", lambda lf: lf.data[:4] == b"\x01\0\0\0" and lf.data[40:44] == b" EMF",
           _on_data(open_emf)),
    Opener("flat-odf", lambda lf: b"<office:binary-data>" in lf.data, open_flat_odf),
    Opener("binhex", lambda lf: b"(This file must be converted with BinHex" in lf.data,
           open_binhex),
)


def openers() -> list[Opener]:
    out = []
    for o in OPENERS:
        if o.program == "7z":
            if seven_zip() is not None:
                out.append(o)
        elif o.program is None or available(o.program):
            out.append(o)
    return out


# ----------------------------------------------------------------------------- chains


def chains_showing(raw: bytes, target: Target) -> dict[str, list[str]]:
    """For each MIME parser, the chains through it that show the photo (empty: none)."""
    parsers = mime_parsers()
    active = openers()
    result: dict[str, list[str]] = {}
    messages = [("", raw)]
    if raw.startswith(b"From "):
        messages = [("python-mailbox>", m) for m in mbox_messages(raw)]
    for parser_name, parse in parsers.items():
        found: list[str] = []
        for prefix, msg in messages:
            found += _walk(prefix + parser_name, parse, msg, target, active)
        result[parser_name] = sorted(set(found))
    return result


_opened: dict[tuple[str, str], list[bytes]] = {}


def _open_cached(opener: Opener, leaf: Leaf, digest: str) -> list[bytes]:
    """Every parser yields the same attachment: open it once per opener. An opener that
    reads text is keyed by the text (parsers differ in the charset they report, rarely in
    the text it gives)."""
    if opener.typed:
        digest = hashlib.sha256(_as_text(leaf).encode("utf-8", "surrogatepass")).hexdigest()
    key = (opener.name, digest)
    if key not in _opened:
        _opened[key] = opener.open(leaf)
    return _opened[key]


def _walk(chain0: str, parse: MimeParser, raw: bytes, target: Target,
          active: list[Opener]) -> list[str]:
    found: list[str] = []
    seen: set[str] = set()
    try:
        first = parse(raw)
    except Exception:
        return found
    queue: list[tuple[str, Leaf, int]] = [
        (f"{chain0}>{leaf.via}" if leaf.via else chain0, leaf, 0) for leaf in first]
    while queue:
        chain, leaf, depth = queue.pop(0)
        digest = hashlib.sha256(leaf.data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        if shows(target, leaf.data):
            found.append(chain)
            continue
        if depth >= MAX_DEPTH:
            continue
        if _looks_like_message(leaf.data):
            # A message saved from a message: opened in the same mail reader.
            with contextlib.suppress(Exception):
                queue += [(chain + ">eml", child, depth + 1) for child in parse(leaf.data)]
        for opener in active:
            try:
                if not opener.applies(leaf):
                    continue
                children = _open_cached(opener, leaf, digest)
            except Exception:
                continue
            queue += [(f"{chain}>{opener.name}", Leaf(c), depth + 1) for c in children]
    return found
