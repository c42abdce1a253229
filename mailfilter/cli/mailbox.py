"""Messages on disk for the `scan` command: .eml files, directories of them, mbox files and
Maildirs.

- A file whose first line starts with `From ` is an mbox: it is read in chunks (a mailbox of
  many gigabytes is never held in memory), split at `From ` lines that follow an empty line
  (or open the file), and also at `From ` lines without an empty line before them that look
  like separators (`From sender Mon Jan  1 00:00:00 2024`: writers that forget the empty
  line exist, and mutt and Python's `mailbox` split there, so a message hidden behind one is
  still a message), and `>From ` lines are un-escaped the mboxrd way. Each message is
  labelled `path:N`, N counting from 1.
- Any other file is one message, labelled with its path.
- A directory with `cur` and `new` subdirectories is a Maildir: the files in `cur` and `new`
  are its messages (`tmp` holds deliveries still being written and is left alone), and its
  other subdirectories (Maildir++ folders such as `.Sent`) are walked too.
- Any other directory is walked recursively, in name order; hidden files are skipped.

A path that does not exist or cannot be read raises OSError (the CLI reports it and exits 2).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

CHUNK = 1 << 20
# An mbox bigger than this is not counted to the end for the progress bar; its count is
# estimated from this much of its start.
COUNT_EXACT_LIMIT = 64 << 20

_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
# A `From ` line after an empty line; or, without one, a From_ line proper: a sender and an
# asctime (`Mon Jan  1 00:00:00 2024`) or RFC 5322 (`Mon, 1 Jan 2024 00:00`) date.
_SEPARATOR = re.compile(
    rb"\n\r?\nFrom |\nFrom (?=[^\s]{1,256} {1,8}" + _DAY + rb",? {1,4}(?:" + _MONTH
    + rb" {1,4}\d{1,2}|\d{1,2} {1,4}" + _MONTH + rb") {1,4}(?:\d{4} {1,4})?\d{1,2}:\d\d)"
)
# A separator may still be incomplete this far before the end of what was read so far.
_SEPARATOR_REACH = 512
_ESCAPED_FROM = re.compile(rb"^>(>*From )", re.M)


def iter_messages(paths: Sequence[Path]) -> Iterator[tuple[str, bytes]]:
    """(source label, raw message bytes) for every message under `paths`, in order.

    Every path is checked before anything is read, so a bad path fails at once.
    """
    checked = [Path(p) for p in paths]
    for path in checked:
        _check_readable(path)
    return _iterate(checked)


def count_messages(paths: Sequence[Path]) -> int | None:
    """A cheap estimate of how many messages `iter_messages` will yield (for a progress bar),
    or None if it cannot tell."""
    total = 0
    try:
        for path in (Path(p) for p in paths):
            if path.is_dir():
                total += sum(1 for _ in _directory_files(path))
            elif _is_mbox(path):
                total += _count_mbox(path)
            else:
                total += 1
    except OSError:
        return None
    return total


# --- walking ----------------------------------------------------------------------------


def _check_readable(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(path)) from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read: {exc.strerror}", str(path)) from None
    is_dir = stat.S_ISDIR(st.st_mode)
    wanted = os.R_OK | os.X_OK if is_dir else os.R_OK
    if not os.access(path, wanted):
        raise PermissionError(errno.EACCES, "permission denied", str(path))
    if not is_dir and not path.is_file():
        raise OSError(errno.EINVAL, "not a regular file or directory", str(path))


def _iterate(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        if path.is_dir():
            for file in _directory_files(path):
                yield from _file_messages(file)
        else:
            yield from _file_messages(path)


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _raise(exc: OSError) -> None:
    raise exc


def _directory_files(root: Path) -> Iterator[Path]:
    """The message files under a directory, Maildirs included, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        here = Path(dirpath)
        dirnames.sort()
        if _is_maildir(here):
            for sub in ("cur", "new"):
                for file in sorted((here / sub).iterdir()):
                    if not file.name.startswith(".") and file.is_file():
                        yield file
            dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
            continue
        for name in sorted(filenames):
            file = here / name
            if not name.startswith(".") and file.is_file():
                yield file


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(5) == b"From "


def _file_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    if _is_mbox(path):
        for n, message in enumerate(_mbox_messages(path), 1):
            yield f"{path}:{n}", message
    else:
        yield str(path), path.read_bytes()


# --- mbox -------------------------------------------------------------------------------


def _unescape(message: bytes) -> bytes:
    return _ESCAPED_FROM.sub(rb"\1", message) if b">From " in message else message


def _strip_final_blank(message: bytes) -> bytes:
    """The last message of an mbox usually ends with the empty line a writer adds."""
    if message.endswith(b"\r\n\r\n"):
        return message[:-2]
    if message.endswith(b"\n\n"):
        return message[:-1]
    return message


def _mbox_messages(path: Path) -> Iterator[bytes]:
    """The messages of an mbox file, read in chunks; each without its `From ` line."""
    with path.open("rb") as f:
        buf = bytearray()
        eof = False
        start = -1  # where the current message starts in buf, once its From_ line is read
        scan = 0
        while True:
            if not eof:
                chunk = f.read(CHUNK)
                if chunk:
                    buf += chunk
                else:
                    eof = True
            if start < 0:
                nl = buf.find(b"\n")
                if nl < 0:
                    if eof:
                        return  # a lone From_ line
                    continue
                start, scan = nl + 1, nl
            while True:
                m = _SEPARATOR.search(buf, max(scan, start - 1))
                if m is None:
                    scan = max(start, len(buf) - _SEPARATOR_REACH)
                    break
                nl = buf.find(b"\n", m.end())
                if nl < 0 and not eof:
                    scan = m.start()
                    break
                message = bytes(buf[start : m.start() + 1])
                if nl < 0:  # a From_ line at the very end
                    buf.clear()
                    start = scan = 0
                else:
                    # keep the From_ line's own line break: an empty next message is then
                    # still followed by a blank line and a separator is still found
                    del buf[:nl]
                    start, scan = 1, 0
                yield _unescape(message)
            if eof:
                if start >= 0:
                    yield _unescape(_strip_final_blank(bytes(buf[start:])))
                return


def _count_mbox(path: Path) -> int:
    size = path.stat().st_size
    limit = size if size <= COUNT_EXACT_LIMIT else COUNT_EXACT_LIMIT // 4
    count = 1
    read = 0
    pending = b""  # the end of what was read, where a separator may still be incomplete
    with path.open("rb") as f:
        while True:
            chunk = f.read(min(CHUNK, limit - read)) if read < limit else b""
            read += len(chunk)
            data = pending + chunk
            # separators starting before `cut` are complete; the rest waits for more data
            cut = max(0, len(data) - _SEPARATOR_REACH) if chunk else len(data)
            counted_end = 0
            for m in _SEPARATOR.finditer(data):
                if m.start() >= cut:
                    break
                count += 1
                counted_end = m.end()
            pending = data[max(cut, counted_end) :]
            if not chunk:
                break
    if read < size and read:
        count = max(count, round(count * size / read))
    return count
