"""The policy function: every verdict and failure under every setting."""

from __future__ import annotations

import pytest

from mailfilter.hashing.exact import exact_hashes
from mailfilter.model import AttachmentResult, ImageFingerprint, Match, ScanResult, Unscannable
from mailfilter.model import Verdict as V  # noqa: N817
from mailfilter.policy import ActionKind as K
from mailfilter.policy import decide, decide_error
from mailfilter.settings import PolicySettings


def result(verdict: V, skipped: str | None = None, matched: bool = False,
           unscannable: tuple[Unscannable, ...] = ()) -> ScanResult:
    fp = ImageFingerprint(exact=exact_hashes(b"x"), skipped=skipped)
    matches = (Match("l", "pdq", 3.0),) if matched else ()
    att = AttachmentResult("2", "a.jpg", "image/jpeg", fp, matches)
    return ScanResult("t", None, verdict, (att,), unscannable)


@pytest.mark.parametrize(("on_match", "kind", "code"), [
    ("quarantine", K.QUARANTINE, None), ("reject", K.REJECT, 550), ("tag", K.TAG, None)])
def test_match(on_match: str, kind: K, code: int | None) -> None:
    action = decide(result(V.MATCH, matched=True), PolicySettings(on_match=on_match))
    assert action.kind is kind
    assert (action.reply.code if action.reply else None) == code
    if kind is K.REJECT:
        assert action.reply is not None and action.reply.enhanced == "5.7.1"


def test_clean_relays() -> None:
    assert decide(result(V.CLEAN), PolicySettings()).kind is K.RELAY


@pytest.mark.parametrize(("choice", "kind"), [
    ("accept", K.RELAY), ("tag", K.TAG), ("quarantine", K.QUARANTINE), ("tempfail", K.TEMPFAIL)])
def test_unscannable(choice: str, kind: K) -> None:
    action = decide(result(V.UNSCANNABLE, skipped="too-many-pixels"),
                    PolicySettings(on_unscannable=choice))
    assert action.kind is kind and action.reason == "unscannable"


@pytest.mark.parametrize("reason", ["worker-crashed", "deadline", "worker-result-refused"])
def test_worker_failures_are_errors_not_unscannable(reason: str) -> None:
    r = result(V.UNSCANNABLE, skipped=reason)
    tempfail = decide(r, PolicySettings(on_unscannable="accept"))
    assert tempfail.kind is K.TEMPFAIL and tempfail.reply is not None
    assert (tempfail.reply.code, tempfail.reply.enhanced) == (451, "4.3.0")
    open_ = decide(r, PolicySettings(on_error="accept"))
    assert open_.kind is K.RELAY and not open_.scanned
    crashed_parser = result(V.UNSCANNABLE, unscannable=(Unscannable("", "extract-deadline"),))
    assert decide(crashed_parser, PolicySettings()).kind is K.TEMPFAIL


def test_match_wins_over_failures() -> None:
    r = result(V.MATCH, matched=True, unscannable=(Unscannable("", "extract-deadline"),))
    assert decide(r, PolicySettings()).kind is K.QUARANTINE


def test_errors() -> None:
    assert decide_error("scan-timeout", PolicySettings()).reply.code == 451  # type: ignore[union-attr]
    assert decide_error("scan-timeout", PolicySettings(on_error="accept")).kind is K.RELAY
