"""The hostile corpus, generated (nothing binary is committed): decompression bombs in every
image format the decoder takes, archive bombs, pathological MIME. Every image is a benign
generated picture or no picture at all (headers claiming sizes that are never there).

Each generator is cheap (well under a second) and returns bytes; `as_message` wraps a
payload as an attachment of a CRLF message."""

from __future__ import annotations

import base64
import functools
import io
import random
import struct
import sys
import tarfile
import zlib
from pathlib import Path

from factories import photo_like
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "extract"))
import extract_corpus as ec

# --- images --------------------------------------------------------------------------------


def _small(fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img = photo_like(3, 64, 48)
    if fmt == "GIF":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side zero pixels: real compressed data, ~110 KB for
    900 megapixels."""
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_bomb() -> bytes:
    """A small JPEG whose frame header claims 65000 x 65000."""
    data = bytearray(_small("JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def gif_bomb() -> bytes:
    """A small GIF whose screen and first image descriptor claim 65535 x 65535."""
    data = bytearray(_small("GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    descriptor = data.index(b"\x2c", 13)
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_bomb() -> bytes:
    """A small lossy WebP whose VP8 key-frame header claims 16383 x 16383 (the format's
    largest, 268 megapixels)."""
    data = bytearray(_small("WEBP", quality=80))
    vp8 = data.index(b"VP8 ")
    start = vp8 + 8  # chunk payload: 3-byte frame tag, start code 9d 01 2a, then sizes
    assert data[start + 3:start + 6] == b"\x9d\x01\x2a"
    data[start + 6:start + 10] = struct.pack("<HH", 16383, 16383)
    return bytes(data)


def bmp_bomb() -> bytes:
    """A small BMP whose info header claims 30000 x 30000."""
    data = bytearray(_small("BMP"))
    data[18:26] = struct.pack("<ii", 30000, 30000)
    return bytes(data)


def tiff_bomb() -> bytes:
    """A small TIFF whose ImageWidth and ImageLength tags claim 60000 x 60000."""
    data = bytearray(_small("TIFF"))
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            if kind == 3:  # SHORT
                struct.pack_into("<H", data, entry + 8, 60000)
            else:  # LONG
                struct.pack_into("<I", data, entry + 8, 60000)
    return bytes(data)


# A real AVIF of 10240 x 10240 flat grey pixels (105 megapixels: over our max_pixels, under
# Pillow's own bomb threshold) in 1111 bytes. Made once with
#   Image.new("L", (10240, 10240), 128).save(f, "AVIF", quality=10, speed=10)
# which takes seconds and over a gigabyte of memory, too much to redo in every run. (A small
# AVIF with a forged 'ispe' box is refused by libavif as unidentifiable: no bomb.)
_AVIF_10240 = (
    "AAAAHGZ0eXBhdmlmAAAAAGF2aWZtaWYxbWlhZgAAAOltZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAA"
    "AAAAAAAAAAAAAAAAAA5waXRtAAAAAAABAAAAHmlsb2MAAAAARAAAAQABAAAAAQAAAQ0AAANKAAAAKGlpbmYA"
    "AAAAAAEAAAAaaW5mZQIAAAAAAQAAYXYwMUNvbG9yAAAAAGhpcHJwAAAASWlwY28AAAAUaXNwZQAAAAAAACgA"
    "AAAoAAAAAA5waXhpAAAAAAEIAAAADGF2MUOBHxwAAAAAE2NvbHJuY2x4AAEADQAGgAAAABdpcG1hAAAAAAAA"
    "AAEAAQQBAoMEAAADUm1kYXQSAAoLH/dn/5/9pgIaDUAyuAYQDsVZ3/4s/AAxz8o6ou6GOB2vlxqj2hMO4KFm"
    "0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwEr"
    "ajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WM"
    "fJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6"
    "ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO"
    "4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQ"
    "DwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uS"
    "x6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQx"
    "z8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj"
    "2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA"
    "4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxy"
    "M2uSx6WMfJ7mI6YlQqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6Yl"
    "QqQxz8o6ou6GOB2vlxqj2hMO4KFm0kd7syLA4YWQDwErajUTqOxyM2uSx6WMfJ7mI6YlQqTPyjqi7oY4Ha+X"
    "GqPaEw7goWbSR3uzIsDhhZAPAStqNROo7HIza5LHpYx8nuYjpiVCpA=="
)


def avif_bomb() -> bytes:
    return base64.b64decode("".join(_AVIF_10240))


def heif_bomb() -> bytes:
    """A HEIF ('heic' brand) header claiming 65535 x 65535: only the boxes a sniffer and a
    size check read, no image data."""
    ftyp = struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic"
    ispe = struct.pack(">I", 20) + b"ispe" + b"\x00\x00\x00\x00" + struct.pack(">II", 65535,
                                                                                 65535)
    return ftyp + ispe


def gif_with_many_frames(frames: int = 20000) -> bytes:
    """An animated GIF of `frames` 1x1 frames (a frame-count bomb: ~20 bytes a frame)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms, no transparency
             + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)  # 1x1 at 0,0
             + b"\x02\x02\x44\x01\x00")  # LZW min code size 2: clear, pixel 0, end
    other = frame[:-3] + b"\x02\x4c\x01\x00"  # pixel 1: consecutive frames differ
    body = b"".join(frame if i % 2 else other for i in range(frames))
    return header + loop + body + b"\x3b"


IMAGE_BOMBS = {
    "png": png_bomb,
    "jpeg": jpeg_bomb,
    "gif": gif_bomb,
    "webp": webp_bomb,
    "bmp": bmp_bomb,
    "tiff": tiff_bomb,
    "avif": avif_bomb,
    "heif": heif_bomb,
}

# --- archives ------------------------------------------------------------------------------


def zip_overlapping(copies: int = 2000) -> bytes:
    """Fifield's non-recursive zip bomb, simplified: `copies` central directory entries that
    all point at one local file of 1 MiB (text that compresses only ~2:1, so no single
    member looks like a bomb): 2 GB if every entry were extracted."""
    rng = random.Random(9)
    plain = "".join(rng.choice("0123456789abcdef") for _ in range(1 << 20)).encode()
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = packer.compress(plain) + packer.flush()
    crc, size, name = zlib.crc32(plain), len(plain), b"data.txt"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), size,
                        len(name), 0) + name + stream
    central = b"".join(
        struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                    len(stream), size, len(n), 0, 0, 0, 0, 0, 0) + n
        for n in (f"copy{i}.txt".encode() for i in range(copies)))
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, copies, copies, len(central), len(local),
                      0)
    return local + central + end


def zip_fanout(levels: int = 4, width: int = 16) -> bytes:
    """42.zip-like: `width` copies of the level below at every level, a 16 MiB run of zeros
    at the bottom: width**levels leaves (65536 files, 1 TB) if nothing stopped it."""
    stream, crc = ec.zeros_deflate(16 << 20)
    data = ec.raw_zip([("zeros.bin", stream, crc, 16 << 20, len(stream))])
    for level in range(levels - 1):
        data = ec.zip_bytes({f"l{level}-{i}.zip": data for i in range(width)})
    return data


def zip_nested(depth: int = 100) -> bytes:
    data = ec.png(5)
    name = "deep.png"
    for level in range(depth):
        data = ec.zip_bytes({name: data})
        name = f"z{level}.zip"
    return data


def gzip_nested(depth: int = 60) -> bytes:
    data = ec.png(6)
    for _ in range(depth):
        data = ec.gzip_bytes(data)
    return data


def tar_many_members(count: int = 10000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"f{i}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


ARCHIVE_BOMBS = {
    "zip-overlapping": (zip_overlapping, "application/zip", "bomb.zip"),
    "zip-fanout": (zip_fanout, "application/zip", "42.zip"),
    "zip-100-deep": (zip_nested, "application/zip", "deep.zip"),
    "gzip-60-deep": (gzip_nested, "application/gzip", "deep.gz"),
    "tar-10000-members": (tar_many_members, "application/x-tar", "many.tar"),
}

# --- messages ------------------------------------------------------------------------------


def as_message(payload: bytes, ctype: str, filename: str, seq: str = "h") -> bytes:
    return _with_seq(ec.message(ec.attachment(ctype, payload, filename),
                                subject=f"hostile {filename}"), seq)


def _with_seq(raw: bytes, seq: str) -> bytes:
    crlf = ec.crlf(raw)
    return f"X-Test-Seq: {seq}\r\n".encode() + crlf


def many_parts(count: int = 10000, seq: str = "h") -> bytes:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(count))
    return (f"X-Test-Seq: {seq}\r\n".encode()
            + b"From: a@example.org\r\nSubject: many parts\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n")


def deep_multipart(depth: int = 100, seq: str = "h") -> bytes:
    inner = (b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + ec.b64(ec.png(7)))
    for level in range(depth):
        boundary = f"b{level}".encode()
        inner = (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n--"
                 + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n")
    return (f"X-Test-Seq: {seq}\r\n".encode()
            + b"From: a@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + inner)


def deep_forwards(depth: int = 100, seq: str = "h") -> bytes:
    raw = ec.crlf(ec.message(ec.attachment("image/png", ec.png(8), "x.png")))
    for level in range(depth):
        raw = (f"From: a@example.org\r\nSubject: fwd {level}\r\nMIME-Version: 1.0\r\n"
               "Content-Type: message/rfc822\r\n\r\n").encode() + raw
    return f"X-Test-Seq: {seq}\r\n".encode() + raw
