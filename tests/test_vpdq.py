"""vPDQ: conformance with Meta's reference hashes (../shared/vectors/vpdq), the compact
feature strings and pruning."""

from __future__ import annotations

import bisect
import statistics
from pathlib import Path

import pytest

from mailfilter.hashing.pdq import hamming
from mailfilter.hashing.vpdq import (
    MATCH_DISTANCE,
    MIN_QUALITY,
    VpdqFeature,
    parse_features,
    prune,
)
from mailfilter.settings import VideoSettings
from mailfilter.video import VideoParams, fingerprint_video

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "vpdq"
VIDEOS = sorted(p.stem for p in (VECTORS / "videos").glob("*.mp4")) if VECTORS.is_dir() else []

needs_vectors = pytest.mark.skipif(not VIDEOS, reason=f"no vPDQ vectors at {VECTORS}")


def reference(name: str) -> list[tuple[float, int, str]]:
    """(timestamp, quality, hash) of every frame, from the reference's NAME.txt (full size):
    ``frame,quality,hash,timestamp`` per line."""
    rows = []
    for line in (VECTORS / "hashes" / f"{name}.txt").read_text().splitlines():
        _frame, quality, pdq, timestamp = line.strip().split(",")
        rows.append((float(timestamp), int(quality), pdq))
    return sorted(rows)


def nearest(rows: list[tuple[float, int, str]], timestamp: float) -> tuple[float, int, str]:
    times = [row[0] for row in rows]
    i = bisect.bisect_left(times, timestamp)
    candidates = rows[max(0, i - 1):i + 1]
    return min(candidates, key=lambda row: abs(row[0] - timestamp))


def distances(name: str, frames_per_second: float) -> list[int]:
    params = VideoParams(video=VideoSettings(frames_per_second=frames_per_second))
    result = fingerprint_video((VECTORS / "videos" / f"{name}.mp4").read_bytes(), params)
    assert result.skipped is None and result.incomplete is None, result.detail
    rows = reference(name)
    # Every sampled frame (not only the features left after pruning).
    out = []
    for frame in result.frames:
        whole = frame.frames[0]
        if whole.pdq_quality < MIN_QUALITY or whole.pdq is None:
            continue
        out.append(hamming(whole.pdq, nearest(rows, frame.timestamp)[2]))
    for feature in result.vpdq:
        if feature.quality >= MIN_QUALITY:
            assert hamming(feature.pdq_hex, nearest(rows, feature.timestamp)[2]) <= MATCH_DISTANCE
    return out


@needs_vectors
@pytest.mark.parametrize("name", VIDEOS)
@pytest.mark.parametrize("frames_per_second", [1.0, 5.0])
def test_conforms_to_the_reference(name: str, frames_per_second: float) -> None:
    found = distances(name, frames_per_second)
    assert found, "no frame of quality >= 50 sampled"
    assert max(found) <= MATCH_DISTANCE
    assert statistics.median(found) <= 2, sorted(found)


def test_compact_strings_round_trip() -> None:
    feature = VpdqFeature("ab" * 32, 87, 12.5)
    assert str(feature) == f"{'ab' * 32},87,12.500"
    assert VpdqFeature.from_str(str(feature)) == feature
    # ThreatExchange's own formatting (3 significant digits) parses too.
    assert VpdqFeature.from_str(f"{'AB' * 32},100,1.23e+02").timestamp == 123.0
    assert parse_features([str(feature)]) == (feature,)


@pytest.mark.parametrize("bad", [
    "", "ab,1,2", f"{'ab' * 32},101,1.0", f"{'ab' * 32},50,-1", f"{'zz' * 32},50,1.0",
    f"{'ab' * 32},50,nan", f"{'ab' * 32},50",
])
def test_malformed_compact_strings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        VpdqFeature.from_str(bad)


def test_prune_drops_near_repeats_of_the_last_kept() -> None:
    base = int("f0" * 32, 16)

    def feature(flips: int, t: float) -> VpdqFeature:
        return VpdqFeature(f"{base ^ ((1 << flips) - 1):064x}", 100, t)

    features = [feature(0, 0), feature(1, 1), feature(2, 2), feature(3, 3), feature(3, 4),
                feature(10, 5)]
    kept = prune(features)
    # 1 and 2 bits from the first are dropped, 3 bits is kept, its repeat dropped, 10 kept.
    assert [f.timestamp for f in kept] == [0, 3, 5]
    assert prune(features, distance=-1) == tuple(features)
