"""Containers read through libarchive (libarchive-c over the system's libarchive13): ISO 9660,
CAB, cpio and xar archives, and the compress (.Z), lzip, lz4 and zstd streams.

Why libarchive for these and not for everything: measured on generated archives (figures in
the commit that added this module), libarchive is the only reader we have for ISO, CAB, cpio,
xar, compress, lzip and lz4, and the fastest for zstd. For zip, tar and the gzip / bzip2 / xz
streams our readers (zipfile, tarfile, zlib/bz2/lzma) are as fast as libarchive on the same
data, know the per-member compressed sizes the ratio limit needs before anything is expanded,
and keep behaviour the tests pin down (bad CRCs kept, overlapping zip entries refused, data
descriptors, Deflate64 through `inflate64`, which Debian's libarchive 3.6 lacks). 7z stays with
py7zr (it tells encrypted headers from corrupt ones, which libarchive 3.6 does not) and RAR with
rarfile (its external tool covers RAR5 and the methods libarchive 3.6 reads wrongly).

Everything is read from memory (`memory_reader`), never a temporary file. Bombs: libarchive
hands an entry's data out in blocks, so each read stops as soon as it passes the member's
declared size, the decoded-byte budget or the container's expansion cap (`max_expansion_ratio`
times the container's own size: a stored format such as ISO or cpio can only pass it by
pointing many entries at the same bytes).
"""

from __future__ import annotations

import ctypes
import posixpath
from collections.abc import Iterator
from typing import Any

from mailfilter.extract import core, sniff
from mailfilter.extract.archives import Fail
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# The libarchive read format (archives) or read filter (streams) for each kind.
ARCHIVE_FORMATS = {
    sniff.ISO9660: "iso9660",
    sniff.CAB: "cab",
    sniff.CPIO: "cpio",
    sniff.XAR: "xar",
}
STREAM_FILTERS = {
    sniff.COMPRESS: "compress",
    sniff.LZIP: "lzip",
    sniff.LZ4: "lz4",
    sniff.ZSTD: "zstd",
}

_BLOCK = 1 << 16

# What a compressed stream's file name loses (and becomes) once it is decompressed.
_STRIP = {
    sniff.COMPRESS: ((".taz", ".tar"), (".tz", ".tar"), (".z", "")),
    sniff.LZIP: ((".tlz", ".tar"), (".lz", "")),
    sniff.LZ4: ((".tlz4", ".tar"), (".lz4", "")),
    sniff.ZSTD: ((".tzst", ".tar"), (".zstd", ""), (".zst", "")),
}


def _libarchive() -> Any:
    import libarchive

    return libarchive


def _is_encrypted(entry: Any) -> bool:
    """Whether libarchive says the entry's data (or its metadata) is encrypted; libarchive-c
    has no wrapper for archive_entry_is_encrypted."""
    from libarchive import ffi

    func = getattr(ffi.libarchive, "archive_entry_is_encrypted", None)
    if func is None:
        return False
    func.argtypes = [ctypes.c_void_p]
    func.restype = ctypes.c_int
    return bool(func(entry._entry_p))


def _name(entry: Any) -> str:
    from libarchive import ffi

    try:
        name = ffi.entry_pathname_w(entry._entry_p)
    except (UnicodeError, ValueError):
        name = None
    if not name:
        raw = ffi.entry_pathname(entry._entry_p)
        name = raw.decode("utf-8", "replace") if raw else ""
    return str(name).replace("\\", "/") or "unnamed"


def _declared_size(entry: Any) -> int | None:
    from libarchive import ffi

    if not ffi.entry_size_is_set(entry._entry_p):
        return None
    return max(0, int(ffi.entry_size(entry._entry_p)))


def _read(entry: Any, cap: int) -> bytes | None:
    """The entry's data, or None as soon as it passes `cap` bytes."""
    parts: list[bytes] = []
    total = 0
    for block in entry.get_blocks(_BLOCK):
        parts.append(block)
        total += len(block)
        if total > cap:
            return None
    return b"".join(parts)


def _child(node: PayloadNode, kind: str, name: str, data: bytes) -> PayloadNode:
    base = posixpath.basename(name) or name
    return PayloadNode(member_path(node.path, name), (*node.containers, kind), data, base, None)


def archive_members(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool = False
) -> Iterator[Node]:
    """The regular files of an ISO 9660, CAB, cpio or xar archive."""
    libarchive = _libarchive()
    fail = Fail(ctx, node, quiet)
    budget = ctx.expansion_cap(len(node.data))  # all members together, not each
    produced = 0
    found: list[PayloadNode] = []
    encrypted = 0
    seen = 0
    try:
        with libarchive.memory_reader(
            node.data, format_name=ARCHIVE_FORMATS[kind], filter_name="none"
        ) as archive:
            for entry in archive:
                seen += 1
                if not ctx.count_member(node.path):
                    break
                if not entry.isreg:
                    continue
                name = _name(entry)
                path = member_path(node.path, name)
                if _is_encrypted(entry):
                    encrypted += 1
                    continue
                declared = _declared_size(entry)
                if declared is not None:
                    if produced + declared > budget:
                        detail = f"members declare more than {budget} bytes from {len(node.data)}"
                        ctx.skip(node.path, core.MAX_EXPANSION_RATIO, detail)
                        break
                    if not ctx.fits(path, declared):
                        continue
                cap = min(ctx.remaining, budget - produced)
                if declared is not None:
                    cap = min(cap, declared)
                try:
                    data = _read(entry, cap)
                except libarchive.ArchiveError as exc:
                    ctx.skip(path, core.CORRUPT_ARCHIVE, f"{kind} member: {exc}"[:200])
                    break  # libarchive's state after a failed read is not to be trusted
                if data is None:
                    ctx.charge(cap)  # the work done counts
                    if declared is not None and cap == declared:
                        ctx.skip(path, core.ZIP_BOMB, "member expands past its declared size")
                    elif cap == budget - produced:
                        detail = f"{len(node.data)} bytes expand past {budget}"
                        ctx.skip(node.path, core.MAX_EXPANSION_RATIO, detail)
                        break
                    else:
                        ctx.fits(path, ctx.remaining + 1)
                    continue
                produced += len(data)
                ctx.charge(len(data))
                found.append(_child(node, kind, name, data))
    except libarchive.ArchiveError as exc:
        if not seen:
            fail(core.CORRUPT_ARCHIVE, f"{kind}: {exc}")
        else:
            ctx.skip(node.path, core.CORRUPT_ARCHIVE, f"{kind}: {exc}"[:200])
    if encrypted:
        ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, f"{encrypted} {kind} members are encrypted")
    # handed on only once libarchive is closed: the walk may open nested archives meanwhile
    yield from found


def stream_name(kind: str, filename: str | None) -> str:
    """`photos.tar.zst` -> `photos.tar`, `x.tlz` -> `x.tar`; otherwise `decompressed`."""
    name = filename or ""
    for suffix, repl in _STRIP[kind]:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + repl
    return "decompressed"


def decompress(data: bytes, kind: str, cap: int) -> tuple[bytes | None, str]:
    """A compress / lzip / lz4 / zstd stream decompressed up to `cap` bytes: (None, "") if
    the output would pass the cap, else the output and an error text (empty if it ended
    cleanly). Used for `.tar.Z`, `.tar.lz`, `.tar.lz4`, `.tar.zst` and single files alike."""
    libarchive = _libarchive()
    parts: list[bytes] = []
    total = 0
    try:
        with libarchive.memory_reader(
            data, format_name="raw", filter_name=STREAM_FILTERS[kind]
        ) as archive:
            for entry in archive:
                for block in entry.get_blocks(_BLOCK):
                    parts.append(block)
                    total += len(block)
                    if total > cap:
                        return None, ""
                break  # the raw format has exactly one entry
    except libarchive.ArchiveError as exc:
        return b"".join(parts), str(exc) or type(exc).__name__
    return b"".join(parts), ""


def compressed_stream(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool = False
) -> Iterator[Node]:
    """A compress / lzip / lz4 / zstd stream: its decompressed bytes are handed on as one
    payload (a tar among them is then opened by the tar reader)."""
    fail = Fail(ctx, node, quiet)
    by_ratio = ctx.expansion_cap(len(node.data))
    cap = min(by_ratio, ctx.remaining)
    if not ctx.count_member(node.path):
        return
    out, error = decompress(node.data, kind, cap)
    if out is None:
        ctx.charge(cap)  # the work done counts: many bombs in one message cannot add up
        if by_ratio <= ctx.remaining + cap:
            detail = f"{len(node.data)} bytes expand past {by_ratio}"
            ctx.skip(node.path, core.MAX_EXPANSION_RATIO, detail)
        else:
            ctx.fits(node.path, ctx.remaining + 1)
        return
    if error:
        if not out:
            fail(core.CORRUPT_ARCHIVE, f"{kind}: {error}")
            return
        ctx.defect(node.path, "compressed-stream-truncated")
    ctx.charge(len(out))
    yield _child(node, kind, stream_name(kind, node.filename), out)
