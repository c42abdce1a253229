"""The session fixture of the differential suite and its summary at the end of the run
(see differential_run.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from differential_run import RUNS, Run, differential_run, expected


@pytest.fixture(scope="session")
def differential(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    run = differential_run()
    path = tmp_path_factory.mktemp("differential") / "summary.json"
    path.write_text(json.dumps({"seconds": run.seconds,
                                "constructions": [o.as_json() for o in run.outcomes.values()]},
                               indent=1))
    run.summary_path = path
    RUNS.append(run)
    yield run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
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
