"""The soak bench (bench/soak.py) in a short run: mixed traffic at a steady rate through
`mailfilter serve` with faults injected at random (next hop restarts, workers killed,
Redis connections dropped, Redis restarted); no message may be lost, duplicated or left
without a reply, and serve must stop cleanly. The full run (minutes) is for the README."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 30 s of traffic by design
def test_short_soak_loses_nothing() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "30", "--rate", "10",
         "--fault-interval", "4", "--seed", "5", "--json"],
        capture_output=True, text=True, timeout=400)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] and done.returncode == 0, result
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unanswered"] == 0
    assert result["sent"] == 300
    assert result["sent"] == result["delivered"] + result["quarantined"] + result["refused"]
    assert sum(result["faults"].values()) >= 3, result["faults"]
