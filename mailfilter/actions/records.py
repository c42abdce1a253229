"""The quarantine's records as typed values: what a record, an index summary and a report
document hold, each a frozen dataclass with `to_json` and `from_json`.

The JSON forms are contracts: records on disk are read by every later version, summaries
sit in the shared index beside those of other versions, and reports and `--json` output
are read by other programs. So reading never loses anything and writing changes nothing
it did not mean to:

- a key this version does not know, or a value of a type it does not expect, is kept
  as it was (`Kept.unknown`) and written back unchanged;
- what was read is written back with the keys it had, in their order (`Kept.keys`):
  a record of an earlier version without `kind` or `gridhist` in its attachments stays
  without them. Only the fields a record may gain later (`_ALWAYS`: status, legal hold,
  host, history, which records before they existed are read as "quarantined", not held,
  no history) are added where they were missing;
- a value made here (not read) has every field, in the order of the class.

A record without `format` is read like one with `format: 1`; a later format number is
read as far as it is understood (its other keys are kept).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self, TypeVar

__all__ = [
    "SERVICE_ACTOR",
    "AttachmentRecord",
    "Client",
    "EntrySummary",
    "HistoryEvent",
    "JsonObject",
    "Kept",
    "MatchRecord",
    "QuarantineRecord",
    "RecordEnvelope",
    "ReportDocument",
    "ReportEnvelope",
    "UnscannableRecord",
    "iso_time",
]

JsonObject = dict[str, Any]
"""A JSON object as `json` reads and writes it: the one place records meet untyped data."""

RECORD_FORMAT: Final = 1
REPORT_FORMAT: Final = 1
REPORT_TYPE: Final = "mailfilter.quarantine-report"
SERVICE_ACTOR: Final = "mailfilter"

Reader = Callable[[object], object]


def iso_time(ts: float) -> str:
    """UTC, seconds, with a Z: how times appear in records, reports and the audit log."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- reading JSON values: each returns the typed value or raises TypeError ---------------


def _str(v: object) -> str:
    if isinstance(v, str):
        return v
    raise TypeError


def _opt_str(v: object) -> str | None:
    return None if v is None else _str(v)


def _int(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise TypeError


def _opt_int(v: object) -> int | None:
    return None if v is None else _int(v)


def _num(v: object) -> float:
    """A number as it was (an int stays an int: PDQ distances are bits)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    raise TypeError


def _opt_num(v: object) -> float | None:
    return None if v is None else _num(v)


def _bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    raise TypeError


def _strs(v: object) -> tuple[str, ...]:
    if isinstance(v, list | tuple):
        return tuple(_str(x) for x in v)
    raise TypeError


def _str_lists(v: object) -> tuple[tuple[str, ...], ...]:
    if isinstance(v, list | tuple):
        return tuple(_strs(x) for x in v)
    raise TypeError


def _object(v: object) -> Mapping[str, Any]:
    if isinstance(v, dict):
        return dict(v)
    raise TypeError


def _one(cls: type[JsonRecord]) -> Reader:
    def read(v: object) -> object:
        return cls.from_json(_object(v))
    return read


def _many(cls: type[JsonRecord]) -> Reader:
    def read(v: object) -> object:
        if isinstance(v, list | tuple):
            return tuple(cls.from_json(_object(x)) for x in v)
        raise TypeError
    return read


def _plain(value: object) -> object:
    """A field's value as JSON: tuples as lists, records as objects."""
    if isinstance(value, JsonRecord | HistoryEvent):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# --- the common part -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kept:
    """How a value looked when it was read: its keys in order (None: made here, not read)
    and what this version does not understand, kept to be written back as it was."""

    keys: tuple[str, ...] | None = None
    unknown: Mapping[str, Any] = field(default_factory=dict)


NEW: Final = Kept()


class JsonRecord:
    """The JSON side of the record classes below (see the module's docstring)."""

    __slots__ = ()
    # (JSON key, attribute, reader) in the order a new value writes them.
    _FIELDS: ClassVar[tuple[tuple[str, str, Reader], ...]]
    # Written even if the source lacked them, in this order after the others.
    _ALWAYS: ClassVar[tuple[str, ...]] = ()
    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # a new value leaves these out if None
    kept: Kept

    def to_json(self) -> JsonObject:
        known = {key: _plain(getattr(self, attr)) for key, attr, _ in self._FIELDS}
        kept = self.kept
        if kept.keys is None:
            return {k: v for k, v in known.items()
                    if not (v is None and k in self._OMIT_NONE)}
        out: JsonObject = {}
        for key in kept.keys:
            if key in kept.unknown and key not in self._ALWAYS:
                out[key] = kept.unknown[key]
            elif key in known:
                out[key] = known[key]
        for key in self._ALWAYS:
            out.setdefault(key, known[key])
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The value `data` describes; ValueError when a field without a default is missing
        or unreadable."""
        return _read_fields(cls, data)


R = TypeVar("R", bound=JsonRecord)


def _read_fields(cls: type[R], data: Mapping[str, Any]) -> R:
    # A function, not a method: the slotted dataclasses are new classes, which breaks the
    # zero-argument super() their own from_json would need.
    values: dict[str, object] = {}
    known = set()
    unknown = {}
    for key, attr, read in cls._FIELDS:
        known.add(key)
        if key not in data:
            continue
        try:
            values[attr] = read(data[key])
        except (TypeError, ValueError):
            unknown[key] = data[key]  # kept as it was, the field left at its default
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if (f.name not in values and f.name != "kept" and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            raise ValueError(f"{cls.__name__}: no valid {f.name!r}")
    unknown.update({k: v for k, v in data.items() if k not in known})
    make: Any = cls  # (the fields are the subclass's)
    made: R = make(**values, kept=Kept(tuple(data), unknown))
    return made


# --- a record's parts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client(JsonRecord):
    """The SMTP client that handed the message over (as the MTA told us)."""

    addr: str | None = None
    name: str | None = None
    helo: str | None = None
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (("addr", "addr", _opt_str), ("name", "name", _opt_str),
               ("helo", "helo", _opt_str))


@dataclass(frozen=True, slots=True)
class RecordEnvelope(JsonRecord):
    """The SMTP envelope, with the ESMTP parameters a release gives back to the next hop."""

    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[tuple[str, ...], ...] = ()
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (("mail_from", "mail_from", _opt_str), ("rcpt_tos", "rcpt_tos", _strs),
               ("mail_options", "mail_options", _strs),
               ("rcpt_options", "rcpt_options", _str_lists))


@dataclass(frozen=True, slots=True)
class AttachmentRecord(JsonRecord):
    """What is known about one attachment (`AttachmentResult.as_json` and its size):
    names, type, sizes and hashes, never content."""

    mime_path: str = ""
    kind: str = "image"  # records before files had kinds held images only
    filename: str | None = None
    content_type: str | None = None
    containers: tuple[str, ...] = ()
    width: int | None = None
    height: int | None = None
    format: str | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    gridhist: str | None = None
    skipped: str | None = None
    incomplete: str | None = None
    size: int | None = None
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (("mime_path", "mime_path", _str), ("kind", "kind", _str),
               ("filename", "filename", _opt_str), ("content_type", "content_type", _opt_str),
               ("containers", "containers", _strs), ("width", "width", _opt_int),
               ("height", "height", _opt_int), ("format", "format", _opt_str),
               ("md5", "md5", _opt_str), ("sha1", "sha1", _opt_str),
               ("sha256", "sha256", _opt_str), ("pdq", "pdq", _opt_str),
               ("pdq_quality", "pdq_quality", _opt_int), ("gridhist", "gridhist", _opt_str),
               ("skipped", "skipped", _opt_str), ("incomplete", "incomplete", _opt_str),
               ("size", "size", _opt_int))

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def hashes(self) -> list[tuple[str, str]]:
        """(name, hex) of the hashes it has, exact ones first."""
        found = (("md5", self.md5), ("sha1", self.sha1), ("sha256", self.sha256),
                 ("pdq", self.pdq))
        return [(name, value) for name, value in found if value]


@dataclass(frozen=True, slots=True)
class MatchRecord(JsonRecord):
    """One match of one attachment (`Match.as_json` with the attachment's MIME path)."""

    mime_path: str = ""
    list_name: str = ""
    algorithm: str = ""
    distance: float = 0
    labels: tuple[str, ...] = ()
    value: str = ""
    at: float | None = None  # a video: the time (seconds) of the frame that matched
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (("mime_path", "mime_path", _str), ("list", "list_name", _str),
               ("algorithm", "algorithm", _str), ("distance", "distance", _num),
               ("labels", "labels", _strs), ("value", "value", _str), ("at", "at", _opt_num))
    _OMIT_NONE = frozenset({"at"})


@dataclass(frozen=True, slots=True)
class UnscannableRecord(JsonRecord):
    """A part that was not examined, and why."""

    mime_path: str = ""
    reason: str = ""
    detail: str | None = None
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (("mime_path", "mime_path", _str), ("reason", "reason", _str),
               ("detail", "detail", _opt_str))


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One line of a record's history: what happened, when (UTC), who did it, and details
    that depend on the event (the next hop's reply, a hold's reason, report targets)."""

    event: str
    time: str | None
    by: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def now(cls, event: str, when: float, by: str, **detail: Any) -> HistoryEvent:
        return cls(event, iso_time(when), by, detail)

    def to_json(self) -> JsonObject:
        return {"event": self.event, "time": self.time, "by": self.by, **self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryEvent:
        when, by = data.get("time"), data.get("by")
        return cls(str(data.get("event")), None if when is None else str(when),
                   None if by is None else str(by),
                   {k: v for k, v in data.items() if k not in ("event", "time", "by")})


def _history(v: object) -> object:
    if isinstance(v, list):
        return tuple(HistoryEvent.from_json(_object(x)) for x in v)
    raise TypeError


# --- the record ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuarantineRecord(JsonRecord):
    """The JSON record of a quarantined message (`<id>.json`). Never holds message or
    image content: names, sizes, types, hashes and matches only."""

    id: str
    format: int = RECORD_FORMAT
    received: str | None = None
    received_ts: float | None = None
    host: str | None = None
    client: Client = Client()
    queue_id: str | None = None
    envelope: RecordEnvelope = RecordEnvelope()
    size: int | None = None
    message_id: str | None = None
    subject: str | None = None
    verdict: str | None = None
    attachments: tuple[AttachmentRecord, ...] = ()
    unscannable: tuple[UnscannableRecord, ...] = ()
    ambiguities: tuple[str, ...] = ()
    matches: tuple[MatchRecord, ...] = ()
    action: str | None = None
    reason: str | None = None
    policy: Mapping[str, Any] = field(default_factory=dict)
    legal_hold: bool = False
    status: str = "quarantined"
    history: tuple[HistoryEvent, ...] = ()
    front_end: str | None = None
    # The CyberTipline report's step journal (`cybertip.journal.Journal.to_dict()`), from
    # the first `quarantine submit` on: NCMEC's report id and file ids, each step as it
    # went, so that a resumed submission never files a second report.
    cybertip: Mapping[str, Any] | None = None
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (
        ("format", "format", _int), ("id", "id", _str), ("received", "received", _opt_str),
        ("received_ts", "received_ts", _opt_num), ("host", "host", _opt_str),
        ("client", "client", _one(Client)), ("queue_id", "queue_id", _opt_str),
        ("envelope", "envelope", _one(RecordEnvelope)), ("size", "size", _opt_int),
        ("message_id", "message_id", _opt_str), ("subject", "subject", _opt_str),
        ("verdict", "verdict", _opt_str), ("attachments", "attachments", _many(AttachmentRecord)),
        ("unscannable", "unscannable", _many(UnscannableRecord)),
        ("ambiguities", "ambiguities", _strs), ("matches", "matches", _many(MatchRecord)),
        ("action", "action", _opt_str), ("reason", "reason", _opt_str),
        ("policy", "policy", _object), ("legal_hold", "legal_hold", _bool),
        ("status", "status", _str), ("history", "history", _history),
        ("front_end", "front_end", _opt_str), ("cybertip", "cybertip", _object),
    )
    _ALWAYS = ("legal_hold", "host", "status", "history")
    _OMIT_NONE = frozenset({"front_end", "cybertip"})

    def to_json(self) -> JsonObject:
        out = JsonRecord.to_json(self)
        # A record read from disk gains the journal when it is first submitted (the keys
        # it was read with do not have it yet); records never submitted stay as they were.
        if self.cybertip is not None and "cybertip" not in out:
            out["cybertip"] = _plain(self.cybertip)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """A record of any version: those written before status, hold, host and history
        existed are read as freshly quarantined, not held, on an unknown host."""
        record = _read_fields(cls, data)
        if "history" in data and "history" not in record.kept.unknown:
            return record
        first = HistoryEvent("quarantined", record.received, SERVICE_ACTOR)
        unknown = {k: v for k, v in record.kept.unknown.items() if k != "history"}
        return dataclasses.replace(record, history=(first,),
                                   kept=Kept(record.kept.keys, unknown))

    @property
    def received_at(self) -> str:
        """When it was received, as records, reports and the audit log write times."""
        if self.received_ts is not None:
            return iso_time(self.received_ts)
        return str(self.received)

    def matched_paths(self) -> set[str]:
        return {m.mime_path for m in self.matches}

    def lists(self) -> list[str]:
        return sorted({m.list_name for m in self.matches})

    def with_event(self, event: HistoryEvent, **changes: Any) -> Self:
        """This record with one more line of history (and the fields in `changes`)."""
        return dataclasses.replace(self, history=(*self.history, event), **changes)

    def with_repeated_event(self, event: HistoryEvent) -> Self:
        """This record with `event`, folded into the last line of history when that line
        is the same event by the same actor with the same details: that line then says how
        often (`repeated`) and since when (`since`), with the latest time. An outbox retry
        that fails the same way every `retry_max` for weeks (credentials refused, NCMEC
        down) would otherwise add a line an hour to the record; the audit log keeps every
        attempt."""
        last = self.history[-1] if self.history else None
        if (last is None or last.event != event.event or last.by != event.by
                or _without_repeats(last.detail) != _without_repeats(event.detail)):
            return self.with_event(event)
        repeated = last.detail.get("repeated", 1)
        detail = {**event.detail,
                  "repeated": (repeated if isinstance(repeated, int) else 1) + 1,
                  "since": last.detail.get("since", last.time)}
        folded = HistoryEvent(event.event, event.time, event.by, detail)
        return dataclasses.replace(self, history=(*self.history[:-1], folded))

    def last_event(self, name: str) -> HistoryEvent | None:
        return next((h for h in reversed(self.history) if h.event == name), None)


def _without_repeats(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if k not in ("repeated", "since")}


# --- what `quarantine list` shows and the shared index holds ---------------------------------


@dataclass(frozen=True, slots=True)
class EntrySummary(JsonRecord):
    """One entry in a line: `quarantine list --json` prints it, the shared index holds it
    (beside summaries other instances, maybe of other versions, wrote)."""

    id: str
    host: str | None = None
    received: str | None = None
    received_ts: float | None = None
    status: str | None = "quarantined"
    legal_hold: bool = False
    from_: str | None = None
    to: tuple[str, ...] = ()
    subject: str | None = None
    size: int | None = None
    verdict: str | None = None
    reason: str | None = None
    lists: tuple[str, ...] = ()
    matches: int = 0
    report_pending: bool = False
    message_held: bool = True
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (
        ("id", "id", _str), ("host", "host", _opt_str), ("received", "received", _opt_str),
        ("received_ts", "received_ts", _opt_num), ("status", "status", _opt_str),
        ("legal_hold", "legal_hold", _bool), ("from", "from_", _opt_str),
        ("to", "to", _strs), ("subject", "subject", _opt_str), ("size", "size", _opt_int),
        ("verdict", "verdict", _opt_str), ("reason", "reason", _opt_str),
        ("lists", "lists", _strs), ("matches", "matches", _int),
        ("report_pending", "report_pending", _bool),
        ("message_held", "message_held", _bool),
    )
    _ALWAYS = ("host",)

    @classmethod
    def of(cls, record: QuarantineRecord, *, report_pending: bool = False,
           has_message: bool = True) -> EntrySummary:
        return cls(
            id=record.id, host=record.host, received=record.received,
            received_ts=record.received_ts, status=record.status,
            legal_hold=record.legal_hold, from_=record.envelope.mail_from,
            to=record.envelope.rcpt_tos, subject=record.subject, size=record.size,
            verdict=record.verdict, reason=record.reason, lists=tuple(record.lists()),
            matches=len(record.matches), report_pending=report_pending,
            message_held=has_message)

    @property
    def sort_key(self) -> tuple[float, str]:
        return (float(self.received_ts or 0), self.id)


# --- the report document -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportEnvelope(JsonRecord):
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (("mail_from", "mail_from", _opt_str), ("rcpt_tos", "rcpt_tos", _strs))


@dataclass(frozen=True, slots=True)
class ReportDocument(JsonRecord):
    """The report of one entry (the JSON attached to the mail, written to `report.dir`,
    POSTed to the webhook, printed by `quarantine report --format json`). Each attachment
    carries `matched`: whether a match names its MIME path."""

    id: str
    generated: str = ""
    generator: str = ""
    type: str = REPORT_TYPE
    report_format: int = REPORT_FORMAT
    host: str | None = None
    received: str = ""
    queue_id: str | None = None
    front_end: str | None = None
    client: Client = Client()
    envelope: ReportEnvelope = ReportEnvelope()
    message_id: str | None = None
    subject: str | None = None
    size: int | None = None
    verdict: str | None = None
    action: str | None = None
    reason: str | None = None
    policy: Mapping[str, Any] = field(default_factory=dict)
    attachments: tuple[AttachmentRecord, ...] = ()
    matches: tuple[MatchRecord, ...] = ()
    unscannable: tuple[UnscannableRecord, ...] = ()
    status: str | None = None
    legal_hold: bool = False
    kept: Kept = field(default=NEW, compare=False, repr=False)

    _FIELDS = (
        ("type", "type", _str), ("report_format", "report_format", _int),
        ("generated", "generated", _str), ("generator", "generator", _str),
        ("id", "id", _str), ("host", "host", _opt_str), ("received", "received", _str),
        ("queue_id", "queue_id", _opt_str), ("front_end", "front_end", _opt_str),
        ("client", "client", _one(Client)), ("envelope", "envelope", _one(ReportEnvelope)),
        ("message_id", "message_id", _opt_str), ("subject", "subject", _opt_str),
        ("size", "size", _opt_int), ("verdict", "verdict", _opt_str),
        ("action", "action", _opt_str), ("reason", "reason", _opt_str),
        ("policy", "policy", _object), ("attachments", "attachments", _many(AttachmentRecord)),
        ("matches", "matches", _many(MatchRecord)),
        ("unscannable", "unscannable", _many(UnscannableRecord)),
        ("status", "status", _opt_str), ("legal_hold", "legal_hold", _bool),
    )

    @classmethod
    def of(cls, record: QuarantineRecord, generated: str, generator: str) -> ReportDocument:
        return cls(
            id=record.id, generated=generated, generator=generator, host=record.host,
            received=iso_time(float(record.received_ts or 0)), queue_id=record.queue_id,
            front_end=record.front_end, client=record.client,
            envelope=ReportEnvelope(record.envelope.mail_from, record.envelope.rcpt_tos),
            message_id=record.message_id, subject=record.subject, size=record.size,
            verdict=record.verdict, action=record.action, reason=record.reason,
            policy=record.policy, attachments=record.attachments, matches=record.matches,
            unscannable=record.unscannable, status=record.status,
            legal_hold=record.legal_hold)

    def matched_paths(self) -> set[str]:
        return {m.mime_path for m in self.matches}

    def lists(self) -> list[str]:
        return sorted({m.list_name for m in self.matches})

    def to_json(self) -> JsonObject:
        out = JsonRecord.to_json(self)
        matched = self.matched_paths()
        out["attachments"] = [{**a.to_json(), "matched": a.mime_path in matched}
                              for a in self.attachments]
        return out

