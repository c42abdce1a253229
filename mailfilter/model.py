"""The small frozen values that flow between stages.

Every stage takes and returns these; no stage imports another stage. Hashes travel as
lowercase hex strings because that is how lists, logs, JSON and Redis carry them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP or milter front end knows about a message besides its bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[tuple[str, ...], ...] = ()
    client_addr: str | None = None
    client_name: str | None = None
    helo: str | None = None
    queue_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, RFC 3463 enhanced status code, short text."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class AttachmentKind(enum.StrEnum):
    IMAGE = "image"  # decoded and fingerprinted (perceptual and exact hashes)
    VIDEO = "video"  # frames sampled and fingerprinted (vPDQ, PDQ per frame, exact hashes)
    FILE = "file"  # any other file: exact hashes


@dataclass(frozen=True, slots=True)
class Attachment:
    """A candidate image (or video: `kind`) payload found in a message, before any
    decoding.

    `mime_path` numbers parts the way IMAP does (`2.1.3`); members of containers
    append `/name` (e.g. `2/photos.zip/a.jpg`). `containers` is the chain of
    containers the payload was found in, outermost first (e.g. `message/rfc822`,
    `application/zip`).
    """

    mime_path: str
    filename: str | None
    content_type: str | None
    data: bytes
    containers: tuple[str, ...] = ()
    kind: AttachmentKind = AttachmentKind.IMAGE


@dataclass(frozen=True, slots=True)
class Unscannable:
    """A part of a message that could not be examined, and why (a stable reason code)."""

    mime_path: str
    reason: str
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"mime_path": self.mime_path, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ExactHashes:
    md5: str
    sha1: str
    sha256: str


@dataclass(frozen=True, slots=True)
class FileEntry:
    """An attachment, container member or carved payload that is not an image: only its
    exact hashes travel on (taken where its bytes were found, so they are never copied to
    another process), and they are matched against the exact lists like an image's."""

    mime_path: str
    filename: str | None
    content_type: str | None
    size: int
    exact: ExactHashes
    containers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Extraction:
    """What the extract stage found in one message: candidate images (with their bytes,
    for the decode stage) and every other file (its exact hashes)."""

    attachments: tuple[Attachment, ...]
    unscannable: tuple[Unscannable, ...] = ()
    defects: tuple[str, ...] = ()
    message_id: str | None = None
    subject: str | None = None
    parts: int = 0
    # Where readers disagree about the structure ("code at path"); every reading was scanned.
    ambiguities: tuple[str, ...] = ()
    files: tuple[FileEntry, ...] = ()
    # The bytes of the files asked for by SHA-256 (`extract(..., keep=...)`: a CyberTipline
    # upload of a matched file); empty in a scan, where only hashes travel.
    kept_files: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class FrameFingerprint:
    """Perceptual fingerprints of one frame of an image, in one framing.

    `trimmed` is true for the copy whose near-uniform borders were cut away.
    `pdq_dihedral` and `gridhist_dihedral` hold the hashes of the 8 rotations/flips, the
    original first (the order of `mailfilter.hashing.pdq.DIHEDRAL_NAMES` for PDQ).
    `pdq` is None when the frame has too little information (`reason` says why);
    `gridhist` is None when its own information gate refused the frame.
    """

    frame: int
    trimmed: bool
    pdq: str | None
    pdq_quality: int
    pdq_dihedral: tuple[str, ...]
    gridhist: str | None
    reason: str | None = None
    gridhist_dihedral: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageFingerprint:
    """Everything the hash stage knows about one attachment's bytes.

    Exact hashes exist for every payload, even one that failed to decode: a list
    entry may still match it byte for byte. `skipped` holds the reason code when
    the image could not be decoded or broke a limit; then `frames` is empty.
    `incomplete` holds the reason code when only part of the image was examined
    (`frames-past-limit`, `truncated`, or a later frame's reason): `frames` then hold the
    part that was, a match on them is a match, and without one the image is unscannable.
    `detail` explains `skipped` or `incomplete`.
    """

    exact: ExactHashes
    width: int = 0
    height: int = 0
    image_format: str | None = None
    frames: tuple[FrameFingerprint, ...] = ()
    frame_count: int = 0
    skipped: str | None = None
    detail: str = ""
    incomplete: str | None = None
    # Videos: the sampled frames' vPDQ features (`pdqhex,quality,timestamp`), the time of
    # each sample (FrameFingerprint.frame indexes it) and the duration in seconds.
    vpdq: tuple[str, ...] = ()
    frame_times: tuple[float, ...] = ()
    duration: float = 0.0

    @property
    def primary(self) -> FrameFingerprint | None:
        """The untrimmed first frame: what a single-hash view (`hash`, logs) shows."""
        for fp in self.frames:
            if not fp.trimmed:
                return fp
        return self.frames[0] if self.frames else None


@dataclass(frozen=True, slots=True)
class Match:
    list_name: str
    algorithm: str
    distance: float
    labels: tuple[str, ...] = ()
    value: str = ""
    at: float | None = None  # a video: the time (seconds) of the frame that matched

    def as_json(self) -> dict[str, Any]:
        out = {"list": self.list_name, "algorithm": self.algorithm,
               "distance": self.distance, "labels": list(self.labels), "value": self.value}
        if self.at is not None:
            out["at"] = self.at
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Match:
        """The inverse of `as_json`; KeyError/TypeError/ValueError for anything else."""
        at = data.get("at")
        return cls(list_name=str(data["list"]), algorithm=str(data["algorithm"]),
                   distance=float(data["distance"]), labels=tuple(str(x) for x in data["labels"]),
                   value=str(data["value"]), at=None if at is None else float(at))


class Verdict(enum.StrEnum):
    CLEAN = "clean"
    MATCH = "match"
    UNSCANNABLE = "unscannable"


@dataclass(frozen=True, slots=True)
class AttachmentResult:
    mime_path: str
    filename: str | None
    content_type: str | None
    fingerprint: ImageFingerprint
    matches: tuple[Match, ...] = ()
    containers: tuple[str, ...] = ()
    kind: AttachmentKind = AttachmentKind.IMAGE

    def as_json(self) -> dict[str, Any]:
        """What is known about the attachment, for `scan --json` and quarantine records:
        names, types, sizes and hashes, never content (matches are the caller's to add)."""
        fp = self.fingerprint
        primary = fp.primary
        return {
            "mime_path": self.mime_path,
            "kind": self.kind.value,
            "filename": self.filename,
            "content_type": self.content_type,
            "containers": list(self.containers),
            "width": fp.width,
            "height": fp.height,
            "format": fp.image_format,
            "md5": fp.exact.md5,
            "sha1": fp.exact.sha1,
            "sha256": fp.exact.sha256,
            "pdq": primary.pdq if primary else None,
            "pdq_quality": primary.pdq_quality if primary else None,
            "gridhist": primary.gridhist if primary else None,
            "skipped": fp.skipped,
            "incomplete": fp.incomplete,
        }


@dataclass(frozen=True, slots=True)
class ScanResult:
    source: str
    message_id: str | None
    verdict: Verdict
    attachments: tuple[AttachmentResult, ...] = ()
    unscannable: tuple[Unscannable, ...] = ()
    defects: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    ambiguities: tuple[str, ...] = ()
