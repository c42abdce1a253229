"""How long does `mailfilter --help` take, against starting Python at all?

Median of `--runs` runs of each, alternating, in the same run (an operator's first command
should answer at once: the target is at most 0.3 s more than `python -c pass`).

    python bench/cli_speed.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def seconds(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bare: list[float] = []
    help_: list[float] = []
    for _ in range(args.runs):
        bare.append(seconds(["-c", "pass"]))
        help_.append(seconds(["-m", "mailfilter", "--help"]))
    result = {"python_pass_s": statistics.median(bare),
              "mailfilter_help_s": statistics.median(help_)}
    result["added_s"] = result["mailfilter_help_s"] - result["python_pass_s"]
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in result.items()}))
        return 0
    print(f"| measure (median of {args.runs}) | seconds |\n|---|---:|")
    print(f"| `python -c pass` | {result['python_pass_s']:.3f} |")
    print(f"| `mailfilter --help` | {result['mailfilter_help_s']:.3f} |")
    print(f"| added (target <= 0.3) | {result['added_s']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
