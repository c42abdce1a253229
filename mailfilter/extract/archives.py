"""Archives and compressed streams: ZIP (and so OOXML/ODF/EPUB), TAR, gzip, bzip2, xz, 7z, RAR.

Bombs are caught before anything is expanded: declared sizes are held against the decoded-byte
budget and the expansion ratio, and every read is capped anyway (declared sizes can lie). A
member that breaks a limit is recorded as unscannable and skipped; the rest of the archive is
still examined.
"""

from __future__ import annotations

import bz2
import io
import lzma
import posixpath
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
from mailfilter.extract.core import Context, Node, PayloadNode, member_path, read_capped

# zipfile reads these methods: stored, deflate, bzip2, lzma.
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)

ZIP_DIRECTORY_FLOOR = 1 << 20
ZIP_DIRECTORY_PER_MEMBER = 1024

_PAST_DECLARED = "member expands past its declared size"

RAR_TOOL_HINT = (
    "no RAR extraction tool found (install the Debian package libarchive-tools for bsdtar, "
    "or unrar-free)"
)


class Fail:
    """Records a container that cannot be read: unscannable, or only a defect when the
    container was merely declared (by type or name) and its bytes do not look like one."""

    def __init__(self, ctx: Context, node: PayloadNode, quiet: bool) -> None:
        self.ctx, self.node, self.quiet = ctx, node, quiet

    def __call__(self, reason: str, detail: str) -> None:
        if self.quiet and reason == core.CORRUPT_ARCHIVE:
            self.ctx.defect(self.node.path, "declared-container-unreadable")
        else:
            self.ctx.skip(self.node.path, reason, detail[:200])


def _basename(name: str) -> str:
    return posixpath.basename(name.replace("\\", "/")) or name


def _child(node: PayloadNode, kind: str, name: str, data: bytes) -> PayloadNode:
    return PayloadNode(
        member_path(node.path, name), (*node.containers, kind), data, _basename(name), None
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
            fail(core.CORRUPT_ARCHIVE, f"zip: {exc}")
        return
    except (ValueError, OSError, EOFError, struct.error, NotImplementedError) as exc:
        fail(core.CORRUPT_ARCHIVE, f"zip: {exc}")
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
            if info.compress_type not in _ZIP_METHODS:
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
            yield _child(node, sniff.ZIP, info.filename, data)
        if encrypted:
            ctx.skip(
                node.path,
                core.ENCRYPTED_ARCHIVE,
                f"{encrypted} of {len(files)} zip members need a password",
            )


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
            yield _child(node, sniff.TAR, info.name, data)


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
            return _basename(name)
    filename = node.filename or ""
    for suffix, repl in _STRIP[kind]:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)] + repl
    return "decompressed"


def compressed_stream(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool = False
) -> Iterator[Node]:
    fail = Fail(ctx, node, quiet)
    by_ratio = ctx.expansion_cap(len(node.data))
    cap = min(by_ratio, ctx.remaining)
    if not ctx.count_member(node.path):
        return
    if kind == sniff.GZIP:
        out, error = _inflate_gzip(node.data, cap)
    elif kind == sniff.BZIP2:
        out, error = _inflate_other(bz2.BZ2Decompressor, node.data, cap)
    else:
        out, error = _inflate_other(lzma.LZMADecompressor, node.data, cap)
    if out is None:
        ctx.charge(cap)  # the work done counts: many bombs in one message cannot add up
        if by_ratio <= ctx.remaining + cap:
            ctx.skip(
                node.path,
                core.MAX_EXPANSION_RATIO,
                f"{len(node.data)} bytes expand past {by_ratio}",
            )
        else:
            ctx.fits(node.path, ctx.remaining + 1)
        return
    if error:
        if not out:
            fail(core.CORRUPT_ARCHIVE, f"{kind}: {error}")
            return
        ctx.defect(node.path, "compressed-stream-truncated")
    ctx.charge(len(out))
    yield _child(node, kind, _stream_name(kind, node), out)


# --- 7z ---------------------------------------------------------------------------------


def sevenzip_members(ctx: Context, node: PayloadNode, quiet: bool = False) -> Iterator[Node]:
    import py7zr
    from py7zr import exceptions as e7

    from mailfilter.extract._py7zr_io import CappedFactory

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
        yield _child(node, sniff.SEVEN_ZIP, name, data)


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
                found.append(_child(node, sniff.RAR, name, data))
            if tool_missing:
                ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, RAR_TOOL_HINT)
            if encrypted:
                detail = f"{encrypted} rar members need a password"
                ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, detail)
    yield from found
