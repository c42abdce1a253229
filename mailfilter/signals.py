"""The signal-type registry: one object per fingerprint algorithm.

A *signal type* (ThreatExchange's `SignalType`) is everything the rest of mailfilter needs
to know about one kind of hash: its name in lists and reports, the width of its values,
how a list value is checked and normalised, which values count as degenerate (they would
match everything), how far apart two values may be and still match (and which setting
says so), how to pull the values to look up out of a fingerprint, and which structure of
the in-memory index holds it. List formats, the store's columns, the index, the lookup,
`hash`, `hashes import` and the settings loop over `SIGNALS` instead of naming
algorithms, so a new algorithm is one entry here, its hash function, and (for a new kind
of index) the index structure.

Index kinds (mailfilter/matching/index.py): `exact` (sorted fixed-width digests, binary
search; one table per signal), `hamming` (256-bit hashes under Hamming distance: the PDQ
multi-index), `vector` (byte vectors under Euclidean distance, brute force) and `frames`
(videos as bags of frame hashes: vPDQ). The index holds one signal of each of the last
three kinds today (`pdq`, `gridhist`, `vpdq`); registering a second raises at import time
rather than mixing their values.

This module is a leaf: it imports the model only, so every stage can use it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from mailfilter.model import ImageFingerprint


class IndexKind(enum.StrEnum):
    EXACT = "exact"
    HAMMING = "hamming"
    VECTOR = "vector"
    FRAMES = "frames"  # a video as a bag of frame hashes (vPDQ)


_HEX = re.compile(r"[0-9a-f]+")


def _exact_queries(name: str) -> Callable[[ImageFingerprint], tuple[str, ...]]:
    def queries(fp: ImageFingerprint) -> tuple[str, ...]:
        value = getattr(fp.exact, name, "")
        return (value,) if value else ()

    return queries


def _pdq_queries(fp: ImageFingerprint) -> tuple[str, ...]:
    """Every frame's PDQ in its 8 orientations (the attachment may be a rotated copy)."""
    return tuple(sorted({h for frame in fp.frames if frame.pdq
                         for h in frame.pdq_dihedral or (frame.pdq,)}))


def _gridhist_queries(fp: ImageFingerprint) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for frame in fp.frames:
        for variant in frame.gridhist_dihedral or ((frame.gridhist,) if frame.gridhist else ()):
            seen.setdefault(variant)
    return tuple(seen)


def _vpdq_queries(fp: ImageFingerprint) -> tuple[str, ...]:
    """A video's vPDQ features (`pdqhex,quality,timestamp`), as the index compares bags."""
    return fp.vpdq


def _pdq_degenerate(raw: bytes, quality: int | None, min_quality: int) -> str | None:
    if raw == bytes(len(raw)):
        return "degenerate pdq (all zeros)"
    if raw == b"\xff" * len(raw):
        return "degenerate pdq (all ones)"
    if quality is not None and quality < min_quality:
        return f"pdq quality below {min_quality}"
    return None


def _gridhist_degenerate(raw: bytes, quality: int | None, min_quality: int) -> str | None:
    return None if any(raw) else "degenerate gridhist (all zeros)"


def _never_degenerate(raw: bytes, quality: int | None, min_quality: int) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class SignalType:
    """One fingerprint algorithm. `width`: bytes of a value. `threshold_setting`: the field
    of `[match]` that holds the largest distance that still matches (None: only equal
    values match); `disabled_at_zero`: a threshold of 0 turns the signal off rather than
    asking for equal values. `aliases`: what other lists call it (HMA signal types,
    NCMEC's fingerprint names), lower case."""

    name: str
    index: IndexKind
    width: int
    description: str
    queries: Callable[[ImageFingerprint], tuple[str, ...]]
    threshold_setting: str | None = None
    disabled_at_zero: bool = False
    aliases: frozenset[str] = field(default_factory=frozenset)
    degenerate: Callable[[bytes, int | None, int], str | None] = _never_degenerate

    def raw(self, value: str) -> bytes:
        """The bytes a list value spells; ValueError when it is not `width` bytes of hex."""
        text = value.strip().lower()
        if len(text) != 2 * self.width or not _HEX.fullmatch(text):
            raise ValueError(f"bad {self.name} value (expected {2 * self.width} hex digits)")
        return bytes.fromhex(text)

    def normalise(self, value: str) -> str:
        return self.raw(value).hex()

    def radius(self, match_settings: object) -> float | None:
        """The match radius under these settings, or None when the signal is off."""
        if self.threshold_setting is None:
            return 0.0
        radius = float(getattr(match_settings, self.threshold_setting))
        if self.disabled_at_zero and radius <= 0:
            return None
        return radius


SIGNALS: Final[tuple[SignalType, ...]] = (
    SignalType(
        "pdq", IndexKind.HAMMING, 32,
        "Meta's PDQ: 256-bit perceptual hash of an image (frames, orientations, trimmed "
        "borders), Hamming distance",
        _pdq_queries, threshold_setting="pdq_max_distance", aliases=frozenset({"pdq"}),
        degenerate=_pdq_degenerate,
    ),
    SignalType(
        "gridhist", IndexKind.VECTOR, 256,  # hashing.gridhist.HASH_BYTES (a test checks)
        "mailfilter's grid-gradient histogram (PhotoDNA's idea), Euclidean distance",
        _gridhist_queries, threshold_setting="gridhist_max_distance", disabled_at_zero=True,
        aliases=frozenset({"gridhist"}), degenerate=_gridhist_degenerate,
    ),
    SignalType(
        "vpdq", IndexKind.FRAMES, 40,  # a stored row: one frame's PDQ + the video's id
        "Meta's vPDQ: the PDQ of a video's frames sampled once a second, matched as a bag "
        "of frame hashes (share of frames within pdq_max_distance, quality >= "
        "pdq_min_quality on both sides)",
        _vpdq_queries, threshold_setting="pdq_max_distance", aliases=frozenset({"vpdq"}),
        degenerate=_pdq_degenerate,
    ),
    SignalType("md5", IndexKind.EXACT, 16, "MD5 of the file's bytes", _exact_queries("md5"),
               aliases=frozenset({"md5", "photo_md5", "video_md5"})),
    SignalType("sha1", IndexKind.EXACT, 20, "SHA-1 of the file's bytes", _exact_queries("sha1"),
               aliases=frozenset({"sha1", "photo_sha1", "video_sha1"})),
    SignalType("sha256", IndexKind.EXACT, 32, "SHA-256 of the file's bytes",
               _exact_queries("sha256"),
               aliases=frozenset({"sha256", "photo_sha256", "video_sha256"})),
)

BY_NAME: Final[Mapping[str, SignalType]] = {s.name: s for s in SIGNALS}
NAMES: Final[tuple[str, ...]] = tuple(BY_NAME)
EXACT: Final[tuple[SignalType, ...]] = tuple(s for s in SIGNALS if s.index is IndexKind.EXACT)
WIDTHS: Final[Mapping[str, int]] = {s.name: s.width for s in SIGNALS}
_BY_ALIAS: Final[Mapping[str, SignalType]] = {a: s for s in SIGNALS for a in s.aliases}


def of_kind(kind: IndexKind) -> Iterator[SignalType]:
    return (s for s in SIGNALS if s.index is kind)


def by_alias(name: str) -> SignalType | None:
    """The signal another list's name for it stands for (`photo_md5`, `video_md5`, `MD5`)."""
    return _BY_ALIAS.get(name.strip().lower())


def get(name: str) -> SignalType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown hash algorithm {name!r}") from None


def _check_registry() -> None:
    for kind in (IndexKind.HAMMING, IndexKind.VECTOR, IndexKind.FRAMES):
        names = [s.name for s in of_kind(kind)]
        if len(names) > 1:  # the index has one structure of each of these kinds
            raise RuntimeError(f"more than one {kind} signal registered: {names}")
    if len(_BY_ALIAS) != sum(len(s.aliases) for s in SIGNALS):
        raise RuntimeError("a list name is an alias of two signals")


_check_registry()
