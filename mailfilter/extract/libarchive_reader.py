"""Containers read through libarchive (libarchive-c over the system's libarchive13): ISO 9660,
CAB, cpio and xar archives, the compress (.Z), lzip, lz4, zstd and .lzma streams, and 7z first.

Which reader for which format, and why (measured 2026-12 on a shared 2-core machine, so
times are rough: 24 JPEGs and 8 text files, 1.8 MB, median of 3 runs; peak Python memory by
tracemalloc, RSS growth by ru_maxrss, data kept in memory by both readers):

    format    ours (reader)          ms   py MB   rss MB  | libarchive  ms   py MB   rss MB
    zip       zipfile                11    0.4     0.0    |             11    0.2     0.3
    tar.gz    zlib + tarfile         24    7.5     5.1    |             16    0.2     0.3
    tar.bz2   bz2 + tarfile         544    7.4     8.6    |            534    0.2     3.7
    tar.xz    lzma + tarfile        251   15.9     8.6    |            246    0.2     2.0
    7z        py7zr                 350   19.6    10.9    |            210    0.2     1.8
    rar (m0)  rarfile                13    0.3     0.0    |             19    0.2     0.2
    zip bomb  (200 MB of zeros, reads stopped at 10 MB)  122 ms    |  128 ms

- ISO 9660, CAB, cpio, xar, compress, lzip, lz4: libarchive is the only reader we have (and
  for .lzma, which the lzma module reads too, it keeps all the single-stream filters alike).
- zstd: libarchive (no zstd module in the standard library before 3.14).
- 7z: libarchive, 1.6x faster than py7zr with a tenth of the memory, and it tells encrypted
  members and encrypted headers apart from damage; py7zr stays as the fallback for methods
  libarchive 3.6 lacks (its own limits apply there).
- zip, tar, gzip, bzip2, xz: our readers. libarchive is no faster on zip, bzip2 or xz and
  only modestly on gzip (one pass instead of decompress-then-untar), while zipfile gives every
  member's compressed size before anything is expanded (the per-member ratio check), and our
  zip reader keeps members with a bad CRC, refuses overlapping entries, reads Deflate64
  (`inflate64`; Debian's libarchive 3.6 has none) and finds entries missing from the central
  directory.
- RAR: rarfile. Stored members are read in-process; for compressed ones it runs bsdtar (this
  same libarchive) or unrar in a child process. That costs a temporary file and a process per
  member, but libarchive's RAR readers are where most of its recent memory-safety fixes were,
  and a crash there then ends a child process, not the worker.

Everything is read from memory (`memory_reader`), never a temporary file. Bombs: libarchive
hands an entry's data out in blocks, so each read stops as soon as it passes the member's
declared size, the decoded-byte budget or the container's expansion cap (`max_expansion_ratio`
times the container's own size, for all members together: a stored format such as ISO or cpio
can only pass it by pointing many entries at the same bytes).
"""

from __future__ import annotations

import ctypes
import posixpath
from collections.abc import Iterator
from typing import Any

from mailfilter.extract import core, sniff
from mailfilter.extract.containers import Fail, decompressed_payload
from mailfilter.extract.core import Context, Node, PayloadNode, member_path

# The libarchive read format (archives) or read filter (streams) for each kind.
ARCHIVE_FORMATS = {
    sniff.ISO9660: "iso9660",
    sniff.CAB: "cab",
    sniff.CPIO: "cpio",
    sniff.XAR: "xar",
}
# Read here first, by `archives` (which falls back to its own reader when libarchive lacks a
# codec): not dispatched from the walk directly.
FIRST_TRY_FORMATS = {sniff.SEVEN_ZIP: "7zip"}

# libarchive's words for "this build cannot decode that" (as opposed to "damaged").
_UNSUPPORTED = ("unexpected codec", "not supported", "unsupported")
STREAM_FILTERS = {
    sniff.COMPRESS: "compress",
    sniff.LZIP: "lzip",
    sniff.LZ4: "lz4",
    sniff.ZSTD: "zstd",
    sniff.LZMA: "lzma",
}

_BLOCK = 1 << 16

# Entries without data (directories, links) do not count as members, but walking them costs
# time too: at most this many per member allowed.
_ENTRIES_PER_MEMBER = 10

# What a compressed stream's file name loses (and becomes) once it is decompressed.
_STRIP = {
    sniff.COMPRESS: ((".taz", ".tar"), (".tz", ".tar"), (".z", "")),
    sniff.LZIP: ((".tlz", ".tar"), (".lz", "")),
    sniff.LZ4: ((".tlz4", ".tar"), (".lz4", "")),
    sniff.ZSTD: ((".tzst", ".tar"), (".zstd", ""), (".zst", "")),
    sniff.LZMA: ((".tlz", ".tar"), (".lzma", "")),
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


def _unsupported(exc: Exception) -> bool:
    text = str(exc).lower()
    return "encrypted" not in text and any(words in text for words in _UNSUPPORTED)


def archive_members(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool = False
) -> Iterator[Node]:
    """The regular files of an ISO 9660, CAB, cpio or xar archive."""
    found = read_members(ctx, node, kind, quiet)
    if found is None:
        ctx.skip(node.path, core.UNSUPPORTED_ARCHIVE, f"{kind}: a method libarchive lacks")
        return
    yield from found


def read_members(
    ctx: Context, node: PayloadNode, kind: str, quiet: bool = False
) -> list[PayloadNode] | None:
    """The members, read within the limits (and recorded where they break them); None if
    libarchive lacks a method the archive uses (what was charged so far stays charged)."""
    libarchive = _libarchive()
    fail = Fail(ctx, node, quiet)
    format_name = ARCHIVE_FORMATS.get(kind) or FIRST_TRY_FORMATS[kind]
    budget = ctx.expansion_cap(len(node.data))  # all members together, not each
    produced = 0
    found: list[PayloadNode] = []
    encrypted = 0
    seen = 0
    try:
        with libarchive.memory_reader(
            node.data, format_name=format_name, filter_name="none"
        ) as archive:
            for entry in archive:
                seen += 1
                if seen > _ENTRIES_PER_MEMBER * ctx.limits.max_archive_members + 100:
                    detail = f"more than {seen - 1} entries (directories, links...)"
                    ctx.skip(node.path, core.MAX_ARCHIVE_MEMBERS, detail)
                    break
                if not entry.isreg:  # directories, links, devices: no data of their own
                    continue
                if not ctx.count_member(node.path):
                    break
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
                    if _unsupported(exc):
                        return None
                    if "encrypted" in str(exc).lower():
                        encrypted += 1
                    else:
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
        if _unsupported(exc):
            return None
        if "encrypted" in str(exc).lower():  # 7z with encrypted headers
            ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, f"{kind}: {exc}"[:200])
        elif not seen:
            fail(core.CORRUPT_ARCHIVE, f"{kind}: {exc}")
        else:
            ctx.skip(node.path, core.CORRUPT_ARCHIVE, f"{kind}: {exc}"[:200])
    if encrypted:
        ctx.skip(node.path, core.ENCRYPTED_ARCHIVE, f"{encrypted} {kind} members are encrypted")
    # handed on only once libarchive is closed: the walk may open nested archives meanwhile
    return found


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
            if not archive.filter_names:  # the filter declined: raw would hand back the input
                return b"", f"not a {STREAM_FILTERS[kind]} stream"
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
    def inflate(data: bytes, cap: int) -> tuple[bytes | None, str]:
        return decompress(data, kind, cap)

    return decompressed_payload(ctx, node, kind, quiet, inflate,
                                stream_name(kind, node.filename))
