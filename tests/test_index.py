"""The in-memory hash index against brute-force oracles written in plain Python.

Every hash here is random or derived from random hashes; nothing is a real list entry.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

import numpy as np
import pytest

from mailfilter.matching import index as index_mod
from mailfilter.matching.index import EntryArrays, HashIndex, IndexEntry
from mailfilter.model import Match

RADIUS = 31


# ---------------------------------------------------------------- helpers and oracles


def rand_hex(rng: random.Random, nbytes: int = 32) -> str:
    return rng.getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()


def flip(rng: random.Random, value: str, k: int) -> str:
    """`value` with exactly k distinct bits flipped."""
    x = int(value, 16)
    for bit in rng.sample(range(4 * len(value)), k):
        x ^= 1 << bit
    return x.to_bytes(len(value) // 2, "big").hex()


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def oracle_pdq(entries: Iterable[IndexEntry], queries: Sequence[str], r: int) -> set[Match]:
    """Every (list, value) within r of any query, at its smallest distance; labels merged."""
    best: dict[tuple[str, str], int] = {}
    labels: dict[tuple[str, str], set[str]] = {}
    for e in entries:
        if e.algorithm != "pdq":
            continue
        d = min(hamming(e.value, q) for q in queries)
        if d <= r:
            key = (e.list_name, e.value)
            best[key] = min(d, best.get(key, d))
            labels.setdefault(key, set()).update(e.labels)
    return {
        Match(ln, "pdq", float(d), tuple(sorted(labels[(ln, v)])), v) for (ln, v), d in best.items()
    }


def as_set(matches: list[Match]) -> set[Match]:
    """Matches with labels sorted, so an oracle need not know the label order."""
    out = {
        Match(m.list_name, m.algorithm, m.distance, tuple(sorted(m.labels)), m.value)
        for m in matches
    }
    assert len(out) == len(matches), "a (list, value) was reported twice"
    return out


def pdq_entries(rng: random.Random, n: int, lists: Sequence[str] = ("a",)) -> list[IndexEntry]:
    return [
        IndexEntry(lists[i % len(lists)], "pdq", rand_hex(rng), (f"L{i % 3}",) if i % 2 else ())
        for i in range(n)
    ]


def planted_queries(
    rng: random.Random, entries: Sequence[IndexEntry], ks: Iterable[int]
) -> list[tuple[str, str, int]]:
    """(query, entry value, bits flipped) for each k."""
    out = []
    for k in ks:
        e = entries[rng.randrange(len(entries))]
        out.append((flip(rng, e.value, k), e.value, k))
    return out


# Layouts that force the multi-index path with different shapes on small lists.
MIH_LAYOUTS: list[dict[str, object]] = [
    {},  # the default shape for the list size
    {"pdq_chunk_bits": 8, "pdq_tables": 16},
    {"pdq_chunk_bits": 12, "pdq_tables": 10},
    {"pdq_chunk_bits": [14, 14, 11, 11, 11, 11, 11, 11, 11, 11]},  # mixed widths
    {"pdq_chunk_bits": [16] * 16},  # all 256 bits, a chunk wrapping from bit 255 to 0
    {"pdq_chunk_bits": 10, "pdq_tables": 3},  # few tables: large probe radii
    {"pdq_chunk_bits": 9, "pdq_tables": 1},
]


# ---------------------------------------------------------------- PDQ


@pytest.fixture(scope="module")
def pdq_list() -> list[IndexEntry]:
    rng = random.Random(1)
    return pdq_entries(rng, 4000, ("ncmec", "iwf"))


def check_planted(index: HashIndex, entries: list[IndexEntry], method: str, seed: int) -> None:
    """k = 0..40 bits from list entries, 3 times each, asked 8 at a time: an entry is found
    exactly when k <= 31, and the whole answer is the oracle's."""
    rng = random.Random(seed)
    planted = planted_queries(rng, entries, [k for _ in range(3) for k in range(41)])
    rng.shuffle(planted)
    for lo in range(0, len(planted), 8):
        batch = planted[lo : lo + 8]
        queries = [q for q, _, _ in batch]
        found = index.search_pdq(queries, RADIUS, method=method)  # type: ignore[arg-type]
        values = {m.value for m in found}
        for _, value, k in batch:
            assert (value in values) == (k <= RADIUS), (k, index.pdq_layout)
        assert all(m.distance <= RADIUS for m in found)
        assert as_set(found) == oracle_pdq(entries, queries, RADIUS)


@pytest.mark.parametrize("layout", MIH_LAYOUTS, ids=lambda d: str(d or "default"))
def test_planted_near_duplicates_mih(pdq_list: list[IndexEntry], layout: dict[str, object]) -> None:
    index = HashIndex.build(pdq_list, pdq_mih=True, **layout)  # type: ignore[arg-type]
    assert index.pdq_layout
    check_planted(index, pdq_list, "mih", 2)


def test_planted_near_duplicates_brute(pdq_list: list[IndexEntry]) -> None:
    index = HashIndex.build(pdq_list, pdq_mih=False)
    assert index.pdq_layout == {}
    check_planted(index, pdq_list, "brute", 3)
    with pytest.raises(ValueError, match="no multi-index"):
        index.search_pdq([pdq_list[0].value], RADIUS, method="mih")


def test_eight_queries_report_each_entry_once_at_smallest_distance(
    pdq_list: list[IndexEntry],
) -> None:
    rng = random.Random(4)
    index = HashIndex.build(pdq_list, pdq_mih=True, pdq_chunk_bits=10, pdq_tables=12)
    for _ in range(20):
        queries = [rand_hex(rng) for _ in range(8)]
        # Two queries near the same entry at different distances, others near others.
        target = pdq_list[rng.randrange(len(pdq_list))].value
        queries[1] = flip(rng, target, rng.randrange(10, 32))
        queries[6] = flip(rng, target, rng.randrange(0, 10))
        queries[3] = flip(rng, pdq_list[rng.randrange(len(pdq_list))].value, 25)
        expected = oracle_pdq(pdq_list, queries, RADIUS)
        for method in ("mih", "brute", "auto"):
            found = index.search_pdq(queries, RADIUS, method=method)
            assert as_set(found) == expected, method
            assert [m.distance for m in found] == sorted(m.distance for m in found)


@pytest.mark.parametrize("radius", [0, 1, 7, 15, 16, 31, 32, 40, 48, 64, 100, 256])
def test_every_radius_matches_oracle(radius: int) -> None:
    rng = random.Random(100 + radius)
    entries = pdq_entries(rng, 600)
    centre = entries[0].value
    # A cloud around one entry at every distance up to 80 bits, so every radius has hits.
    entries += [IndexEntry("b", "pdq", flip(rng, centre, k)) for k in range(0, 81, 2)]
    queries = [flip(rng, centre, 3), rand_hex(rng)]
    expected = oracle_pdq(entries, queries, radius)
    for layout in ({"pdq_chunk_bits": 8, "pdq_tables": 16}, {"pdq_chunk_bits": 11}):
        index = HashIndex.build(entries, pdq_mih=True, **layout)
        for method in ("mih", "auto"):
            found = index.search_pdq(queries, radius, method=method)
            assert as_set(found) == expected, (radius, layout, method)
    assert as_set(HashIndex.build(entries, pdq_mih=False).search_pdq(queries, radius)) == expected


def test_random_queries_match_oracle_on_default_layout() -> None:
    rng = random.Random(5)
    entries = pdq_entries(rng, 20_000, ("x", "y", "z"))
    assert HashIndex.build(entries).pdq_layout == {}  # small: brute force is cheaper
    index = HashIndex.build(entries, pdq_mih=True)  # the default shape for this size
    assert index.pdq_layout
    queries = [rand_hex(rng) for _ in range(8)]
    queries += [flip(rng, entries[i].value, 20 + i) for i in range(0, 16, 2)]
    for method in ("mih", "brute"):
        found = index.search_pdq(queries, RADIUS, method=method)
        assert as_set(found) == oracle_pdq(entries, queries, RADIUS)


def test_crowded_buckets_and_wide_row_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clumpy lists: thousands of hashes sharing chunks overflow 1-byte bucket offsets;
    also the >16.7M-row code paths (2-byte high id parts, argsort) at a small size."""
    rng = random.Random(6)
    prefix = rand_hex(rng)[:40]  # 160 bits shared: most chunks hold one crowded bucket
    entries = [IndexEntry("c", "pdq", prefix + rand_hex(rng, 12)) for _ in range(3000)]
    entries += pdq_entries(rng, 500)
    queries = [flip(rng, entries[5].value, 12), flip(rng, entries[3100].value, 30)]
    expected = oracle_pdq(entries, queries, RADIUS)
    index = HashIndex.build(entries, pdq_mih=True, pdq_chunk_bits=9, pdq_tables=12)
    assert as_set(index.search_pdq(queries, RADIUS, method="mih")) == expected
    assert index._pdq.mih is not None and 0 in index._pdq.mih.shifts  # plain offsets

    monkeypatch.setattr(index_mod, "_ROWS_24BIT", 100)
    wide = HashIndex.build(entries, pdq_mih=True, pdq_chunk_bits=10, pdq_tables=10)
    assert wide._pdq.mih is not None and wide._pdq.mih.ids.dtype == np.uint32
    assert as_set(wide.search_pdq(queries, RADIUS, method="mih")) == expected


def test_same_hash_in_several_lists_and_duplicates() -> None:
    rng = random.Random(7)
    h = rand_hex(rng)
    other = rand_hex(rng)
    entries = [
        IndexEntry("ncmec", "pdq", h, ("A1",)),
        IndexEntry("ncmec", "pdq", h, ("A1",)),  # exact duplicate: collapses
        IndexEntry("ncmec", "pdq", h, ("B1",)),  # same list, other labels: merged
        IndexEntry("iwf", "pdq", h.upper(), ()),  # same value, another list
        IndexEntry("iwf", "pdq", other, ("x",)),
    ]
    for mih in (False, True):
        index = HashIndex.build(entries, version=9, pdq_mih=mih, pdq_chunk_bits=8)
        found = index.search_pdq([flip(rng, h, 4)], RADIUS, method="mih" if mih else "brute")
        assert found == [
            Match("iwf", "pdq", 4.0, (), h),
            Match("ncmec", "pdq", 4.0, ("A1", "B1"), h),
        ]
        assert len(index) == 3
        assert index.version == 9
        stats = index.stats()
        assert stats["pdq"] == 2  # distinct hash values
        assert stats["list:ncmec"] == 1 and stats["list:iwf"] == 2
        assert stats["list:iwf:pdq"] == 2 and stats["entries"] == 3
        assert index.lookup_exact("pdq", h) == [
            Match("iwf", "pdq", 0.0, (), h),
            Match("ncmec", "pdq", 0.0, ("A1", "B1"), h),
        ]


def test_bad_pdq_queries_are_refused() -> None:
    index = HashIndex.build([IndexEntry("a", "pdq", "00" * 32)])
    with pytest.raises(ValueError):
        index.search_pdq(["00" * 31], RADIUS)
    with pytest.raises(ValueError):
        index.search_pdq(["zz" * 32], RADIUS)
    assert index.search_pdq([], RADIUS) == []
    assert index.search_pdq(["00" * 32], -1) == []


# ---------------------------------------------------------------- exact hashes


def test_exact_lookups() -> None:
    rng = random.Random(8)
    sizes = {"md5": 16, "sha1": 20, "sha256": 32}
    entries: list[IndexEntry] = []
    for algo, size in sizes.items():
        for i in range(300):
            entries.append(IndexEntry(("a", "b")[i % 2], algo, rand_hex(rng, size), (f"t{i % 4}",)))
        # Zero bytes inside and at the end must not make two values equal.
        entries.append(IndexEntry("a", algo, "ab" + "00" * (size - 1)))
        entries.append(IndexEntry("a", algo, "ab" + "00" * (size - 2) + "01"))
        entries.append(IndexEntry("b", algo, "00" * size))
    shared = rand_hex(rng, 16)
    entries += [IndexEntry("a", "md5", shared, ("p",)), IndexEntry("b", "md5", shared, ("q",))]
    entries.append(IndexEntry("a", "md5", shared, ("p",)))  # duplicate
    index = HashIndex.build(entries)

    for e in entries:
        found = index.lookup_exact(e.algorithm, e.value.upper())
        assert Match(e.list_name, e.algorithm, 0.0, e.labels, e.value) in found
    assert index.lookup_exact("md5", shared) == [
        Match("a", "md5", 0.0, ("p",), shared),
        Match("b", "md5", 0.0, ("q",), shared),
    ]
    for algo, size in sizes.items():
        assert index.lookup_exact(algo, "ab" + "00" * (size - 2) + "02") == []
        assert index.lookup_exact(algo, rand_hex(rng, size)) == []
        assert len(index.lookup_exact(algo, "ab" + "00" * (size - 1))) == 1
        with pytest.raises(ValueError):
            index.lookup_exact(algo, "ab" * (size - 1))
    with pytest.raises(ValueError):
        index.lookup_exact("crc32", "00")
    stats = index.stats()
    assert stats["md5"] == 304 and stats["sha1"] == 303 and stats["sha256"] == 303
    assert stats["list:a:md5"] == 150 + 3
    assert len(index) == 303 * 3 + 2


def test_exact_from_arrays_and_mapping_forms_agree() -> None:
    rng = np.random.default_rng(9)
    values = rng.integers(0, 256, size=(1000, 20), dtype=np.uint8)
    list_ids = rng.integers(0, 2, size=1000)
    label_ids = rng.integers(0, 3, size=1000)
    label_sets = [(), ("x",), ("x", "y")]
    from_cols = HashIndex.from_arrays(
        lists=["a", "b"],
        label_sets=label_sets,
        exact={"sha1": EntryArrays(values, list_ids, label_ids)},
    )
    mapping = {
        row.tobytes().hex(): (int(li), int(la))
        for row, li, la in zip(values, list_ids, label_ids, strict=True)
    }
    from_map = HashIndex.from_arrays(
        lists=["a", "b"], label_sets=label_sets, exact={"sha1": mapping}
    )
    for row, li, la in zip(values[:50], list_ids[:50], label_ids[:50], strict=True):
        h = row.tobytes().hex()
        want = [Match(("a", "b")[li], "sha1", 0.0, label_sets[la], h)]
        assert from_cols.lookup_exact("sha1", h) == want == from_map.lookup_exact("sha1", h)


# ---------------------------------------------------------------- gridhist


def euclid(a: str, b: str) -> float:
    return math.dist(bytes.fromhex(a), bytes.fromhex(b))


def test_gridhist_matches_oracle_and_lengths_do_not_mix() -> None:
    rng = np.random.default_rng(10)
    base = rng.integers(0, 256, size=(3000, 144), dtype=np.uint8)
    entries = [
        IndexEntry(("a", "b")[i % 2], "gridhist", r.tobytes().hex(), (str(i % 5),))
        for i, r in enumerate(base)
    ]
    # An older version's vectors: another length, never compared with 144-byte queries.
    entries += [IndexEntry("a", "gridhist", r.tobytes().hex()) for r in base[:50, :100]]
    q = base[7].astype(np.int64)
    near = []
    for k in range(12):  # vectors at growing distances from q
        v = q.copy()
        v[: k + 1] = np.clip(v[: k + 1] + 40, 0, 255)
        near.append(v.astype(np.uint8).tobytes().hex())
    entries += [IndexEntry("c", "gridhist", h) for h in near]
    # Exactly on the radius: distance 5 (3-4-5 in two components).
    edge = q.copy()
    edge[0] = edge[0] + 3 if edge[0] < 200 else edge[0] - 3
    edge[1] = edge[1] + 4 if edge[1] < 200 else edge[1] - 4
    entries.append(IndexEntry("c", "gridhist", edge.astype(np.uint8).tobytes().hex()))
    index = HashIndex.build(entries)
    query = base[7].tobytes().hex()
    for radius in (0.0, 4.999, 5.0, 60.0, 150.0, 1500.0):
        found = index.search_gridhist(query, radius)
        expected = {
            (e.list_name, e.value)
            for e in entries
            if len(e.value) == len(query) and euclid(e.value, query) <= radius
        }
        assert {(m.list_name, m.value) for m in found} == expected, radius
        for m in found:
            assert m.distance == pytest.approx(euclid(m.value, query), abs=1e-9)
            assert m.algorithm == "gridhist"
    assert index.search_gridhist(base[3, :100].tobytes().hex(), 0.0)[0].list_name == "a"
    assert index.search_gridhist("00" * 77, 1e9) == []  # no list of that length
    assert index.lookup_exact("gridhist", query)[0].distance == 0.0
    assert index.stats()["gridhist"] == 3000 + 50 + 12 + 1


# ---------------------------------------------------------------- whole index


def test_empty_index() -> None:
    for index in (HashIndex.build([]), HashIndex.from_arrays(lists=[], label_sets=[])):
        assert len(index) == 0
        assert index.search_pdq(["00" * 32], 31) == []
        assert index.search_gridhist("00" * 144, 10.0) == []
        assert index.lookup_exact("sha256", "00" * 32) == []
        stats = index.stats()
        assert stats["entries"] == 0 and stats["pdq"] == 0 and stats["md5"] == 0


def test_from_arrays_matches_build_and_validates() -> None:
    rng = random.Random(11)
    entries = pdq_entries(rng, 3000, ("a", "b"))
    built = HashIndex.build(entries, pdq_mih=True)
    lists = ["a", "b"]
    label_sets = [(), ("L0",), ("L1",), ("L2",)]
    pdq = np.frombuffer(b"".join(bytes.fromhex(e.value) for e in entries), np.uint8)
    arrays = HashIndex.from_arrays(
        version=3,
        lists=lists,
        label_sets=label_sets,
        pdq=pdq.reshape(-1, 32),
        pdq_list=np.array([lists.index(e.list_name) for e in entries]),
        pdq_labels=np.array([label_sets.index(e.labels) for e in entries]),
        pdq_mih=True,
    )
    queries = [flip(rng, entries[i].value, 10 + i) for i in range(8)]
    assert arrays.search_pdq(queries, RADIUS) == built.search_pdq(queries, RADIUS)
    assert arrays.version == 3 and len(arrays) == len(built) == 3000
    assert arrays.stats()["bytes"] > 3000 * 32

    one = np.zeros((1, 32), np.uint8)
    zero = np.zeros(1, np.int64)
    bad_calls = [
        {"pdq": np.zeros((1, 31), np.uint8), "pdq_list": zero, "pdq_labels": zero},
        {"pdq": one, "pdq_list": np.array([1]), "pdq_labels": zero},  # no list 1
        {"pdq": one, "pdq_list": zero, "pdq_labels": np.array([-1])},
        {"pdq": one, "pdq_list": np.zeros(2, np.int64), "pdq_labels": np.zeros(2, np.int64)},
        {"pdq": one},
        {"exact": {"md5": EntryArrays(np.zeros((1, 20), np.uint8), zero, zero)}},
        {"exact": {"crc": EntryArrays(np.zeros((1, 4), np.uint8), zero, zero)}},
        {"gridhist": EntryArrays(np.zeros((2, 8), np.uint8), zero, zero)},
    ]
    for kwargs in bad_calls:
        with pytest.raises(ValueError):
            HashIndex.from_arrays(lists=["a"], label_sets=[()], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HashIndex.build([IndexEntry("a", "phash", "00")])
    with pytest.raises(ValueError):
        HashIndex.build([IndexEntry("a", "pdq", "00" * 31)])
    with pytest.raises(ValueError):
        HashIndex.build(entries, pdq_mih=True, pdq_chunk_bits=30, pdq_tables=9)


def test_probe_masks_and_unplannable_radius() -> None:
    masks, counts = index_mod._masks_by_weight(22)
    for w in range(4):
        level = masks[(counts[w - 1] if w else 0) : counts[w]]
        assert level.size == math.comb(22, w) == np.unique(level).size
        assert (np.bitwise_count(level) == w).all() and int(level.max(initial=0)) < 1 << 22
    # Wide chunks and a radius whose probe balls are not enumerated: brute force instead.
    rng = random.Random(12)
    entries = pdq_entries(rng, 300)
    entries += [IndexEntry("b", "pdq", flip(rng, entries[0].value, k)) for k in range(0, 90, 3)]
    index = HashIndex.build(entries, pdq_mih=True, pdq_chunk_bits=21, pdq_tables=2)
    queries = [flip(rng, entries[0].value, 5)]
    for radius in (20, 80):
        found = index.search_pdq(queries, radius, method="mih")
        assert as_set(found) == oracle_pdq(entries, queries, radius)
    assert index._pdq.mih is not None and index._pdq.mih.plan(80) is None


def flip_positions(value: str, positions: Iterable[int]) -> str:
    """Flip bits by their position in the index's 256-bit layout (byte p // 8, bit p % 8)."""
    raw = bytearray.fromhex(value)
    for p in positions:
        raw[p // 8] ^= 1 << (p % 8)
    return raw.hex()


@pytest.mark.parametrize("layout", MIH_LAYOUTS[:6], ids=lambda d: str(d or "default"))
def test_hardest_entries_at_the_pigeonhole_bound(layout: dict[str, object]) -> None:
    """Entries exactly 31 bits away, with t_i + 1 flips in every chunk but one and t_j in
    chunk j: only table j can find them, at the edge of its probe ball."""
    rng = random.Random(13)
    base = pdq_entries(rng, 2000)
    probe = HashIndex.build(base, pdq_mih=True, **layout)  # type: ignore[arg-type]
    shape = probe.pdq_layout
    bits, starts, t = shape["bits"], shape["starts"], shape["thresholds_at_31"]
    query = rand_hex(rng)
    hard: list[IndexEntry] = []
    for j in [-1, *range(len(bits))]:  # j = -1: t_i + 1 everywhere, r + 1 bits if t is tight
        if j >= 0 and t[j] < 0:
            continue
        for _ in range(3):
            flips: list[int] = []
            for i, (b, s) in enumerate(zip(bits, starts, strict=True)):
                count = min(t[i] + (0 if i == j else 1), b)  # t >= b: every row probed
                flips += [(s + k) % 256 for k in rng.sample(range(b), count)]
            spare = RADIUS - len(flips)  # bits no chunk covers take the rest, if any
            covered = {(s + k) % 256 for b, s in zip(bits, starts, strict=True) for k in range(b)}
            free = [p for p in range(256) if p not in covered]
            flips += rng.sample(free, max(0, min(spare, len(free))))
            value = flip_positions(query, flips)
            assert hamming(value, query) == len(flips) <= RADIUS + (j < 0)
            hard.append(IndexEntry("hard", "pdq", value))
    entries = base + hard
    index = HashIndex.build(entries, pdq_mih=True, **layout)  # type: ignore[arg-type]
    found = index.search_pdq([query], RADIUS, method="mih")
    assert {m.value for m in found} >= {e.value for e in hard if hamming(e.value, query) <= 31}
    assert as_set(found) == oracle_pdq(entries, [query], RADIUS)
