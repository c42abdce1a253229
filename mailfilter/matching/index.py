"""The in-memory hash index: what every attachment's fingerprints are matched against.

An index is immutable once built; a reload builds a new one and swaps the reference.
Lists hold millions of entries, so nothing here keeps a Python object per entry: every
algorithm is a few numpy arrays, and an entry's lists and labels are a small integer
(a *group*: the set of ``(list, labels)`` an identical hash value belongs to).

Layout
------
Groups
    ``(list id, label-set id)`` pairs are numbered; each distinct set of pairs that some
    hash value carries is a group. Entries store only their group id (uint8 when there
    are at most 256 groups). The same value in several lists is stored once and reported
    once per list; the same value twice in one list collapses (label sets are merged).
Exact hashes (md5, sha1, sha256)
    One sorted ``S{width}`` array of raw digest bytes per algorithm and a group id per
    value; a lookup is two binary searches. 16/20/32 bytes + 1 per entry.
Gridhist
    One ``(N, L)`` uint8 matrix per vector length ``L`` (vectors of another length are not
    comparable), searched by brute force in float32, chunked. The squared distance is
    ``|x|^2 + |q|^2 - 2 x.q``; every term is an integer below 2**24 for ``L < 258`` (bytes),
    so float32 arithmetic is exact here and no match near the radius is lost to rounding.
PDQ
    ``words``: the unique 256-bit hashes as an ``(N, 4)`` uint64 array (the hex's bytes,
    viewed), in table-0 order. Searched either by brute force (XOR + popcount) or by
    multi-index hashing (Norouzi, Punjani, Fleet: "Fast search in Hamming space with
    multi-index hashing", CVPR 2012) with the general pigeonhole bound of Qin et al.
    ("GPH: similarity search in Hamming space", ICDE 2018):

    * ``m`` disjoint chunks of the 256 bits, ``b_i`` bits each; table ``i`` lists the rows
      by the value of chunk ``i``. Chunk 0 is the top of word 0 and ``words`` is sorted by
      it (then by a mix of all bits, which also puts identical hashes side by side for
      collapsing duplicates), so table 0 needs no id array.
    * Per table, bucket offsets (``2**b_i + 1``) in two levels: a uint32 base every
      ``2**s`` buckets plus a uint8 offset from it (``s`` as large as lets every block of
      buckets hold <= 255 rows: s = 0 for a crowded table). Tables 1..m-1 hold the row ids
      in bucket order as 3-byte records (uint32 above 16.7M rows).
    * If a row is within Hamming distance ``r`` of a query and ``d_i`` is their distance on
      chunk ``i``, then ``sum(d_i) <= r``. For any ``t_i`` with ``sum(t_i) >= r - m + 1``
      (``t_i = -1`` skips table i) some chunk has ``d_i <= t_i``, or else
      ``sum(d_i) >= sum(t_i + 1) > r``. So probing in each table every bucket whose key is
      within ``t_i`` bits of the query's chunk finds every row within ``r``: nothing is
      missed whatever ``r``; candidates are verified on all 256 bits (words 0 and 1 first).
      The ``t_i`` are spent greedily where a cost model says probing grows least.
    * Default shape for N hashes: 11 tables of ``b = log2(N) - 1`` bits (~2 rows a
      bucket), probed with ``t = 2, ..., 2, 1`` at r = 31: at 10M, 11 x 22 bits, 67.9 bytes
      per hash (32 hash, 1 group id, 30 ids, 4.9 offsets), p99 ~3.4 ms for 8 queries.
      ``pdq_tables=10`` gives 23, 23, 21 x 8 bits (``t = 3, 3, 2, ..., 2``): 63.6 bytes per
      hash but about twice the probes and candidates (p99 ~9 ms). Random access to memory
      (bucket offsets, id runs, candidate rows) is what a query costs; with 11 tables a
      set of 8 queries at 10M touches ~20K buckets and ~65K candidates.
      ``bench/index_speed.py`` measures both shapes.
    * All queries (the 8 dihedral hashes, trimmed variants) are probed in one vectorised
      pass; the cost model picks brute force instead when that is cheaper (lists below
      ~100K hashes, where no tables are built either, and large radii).
vPDQ
    Listed videos as bags of frame hashes: one row per distinct frame of a listed video
    (quality >= 50, as the lists keep them), each pointing to its video. The rows get
    multi-index tables of the same shape as PDQ's (from ``MIH_MIN_ENTRIES`` frames) and are
    probed in the same way, all of a video's query frames in one pass; the matched (query
    frame, row) pairs are then counted per candidate video: the share of its frames matched
    and the share of the attachment's frames that match it. 10,000 videos of 60 frames:
    600K rows, ~71 bytes a frame with the tables (``bench/index_speed.py --vpdq``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from mailfilter import signals
from mailfilter.model import Match
from mailfilter.settings import MatchSettings

__all__ = [
    "ALGORITHMS",
    "EXACT_ALGORITHMS",
    "EntryArrays",
    "HashIndex",
    "IndexEntry",
    "PdqMethod",
]

ALGORITHMS = signals.NAMES
EXACT_ALGORITHMS: Mapping[str, int] = {s.name: s.width for s in signals.EXACT}
"""Exact algorithms and their digest sizes in bytes."""

# The signals held by the index's Hamming (multi-index) and vector (brute force) structures.
PDQ = next(signals.of_kind(signals.IndexKind.HAMMING)).name
GRIDHIST = next(signals.of_kind(signals.IndexKind.VECTOR)).name
VPDQ = next(signals.of_kind(signals.IndexKind.FRAMES)).name
PDQ_BYTES = signals.WIDTHS[PDQ]
VIDEO_ID_BYTES = signals.WIDTHS[VPDQ] - PDQ_BYTES

PdqMethod: TypeAlias = Literal["auto", "brute", "mih"]

MIH_MIN_ENTRIES = 1 << 17
"""With ``pdq_mih=None`` the multi-index tables are built for at least this many hashes."""

# Cost model (nanoseconds, measured on one core with numpy 2.x; only ratios matter).
_NS_PER_PROBE = 25.0
_NS_PER_CANDIDATE = 22.0
_NS_PER_BRUTE_ROW = 2.2
_NS_PER_QUERY_OVERHEAD = 25_000.0
_MAX_PROBES_PER_QUERY = 1 << 18

_ROWS_24BIT = 1 << 24
"""Up to this many PDQ rows, row ids fit 24 bits: 3-byte table ids, and a packed sort."""

_BRUTE_CHUNK = 1 << 16
_GRID_CHUNK = 1 << 14

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
IntArray = npt.NDArray[np.integer[Any]]
AnyArray = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    list_name: str
    algorithm: str  # a signal type's name (mailfilter.signals)
    value: str  # lowercase hex
    labels: tuple[str, ...] = ()


class EntryArrays(NamedTuple):
    """Entries of one algorithm as columns: the store's cold-load format.

    ``values`` is uint8 ``(N, width)``: the raw bytes the hex spells; ``list_ids`` index the
    ``lists`` and ``label_ids`` the ``label_sets`` given to :meth:`HashIndex.from_arrays`.
    """

    values: npt.NDArray[np.uint8]
    list_ids: IntArray
    label_ids: IntArray


# --------------------------------------------------------------------------- groups


Group = tuple[tuple[int, tuple[str, ...]], ...]
"""``((list id, labels), ...)`` sorted by list id, one pair per list."""


class _GroupRegistry:
    """Numbers the distinct sets of ``(list, label set)`` pairs that hash values carry."""

    def __init__(self, label_sets: Sequence[tuple[str, ...]]) -> None:
        self._label_sets = label_sets
        self._n_labels = max(len(label_sets), 1)
        self._ids: dict[tuple[int, ...], int] = {}
        self.groups: list[Group] = []

    def _register(self, pair_keys: tuple[int, ...]) -> int:
        gid = self._ids.get(pair_keys)
        if gid is not None:
            return gid
        by_list: dict[int, list[str]] = {}
        for key in pair_keys:
            list_id, label_id = divmod(key, self._n_labels)
            labels = by_list.setdefault(list_id, [])
            for label in self._label_sets[label_id] if self._label_sets else ():
                if label not in labels:
                    labels.append(label)
        merged = len(by_list) < len(pair_keys)
        group: Group = tuple(
            (list_id, tuple(sorted(labels)) if merged else tuple(labels))
            for list_id, labels in sorted(by_list.items())
        )
        gid = len(self.groups)
        self.groups.append(group)
        self._ids[pair_keys] = gid
        return gid

    def pair_keys(self, list_ids: IntArray, label_ids: IntArray, n_lists: int) -> I64:
        li = np.asarray(list_ids).astype(np.int64, copy=False).reshape(-1)
        la = np.asarray(label_ids).astype(np.int64, copy=False).reshape(-1)
        if li.shape != la.shape:
            raise ValueError("list ids and label-set ids differ in length")
        if li.size and (li.min() < 0 or li.max() >= n_lists):
            raise ValueError("list id out of range")
        if la.size and (la.min() < 0 or la.max() >= max(len(self._label_sets), 1)):
            raise ValueError("label-set id out of range")
        return li * self._n_labels + la

    def single_gids(self, pairs: I64) -> I64:
        """The group of each row that belongs to one (list, labels) pair."""
        return self._single_gids(pairs)

    def collapse(self, new_value: npt.NDArray[np.bool_], pairs: I64) -> tuple[I64, I64]:
        """Rows sorted by value (and by pair within a value) -> (first row per value, gid).

        ``new_value[i]`` is true where row ``i`` starts a new hash value.
        """
        n = pairs.shape[0]
        first_rows = np.flatnonzero(new_value)
        if first_rows.size == n:  # every value once: the common case, and fast
            return first_rows, self._single_gids(pairs)
        keep = new_value.copy()
        keep[1:] |= pairs[1:] != pairs[:-1]
        kept = np.flatnonzero(keep)
        value_of_kept = np.cumsum(new_value, dtype=np.int64)[kept] - 1
        counts = np.bincount(value_of_kept, minlength=first_rows.size)
        kept_pairs = pairs[kept]
        kstart = np.cumsum(counts) - counts
        gids = np.empty(first_rows.size, np.int64)
        single = np.flatnonzero(counts == 1)
        gids[single] = self._single_gids(kept_pairs[kstart[single]])
        for k in np.unique(counts[counts > 1]).tolist():
            vals = np.flatnonzero(counts == k)
            mat = kept_pairs[kstart[vals][:, None] + np.arange(k)]
            uniq_rows, inv = np.unique(mat, axis=0, return_inverse=True)
            gmap = np.array(
                [self._register(tuple(int(p) for p in row)) for row in uniq_rows], np.int64
            )
            gids[vals] = gmap[inv.reshape(-1)]
        return first_rows, gids

    def _single_gids(self, pairs: I64) -> I64:
        """Group id of each value that is in exactly one (list, label set)."""
        if pairs.size == 0:
            return np.zeros(0, np.int64)
        top = int(pairs.max())
        if top < 1 << 22:
            present = np.flatnonzero(np.bincount(pairs, minlength=top + 1))
            lut = np.zeros(top + 1, np.int64)
            lut[present] = [self._register((int(p),)) for p in present.tolist()]
            return np.take(lut, pairs)
        uniq, inverse = np.unique(pairs, return_inverse=True)
        gmap = np.array([self._register((int(p),)) for p in uniq.tolist()], dtype=np.int64)
        return np.take(gmap, inverse.reshape(-1))


def _gid_dtype(n_groups: int) -> type[np.unsignedinteger[Any]]:
    if n_groups <= 1 << 8:
        return np.uint8
    if n_groups <= 1 << 16:
        return np.uint16
    return np.uint32


# --------------------------------------------------------------------------- helpers


def _hex_bytes(value: str, size: int | None, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (ValueError, TypeError):
        raise ValueError(f"{what}: not a hex string: {value!r}") from None
    if size is not None and len(raw) != size:
        raise ValueError(f"{what}: expected {2 * size} hex digits, got {len(value)}")
    if not raw:
        raise ValueError(f"{what}: empty hash")
    return raw


def _sorted_bytes_rows(values: U8) -> tuple[AnyArray, npt.NDArray[np.bool_], I64]:
    """Rows of an (N, W) uint8 array as a sorted ``S{W}`` array, with run starts and order."""
    n, width = values.shape
    flat = np.ascontiguousarray(values).view(f"S{width}").reshape(n)
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    new_value = np.ones(n, dtype=bool)
    if n > 1:
        raw = ordered.view(np.uint8).reshape(n, width)
        new_value[1:] = (raw[1:] != raw[:-1]).any(axis=1)
    return ordered, new_value, order.astype(np.int64, copy=False)


def _pairs_within_runs(new_value: npt.NDArray[np.bool_], pairs: I64) -> I64:
    """Sort the pairs inside each run of equal values (rows already sorted by value)."""
    n = pairs.shape[0]
    if n < 2:
        return pairs
    in_run = ~new_value
    in_run[:-1] |= ~new_value[1:]
    idx = np.flatnonzero(in_run)
    if idx.size == 0:
        return pairs
    run_id = np.cumsum(new_value)[idx]
    out = pairs.copy()
    out[idx] = pairs[idx][np.lexsort((pairs[idx], run_id))]
    return out


def _stable_order(keys: I64, bits: int) -> I64:
    """argsort(keys, kind="stable") for keys < 2**bits, as at most two 16-bit radix passes."""
    if bits <= 16:
        return np.argsort(keys.astype(np.uint16), kind="stable").astype(np.int64, copy=False)
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = (keys >> 16).astype(np.uint8 if bits <= 24 else np.uint16)
    order2 = np.argsort(np.take(high, order), kind="stable")
    return np.take(order, order2).astype(np.int64, copy=False)


def _popcount_rows(rows: U64, query: U64) -> U16:
    """Hamming distance of every (K, 4) uint64 row to one (4,) query."""
    c = np.bitwise_count(rows ^ query)
    d: U16 = c[:, 0].astype(np.uint16)
    d += c[:, 1]
    d += c[:, 2]
    d += c[:, 3]
    return d


@functools.lru_cache(maxsize=32)
def _masks_by_weight(bits: int) -> tuple[U32, tuple[int, ...]]:
    """All ``bits``-bit masks sorted by popcount, and how many have popcount <= t, per t."""
    if bits <= 20:
        all_masks = np.arange(1 << bits, dtype=np.uint32)
        weights = np.bitwise_count(all_masks)
        order = np.argsort(weights, kind="stable")
        masks = all_masks[order]
        counts = np.cumsum(np.bincount(weights, minlength=bits + 1))
        return masks, tuple(int(c) for c in counts)
    # Wider: enumerate by combinations up to a weight whose ball is still modest.
    out: list[U32] = [np.zeros(1, np.uint32)]
    counts_l = [1]
    total = 1
    for w in range(1, bits + 1):
        size = math.comb(bits, w)
        if total + size > _MAX_PROBES_PER_QUERY:
            break
        prev = out[-1]
        # Extend each mask of weight w-1 by one bit above its highest set bit.
        if w == 1:
            level = (np.uint32(1) << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
        else:
            high = np.where(prev > 0, np.floor(np.log2(prev.astype(np.float64))), -1)
            parts = [(prev[high < b] | np.uint32(1 << b)).astype(np.uint32) for b in range(bits)]
            level = np.concatenate(parts)
        out.append(level)
        total += size
        counts_l.append(total)
    return np.concatenate(out), tuple(counts_l)


def _ball_size(bits: int, radius: int) -> int:
    if radius < 0:
        return 0
    return sum(math.comb(bits, w) for w in range(min(radius, bits) + 1))


def _chunk_keys(words: U64, start: int, bits: int) -> I64:
    """Bits ``[start, start + bits)`` of each 256-bit row, wrapping from bit 255 to bit 0
    (word j holds bits 64j..64j+63)."""
    j, off = divmod(start, 64)
    mask = np.uint64((1 << bits) - 1)
    col = words[:, j] >> np.uint64(off)
    if off + bits > 64:
        col = col | (words[:, (j + 1) % 4] << np.uint64(64 - off))
    return (col & mask).astype(np.int64)


def _place_chunks(widths: Sequence[int]) -> tuple[int, ...]:
    """Disjoint chunk positions: chunk 0 is the top of word 0 (the rows' sort key), the
    others follow it upwards, wrapping round from bit 255 to bit 0."""
    if not widths:
        raise ValueError("at least one table")
    if any(not 1 <= w <= 32 for w in widths):
        raise ValueError(f"chunk widths {list(widths)}: each must be 1..32 bits")
    if sum(widths) > 256:
        raise ValueError(f"chunks of {list(widths)} bits do not fit in 256 bits")
    first = 64 - widths[0]
    return tuple((first + sum(widths[:i])) % 256 for i in range(len(widths)))


DESIGN_RADIUS = 31
"""The radius the default table shapes are tuned for (``[match] pdq_max_distance``)."""

DEFAULT_TABLES = 11


def _default_widths(n: int, tables: int | None = None) -> tuple[int, ...]:
    """Chunk widths for ``n`` hashes in ``tables`` tables (default 11).

    Base width ``b = log2(n) - 2`` (~4 rows a bucket). At ``DESIGN_RADIUS`` some tables get
    one bit more probe radius than the others: where those are many (10 of 11 at r = 31)
    every table is 1 bit wider; where they are few (2 of 10) just those are 2 bits wider,
    which cuts candidates where the probe balls are largest for little memory."""
    m = tables or DEFAULT_TABLES
    if m < 1:
        raise ValueError("at least one table")
    b = max(8, min(24, round(math.log2(max(n, 2))) - 2))
    wide = (DESIGN_RADIUS - m + 1) % m
    widths = [b + 2] * wide + [b] * (m - wide) if 2 * wide <= m else [b + 1] * m
    while sum(widths) > 256:  # many tables: narrow the widest until they fit
        widths[widths.index(max(widths))] -= 1
    return tuple(sorted(widths, reverse=True))


class _Plan(NamedTuple):
    """Probe template for one radius: one column per probe, table-0 probes first."""

    thresholds: tuple[int, ...]
    n0: int  # probes into table 0 (implicit ids)
    col: I64  # which table's query chunk
    masks: I64
    shift: I64
    bbase: I64
    rbase: I64
    vbase: I64  # table i >= 1 ids live at (i-1)*n in ids


def _expand(starts: I64, lens: I64) -> I64:
    """Concatenation of ``range(s, s + l)`` for every (s, l)."""
    total = int(lens.sum())
    cum = np.cumsum(lens)
    out = np.repeat(starts - cum + lens, lens)
    out += np.arange(total, dtype=np.int64)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class _Mih:
    """Multi-index hashing tables over ``_Pdq.words`` (see the module docstring)."""

    n: int
    bits: tuple[int, ...]
    starts: tuple[int, ...]
    shifts: tuple[int, ...]  # offset(key) = base[base_at + key >> shift] + rel[rel_at + key]
    base: U32
    base_at: tuple[int, ...]
    rel: U8
    rel_at: tuple[int, ...]
    ids: AnyArray  # tables 1..m-1: row ids in bucket order; 3-byte "S3" records, or uint32
    plans: dict[int, _Plan | None] = field(default_factory=dict)
    choices: dict[int, bool] = field(default_factory=dict)

    @property
    def tables(self) -> int:
        return len(self.bits)

    @property
    def nbytes(self) -> int:
        return int(self.base.nbytes + self.rel.nbytes + self.ids.nbytes)

    @classmethod
    def build(cls, words: U64, widths: Sequence[int], threads: int = 1) -> _Mih:
        n = words.shape[0]
        widths = tuple(int(w) for w in widths)
        starts = _place_chunks(widths)
        m = len(widths)
        if n <= _ROWS_24BIT:  # 3 bytes per id, little-endian, gathered as "S3" records
            ids: AnyArray = np.empty((m - 1) * n, dtype="S3")
            id_bytes = ids.view(np.uint8).reshape(-1, 3)
        else:
            ids = np.empty((m - 1) * n, dtype=np.uint32)

        def table(i: int) -> I64:
            bits = widths[i]
            keys = _chunk_keys(words, starts[i], bits)
            off = np.zeros((1 << bits) + 1, dtype=np.int64)
            np.cumsum(np.bincount(keys, minlength=1 << bits), out=off[1:])
            if i > 0:  # words are sorted by chunk 0: table 0 needs no ids
                order = _stable_order(keys, bits)
                del keys
                seg = slice((i - 1) * n, i * n)
                if ids.dtype == np.uint32:
                    ids[seg] = order
                else:
                    id_bytes[seg] = order.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
            return off

        if threads > 1 and m > 1 and n >= 1 << 20:  # numpy sorts release the GIL
            with ThreadPoolExecutor(max_workers=threads) as pool:
                offsets = list(pool.map(table, range(m)))
        else:
            offsets = [table(i) for i in range(m)]
        shifts, base, base_at, rel, rel_at = _two_level(offsets)
        return cls(n, widths, starts, shifts, base, base_at, rel, rel_at, ids)

    def _row_ids(self, pos: I64) -> I64:
        if self.ids.dtype == np.uint32:
            return np.take(self.ids, pos).astype(np.int64)
        raw = np.take(self.ids, pos).view(np.uint8).reshape(-1, 3)
        out = raw[:, 2].astype(np.int64)
        out <<= 8
        out |= raw[:, 1]
        out <<= 8
        out |= raw[:, 0]
        return out

    def _table_cost(self, i: int, t: int) -> float:
        return _ball_size(self.bits[i], t) * (
            _NS_PER_PROBE + _NS_PER_CANDIDATE * self.n / (1 << self.bits[i])
        )

    def thresholds(self, radius: int) -> tuple[int, ...]:
        """Per-table probe radii with ``sum(t_i) >= radius - m + 1`` (-1 skips a table),
        spent greedily where the estimated cost grows least (the costs are convex in t)."""
        m = self.tables
        t = [-1] * m
        need = radius + 1  # sum(t) must rise from -m to radius - m + 1
        for _ in range(need):
            best = min(
                range(m), key=lambda i: self._table_cost(i, t[i] + 1) - self._table_cost(i, t[i])
            )
            t[best] += 1
        return tuple(t)

    def cost(self, radius: int) -> tuple[float, int]:
        """Estimated ns and probes per query at this radius."""
        t = self.thresholds(radius)
        probes = sum(_ball_size(b, ti) for b, ti in zip(self.bits, t, strict=True))
        return sum(self._table_cost(i, ti) for i, ti in enumerate(t)), probes

    def worth(self, radius: int) -> bool:
        """Whether the cost model expects the tables to beat brute force at this radius."""
        if radius not in self.choices:
            cost, probes = self.cost(radius)
            self.choices[radius] = (
                probes <= _MAX_PROBES_PER_QUERY
                and cost + _NS_PER_QUERY_OVERHEAD < self.n * _NS_PER_BRUTE_ROW
            )
        return self.choices[radius]

    def plan(self, radius: int) -> _Plan | None:
        """The probe template for this radius (None: too many probes, use brute force)."""
        if radius in self.plans:
            return self.plans[radius]
        thresholds = self.thresholds(radius)
        parts: list[tuple[I64, ...]] = []
        total = 0
        plan: _Plan | None = None
        for i, (bits, t) in enumerate(zip(self.bits, thresholds, strict=True)):
            if t < 0:
                continue
            masks, counts = _masks_by_weight(bits)
            if t >= len(counts) and len(counts) <= bits:
                break  # ball not enumerated: too large
            v = counts[min(t, len(counts) - 1)]
            total += v
            if total > _MAX_PROBES_PER_QUERY:
                break
            one = np.ones(v, dtype=np.int64)
            parts.append(
                (
                    one * i,
                    np.sort(masks[:v]).astype(np.int64),  # neighbours share cache lines
                    one * self.shifts[i],
                    one * self.base_at[i],
                    one * self.rel_at[i],
                    one * (max(i - 1, 0) * self.n),
                )
            )
        else:
            if not parts:  # cannot happen: sum(t) >= radius - m + 1 > -m
                raise AssertionError("no table probed")
            n0 = parts[0][0].shape[0] if thresholds[0] >= 0 else 0
            cols = [np.concatenate([p[k] for p in parts]) for k in range(6)]
            plan = _Plan(thresholds, n0, *cols)
        self.plans[radius] = plan
        return plan

    def search(self, queries: U64, radius: int, words: U64) -> tuple[I64, I64, I64] | None:
        """(row ids, distances, query index) of the rows within ``radius`` of each query
        (a row may repeat for one query), or None if not plannable."""
        plan = self.plan(radius)
        if plan is None:
            return None
        nq = queries.shape[0]
        qk = np.stack(
            [_chunk_keys(queries, s, b) for s, b in zip(self.starts, self.bits, strict=True)],
            axis=1,
        )
        keys = qk[:, plan.col] ^ plan.masks  # (nq, P), query-major
        blk = keys >> plan.shift
        blk += plan.bbase
        start = np.take(self.base, blk).astype(np.int64)
        blk = (keys + 1) >> plan.shift
        blk += plan.bbase
        end = np.take(self.base, blk).astype(np.int64)
        keys += plan.rbase
        start += np.take(self.rel, keys)
        keys += 1
        end += np.take(self.rel, keys)
        lens = end - start
        groups: list[tuple[I64, I64]] = []
        n0 = plan.n0
        if n0:
            l0 = lens[:, :n0]
            groups.append((_expand(start[:, :n0].ravel(), l0.ravel()), _bounds(l0)))
        if n0 < lens.shape[1]:
            l1 = lens[:, n0:]
            pos = _expand((start[:, n0:] + plan.vbase[n0:]).ravel(), l1.ravel())
            ids = self._row_ids(pos)
            groups.append((ids, _bounds(l1)))
        return _verify(words, groups, queries, radius, nq)


def _bounds(lens: I64) -> I64:
    """Where each query's candidates begin in the query-major candidate list."""
    out = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens.sum(axis=1), out=out[1:])
    return out


def _two_level(
    offsets: Sequence[I64],
) -> tuple[tuple[int, ...], U32, tuple[int, ...], U8, tuple[int, ...]]:
    """Offsets as uint32 bases every 2**s buckets plus uint8 offsets from them.

    Per table, s is the largest (up to 16) for which no block of 2**s buckets holds more
    than 255 entries; a crowded table gets a small s (s = 0: plain uint32 offsets)."""
    shifts: list[int] = []
    bases: list[U32] = []
    rels: list[U8] = []
    for off in offsets:
        nbits = (off.shape[0] - 1).bit_length() - 1
        s = min(nbits, 16)
        while s > 0 and int(np.diff(off[:: 1 << s]).max(initial=0)) > 0xFF:
            s -= 1
        base = off[:: 1 << s]
        shifts.append(s)
        bases.append(base.astype(np.uint32))
        rels.append((off - np.repeat(base, 1 << s)[: off.shape[0]]).astype(np.uint8))
    base_at = tuple(int(x) for x in np.cumsum([0] + [len(b) for b in bases[:-1]]))
    rel_at = tuple(int(x) for x in np.cumsum([0] + [len(r) for r in rels[:-1]]))
    return tuple(shifts), np.concatenate(bases), base_at, np.concatenate(rels), rel_at


@dataclass(frozen=True, slots=True)
class _Pdq:
    words: U64  # (N, 4), sorted by chunk 0 when there are tables
    gids: AnyArray  # (N,)
    mih: _Mih | None

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes + self.gids.nbytes + (self.mih.nbytes if self.mih else 0))


@dataclass(frozen=True, slots=True, eq=False)
class _Frames:
    """Listed videos as bags of frame hashes (vPDQ): one row per distinct frame of a video
    in a list, pointing to its video (`video` numbers the (video, list group) pairs;
    `frames` counts each one's rows). The rows are searched as the PDQ image hashes are:
    through multi-index tables of the same kind over `words` (then sorted by chunk 0), or
    by brute force where the cost model expects that to be cheaper (few rows, large radii);
    brute force is also the tests' oracle. Per candidate video, `HashIndex.search_vpdq`
    then counts the share of its frames matched and of the attachment's frames matching it.
    """

    words: U64  # (N, 4), in table-0 order when there are tables
    video: U32  # (N,): index into the per-video arrays
    video_ids: AnyArray  # (V,) "S8": the listed video's id (from its frame hashes)
    gids: AnyArray  # (V,): the video's group (lists and labels)
    frames: I64  # (V,): frames per video
    mih: _Mih | None

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes + self.video.nbytes + self.video_ids.nbytes
                   + self.gids.nbytes + self.frames.nbytes
                   + (self.mih.nbytes if self.mih else 0))

    @classmethod
    def build(cls, rows: U8, pairs: I64, registry: _GroupRegistry,
              widths: Sequence[int] = ()) -> _Frames:
        """`widths`: the multi-index chunk widths (none: brute force only)."""
        n = rows.shape[0]
        words = np.ascontiguousarray(rows[:, :PDQ_BYTES]).view(np.uint64).reshape(n, 4)
        ids = np.ascontiguousarray(rows[:, PDQ_BYTES:]).view(f"S{VIDEO_ID_BYTES}").reshape(n)
        # A video is its id within one list group: the same video in two lists is two.
        keys = np.stack([ids.view(np.int64), pairs], axis=1)
        uniq, first, video = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        gids = registry.single_gids(pairs[first])
        video = video.reshape(-1)
        counts = np.bincount(video, minlength=uniq.shape[0]).astype(np.int64)
        mih: _Mih | None = None
        if widths:
            order = np.argsort(_sort_key(words, widths[0]), kind="stable")
            words = np.take(words, order, axis=0)
            video = np.take(video, order)
            mih = _Mih.build(words, widths)
        return cls(words, video.astype(np.uint32), ids[first], gids, counts, mih)

    def search(self, queries: U64, radius: int,
               method: PdqMethod = "auto") -> tuple[I64, I64, I64]:
        """(query index, video index, row) of every row within `radius` of a query (a pair
        may repeat)."""
        mih = self.mih
        if method == "mih" and mih is None:
            raise ValueError("this index has no vpdq multi-index tables (built with it off)")
        if mih is not None and (method == "mih" or (method == "auto" and mih.worth(radius))):
            found = mih.search(queries, radius, self.words)
            if found is not None:
                rows, _dists, q_idx = found
                return q_idx, self.video[rows].astype(np.int64), rows
        return self.search_brute(queries, radius)

    def search_brute(self, queries: U64, radius: int) -> tuple[I64, I64, I64]:
        """As `search`, by XOR and popcount over every row."""
        out_q: list[I64] = []
        out_v: list[I64] = []
        out_r: list[I64] = []
        for j in range(queries.shape[0]):
            for lo in range(0, self.words.shape[0], _BRUTE_CHUNK):
                pos, _dist = _near_rows(self.words[lo : lo + _BRUTE_CHUNK], queries[j], radius)
                if pos.size:
                    out_q.append(np.full(pos.size, j, np.int64))
                    out_r.append(pos + lo)
                    out_v.append(self.video[pos + lo].astype(np.int64))
        return _cat(out_q), _cat(out_v), _cat(out_r)


def _near_rows(rows: U64, query: U64, radius: int) -> tuple[I64, I64]:
    """(positions, distances) of the rows within ``radius`` of ``query``.

    Words 0 and 1 first: almost every row that is not a match is out after them."""
    d = np.bitwise_count(rows[:, 0] ^ query[0])
    d += np.bitwise_count(rows[:, 1] ^ query[1])
    near = np.flatnonzero(d <= radius)
    if near.size == 0:
        return near, near
    full = _popcount_rows(rows[near], query)
    hit = full <= radius
    return near[hit], full[hit].astype(np.int64)


def _brute_pdq(words: U64, queries: U64, radius: int) -> tuple[I64, I64]:
    """Every row within ``radius`` of any query: (row ids, distances), rows may repeat."""
    out_ids: list[I64] = []
    out_d: list[I64] = []
    n = words.shape[0]
    for lo in range(0, n, _BRUTE_CHUNK):
        chunk = words[lo : lo + _BRUTE_CHUNK]
        for q in queries:
            pos, dist = _near_rows(chunk, q, radius)
            if pos.size:
                out_ids.append(pos + lo)
                out_d.append(dist)
    return _cat(out_ids), _cat(out_d)


def _verify(
    words: U64, groups: Sequence[tuple[I64, I64]], queries: U64, radius: int, nq: int
) -> tuple[I64, I64, I64]:
    """Exact distances of candidates (query-major groups of row ids with per-query bounds):
    (row ids, distances, query index) of those within ``radius``."""
    out_ids: list[I64] = []
    out_d: list[I64] = []
    out_q: list[I64] = []
    records = words.view("S32").reshape(-1)  # one 32-byte item per row: a fast gather
    for ids, bounds in groups:
        rows = np.take(records, ids).view(np.uint64).reshape(-1, 4)
        for j in range(nq):
            a, b = int(bounds[j]), int(bounds[j + 1])
            if a == b:
                continue
            pos, dist = _near_rows(rows[a:b], queries[j], radius)
            if pos.size:
                out_ids.append(ids[a:b][pos])
                out_d.append(dist)
                out_q.append(np.full(pos.size, j, np.int64))
    return _cat(out_ids), _cat(out_d), _cat(out_q)


def _cat(parts: list[I64]) -> I64:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _closest(ids: I64, dists: I64) -> tuple[I64, I64]:
    """One (id, smallest distance) per id."""
    if ids.size <= 1:
        return ids, dists
    order = np.lexsort((dists, ids))
    ids, dists = ids[order], dists[order]
    first = np.ones(ids.size, dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], dists[first]


# --------------------------------------------------------------------------- exact, gridhist


@dataclass(frozen=True, slots=True)
class _Exact:
    values: AnyArray  # sorted unique S{width}
    gids: AnyArray

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.gids.nbytes)


@dataclass(frozen=True, slots=True)
class _Grid:
    values: U8  # (N, L)
    norms: npt.NDArray[np.float64]  # |x|^2, exact
    gids: AnyArray

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.norms.nbytes + self.gids.nbytes)


# --------------------------------------------------------------------------- the index


class HashIndex:
    """All hash lists in memory, ready to match. Immutable; build a new one to reload."""

    __slots__ = ("_exact", "_frames", "_grid", "_groups", "_len", "_lists", "_pdq", "_stats",
                 "_version")

    def __init__(
        self,
        *,
        version: int,
        lists: tuple[str, ...],
        groups: tuple[Group, ...],
        pdq: _Pdq,
        exact: dict[str, _Exact],
        grid: dict[int, _Grid],
        stats: dict[str, int],
        frames: _Frames | None = None,
    ) -> None:
        self._frames = frames
        self._version = version
        self._lists = lists
        self._groups = groups
        self._pdq = pdq
        self._exact = exact
        self._grid = grid
        self._stats = stats
        self._len = stats["entries"]

    # ---- construction

    @classmethod
    def build(
        cls,
        entries: Iterable[IndexEntry],
        version: int = 0,
        *,
        pdq_mih: bool | None = None,
        pdq_chunk_bits: int | Sequence[int] | None = None,
        pdq_tables: int | None = None,
        vpdq_mih: bool | None = None,
    ) -> HashIndex:
        """Index entries given one by one (imports, tests, small lists)."""
        lists: dict[str, int] = {}
        label_sets: dict[tuple[str, ...], int] = {}
        rows: dict[str, tuple[list[bytes], list[int], list[int]]] = {}
        for e in entries:
            algo = e.algorithm
            signal = signals.get(algo)
            # (vector values of another length are kept apart, not refused: see Gridhist)
            width = None if signal.index is signals.IndexKind.VECTOR else signal.width
            raw = _hex_bytes(e.value, width, algo)
            vals, lids, labs = rows.setdefault(algo, ([], [], []))
            vals.append(raw)
            lids.append(lists.setdefault(e.list_name, len(lists)))
            labs.append(label_sets.setdefault(tuple(e.labels), len(label_sets)))

        def arrays(algo: str, width: int | None = None) -> EntryArrays | None:
            if algo not in rows:
                return None
            vals, lids, labs = rows[algo]
            if width is None:
                width = len(vals[0])
            data = np.frombuffer(b"".join(vals), dtype=np.uint8).reshape(len(vals), width)
            return EntryArrays(data, np.asarray(lids, np.int64), np.asarray(labs, np.int64))

        grid: list[EntryArrays] = []
        if GRIDHIST in rows:
            vals, lids, labs = rows[GRIDHIST]
            by_len: dict[int, list[int]] = {}
            for i, v in enumerate(vals):
                by_len.setdefault(len(v), []).append(i)
            for width, idx in by_len.items():
                data = np.frombuffer(b"".join(vals[i] for i in idx), np.uint8)
                grid.append(
                    EntryArrays(
                        data.reshape(len(idx), width),
                        np.asarray([lids[i] for i in idx], np.int64),
                        np.asarray([labs[i] for i in idx], np.int64),
                    )
                )
        pdq = arrays(PDQ, PDQ_BYTES)
        frames = arrays(VPDQ, PDQ_BYTES + VIDEO_ID_BYTES)
        exact: dict[str, EntryArrays] = {}
        for algo in EXACT_ALGORITHMS:
            a = arrays(algo)
            if a is not None:
                exact[algo] = a
        return cls.from_arrays(
            version=version,
            lists=tuple(lists),
            label_sets=tuple(label_sets),
            pdq=None if pdq is None else pdq.values,
            pdq_list=None if pdq is None else pdq.list_ids,
            pdq_labels=None if pdq is None else pdq.label_ids,
            exact=exact,
            gridhist=grid,
            vpdq=frames,
            pdq_mih=pdq_mih,
            pdq_chunk_bits=pdq_chunk_bits,
            pdq_tables=pdq_tables,
            vpdq_mih=vpdq_mih,
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        version: int = 0,
        lists: Sequence[str],
        label_sets: Sequence[tuple[str, ...]],
        pdq: npt.NDArray[np.uint8] | None = None,
        pdq_list: IntArray | None = None,
        pdq_labels: IntArray | None = None,
        exact: Mapping[str, EntryArrays | Mapping[str, tuple[int, int]]] | None = None,
        gridhist: EntryArrays | Sequence[EntryArrays] | None = None,
        vpdq: EntryArrays | None = None,
        pdq_mih: bool | None = None,
        pdq_chunk_bits: int | Sequence[int] | None = None,
        pdq_tables: int | None = None,
        vpdq_mih: bool | None = None,
        threads: int | None = None,
    ) -> HashIndex:
        """Index column arrays without a Python object per entry (a store's cold load).

        ``pdq`` is uint8 ``(N, 32)`` in the hex's byte order, with ``pdq_list`` and
        ``pdq_labels`` (list id and label-set id per row). ``exact`` maps md5/sha1/sha256 to
        :class:`EntryArrays` (or, for small lists, to ``{hex: (list id, label-set id)}``).
        ``gridhist`` is one :class:`EntryArrays` per vector length. ``pdq_mih`` forces the
        multi-index tables on or off (None: on from ``MIH_MIN_ENTRIES`` hashes);
        ``pdq_chunk_bits`` (one width, or one per table) and ``pdq_tables`` override their
        shape. ``vpdq`` holds one row per listed frame (its PDQ, then the video's id);
        ``vpdq_mih`` forces multi-index tables over those frames on or off (None: on from
        ``MIH_MIN_ENTRIES`` frames; default shape for their number). ``threads`` sorts
        the PDQ tables in parallel (default 1: at 10M, 2 threads build in ~7 s instead of
        ~9-10 s, but ~5 bytes per entry of freed memory then stays in the threads' malloc
        arenas). Input arrays are not modified or kept.
        """
        lists_t = tuple(lists)
        label_sets_t = tuple(tuple(ls) for ls in label_sets)
        registry = _GroupRegistry(label_sets_t)
        n_lists = len(lists_t)
        stats: dict[str, int] = {}

        # PDQ
        if pdq is None:
            pdq_arr = np.zeros((0, PDQ_BYTES), np.uint8)
            pdq_pairs = np.zeros(0, np.int64)
        else:
            pdq_arr = np.asarray(pdq)
            if pdq_arr.dtype != np.uint8 or pdq_arr.ndim != 2 or pdq_arr.shape[1] != PDQ_BYTES:
                raise ValueError("pdq must be a uint8 array of shape (N, 32)")
            if pdq_list is None or pdq_labels is None:
                raise ValueError("pdq needs pdq_list and pdq_labels")
            pdq_pairs = registry.pair_keys(pdq_list, pdq_labels, n_lists)
            if pdq_pairs.shape[0] != pdq_arr.shape[0]:
                raise ValueError("pdq_list/pdq_labels length differs from pdq")
        n_rows = pdq_arr.shape[0]
        use_mih = n_rows >= MIH_MIN_ENTRIES if pdq_mih is None else pdq_mih
        widths: tuple[int, ...] = ()
        if use_mih and n_rows > 0:
            if pdq_chunk_bits is None:
                widths = _default_widths(n_rows, pdq_tables)
            elif isinstance(pdq_chunk_bits, int):
                widths = (pdq_chunk_bits,) * (pdq_tables or DEFAULT_TABLES)
            else:
                widths = tuple(pdq_chunk_bits)
            _place_chunks(widths)  # refuse a shape that does not fit before the work
        words, pdq_gids = _collapse_pdq(pdq_arr, pdq_pairs, registry, widths[0] if widths else 0)

        # Exact
        exact_built: dict[str, tuple[AnyArray, I64]] = {}
        for algo, spec in (exact or {}).items():
            if algo not in EXACT_ALGORITHMS:
                raise ValueError(f"unknown exact hash algorithm {algo!r}")
            width = EXACT_ALGORITHMS[algo]
            arrays = _exact_arrays(spec, width, algo)
            if arrays.values.shape[1] != width:
                raise ValueError(f"{algo}: values must have shape (N, {width})")
            pairs = registry.pair_keys(arrays.list_ids, arrays.label_ids, n_lists)
            if pairs.shape[0] != arrays.values.shape[0]:
                raise ValueError(f"{algo}: ids differ in length from values")
            ordered, new_value, order = _sorted_bytes_rows(_as_u8(arrays.values, algo))
            first, gids = registry.collapse(new_value, _pairs_within_runs(new_value, pairs[order]))
            exact_built[algo] = (ordered[first], gids)

        # Gridhist
        grid_specs: Sequence[EntryArrays]
        if gridhist is None:
            grid_specs = ()
        elif isinstance(gridhist, EntryArrays):
            grid_specs = (gridhist,)
        else:
            grid_specs = gridhist
        grid_by_len: dict[int, list[EntryArrays]] = {}
        for spec in grid_specs:
            values = _as_u8(spec.values, GRIDHIST)
            if values.shape[0]:
                grid_by_len.setdefault(values.shape[1], []).append(spec)
        grid_built: dict[int, tuple[U8, I64]] = {}
        for length, specs in grid_by_len.items():
            values = np.concatenate([_as_u8(s.values, GRIDHIST) for s in specs])
            pairs = np.concatenate(
                [registry.pair_keys(s.list_ids, s.label_ids, n_lists) for s in specs]
            )
            if pairs.shape[0] != values.shape[0]:
                raise ValueError("gridhist ids differ in length from values")
            ordered, new_value, order = _sorted_bytes_rows(values)
            first, gids = registry.collapse(new_value, _pairs_within_runs(new_value, pairs[order]))
            grid_built[length] = (
                ordered[first].view(np.uint8).reshape(first.size, length),
                gids,
            )

        # vPDQ: listed videos as bags of frames (before the groups are final: it adds some)
        frames_built: _Frames | None = None
        if vpdq is not None and np.asarray(vpdq.values).shape[0]:
            rows = _as_u8(vpdq.values, VPDQ)
            if rows.shape[1] != PDQ_BYTES + VIDEO_ID_BYTES:
                raise ValueError(f"{VPDQ}: values must have {PDQ_BYTES + VIDEO_ID_BYTES} bytes")
            pairs = registry.pair_keys(vpdq.list_ids, vpdq.label_ids, n_lists)
            if pairs.shape[0] != rows.shape[0]:
                raise ValueError(f"{VPDQ}: ids differ in length from values")
            n_frames = rows.shape[0]
            frame_mih = n_frames >= MIH_MIN_ENTRIES if vpdq_mih is None else vpdq_mih
            frames_built = _Frames.build(rows, pairs, registry,
                                         _default_widths(n_frames) if frame_mih else ())

        groups = tuple(registry.groups)
        gdt = _gid_dtype(len(groups))

        # Counts per algorithm and list.
        per_list = np.zeros(max(n_lists, 1), dtype=np.int64)

        def count(algo: str, gids: I64, n_values: int) -> None:
            stats[algo] = stats.get(algo, 0) + n_values
            if not n_values:
                return
            per_group = np.bincount(gids, minlength=len(groups))
            for g in np.flatnonzero(per_group).tolist():
                for list_id, _labels in groups[g]:
                    per_list[list_id] += per_group[g]
                    key = f"list:{lists_t[list_id]}:{algo}"
                    stats[key] = stats.get(key, 0) + int(per_group[g])

        for algo in ALGORITHMS:
            stats[algo] = 0
        count(PDQ, pdq_gids, words.shape[0])
        for algo, (_, gids) in exact_built.items():
            count(algo, gids, gids.shape[0])
        for _, gids in grid_built.values():
            count(GRIDHIST, gids, gids.shape[0])
        if frames_built is not None:  # counted in frames (rows), as stored
            count(VPDQ, frames_built.gids[frames_built.video], frames_built.video.shape[0])
        for list_id, name in enumerate(lists_t):
            stats[f"list:{name}"] = int(per_list[list_id])
        stats["entries"] = int(per_list[:n_lists].sum())

        # Assemble.
        mih: _Mih | None = None
        if widths and words.shape[0] > 0:
            mih = _Mih.build(words, widths, threads or 1)
        pdq_index = _Pdq(words, pdq_gids.astype(gdt), mih)
        exact_idx = {a: _Exact(v, g.astype(gdt)) for a, (v, g) in exact_built.items()}
        grid_idx: dict[int, _Grid] = {}
        for length, (vals, g) in grid_built.items():
            v64 = vals.astype(np.float64)
            norms = np.einsum("ij,ij->i", v64, v64)
            grid_idx[length] = _Grid(vals, norms, g.astype(gdt))

        stats["bytes:pdq"] = pdq_index.nbytes
        stats["bytes:pdq_mih"] = mih.nbytes if mih else 0
        for algo in EXACT_ALGORITHMS:
            stats[f"bytes:{algo}"] = exact_idx[algo].nbytes if algo in exact_idx else 0
        stats["bytes:gridhist"] = sum(g.nbytes for g in grid_idx.values())
        frames_mih = frames_built.mih if frames_built is not None else None
        stats[f"bytes:{VPDQ}"] = frames_built.nbytes if frames_built is not None else 0
        stats[f"bytes:{VPDQ}_mih"] = frames_mih.nbytes if frames_mih is not None else 0
        stats["bytes"] = (
            stats["bytes:pdq"]
            + sum(stats[f"bytes:{a}"] for a in EXACT_ALGORITHMS)
            + stats["bytes:gridhist"]
            + stats[f"bytes:{VPDQ}"]
        )
        return cls(
            version=version,
            lists=lists_t,
            groups=groups,
            pdq=pdq_index,
            exact=exact_idx,
            grid=grid_idx,
            stats=stats,
            frames=frames_built,
        )

    # ---- queries

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return self._len

    def stats(self) -> dict[str, int]:
        """Entries per algorithm (``pdq``...), per list (``list:NAME``, ``list:NAME:ALGO``),
        ``entries`` in all, and bytes of arrays (``bytes``, ``bytes:ALGO``, and the
        part of those in multi-index tables: ``bytes:pdq_mih``, ``bytes:vpdq_mih``)."""
        return dict(self._stats)

    @property
    def pdq_layout(self) -> dict[str, tuple[int, ...]]:
        """Shape of the PDQ multi-index (empty without one): chunk widths, their bit
        positions, the offset-table block shifts, and the probe radii at the design radius."""
        mih = self._pdq.mih
        if mih is None:
            return {}
        return {
            "bits": mih.bits,
            "starts": mih.starts,
            "shifts": mih.shifts,
            "thresholds_at_31": mih.thresholds(DESIGN_RADIUS),
        }

    def _matches(
        self, algorithm: str, gids: IntArray, values: Sequence[str], dists: Sequence[float]
    ) -> list[Match]:
        out: list[Match] = []
        for g, value, dist in zip(gids.tolist(), values, dists, strict=True):
            for list_id, labels in self._groups[g]:
                out.append(Match(self._lists[list_id], algorithm, dist, labels, value))
        out.sort(key=lambda m: (m.distance, m.list_name, m.value))
        return out

    def search(self, algorithm: str, queries: Sequence[str], radius: float,
               settings: MatchSettings | None = None) -> list[Match]:
        """Entries of the signal `algorithm` within `radius` of any of the `queries`, by
        the kind of index that holds the signal (`settings`: the match rule of a video)."""
        kind = signals.get(algorithm).index
        if kind is signals.IndexKind.HAMMING:
            return self.search_pdq(list(queries), int(radius))
        if kind is signals.IndexKind.FRAMES:
            rule = settings if settings is not None else MatchSettings()
            return self.search_vpdq(queries, int(radius), rule.pdq_min_quality,
                                    rule.vpdq_listed_percent, rule.vpdq_attachment_percent)
        out: list[Match] = []
        for query in queries:
            if kind is signals.IndexKind.VECTOR:
                out += self.search_gridhist(query, radius)
            else:
                out += self.lookup_exact(algorithm, query)
        return out

    def search_vpdq(self, features: Sequence[str], radius: int, min_quality: int = 50,
                    listed_percent: float = 80.0, attachment_percent: float = 80.0,
                    *, method: PdqMethod = "auto") -> list[Match]:
        """Listed videos that a video's vPDQ `features` (`pdqhex,quality,timestamp`)
        match, as Meta's vPDQ compares bags of unique frame hashes of quality >=
        `min_quality` on both sides, a frame matching within `radius` bits: a match when at
        least `listed_percent` of a listed video's frames are matched (padding it with
        other footage does not hide it) or at least `attachment_percent` of the
        attachment's frames match that video (an excerpt does not either). Match.distance
        is the share of frames not matched on the side that decided (0: all), and
        Match.value the listed video's id. `method` forces brute force or the multi-index
        over the listed frames (tests, benchmarks)."""
        from mailfilter.hashing.vpdq import parse_features

        frames = self._frames
        unique: dict[str, None] = {}
        for feature in parse_features(features):  # ValueError on a malformed feature
            if feature.quality >= min_quality:
                unique.setdefault(feature.pdq_hex)
        if frames is None or not unique or radius < 0:
            return []
        nq = len(unique)
        qbytes = b"".join(_hex_bytes(q, PDQ_BYTES, "vpdq query") for q in unique)
        queries = np.frombuffer(qbytes, dtype=np.uint64).reshape(nq, 4)
        q_idx, v_idx, rows = frames.search(queries, min(int(radius), 256), method)
        if rows.size == 0:
            return []
        # Per candidate video: its distinct frames matched, and the distinct query frames
        # that match one of its frames.
        n_videos = frames.frames.shape[0]
        listed_hits = np.bincount(frames.video[np.unique(rows)], minlength=n_videos)
        attached_hits = np.bincount(np.unique(v_idx * nq + q_idx) // nq, minlength=n_videos)
        candidates = np.flatnonzero(listed_hits)
        listed = listed_hits[candidates] / frames.frames[candidates]
        attached = attached_hits[candidates] / nq
        share = np.maximum(np.where(listed * 100 >= listed_percent, listed, 0.0),
                           np.where(attached * 100 >= attachment_percent, attached, 0.0))
        out: list[Match] = []
        for v, s in zip(candidates.tolist(), share.tolist(), strict=True):
            if s <= 0:
                continue
            # (the array's bytes: an "S8" item drops trailing zero bytes when taken alone)
            video_id = frames.video_ids[v : v + 1].tobytes().hex()
            for list_id, labels in self._groups[int(frames.gids[v])]:
                out.append(Match(self._lists[list_id], VPDQ, round(1.0 - s, 4), labels,
                                 video_id))
        out.sort(key=lambda m: (m.distance, m.list_name, m.value))
        return out

    def lookup_exact(self, algorithm: str, value: str) -> list[Match]:
        """Entries whose hash equals ``value``: one Match per list (distance 0)."""
        if algorithm == PDQ:
            return self.search_pdq([value], 0)
        if algorithm == GRIDHIST:
            return self.search_gridhist(value, 0.0)
        if algorithm not in EXACT_ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {algorithm!r}")
        raw = _hex_bytes(value, EXACT_ALGORITHMS[algorithm], algorithm)
        table = self._exact.get(algorithm)
        if table is None or table.values.size == 0:
            return []
        key = np.array([raw], dtype=table.values.dtype)
        lo = int(np.searchsorted(table.values, key, side="left")[0])
        hi = int(np.searchsorted(table.values, key, side="right")[0])
        if hi <= lo:
            return []
        return self._matches(algorithm, table.gids[lo:hi], [raw.hex()], [0.0])

    def search_pdq(
        self, queries: Sequence[str], max_distance: int, *, method: PdqMethod = "auto"
    ) -> list[Match]:
        """Every entry within ``max_distance`` bits of any query, once, at its smallest
        distance. ``method`` forces brute force or the multi-index (tests, benchmarks)."""
        qbytes = b"".join(_hex_bytes(q, PDQ_BYTES, "pdq query") for q in queries)
        pdq = self._pdq
        n = pdq.words.shape[0]
        if not queries or n == 0 or max_distance < 0:
            return []
        radius = min(int(max_distance), 256)
        qwords = np.frombuffer(qbytes, dtype=np.uint64).reshape(len(queries), 4)
        if method == "mih" and pdq.mih is None:
            raise ValueError("this index has no multi-index tables (built with pdq_mih off)")
        found = None
        if pdq.mih is not None and (
            method == "mih" or (method == "auto" and pdq.mih.worth(radius))
        ):
            found = pdq.mih.search(qwords, radius, pdq.words)
        ids, dists = found[:2] if found is not None else _brute_pdq(pdq.words, qwords, radius)
        ids, dists = _closest(ids, dists)
        values = [pdq.words[i].tobytes().hex() for i in ids.tolist()]
        return self._matches(PDQ, pdq.gids[ids], values, [float(d) for d in dists.tolist()])

    def search_gridhist(self, query: str, max_distance: float) -> list[Match]:
        """Entries within Euclidean ``max_distance`` of the query vector (same length only)."""
        raw = _hex_bytes(query, None, "gridhist query")
        table = self._grid.get(len(raw))
        if table is None or max_distance < 0:
            return []
        q = np.frombuffer(raw, dtype=np.uint8)
        exact32 = len(raw) < 258  # every partial sum of x.q stays below 2**24
        ftype: type[np.floating[Any]] = np.float32 if exact32 else np.float64
        qf: npt.NDArray[np.floating[Any]] = q.astype(ftype)
        qn = float(np.dot(q.astype(np.float64), q.astype(np.float64)))
        limit = float(max_distance) ** 2 * (1 + 1e-9) + 1e-9  # final test is on sqrt below
        hit_ids: list[I64] = []
        hit_d2: list[npt.NDArray[np.float64]] = []
        n = table.values.shape[0]
        for lo in range(0, n, _GRID_CHUNK):
            block: npt.NDArray[np.floating[Any]] = table.values[lo : lo + _GRID_CHUNK].astype(ftype)
            # einsum, not BLAS: one thread, no pool wake-ups for these small products.
            dots = np.einsum("ij,j->i", block, qf).astype(np.float64)
            d2 = table.norms[lo : lo + _GRID_CHUNK] + qn - 2.0 * dots
            near = np.flatnonzero(d2 <= limit)
            if near.size:
                hit_ids.append(near.astype(np.int64) + lo)
                hit_d2.append(d2[near])
        if not hit_ids:
            return []
        ids = np.concatenate(hit_ids)
        dists = np.sqrt(np.maximum(np.concatenate(hit_d2), 0.0))
        keep = dists <= max_distance
        ids, dists = ids[keep], dists[keep]
        values = [table.values[i].tobytes().hex() for i in ids.tolist()]
        return self._matches(GRIDHIST, table.gids[ids], values, dists.tolist())


def _as_u8(values: AnyArray, what: str) -> U8:
    arr = np.asarray(values)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"{what}: values must be a uint8 array of shape (N, width)")
    return np.ascontiguousarray(arr)


def _exact_arrays(
    spec: EntryArrays | Mapping[str, tuple[int, int]], width: int, algo: str
) -> EntryArrays:
    if isinstance(spec, EntryArrays):
        return spec
    items = list(spec.items())
    raw = b"".join(_hex_bytes(h, width, algo) for h, _ in items)
    return EntryArrays(
        np.frombuffer(raw, np.uint8).reshape(len(items), width),
        np.asarray([li for _, (li, _la) in items], np.int64),
        np.asarray([la for _, (_li, la) in items], np.int64),
    )


def _rotl(x: U64, k: int) -> U64:
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


def _sort_key(words: U64, top_bits: int) -> U64:
    """The PDQ rows' order: the top ``top_bits`` bits of word 0 (table 0's chunk), then bits
    of a mix of all four words, so that two rows tie on 40 bits almost only if identical."""
    mix = words[:, 0] ^ _rotl(words[:, 1], 17)
    mix ^= _rotl(words[:, 2], 31)
    mix ^= _rotl(words[:, 3], 47)
    mix *= np.uint64(0x9E3779B97F4A7C15)  # odd: a bijection that spreads every bit upwards
    if top_bits <= 0:
        return mix
    high = np.uint64(((1 << top_bits) - 1) << (64 - top_bits))
    mix >>= np.uint64(top_bits)
    mix |= words[:, 0] & high
    return mix


def _collapse_pdq(pdq: U8, pairs: I64, registry: _GroupRegistry, top_bits: int) -> tuple[U64, I64]:
    """Unique PDQ rows as uint64 words in table-0 order (``_sort_key``), and group ids."""
    n = pdq.shape[0]
    if n == 0:
        return np.zeros((0, 4), np.uint64), np.zeros(0, np.int64)
    words_in = np.ascontiguousarray(pdq).view(np.uint64).reshape(n, 4)
    key = _sort_key(words_in, top_bits)
    if n <= _ROWS_24BIT:
        # Sort (top 40 bits of the key, row number) packed in one uint64: faster than argsort.
        tie_mask = np.uint64((2**64 - 1) ^ ((1 << 24) - 1))
        packed = key & tie_mask
        packed |= np.arange(n, dtype=np.uint64)
        packed.sort()
        order = (packed & np.uint64((1 << 24) - 1)).astype(np.int64)
        del packed
    else:
        order = np.argsort(key, kind="stable").astype(np.int64)
        tie_mask = np.uint64(2**64 - 1)
    words = np.take(words_in, order, axis=0)
    pairs_s = np.take(pairs, order)
    key = np.take(key, order)
    key &= tie_mask
    del order
    # Rows that tie on the sort key (identical ones among them): order each run of ties by
    # all words and then the pair, so identical rows are adjacent with their pairs sorted.
    same = np.flatnonzero(key[1:] == key[:-1])  # row same+1 ties with row same
    new_value = np.ones(n, dtype=bool)
    if same.size:
        tie = np.zeros(n, dtype=bool)
        tie[same] = True
        tie[same + 1] = True
        tied = np.flatnonzero(tie)
        del tie
        records = words.view("S32").reshape(-1)  # move rows as 32-byte records: fast
        sub = np.take(words, tied, axis=0)
        sub_pairs = np.take(pairs_s, tied)
        sub_order = np.lexsort(
            (sub_pairs, sub[:, 3], sub[:, 2], sub[:, 1], sub[:, 0], np.take(key, tied))
        )
        records[tied] = np.take(sub.view("S32").reshape(-1), sub_order)
        pairs_s[tied] = np.take(sub_pairs, sub_order)
        del sub, sub_pairs, sub_order
        equal = (np.take(words, same, axis=0) == np.take(words, same + 1, axis=0)).all(axis=1)
        new_value[same[equal] + 1] = False
    del key
    first, gids = registry.collapse(new_value, pairs_s)
    if first.size == n:
        return words, gids
    return np.take(words, first, axis=0), gids
