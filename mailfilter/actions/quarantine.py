"""Quarantine, the durable part: a held message's original bytes and a JSON record of what
is known about it, written so that once `QuarantineStore.write` returns both survive a
crash or a power cut. The SMTP front end answers 250 only after that.

Layout under `quarantine.path` (directories 0700, files 0600):

    <path>/<YYYY-MM-DD>/<id>.eml    the message exactly as received
    <path>/<YYYY-MM-DD>/<id>.json   the record (see `build_record`)

Each file is written to a temporary name in the same directory, fsynced, renamed into place,
and the directory fsynced. The `.eml` is written first and the `.json` last, so a record
always has its message; a crash between the two leaves an `.eml` without a record (readers
list entries by their `.json` and may clean such leftovers). Ids are unique (time + random),
so a retried delivery of the same message makes a second entry, never overwrites one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mailfilter.model import Envelope, ScanResult
from mailfilter.settings import QuarantineSettings

__all__ = ["QuarantineEntry", "QuarantineStore", "build_record", "new_id"]

RECORD_FORMAT: Final = 1
_ALPHABET: Final = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


def new_id(now: float | None = None) -> str:
    """A queue-id-like id: milliseconds since the epoch then 40 random bits, in base 31;
    sorts by time (for ids of the same length), unique across processes and machines."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 40) | secrets.randbits(40)
    out = []
    while value:
        value, digit = divmod(value, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: str
    message_path: Path
    record_path: Path


def _json_envelope(envelope: Envelope) -> dict[str, Any]:
    return {
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "mail_options": list(envelope.mail_options),
        "rcpt_options": [list(o) for o in envelope.rcpt_options],
    }


def build_record(
    *,
    entry_id: str,
    received: float,
    envelope: Envelope,
    result: ScanResult | None,
    action: str,
    reason: str,
    policy: Mapping[str, Any],
    size: int,
    subject: str | None = None,
    attachment_sizes: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON record of a quarantined message. Never holds message or image content:
    names, sizes, types, hashes and matches only."""
    sizes = attachment_sizes or {}
    attachments = []
    matches = []
    if result is not None:
        for a in result.attachments:
            fp = a.fingerprint
            primary = fp.primary
            attachments.append({
                "mime_path": a.mime_path,
                "filename": a.filename,
                "content_type": a.content_type,
                "containers": list(a.containers),
                "size": sizes.get(a.mime_path),
                "width": fp.width,
                "height": fp.height,
                "format": fp.image_format,
                "md5": fp.exact.md5,
                "sha1": fp.exact.sha1,
                "sha256": fp.exact.sha256,
                "pdq": primary.pdq if primary else None,
                "pdq_quality": primary.pdq_quality if primary else None,
                "skipped": fp.skipped,
            })
            for m in a.matches:
                matches.append({
                    "mime_path": a.mime_path, "list": m.list_name, "algorithm": m.algorithm,
                    "distance": m.distance, "labels": list(m.labels), "value": m.value,
                })
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "id": entry_id,
        "received": dt.datetime.fromtimestamp(received, dt.UTC).isoformat(),
        "received_ts": received,
        "client": {
            "addr": envelope.client_addr, "name": envelope.client_name, "helo": envelope.helo,
        },
        "queue_id": envelope.queue_id,
        "envelope": _json_envelope(envelope),
        "size": size,
        "message_id": result.message_id if result is not None else None,
        "subject": subject,
        "verdict": result.verdict.value if result is not None else None,
        "attachments": attachments,
        "unscannable": [
            {"mime_path": u.mime_path, "reason": u.reason, "detail": u.detail}
            for u in (result.unscannable if result is not None else ())
        ],
        "matches": matches,
        "action": action,
        "reason": reason,
        "policy": dict(policy),
        "legal_hold": False,
    }
    if extra:
        record.update(extra)
    return record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(directory: Path, name: str, chunks: Sequence[bytes]) -> Path:
    """temp file (0600, exclusive) -> write -> fsync -> rename; the caller fsyncs the dir."""
    final = directory / name
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return final


class QuarantineStore:
    """Writes entries under `settings.path`. Blocking (fsync): call it from a thread."""

    def __init__(self, settings: QuarantineSettings) -> None:
        self.root = Path(settings.path)

    def _ensure_dir(self, path: Path) -> None:
        created = []
        for p in reversed((path, *path.parents)):
            if not p.exists():
                created.append(p)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in created:
            if p == self.root or self.root in p.parents:
                p.chmod(0o700)  # whatever the umask said
        for p in created:
            # New directory entries in the parents must be durable too.
            _fsync_dir(p.parent)

    def day_dir(self, received: float) -> Path:
        day = dt.datetime.fromtimestamp(received, dt.UTC).strftime("%Y-%m-%d")
        return self.root / day

    def write(self, entry_id: str, raw: bytes, record: Mapping[str, Any],
              received: float | None = None) -> QuarantineEntry:
        """Durably store the message and its record; OSError (disk full, permissions) when
        that cannot be done, with nothing left behind that looks like an entry."""
        received = time.time() if received is None else received
        directory = self.day_dir(received)
        self._ensure_dir(directory)
        message_path = _write_durably(directory, f"{entry_id}.eml", [raw])
        try:
            body = json.dumps(record, ensure_ascii=False, indent=1, default=str).encode()
            record_path = _write_durably(directory, f"{entry_id}.json", [body, b"\n"])
            _fsync_dir(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                message_path.unlink()
            raise
        return QuarantineEntry(entry_id, message_path, record_path)

    def check_writable(self) -> None:
        """OSError when the quarantine directory cannot be created or written (for /readyz
        and start-up)."""
        self._ensure_dir(self.root)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "quarantine directory is not writable", str(self.root))
