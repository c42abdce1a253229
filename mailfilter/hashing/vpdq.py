"""vPDQ: Meta's video hash, a bag of PDQ hashes of frames sampled on a time grid.

Follows the reference (facebook/ThreatExchange, vpdq/cpp: filehasher.cpp, pdqbufferhasher.cpp;
python-threatexchange extensions/vpdq/vpdq_util.py for the compact form):

- Each sampled frame is converted to RGB24 at its full size (the reference does this with
  FFmpeg's swscale; `mailfilter.video` does the same, with the flags that reproduce it), then
  PDQ's luma ``Y = 0.299 R + 0.587 G + 0.114 B`` in float32 (``fillFloatLumaFromRGB``) and
  PDQ of that luma at full size (`mailfilter.hashing.pdq`, bit-identical to the C++ PDQ).
- A feature is ``(pdq hex, quality, timestamp in seconds)``; its compact string, as
  ThreatExchange's ``VpdqCompactFeature`` and HMA's ``vpdq`` signal write them, is
  ``pdqhex,quality,timestamp``. The timestamp is written with 3 decimals: ThreatExchange
  formats it with ``:.3`` (3 *significant* digits, so 123.4 s becomes ``1.23e+02``); both
  parse with ``float()``, and matching never looks at timestamps.
- Pruning (the reference README's optional step): a feature whose hash is within
  `PRUNE_DISTANCE` bits of the last feature *kept* is dropped, so a still scene sampled for
  a minute is one feature. Matching treats features as a bag of unique hashes anyway
  (python-threatexchange dedupes exact repeats before counting); pruning near repeats as
  well keeps the bag and the index small without changing what matches (2 bits is far
  inside the 31-bit match distance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mailfilter.hashing.pdq import HASH_HEX_LENGTH, PdqResult, hamming, pdq_from_luma

__all__ = [
    "MATCH_DISTANCE",
    "MIN_QUALITY",
    "PRUNE_DISTANCE",
    "VpdqFeature",
    "feature_from_luma",
    "luma_from_rgb",
    "parse_features",
    "prune",
]

#: Features within this many bits of the last kept one are pruned (the reference README's
#: example value of D_prune).
PRUNE_DISTANCE = 2
#: The reference's frame match distance and quality filter (vpdq/README.md,
#: python-threatexchange VPDQ_DISTANCE_THRESHOLD / VPDQ_QUALITY_THRESHOLD).
MATCH_DISTANCE = 31
MIN_QUALITY = 50

# PDQ's luma coefficients (pdqhashing.cpp: luma_from_R_coeff etc.), applied in float32.
_LUMA_COEFFS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class VpdqFeature:
    """One sampled frame's PDQ hash (64 hex), its quality (0-100) and its time (seconds)."""

    pdq_hex: str
    quality: int
    timestamp: float

    def __str__(self) -> str:
        return f"{self.pdq_hex},{self.quality},{self.timestamp:.3f}"

    @classmethod
    def from_str(cls, compact: str) -> VpdqFeature:
        """Parse ``pdqhex,quality,timestamp`` (ValueError when malformed or out of range)."""
        parts = compact.strip().split(",")
        if len(parts) != 3:
            raise ValueError(f"expected 'pdqhex,quality,timestamp', got {compact!r}")
        pdq_hex, quality_text, time_text = parts
        pdq_hex = pdq_hex.strip().lower()
        if len(pdq_hex) != HASH_HEX_LENGTH:
            raise ValueError(f"expected a {HASH_HEX_LENGTH}-hex-digit PDQ hash in {compact!r}")
        int(pdq_hex, 16)  # ValueError when not hex
        quality = int(quality_text)
        timestamp = float(time_text)
        if not 0 <= quality <= 100:
            raise ValueError(f"quality {quality} out of 0..100 in {compact!r}")
        if not math.isfinite(timestamp) or timestamp < 0:
            raise ValueError(f"timestamp {time_text!r} is not a time in {compact!r}")
        return cls(pdq_hex, quality, timestamp)


def parse_features(compact: Iterable[str]) -> tuple[VpdqFeature, ...]:
    """Features from their compact strings (as in an HMA ``vpdq`` signal's JSON list)."""
    return tuple(VpdqFeature.from_str(item) for item in compact)


def luma_from_rgb(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """PDQ's float32 luma of an H x W x 3 RGB24 frame (as ``fillFloatLumaFromRGB``)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB frame, got shape {rgb.shape}")
    luma: npt.NDArray[np.float32] = rgb.astype(np.float32) @ _LUMA_COEFFS
    return luma


def feature_from_pdq(pdq: PdqResult, timestamp: float) -> VpdqFeature:
    return VpdqFeature(pdq.hash, pdq.quality, round(float(timestamp), 3))


def feature_from_luma(luma: npt.NDArray[np.float32], timestamp: float) -> VpdqFeature:
    """The vPDQ feature of one frame's full-size luma."""
    return feature_from_pdq(pdq_from_luma(luma), timestamp)


def prune(features: Iterable[VpdqFeature],
          distance: int = PRUNE_DISTANCE) -> tuple[VpdqFeature, ...]:
    """Drop each feature within `distance` bits of the last feature kept (consecutive near
    repeats); distance < 0 keeps every feature."""
    kept: list[VpdqFeature] = []
    for feature in features:
        if kept and distance >= 0 and hamming(feature.pdq_hex, kept[-1].pdq_hex) <= distance:
            continue
        kept.append(feature)
    return tuple(kept)
