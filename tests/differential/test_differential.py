"""Issue 15, item 8: no construction that a reference program shows may be called anything
but `match` by mailfilter (`unscannable` where a documented limit, such as a password, is the
construction's point).

A construction no reference shows is skipped and listed as "not shown by any reference" in
the run's summary: the suite claims only what other software demonstrably displays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import constructions
import pytest
from differential_run import RUNS, Run, differential_run, expected


# The fixture lives here, not in a conftest.py of this folder: tests/ is no package, so a
# second conftest module would shadow tests/conftest.py for every module importing from it.
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

# Constructions that references show and mailfilter does not match yet: each is an open gap,
# to be removed from this list as the fix lands (strict: a fixed gap fails until removed).
KNOWN_GAPS: list[tuple[str, str]] = [
]


def _params() -> list[object]:
    gaps = dict(KNOWN_GAPS)
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=gaps[name]))
            if name in gaps else name for name in constructions.REGISTRY]


def test_registry_is_large_enough() -> None:
    assert len(constructions.REGISTRY) >= 100


def test_known_gaps_name_constructions() -> None:
    unknown = [name for name, _ in KNOWN_GAPS if name not in constructions.REGISTRY]
    assert not unknown


@pytest.mark.slow  # the whole run: 70-130 s on two cores shared with other work
@pytest.mark.parametrize("name", _params())
def test_shown_photo_is_matched(differential: Run, name: str) -> None:
    o = differential.outcomes[name]
    assert o.error is None, f"building {name} failed: {o.error}"
    if o.unavailable:
        pytest.skip(o.unavailable)
    if not o.shown:
        pytest.skip("not shown by any reference")
    chains = sorted({c for cs in o.shown_by.values() for c in cs})
    assert o.verdict in expected(o), (
        f"{name}: shown by {chains}, mailfilter says {o.verdict} "
        f"(reasons {o.reasons}, defects {o.defects})")
