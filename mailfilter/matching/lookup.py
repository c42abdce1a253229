"""The match stage: one image's fingerprints against the current index."""

from __future__ import annotations

from mailfilter.matching.index import HashIndex
from mailfilter.model import ImageFingerprint, Match
from mailfilter.settings import MatchSettings


def match_fingerprint(
    index: HashIndex, fp: ImageFingerprint, settings: MatchSettings
) -> tuple[Match, ...]:
    """Every list entry the image matches, each (list, algorithm, value) once at its
    smallest distance. Exact hashes match even when the image could not be decoded;
    perceptual hashes only from frames with enough information."""
    algorithms = set(settings.algorithms)
    found: dict[tuple[str, str, str], Match] = {}

    def keep(matches: list[Match]) -> None:
        for m in matches:
            key = (m.list_name, m.algorithm, m.value)
            if key not in found or m.distance < found[key].distance:
                found[key] = m

    for algorithm in ("md5", "sha1", "sha256"):
        if algorithm in algorithms:
            keep(index.lookup_exact(algorithm, getattr(fp.exact, algorithm)))
    if "pdq" in algorithms:
        queries = sorted({h for frame in fp.frames if frame.pdq for h in frame.pdq_dihedral})
        if queries:
            keep(index.search_pdq(queries, settings.pdq_max_distance))
    if "gridhist" in algorithms and settings.gridhist_max_distance > 0:
        for frame in fp.frames:
            for variant in frame.gridhist_dihedral or ((frame.gridhist,) if frame.gridhist else ()):
                keep(index.search_gridhist(variant, settings.gridhist_max_distance))
    return tuple(sorted(found.values(), key=lambda m: (m.distance, m.list_name, m.algorithm)))
