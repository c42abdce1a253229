"""vPDQ lists (issue 16, item 4): HMA `vpdq` lines and JSONL entries are stored as one row
per distinct frame of quality >= 50, and a video matches a listed one when >= 80% of the
listed video's frames are matched, or >= 80% of the attachment's frames are."""

from __future__ import annotations

import io
import json
import random

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
