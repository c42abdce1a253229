"""The local hash store: the lists in one SQLite database under `store.path`.

Used when no `redis_url` is set (one machine). Why SQLite rather than an append-only file
of our own: a replace of a list is one transaction, so readers in every process on the
machine see the old list or the new one and a crash at any point leaves the last
committed state (WAL journal, ``synchronous=FULL``: a committed import survives power
loss); WAL lets filter processes read while an import writes; and locking, recovery and
space reuse are SQLite's well-tested code instead of ours (an append-only file would need
its own lock protocol, fsync discipline, torn-tail recovery and compaction).

Layout (the same columns and chunking as the Redis store, see store.py):

- ``state(key, value)``: ``version``, incremented by every committed change;
- ``lists(name, meta)``: the list's JSON meta (source, times, label table, counts);
- ``chunks(list, algorithm, kind, seq, data)``: the column chunks as BLOBs of ~8 MB.

Readers run in one read transaction (a consistent snapshot); writers take the write lock
(``BEGIN IMMEDIATE``) and do read-merge-write in the same transaction. Other processes
notice changes by polling (``PRAGMA data_version`` is a cheap per-connection check).
The directory is created 0700 and the database 0600 (SQLite gives its -wal and -shm
files the database's permissions).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from mailfilter.errors import ConfigError, TemporaryFailure
from mailfilter.matching.store import (
    BaseHashStore,
    ListData,
    ListMeta,
    StoreReader,
    encode_chunks,
    meta_for,
)
from mailfilter.settings import StoreSettings

__all__ = ["DB_NAME", "LocalHashStore"]

DB_NAME: Final = "hashes.sqlite3"
SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT: Final = 60.0
POLL_SECONDS: Final = 0.25

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state (key, value) VALUES ('version', 0);
CREATE TABLE IF NOT EXISTS lists (name TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    list TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (list, algorithm, kind, seq)
);
"""


class _LocalReader:
    """Reads inside the connection's current transaction (a snapshot in WAL mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        row = conn.execute("SELECT value FROM state WHERE key = 'version'").fetchone()
        self.version = int(row[0]) if row else 0
        self.metas: dict[str, ListMeta] = {}
        for name, text in conn.execute("SELECT name, meta FROM lists"):
            self.metas[name] = ListMeta.from_json(text)

    def chunks(self, meta: ListMeta, algorithm: str, kind: str) -> Iterator[bytes]:
        for seq in range(meta.chunks(algorithm)):
            row = self._conn.execute(
                "SELECT data FROM chunks WHERE list = ? AND algorithm = ? AND kind = ? "
                "AND seq = ?", (meta.name, algorithm, kind, seq),
            ).fetchone()
            if row is None:
                raise ValueError(f"list {meta.name!r}: chunk {algorithm}/{kind}/{seq} missing")
            yield bytes(row[0])


class LocalHashStore(BaseHashStore):
    backend = "local"

    def __init__(self, settings: StoreSettings) -> None:
        self.directory = Path(settings.path)
        self.db_path = self.directory / DB_NAME
        self.location = str(self.db_path)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise ConfigError(
                f"[store] path = {str(self.directory)!r}: cannot create the local store: "
                f"{exc.strerror or exc}"
            ) from None
        self._poll_lock = threading.Lock()
        self._poll: sqlite3.Connection | None = None
        self._last_data_version: int | None = None
        with self._errors():
            conn = self._connect()
            try:
                found = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if found > SCHEMA_VERSION:
                    raise ConfigError(
                        f"[store] path = {str(self.directory)!r}: {DB_NAME} was written by a "
                        f"newer mailfilter (schema {found}, this one reads {SCHEMA_VERSION})"
                    )
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            finally:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise TemporaryFailure("store-unavailable", f"local store {self.location}: {exc}"
                                   ) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[StoreReader]:
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            yield _LocalReader(conn)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()

    def _write_list(self, name: str,
                    compute: Callable[[ListMeta | None, StoreReader | None], ListData | None],
                    source: str, merge: bool) -> tuple[int, ListMeta | None]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                reader = _LocalReader(conn)
                old = reader.metas.get(name)
                data = compute(old, reader)
                conn.execute("DELETE FROM chunks WHERE list = ?", (name,))
                meta: ListMeta | None = None
                if data is None:
                    conn.execute("DELETE FROM lists WHERE name = ?", (name,))
                else:
                    now = time.time()
                    meta = meta_for(name, source, data, old.created if old else now, now)
                    conn.executemany(
                        "INSERT INTO chunks (list, algorithm, kind, seq, data) "
                        "VALUES (?, ?, ?, ?, ?)",
                        ((name, a, k, i, blob) for a, k, i, blob in encode_chunks(meta, data)),
                    )
                    conn.execute("INSERT OR REPLACE INTO lists (name, meta) VALUES (?, ?)",
                                 (name, meta.to_json()))
                conn.execute("UPDATE state SET value = value + 1 WHERE key = 'version'")
                row = conn.execute("SELECT value FROM state WHERE key = 'version'").fetchone()
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return int(row[0]), meta
        finally:
            conn.close()

    def _poll_conn(self) -> sqlite3.Connection:
        if self._poll is None:
            self._poll = self._connect()
        return self._poll

    def version(self) -> int:
        with self._errors(), self._poll_lock:
            row = self._poll_conn().execute(
                "SELECT value FROM state WHERE key = 'version'"
            ).fetchone()
            return int(row[0]) if row else 0

    def _data_version(self) -> int:
        with self._errors(), self._poll_lock:
            return int(self._poll_conn().execute("PRAGMA data_version").fetchone()[0])

    def wait_for_change(self, timeout: float) -> bool:
        """Poll for commits by any other connection (this process's writes included)."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._last_data_version is None:
            self._last_data_version = self._data_version()
        while True:
            current = self._data_version()
            if current != self._last_data_version:
                self._last_data_version = current
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_SECONDS, left))

    def close(self) -> None:
        with self._poll_lock:
            if self._poll is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._poll.close()
                self._poll = None
