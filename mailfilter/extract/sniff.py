"""What bytes are, by their magic numbers, whatever a message claims they are.

Images are recognised by content (JPEG, PNG, GIF, WebP, BMP, TIFF, HEIC/AVIF, ICO, JPEG 2000,
JPEG XL, PSD); so are the containers the walk opens. Declared types and filename extensions
are only a fallback (`declared_container`, `declared_image`). A format added here (or in
magic.py) needs its first two bytes in sweep._first_bytes too: text-only mode sniffs only past
that table (`sweep.may_start_file`).
"""

from __future__ import annotations

import re

from mailfilter.magic import MIME_TYPES, image_format

# Canonical container types: the `containers` chain of an Attachment uses these.
ZIP = "application/zip"
TAR = "application/x-tar"
GZIP = "application/gzip"
BZIP2 = "application/x-bzip2"
XZ = "application/x-xz"
SEVEN_ZIP = "application/x-7z-compressed"
RAR = "application/vnd.rar"
PDF = "application/pdf"
TNEF = "application/ms-tnef"
PKCS7 = "application/pkcs7-mime"
MESSAGE = "message/rfc822"
ZSTD = "application/zstd"
ISO9660 = "application/x-iso9660-image"
CAB = "application/vnd.ms-cab-compressed"
CPIO = "application/x-cpio"
XAR = "application/x-xar"
COMPRESS = "application/x-compress"
LZIP = "application/x-lzip"
LZ4 = "application/x-lz4"
LZMA = "application/x-lzma"
OPENPGP = "application/pgp-encrypted"
# Audio files, for the pictures they carry (audio.py): an ID3v2 tag (before MP3 mostly, also
# before FLAC or anything else), native FLAC, Ogg.
ID3 = "audio/mpeg"
FLAC = "audio/flac"
OGG = "audio/ogg"
AUDIO = (ID3, FLAC, OGG)
# Windows metafiles: drawings whose records may carry bitmaps (metafile.py opens them).
WMF = "image/wmf"
EMF = "image/emf"

def image_type(data: bytes) -> str | None:
    """The image type the bytes start with, as a MIME type, or None."""
    fmt = image_format(data)
    return MIME_TYPES[fmt] if fmt else None


def container_type(data: bytes, text: bool = False) -> str | None:
    """The container format the bytes start with (canonical type), or None.

    A PDF may have up to 1 KiB of junk before `%PDF-` (readers accept it), except in a part
    declared as text, where `%PDF-` has to come first.
    """
    head = data[:16]
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return ZIP
    if head.startswith(b"\x1f\x8b"):
        return GZIP
    if head.startswith(b"BZh") and len(head) >= 10 and head[3:4].isdigit() and head[4:10] in (
        b"1AY&SY",
        b"\x17rE8P\x90",
    ):
        return BZIP2
    if head.startswith(b"\xfd7zXZ\x00"):
        return XZ
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return SEVEN_ZIP
    if head.startswith(b"Rar!\x1a\x07"):
        return RAR
    if head.startswith(b"\x78\x9f\x3e\x22"):
        return TNEF
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return ZSTD
    more = _more_containers(data)
    if more is not None:
        return more
    if data[:64].lstrip()[:5] == b"%PDF-" or (not text and _PDF_LATE.search(data, 0, 1040)):
        return PDF
    if _is_tar(data):
        return TAR
    if _is_cms(data):
        return PKCS7
    return None


_PDF_LATE = re.compile(rb"%PDF-[12]\.[0-9]")


def _more_containers(data: bytes) -> str | None:
    """ISO 9660, CAB, cpio, xar, compress, lzip, lz4, audio (ID3, FLAC, Ogg) and OpenPGP
    (binary or armored)."""
    head = data[:16]
    if head.startswith(b"MSCF\x00\x00\x00\x00"):
        return CAB
    if head.startswith(b"xar!") and len(head) >= 8 and head[4:6] == b"\x00\x1c":
        return XAR
    if head.startswith(b"\x1f\x9d") and len(head) > 2 and 9 <= head[2] & 0x1F <= 16:
        return COMPRESS
    if head.startswith(b"LZIP") and len(head) > 4 and head[4] in (0, 1):
        return LZIP
    if head.startswith((b"\x04\x22\x4d\x18", b"\x02\x21\x4c\x18")):  # frame, legacy
        return LZ4
    if _is_lzma_alone(head):
        return LZMA
    audio = _audio(head)
    if audio is not None:
        return audio
    if len(data) > 0x8001 and any(data[at : at + 5] == b"CD001" for at in (0x8001, 0x8801, 0x9001)):
        return ISO9660
    if _is_cpio(data):
        return CPIO
    if _is_openpgp(data):
        return OPENPGP
    if is_wmf(data):
        return WMF
    if is_emf(data):
        return EMF
    return None


WMF_PLACEABLE_KEY = b"\xd7\xcd\xc6\x9a"
WMF_HEADER_WORDS = 9
WMF_VERSIONS = (0x0100, 0x0300)


def is_wmf(data: bytes) -> bool:
    """A placeable WMF (.wmf files: key 9AC6CDD7), or a bare WMF header: Type 1 (memory) or
    2 (disk), HeaderSize 9 words, Version 0x0100 or 0x0300 (MS-WMF 2.3.2.2, 2.3.2.3)."""
    if data[:4] == WMF_PLACEABLE_KEY:
        return True
    if len(data) < 6:
        return False
    kind = int.from_bytes(data[0:2], "little")
    header_words = int.from_bytes(data[2:4], "little")
    version = int.from_bytes(data[4:6], "little")
    return kind in (1, 2) and header_words == WMF_HEADER_WORDS and version in WMF_VERSIONS


def is_emf(data: bytes) -> bool:
    """EMR_HEADER first (type 1, at least 88 bytes, a multiple of 4) with the signature
    " EMF" at offset 40 (MS-EMF 2.3.4.2)."""
    if len(data) < 88 or data[:4] != b"\x01\x00\x00\x00" or data[40:44] != b" EMF":
        return False
    size = int.from_bytes(data[4:8], "little")
    return size >= 88 and size % 4 == 0


def _audio(head: bytes) -> str | None:
    """An ID3v2 tag header (version 2-4, sizes in 7-bit bytes), FLAC's `fLaC` then its
    STREAMINFO block, or an Ogg page (version 0)."""
    if (head.startswith(b"ID3") and len(head) >= 10 and head[3] in (2, 3, 4)
            and head[4] != 0xFF and not any(b & 0x80 for b in head[6:10])):
        return ID3
    if head.startswith(b"fLaC") and len(head) > 4 and head[4] & 0x7F == 0:
        return FLAC
    if head.startswith(b"OggS\x00") and len(head) > 5 and head[5] <= 7:
        return OGG
    return None


def _is_lzma_alone(head: bytes) -> bool:
    """The .lzma (LZMA_Alone) header has no magic: properties byte 0x5D (what lzma and xz
    write), a power-of-two dictionary of 64 KiB to 256 MiB, and a size that is unknown (all
    ones) or below 1 TiB."""
    if len(head) < 13 or head[0] != 0x5D:
        return False
    dictionary = int.from_bytes(head[1:5], "little")
    size = int.from_bytes(head[5:13], "little")
    return (1 << 16 <= dictionary <= 1 << 28 and dictionary & (dictionary - 1) == 0
            and (size == (1 << 64) - 1 or size < 1 << 40))


_CPIO_ASCII = {b"070707": (76, 8), b"070701": (110, 16), b"070702": (110, 16)}


def _is_cpio(data: bytes) -> bool:
    ascii_form = _CPIO_ASCII.get(data[:6])
    if ascii_form is not None:  # odc (octal fields) or newc/crc (hex fields)
        size, base = ascii_form
        fields = data[6:size]
        if len(fields) < size - 6:
            return False
        try:
            int(fields, base)
        except ValueError:
            return False
        return True
    if len(data) < 28 or data[:2] not in (b"\xc7\x71", b"\x71\xc7"):
        return False
    # binary: a two-byte magic only, so the name (length at offset 20) must end in NUL
    if data[:2] == b"\xc7\x71":
        namesize = int.from_bytes(data[20:22], "little")
    else:
        namesize = int.from_bytes(data[20:22], "big")
    return 2 <= namesize <= 4096 and 26 + namesize <= len(data) and data[25 + namesize] == 0


ARMOR_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
ARMOR_KEYS = (b"-----BEGIN PGP PUBLIC KEY BLOCK-----", b"-----BEGIN PGP PRIVATE KEY BLOCK-----")

# First packets of an OpenPGP message, by tag, with the first body bytes they allow:
# PKESK (1) and SKESK (3) start encrypted messages, one-pass signature (4) and compressed
# data (8) signed ones, literal data (11) `gpg --store`, marker (10) old PGP, SEIPD (18);
# public (6) and secret (5) keys start key blocks, whose photo IDs are images.
_PGP_FIRST = {
    1: (3, 6), 3: (4, 5, 6), 4: (3, 6), 5: (3, 4, 5, 6), 6: (3, 4, 5, 6), 8: (0, 1, 2, 3),
    10: (ord("P"),), 11: tuple(b"btul1m"), 18: (1, 2),
}


def _is_openpgp(data: bytes) -> bool:
    if data[:64].lstrip().startswith((ARMOR_MESSAGE, *ARMOR_KEYS)):
        return True
    if len(data) < 3 or not data[0] & 0x80:
        return False
    first = data[0]
    if first & 0x40:  # new packet format
        tag = first & 0x3F
        octet = data[1]
        if octet < 192:
            length: int | None = octet
            body = 2
        elif octet < 224:
            length, body = ((octet - 192) << 8) + data[2] + 192, 3
        elif octet == 255:
            length, body = int.from_bytes(data[2:6], "big"), 6
        else:
            length, body = None, 2  # a partial body length
    else:
        tag = (first >> 2) & 0x0F
        width = (1, 2, 4, 0)[first & 3]
        length = int.from_bytes(data[1 : 1 + width], "big") if width else None
        body = 1 + width
    allowed = _PGP_FIRST.get(tag)
    if allowed is None or body >= len(data) or data[body] not in allowed:
        return False
    return length is None or (length > 0 and body + length <= len(data))


def _is_tar(data: bytes) -> bool:
    if len(data) < 512:
        return False
    if data[257:262] == b"ustar":
        return True
    # Old (v7) tar headers have no magic; their checksum has to agree.
    field = data[148:156].replace(b"\x00", b" ").strip()
    if not field or not all(48 <= c <= 55 for c in field):
        return False
    header = data[:148] + b" " * 8 + data[156:512]
    return int(field, 8) == sum(header) and data[0] != 0


_CMS_OID_PREFIX = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07"  # 1.2.840.113549.1.7.x
_CMS_COMPRESSED_OID = b"\x06\x0b\x2a\x86\x48\x86\xf7\x0d\x01\x09\x10\x01\x09"


def _is_cms(data: bytes) -> bool:
    if not data.startswith(b"\x30"):
        return False
    first = data[1] if len(data) > 1 else 0
    if first == 0x80:
        offset = 2
    elif first & 0x80:
        offset = 2 + (first & 0x7F)
    else:
        offset = 2
    return data.startswith((_CMS_OID_PREFIX, _CMS_COMPRESSED_OID), offset)


_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_MESSAGE_HEADERS = {
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
    b"content-type", b"received", b"return-path", b"reply-to", b"sender", b"delivered-to",
    b"x-mailer", b"user-agent", b"content-transfer-encoding", b"in-reply-to", b"references",
}


def looks_like_message(data: bytes) -> bool:
    """Whether the bytes begin with an RFC 5322 header block (a saved .eml, an MHTML page)."""
    seen: set[bytes] = set()
    for n, line in enumerate(data[:16384].splitlines()):
        if not line:
            break
        if n >= 200:
            break
        if line[:1] in (b" ", b"\t"):
            if n == 0:
                return False
            continue
        if n == 0 and line.startswith(b"From "):  # an mbox separator line
            continue
        m = _HEADER_LINE.match(line)
        if not m:
            return False
        seen.add(m.group(0).rstrip(b": \t").lower())
    return len(seen & _MESSAGE_HEADERS) >= 2


# --- declared types and extensions -----------------------------------------------------

_DECLARED_CONTAINERS = {
    "application/zip": ZIP,
    "application/x-zip": ZIP,
    "application/x-zip-compressed": ZIP,
    "application/x-tar": TAR,
    "application/x-gtar": TAR,
    "application/gzip": GZIP,
    "application/x-gzip": GZIP,
    "application/x-gtar-compressed": GZIP,
    "application/x-bzip2": BZIP2,
    "application/x-bzip": BZIP2,
    "application/x-xz": XZ,
    "application/x-7z-compressed": SEVEN_ZIP,
    "application/vnd.rar": RAR,
    "application/x-rar": RAR,
    "application/x-rar-compressed": RAR,
    "application/pdf": PDF,
    "application/x-pdf": PDF,
    "application/ms-tnef": TNEF,
    "application/vnd.ms-tnef": TNEF,
    "application/pkcs7-mime": PKCS7,
    "application/x-pkcs7-mime": PKCS7,
    "message/rfc822": MESSAGE,
    "message/global": MESSAGE,
    "message/news": MESSAGE,
    "text/rfc822-headers": MESSAGE,
    "application/x-iso9660-image": ISO9660,
    "application/x-cd-image": ISO9660,
    "application/vnd.ms-cab-compressed": CAB,
    "application/x-cpio": CPIO,
    "application/x-bcpio": CPIO,
    "application/x-sv4cpio": CPIO,
    "application/x-sv4crc": CPIO,
    "application/x-xar": XAR,
    "application/x-compress": COMPRESS,
    "application/x-lzip": LZIP,
    "application/x-lz4": LZ4,
    "application/x-lzma": LZMA,
    "application/zstd": ZSTD,
    "application/x-zstd": ZSTD,
    "application/pgp": OPENPGP,
    "application/pgp-keys": OPENPGP,
    "application/x-pgp-message": OPENPGP,
    "image/wmf": WMF,
    "image/x-wmf": WMF,
    "application/x-msmetafile": WMF,
    "windows/metafile": WMF,
    "image/emf": EMF,
    "image/x-emf": EMF,
}

_CONTAINER_EXTENSIONS = {
    "zip": ZIP, "docx": ZIP, "docm": ZIP, "xlsx": ZIP, "xlsm": ZIP, "pptx": ZIP, "pptm": ZIP,
    "odt": ZIP, "ods": ZIP, "odp": ZIP, "odg": ZIP, "epub": ZIP, "cbz": ZIP, "jar": ZIP,
    "tar": TAR, "gz": GZIP, "tgz": GZIP, "bz2": BZIP2, "tbz2": BZIP2, "xz": XZ, "txz": XZ,
    "7z": SEVEN_ZIP, "rar": RAR, "cbr": RAR, "pdf": PDF, "p7m": PKCS7,
    "eml": MESSAGE, "mht": MESSAGE, "mhtml": MESSAGE,
    "iso": ISO9660, "cab": CAB, "cpio": CPIO, "xar": XAR, "pkg": XAR, "z": COMPRESS,
    "taz": COMPRESS, "lz": LZIP, "tlz": LZIP, "lz4": LZ4, "zst": ZSTD, "tzst": ZSTD,
    "lzma": LZMA,
    "gpg": OPENPGP, "pgp": OPENPGP,
    "wmf": WMF, "emf": EMF,
}

IMAGE_EXTENSIONS = frozenset({
    "jpg", "jpeg", "jpe", "jfif", "pjpeg", "png", "apng", "gif", "webp", "bmp", "dib",
    "tif", "tiff", "heic", "heif", "avif", "ico", "jp2", "j2k", "jpx", "jxl", "psd",
})


def extension(filename: str | None) -> str:
    if not filename or "." not in filename:
        return ""
    return filename.rsplit(".", 1)[-1].strip().lower()


def declared_container(content_type: str | None, filename: str | None) -> str | None:
    """The container a part claims to be, by type or by name (`winmail.dat` is TNEF)."""
    if content_type and content_type in _DECLARED_CONTAINERS:
        return _DECLARED_CONTAINERS[content_type]
    if filename and filename.strip().lower() == "winmail.dat":
        return TNEF
    return _CONTAINER_EXTENSIONS.get(extension(filename))


def declared_image(content_type: str | None, filename: str | None) -> bool:
    """Whether a part claims to be an image, by type or by name."""
    if content_type and content_type.startswith("image/"):
        return True
    return extension(filename) in IMAGE_EXTENSIONS


def find_appended_zip(data: bytes) -> bool:
    """Whether a zip end-of-central-directory record sits in the last 64 KiB (a zip appended
    to an image or another file)."""
    return data.rfind(b"PK\x05\x06", max(0, len(data) - 65557)) >= 0
