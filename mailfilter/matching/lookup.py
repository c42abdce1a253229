"""The match stage: one image's fingerprints against the current index."""

from __future__ import annotations

from dataclasses import replace

from mailfilter import signals
from mailfilter.hashing.pdq import hamming
from mailfilter.matching.index import HashIndex
from mailfilter.model import ImageFingerprint, Match
from mailfilter.settings import MatchSettings


def match_fingerprint(
    index: HashIndex, fp: ImageFingerprint, settings: MatchSettings
) -> tuple[Match, ...]:
    """Every list entry the attachment matches, each (list, algorithm, value) once at its
    smallest distance: for every signal type switched on, the values it pulls out of the
    fingerprint (exact hashes even when the image could not be decoded; perceptual hashes
    only from frames with enough information), searched within the signal's radius."""
    algorithms = set(settings.algorithms)
    found: dict[tuple[str, str, str], Match] = {}
    for signal in signals.SIGNALS:
        if signal.name not in algorithms:
            continue
        radius = signal.radius(settings)
        queries = signal.queries(fp)
        if radius is None or not queries:
            continue
        for m in index.search(signal.name, queries, radius, settings):
            key = (m.list_name, m.algorithm, m.value)
            if key not in found or m.distance < found[key].distance:
                found[key] = m
    if fp.frame_times:
        found = {key: _with_time(m, fp) for key, m in found.items()}
    return tuple(sorted(found.values(), key=lambda m: (m.distance, m.list_name, m.algorithm)))


def _with_time(m: Match, fp: ImageFingerprint) -> Match:
    """A video's match in an image list, with the time of the sampled frame that matched
    (the frame nearest the listed hash), for reports and quarantine records."""
    if signals.get(m.algorithm).index is not signals.IndexKind.HAMMING:
        return m
    nearest: tuple[int, int] | None = None
    for frame in fp.frames:
        for h in frame.pdq_dihedral or ((frame.pdq,) if frame.pdq else ()):
            d = hamming(h, m.value)
            if nearest is None or d < nearest[0]:
                nearest = (d, frame.frame)
    if nearest is None or nearest[1] >= len(fp.frame_times):
        return m
    return replace(m, at=round(fp.frame_times[nearest[1]], 3))
