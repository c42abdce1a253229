"""Quarantine, the durable part: a held message's original bytes and a JSON record of what
is known about it, written so that once `QuarantineStore.write` returns both survive a
crash or a power cut. The front ends answer 250 only after that.

Layout under `quarantine.path` (directories 0700, files 0600):

    <path>/<YYYY-MM-DD>/<id>.eml    the message exactly as received
    <path>/<YYYY-MM-DD>/<id>.json   the record (`records.QuarantineRecord`)
    <path>/outbox/<id>.<n>.job      work still to do for an entry: report mail, report
                                    directory, webhook, quarantine index (report/)
    <path>/audit.jsonl              operator actions, one JSON object per line
    <path>/.lock                    taken (flock) while a record is rewritten

Every file is written to a temporary name in its directory, fsynced, renamed into place,
and the directory fsynced. An entry is written in this order: its outbox job (when there
is anything to report), the `.eml`, the `.json`. So whatever point a crash hits:

- before the `.json` is renamed into place there is no entry (readers list entries by
  their `.json`); the sender was never told 250 and sends the message again. What may be
  left: an outbox job whose record never appeared (the report sender drops it) and an
  `.eml` without a record (`purge` removes it once it is an hour old);
- after it, the entry is complete and its report job is already on disk, so the report
  is sent even if the 250 never reached the sender. The sender then retries and the
  message is quarantined (and reported) twice: duplicates are possible, loss is not.

Ids are unique (time + random), so a retried delivery makes a second entry, never
overwrites one. Records are only ever rewritten whole (status changes, legal hold), under
`.lock`, by the same temp-fsync-rename steps, so a reader sees the old or the new record.

Test hook: with the environment variable `MAILFILTER_TEST_CRASH_AFTER` set to
`quarantine-message` (the `.eml` is on disk, the record is not) or `quarantine-write`
(everything is on disk, the reply is not sent) the process kills itself with SIGKILL at
that point. Only the crash-consistency tests set it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from mailfilter.actions.records import (
    RECORD_FORMAT,
    SERVICE_ACTOR,
    HistoryEvent,
    JsonObject,
    QuarantineRecord,
    iso_time,
)
from mailfilter.model import Envelope, ScanResult
from mailfilter.settings import QuarantineSettings

__all__ = [
    "CRASH_HOOK_ENV",
    "SERVICE_ACTOR",
    "STATUSES",
    "OutboxJob",
    "QuarantineEntry",
    "QuarantineStore",
    "StoredEntry",
    "build_record",
    "id_time",
    "is_entry_id",
    "iso_time",
    "new_id",
]

log = logging.getLogger("mailfilter.quarantine")

JOB_FORMAT: Final = 1
CRASH_HOOK_ENV: Final = "MAILFILTER_TEST_CRASH_AFTER"
STATUSES: Final = ("quarantined", "reported", "released", "deleted")
OUTBOX_DIR: Final = "outbox"
SENDER_LOCK: Final = ".sender.lock"
AUDIT_LOG: Final = "audit.jsonl"
LOCK_FILE: Final = ".lock"
CYBERTIP_LOCK: Final = ".cybertip.lock"
_ALPHABET: Final = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words
_ID_RE: Final = re.compile(rf"^[{_ALPHABET}]{{8,32}}$")
_DAY_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RANDOM_BITS: Final = 40


def new_id(now: float | None = None) -> str:
    """A queue-id-like id: milliseconds since the epoch then 40 random bits, in base 31;
    sorts by time (for ids of the same length), unique across processes and machines."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    out = []
    while value:
        value, digit = divmod(value, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def is_entry_id(text: str) -> bool:
    """Whether `text` can be an id (checked before it goes anywhere near a path)."""
    return bool(_ID_RE.match(text))


def id_time(entry_id: str) -> float:
    """The time an id was made (its first 41-odd bits); ValueError if it is not an id."""
    if not is_entry_id(entry_id):
        raise ValueError(f"not a quarantine id: {entry_id!r}")
    value = 0
    for char in entry_id:
        value = value * len(_ALPHABET) + _ALPHABET.index(char)
    return (value >> _RANDOM_BITS) / 1000


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: str
    message_path: Path
    record_path: Path


def _json_envelope(envelope: Envelope) -> JsonObject:
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
    host: str | None = None,
) -> QuarantineRecord:
    """The record of a quarantined message. Never holds message or image content: names,
    sizes, types, hashes and matches only. Made from the JSON views of the scan result
    (`as_json`), so its file has exactly their keys; `extra` adds top-level fields
    (`front_end`)."""
    sizes = attachment_sizes or {}
    attachments: list[JsonObject] = []
    matches: list[JsonObject] = []
    if result is not None:
        for a in result.attachments:
            attachments.append({**a.as_json(), "size": sizes.get(a.mime_path)})
            matches.extend({"mime_path": a.mime_path, **m.as_json()} for m in a.matches)
    record: JsonObject = {
        "format": RECORD_FORMAT,
        "id": entry_id,
        "received": dt.datetime.fromtimestamp(received, dt.UTC).isoformat(),
        "received_ts": received,
        "host": host,
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
            u.as_json() for u in (result.unscannable if result is not None else ())
        ],
        "ambiguities": list(result.ambiguities) if result is not None else [],
        "matches": matches,
        "action": action,
        "reason": reason,
        "policy": dict(policy),
        "legal_hold": False,
        "status": "quarantined",
        "history": [HistoryEvent.now("quarantined", received, SERVICE_ACTOR).to_json()],
    }
    if extra:
        record.update(extra)
    return QuarantineRecord.from_json(record)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as read back: its record and where its files are."""

    id: str
    record: QuarantineRecord
    record_path: Path
    message_path: Path

    @property
    def has_message(self) -> bool:
        return self.message_path.exists()


@dataclass
class OutboxJob:
    """Work still to do for one entry, in `steps` order (see report/channels.py); `done`
    grows as steps succeed, so a retry never repeats a step that worked. `progress` holds
    each step's own state (JSON values, by step name): the report mail's recipients not
    yet accepted, for example."""

    job_id: str
    entry_id: str
    steps: list[str]
    created: float
    done: list[str] = field(default_factory=list)
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    progress: dict[str, JsonObject] = field(default_factory=dict)
    format: int = JOB_FORMAT

    @property
    def remaining(self) -> list[str]:
        return [s for s in self.steps if s not in self.done]

    @property
    def mail_pending(self) -> list[str] | None:
        """The report recipients not yet accepted (None: the mail was not tried yet)."""
        pending = self.progress.get("mail", {}).get("pending")
        return None if pending is None else [str(a) for a in pending]

    def to_json(self) -> JsonObject:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutboxJob:
        progress = {str(k): dict(v) for k, v in (data.get("progress") or {}).items()}
        if data.get("mail_pending") is not None:  # (job files before `progress`)
            progress.setdefault("mail", {"pending": [str(a) for a in data["mail_pending"]]})
        return cls(
            # Older job files also carry "record" (the record's path), never needed: ignored.
            job_id=str(data["job_id"]), entry_id=str(data["entry_id"]),
            steps=[str(s) for s in data["steps"]],
            created=float(data["created"]), done=[str(s) for s in data.get("done", [])],
            attempts=int(data.get("attempts", 0)),
            next_attempt=float(data.get("next_attempt", 0.0)),
            last_error=data.get("last_error"),
            progress=progress,
        )


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


def write_file_durably(path: Path, data: bytes) -> None:
    """`data` into `path` (0600) so that it is complete or absent after a crash."""
    _write_durably(path.parent, path.name, [data])
    _fsync_dir(path.parent)


def _encode(record: QuarantineRecord) -> bytes:
    return (json.dumps(record.to_json(), ensure_ascii=False, indent=1, default=str).encode()
            + b"\n")


class QuarantineStore:
    """Entries under `settings.path`. Blocking (fsync): call it from a thread in the
    service; the CLI calls it directly."""

    def __init__(self, settings: QuarantineSettings) -> None:
        self.root = Path(settings.path)
        self.retention_days = settings.retention_days
        self.instance = settings.instance_name or socket.gethostname()
        self._crash_after = os.environ.get(CRASH_HOOK_ENV, "")

    @property
    def outbox_dir(self) -> Path:
        return self.root / OUTBOX_DIR

    @property
    def audit_path(self) -> Path:
        return self.root / AUDIT_LOG

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

    def _crash_point(self, name: str) -> None:
        if self._crash_after == name:  # see the module's docstring: tests only
            os.kill(os.getpid(), signal.SIGKILL)

    def day_dir(self, received: float) -> Path:
        day = dt.datetime.fromtimestamp(received, dt.UTC).strftime("%Y-%m-%d")
        return self.root / day

    # --- writing a new entry --------------------------------------------------------------

    def write(self, entry_id: str, raw: bytes, record: QuarantineRecord,
              received: float | None = None, report_steps: Sequence[str] = ()
              ) -> QuarantineEntry:
        """Durably store the message and its record, and (with `report_steps`) the outbox
        job that reports it; OSError (disk full, permissions) when that cannot be done,
        with nothing left behind that looks like an entry."""
        received = time.time() if received is None else received
        directory = self.day_dir(received)
        self._ensure_dir(directory)
        job = None
        if report_steps:
            job = self.new_job(entry_id, report_steps, time.time())
            self.save_job(job)
        try:
            message_path = _write_durably(directory, f"{entry_id}.eml", [raw])
            self._crash_point("quarantine-message")
            try:
                record_path = _write_durably(directory, f"{entry_id}.json", [_encode(record)])
                _fsync_dir(directory)
            except BaseException:
                with contextlib.suppress(OSError):
                    message_path.unlink()
                raise
        except BaseException:
            if job is not None:
                with contextlib.suppress(OSError):
                    self.drop_job(job)
            raise
        self._crash_point("quarantine-write")
        return QuarantineEntry(entry_id, message_path, record_path)

    def check_writable(self) -> None:
        """OSError when the quarantine directory cannot be created or written (for /readyz
        and start-up)."""
        self._ensure_dir(self.root)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "quarantine directory is not writable", str(self.root))

    # --- reading -----------------------------------------------------------------------------

    def _read(self, record_path: Path) -> StoredEntry:
        data = json.loads(record_path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("a record is a JSON object")
        record = QuarantineRecord.from_json(data)
        if not record.host:  # (records from before hosts)
            record = dataclasses.replace(record, host=self.instance)
        entry_id = record_path.stem
        return StoredEntry(entry_id, record, record_path, record_path.with_suffix(".eml"))

    def find(self, entry_id: str) -> StoredEntry | None:
        """The entry with this id on this instance, or None. Its directory comes from the
        time in the id; other days are searched only if it is not there."""
        if not is_entry_id(entry_id):
            return None
        name = f"{entry_id}.json"
        guess = self.day_dir(id_time(entry_id)) / name
        candidates = [guess] if guess.exists() else sorted(self.root.glob(f"*/{name}"))
        for path in candidates:
            if _DAY_RE.match(path.parent.name):
                return self._read(path)
        return None

    def day_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _DAY_RE.match(p.name) and p.is_dir())

    def entries(self) -> Iterator[StoredEntry]:
        """Every entry, oldest day first. A record that cannot be read is logged and
        skipped (the `.eml` stays where it is)."""
        for day in self.day_dirs():
            for path in sorted(day.glob("*.json")):
                if path.name.startswith("."):
                    continue
                try:
                    yield self._read(path)
                except (OSError, ValueError) as exc:
                    log.warning("unreadable quarantine record", extra={"fields": {
                        "path": str(path), "error": str(exc)}})

    # --- changing an entry -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (closing releases the lock)

    @contextlib.contextmanager
    def cybertip_lock(self, *, wait: float = 0.0) -> Iterator[None]:
        """The quarantine's CyberTipline lock, held by a submission for its whole run
        (`quarantine submit` and auto-submit: one /submit per journal) and by delete and
        purge while they judge and remove, so that no entry is removed under a report being
        filed (its journal would have no record to go to, its evidence no file).
        BlockingIOError when another process (or another open of it) holds it for `wait`
        seconds more (0: at once): never an unbounded wait behind a stopped command."""
        self._ensure_dir(self.root)
        fd = os.open(self.root / CYBERTIP_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # (closing releases the lock)

    def update(self, entry_id: str, change: Callable[[QuarantineRecord], QuarantineRecord]
               ) -> StoredEntry:
        """Read the record, let `change` make the new one, write it back durably, all under
        the store's lock (the report sender and operators may change one record at once).
        KeyError when there is no such entry."""
        with self._locked():
            entry = self.find(entry_id)
            if entry is None:
                raise KeyError(entry_id)
            record = change(entry.record)
            write_file_durably(entry.record_path, _encode(record))
        return StoredEntry(entry.id, record, entry.record_path, entry.message_path)

    def delete_message(self, entry: StoredEntry) -> bool:
        """Remove the message bytes (the record stays until purged); False if they were
        already gone."""
        try:
            entry.message_path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(entry.message_path.parent)
        return True

    def remove(self, entry: StoredEntry) -> None:
        """Remove an entry altogether (purge): message first, record last, so a crash in
        between leaves a record without its message, never the reverse."""
        with contextlib.suppress(FileNotFoundError):
            entry.message_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            entry.record_path.unlink()
        directory = entry.record_path.parent
        _fsync_dir(directory)
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty
            _fsync_dir(self.root)

    def leftovers(self, older_than: float) -> list[Path]:
        """Files of writes that never finished (a crash or a failed write), last changed
        before `older_than`: `.eml` files without a record and temporary files."""
        found: list[Path] = []
        for day in self.day_dirs():
            for path in day.iterdir():
                if path.stat().st_mtime >= older_than:
                    continue
                temporary = path.name.startswith(".") and path.name.endswith(".tmp")
                unrecorded = path.suffix == ".eml" and not path.with_suffix(".json").exists()
                if temporary or unrecorded:
                    found.append(path)
        if self.outbox_dir.is_dir():
            found += [p for p in self.outbox_dir.glob(".*.tmp")
                      if p.stat().st_mtime < older_than]
        return sorted(found)

    # --- the outbox ------------------------------------------------------------------------

    def new_job(self, entry_id: str, steps: Sequence[str], now: float) -> OutboxJob:
        return OutboxJob(job_id=f"{entry_id}.{secrets.token_hex(3)}", entry_id=entry_id,
                         steps=list(steps), created=now)

    def save_job(self, job: OutboxJob) -> None:
        """Write (or rewrite) a job durably."""
        self._ensure_dir(self.outbox_dir)
        body = json.dumps(job.to_json(), ensure_ascii=False).encode() + b"\n"
        _write_durably(self.outbox_dir, f"{job.job_id}.job", [body])
        _fsync_dir(self.outbox_dir)

    def open_sender_lock(self) -> int:
        """A descriptor of the outbox's lock file, `outbox/.sender.lock` (made, with the
        outbox, if need be), for the one process that sends from the outbox to flock.
        OSError when it cannot be opened."""
        self._ensure_dir(self.outbox_dir)
        return os.open(self.outbox_dir / SENDER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                       0o600)

    def drop_job(self, job: OutboxJob) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.outbox_dir / f"{job.job_id}.job").unlink()
            _fsync_dir(self.outbox_dir)

    def jobs(self) -> list[OutboxJob]:
        """The outbox, oldest entry first. A job file that cannot be read is logged and
        left alone (an operator may inspect it)."""
        if not self.outbox_dir.is_dir():
            return []
        out = []
        for path in sorted(self.outbox_dir.glob("*.job")):
            try:
                out.append(OutboxJob.from_json(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable outbox job", extra={"fields": {
                    "path": str(path), "error": str(exc)}})
        return out

    def pending_entry_ids(self) -> set[str]:
        if not self.outbox_dir.is_dir():
            return set()
        return {p.name.split(".", 1)[0] for p in self.outbox_dir.glob("*.job")}

    def add_job(self, entry: StoredEntry, steps: Sequence[str]) -> OutboxJob:
        """Queue more work for an existing entry (e.g. an index update that failed)."""
        job = self.new_job(entry.id, steps, time.time())
        self.save_job(job)
        return job

    # --- the audit log -----------------------------------------------------------------------

    def audit(self, actor: str, action: str, entry_id: str | None, result: str,
              **details: Any) -> None:
        """Append one operator action to the audit log and fsync it before returning."""
        self._ensure_dir(self.root)
        created = not self.audit_path.exists()
        line = json.dumps({"time": iso_time(time.time()), "actor": actor, "action": action,
                           "id": entry_id, "result": result, "host": self.instance,
                           **details}, ensure_ascii=False, default=str) + "\n"
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            # One write of a whole line with O_APPEND: lines of concurrent writers never
            # interleave.
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.root)
