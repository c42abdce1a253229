"""Real-world corpus: the test messages of public mail libraries (see ORIGIN.md and
gather_corpus.py; the messages are not committed, the tests skip without them).

For every message, two independent extractors — Python's `email` package (policy.default)
and ripmime — pull out their payloads; those Pillow opens as images count. Every image that
BOTH find (by SHA-256 of its bytes; by PDQ should mailfilter have re-encoded it) must be
among the attachments of `mailfilter scan --json` (run once over the whole directory, the
way an operator runs it). One reference alone is not enough: each has quirks (ripmime reads
OLE streams and stray uuencode, Python keeps some junk a viewer would not show), and where
the two agree a mail client would show the picture.

And fewer than 1% of the messages may be unscannable for reasons other than encryption,
passwords or documented limits.
"""

from __future__ import annotations

import collections
import email
import email.policy
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mailfilter.scanner import LOOKED_AT

HERE = Path(__file__).resolve().parent
CORPUS = Path(os.environ.get("MAILFILTER_REAL_WORLD_CORPUS", HERE / "messages"))

# Reasons that are allowed to make a message unscannable: a secret we do not have, or a
# documented limit (README, "What is not examined"). Everything else counts against the 1%.
# zip-bomb is the expansion-ratio limit under another name (README lists them together).
# partial-message: a fragment of a message split over several mails (RFC 2046
# message/partial); the whole is only in the other mails, which are not joined (README).
EXCUSED_REASONS = frozenset({"encrypted-archive", "encrypted-message", "zip-bomb",
                             "partial-message"})
EXCUSED_PREFIXES = ("max-",)
MAX_OTHER_UNSCANNABLE = 0.01

# Pillow formats without a signature: Pillow "opens" arbitrary bytes as these (a TGA header
# is any 18 bytes), so a reference that finds one has found noise, not a picture.
NO_SIGNATURE_FORMATS = frozenset({"TGA", "IPTC", "PCD", "SPIDER", "MPEG", "XVTHUMB", "FITS"})
# PostScript is a program, not a picture: Pillow "opens" it by running Ghostscript. Its
# embedded previews (TIFF, WMF) are carved like any glued file; rendering PostScript is a
# documented gap (README, "Not read yet").
DOCUMENT_FORMATS = frozenset({"EPS"})
PDQ_SAME_IMAGE = 31  # bits; the default match threshold (re-encoded copies stay well within)
RIPMIME_SECONDS = 20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CORPUS.is_dir() or not any(CORPUS.iterdir()),
                       reason=f"no real-world corpus at {CORPUS} (tests/corpus/gather_corpus.py)"),
]

try:  # HEIC photos count as images for the references as they do for mailfilter
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - a default dependency
    pass


def image_sha256(data: bytes) -> str | None:
    """The SHA-256 of `data` if Pillow opens it as an image with a signature, else None."""
    if len(data) < 8:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
    except Exception:  # any failure means "not an image" to this reference
        return None
    if fmt is None or fmt in NO_SIGNATURE_FORMATS or fmt in DOCUMENT_FORMATS:
        return None
    return hashlib.sha256(data).hexdigest()


def python_email_images(raw: bytes) -> dict[str, bytes]:
    """Images among the leaf payloads of Python's email package (policy.default)."""
    found: dict[str, bytes] = {}
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = list(msg.walk())
    except Exception:  # a reference that fails finds nothing
        return found
    for part in parts:
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:  # likewise
            continue
        if isinstance(payload, bytes) and (digest := image_sha256(payload)):
            found[digest] = payload
    return found


def ripmime_images(path: Path) -> dict[str, bytes]:
    """Images among the files ripmime writes for the message."""
    found: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="ripmime-") as out:
        try:
            subprocess.run(["ripmime", "-q", "-i", str(path), "-d", out,
                            "--timeout", str(RIPMIME_SECONDS)],
                           capture_output=True, timeout=RIPMIME_SECONDS + 10, check=False)
        except subprocess.TimeoutExpired:
            return found
        for f in Path(out).rglob("*"):
            if f.is_file() and (digest := image_sha256(data := f.read_bytes())):
                found[digest] = data
    return found


@dataclass
class Scanned:
    """What `mailfilter scan --json` said about one file (a file read as a mailbox gives
    several records: their union)."""

    verdicts: list[str] = field(default_factory=list)
    sha256: set[str] = field(default_factory=set)
    pdq: list[str] = field(default_factory=list)
    reasons: set[str] = field(default_factory=set)

    def add(self, record: dict[str, Any]) -> None:
        self.verdicts.append(record["verdict"])
        for a in record["attachments"]:
            self.sha256.add(a["sha256"])
            if a.get("pdq"):
                self.pdq.append(a["pdq"])
            if a.get("skipped") and a["skipped"] not in LOOKED_AT:  # (those are defects)
                self.reasons.add(a["skipped"])
            if a.get("incomplete") and not a.get("matches"):
                self.reasons.add(a["incomplete"])
        self.reasons.update(u["reason"] for u in record.get("unscannable", ()))

    @property
    def unscannable(self) -> bool:
        return "unscannable" in self.verdicts


def messages() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scanned]:
    """`mailfilter scan --json` over the corpus directory, once, keyed by file name."""
    hashes = tmp_path_factory.mktemp("hashes") / "none.sha256"
    hashes.write_text("0" * 64 + "\n")  # nothing matches: only what is found counts here
    env = {**os.environ, "MAILFILTER_STORE__PATH": str(tmp_path_factory.mktemp("state"))}
    out = subprocess.run(
        [sys.executable, "-m", "mailfilter", "scan", "--json", "--hashes", str(hashes),
         "--hashes-format", "sha256", str(CORPUS)],
        capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert out.returncode in (0, 2), out.stderr[-2000:]
    names = {p.name for p in messages()}
    result: dict[str, Scanned] = collections.defaultdict(Scanned)
    for line in out.stdout.splitlines():
        record = json.loads(line)
        if "source" not in record:
            continue  # the summary line
        name = Path(record["source"]).name
        if name not in names and ":" in name:  # "file:N", the Nth message of a mailbox
            name = name.rsplit(":", 1)[0]
        result[name].add(record)
    return result


@dataclass
class References:
    python: dict[str, bytes]
    ripmime: dict[str, bytes]

    @property
    def both(self) -> dict[str, bytes]:
        return {k: v for k, v in self.python.items() if k in self.ripmime}


@pytest.fixture(scope="module")
def references() -> dict[str, References]:
    if shutil.which("ripmime") is None:
        pytest.skip("ripmime is not installed (Debian package ripmime; CI installs it)")

    def one(path: Path) -> tuple[str, References]:
        return path.name, References(python_email_images(path.read_bytes()),
                                     ripmime_images(path))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, messages()))


def _pdq_of(data: bytes) -> str | None:
    from mailfilter.fingerprint import FingerprintParams, fingerprint_image
    from mailfilter.settings import Settings

    fp = fingerprint_image(data, FingerprintParams.from_settings(Settings()))
    return next((f.pdq for f in fp.frames if f.pdq), None)


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _pillow_format(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return str(im.format)


def _misses(scanned: dict[str, Scanned],
            references: dict[str, References]) -> Iterator[tuple[str, str, int, str]]:
    """(file, sha256, size, why) of each image both references find that mailfilter did not
    examine as an image: not among its attachments at all, or among them only as a payload
    of no known image format (exact hashes only, no perceptual hash can ever match it)."""
    from mailfilter.magic import image_format

    for name, refs in sorted(references.items()):
        seen = scanned.get(name, Scanned())
        for digest, data in refs.both.items():
            fmt = _pillow_format(data)
            if digest in seen.sha256:
                if image_format(data) is None:
                    yield name, digest, len(data), f"{fmt}: a format mailfilter does not know"
                continue
            pdq = _pdq_of(data) if seen.pdq else None
            if pdq is not None and any(_hamming(pdq, p) <= PDQ_SAME_IMAGE for p in seen.pdq):
                continue
            yield name, digest, len(data), f"{fmt}: not among the attachments"


def test_every_image_both_references_find_is_found(
        scanned: dict[str, Scanned], references: dict[str, References]) -> None:
    both = sum(len(r.both) for r in references.values())
    only_python = sum(len(r.python.keys() - r.ripmime.keys()) for r in references.values())
    only_ripmime = sum(len(r.ripmime.keys() - r.python.keys()) for r in references.values())
    mailfilter = sum(len(s.sha256) for s in scanned.values())
    misses = list(_misses(scanned, references))
    print(f"\nreal-world corpus: {len(references)} messages; images found by both references "
          f"{both} (Python email only {only_python}, ripmime only {only_ripmime}); "
          f"mailfilter attachments {mailfilter}; missed {len(misses)}")
    for name, digest, size, why in misses:
        print(f"  missed: {name} sha256 {digest[:16]}… ({size} bytes) {why}")
    # Not asserted (one reference alone is often wrong), but worth a look when it grows.
    for name, refs in sorted(references.items()):
        seen = scanned.get(name, Scanned())
        for who, found in (("Python email", refs.python), ("ripmime", refs.ripmime)):
            for digest, data in found.items():
                if digest not in refs.both and digest not in seen.sha256:
                    print(f"  only {who} finds: {name} sha256 {digest[:16]}… "
                          f"({len(data)} bytes, {_pillow_format(data)})")
    assert not misses, f"{len(misses)} images both references find were not examined by " \
        f"mailfilter: {sorted({m[0] for m in misses})[:20]}"


def _excused(reason: str) -> bool:
    return reason in EXCUSED_REASONS or reason.startswith(EXCUSED_PREFIXES)


def test_few_messages_are_unscannable_for_other_reasons(
        scanned: dict[str, Scanned]) -> None:
    total = len(messages())
    per_reason: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    other: list[str] = []
    for name, s in sorted(scanned.items()):
        if not s.unscannable:
            continue
        for reason in s.reasons:
            per_reason[reason] += 1
            examples[reason].append(name)
        if not s.reasons or not all(_excused(r) for r in s.reasons):
            other.append(name)
    unscannable = sum(1 for s in scanned.values() if s.unscannable)
    rate = len(other) / total
    print(f"\nreal-world corpus: {total} messages, {unscannable} unscannable, "
          f"{len(other)} ({rate:.1%}) for reasons other than encryption or limits")
    for reason, count in per_reason.most_common():
        mark = " (excused)" if _excused(reason) else ""
        print(f"  {reason}{mark}: {count} messages, e.g. {', '.join(examples[reason][:3])}")
    assert rate < MAX_OTHER_UNSCANNABLE, (
        f"{len(other)} of {total} messages ({rate:.1%}) are unscannable for other reasons: "
        f"{dict(per_reason.most_common())}")
