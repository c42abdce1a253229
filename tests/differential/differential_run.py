"""The differential run: every construction built, opened by every reference chain and
scanned by mailfilter, once per session; the tests only read its outcome.

Work is spread over two threads for the references (mostly waiting on subprocesses) and the
scanner's pool of two worker processes, so the whole run fits the CI budget on two cores.
The summary (per construction: chains that show the photo, mailfilter's verdict and
reasons) is printed at the end of the run and written as JSON under the session's tmp dir.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import constructions
import references

from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.matching.index import HashIndex, IndexEntry
from mailfilter.model import ScanResult
from mailfilter.scanner import Scanner
from mailfilter.settings import Settings, load_settings
from mailfilter.workers import WorkerPool

THREADS = 2


@dataclass
class Outcome:
    name: str
    classes: tuple[str, ...]
    limit: str | None
    unavailable: str | None = None
    error: str | None = None  # the builder failed: a bug in the construction
    shown_by: dict[str, list[str]] = field(default_factory=dict)
    verdict: str | None = None
    reasons: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    raw: bytes = b""

    @property
    def shown(self) -> bool:
        return any(self.shown_by.values())

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "classes": list(self.classes), "limit": self.limit,
                "unavailable": self.unavailable, "error": self.error, "shown_by": self.shown_by,
                "verdict": self.verdict, "reasons": self.reasons, "defects": self.defects}


@dataclass
class Run:
    outcomes: dict[str, Outcome]
    seconds: dict[str, float]
    summary_path: Path | None = None


RUNS: list[Run] = []


def _index(settings: Settings, photo: bytes) -> HashIndex:
    fp = fingerprint_image(photo, FingerprintParams.from_settings(settings))
    assert fp.primary is not None and fp.primary.pdq is not None
    return HashIndex.build([
        IndexEntry("differential", "pdq", fp.primary.pdq, ("known",)),
        IndexEntry("differential", "md5", hashlib.md5(photo).hexdigest(), ("known",)),
    ])


def _reasons(result: ScanResult) -> list[str]:
    found = {u.reason for u in result.unscannable}
    found |= {a.fingerprint.skipped for a in result.attachments if a.fingerprint.skipped}
    return sorted(found)


async def _scan_all(scanner: Scanner, outcomes: list[Outcome]) -> None:
    gate = asyncio.Semaphore(THREADS)

    async def one(o: Outcome) -> None:
        async with gate:
            result = await scanner.scan(o.raw, o.name)
        o.verdict = str(result.verdict)
        o.reasons = _reasons(result)
        o.defects = sorted(set(result.defects))

    await asyncio.gather(*(one(o) for o in outcomes))


def selected(name: str) -> bool:
    """`DIFFERENTIAL_ONLY=utf-7,polyglot`: run only constructions whose names contain one
    of these (for whoever is fixing a gap); unset: all."""
    only = [s for s in os.environ.get("DIFFERENTIAL_ONLY", "").split(",") if s]
    return not only or any(s in name for s in only)


def _build(c: constructions.Construction) -> Outcome:
    o = Outcome(c.name, c.classes, c.limit)
    if not selected(c.name):
        o.unavailable = "not selected (DIFFERENTIAL_ONLY)"
        return o
    try:
        o.raw = c.build()
    except constructions.Unavailable as exc:
        o.unavailable = str(exc)
    except Exception as exc:
        o.error = f"{type(exc).__name__}: {exc}"
    return o


def differential_run() -> Run:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    # Builders share no image objects (constructions.photo_image() hands out copies: an
    # image once saved keeps encoder state that broke a TIFF written from another thread).
    with ThreadPoolExecutor(THREADS) as ex:
        outcomes = list(ex.map(_build, constructions.REGISTRY.values()))
    seconds["build"] = time.perf_counter() - started
    target = references.Target.of(constructions.photo())

    def refs(o: Outcome) -> None:
        o.shown_by = references.chains_showing(o.raw, target)

    ready = [o for o in outcomes if o.unavailable is None and o.error is None]
    t = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(refs, ready))
    seconds["references"] = time.perf_counter() - t

    t = time.perf_counter()
    settings = load_settings(None, {}).settings
    index = _index(settings, constructions.photo())
    with WorkerPool(processes=THREADS, memory_limit=1024**3) as pool:
        scanner = Scanner(settings, pool, lambda: index)
        asyncio.run(_scan_all(scanner, ready))
    seconds["mailfilter"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return Run({o.name: o for o in outcomes}, seconds)


def expected(o: Outcome) -> set[str]:
    return {"match", "unscannable"} if o.limit else {"match"}


def terminal_summary(terminalreporter: Any) -> None:
    """The suite's table at the end of the run (called from tests/conftest.py)."""
    if not RUNS:
        return
    run = RUNS[0]
    tr = terminalreporter
    tr.section("differential suite")
    shown = [o for o in run.outcomes.values() if o.shown]
    failing = [o for o in shown if o.verdict not in expected(o)]
    for o in run.outcomes.values():
        if o.unavailable and o.unavailable.startswith("not selected"):
            continue
        if o.unavailable or o.error:
            tr.write_line(f"{o.name:58} not built: {o.unavailable or o.error}")
            continue
        parsers = [p for p, chains in o.shown_by.items() if chains]
        chains = sorted({c for cs in o.shown_by.values() for c in cs})
        seen = (f"shown by {len(parsers)}/{len(o.shown_by)} parsers e.g. {chains[0]}"
                if chains else "not shown by any reference")
        flag = "FAIL " if o in failing else "     "
        reasons = ",".join(o.reasons)
        tr.write_line(f"{flag}{o.name:53} {o.verdict or '-':11} {reasons:28} {seen}")
    tr.write_line(f"constructions: {len(run.outcomes)}, shown by a reference: {len(shown)}, "
                  f"shown but not matched: {len(failing)}")
    tr.write_line("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))
    if run.summary_path is not None:
        tr.write_line(f"summary: {run.summary_path}")
