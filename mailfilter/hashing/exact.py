"""Exact hashes of the original attachment bytes: what MD5/SHA-1/SHA-256 lists match."""

from __future__ import annotations

import hashlib

from mailfilter.model import ExactHashes


def exact_hashes(data: bytes) -> ExactHashes:
    return ExactHashes(
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        sha1=hashlib.sha1(data, usedforsecurity=False).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
    )
