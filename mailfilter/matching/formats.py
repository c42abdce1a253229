"""Hash list parsers: a file in one of the contract's formats -> batches of entries.

Files run to millions of lines, so parsing streams: a parser yields `ParsedBatch`es of at
most `batch_size` entries, each holding its entries in compact columns (raw hash bytes
concatenated, label-set ids, added times) rather than one Python object per line, plus
the lines it skipped (line number and a stable reason) and tombstones (removals, from
NCMEC `<deletedImage>` records). Label sets are interned in one `LabelTable` per parse:
lists carry a handful of distinct label sets over millions of entries.

Formats (`FORMATS`):

- ``pdq``: ``HEX64[,anything]``, optional ``hash=`` prefix; ThreatExchange's
  ``hash,quality[,filename]`` and ``hash=…,quality=…`` forms give a quality;
- ``te-csv``: ThreatExchange CSV ``indicator,first_descriptor_id,added_on,labels`` with a
  header; labels space- or comma-separated (quoted); the indicator's length says its type
  (64 hex: PDQ, 32: MD5, 40: SHA-1);
- ``md5`` / ``sha1`` / ``sha256``: one hex hash per line (``md5sum`` output works too);
- ``hma``: Hasher-Matcher-Actioner exports, ``SIGNAL_TYPE VALUE`` per line;
- ``ncmec-xml``: the NCMEC hash-sharing API's ``queryResult`` XML, parsed by expat in
  chunks with DTDs and entity declarations refused (no entity-expansion bombs, no external
  entities); ``<deletedImage>`` records become tombstones;
- ``jsonl``: our own export, ``{"list","algorithm","value","labels","added"}`` per line.

PDQ hashes that cannot identify anything are refused and counted as ``degenerate``: all
zeros, all ones, and a given quality under ``pdq_min_quality``. Blank lines and lines
starting with ``#`` are ignored. Gzip-compressed files are read transparently.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import pyexpat
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, cast

from mailfilter import signals
from mailfilter.errors import ListFormatError

__all__ = [
    "ALGORITHM_BYTES",
    "FORMATS",
    "Column",
    "LabelTable",
    "ListFormatError",
    "ParseTally",
    "ParsedBatch",
    "detect_format",
    "format_added",
    "normalise_labels",
    "open_list_file",
    "parse_added",
    "parse_file",
    "parse_stream",
]

ALGORITHM_BYTES: Final = signals.WIDTHS
"""Every algorithm a list entry can have, and the length of its raw value in bytes."""

FORMATS: Final = ("pdq", "te-csv", "md5", "sha1", "sha256", "hma", "ncmec-xml", "jsonl")

MAX_EXAMPLES: Final = 10
"""Bad lines remembered (line number, reason) for the import report."""

MAX_REASONS: Final = 64
"""Distinct skip reasons kept apart; more (a hostile file) are counted as 'other'."""

MAX_LABELS: Final = 32
MAX_LABEL_LENGTH: Final = 200

DEFAULT_BATCH: Final = 65_536

_ZERO_PDQ: Final = bytes(32)
_ONES_PDQ: Final = b"\xff" * 32

# Signal types of HMA and fingerprint names of NCMEC that are not ours (skipped by name).
_HMA_KNOWN_UNSUPPORTED: Final = frozenset(
    {"url", "url_md5", "raw_text", "trend_query", "tmk", "photodna"}
)
_WORD = re.compile(r"[a-z0-9_.-]{1,32}")
_SPLIT_FIELDS = re.compile(r"[\s,]+")
_LABEL_SPLIT = re.compile(r"[\s,]+")


# --- compact batches ---------------------------------------------------------------------


class LabelTable:
    """Interned label sets: id 0 is the empty set, ids are stable for the table's life."""

    __slots__ = ("_ids", "sets")

    def __init__(self) -> None:
        self.sets: list[tuple[str, ...]] = [()]
        self._ids: dict[tuple[str, ...], int] = {(): 0}

    def id_of(self, labels: tuple[str, ...]) -> int:
        """Id of an already normalised label set (see `normalise_labels`)."""
        found = self._ids.get(labels)
        if found is None:
            found = self._ids[labels] = len(self.sets)
            self.sets.append(labels)
        return found

    def __len__(self) -> int:
        return len(self.sets)


def normalise_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Labels as stored: stripped, no empties, no duplicates, sorted, bounded in number
    and length (a list file is untrusted input)."""
    out = {lab.strip()[:MAX_LABEL_LENGTH] for lab in labels}
    out.discard("")
    return tuple(sorted(out)[:MAX_LABELS])


@dataclass(slots=True)
class Column:
    """Entries of one algorithm: `values` is the raw hashes concatenated (fixed width per
    algorithm), `label_ids` index the parse's `LabelTable`, `added` is epoch seconds (0:
    unknown, the store fills in the import time)."""

    values: bytearray = field(default_factory=bytearray)
    label_ids: array[int] = field(default_factory=lambda: array("I"))
    added: array[int] = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.label_ids)


@dataclass(slots=True)
class ParsedBatch:
    """A slice of a parse: entries per algorithm, tombstones, skipped lines."""

    labels: LabelTable
    columns: dict[str, Column] = field(default_factory=dict)
    tombstones: list[tuple[str, bytes]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    lines: int = 0  # input lines consumed by this batch
    degenerate: int = 0  # PDQ hashes refused as degenerate (also in `skipped`)

    @property
    def entry_count(self) -> int:
        return sum(len(c) for c in self.columns.values())

    def iter_entries(self) -> Iterator[tuple[str, str, tuple[str, ...], int]]:
        """(algorithm, hex value, labels, added) per entry: for tests and small batches."""
        for algorithm, col in self.columns.items():
            width = ALGORITHM_BYTES[algorithm]
            for i in range(len(col)):
                raw = bytes(col.values[i * width:(i + 1) * width])
                yield algorithm, raw.hex(), self.labels.sets[col.label_ids[i]], col.added[i]


@dataclass
class ParseTally:
    """Running totals over the batches of one parse (what an import report shows)."""

    lines: int = 0
    entries: Counter[str] = field(default_factory=Counter)
    tombstones: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)
    degenerate: int = 0

    def add(self, batch: ParsedBatch) -> None:
        self.lines += batch.lines
        for algorithm, col in batch.columns.items():
            self.entries[algorithm] += len(col)
        self.tombstones += len(batch.tombstones)
        self.degenerate += batch.degenerate
        for line, reason in batch.skipped:
            if reason not in self.skipped and len(self.skipped) >= MAX_REASONS:
                reason = "other"
            self.skipped[reason] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append((line, reason))

    @property
    def loaded(self) -> int:
        return sum(self.entries.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


class _Builder:
    """Collects parsed lines into the current batch; validates every value."""

    def __init__(self, min_quality: int, batch_size: int) -> None:
        self.labels = LabelTable()
        self.min_quality = min_quality
        self.batch_size = max(1, batch_size)
        self.batch = ParsedBatch(labels=self.labels)
        self.pending = 0

    def full(self) -> bool:
        return self.pending >= self.batch_size

    def take(self) -> ParsedBatch:
        batch = self.batch
        self.batch = ParsedBatch(labels=self.labels)
        self.pending = 0
        return batch

    def has_content(self) -> bool:
        b = self.batch
        return bool(b.lines or b.columns or b.tombstones or b.skipped)

    def skip(self, line: int, reason: str) -> None:
        self.batch.skipped.append((line, reason))
        self.pending += 1

    def _raw(self, line: int, algorithm: str, text: str) -> bytes | None:
        width = ALGORITHM_BYTES[algorithm]
        raw = _decode_hex(text, width)
        if raw is None:
            self.skip(line, f"bad {algorithm} value (expected {2 * width} hex digits)")
        return raw

    def _degenerate(self, line: int, algorithm: str, raw: bytes, quality: int | None) -> bool:
        reason = signals.get(algorithm).degenerate(raw, quality, self.min_quality)
        if reason is None:
            return False
        self.batch.degenerate += 1
        self.skip(line, reason)
        return True

    def entry(self, line: int, algorithm: str, text: str, label_id: int = 0, added: int = 0,
              quality: int | None = None) -> bool:
        raw = self._raw(line, algorithm, text)
        if raw is None or self._degenerate(line, algorithm, raw, quality):
            return False
        col = self.batch.columns.get(algorithm)
        if col is None:
            col = self.batch.columns[algorithm] = Column()
        col.values += raw
        col.label_ids.append(label_id)
        col.added.append(added)
        self.pending += 1
        return True

    def video(self, line: int, algorithm: str, features: object, label_id: int = 0,
              added: int = 0) -> bool:
        """A video signal (vPDQ: a list of `pdqhex,quality,timestamp` features, or a JSON
        text of one) stored as one row per distinct frame hash of quality >= the minimum:
        the frame's 32 bytes, then 8 bytes naming the video (from its frame hashes), so the
        index can count, per listed video, how many of its frames an attachment matched."""
        from mailfilter.hashing.vpdq import parse_features

        if isinstance(features, str):
            try:
                features = json.loads(features)
            except ValueError:
                self.skip(line, f"bad {algorithm} value (expected a JSON list of features)")
                return False
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            self.skip(line, f"bad {algorithm} value (expected a JSON list of features)")
            return False
        try:
            parsed = parse_features(features)
        except ValueError:
            self.skip(line, f"bad {algorithm} value (a feature is not pdqhex,quality,time)")
            return False
        frames = sorted({bytes.fromhex(f.pdq_hex) for f in parsed
                         if signals.get("pdq").degenerate(bytes.fromhex(f.pdq_hex), f.quality,
                                                          self.min_quality) is None})
        if not frames:
            self.batch.degenerate += 1
            self.skip(line, f"{algorithm} without a frame of quality {self.min_quality} or more")
            return False
        video_id = hashlib.sha256(b"".join(frames)).digest()[:8]
        col = self.batch.columns.get(algorithm)
        if col is None:
            col = self.batch.columns[algorithm] = Column()
        for frame in frames:
            col.values += frame + video_id
            col.label_ids.append(label_id)
            col.added.append(added)
        self.pending += 1
        return True

    def tombstone(self, line: int, algorithm: str, text: str) -> bool:
        raw = self._raw(line, algorithm, text)
        if raw is None:
            return False
        self.batch.tombstones.append((algorithm, raw))
        self.pending += 1
        return True


def _decode_hex(text: str, width: int) -> bytes | None:
    if len(text) != 2 * width:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    # bytes.fromhex skips whitespace between bytes: a shorter result means it was not hex.
    return raw if len(raw) == width else None


# --- times ---------------------------------------------------------------------------------


def parse_added(value: object) -> int:
    """Epoch seconds from an ISO 8601 string or a number; 0 (unknown) when unreadable."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int | float):
        seconds = int(value)
        return seconds if 0 < seconds < 2**32 else 0
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            if text.isdigit():
                return parse_added(int(text))
            stamp = datetime.fromisoformat(text)
        except ValueError:
            return 0
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return parse_added(stamp.timestamp())
    return 0


def format_added(seconds: int) -> str | None:
    """ISO 8601 UTC (``2024-05-01T12:00:00Z``) as exported; None when unknown."""
    if seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- line formats ------------------------------------------------------------------------------

LineHandler = Callable[[_Builder, int, str], None]


def _parse_lines(text: IO[str], b: _Builder, handle: LineHandler) -> Iterator[ParsedBatch]:
    for number, line in enumerate(text, 1):
        b.batch.lines += 1
        s = line.strip()
        if not s or s[0] == "#":
            continue
        handle(b, number, s)
        if b.full():
            yield b.take()
    if b.has_content():
        yield b.take()


def _strip_key(token: str, *keys: str) -> str:
    low = token.lower()
    for key in keys:
        if low.startswith(key + "="):
            return token[len(key) + 1:].strip()
    return token


def _quality_of(fields: list[str]) -> int | None:
    """`quality=NN` anywhere after the hash, else a bare 0..100 integer second field."""
    for f in fields[1:]:
        key, eq, val = f.partition("=")
        if eq and key.strip().lower() == "quality":
            try:
                return int(val.strip())
            except ValueError:
                return None
    if len(fields) > 1:
        second = fields[1].strip()
        if second.isdigit() and int(second) <= 100:
            return int(second)
    return None


def _pdq_line(b: _Builder, number: int, s: str) -> None:
    fields = s.split(",") if "," in s else s.split()
    token = _strip_key(fields[0].strip(), "hash", "pdq")
    if " " in token or "\t" in token:  # "hash quality" separated by blanks
        fields = token.split() + fields[1:]
        token = fields[0]
    b.entry(number, "pdq", token.lower(), quality=_quality_of(fields))


def _single_hex_line(algorithm: str) -> LineHandler:
    def handle(b: _Builder, number: int, s: str) -> None:
        token = _SPLIT_FIELDS.split(s, maxsplit=1)[0]
        token = _strip_key(token, algorithm, "hash").lstrip("\\")
        b.entry(number, algorithm, token.lower())

    return handle


def _hma_line(b: _Builder, number: int, s: str) -> None:
    parts = _SPLIT_FIELDS.split(s, maxsplit=2)
    kind = parts[0].lower()
    signal = signals.by_alias(kind)
    if signal is not None and signal.index is signals.IndexKind.FRAMES:
        rest = s[len(parts[0]):].lstrip(" \t,")  # a JSON list: its commas are its own
        b.video(number, signal.name, rest)
        return
    if kind in ("signal_type", "signal-type", "type") and number == 1:
        return  # a header line
    if len(parts) < 2:
        b.skip(number, "expected SIGNAL_TYPE VALUE")
        return
    signal = signals.by_alias(kind)
    if signal is None:
        name = kind if (kind in _HMA_KNOWN_UNSUPPORTED or _WORD.fullmatch(kind)) else "?"
        b.skip(number, f"unsupported signal type {name}")
        return
    b.entry(number, signal.name, parts[1].lower())


def _jsonl_line(b: _Builder, number: int, s: str) -> None:
    try:
        obj: Any = json.loads(s)
    except ValueError:
        b.skip(number, "not valid JSON")
        return
    if not isinstance(obj, dict):
        b.skip(number, "not a JSON object")
        return
    algorithm = obj.get("algorithm")
    value = obj.get("value")
    if not isinstance(algorithm, str) or algorithm.lower() not in signals.BY_NAME:
        b.skip(number, "unknown algorithm")
        return
    if not isinstance(value, str) and not (isinstance(value, list) and signals.get(
            algorithm.lower()).index is signals.IndexKind.FRAMES):
        b.skip(number, "missing value")
        return
    labels = obj.get("labels") or ()
    if isinstance(labels, str):
        labels = (labels,)
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
        b.skip(number, "labels must be a list of strings")
        return
    label_id = b.labels.id_of(normalise_labels(labels))
    if signals.get(algorithm.lower()).index is signals.IndexKind.FRAMES:
        b.video(number, algorithm.lower(), value, label_id, parse_added(obj.get("added")))
        return
    assert isinstance(value, str)
    b.entry(number, algorithm.lower(), value.strip().lower(), label_id,
            parse_added(obj.get("added")))


def _te_csv(text: IO[str], b: _Builder) -> Iterator[ParsedBatch]:
    reader = csv.reader(text)
    header: list[str] | None = None
    for header_row in reader:
        b.batch.lines = reader.line_num
        if header_row and any(cell.strip() for cell in header_row):
            if header_row[0].lstrip().startswith("#"):
                continue
            header = [cell.strip().lower() for cell in header_row]
            break
    if header is None:
        return
    if "indicator" not in header:
        raise ListFormatError(
            "not a ThreatExchange CSV: the header has no 'indicator' column "
            "(expected indicator,first_descriptor_id,added_on,labels)"
        )
    col_ind = header.index("indicator")
    col_added = header.index("added_on") if "added_on" in header else None
    col_labels = header.index("labels") if "labels" in header else None
    by_length = {64: "pdq", 32: "md5", 40: "sha1"}
    seen = reader.line_num
    for row in reader:
        number = reader.line_num
        b.batch.lines += number - seen
        seen = number
        if not row or not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) <= col_ind:
            b.skip(number, "missing indicator column")
            continue
        indicator = row[col_ind].strip().lower()
        algorithm = by_length.get(len(indicator))
        if algorithm is None:
            b.skip(number, "indicator is not a PDQ, MD5 or SHA-1 hash")
        else:
            label_id = 0
            if col_labels is not None and len(row) > col_labels:
                label_id = b.labels.id_of(
                    normalise_labels(_LABEL_SPLIT.split(row[col_labels]))
                )
            added = 0
            if col_added is not None and len(row) > col_added:
                added = parse_added(row[col_added])
            b.entry(number, algorithm, indicator, label_id, added)
        if b.full():
            yield b.take()
    if b.has_content():
        yield b.take()


# --- NCMEC XML ----------------------------------------------------------------------------------

_RECORDS: Final = {"image": False, "deletedImage": True, "video": False, "deletedVideo": True}
_MAX_TEXT: Final = 4096
_XML_CHUNK: Final = 1 << 16


def _local(name: str) -> str:
    return name.rpartition(":")[2]


def _refuse_dtd(*_: object) -> None:
    raise ListFormatError(
        "XML with a DOCTYPE or entity declarations is refused (entity expansion); "
        "an NCMEC queryResult has none"
    )


@dataclass
class _Record:
    kind: str
    line: int
    deleted: bool
    ident: str = ""
    classification: str = ""
    fingerprints: list[tuple[str, str]] = field(default_factory=list)


class _NcmecHandler:
    """expat callbacks; finished records pile up in `done` until the parser drains them."""

    def __init__(self, parser: pyexpat.XMLParserType) -> None:
        self.parser = parser
        self.stack: list[str] = []
        self.record: _Record | None = None
        self.record_depth = 0
        self.text: list[str] | None = None
        self.text_len = 0
        self.done: list[_Record] = []

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        local = _local(name)
        self.stack.append(local)
        depth = len(self.stack)
        if self.record is None:
            if local in _RECORDS:
                self.record = _Record(local, self.parser.CurrentLineNumber, _RECORDS[local])
                self.record_depth = depth
            return
        parent = self.stack[-2]
        rel = depth - self.record_depth
        if (rel == 1 and local in ("id", "classification")) or (
            rel == 2 and parent == "fingerprints"
        ):
            self.text = []
            self.text_len = 0

    def chars(self, data: str) -> None:
        if self.text is not None:
            self.text_len += len(data)
            if self.text_len <= _MAX_TEXT:
                self.text.append(data)

    def end(self, name: str) -> None:
        local = self.stack.pop()
        record = self.record
        if record is None:
            return
        if len(self.stack) + 1 == self.record_depth:
            self.done.append(record)
            self.record = None
            return
        if self.text is not None:
            value = "".join(self.text).strip() if self.text_len <= _MAX_TEXT else ""
            self.text = None
            if local == "id":
                record.ident = value
            elif local == "classification":
                record.classification = value
            else:
                record.fingerprints.append((local, value))


def _emit_ncmec(b: _Builder, record: _Record) -> None:
    line = record.line
    # Video entries carry the file's MD5/SHA-1: exact hashes, matched against every
    # attachment whatever its type, like those of images.
    label_id = 0
    if record.classification:
        label_id = b.labels.id_of(normalise_labels([record.classification]))
    usable = 0
    for name, value in record.fingerprints:
        signal = signals.by_alias(name)
        if signal is None:
            shown = name.lower() if _WORD.fullmatch(name.lower()) else "?"
            b.skip(line, f"unsupported algorithm {shown}")
            continue
        algorithm = signal.name
        if record.deleted:
            usable += b.tombstone(line, algorithm, value.lower())
        else:
            usable += b.entry(line, algorithm, value.lower(), label_id)
    if record.deleted and not usable and not record.fingerprints:
        b.skip(line, "deleted entry without fingerprints")
    elif not record.deleted and not record.fingerprints:
        b.skip(line, "entry without fingerprints")


def _ncmec_xml(stream: IO[bytes], b: _Builder) -> Iterator[ParsedBatch]:
    parser = pyexpat.ParserCreate()
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd  # type: ignore[assignment]
    handler = _NcmecHandler(parser)
    parser.StartElementHandler = handler.start
    parser.EndElementHandler = handler.end
    parser.CharacterDataHandler = handler.chars
    last_line = 1
    while True:
        chunk = stream.read(_XML_CHUNK)
        try:
            parser.Parse(chunk, not chunk)
        except pyexpat.ExpatError as exc:
            raise ListFormatError(
                f"line {exc.lineno}: not well-formed XML: "
                f"{pyexpat.ErrorString(exc.code)}"
            ) from None
        for record in handler.done:
            _emit_ncmec(b, record)
        handler.done.clear()
        line = parser.CurrentLineNumber
        b.batch.lines += line - last_line
        last_line = line
        if b.full():
            yield b.take()
        if not chunk:
            break
    if b.has_content():
        yield b.take()


# --- opening, detecting, dispatch -----------------------------------------------------------------


@contextlib.contextmanager
def open_list_file(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed when it is gzip; closes everything it opened."""
    with path.open("rb") as fh:
        magic = fh.read(2)
        fh.seek(0)
        if magic != b"\x1f\x8b":
            yield fh
            return
        with gzip.GzipFile(fileobj=fh, mode="rb") as unzipped:
            yield cast(IO[bytes], unzipped)


def _text(stream: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")


def parse_stream(stream: IO[bytes], fmt: str, *, pdq_min_quality: int = 50,
                 batch_size: int = DEFAULT_BATCH) -> Iterator[ParsedBatch]:
    """Parse a byte stream in format `fmt`; the batches share one `LabelTable`."""
    if fmt not in FORMATS:
        raise ListFormatError(f"unknown list format {fmt!r}; expected one of {', '.join(FORMATS)}")
    b = _Builder(pdq_min_quality, batch_size)
    if fmt == "ncmec-xml":
        yield from _ncmec_xml(stream, b)
        return
    text = _text(stream)
    try:
        if fmt == "te-csv":
            yield from _te_csv(text, b)
            return
        handlers: dict[str, LineHandler] = {
            "pdq": _pdq_line,
            "md5": _single_hex_line("md5"),
            "sha1": _single_hex_line("sha1"),
            "sha256": _single_hex_line("sha256"),
            "hma": _hma_line,
            "jsonl": _jsonl_line,
        }
        yield from _parse_lines(text, b, handlers[fmt])
    finally:
        text.detach()


def parse_file(path: Path, fmt: str | None = None, *, pdq_min_quality: int = 50,
               batch_size: int = DEFAULT_BATCH) -> Iterator[ParsedBatch]:
    """Parse a list file, detecting its format when `fmt` is None. OSError when it cannot
    be read, ListFormatError when it is not in the format."""
    fmt = fmt or detect_format(path)
    with open_list_file(path) as stream:
        yield from parse_stream(stream, fmt, pdq_min_quality=pdq_min_quality,
                                batch_size=batch_size)


_DETECT_BYTES: Final = 64 * 1024
_DETECT_LINES: Final = 20
_HEX = re.compile(r"[0-9a-fA-F]+")


def _looks_like_pdq(values: list[str]) -> bool:
    """PDQ sets a bit per DCT coefficient above the median: (nearly) exactly half the bits.
    A SHA-256 has exactly 128 bits set only ~5% of the time, so a sample that is all
    near-128 is PDQ with near certainty."""
    near_half = sum(1 for v in values if 120 <= int(v, 16).bit_count() <= 128)
    return near_half >= 0.9 * len(values)


def detect_format(path: Path) -> str:
    """The format of a list file, from its first non-empty lines; ListFormatError with
    what was seen when it is unknown or ambiguous."""
    with open_list_file(path) as fh:
        head = fh.read(_DETECT_BYTES)
    text = head.decode("utf-8-sig", errors="replace")
    stripped = text.lstrip()
    if not stripped:
        raise ListFormatError(f"{path}: the file is empty; cannot detect its format")
    if stripped.startswith("<"):
        return "ncmec-xml"
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(head) == _DETECT_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut off
    lines = lines[:_DETECT_LINES]
    if not lines:
        raise ListFormatError(f"{path}: only comments; cannot detect its format")
    first = lines[0]
    if first.startswith("{"):
        return "jsonl"
    low = first.lower()
    if "indicator" in low and ("," in low or "\t" in low):
        return "te-csv"
    tokens = [_SPLIT_FIELDS.split(ln, maxsplit=1) for ln in lines]
    kinds = [t[0].lower() for t in tokens if len(t) > 1]
    if kinds and all(signals.by_alias(k) is not None or k in _HMA_KNOWN_UNSUPPORTED
                     or k == "signal_type"
                     for k in kinds):
        return "hma"
    firsts = [_strip_key(t[0], "hash", "pdq") for t in tokens]
    if any(ln.lower().startswith(("hash=", "pdq=")) for ln in lines):
        return "pdq"
    # Hex lists: the length most sampled lines have (a few bad lines do not stop detection;
    # they are reported as skipped when parsing).
    lengths = Counter(len(f) if _HEX.fullmatch(f) else 0 for f in firsts)
    length, count = lengths.most_common(1)[0]
    if length and count >= 0.7 * len(firsts):
        fitting = [(f, ln) for f, ln in zip(firsts, lines, strict=True) if len(f) == length
                   and _HEX.fullmatch(f)]
        by_length = {32: "md5", 40: "sha1"}
        if length in by_length:
            return by_length[length]
        if length == 64:
            if any("," in ln for _, ln in fitting):
                return "pdq"  # HEX64,quality / HEX64,anything
            if len(fitting) >= 5:
                return "pdq" if _looks_like_pdq([f for f, _ in fitting]) else "sha256"
            raise ListFormatError(
                f"{path}: 64-hex-digit lines could be PDQ or SHA-256 hashes and the file is "
                "too short to tell; pass --format pdq or --format sha256"
            )
    shown = first if len(first) <= 60 else first[:57] + "..."
    raise ListFormatError(
        f"{path}: unknown list format (first line {shown!r}); pass --format, one of "
        f"{', '.join(FORMATS)}"
    )
