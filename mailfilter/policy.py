"""The policy stage: a scan result (or the failure to get one) and the operator's policy
settings -> what to do with the message.

A plain function of its inputs, no I/O: the front ends carry the action out (relay,
quarantine, refuse) and turn it into protocol replies.

| scan outcome                            | setting          | action                          |
|-----------------------------------------|------------------|---------------------------------|
| clean                                   |                  | relay                           |
| match                                   | `on_match`       | quarantine / reject / tag       |
| ambiguous structure (readers disagree)  | `on_ambiguous`   | scan-all / 451 / 550 / quarantine |
| unscannable (limits, broken images)     | `on_unscannable` | relay / tag / quarantine / 451  |
| failure (store, worker crash, deadline) | `on_error`       | 451 / relay unscanned           |

A worker that crashed or ran out of time under an image or the MIME walk says nothing about
the message (the machine may be overloaded, a worker killed from outside): it is a failure
of ours, decided by `on_error` like a store outage, not "unscannable". A decoder that needs
more than the memory limit is a limit the image broke, like `max_pixels`: unscannable.

A message whose structure readers take differently (two Content-Types, a boundary in
another case, ...: `ScanResult.ambiguities`) had every reading scanned; with
`on_ambiguous = "scan-all"` the union's verdict stands, otherwise the operator's choice
applies to it unless it matched (a match is acted on first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from mailfilter.model import Reply, ScanResult, Verdict
from mailfilter.settings import PolicySettings

__all__ = ["Action", "ActionKind", "decide", "decide_error", "failure_of", "header_value"]

TRANSIENT_REASONS: Final = frozenset({
    "deadline", "worker-crashed", "extract-deadline", "extract-worker-crashed",
    # a worker's reply refused as not from our code (workers.py): a crash, to the sender
    "worker-result-refused", "extract-worker-result-refused",
})
"""Skip/unscannable reasons that are failures of the filter, not properties of the message."""


class ActionKind(enum.StrEnum):
    RELAY = "relay"
    TAG = "relay-with-tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Action:
    """`reason`: a stable code for logs and metrics (`clean`, `match`, `unscannable`, or the
    failure: `scan-timeout`, `worker-crashed`, `index-not-loaded`, ...). `tag`: the value of
    the X-Mailfilter header a TAG action must add. `reply`: what REJECT/TEMPFAIL answer.
    `scanned`: false when the message is relayed without a verdict (fail-open)."""

    kind: ActionKind
    reason: str
    tag: str | None = None
    reply: Reply | None = None
    scanned: bool = True

    @property
    def relays(self) -> bool:
        return self.kind in (ActionKind.RELAY, ActionKind.TAG)


REJECT_REPLY: Final = Reply(550, "5.7.1", "Message content rejected")
UNSCANNABLE_TEMPFAIL: Final = Reply(451, "4.7.0", "Message could not be scanned, try again later")
AMBIGUOUS_REJECT: Final = Reply(550, "5.6.0", "Ambiguous MIME structure rejected")
AMBIGUOUS_TEMPFAIL: Final = Reply(451, "4.6.0", "Ambiguous MIME structure, try again later")

_FAILURE_TEXT: Final = {
    "scan-timeout": "Scan timed out, try again later",
    "index-not-loaded": "Hash lists not loaded yet, try again later",
    "worker-crashed": "Scanner failed, try again later",
    "worker-result-refused": "Scanner failed, try again later",
    "deadline": "Scan timed out, try again later",
}


def failure_of(result: ScanResult) -> str | None:
    """The reason a result is a failure of ours rather than a verdict, or None."""
    for u in result.unscannable:
        if u.reason in TRANSIENT_REASONS:
            return u.reason.removeprefix("extract-")
    for a in result.attachments:
        if a.fingerprint.skipped in TRANSIENT_REASONS and not a.matches:
            return a.fingerprint.skipped
    return None


def tempfail_reply(reason: str) -> Reply:
    text = _FAILURE_TEXT.get(reason, "Temporary failure in the mail filter, try again later")
    return Reply(451, "4.3.0", text)


def decide_error(reason: str, policy: PolicySettings) -> Action:
    """No verdict could be had (`reason`: a stable code): `on_error` decides."""
    if policy.on_error == "accept":
        return Action(ActionKind.RELAY, reason, scanned=False)
    return Action(ActionKind.TEMPFAIL, reason, reply=tempfail_reply(reason))


def decide(result: ScanResult, policy: PolicySettings) -> Action:
    if result.verdict is Verdict.MATCH:
        # A match found is acted on even when other parts failed: it cannot be un-found.
        if policy.on_match == "reject":
            return Action(ActionKind.REJECT, "match", reply=REJECT_REPLY)
        if policy.on_match == "tag":
            return Action(ActionKind.TAG, "match", tag="match")
        return Action(ActionKind.QUARANTINE, "match")
    failure = failure_of(result)
    if failure is not None:
        return decide_error(failure, policy)
    if result.ambiguities and policy.on_ambiguous != "scan-all":
        if policy.on_ambiguous == "reject":
            return Action(ActionKind.REJECT, "ambiguous", reply=AMBIGUOUS_REJECT)
        if policy.on_ambiguous == "tempfail":
            return Action(ActionKind.TEMPFAIL, "ambiguous", reply=AMBIGUOUS_TEMPFAIL)
        return Action(ActionKind.QUARANTINE, "ambiguous")
    if result.verdict is Verdict.UNSCANNABLE:
        choice = policy.on_unscannable
        if choice == "tag":
            return Action(ActionKind.TAG, "unscannable", tag="unscannable")
        if choice == "quarantine":
            return Action(ActionKind.QUARANTINE, "unscannable")
        if choice == "tempfail":
            return Action(ActionKind.TEMPFAIL, "unscannable", reply=UNSCANNABLE_TEMPFAIL)
        return Action(ActionKind.RELAY, "unscannable")
    return Action(ActionKind.RELAY, "clean")


def header_value(action: Action, result: ScanResult | None, add_header: bool) -> str | None:
    """The `X-Mailfilter` header a relayed (or, by the milter, accepted) message carries:
    the tag a TAG action asks for; else, with `add_header`, the verdict, or "unscanned"
    when the message passes without one (fail-open); else none."""
    if action.tag is not None:
        return action.tag
    if not add_header:
        return None
    return result.verdict.value if result is not None and action.scanned else "unscanned"
