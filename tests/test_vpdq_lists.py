"""vPDQ lists (issue 16, item 4): HMA `vpdq` lines and JSONL entries are stored as one row
per distinct frame of quality >= 50, and a video matches a listed one when >= 80% of the
listed video's frames are matched, or >= 80% of the attachment's frames are."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest

from mailfilter.matching.formats import parse_stream
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.settings import MatchSettings

RNG = random.Random(16)


def frame_hash() -> str:
    return f"{RNG.getrandbits(256):064x}"


def flip(h: str, bits: int) -> str:
    value = int(h, 16)
    for bit in RNG.sample(range(256), bits):
        value ^= 1 << bit
    return f"{value:064x}"


def features(hashes: list[str], quality: int = 90) -> list[str]:
    return [f"{h},{quality},{i}.000" for i, h in enumerate(hashes)]


LISTED = [frame_hash() for _ in range(20)]


def index_of(text: str, fmt: str = "hma") -> HashIndex:
    entries = []
    for batch in parse_stream(io.BytesIO(text.encode()), fmt):
        for algorithm, value, labels, _added in batch.iter_entries():
            entries.append(IndexEntry("videos", algorithm, value, labels))
    return HashIndex.build(entries)


def hma() -> str:
    return "vpdq " + json.dumps(features(LISTED)) + "\n"


def search(index: HashIndex, hashes: list[str], quality: int = 90) -> list[float]:
    rule = MatchSettings()
    return [m.distance for m in index.search("vpdq", features(hashes, quality),
                                             rule.pdq_max_distance, rule)]


def test_a_transcode_matches_every_frame() -> None:
    index = index_of(hma())
    assert index.stats()["vpdq"] == 20
    near = [flip(h, 12) for h in LISTED]  # re-encoded: frames drift a few bits
    assert search(index, near) == [0.0]


def test_padding_a_listed_video_does_not_hide_it() -> None:
    index = index_of(hma())
    padded = LISTED[:17] + [frame_hash() for _ in range(80)]  # 85% of the listed frames
    assert search(index, padded) == [0.15]


def test_an_excerpt_of_a_listed_video_matches() -> None:
    index = index_of(hma())
    assert search(index, LISTED[:5]) == [0.0]  # all its frames are listed (25% of them)


def test_unrelated_or_partial_videos_do_not_match() -> None:
    index = index_of(hma())
    assert search(index, [frame_hash() for _ in range(20)]) == []
    half = LISTED[:10] + [frame_hash() for _ in range(10)]  # 50% on both sides
    assert search(index, half) == []
    far = [flip(h, 40) for h in LISTED]  # beyond 31 bits
    assert search(index, far) == []


def test_low_quality_frames_count_on_neither_side() -> None:
    index = index_of(hma())
    assert search(index, LISTED, quality=30) == []
    mixed = features(LISTED[:10]) + features(LISTED[10:], 20)
    text = "vpdq " + json.dumps(mixed) + "\n"
    assert index_of(text).stats()["vpdq"] == 10


def test_bad_vpdq_lines_are_skipped_with_a_reason() -> None:
    text = ("vpdq not json\n"
            'vpdq ["nothex,90,0"]\n'
            f'vpdq ["{LISTED[0]},10,0"]\n'
            + hma())
    skipped: dict[str, int] = {}
    for batch in parse_stream(io.BytesIO(text.encode()), "hma"):
        for _line, reason in batch.skipped:
            skipped[reason] = skipped.get(reason, 0) + 1
    assert skipped == {
        "bad vpdq value (expected a JSON list of features)": 1,
        "bad vpdq value (a feature is not pdqhex,quality,time)": 1,
        "vpdq without a frame of quality 50 or more": 1,
    }


def test_jsonl_entries_and_a_video_in_two_lists() -> None:
    line = json.dumps({"algorithm": "vpdq", "value": features(LISTED), "labels": ["v"]})
    index = index_of(line + "\n", "jsonl")
    rule = MatchSettings()
    [match] = index.search("vpdq", features(LISTED), rule.pdq_max_distance, rule)
    assert (match.algorithm, match.labels, len(match.value)) == ("vpdq", ("v",), 16)


# --- the multi-index over listed frames against brute force and a plain-Python oracle ----


def reference(lists: dict[str, list[list[str]]], query: list[str], radius: int,
              listed_percent: float, attachment_percent: float) -> set[tuple[str, str, float]]:
    """(list, video id, distance) of every listed video the rule matches, from scratch."""
    asked = {int(f.split(",")[0], 16) for f in query if int(f.split(",")[1]) >= 50}
    out: set[tuple[str, str, float]] = set()
    for name, videos in lists.items():
        for video in videos:
            hexes = sorted({f.split(",")[0] for f in video if int(f.split(",")[1]) >= 50})
            video_id = hashlib.sha256(b"".join(bytes.fromhex(h) for h in hexes)).hexdigest()
            near = {(f, q) for f in map(lambda h: int(h, 16), hexes) for q in asked
                    if (f ^ q).bit_count() <= radius}
            listed = len({f for f, _ in near}) / len(hexes)
            attached = len({q for _, q in near}) / len(asked) if asked else 0.0
            share = max(listed if listed * 100 >= listed_percent else 0.0,
                        attached if attached * 100 >= attachment_percent else 0.0)
            if share > 0:
                out.add((name, video_id[:16], round(1.0 - share, 4)))
    return out


def random_videos(rng: random.Random, count: int) -> list[list[str]]:
    """Videos of 1-40 frames; some share frames (near or equal) with an earlier one, and
    some frames are below quality 50."""
    videos: list[list[str]] = []
    for _ in range(count):
        n = rng.randint(1, 40)
        hashes = [f"{rng.getrandbits(256):064x}" for _ in range(n)]
        if videos and rng.random() < 0.3:  # a re-cut of an earlier video
            donor = rng.choice(videos)
            for i in range(min(n, len(donor)) // 2):
                hashes[i] = flip_with(rng, donor[i].split(",")[0], rng.randint(0, 20))
        qualities = [rng.choice((90, 90, 90, 60, 49, 10)) for _ in range(n)]
        if max(qualities) < 50:
            qualities[0] = 80
        videos.append([f"{h},{q},{i}.000"
                       for i, (h, q) in enumerate(zip(hashes, qualities, strict=True))])
    return videos


def flip_with(rng: random.Random, h: str, bits: int) -> str:
    value = int(h, 16)
    for bit in rng.sample(range(256), bits):
        value ^= 1 << bit
    return f"{value:064x}"


def random_query(rng: random.Random, lists: dict[str, list[list[str]]]) -> list[str]:
    """A transcode, an excerpt, a padded copy, a mix of two listed videos, or unrelated."""
    videos = [v for vs in lists.values() for v in vs]
    source = [f.split(",")[0] for f in rng.choice(videos)]
    kind = rng.randrange(5)
    if kind == 0:
        hashes = source
    elif kind == 1:
        hashes = source[: rng.randint(1, len(source))]
    elif kind == 2:
        hashes = source + [f"{rng.getrandbits(256):064x}" for _ in range(rng.randint(1, 30))]
    elif kind == 3:
        hashes = source + [f.split(",")[0] for f in rng.choice(videos)]
    else:
        hashes = [f"{rng.getrandbits(256):064x}" for _ in range(rng.randint(1, 40))]
    drift = rng.choice((0, 4, 12, 25, 31, 32, 40))
    return [f"{flip_with(rng, h, rng.randint(0, drift))},{rng.choice((90, 70, 50, 40))},{i}"
            for i, h in enumerate(hashes)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_multi_index_equals_brute_force_and_the_rule(seed: int) -> None:
    rng = random.Random(seed)
    lists = {"a": random_videos(rng, 60), "b": random_videos(rng, 40)}
    lists["b"] += lists["a"][:5]  # the same videos in two lists
    entries = []
    for name, videos in lists.items():
        text = "".join("vpdq " + json.dumps(v) + "\n" for v in videos)
        for batch in parse_stream(io.BytesIO(text.encode()), "hma"):
            for algorithm, value, labels, _added in batch.iter_entries():
                entries.append(IndexEntry(name, algorithm, value, labels))
    index = HashIndex.build(entries, vpdq_mih=True)
    assert index._frames is not None and index._frames.mih is not None
    assert index.stats()["bytes:vpdq_mih"] > 0
    for _ in range(25):
        query = random_query(rng, lists)
        for radius, listed, attached in ((31, 80.0, 80.0), (20, 50.0, 95.0), (40, 100.0, 10.0)):
            mih = index.search_vpdq(query, radius, 50, listed, attached, method="mih")
            brute = index.search_vpdq(query, radius, 50, listed, attached, method="brute")
            assert mih == brute
            assert {(m.list_name, m.value, m.distance) for m in mih} == reference(
                lists, query, radius, listed, attached)


def test_without_tables_the_multi_index_is_refused() -> None:
    index = index_of(hma())
    assert index._frames is not None and index._frames.mih is None  # few frames: brute
    with pytest.raises(ValueError, match="no vpdq multi-index"):
        index.search_vpdq(features(LISTED), 31, method="mih")


def test_a_video_id_ending_in_zero_bytes_is_reported_whole() -> None:
    rng = random.Random(5)
    while True:  # about 1 video in 256 has an id whose last byte is zero
        hashes = sorted(f"{rng.getrandbits(256):064x}" for _ in range(3))
        video_id = hashlib.sha256(b"".join(bytes.fromhex(h) for h in hashes)).digest()[:8]
        if video_id[-1] == 0:
            break
    index = index_of("vpdq " + json.dumps(features(hashes)) + "\n")
    [match] = index.search_vpdq(features(hashes), 31)
    assert match.value == video_id.hex()
