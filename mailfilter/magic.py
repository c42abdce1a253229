"""Which image format bytes are in, by their magic numbers: the one table both the extract
stage (is this payload an image?) and the decode stage (which decoder?) read, so they never
disagree. Declared types and file names are never consulted here.

A new format's first two bytes must also go into `extract.sweep._first_bytes`, the gate that
lets small text mail be walked in the event loop (tests/extract/test_text_only.py checks the
gate against every format the tests can build).
"""

from __future__ import annotations

import re
import struct

# Formats we recognise: Pillow's names, so the decode stage can restrict Pillow to them.
# Those Pillow cannot decode here (JPEG XL depends on the build, PSD is a layered document)
# are still images: the extract stage passes them on and the decode stage reports them as
# `unsupported-format`. ICO files are decoded entry by entry, JPEG 2000 through OpenJPEG.
MIME_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
    "ICO": "image/vnd.microsoft.icon",
    "JPEG2000": "image/jp2",
    "JXL": "image/jxl",
    "PSD": "image/vnd.adobe.photoshop",
    # Older formats that file viewers (and Pillow) still open, and mail from Unix clients
    # carries (the jwz test mailbox has PBM/PGM/PPM and XBM attachments).
    "PPM": "image/x-portable-anymap",
    "XBM": "image/x-xbitmap",
    "PCX": "image/x-pcx",
}

_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def image_format(data: bytes) -> str | None:
    """The image format the bytes start with (a key of MIME_TYPES), or None."""
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head.startswith(b"BM") and len(head) >= 18:
        (dib,) = struct.unpack_from("<I", head, 14)
        if dib in _BMP_DIB_HEADER_SIZES:
            return "BMP"
    if head[4:8] == b"ftyp":
        return _isobmff_image(bytes(data[:4096]))
    if head.startswith(b"\x00\x00\x01\x00") and _plausible_ico(head):
        return "ICO"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JXL"
    if head.startswith(b"8BPS\x00\x01"):
        return "PSD"
    if head[:1] == b"P" and _NETPBM.match(bytes(data[:1024])):  # (comments after the magic)
        return "PPM"
    if head.startswith(b"#define") and _XBM.match(bytes(data[:256])):
        return "XBM"
    if head[:1] == b"\x0a" and _plausible_pcx(head):
        return "PCX"
    return None


# Netpbm: "P1".."P6", then width and height (comments may sit between them). Strict, since
# "P3 12 ..." could start a text; a text part is never sniffed for images, only payloads.
_NETPBM = re.compile(rb"P[1-6](?:\s+(?:#[^\n]{0,200}\n\s*){0,4}[1-9][0-9]{0,5}){2}\s")
_XBM = re.compile(rb"#define[ \t]+\S*_width[ \t]+[0-9]+\s+#define[ \t]+\S*_height[ \t]+[0-9]+")


def _plausible_pcx(head: bytes) -> bool:
    """PCX has a one-byte signature: also require a known version, RLE, a real bit depth
    and a window whose corners are in order."""
    if len(head) < 12 or head[1] not in (0, 2, 3, 4, 5) or head[2] != 1:
        return False
    if head[3] not in (1, 2, 4, 8):
        return False
    xmin, ymin, xmax, ymax = struct.unpack_from("<4H", head, 4)
    return bool(xmin <= xmax and ymin <= ymax)


def _isobmff_image(data: bytes) -> str | None:
    """HEIF / AVIF: an ISO-BMFF `ftyp` box, classified by its major and compatible brands
    (AVIF first: AVIF files also list the generic `mif1`). Videos (`isom`, `mp42`) are not
    images."""
    if len(data) < 16:
        return None
    (size,) = struct.unpack_from(">I", data, 0)
    if size < 16 or size > 4096:
        return None
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, min(size, len(data)) - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


def _plausible_ico(head: bytes) -> bool:
    """ICO's 4-byte signature is short and common: also require a sane image count and a
    first directory entry with reserved byte 0, 0 or 1 colour planes and a real bit depth."""
    if len(head) < 22:
        return False
    count, _width, _height, _colours, reserved, planes, bpp = struct.unpack_from(
        "<H4BHH", head, 4
    )
    return (
        0 < count < 256 and reserved == 0 and planes in (0, 1) and bpp in (0, 1, 4, 8, 16, 24, 32)
    )


# Skip reasons of a video container with no video in it (the decoder's, video.py), named
# here, where neither the decoder nor PyAV is imported, for the stages that read them.
NOT_A_VIDEO = "not-a-video"  # no video container signature after all
NO_VIDEO_STREAM = "no-video-stream"  # a container holding no video (audio only, say)

# The boxes an ISO-BMFF (MP4, 3GP) or QuickTime (MOV) file may start with.
_QUICKTIME_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide",
                                    b"pnot"})


def video_container(data: bytes) -> str | None:
    """The video container the bytes start with: "mp4" (MP4, MOV, 3GP: ISO-BMFF and
    QuickTime), "matroska" (MKV, WebM) or "avi"; None for anything else, including HEIF and
    AVIF images (ISO-BMFF too). Bytes only: the extract stage sniffs with it, and the
    decoder (video.py, PyAV) is imported only in the workers that decode."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if len(data) >= 8 and data[4:8] in _QUICKTIME_FIRST_BOXES:
        if data[4:8] == b"ftyp" and image_format(data) is not None:
            return None
        return "mp4"
    return None
