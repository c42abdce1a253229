"""The signal-type registry (mailfilter/signals.py): every stage that names algorithms
takes them from it."""

from __future__ import annotations

import pytest

from mailfilter import signals
from mailfilter.hashing.gridhist import HASH_BYTES
from mailfilter.matching import formats, index
from mailfilter.model import ExactHashes, FrameFingerprint, ImageFingerprint
from mailfilter.settings import MatchSettings, Settings


def test_registry_widths_agree_with_the_hash_functions() -> None:
    assert signals.WIDTHS["gridhist"] == HASH_BYTES
    assert signals.WIDTHS == {"pdq": 32, "gridhist": HASH_BYTES, "vpdq": 32 + 8, "md5": 16,
                              "sha1": 20, "sha256": 32}


def test_every_stage_takes_its_algorithms_from_the_registry() -> None:
    assert formats.ALGORITHM_BYTES == signals.WIDTHS
    assert index.ALGORITHMS == signals.NAMES
    assert dict(index.EXACT_ALGORITHMS) == {s.name: s.width for s in signals.EXACT}
    assert MatchSettings().algorithms == signals.NAMES


def test_unknown_algorithm_in_settings_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: pdq, gridhist, vpdq, md5, sha1, sha256"):
        MatchSettings(algorithms=("pdq", "photodna"))


def test_aliases_of_other_lists() -> None:
    by_alias = signals.by_alias
    assert by_alias("video_md5") is signals.BY_NAME["md5"]
    assert by_alias("MD5") is signals.BY_NAME["md5"]
    assert by_alias("photo_sha1") is signals.BY_NAME["sha1"]
    assert by_alias("vpdq") is signals.BY_NAME["vpdq"]
    assert by_alias("tmk") is None


def test_values_are_checked_and_normalised() -> None:
    md5 = signals.BY_NAME["md5"]
    assert md5.normalise(" " + "AB" * 16 + "\n") == "ab" * 16
    with pytest.raises(ValueError, match="expected 32 hex digits"):
        md5.raw("ab" * 15)
    with pytest.raises(ValueError):
        md5.raw("zz" * 16)


def test_queries_come_from_the_fingerprint() -> None:
    pdq = "f" * 63 + "0"
    frame = FrameFingerprint(0, False, pdq, 90, (pdq, "0" * 63 + "f"), None)
    fp = ImageFingerprint(ExactHashes("a" * 32, "b" * 40, "c" * 64), frames=(frame,))
    assert signals.BY_NAME["pdq"].queries(fp) == ("0" * 63 + "f", pdq)
    assert signals.BY_NAME["md5"].queries(fp) == ("a" * 32,)
    assert signals.BY_NAME["gridhist"].queries(fp) == ()


def test_radius_from_settings() -> None:
    match = Settings().match
    assert signals.BY_NAME["pdq"].radius(match) == match.pdq_max_distance
    assert signals.BY_NAME["sha256"].radius(match) == 0.0
    off = MatchSettings(gridhist_max_distance=0)
    assert signals.BY_NAME["gridhist"].radius(off) is None


def test_degenerate_values() -> None:
    pdq = signals.BY_NAME["pdq"]
    assert pdq.degenerate(bytes(32), None, 50) == "degenerate pdq (all zeros)"
    assert pdq.degenerate(b"\x01" * 32, 40, 50) == "pdq quality below 50"
    assert pdq.degenerate(b"\x01" * 32, 90, 50) is None
    assert signals.BY_NAME["md5"].degenerate(bytes(16), None, 50) is None
