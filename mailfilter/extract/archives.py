"""Archives and compressed streams: ZIP (and so OOXML/ODF/EPUB), TAR, gzip, bzip2, xz, 7z, RAR.
(ISO 9660, CAB, cpio, xar and the compress, lzip, lz4 and zstd streams: `libarchive_reader`,
whose docstring says why each format is read where it is.)

ZIP is read the way unarchivers do, not only the way zipfile does: members zipfile has no
decompressor for (Deflate64, through `inflate64`; zstd; xz; PPMd, through `pyppmd`) are read
from their local headers, and entries whose local header is missing from the central directory
(or a zip with no directory at all) are found by walking the local headers; bsdtar, 7z and
streaming unzippers show them.

Bombs are caught before anything is expanded: declared sizes are held against the decoded-byte
budget and the expansion ratio, and every read is capped anyway (declared sizes can lie). A
member that breaks a limit is recorded as unscannable and skipped; the rest of the archive is
still examined.
"""

from __future__ import annotations

import bz2
import io
import lzma
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailfilter.extract import core, sniff
from mailfilter.extract.containers import Fail, decompressed_payload, member_basename, member_node
from mailfilter.extract.core import Context, Node, PayloadNode, member_path, read_capped

# zipfile reads these methods: stored, deflate, bzip2, lzma.
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)

# Methods zipfile lacks that are read here from the member's local header.
ZIP_DEFLATE64, ZIP_ZSTD, ZIP_XZ, ZIP_PPMD = 9, 93, 95, 98
_OWN_METHODS = frozenset({ZIP_DEFLATE64, ZIP_ZSTD, ZIP_XZ, ZIP_PPMD})
_ZIP_READABLE = _ZIP_METHODS | _OWN_METHODS

# inflate64 has no output limit per call: feed it this much at a time (a Deflate64 match
# of 64 KiB costs about 20 bits, so one call can give at most a few MB before the cap check).
_DEFLATE64_FEED = 512

ZIP_DIRECTORY_FLOOR = 1 << 20
ZIP_DIRECTORY_PER_MEMBER = 1024

_PAST_DECLARED = "member expands past its declared size"

RAR_TOOL_HINT = (
    "no RAR extraction tool found (install the Debian package libarchive-tools for bsdtar, "
    "or unrar-free)"
)


def _archive_ratio(ctx: Context, node: PayloadNode, declared_total: int) -> bool:
    """Whether the archive as a whole declares more than the ratio allows; then it is
    unscannable and none of it is expanded."""
    if ctx.ratio_exceeded(declared_total, len(node.data)):
        ctx.skip(
            node.path,
            core.MAX_EXPANSION_RATIO,
            f"declares {declared_total} bytes from {len(node.data)} "
            f"(more than {ctx.limits.max_expansion_ratio:g}x)",
        )
        return True
    return False


# --- ZIP --------------------------------------------------------------------------------


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[bytes | None, str]:
    """The member's bytes (None if more than declared came out) and a defect, if any. A bad
    CRC keeps the data, as unzip tools do."""
    try:
        with zf.open(info) as f:
            return read_capped(f, info.file_size), ""
    except zipfile.BadZipFile as exc:
        if "CRC" not in str(exc):
            raise
    with zf.open(info) as f:
        if hasattr(f, "_expected_crc"):
            f._expected_crc = None  # read it again without the check
        return read_capped(f, info.file_size), "zip-bad-crc"


def _zip_directory_size(data: bytes) -> int:
    """The size of a zip's central directory as its end record says (0 if unknown)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if end < 0 or end + 22 > len(data):
        return 0
    size = int(struct.unpack_from("<I", data, end + 12)[0])
    if size == 0xFFFFFFFF:  # zip64: the locator just before the end record points to its own
        loc = end - 20
        if loc >= 0 and data[loc : loc + 4] == b"PK\x06\x07":
            (offset,) = struct.unpack_from("<Q", data, loc + 8)
            if offset + 56 <= len(data) and data[offset : offset + 4] == b"PK\x06\x06":
                size = int(struct.unpack_from("<Q", data, offset + 40)[0])
    return size


class _LocalHeader:
    """A zip local file header (PK\\x03\\x04) and where its data starts."""

    __slots__ = ("compress_size", "crc", "data_start", "file_size", "flags", "method", "name",
                 "offset")

    def __init__(self, data: bytes, offset: int) -> None:
        (_version, flags, method, _time, _date, crc, csize, usize, n, m) = struct.unpack_from(
            "<HHHHHIIIHH", data, offset + 4
        )
        self.offset, self.flags, self.method, self.crc = offset, flags, method, crc
        raw_name = data[offset + 30 : offset + 30 + n]
        self.name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        extra = data[offset + 30 + n : offset + 30 + n + m]
        self.data_start = offset + 30 + n + m
        if 0xFFFFFFFF in (csize, usize):  # zip64: the sizes that overflowed are in extra 0x0001
            pos = 0
            while pos + 4 <= len(extra):
                tag, size = struct.unpack_from("<HH", extra, pos)
                if tag == 0x0001:
                    field = extra[pos + 4 : pos + 4 + size]
                    at = 0
                    if usize == 0xFFFFFFFF and at + 8 <= len(field):
                        usize = int.from_bytes(field[at : at + 8], "little")
                        at += 8
                    if csize == 0xFFFFFFFF and at + 8 <= len(field):
                        csize = int.from_bytes(field[at : at + 8], "little")
                    break
                pos += 4 + size
        self.compress_size, self.file_size = csize, usize

    @property
    def streamed(self) -> bool:
        """Sizes in a data descriptor after the data (bit 3), not here."""
        return bool(self.flags & 0x08) and not self.compress_size


# Methods of the zip specification (APPNOTE 4.4.5) and WinZip AES (99): a local header
# signature followed by anything else is taken for chance bytes, not an entry.
_KNOWN_ZIP_METHODS = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 14, 18, 19, 93, 94, 95, 96,
                                97, 98, 99})


def _local_header(data: bytes, offset: int) -> _LocalHeader | None:
    if offset < 0 or offset + 30 > len(data) or data[offset : offset + 4] != b"PK\x03\x04":
        return None
    header = _LocalHeader(data, offset)
    plausible = (header.method in _KNOWN_ZIP_METHODS and data[offset + 4] <= 63
                 and header.name.strip() != "")
    return header if plausible and header.data_start <= len(data) else None


def _inflate_stream(
    dec: Any, data: bytes, cap: int, tail: bool
) -> tuple[bytes | None, int | None, str]:
    """Run a zlib / bz2 / lzma decompressor over `data` up to `cap` bytes of output: (output
    or None past the cap, input bytes consumed if it ended, error text)."""
    out = bytearray()
    src = data
    while True:
        try:
            out += dec.decompress(src, cap + 1 - len(out))
        except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
            return bytes(out), None, str(exc) or type(exc).__name__
        if len(out) > cap:
            return None, None, ""
        if dec.eof:
            return bytes(out), len(data) - len(dec.unused_data), ""
        if tail:  # zlib keeps what it did not take in unconsumed_tail
            src = dec.unconsumed_tail
            if not src:
                return bytes(out), None, "truncated"
        else:
            src = b""
            if dec.needs_input:
                return bytes(out), None, "truncated"


def _ppmd_stream(raw: bytes, cap: int, size: int | None) -> tuple[bytes | None, int | None, str]:
    """A zip PPMd member (method 98: PPMd variant H, "version I, Rev 1", as pyppmd's
    Ppmd8Decoder decodes it) up to `cap` bytes: a 2-byte header (bits 0-3 order - 1, 4-11
    model size in MiB - 1, 12-15 restore method; APPNOTE 5.10, 7-Zip's PpmdZip.cpp), then
    the range-coded stream, which 7-Zip ends with an end marker."""
    import pyppmd

    if len(raw) < 2:
        return b"", None, "truncated"
    params = int.from_bytes(raw[:2], "little")
    order, mib, restore = (params & 0xF) + 1, ((params >> 4) & 0xFF) + 1, params >> 12
    if order < 2 or restore > 1:  # restore 2 ("freeze") is not in PPMd8 as 7-Zip builds it
        return b"", None, f"ppmd order {order}, restore method {restore}"
    # The model size is the encoder's (the model depends on it), at most 256 MiB by the
    # format; the memory is touched only as the model grows with the output, which is capped.
    dec = pyppmd.Ppmd8Decoder(order, mib << 20, restore)
    try:
        out = dec.decode(raw[2:], cap + 1)
    except (ValueError, SystemError, pyppmd.PpmdError) as exc:  # SystemError on some garbage
        return b"", None, str(exc) or type(exc).__name__
    if len(out) > cap:
        return None, None, ""
    if dec.eof:
        return out, len(raw) - len(dec.unused_data), ""
    if size is not None and len(out) == size:
        return out, None, ""  # no end marker: the size says where it stops
    return out, None, "truncated"


def _zip_decompress(
    method: int, raw: bytes, cap: int, size: int | None
) -> tuple[bytes | None, int | None, str]:
    """A zip member's compressed bytes (`raw`, possibly followed by more) decompressed up to
    `cap` bytes: (output or None past the cap, compressed length if known, error text)."""
    if method == zipfile.ZIP_DEFLATED:
        return _inflate_stream(zlib.decompressobj(-15), raw, cap, tail=True)
    if method == zipfile.ZIP_BZIP2:
        return _inflate_stream(bz2.BZ2Decompressor(), raw, cap, tail=False)
    if method == ZIP_XZ:
        return _inflate_stream(lzma.LZMADecompressor(lzma.FORMAT_XZ), raw, cap, tail=False)
    if method == zipfile.ZIP_LZMA:  # 2-byte version, 2-byte properties size, properties
        if len(raw) < 4:
            return b"", None, "truncated"
        props_end = 4 + int.from_bytes(raw[2:4], "little")
        decode = getattr(lzma, "_decode_filter_properties")  # noqa: B009 - as zipfile does
        try:
            lzma1 = decode(lzma.FILTER_LZMA1, raw[4:props_end])
        except (lzma.LZMAError, ValueError) as exc:
            return b"", None, str(exc)
        dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1])
        out, used, error = _inflate_stream(dec, raw[props_end:], cap, tail=False)
        if error == "truncated" and out is not None and size is not None and len(out) == size:
            error = ""  # no end marker: the size says where it stops
        return out, (props_end + used if used is not None else None), error
    if method == ZIP_DEFLATE64:
        import inflate64

        inflater = inflate64.Inflater()
        parts: list[bytes] = []
        total = 0
        for at in range(0, len(raw), _DEFLATE64_FEED):
            try:
                block = inflater.inflate(raw[at : at + _DEFLATE64_FEED])
            except (ValueError, OSError, RuntimeError) as exc:
                return b"".join(parts), None, str(exc) or type(exc).__name__
            parts.append(block)
            total += len(block)
            if total > cap:
                return None, None, ""
            if inflater.eof:
                return b"".join(parts), None, ""
        return b"".join(parts), None, "truncated"
    if method == ZIP_PPMD:
        return _ppmd_stream(raw, cap, size)
    if method == ZIP_ZSTD:
        from mailfilter.extract import libarchive_reader

        out, error = libarchive_reader.decompress(raw, sniff.ZSTD, cap)
        return out, None, error
    return None, None, f"zip method {method}"


def _read_own_method(data: bytes, info: zipfile.ZipInfo) -> tuple[bytes | None, str]:
    """A listed member zipfile cannot decompress, read from its local header: its bytes (None
    past the declared size) and a defect. Raises ValueError if it cannot be read."""
    header = _local_header(data, info.header_offset)
    if header is None:
        raise ValueError("no local header where the directory points")
    raw = data[header.data_start : header.data_start + info.compress_size]
    out, _used, error = _zip_decompress(info.compress_type, raw, info.file_size, info.file_size)
    if out is None:
        if error:
            raise ValueError(error)
        return None, ""
    if error:
        raise ValueError(error)
    return out, ("" if zlib.crc32(out) == info.CRC else "zip-bad-crc")


def _stored_end(data: bytes, start: int) -> int | None:
    """Where a stored member with a data descriptor ends: at a signed descriptor whose size
    agrees, else before the next header (less an unsigned descriptor that agrees)."""
    pos = start
    while True:
        hit = data.find(b"PK\x07\x08", pos)
        if hit < 0:
            break
        if hit + 12 <= len(data):
            if int.from_bytes(data[hit + 8 : hit + 12], "little") == hit - start:
                return hit
            if hit + 16 <= len(data) and int.from_bytes(data[hit + 8 : hit + 16], "little") == (
                hit - start
            ):
                return hit
        pos = hit + 1
    ends = [e for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06")
            if (e := data.find(sig, start)) >= 0]
    if not ends:
        return None
    nxt = min(ends)
    for size in (12, 20):  # crc + sizes, 32-bit or zip64
        at = nxt - size
        if at >= start and int.from_bytes(data[at + 4 : at + 8], "little") == at - start:
            return at
    return None


def _listed_extents(data: bytes, infos: list[zipfile.ZipInfo]) -> list[tuple[int, int]]:
    """The byte ranges the central directory's entries cover (header and data)."""
    extents = []
    for info in infos:
        header = _local_header(data, info.header_offset)
        end = (header.data_start if header else info.header_offset + 30) + info.compress_size
        extents.append((info.header_offset, end))
    return sorted(extents)


def _unlisted_members(
    ctx: Context,
    node: PayloadNode,
    fail: Fail,
    listed: list[tuple[int, int]],
    no_directory: str,
) -> Iterator[Node]:
    """Entries found by walking the local headers outside the ranges the central directory
    lists (all of them when there is no readable directory: `no_directory` says why)."""
    data = node.data
    found: list[PayloadNode] = []
    encrypted = truncated = entries = cut = 0
    pos = 0
    extent = 0
    candidates = 0
    max_candidates = 4 * ctx.limits.max_archive_members + 16
    while candidates < max_candidates:
        at = data.find(b"PK\x03\x04", pos)
        if at < 0:
            break
        candidates += 1
        while extent < len(listed) and listed[extent][1] <= at:
            extent += 1
        if extent < len(listed) and listed[extent][0] <= at:
            pos = listed[extent][1]  # inside a listed member (a stored zip in a zip, say)
            continue
        header = _local_header(data, at)
        if header is None:
            pos = at + 4
            continue
        pos = header.data_start
        if header.name.endswith("/"):
            pos = header.data_start + header.compress_size
            continue
        entries += 1
        if not ctx.count_member(node.path):
            break
        path = member_path(node.path, header.name)
        if header.flags & 0x1:
            encrypted += 1
            if not header.streamed:
                pos = header.data_start + header.compress_size
            continue
        if header.method not in _ZIP_READABLE:
            ctx.skip(path, core.UNSUPPORTED_ARCHIVE, f"zip method {header.method}")
            if not header.streamed:
                pos = header.data_start + header.compress_size
            continue
        size: int | None = None if header.streamed else header.file_size
        if size is not None:
            if ctx.ratio_exceeded(size, header.compress_size):
                detail = f"{header.compress_size} bytes declare {size}"
                ctx.skip(path, core.MAX_EXPANSION_RATIO, detail)
                pos = header.data_start + header.compress_size
                continue
            if not ctx.fits(path, size):
                pos = header.data_start + header.compress_size
                continue
        # The member's data runs to the end of the file: the file was cut off inside it.
        runs_to_end = header.streamed or header.data_start + header.compress_size >= len(data)
        if header.method == zipfile.ZIP_STORED:
            end = (_stored_end(data, header.data_start) if header.streamed
                   else header.data_start + header.compress_size)
            stored_cut = (end is None or end > len(data)) and runs_to_end
            if stored_cut:
                end = len(data)
            elif end is None or end > len(data):
                truncated += 1
                continue
            assert end is not None
            out: bytes | None = data[header.data_start : end]
            used: int | None = end - header.data_start
            error = ""
            if stored_cut:
                error = "truncated"
            elif size is not None and out is not None and len(out) != size:
                error = "stored size disagrees"
        else:
            raw = (data[header.data_start :] if header.streamed
                   else data[header.data_start : header.data_start + header.compress_size])
            by_ratio = ctx.expansion_cap(header.compress_size or len(raw))
            cap = min(size if size is not None else by_ratio, ctx.remaining)
            out, used, error = _zip_decompress(header.method, raw, cap, size)
            if out is None and not error:
                ctx.charge(cap)  # the work done counts
                if size is not None and cap == size:
                    ctx.skip(path, core.ZIP_BOMB, _PAST_DECLARED)
                elif cap == by_ratio:
                    ctx.skip(path, core.MAX_EXPANSION_RATIO, f"expands past {by_ratio}")
                else:
                    ctx.fits(path, ctx.remaining + 1)
                if not header.streamed:
                    pos = header.data_start + header.compress_size
                continue
        if not header.streamed:
            pos = header.data_start + header.compress_size
        elif used is not None:
            pos = header.data_start + used
        if error == "truncated" and out is not None and runs_to_end:
            # Cut off inside the member: what decompressed up to the cut is walked (a
            # picture cut there is `truncated` when decoded); bytes that are not there hide
            # nothing, so the cut itself is a defect.
            cut += 1
        elif error or out is None:
            truncated += 1
            continue
        ctx.charge(len(out))
        found.append(member_node(node, sniff.ZIP, header.name, out))
    if cut:
        ctx.defect(node.path, "zip-entry-cut-off")
    if no_directory and not found and not encrypted:
        if not entries and _cut_in_first_header(data):
            ctx.defect(node.path, "zip-cut-off")  # nothing but part of a header
            return
        fail(core.CORRUPT_ARCHIVE, no_directory)
        return
    if entries:
        ctx.defect(node.path, "zip-without-directory" if no_directory else "zip-unlisted-entry")
    if truncated and not no_directory:
        # beside a readable directory, an unreadable stray header is what unzip tools skip too
        ctx.defect(node.path, "zip-unlisted-entry-unreadable")
    elif truncated:
        ctx.skip(node.path, core.CORRUPT_ARCHIVE, f"{truncated} zip entries cut short or corrupt")
    if encrypted:
        detail = f"{encrypted} zip entries outside the directory need a password"
        ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, detail)
    yield from found


def _cut_in_first_header(data: bytes) -> bool:
    """Whether the bytes are a zip cut off inside its first local header (or just after
    it): nothing of any member is in them."""
    if not data.startswith(b"PK\x03\x04"):
        return False
    if len(data) > 4 and data[4] > 63:  # as _local_header: a version no zip tool writes
        return False
    if len(data) >= 10 and int.from_bytes(data[8:10], "little") not in _KNOWN_ZIP_METHODS:
        return False
    if len(data) < 30:
        return True
    name_and_extra = int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
    return len(data) <= 30 + name_and_extra


def zip_members(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    fail = Fail(ctx, node, quiet)
    # zipfile reads the whole central directory at once: refuse one far bigger than the
    # members still allowed could fill (each entry takes at least 46 bytes, usually ~100)
    directory = _zip_directory_size(node.data)
    allowed = max(0, ctx.limits.max_archive_members - ctx.members)
    if directory > max(ZIP_DIRECTORY_FLOOR, ZIP_DIRECTORY_PER_MEMBER * allowed):
        ctx.skip(
            node.path,
            core.MAX_ARCHIVE_MEMBERS,
            f"a {directory}-byte zip directory: far more than {allowed} members",
        )
        return
    try:
        zf = zipfile.ZipFile(io.BytesIO(node.data))
    except zipfile.BadZipFile as exc:
        if "overlap" in str(exc).lower():
            ctx.skip(node.path, core.ZIP_BOMB, str(exc))
        else:
            yield from _unlisted_members(ctx, node, fail, [], f"zip: {exc}")
        return
    except (ValueError, OSError, EOFError, struct.error, NotImplementedError) as exc:
        yield from _unlisted_members(ctx, node, fail, [], f"zip: {exc}")
        return
    with zf:
        files = [i for i in zf.infolist() if not i.is_dir()]
        if _archive_ratio(ctx, node, sum(i.file_size for i in files)):
            return
        encrypted = 0
        for info in files:
            if not ctx.count_member(node.path):
                return
            path = member_path(node.path, info.filename)
            if info.flag_bits & 0x1:
                encrypted += 1
                continue
            if info.compress_type not in _ZIP_READABLE:
                ctx.skip(path, core.UNSUPPORTED_ARCHIVE, f"zip method {info.compress_type}")
                continue
            if ctx.ratio_exceeded(info.file_size, info.compress_size):
                ctx.skip(
                    path,
                    core.MAX_EXPANSION_RATIO,
                    f"{info.compress_size} bytes declare {info.file_size}",
                )
                continue
            if not ctx.fits(path, info.file_size):
                continue
            try:
                if info.compress_type in _OWN_METHODS:
                    data, defect = _read_own_method(node.data, info)
                else:
                    data, defect = _read_zip_member(zf, info)
            except RuntimeError as exc:  # zipfile: "encrypted, password required"
                encrypted += 1
                del exc
                continue
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                    NotImplementedError, lzma.LZMAError) as exc:
                ctx.skip(path, core.CORRUPT_ARCHIVE, f"zip member: {exc}"[:200])
                continue
            if data is None:
                ctx.skip(path, core.ZIP_BOMB, _PAST_DECLARED)
                continue
            if defect:
                ctx.defect(path, defect)
            ctx.charge(len(data))
            yield member_node(node, sniff.ZIP, info.filename, data)
        if encrypted:
            ctx.skip(
                node.path,
                core.ENCRYPTED_ARCHIVE,
                f"{encrypted} of {len(files)} zip members need a password",
            )
        listed = _listed_extents(node.data, zf.infolist())
    yield from _unlisted_members(ctx, node, fail, listed, "")


def appended_zip(ctx: Context, node: PayloadNode) -> Iterator[Node]:
    """A zip glued to the end of another file (an image, typically): open it quietly, since
    the end-of-directory signature may also turn up by chance."""
    try:
        with zipfile.ZipFile(io.BytesIO(node.data)) as zf:
            if not zf.infolist():
                return
    except Exception:
        return
    if not ctx.container_allowed(node, sniff.ZIP):
        return
    ctx.defect(node.path, "zip-appended")
    yield from zip_members(ctx, node, quiet=True)


# --- TAR --------------------------------------------------------------------------------


def tar_members(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    fail = Fail(ctx, node, quiet)
    try:
        tf = tarfile.open(fileobj=io.BytesIO(node.data), mode="r:")  # noqa: SIM115 - closed below
    except (tarfile.TarError, ValueError, OSError, EOFError) as exc:
        fail(core.CORRUPT_ARCHIVE, f"tar: {exc}")
        return
    with tf:
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, ValueError, OSError, EOFError) as exc:
                ctx.skip(node.path, core.CORRUPT_ARCHIVE, f"tar: {exc}"[:200])
                return
            if info is None:
                return
            if not ctx.count_member(node.path):
                return
            if not info.isfile():
                continue
            path = member_path(node.path, info.name)
            sparse: Any = getattr(info, "sparse", None)  # [(offset, size), ...] for GNU sparse
            if sparse:
                stored = sum(int(size) for _offset, size in sparse)
                if ctx.ratio_exceeded(info.size, stored):
                    ctx.skip(path, core.MAX_EXPANSION_RATIO, "sparse member")
                    continue
            if not ctx.fits(path, info.size):
                continue
            f = tf.extractfile(info)
            if f is None:
                continue
            try:
                data = read_capped(f, info.size)
            except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
                ctx.skip(path, core.CORRUPT_ARCHIVE, f"tar member: {exc}"[:200])
                continue
            if data is None:
                ctx.skip(path, core.ZIP_BOMB, _PAST_DECLARED)
                continue
            ctx.charge(len(data))
            yield member_node(node, sniff.TAR, info.name, data)


# --- single-file compressors --------------------------------------------------------------


def _inflate_gzip(data: bytes, cap: int) -> tuple[bytes | None, str]:
    """Decompress (concatenated) gzip streams up to `cap` bytes: (None, "") if the output
    would pass the cap, else the output and an error text (empty if it ended cleanly)."""
    out = bytearray()
    src = data
    dec = zlib.decompressobj(31)
    while True:
        try:
            chunk = dec.decompress(src, cap + 1 - len(out))
        except zlib.error as exc:
            return bytes(out), str(exc)
        out += chunk
        if len(out) > cap:
            return None, ""
        if dec.eof:
            rest = dec.unused_data.lstrip(b"\x00")  # tar.gz files are often padded with zeros
            if not rest:
                return bytes(out), ""
            dec, src = zlib.decompressobj(31), rest
            continue
        src = dec.unconsumed_tail
        if not src:
            return bytes(out), "truncated"


def _inflate_other(
    make: Callable[[], bz2.BZ2Decompressor | lzma.LZMADecompressor], data: bytes, cap: int
) -> tuple[bytes | None, str]:
    """As `_inflate_gzip`, for bzip2 and xz."""
    out = bytearray()
    src = data
    dec = make()
    while True:
        try:
            chunk = dec.decompress(src, cap + 1 - len(out))
        except (OSError, lzma.LZMAError, EOFError, ValueError) as exc:
            return bytes(out), str(exc) or type(exc).__name__
        src = b""
        out += chunk
        if len(out) > cap:
            return None, ""
        if dec.eof:
            rest = dec.unused_data.lstrip(b"\x00")
            if not rest:
                return bytes(out), ""
            dec, src = make(), rest
            continue
        if dec.needs_input:
            return bytes(out), "truncated"


def _gzip_name(data: bytes) -> str | None:
    if len(data) < 10 or not data[3] & 0x08:
        return None
    pos = 10
    if data[3] & 0x04:
        if len(data) < 12:
            return None
        (xlen,) = struct.unpack_from("<H", data, 10)
        pos = 12 + xlen
    end = data.find(b"\x00", pos, pos + 1024)
    if end <= pos:
        return None
    return data[pos:end].decode("latin-1")


_STRIP = {
    sniff.GZIP: ((".tgz", ".tar"), (".gz", ""), (".gzip", "")),
    sniff.BZIP2: ((".tbz2", ".tar"), (".tbz", ".tar"), (".bz2", ""), (".bz", "")),
    sniff.XZ: ((".txz", ".tar"), (".xz", "")),
}


def _stream_name(kind: str, node: PayloadNode) -> str:
    if kind == sniff.GZIP:
        name = _gzip_name(node.data)
        if name:
            return member_basename(name)
    filename = node.filename or ""
    for suffix, repl in _STRIP[kind]:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)] + repl
    return "decompressed"


def compressed_stream(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool = False
) -> Iterator[Node]:
    if kind == sniff.GZIP:
        def inflate(data: bytes, cap: int) -> tuple[bytes | None, str]:
            return _inflate_gzip(data, cap)
    elif kind == sniff.BZIP2:
        def inflate(data: bytes, cap: int) -> tuple[bytes | None, str]:
            return _inflate_other(bz2.BZ2Decompressor, data, cap)
    else:
        def inflate(data: bytes, cap: int) -> tuple[bytes | None, str]:
            return _inflate_other(lzma.LZMADecompressor, data, cap)
    return decompressed_payload(ctx, node, kind, quiet, inflate, _stream_name(kind, node))


# --- 7z ---------------------------------------------------------------------------------


def sevenzip_members(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    """7z through libarchive (faster, streams, less memory: see `libarchive_reader`), and
    through py7zr when libarchive lacks a method the archive uses (ARM64, with our filter
    on top of py7zr's coders; zstd...)."""
    from mailfilter.extract import libarchive_reader

    found = libarchive_reader.read_members(ctx, node, sniff.SEVEN_ZIP, quiet)
    if found is not None:
        yield from found
        return
    yield from _py7zr_members(ctx, node, quiet)


def _py7zr_members(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    import py7zr
    from py7zr import exceptions as e7

    from mailfilter.extract._py7zr_io import CappedFactory, add_arm64_decoders

    fail = Fail(ctx, node, quiet)
    errors = (e7.ArchiveError, ValueError, OSError, EOFError, KeyError, IndexError,
              struct.error, lzma.LZMAError, zlib.error, TypeError, AttributeError)
    try:
        archive = py7zr.SevenZipFile(
            io.BytesIO(node.data), mode="r", max_extract_size=ctx.remaining
        )
    except e7.PasswordRequired:
        ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "7z with encrypted headers")
        return
    except e7.UnsupportedCompressionMethodError as exc:
        ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"7z: {exc}"[:200])
        return
    except errors as exc:
        fail(core.CORRUPT_ARCHIVE, f"7z: {exc}")
        return
    with archive:
        if archive.needs_password():
            ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "7z members need a password")
            return
        files = [f for f in archive.list() if not f.is_directory]
        if _archive_ratio(ctx, node, sum(f.uncompressed for f in files)):
            return
        wanted: list[str] = []
        budget = ctx.remaining
        for f in files:
            if not ctx.count_member(node.path):
                break
            path = member_path(node.path, f.filename)
            if f.compressed and ctx.ratio_exceeded(f.uncompressed, f.compressed):
                detail = f"{f.compressed} bytes declare {f.uncompressed}"
                ctx.skip(path, core.MAX_EXPANSION_RATIO, detail)
                continue
            if f.uncompressed > budget:
                ctx.fits(path, ctx.remaining + 1)
                continue
            budget -= f.uncompressed
            wanted.append(f.filename)
        if not wanted:
            return
        factory = CappedFactory({f.filename: f.uncompressed for f in files})
        try:
            add_arm64_decoders(archive)
            archive.extract(targets=wanted, factory=factory)
        except e7.PasswordRequired:
            ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "7z members need a password")
            return
        except e7.DecompressionBombError as exc:
            ctx.skip(node.path, core.MAX_DECODED_BYTES, str(exc)[:200])
            ctx.charge(ctx.remaining)
            return
        except e7.UnsupportedCompressionMethodError as exc:
            ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"7z: {exc}"[:200])
            return
        except errors as exc:
            ctx.skip(node.path, core.CORRUPT_ARCHIVE, f"7z: {exc}"[:200])
            return
    for name in wanted:
        data = factory.data(name)
        if data is None:
            ctx.skip(member_path(node.path, name), core.ZIP_BOMB, _PAST_DECLARED)
            continue
        ctx.charge(len(data))
        yield member_node(node, sniff.SEVEN_ZIP, name, data)


# --- RAR --------------------------------------------------------------------------------


def rar_tool_available() -> bool:
    """Whether an external tool rarfile can use to decompress RAR data is installed."""
    import rarfile

    return any(
        shutil.which(getattr(rarfile, attr))
        for attr in ("UNRAR_TOOL", "UNAR_TOOL", "BSDTAR_TOOL", "SEVENZIP_TOOL", "SEVENZIP2_TOOL")
    )


def rar_members(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    import rarfile

    fail = Fail(ctx, node, quiet)
    found: list[PayloadNode] = []
    with tempfile.TemporaryDirectory(prefix="mailfilter-rar-") as tmp:
        archive_path = Path(tmp) / "archive.rar"
        archive_path.write_bytes(node.data)
        try:
            rf = rarfile.RarFile(str(archive_path))
        except rarfile.NeedFirstVolume as exc:
            detail = f"rar: part of a multi-volume set: {exc}"[:200]
            ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, detail)
            return
        except rarfile.PasswordRequired:
            ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "rar with encrypted headers")
            return
        except (rarfile.Error, OSError, ValueError, EOFError, struct.error) as exc:
            fail(core.CORRUPT_ARCHIVE, f"rar: {exc}")
            return
        with rf:
            if rf.needs_password():
                ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, "rar with encrypted headers")
                return
            entries = rf.infolist()
            if not entries and len(node.data) > 64:
                fail(core.CORRUPT_ARCHIVE, "rar: no readable entries")
                return
            files = [i for i in entries if not i.is_dir()]
            if _archive_ratio(ctx, node, sum(i.file_size or 0 for i in files)):
                return
            encrypted = 0
            tool_missing = False
            for info in files:
                if not ctx.count_member(node.path):
                    break
                name = info.filename or "unnamed"
                path = member_path(node.path, name)
                if info.needs_password():
                    encrypted += 1
                    continue
                size = info.file_size or 0
                if ctx.ratio_exceeded(size, info.compress_size or 0):
                    detail = f"{info.compress_size} bytes declare {size}"
                    ctx.skip(path, core.MAX_EXPANSION_RATIO, detail)
                    continue
                if not ctx.fits(path, size):
                    continue
                stored = info.compress_type == rarfile.RAR_M0
                if not stored and (tool_missing or not rar_tool_available()):
                    tool_missing = True
                    continue
                try:
                    with rf.open(info) as f:
                        data = read_capped(f, size)
                except rarfile.RarCannotExec:
                    tool_missing = True
                    continue
                except (rarfile.PasswordRequired, rarfile.RarWrongPassword):
                    encrypted += 1
                    continue
                except (rarfile.Error, OSError, ValueError, EOFError) as exc:
                    ctx.skip(path, core.CORRUPT_ARCHIVE, f"rar member: {exc}"[:200])
                    continue
                if data is None:
                    ctx.skip(path, core.ZIP_BOMB, _PAST_DECLARED)
                    continue
                ctx.charge(len(data))
                found.append(member_node(node, sniff.RAR, name, data))
            if tool_missing:
                ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, RAR_TOOL_HINT)
            if encrypted:
                detail = f"{encrypted} rar members need a password"
                ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, detail)
    yield from found
