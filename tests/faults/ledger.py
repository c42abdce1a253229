"""Accounting for the fault tests: every message sent is accounted for exactly once.

Each message carries a unique `X-Test-Seq` header. The sending client (`client.py`) records
every attempt and the reply it saw; the next hop records what it received; the quarantine
directory holds what was held. `account` then checks, per message:

- acknowledged (a 2xx the sender saw): it arrived exactly once, at the next hop or in the
  quarantine (none: lost; more: duplicated);
- refused (a 4xx/5xx the sender saw, and never acknowledged): it arrived nowhere (else the
  sender's retry would make a duplicate);
- every attempt got a reply (a sender left without one cannot know what happened);
- no attempt after an acknowledgement (a sender never retries a 250);

and that nothing arrived that was never sent (a smuggled or invented message), and that
the quarantine holds no half-written entry. So sent == delivered + quarantined + refused,
with no message in two of them.
"""

from __future__ import annotations

import collections
import itertools
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SEQ_HEADER = "X-Test-Seq"
_SEQ_LINE = re.compile(rb"^X-Test-Seq:[ \t]*(\S+)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE)


def seq_of(raw: bytes) -> str | None:
    """The sequence header of a message (its header block only), or None."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end + 2]
    m = _SEQ_LINE.search(head)
    return m.group(1).decode("ascii", "replace") if m else None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt as the sender saw it. `code` None: no reply at all (the
    connection broke or timed out); `stage`: the command the deciding reply answered."""

    code: int | None
    stage: str
    reply: str
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def refused(self) -> bool:
        return self.code is not None and self.code >= 400


class Ledger:
    """What the senders saw; thread-safe (senders run in threads)."""

    def __init__(self, prefix: str = "m") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.attempts: dict[str, list[Attempt]] = {}

    def new_seq(self) -> str:
        with self._lock:
            seq = f"{self.prefix}{next(self._counter):05d}"
            self.attempts[seq] = []
            return seq

    def record(self, seq: str, attempt: Attempt) -> None:
        with self._lock:
            self.attempts[seq].append(attempt)

    def last(self, seq: str) -> Attempt:
        with self._lock:
            return self.attempts[seq][-1]

    def snapshot(self) -> dict[str, list[Attempt]]:
        with self._lock:
            return {k: list(v) for k, v in self.attempts.items()}

    def replies(self) -> list[Attempt]:
        """Every attempt's outcome (for latency and reply-code figures)."""
        with self._lock:
            return [a for v in self.attempts.values() for a in v]


@dataclass
class QuarantineContents:
    messages: list[bytes]
    problems: list[str]  # half-written entries, leftover temporary files


def read_quarantine(root: Path) -> QuarantineContents:
    """The held messages (`<id>.eml` with its `<id>.json` record beside it) under `root`,
    and anything that looks like a half-written entry: an `.eml` without its record, or a
    temporary file left behind."""
    messages: list[bytes] = []
    problems: list[str] = []
    if not root.exists():
        return QuarantineContents(messages, problems)
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            problems.append(f"temporary file left: {path}")
        elif path.suffix == ".eml" and not name.startswith("."):
            if not path.with_suffix(".json").is_file():
                problems.append(f"message without its record: {path}")
            else:
                messages.append(path.read_bytes())
    return QuarantineContents(messages, problems)


@dataclass
class Accounting:
    sent: int = 0
    delivered: int = 0
    quarantined: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    refused_but_arrived: list[str] = field(default_factory=list)
    retried_after_ack: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    quarantine_problems: list[str] = field(default_factory=list)
    codes: dict[int | None, int] = field(default_factory=dict)  # final reply codes

    def problems(self) -> dict[str, list[str]]:
        found = {
            "lost (acknowledged, found nowhere)": self.lost,
            "duplicated": self.duplicated,
            "refused to the sender but delivered or quarantined": self.refused_but_arrived,
            "attempted again after an acknowledgement": self.retried_after_ack,
            "attempts without a reply": self.unanswered,
            "arrived but never sent": self.unknown,
            "half-written quarantine entries": self.quarantine_problems,
        }
        return {k: v for k, v in found.items() if v}

    @property
    def exact(self) -> bool:
        return not self.problems() and \
            self.sent == self.delivered + self.quarantined + self.refused

    def summary(self) -> str:
        head = (f"sent {self.sent}, delivered {self.delivered}, quarantined "
                f"{self.quarantined}, refused {self.refused}, final codes {self.codes}")
        lines = [head] + [f"  {k}: {v[:20]}{' ...' if len(v) > 20 else ''}"
                          for k, v in self.problems().items()]
        return "\n".join(lines)

    def assert_exact(self) -> None:
        assert self.exact, "message accounting failed:\n" + self.summary()


def account(ledger: Ledger, delivered: Iterable[bytes],
            quarantine: QuarantineContents) -> Accounting:
    """Check the senders' view against what arrived (see the module's docstring)."""
    arrived_at_hop: collections.Counter[str] = collections.Counter()
    arrived_in_quarantine: collections.Counter[str] = collections.Counter()
    out = Accounting(quarantine_problems=list(quarantine.problems))
    for raw in delivered:
        arrived_at_hop[seq_of(raw) or "<no sequence header>"] += 1
    for raw in quarantine.messages:
        arrived_in_quarantine[seq_of(raw) or "<no sequence header>"] += 1
    attempts = ledger.snapshot()
    codes: collections.Counter[int | None] = collections.Counter()
    for seq, tries in attempts.items():
        if not tries:
            continue  # created but never sent (the sender gave up before connecting)
        out.sent += 1
        codes[tries[-1].code] += 1
        acked = [i for i, a in enumerate(tries) if a.accepted]
        if acked and acked[0] != len(tries) - 1:
            out.retried_after_ack.append(seq)
        if any(a.code is None for a in tries):
            out.unanswered.append(seq)
        here = arrived_at_hop.pop(seq, 0) + arrived_in_quarantine[seq]
        held = arrived_in_quarantine.pop(seq, 0)
        if acked:
            if here == 0:
                out.lost.append(seq)
            elif here > 1:
                out.duplicated.append(seq)
            elif held:
                out.quarantined += 1
            else:
                out.delivered += 1
        elif here:
            out.refused_but_arrived.append(seq)
        elif tries[-1].refused:
            out.refused += 1
    out.unknown = sorted((arrived_at_hop + arrived_in_quarantine).keys())
    out.codes = dict(codes)
    return out
