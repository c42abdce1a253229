"""The hash store: where hash lists live between imports and filter restarts.

`HashStore` is the interface every backend offers; `backends.open_store(settings)` picks
one by `store.redis_url` (empty: the local SQLite store under `store.path`, see
`store_local.py`; ``redis://``, ``rediss://``, ``unix://``: the shared Redis store, see
`store_redis.py`).

Lists are kept column-wise, the same way in both backends, so a cold load of ten million
PDQ hashes is a handful of large reads straight into numpy arrays, not ten million
records:

- per list and algorithm, three columns cut into chunks at the same record boundaries:
  ``v`` the raw hash values (fixed width per algorithm, concatenated), ``l`` each
  entry's label-set id (uint8/16/32 by the size of the list's label table), ``a`` the
  time each entry was added (uint32 epoch seconds; read only by `export`);
- a small JSON "meta" per list: name, source, created/updated times, the label table
  (id -> label set), and per algorithm the entry count and records per chunk.

Within a list an (algorithm, value) pair is stored once: duplicates are merged (labels
united, the earliest added time kept). Imports are atomic (readers see the old list or the
new one) and every committed change increments the store's version counter, which
`LiveIndex` watches to reload.

The shared logic (collecting parsed batches, merging, tombstones, reading columns into an
index) lives here in `BaseHashStore`; a backend supplies a consistent reader
(`_reading`), an atomic list writer (`_write_list`) and change notification.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from mailfilter import signals
from mailfilter.errors import ConfigError, TemporaryFailure
from mailfilter.matching.formats import (
    ALGORITHM_BYTES,
    Column,
    LabelTable,
    ParsedBatch,
    ParseTally,
    format_added,
    normalise_labels,
)

if TYPE_CHECKING:
    from mailfilter.matching.index import HashIndex

__all__ = [
    "ALGORITHMS",
    "BaseHashStore",
    "EntryLike",
    "ExportedEntry",
    "HashStore",
    "ImportProgress",
    "ImportReport",
    "ListInfo",
    "StoreStats",
    "UnknownList",
    "batches_from_entries",
]

ALGORITHMS: Final = tuple(ALGORITHM_BYTES)

log = logging.getLogger("mailfilter.matching.store")

CHUNK_BYTES: Final = 8 * 1024 * 1024
"""Target size of one value chunk. Large enough that ten million PDQ hashes are 40 reads,
small enough that one command never stalls Redis for long."""

META_FORMAT: Final = 1

T = TypeVar("T")
U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]

_LIST_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


class UnknownList(ConfigError):
    """A command named a list the store does not have (exit 2, one line)."""


class _Unchanged(Exception):
    """An import would leave the list exactly as it is: nothing is committed."""


class SnapshotChanged(Exception):
    """A reader found part of its snapshot gone (a concurrent change outlived the grace
    period); the operation starts again from a fresh snapshot."""


SNAPSHOT_ATTEMPTS: Final = 5


def check_list_name(name: str) -> str:
    if not _LIST_NAME.fullmatch(name) or name != name.strip():
        raise ConfigError(
            f"list name {name!r}: expected 1 to 200 printable characters, "
            "no leading or trailing blanks"
        )
    return name


def chunk_records(algorithm: str) -> int:
    return max(1, CHUNK_BYTES // ALGORITHM_BYTES[algorithm])


def label_dtype(table_size: int) -> str:
    if table_size <= 1 << 8:
        return "<u1"
    if table_size <= 1 << 16:
        return "<u2"
    return "<u4"


# --- values passed around --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListInfo:
    name: str
    source: str
    counts: Mapping[str, int]
    created: float
    updated: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "counts": dict(self.counts),
            "total": self.total,
            "created": format_added(int(self.created)),
            "updated": format_added(int(self.updated)),
        }


@dataclass(frozen=True, slots=True)
class StoreStats:
    backend: str
    location: str
    version: int
    lists: tuple[ListInfo, ...]

    def totals(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for info in self.lists:
            out.update(info.counts)
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "location": self.location,
            "version": self.version,
            "totals": self.totals(),
            "lists": [info.to_json() for info in self.lists],
        }


@dataclass(frozen=True, slots=True)
class ExportedEntry:
    list_name: str
    algorithm: str
    value: str  # lowercase hex
    labels: tuple[str, ...]
    added: int  # epoch seconds, 0 unknown

    def to_json(self) -> dict[str, Any]:
        """One line of the `jsonl` format."""
        return {
            "list": self.list_name,
            "algorithm": self.algorithm,
            "value": self.value,
            "labels": list(self.labels),
            "added": format_added(self.added),
        }


@dataclass(frozen=True, slots=True)
class ImportProgress:
    phase: str  # "parse", "merge", "write", "done"
    lines: int
    loaded: int
    skipped: int
    seconds: float


ProgressCallback = Callable[[ImportProgress], None]


@dataclass(frozen=True)
class ImportReport:
    """What an import did. `loaded` counts valid entries read from the source, `totals`
    the list's entries per algorithm afterwards. `committed` is False when nothing was
    changed (`not_committed` says why)."""

    list_name: str
    source: str
    replace: bool
    committed: bool
    version: int
    lines: int
    loaded: Mapping[str, int]
    skipped: Mapping[str, int]
    examples: tuple[tuple[int, str], ...]
    degenerate: int
    tombstones: int
    removed: int
    duplicates: int
    totals: Mapping[str, int]
    seconds: float
    not_committed: str | None = None

    @property
    def loaded_total(self) -> int:
        return sum(self.loaded.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "list": self.list_name,
            "source": self.source,
            "replace": self.replace,
            "committed": self.committed,
            "version": self.version,
            "lines": self.lines,
            "loaded": dict(self.loaded),
            "loaded_total": self.loaded_total,
            "skipped": dict(self.skipped),
            "skipped_total": self.skipped_total,
            "bad_lines": [{"line": n, "reason": r} for n, r in self.examples],
            "degenerate": self.degenerate,
            "tombstones": self.tombstones,
            "removed": self.removed,
            "duplicates": self.duplicates,
            "totals": dict(self.totals),
            "seconds": round(self.seconds, 3),
            "not_committed": self.not_committed,
        }


@runtime_checkable
class EntryLike(Protocol):
    """Anything with these attributes can be added (`IndexEntry` is one)."""

    @property
    def algorithm(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def labels(self) -> Sequence[str]: ...


# --- the interface ---------------------------------------------------------------------------


class HashStore(Protocol):
    """Hash lists, shared by every filter instance that opens the same store."""

    backend: str

    def import_list(self, name: str, source: str, batches: Iterable[ParsedBatch], *,
                    replace: bool = False,
                    progress_cb: ProgressCallback | None = None) -> ImportReport:
        """Load parsed batches into list `name`: replacing it (`replace`) or merged into it.
        Tombstones remove entries (from the old list too when merging). Atomic: readers
        see the old list or the new one. Nothing is committed when the batches hold no
        entry (nor, when merging, any tombstone)."""
        ...

    def add(self, name: str, entries: Iterable[EntryLike]) -> ImportReport:
        """Merge a few entries into a list (created if missing)."""
        ...

    def remove(self, name: str,
               entries: Iterable[tuple[str, str]] | None = None) -> int:
        """Delete list `name` (entries None) and return its size, or remove the given
        (algorithm, hex value) entries from it and return how many were there.
        UnknownList if there is no such list."""
        ...

    def lists(self) -> tuple[ListInfo, ...]: ...

    def stats(self) -> StoreStats: ...

    def export(self, name: str | None = None) -> Iterator[ExportedEntry]:
        """Every entry of one list or of all, from one consistent snapshot."""
        ...

    def version(self) -> int:
        """Incremented by every committed change; 0 for a store never written."""
        ...

    def load_index(self) -> HashIndex:
        """Everything in the store, as an in-memory index tagged with its version."""
        ...

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for a change notification; True if one came.
        Advisory: callers compare `version()` anyway."""
        ...

    def raise_version(self, seen: int) -> int:
        """The store's version went below `seen`, a version read from it before (a Redis
        failover to a replica that had not received the last commits): make it higher
        than `seen`, and announce it, so that no version number ever stands for two
        different contents (the verdict cache is keyed by it). Returns the version."""
        ...

    def close(self) -> None: ...


# --- columns in memory -----------------------------------------------------------------------


@dataclass
class Columns:
    values: U8  # (n, width)
    label_ids: U32  # (n,)
    added: U32  # (n,)

    def __len__(self) -> int:
        return int(self.label_ids.shape[0])

    @classmethod
    def empty(cls, algorithm: str) -> Columns:
        width = ALGORITHM_BYTES[algorithm]
        return cls(np.empty((0, width), np.uint8), np.empty(0, np.uint32),
                   np.empty(0, np.uint32))

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Columns:
        return Columns(self.values[index], self.label_ids[index], self.added[index])


@dataclass
class ListData:
    """One list's entries (any subset of columns may be absent when not needed)."""

    labels: list[tuple[str, ...]]
    columns: dict[str, Columns] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {a: len(c) for a, c in self.columns.items() if len(c)}


@dataclass
class ListMeta:
    """The stored description of one list (JSON in both backends)."""

    name: str
    source: str
    created: float
    updated: float
    labels: list[tuple[str, ...]]
    label_dtype: str
    counts: dict[str, int]
    chunk_records: dict[str, int]
    generation: str = ""
    widths: dict[str, int] = field(default_factory=dict)

    def width(self, algorithm: str) -> int:
        """Bytes per stored value: as written (gridhist's length may differ between
        versions of mailfilter), else the current width."""
        return self.widths.get(algorithm) or ALGORITHM_BYTES[algorithm]

    def current(self, algorithm: str) -> bool:
        """Whether this list's values of `algorithm` are comparable with today's hashes."""
        return self.width(algorithm) == ALGORITHM_BYTES[algorithm]

    def chunks(self, algorithm: str) -> int:
        n = self.counts.get(algorithm, 0)
        per = self.chunk_records.get(algorithm) or chunk_records(algorithm)
        return (n + per - 1) // per

    def info(self) -> ListInfo:
        return ListInfo(self.name, self.source, dict(self.counts), self.created, self.updated)

    def to_json(self) -> str:
        return json.dumps({
            "format": META_FORMAT,
            "name": self.name,
            "source": self.source,
            "created": self.created,
            "updated": self.updated,
            "labels": [list(s) for s in self.labels],
            "label_dtype": self.label_dtype,
            "counts": self.counts,
            "chunk_records": self.chunk_records,
            "widths": self.widths,
            "generation": self.generation,
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ListMeta:
        obj = json.loads(text)
        if obj.get("format") != META_FORMAT:
            raise ValueError(f"unsupported list meta format {obj.get('format')!r}")
        return cls(
            name=obj["name"],
            source=obj["source"],
            created=float(obj["created"]),
            updated=float(obj["updated"]),
            labels=[tuple(s) for s in obj["labels"]],
            label_dtype=obj["label_dtype"],
            counts={k: int(v) for k, v in obj["counts"].items()},
            chunk_records={k: int(v) for k, v in obj["chunk_records"].items()},
            generation=obj.get("generation", ""),
            widths={k: int(v) for k, v in obj.get("widths", {}).items()},
        )


def encode_chunks(meta: ListMeta, data: ListData) -> Iterator[tuple[str, str, int, bytes]]:
    """(algorithm, kind, index, bytes) of every chunk of a list, in write order."""
    for algorithm, cols in data.columns.items():
        n = len(cols)
        per = meta.chunk_records[algorithm]
        labels = cols.label_ids.astype(meta.label_dtype, copy=False)
        added = cols.added.astype("<u4", copy=False)
        for i, start in enumerate(range(0, n, per)):
            stop = min(n, start + per)
            yield algorithm, "v", i, cols.values[start:stop].tobytes()
            yield algorithm, "l", i, labels[start:stop].tobytes()
            yield algorithm, "a", i, added[start:stop].tobytes()


def meta_for(name: str, source: str, data: ListData, created: float, now: float,
             generation: str = "") -> ListMeta:
    counts = data.counts()
    return ListMeta(
        name=name, source=source, created=created, updated=now,
        labels=list(data.labels), label_dtype=label_dtype(len(data.labels)),
        counts=counts, chunk_records={a: chunk_records(a) for a in counts},
        generation=generation,
        widths={a: int(data.columns[a].values.shape[1]) for a in counts},
    )


class StoreReader(Protocol):
    """A consistent view of the store (one snapshot) while it is open."""

    version: int
    metas: dict[str, ListMeta]

    def chunks(self, meta: ListMeta, algorithm: str, kind: str) -> Iterator[bytes]:
        """The chunks of one column, in order."""
        ...


def read_column(reader: StoreReader, meta: ListMeta, algorithm: str, kind: str,
                out: npt.NDArray[Any]) -> None:
    """Fill `out` (preallocated, `meta.counts[algorithm]` records) from a column."""
    if not out.flags.c_contiguous:
        raise ValueError("read_column needs a contiguous output array")
    flat = out.reshape(-1).view(np.uint8)
    pos = 0
    for chunk in reader.chunks(meta, algorithm, kind):
        flat[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        pos += len(chunk)
    if pos != flat.shape[0]:
        raise ValueError(
            f"list {meta.name!r} {algorithm}/{kind}: {pos} bytes stored, {flat.shape[0]} expected"
        )


def read_list(reader: StoreReader, meta: ListMeta, *, added: bool = True) -> ListData:
    data = ListData(labels=list(meta.labels))
    for algorithm, n in meta.counts.items():
        values = np.empty((n, meta.width(algorithm)), np.uint8)
        read_column(reader, meta, algorithm, "v", values)
        stored_labels = np.empty(n, meta.label_dtype)
        read_column(reader, meta, algorithm, "l", stored_labels)
        when = np.empty(n, "<u4")
        if added:
            read_column(reader, meta, algorithm, "a", when)
        else:
            when.fill(0)
        data.columns[algorithm] = Columns(values, stored_labels.astype(np.uint32),
                                          when.astype(np.uint32, copy=False))
    return data


# --- collecting, merging ---------------------------------------------------------------------


class _Collector:
    """Parsed batches -> one ListData (compact: bytearrays, then numpy) + tombstones."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.labels = LabelTable()
        self.tally = ParseTally()
        self._remaps: dict[int, tuple[LabelTable, list[int]]] = {}
        self._values: dict[str, bytearray] = {}
        self._label_ids: dict[str, list[U32]] = {}
        self._added: dict[str, list[npt.NDArray[np.int64]]] = {}
        self._tombs: dict[str, bytearray] = {}

    def _remap(self, table: LabelTable) -> U32:
        entry = self._remaps.get(id(table))
        if entry is None:
            entry = self._remaps[id(table)] = (table, [])
        remap = entry[1]
        for labels in table.sets[len(remap):]:
            remap.append(self.labels.id_of(normalise_labels(labels)))
        return np.asarray(remap, np.uint32)

    def feed(self, batch: ParsedBatch) -> None:
        self.tally.add(batch)
        if batch.columns:
            remap = self._remap(batch.labels)
        for algorithm, col in batch.columns.items():
            if not len(col):
                continue
            self._values.setdefault(algorithm, bytearray()).extend(col.values)
            ids = np.frombuffer(col.label_ids, np.uint32) if len(col) else np.empty(0, np.uint32)
            self._label_ids.setdefault(algorithm, []).append(remap[ids])
            self._added.setdefault(algorithm, []).append(
                np.frombuffer(col.added, np.int64).copy()
            )
        for algorithm, raw in batch.tombstones:
            self._tombs.setdefault(algorithm, bytearray()).extend(raw)

    def result(self) -> tuple[ListData, dict[str, U8]]:
        data = ListData(labels=list(self.labels.sets))
        for algorithm, values in self._values.items():
            width = ALGORITHM_BYTES[algorithm]
            vals = np.frombuffer(values, np.uint8).reshape(-1, width)
            ids = np.concatenate(self._label_ids[algorithm])
            added = np.concatenate(self._added[algorithm])
            stamps = np.where((added <= 0) | (added >= 2**32), self.now, added).astype(np.uint32)
            data.columns[algorithm] = Columns(vals, ids, stamps)
        self._values.clear()
        tombs = {
            a: np.frombuffer(raw, np.uint8).reshape(-1, ALGORITHM_BYTES[a])
            for a, raw in self._tombs.items()
        }
        return data, tombs


def _as_keys(values: U8) -> npt.NDArray[np.bytes_]:
    """Fixed-width byte strings, for sorting and set membership (np.isin)."""
    width = values.shape[1]
    return np.ascontiguousarray(values).view(f"S{width}").reshape(-1)


@dataclass
class CombineStats:
    removed: int = 0
    duplicates: int = 0


def combine(parts: Sequence[ListData], tombstones: Mapping[str, U8]
            ) -> tuple[ListData, CombineStats]:
    """Concatenate lists (older first), drop tombstoned values, merge duplicates: labels
    united, earliest added time kept. Entries come out sorted by value."""
    stats = CombineStats()
    table = LabelTable()
    remaps = [np.asarray([table.id_of(s) for s in part.labels], np.uint32) for part in parts]
    out = ListData(labels=[])
    for algorithm in ALGORITHMS:
        pieces = [(p.columns[algorithm], r) for p, r in zip(parts, remaps, strict=True)
                  if algorithm in p.columns and len(p.columns[algorithm])]
        obsolete = [c for c, _ in pieces if c.values.shape[1] != ALGORITHM_BYTES[algorithm]]
        if obsolete:  # values of an older hash format: they can no longer match anything
            stats.removed += sum(len(c) for c in obsolete)
            pieces = [(c, r) for c, r in pieces if c.values.shape[1] == ALGORITHM_BYTES[algorithm]]
        if not pieces:
            continue
        values = np.concatenate([c.values for c, _ in pieces])
        label_ids = np.concatenate([r[c.label_ids] for c, r in pieces])
        added = np.concatenate([c.added for c, _ in pieces])
        keys = _as_keys(values)
        tomb = tombstones.get(algorithm)
        if tomb is not None and len(tomb):
            keep = ~np.isin(keys, _as_keys(tomb))
            stats.removed += int(len(keep) - np.count_nonzero(keep))
            values, label_ids, added, keys = (
                values[keep], label_ids[keep], added[keep], keys[keep]
            )
        if not len(keys):
            continue
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts_mask = np.empty(len(keys), bool)
        starts_mask[0] = True
        np.not_equal(keys[1:], keys[:-1], out=starts_mask[1:])
        starts = np.flatnonzero(starts_mask)
        stats.duplicates += int(len(keys) - len(starts))
        sorted_ids = label_ids[order]
        sorted_added = added[order]
        first = order[starts]
        new_ids = sorted_ids[starts]
        new_added = sorted_added[starts]
        if len(starts) != len(keys):
            new_added = np.minimum.reduceat(sorted_added, starts)
            lo = np.minimum.reduceat(sorted_ids, starts)
            hi = np.maximum.reduceat(sorted_ids, starts)
            bounds = np.append(starts, len(keys))
            for g in np.flatnonzero(lo != hi):
                union: set[str] = set()
                for lid in np.unique(sorted_ids[bounds[g]:bounds[g + 1]]):
                    union.update(table.sets[int(lid)])
                new_ids[g] = table.id_of(normalise_labels(union))
        out.columns[algorithm] = Columns(values[first], new_ids.astype(np.uint32), new_added)
    # Keep only label sets still in use, so tables do not grow forever with merges.
    used = np.unique(np.concatenate(
        [c.label_ids for c in out.columns.values()] + [np.zeros(1, np.uint32)]
    ))
    remap = np.zeros(len(table), np.uint32)
    remap[used] = np.arange(len(used), dtype=np.uint32)
    out.labels = [table.sets[int(i)] for i in used]
    for cols in out.columns.values():
        cols.label_ids = remap[cols.label_ids]
    return out, stats


def same_entries(a: ListData, b: ListData) -> bool:
    """Same values with the same labels (both sorted by value, as `combine` leaves them)."""
    if a.counts() != b.counts():
        return False
    table = LabelTable()
    map_a = np.asarray([table.id_of(s) for s in a.labels], np.uint32)
    map_b = np.asarray([table.id_of(s) for s in b.labels], np.uint32)
    for algorithm, cols in b.columns.items():
        if not len(cols):
            continue
        other = a.columns[algorithm]
        if not np.array_equal(other.values, cols.values):
            return False
        if not np.array_equal(map_a[other.label_ids], map_b[cols.label_ids]):
            return False
    return True


def batches_from_entries(entries: Iterable[EntryLike], batch_size: int = 65_536
                         ) -> Iterator[ParsedBatch]:
    """Entries given as objects (e.g. `IndexEntry`) -> parsed batches; bad values are
    reported as skipped (line = position, from 1)."""
    table = LabelTable()
    batch = ParsedBatch(labels=table)
    for n, entry in enumerate(entries, 1):
        batch.lines += 1
        algorithm = entry.algorithm.lower()
        width = ALGORITHM_BYTES.get(algorithm)
        raw: bytes | None = None
        if width is not None:
            try:
                raw = bytes.fromhex(entry.value)
            except ValueError:
                raw = None
        if width is None:
            batch.skipped.append((n, "unknown algorithm"))
        elif raw is None or len(raw) != width:
            batch.skipped.append((n, f"bad {algorithm} value (expected {2 * width} hex digits)"))
        else:
            col = batch.columns.get(algorithm)
            if col is None:
                col = batch.columns[algorithm] = Column()
            col.values += raw
            col.label_ids.append(table.id_of(normalise_labels(entry.labels)))
            col.added.append(0)
        if batch.lines >= batch_size:
            yield batch
            batch = ParsedBatch(labels=table)
    yield batch


# --- the index -------------------------------------------------------------------------------


@dataclass
class IndexArrays:
    """Everything `load_index` read, in the shape `HashIndex.from_arrays` takes."""

    version: int
    lists: tuple[str, ...]
    label_sets: tuple[tuple[str, ...], ...]
    # algorithm -> (values (n, width) uint8, list ids, label-set ids)
    columns: dict[str, tuple[U8, npt.NDArray[np.uint32], U32]]


def read_index_arrays(reader: StoreReader) -> IndexArrays:
    names = tuple(sorted(reader.metas))
    global_labels = LabelTable()
    remaps = {
        name: np.asarray([global_labels.id_of(s) for s in reader.metas[name].labels], np.uint32)
        for name in names
    }
    columns: dict[str, tuple[U8, npt.NDArray[np.uint32], U32]] = {}
    for algorithm in ALGORITHMS:
        usable = [n for n in names if reader.metas[n].current(algorithm)]
        total = sum(reader.metas[n].counts.get(algorithm, 0) for n in usable)
        width = ALGORITHM_BYTES[algorithm]
        values = np.empty((total, width), np.uint8)
        list_ids = np.empty(total, np.uint32)
        label_ids = np.empty(total, np.uint32)
        pos = 0
        for list_id, name in enumerate(names):
            meta = reader.metas[name]
            n = meta.counts.get(algorithm, 0)
            if not n:
                continue
            if not meta.current(algorithm):
                log.warning(
                    "list entries of an older hash format left out of the index",
                    extra={"fields": {"list": name, "algorithm": algorithm, "entries": n,
                                      "width": meta.width(algorithm)}},
                )
                continue
            read_column(reader, meta, algorithm, "v", values[pos:pos + n])
            stored = np.empty(n, meta.label_dtype)
            read_column(reader, meta, algorithm, "l", stored)
            label_ids[pos:pos + n] = remaps[name][stored]
            list_ids[pos:pos + n] = list_id
            pos += n
        columns[algorithm] = (values, list_ids, label_ids)
    return IndexArrays(reader.version, names, tuple(global_labels.sets), columns)


def build_index(arrays: IndexArrays) -> HashIndex:
    """The in-memory index from the arrays, with no Python object per entry."""
    from mailfilter.matching.index import GRIDHIST, PDQ, VPDQ, EntryArrays, HashIndex

    def columns(algorithm: str) -> EntryArrays | None:
        values, list_ids, label_ids = arrays.columns[algorithm]
        return EntryArrays(values, list_ids, label_ids) if values.shape[0] else None

    pdq = columns(PDQ)
    exact = {s.name: c for s in signals.EXACT if (c := columns(s.name)) is not None}
    return HashIndex.from_arrays(
        version=arrays.version, lists=arrays.lists, label_sets=arrays.label_sets,
        pdq=None if pdq is None else pdq.values,
        pdq_list=None if pdq is None else pdq.list_ids,
        pdq_labels=None if pdq is None else pdq.label_ids,
        exact=exact, gridhist=columns(GRIDHIST), vpdq=columns(VPDQ),
    )


# --- the shared implementation ---------------------------------------------------------------


class BaseHashStore(abc.ABC):
    """`HashStore` on top of three backend primitives: a consistent reader, an atomic
    writer of one list, and change notification."""

    backend: str = "?"
    location: str = ""

    # -- backend primitives --
    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[StoreReader]:
        """A consistent snapshot of the whole store while the context is open."""

    @abc.abstractmethod
    def _write_list(self, name: str,
                    compute: Callable[[ListMeta | None, StoreReader | None], ListData | None],
                    source: str, merge: bool) -> tuple[int, ListMeta | None]:
        """Atomically replace list `name` by what `compute(old_meta, reader)` returns
        (None: delete the list; `reader` reads the old list's columns from the snapshot
        the write is based on). When a concurrent writer got in first, a `merge` is
        computed again from the new state; a replacement is committed as computed.
        Exceptions from `compute` abort the write. Returns the new version and meta."""

    @abc.abstractmethod
    def _errors(self) -> contextlib.AbstractContextManager[None]:
        """Turn the backend's own errors into TemporaryFailure."""

    @abc.abstractmethod
    def version(self) -> int: ...

    @abc.abstractmethod
    def wait_for_change(self, timeout: float) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def raise_version(self, seen: int) -> int:
        """See `HashStore.raise_version`; a store that never loses a commit (the local
        one) has nothing to repair."""
        return self.version()

    # -- the interface --
    def import_list(self, name: str, source: str, batches: Iterable[ParsedBatch], *,
                    replace: bool = False,
                    progress_cb: ProgressCallback | None = None) -> ImportReport:
        check_list_name(name)
        started = time.monotonic()
        collector = _Collector(int(time.time()))
        tally = collector.tally

        def progress(phase: str) -> None:
            if progress_cb is not None:
                progress_cb(ImportProgress(phase, tally.lines, tally.loaded,
                                           tally.skipped_total, time.monotonic() - started))

        for batch in batches:
            collector.feed(batch)
            progress("parse")
        new, tombs = collector.result()
        n_tombs = sum(len(t) for t in tombs.values())
        report_args: dict[str, Any] = dict(
            list_name=name, source=source, replace=replace, lines=tally.lines,
            loaded=dict(tally.entries), skipped=dict(tally.skipped),
            examples=tuple(tally.examples), degenerate=tally.degenerate, tombstones=n_tombs,
        )
        nothing = None
        if not new.counts() and (replace or not n_tombs):
            nothing = "nothing could be loaded" if tally.lines else "the input is empty"
        outcome = CombineStats()

        def compute(old_meta: ListMeta | None, reader: StoreReader | None) -> ListData:
            nonlocal outcome
            progress("merge")
            old = None
            if not replace and old_meta is not None and reader is not None:
                old = read_list(reader, old_meta)
            data, outcome = combine([new] if old is None else [old, new], tombs)
            if old_meta is not None and reader is not None and data.counts() == old_meta.counts:
                if old is None:
                    old = read_list(reader, old_meta, added=False)
                if same_entries(old, data):
                    raise _Unchanged
            progress("write")
            return data

        meta: ListMeta | None = None
        version = 0
        if nothing is None:
            try:
                with self._errors():
                    version, meta = self._write_list(name, compute, source, merge=not replace)
            except _Unchanged:
                nothing = "unchanged: the list already holds exactly these entries"
        if nothing is not None:
            with self._errors():
                meta = self._metas().get(name)
                version = self.version()
        progress("done")
        return ImportReport(
            committed=nothing is None, version=version, removed=outcome.removed,
            duplicates=outcome.duplicates, totals=dict(meta.counts) if meta else {},
            seconds=time.monotonic() - started, not_committed=nothing, **report_args,
        )

    def add(self, name: str, entries: Iterable[EntryLike]) -> ImportReport:
        return self.import_list(name, "added", batches_from_entries(entries), replace=False)

    def remove(self, name: str, entries: Iterable[tuple[str, str]] | None = None) -> int:
        check_list_name(name)
        with self._errors():
            current = self._metas().get(name)
            if current is None:
                raise UnknownList(f"no list named {name!r}")
            if entries is None:
                removed = sum(current.counts.values())

                def drop(old: ListMeta | None, reader: StoreReader | None) -> None:
                    nonlocal removed
                    removed = sum(old.counts.values()) if old else 0
                    return None

                self._write_list(name, drop, current.source, merge=False)
                return removed
            tombs: dict[str, bytearray] = {}
            for algorithm, value in entries:
                width = ALGORITHM_BYTES.get(algorithm)
                raw = bytes.fromhex(value)
                if width is None or len(raw) != width:
                    raise ValueError(f"bad {algorithm} value {value!r}")
                tombs.setdefault(algorithm, bytearray()).extend(raw)
            arrays = {a: np.frombuffer(b, np.uint8).reshape(-1, ALGORITHM_BYTES[a])
                      for a, b in tombs.items()}
            gone = 0

            def minus(old: ListMeta | None, reader: StoreReader | None) -> ListData:
                nonlocal gone
                if old is None or reader is None:
                    raise UnknownList(f"no list named {name!r}")
                data, cstats = combine([read_list(reader, old)], arrays)
                gone = cstats.removed
                return data

            self._write_list(name, minus, current.source, merge=True)
            return gone

    def _retrying(self, fn: Callable[[StoreReader], T]) -> T:
        """Run `fn` on a fresh snapshot, again if the snapshot changed under it."""
        for attempt in range(SNAPSHOT_ATTEMPTS):
            try:
                with self._errors(), self._reading() as reader:
                    return fn(reader)
            except SnapshotChanged:
                if attempt == SNAPSHOT_ATTEMPTS - 1:
                    raise TemporaryFailure(
                        "store-busy", "the store kept changing while it was being read"
                    ) from None
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _metas(self) -> dict[str, ListMeta]:
        return self._retrying(lambda reader: dict(reader.metas))

    def lists(self) -> tuple[ListInfo, ...]:
        with self._errors():
            metas = self._metas()
        return tuple(metas[n].info() for n in sorted(metas))

    def stats(self) -> StoreStats:
        def read(reader: StoreReader) -> StoreStats:
            infos = tuple(reader.metas[n].info() for n in sorted(reader.metas))
            return StoreStats(self.backend, self.location, reader.version, infos)

        return self._retrying(read)

    def export(self, name: str | None = None) -> Iterator[ExportedEntry]:
        try:
            with self._errors(), self._reading() as reader:
                if name is not None and name not in reader.metas:
                    raise UnknownList(f"no list named {name!r}")
                names = [name] if name is not None else sorted(reader.metas)
                for list_name in names:
                    meta = reader.metas[list_name]
                    for algorithm in sorted(meta.counts):
                        yield from _export_column(reader, meta, algorithm)
        except SnapshotChanged:
            raise TemporaryFailure(
                "store-busy", "a list was replaced while it was being exported; run again"
            ) from None

    def load_index(self) -> HashIndex:
        return build_index(self._retrying(read_index_arrays))

    def __enter__(self) -> BaseHashStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _export_column(reader: StoreReader, meta: ListMeta, algorithm: str
                   ) -> Iterator[ExportedEntry]:
    width = meta.width(algorithm)
    value_chunks = reader.chunks(meta, algorithm, "v")
    label_chunks = reader.chunks(meta, algorithm, "l")
    added_chunks = reader.chunks(meta, algorithm, "a")
    for v, lab, a in zip(value_chunks, label_chunks, added_chunks, strict=True):
        values = np.frombuffer(v, np.uint8).reshape(-1, width)
        label_ids = np.frombuffer(lab, meta.label_dtype)
        added = np.frombuffer(a, "<u4")
        for i in range(values.shape[0]):
            yield ExportedEntry(meta.name, algorithm, values[i].tobytes().hex(),
                                meta.labels[int(label_ids[i])], int(added[i]))
