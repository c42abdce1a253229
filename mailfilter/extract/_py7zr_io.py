"""py7zr writers that keep members in memory, each capped at its declared size, and the
ARM64 branch filter py7zr lacks."""

from __future__ import annotations

from typing import Any

from py7zr.helpers import calculate_crc32
from py7zr.io import Py7zIO, WriterFactory


class CappedIO(Py7zIO):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.written = 0
        self.overflow = False

    def write(self, s: bytes | bytearray) -> int:
        room = self.limit - self.written
        if len(s) > room:
            self.overflow = True
            s = s[: max(room, 0)]
        self.parts.append(bytes(s))
        self.written += len(s)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.written


class CappedFactory(WriterFactory):
    """Products by member name; a member may not grow past its declared size."""

    def __init__(self, declared: dict[str, int]) -> None:
        self.declared = declared
        self.products: dict[str, CappedIO] = {}

    def create(self, filename: str) -> Py7zIO:
        product = CappedIO(self.declared.get(filename, 0))
        self.products[filename] = product
        return product

    def data(self, filename: str) -> bytes | None:
        """The member's bytes; None if it tried to grow past its declared size."""
        product = self.products.get(filename)
        if product is None:
            return b""
        if product.overflow:
            return None
        return b"".join(product.parts)


# --- the ARM64 branch filter --------------------------------------------------------------
#
# Our own, because nothing installed decodes it: py7zr 1.1 and pybcj 1.0 have no ARM64
# filter, libarchive learnt it in 3.7 (Debian 12 has 3.6), and Python's lzma module refuses
# filter id 0xA although liblzma 5.4 knows it. 7-Zip writes it for `-mf=ARM64`.

SEVENZIP_ARM64 = b"\x0a"  # 7-Zip's method id, the same number as xz's filter id


def arm64_decode(data: bytes, start: int = 0) -> bytes:
    """Undo the ARM64 branch conversion (7-Zip's z7_BranchConv_ARM64_Dec, xz's arm64.c) over
    `data`, whose first byte is at stream offset `start` (a multiple of 4). BL targets and
    ADRP pages were made absolute by the encoder (pc-relative again here); the 1-3 bytes
    after the last whole word are left as they are, as the encoder left them."""
    import numpy as np

    whole = len(data) // 4 * 4
    w = np.frombuffer(data, "<u4", whole // 4).astype(np.uint32)
    pc = (np.arange(w.size, dtype=np.uint32) * np.uint32(4)) + np.uint32(start & 0xFFFFFFFF)
    bl = (w >> 26) == 0x25
    bl_word = np.uint32(0x94000000) | ((w - (pc >> 2)) & np.uint32(0x03FFFFFF))
    page = ((w >> 29) & 3) | ((w >> 3) & np.uint32(0x001FFFFC))
    # ADRP, only when its page offset is within +-512 MiB as the encoder converts it
    adrp = ((w & np.uint32(0x9F000000)) == 0x90000000) & (
        ((page + np.uint32(0x20000)) & np.uint32(0x1C0000)) == 0)
    dest = page - (pc >> 12)
    adrp_word = ((w & np.uint32(0x9000001F)) | ((dest & 3) << 29)
                 | ((dest & np.uint32(0x3FFFC)) << 3)
                 | ((np.uint32(0) - (dest & np.uint32(0x20000))) & np.uint32(0xE00000)))
    out = np.where(bl, bl_word, np.where(adrp, adrp_word, w)).astype("<u4")
    return out.tobytes() + bytes(data[whole:])


class Arm64Folder:
    """A 7z folder whose last coder is ARM64: py7zr decodes the coders below it (LZMA2,
    PPMd...) and this object the filter, in whole words, keeping the 1-3 bytes that may
    belong to the next word until more come or the folder ends. It stands in for the
    folder's SevenZipDecompressor, which py7zr reuses once set (Folder.get_decompressor)."""

    def __init__(self, inner: Any, total: int, start: int, crc: int | None) -> None:
        self.inner, self.total, self.start = inner, total, start
        self.crc, self.digest = crc, 0
        self.pending = bytearray()  # undecoded, from stream offset `start` + `decoded`
        self.ready = bytearray()  # decoded, not yet handed out
        self.decoded = 0

    def decompress(self, fp: Any, max_length: int = -1) -> bytes:
        want = max_length if max_length >= 0 else self.total
        while len(self.ready) < want and self.decoded + len(self.pending) < self.total:
            at = fp.tell()
            # never ask past the folder's end: a coder without an end marker (PPMd) would
            # go on giving bytes
            left = self.total - self.decoded - len(self.pending)
            chunk = self.inner.decompress(fp, min(max(want - len(self.ready), 4), left))
            if not chunk:
                if fp.tell() == at:
                    break  # no progress: py7zr reports the folder as cut short
                continue
            self.pending += chunk
            if self.decoded + len(self.pending) > self.total:
                raise ValueError("7z ARM64 folder expands past its declared size")
            done = self.decoded + len(self.pending) == self.total
            whole = len(self.pending) if done else len(self.pending) // 4 * 4
            self.ready += arm64_decode(bytes(self.pending[:whole]), self.start + self.decoded)
            del self.pending[:whole]
            self.decoded += whole
        out = bytes(self.ready[:want])
        del self.ready[:want]
        self.digest = calculate_crc32(out, self.digest)
        return out

    def check_crc(self) -> bool:
        return self.crc == self.digest


def add_arm64_decoders(archive: Any) -> None:
    """Give each folder of a py7zr archive whose last coder is ARM64 an `Arm64Folder` (py7zr
    then uses it instead of building a decompressor, which fails on that method). Raises
    py7zr's UnsupportedCompressionMethodError for a filter property 7-Zip would refuse."""
    from py7zr.compressor import SevenZipDecompressor
    from py7zr.exceptions import UnsupportedCompressionMethodError

    streams = archive.header.main_streams
    if streams is None or streams.unpackinfo is None:
        return
    pack_index = 0
    for folder in streams.unpackinfo.folders:
        packsize = sum(streams.packinfo.packsizes[pack_index : pack_index + len(
            folder.packed_indices)])
        pack_index += len(folder.packed_indices)
        coders = folder.coders
        if not coders or coders[-1]["method"] != SEVENZIP_ARM64 or len(coders) < 2:
            continue
        props = coders[-1].get("properties") or b""
        start = int.from_bytes(props, "little") if len(props) == 4 else 0
        if len(props) not in (0, 4) or start % 4:
            raise UnsupportedCompressionMethodError(props, "ARM64 start offset")
        inner = SevenZipDecompressor(coders[:-1], packsize, folder.unpacksizes[:-1], None,
                                     getattr(folder, "password", None))
        folder.decompressor = Arm64Folder(inner, folder.get_unpack_size(), start, folder.crc)
