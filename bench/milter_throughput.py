"""How much does the milter cost Postfix? Mail through one private Postfix, with and without
`smtpd_milters`, in the same run.

One private Postfix instance (tests/proxy/postfix_harness.py, placement "milter"; needs
root, like the Postfix tests) has two public smtpd listeners: one with
`smtpd_milters = inet:127.0.0.1:PORT` (mailfilter, `mailfilter serve` with only the milter
listening, real worker pool, verdict cache off, embedded local store) and one with
`-o smtpd_milters=` (the baseline). Its relayhost is Postfix's `smtp-sink`. Postfix's
`smtp-source` sends the same prepared message to either listener, a new SMTP session per
message as from the Internet, and the clock runs until smtp-sink has received every
message. Rows:

- text: text-only mail (~2 KB);
- photo: one ~1 MP JPEG (~250 KB message), decoded and hashed each time (cache off);
- latency: one session at a time (`smtp-source -s 1`), text, ms per message from connect
  to QUIT.

Each figure is the median of `--rounds` runs; milter and baseline runs alternate (the order
flips every round) so that load from other work on the machine hits both alike. Also
shown: how fast Postfix accepted the messages (smtp-source's own time), since the milter
sits on that path.

    python bench/milter_throughput.py [--sessions 20] [--messages 1000]
                                      [--photo-messages 300] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_throughput import (  # the proxy bench's helpers  # noqa: I001
    RUN_TIMEOUT,
    free_port,
    photo_message,
    process,
    smtp_source,
    text_message,
)

from proxy.postfix_harness import postfix_instance  # (tests/ is on sys.path)

_DELIVERED = re.compile(rb"mesg=(\d+)")


def delivered(sink_log: Path) -> int:
    """Messages smtp-sink received so far (its -c counter line, updated as they arrive)."""
    data = sink_log.read_bytes()
    found = _DELIVERED.findall(data[-200:])
    return int(found[-1]) if found else 0


def wait_delivered(sink_log: Path, count: int, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while delivered(sink_log) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"smtp-sink got {delivered(sink_log)} of {count} messages")
        time.sleep(0.02)


def run_once(port: int, file: Path, sessions: int, messages: int, sink_log: Path
             ) -> tuple[float, float]:
    """(accepted messages/s, delivered messages/s) for `messages` sent to `port`."""
    target = delivered(sink_log) + messages
    started = time.perf_counter()
    submit = smtp_source(port, file, sessions, messages)
    wait_delivered(sink_log, target)
    total = time.perf_counter() - started
    return messages / submit, messages / total


def mailfilter_config(tmp: Path, milter_port: int) -> Path:
    path = tmp / "mailfilter.toml"
    path.write_text(textwrap.dedent(f"""
        [smtp]
        listen = ""
        hostname = "mailfilter.bench"
        max_connections = 500
        [milter]
        listen = "inet:127.0.0.1:{milter_port}"
        [store]
        path = "{tmp / 'store'}"
        cache_ttl = "0s"
        [quarantine]
        path = "{tmp / 'quarantine'}"
        [metrics]
        listen = ""
    """))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--photo-messages", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-messages", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix", "postconf"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian/Ubuntu: apt-get install postfix)")
    if os.geteuid() != 0:
        sys.exit("a private Postfix instance needs root (postfix -c DIR start)")

    runs: dict[str, list[tuple[float, float]]] = {}
    latency: dict[str, list[float]] = {}
    results: dict[str, Any] = {"cores": os.cpu_count(), "sessions": args.sessions,
                               "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="mf-milter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        text_file, photo_file = tmp / "text.eml", tmp / "photo.eml"
        photo_raw = photo_message()
        # smtp-source wants LF line ends (it adds the CR)
        text_file.write_bytes(text_message().replace(b"\r\n", b"\n"))
        photo_file.write_bytes(photo_raw.replace(b"\r\n", b"\n"))
        results["photo_message_bytes"] = len(photo_raw)
        sink_port, plain_port = free_port(), free_port()
        sink_log = tmp / "sink.log"
        with process(["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{sink_port}", "1000"],
                     sink_port, sink_log), \
             postfix_instance("milter", relayhost_port=sink_port, extra_master=(
                 f"127.0.0.1:{plain_port} inet n - n - - smtpd\n  -o smtpd_milters=\n"
             )) as postfix, \
             process([sys.executable, "-m", "mailfilter", "serve", "--config",
                      str(mailfilter_config(tmp, postfix.filter_port))],
                     postfix.filter_port, tmp / "serve.log"):
            ports = {"milter": postfix.smtpd_port, "plain": plain_port}
            for port in ports.values():  # warm up: processes, caches, workers
                run_once(port, text_file, args.sessions, 2 * args.sessions, sink_log)
            run_once(ports["milter"], photo_file, args.sessions, args.sessions, sink_log)
            for r in range(args.rounds):
                for case, file, count in (("text", text_file, args.messages),
                                          ("photo", photo_file, args.photo_messages)):
                    order = ["milter", "plain"] if r % 2 == 0 else ["plain", "milter"]
                    for mode in order:
                        runs.setdefault(f"{case}_{mode}", []).append(
                            run_once(ports[mode], file, args.sessions, count, sink_log))
                for mode in order:
                    seconds = smtp_source(ports[mode], text_file, 1, args.latency_messages)
                    latency.setdefault(mode, []).append(seconds / args.latency_messages * 1000)
            log_text = (tmp / "serve.log").read_text(errors="replace")
            results["milter_messages_logged"] = log_text.count("front_end=milter")
            results["milter_refusals"] = len(re.findall(r"action=(?:tempfail|reject)",
                                                        log_text))

    for key, values in runs.items():
        results[f"{key}_accept_mps"] = statistics.median(a for a, _ in values)
        results[f"{key}_mps"] = statistics.median(d for _, d in values)
        results[f"{key}_mps_all"] = [round(d, 1) for _, d in values]
    for mode, values in latency.items():
        results[f"latency_{mode}_ms"] = statistics.median(values)
    for case in ("text", "photo"):
        results[f"{case}_ratio"] = results[f"{case}_milter_mps"] / results[f"{case}_plain_mps"]
        results[f"{case}_ratios_all"] = [
            round(m[1] / p[1], 2) for m, p in zip(runs[f"{case}_milter"], runs[f"{case}_plain"],
                                                  strict=True)]
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in results.items()}))
        return 0
    r = results
    print(f"Postfix with and without the milter ({r['cores']} cores, smtp-source -s "
          f"{args.sessions}; {args.messages} text / {args.photo_messages} photo messages, "
          f"median of {args.rounds} alternating rounds)\n")
    print("| case | Postfix alone | Postfix + milter | ratio (each round) |")
    print("|---|---:|---:|---|")
    for case, label in (("text", "text-only"),
                        ("photo", f"one ~1 MP photo ({r['photo_message_bytes'] // 1000} KB)")):
        print(f"| {label}, delivered messages/s | {r[f'{case}_plain_mps']:.0f} | "
              f"{r[f'{case}_milter_mps']:.0f} | {r[f'{case}_ratio']:.2f} "
              f"({', '.join(f'{x:.2f}' for x in r[f'{case}_ratios_all'])}) |")
        print(f"| {label}, accepted messages/s | {r[f'{case}_plain_accept_mps']:.0f} | "
              f"{r[f'{case}_milter_accept_mps']:.0f} | |")
    print(f"| text, one session at a time, ms per message | {r['latency_plain_ms']:.2f} | "
          f"{r['latency_milter_ms']:.2f} | +{r['latency_milter_ms'] - r['latency_plain_ms']:.2f} |")
    print(f"\nmailfilter logged {r['milter_messages_logged']} messages "
          f"({r['milter_refusals']} refused or tempfailed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
