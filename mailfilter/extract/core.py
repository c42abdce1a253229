"""The shared state of one extraction: the nodes the walk passes around, the limits and the
records (attachments, unscannable parts, defects) it accumulates.

The walk is a trampoline (see `walk.py`): every handler is a generator that records leaves on
the `Context` and yields child nodes; the driver keeps a stack of those generators, so nesting
never uses Python recursion and an error in one handler ends only that handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailfilter.hashing.exact import exact_hashes
from mailfilter.model import Attachment, AttachmentKind, FileEntry, Unscannable
from mailfilter.settings import ExtractSettings

# Below this many bytes a member's expansion ratio is not held against it: small files of
# flat colour or zeros legitimately compress far better than any sane ratio limit, and the
# decoded-bytes budget bounds them anyway.
RATIO_FLOOR = 1 << 20

# At most this many defects are kept per message; one more entry says that some were dropped.
MAX_DEFECTS = 100

# Reason codes (stable: results, logs, metrics and policy use them).
MAX_DEPTH = "max-depth"
MAX_PARTS = "max-parts"
MAX_DECODED_BYTES = "max-decoded-bytes"
MAX_ARCHIVE_MEMBERS = "max-archive-members"
MAX_EXPANSION_RATIO = "max-expansion-ratio"
MAX_IMAGES = "max-images"
ZIP_BOMB = "zip-bomb"
ENCRYPTED_ARCHIVE = "encrypted-archive"
ENCRYPTED_MESSAGE = "encrypted-message"
CORRUPT_ARCHIVE = "corrupt-archive"
UNSUPPORTED_ARCHIVE = "unsupported-archive"
UNSUPPORTED_IMAGE = "unsupported-image-encoding"
PARTIAL_MESSAGE = "partial-message"
PARSE_ERROR = "parse-error"
# More alternative readings of a message's structure than the walk bounds itself to (mime.py).
MAX_READINGS = "max-readings"
CARVE_LIMIT = "carve-limit"  # more signatures carved out of payloads than MAX_CARVED
PAGES_PAST_LIMIT = "pages-past-limit"  # PDF pages with images not rendered (a render limit)
# The decode stage's (images.py; FRAMES_PAST_LIMIT and TRUNCATED are also `incomplete`
# reasons there: fingerprints of the part examined, and the image unscannable without a match)
FRAMES_PAST_LIMIT = "frames-past-limit"
TRUNCATED = "truncated"
# A defect, not a reason: a part declared an image (type or name) with no image signature
# (scanner.py), exact-hashed and counted as looked at.
DECLARED_NOT_AN_IMAGE = "declared-image-not-an-image"


class Stop(BaseException):
    """A limit that ends the whole walk was reached (max-parts, max-images). A BaseException,
    so that handlers catching their own errors never swallow it."""


class NeedsWorker(BaseException):
    """A walk in text-only mode met something that is not plain text (an image, a
    container, a payload hidden in text, or many parts): the message must be examined in a
    worker process. A BaseException for the same reason as Stop."""


INLINE_MAX_PARTS = 16


@dataclass(slots=True)
class Node:
    """Something still to be examined, at `path`, inside `containers` (outermost first)."""

    path: str
    containers: tuple[str, ...]


@dataclass(slots=True)
class EntityNode(Node):
    """A MIME entity (headers and body) lying in `buf[start:end]`.

    `root` marks the top entity of a message (the whole message, or the body of a
    message/rfc822 part): a non-multipart root's body is numbered `path.1`, the way IMAP
    numbers the body of an encapsulated message. `mp_depth` counts the multiparts enclosing
    the entity within its own message.
    """

    buf: bytes
    start: int
    end: int
    root: bool = False
    mp_depth: int = 0
    default_type: str = "text/plain"
    # Part of a second reading of an ambiguous structure: leaves seen in another reading
    # are not handed on twice.
    alternate: bool = False


@dataclass(slots=True)
class PayloadNode(Node):
    """Decoded bytes: a MIME leaf body or a member of a container."""

    data: bytes
    filename: str | None
    content_type: str | None


def child_path(path: str, n: int | str) -> str:
    """The path of the `n`th part under `path`: `""`→`1`, `2`→`2.1`, `2/a.eml`→`2/a.eml/1`."""
    if not path:
        return str(n)
    if _is_part_number(path.rsplit("/", 1)[-1]):
        return f"{path}.{n}"
    return f"{path}/{n}"


def _is_part_number(segment: str) -> bool:
    return bool(segment) and all(c.isdigit() or c == "." for c in segment)


def container_path(path: str, filename: str | None) -> str:
    """The path a container's members hang from: a MIME part adds its filename
    (`2` + photos.zip → `2/photos.zip`, so members read `2/photos.zip/a.jpg`); a member of
    another container already ends in its name."""
    last = path.rsplit("/", 1)[-1]
    if filename and _is_part_number(last):
        name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if name:
            return f"{path}/{name}"
    return path


def member_path(path: str, name: str) -> str:
    """The path of a member called `name` of the container at `path`."""
    name = name.strip().lstrip("/") or "unnamed"
    return f"{path}/{name}" if path else name


class Context:
    """Limits, budgets and everything recorded so far for one message."""

    def __init__(self, limits: ExtractSettings) -> None:
        self.limits = limits
        self.attachments: list[Attachment] = []
        self.files: list[FileEntry] = []
        self._files_seen: set[str] = set()
        self.keep: frozenset[str] = frozenset()  # SHA-256s of files whose bytes to keep
        self.kept: dict[str, bytes] = {}
        self.unscannable: list[Unscannable] = []
        self.defects: list[str] = []
        self.ambiguities: list[str] = []
        # mime.py: extra readings made, and (once the message turned out ambiguous) the
        # leaves handed on, so that another reading does not hand them on again.
        self.readings = 0
        self.seen_leaves: set[tuple[bytes, str | None]] | None = None
        self.parts = 0
        self.members = 0
        self.decoded = 0
        self.images = 0
        self.pdf_objects = 0
        self.message_id: str | None = None
        self.subject: str | None = None
        self._seen_unscannable: set[tuple[str, str]] = set()
        # Text-only mode (`extract_text_only`): anything but text raises NeedsWorker.
        self.text_only = False
        # The raw message and the spans of it that the MIME walk decoded and handed on
        # (`cover`): the raw sweep (sweep.raw_message) leaves those to the walk.
        self.raw: bytes | None = None
        self.covered: list[tuple[int, int]] = []
        # Candidates carved out of payloads at an offset (sweep.MAX_CARVED per message).
        self.carved = 0
        # (length, hash) of each payload the text scan and the sweep handed on: the raw
        # sweep does not hand on again what a text payload's scan found already.
        self.handed: set[tuple[int, int]] = set()

    # --- records ------------------------------------------------------------------------

    def defect(self, path: str, code: str) -> None:
        if len(self.defects) < MAX_DEFECTS:
            self.defects.append(f"{code} at {path or 'message'}")
        elif len(self.defects) == MAX_DEFECTS:
            self.defects.append("more-defects-dropped")

    def ambiguity(self, path: str, code: str) -> None:
        """Record that readers disagree about the structure at `path` (the walk scans every
        reading); once per code and path."""
        entry = f"{code} at {path or 'message'}"
        if entry in self.ambiguities:
            return
        if len(self.ambiguities) < MAX_DEFECTS:
            self.ambiguities.append(entry)
        elif len(self.ambiguities) == MAX_DEFECTS:
            self.ambiguities.append("more-ambiguities-dropped")

    def skip(self, path: str, reason: str, detail: str = "") -> None:
        """Record that the part at `path` could not be (completely) examined."""
        key = (path, reason)
        if key in self._seen_unscannable:
            return
        self._seen_unscannable.add(key)
        self.unscannable.append(Unscannable(mime_path=path, reason=reason, detail=detail))

    def add_image(
        self,
        node: PayloadNode,
        content_type: str | None = None,
        kind: AttachmentKind = AttachmentKind.IMAGE,
    ) -> None:
        """Hand a candidate image (or video) on to the decode stage; stop the walk past
        `max_images` (videos count as images)."""
        if self.text_only:
            raise NeedsWorker
        if self.images >= self.limits.max_images:
            self.skip(node.path, MAX_IMAGES, f"more than {self.limits.max_images} images")
            raise Stop
        self.images += 1
        self.attachments.append(
            Attachment(
                mime_path=node.path,
                filename=node.filename,
                content_type=content_type if content_type is not None else node.content_type,
                data=node.data,
                containers=node.containers,
                kind=kind,
            )
        )

    def add_file(self, node: PayloadNode) -> None:
        """Record a payload that is not an image (an attachment, a container member, a
        carved piece) by its exact hashes, taken here where its bytes are (hashlib reads
        them in place). The same bytes found again (another reading, the sweep) once."""
        exact = exact_hashes(node.data)
        if exact.sha256 in self._files_seen:
            return
        self._files_seen.add(exact.sha256)
        if exact.sha256 in self.keep:
            self.kept[exact.sha256] = bytes(node.data)
        self.files.append(FileEntry(node.path, node.filename, node.content_type,
                                    len(node.data), exact, node.containers))

    def cover(self, buf: bytes, start: int, end: int) -> None:
        """Record that `buf[start:end]` was decoded and handed on to the walk. Only spans of
        the raw message count (other buffers are decoded payloads the sweep never sees)."""
        if buf is self.raw and end > start:
            self.covered.append((start, end))

    # --- limits -------------------------------------------------------------------------

    def count_part(self, path: str) -> None:
        """Count one MIME entity; stop the walk past `max_parts`."""
        self.parts += 1
        if self.text_only and self.parts > INLINE_MAX_PARTS:
            raise NeedsWorker
        if self.parts > self.limits.max_parts:
            self.parts -= 1
            self.skip(path, MAX_PARTS, f"more than {self.limits.max_parts} MIME parts")
            raise Stop

    def count_member(self, container_path: str) -> bool:
        """Count one member of a container (all containers of the message share the budget).
        False, with the container recorded as unscannable, once `max_archive_members` is spent."""
        if self.members >= self.limits.max_archive_members:
            self.skip(
                container_path,
                MAX_ARCHIVE_MEMBERS,
                f"more than {self.limits.max_archive_members} container members in the message",
            )
            return False
        self.members += 1
        return True

    @property
    def remaining(self) -> int:
        """Decoded bytes still allowed for this message."""
        return max(0, self.limits.max_decoded_bytes - self.decoded)

    def fits(self, path: str, size: int) -> bool:
        """Whether `size` more decoded bytes fit the budget; if not, `path` is unscannable."""
        if size > self.remaining:
            self.skip(
                path,
                MAX_DECODED_BYTES,
                f"{size} bytes would pass the {self.limits.max_decoded_bytes}-byte budget "
                f"({self.decoded} used)",
            )
            return False
        return True

    def charge(self, size: int) -> None:
        self.decoded += size

    def ratio_exceeded(self, expanded: int, packed: int) -> bool:
        """Whether `packed` bytes growing to `expanded` breaks `max_expansion_ratio`."""
        if expanded <= RATIO_FLOOR:
            return False
        return expanded > self.limits.max_expansion_ratio * max(packed, 1)

    def expansion_cap(self, packed: int) -> int:
        """The most a stream of `packed` bytes may expand to under the ratio limit."""
        return max(RATIO_FLOOR, int(self.limits.max_expansion_ratio * max(packed, 1)))

    def container_allowed(self, node: Node, kind: str) -> bool:
        """Whether a container at `node` may be opened (its contents would be one level
        deeper); if not, it is recorded as unscannable with `max-depth`."""
        if self.text_only:
            raise NeedsWorker
        if len(node.containers) + 1 > self.limits.max_depth:
            self.skip(
                node.path, MAX_DEPTH, f"{kind} nested more than {self.limits.max_depth} deep"
            )
            return False
        return True


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def read_capped(stream: Readable, cap: int, chunk: int = 1 << 16) -> bytes | None:
    """Read a binary stream to its end, or return None as soon as it passes `cap` bytes."""
    parts: list[bytes] = []
    total = 0
    while True:
        block = stream.read(min(chunk, cap - total + 1))
        if not block:
            break
        parts.append(block)
        total += len(block)
        if total > cap:
            return None
    return b"".join(parts)
