"""`mailfilter demo`: the whole path once, on this machine, with nothing to set up.

Everything lives in one directory (a temporary one, or `--dir`): a settings file for the
embedded local store, a recording SMTP sink standing in for the next hop, and the real
service, `mailfilter serve`, started as a subprocess exactly as an operator runs it. A
generated benign stand-in image (a synthetic pattern drawn here from a fixed seed, never
real material) is enrolled into the list "demo-known" with `mailfilter hashes add`; then
one clean message and one carrying a re-encoded, resized copy of the stand-in are sent
over SMTP. The demo reports what happened to each (relayed byte for byte; quarantined,
as `mailfilter quarantine show` shows the entry), the report mail that reached the sink,
and the service's counters, then stops the service with SIGTERM.

Exit 0 when everything behaved as described, 1 when a check failed, 2 when the demo
could not run (a port or directory problem).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any, Final

import click

from mailfilter.actions.report.text import distance_text
from mailfilter.cli.command_line import fail, json_option

__all__ = ["demo", "run_demo", "stand_in_image"]

LIST_NAME: Final = "demo-known"
STAND_IN_LABEL: Final = "generated-benign-stand-in"
REPORT_TO: Final = "abuse@demo.invalid"
SENDER: Final = "alice@demo.invalid"
RECIPIENT: Final = "bob@demo.invalid"
START_TIMEOUT: Final = 60.0  # worker pool, index load: a few seconds on a laptop
DELIVERY_TIMEOUT: Final = 15.0


# --- the stand-in image ------------------------------------------------------------------


def stand_in_image(seed: int, width: int = 640, height: int = 480, fmt: str = "PNG",
                   quality: int = 90) -> bytes:
    """A generated benign stand-in: smooth colour waves with a few filled shapes drawn from
    `seed` (enough structure for PDQ quality 100), encoded as `fmt`. The same seed always
    gives the same picture; different seeds give unrelated ones."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for _ in range(3):
        fx, fy = rng.uniform(0.7, 3.5, 2)
        phase = rng.uniform(0.0, 2 * np.pi)
        planes.append(128 + 90 * np.sin(2 * np.pi * fx * xx / width + phase)
                      * np.cos(2 * np.pi * fy * yy / height))
    rgb = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(10):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width // 3)), y0 + int(rng.integers(30, height // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _resized_jpeg(png: bytes, scale: float, quality: int) -> bytes:
    """The stand-in as a sender would pass it on: smaller and re-compressed, so its bytes
    (and exact hashes) differ from what was enrolled and only the perceptual hashes match."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        small = img.convert("RGB").resize((int(img.width * scale), int(img.height * scale)),
                                          Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --- the next hop: a recording sink -------------------------------------------------------


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class _Sink:
    port: int
    messages: list[SinkMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, predicate: Any, timeout: float) -> SinkMessage | None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [m for m in self.messages if predicate(m)]
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


class _SinkHandler:
    def __init__(self, sink: _Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.sink.lock:
            self.sink.messages.append(SinkMessage(
                str(envelope.mail_from), list(envelope.rcpt_tos),
                bytes(envelope.original_content or b"")))
        return "250 2.0.0 Ok: queued by the demo sink"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _running_sink() -> Iterator[_Sink]:
    from aiosmtpd.controller import Controller

    sink = _Sink(_free_port())
    controller = Controller(_SinkHandler(sink), hostname="127.0.0.1", port=sink.port,
                            decode_data=False, enable_SMTPUTF8=True)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# --- the service ---------------------------------------------------------------------------


CONFIG: Final = """\
# Written by `mailfilter demo`: the embedded local store, everything under {dir}.
[smtp]
listen = "127.0.0.1:{port}"
next_hop = "127.0.0.1:{sink}"
hostname = "mailfilter.demo"
next_hop_timeout = "10s"
shutdown_timeout = "10s"

[store]
redis_url = ""
path = "{dir}/store"
reload_interval = "1s"

[quarantine]
path = "{dir}/quarantine"

[report]
to = ["{report_to}"]
from = "mailfilter@demo.invalid"

[workers]
processes = 1

[metrics]
listen = "127.0.0.1:{metrics}"
"""


def _clean_environment() -> dict[str, str]:
    """The caller's environment without MAILFILTER_* overrides: the demo's settings file
    says everything (an operator's MAILFILTER_STORE__REDIS_URL must not send the demo's
    stand-in into a production list)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILFILTER_")}


def _mailfilter(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                          text=True, timeout=timeout, env=_clean_environment())


def _http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _wait_ready(proc: subprocess.Popen[bytes], metrics_port: int) -> tuple[bool, str]:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False, f"mailfilter serve exited with {proc.returncode}"
        status, body = _http_get(metrics_port, "/readyz")
        if status == 200:
            return True, body.strip()
        last = body.strip() or last
        time.sleep(0.1)
    return False, f"not ready after {START_TIMEOUT:.0f}s: {last}"


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


# --- messages --------------------------------------------------------------------------------


def _message(subject: str, body: str, attachment: tuple[str, bytes]) -> bytes:
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = SENDER
    msg["To"] = RECIPIENT
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}.{os.getpid()}@demo.invalid>"
    msg.set_content(body)
    name, data = attachment
    msg.add_attachment(data, maintype="image", subtype=name.rsplit(".", 1)[1].replace(
        "jpg", "jpeg"), filename=name)
    return msg.as_bytes(policy=SMTP_POLICY)  # CRLF line ends, as on the wire


def _send(port: int, raw: bytes) -> str:
    """One SMTP transaction; the reply to the end of DATA ("250 2.0.0 Ok …")."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("demo-client.invalid")
        client.mail(SENDER)
        code, text = client.rcpt(RECIPIENT)
        if code != 250:
            return f"{code} {text.decode(errors='replace')}"
        code, text = client.data(raw)
        return f"{code} {text.decode(errors='replace')}"


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class DemoResult:
    directory: str
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "dir": self.directory, **self.info,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.checks]}


def _quarantine_record(config: Path, entry_id: str) -> tuple[dict[str, Any] | None, str]:
    """The quarantine entry as the operator sees it, `mailfilter quarantine show ID
    --json`; (None, why) when that fails."""
    shown = _mailfilter("quarantine", "show", entry_id, "--json", "--config", str(config))
    if shown.returncode != 0 or not shown.stdout.strip():
        return None, (shown.stderr.strip() or f"exit {shown.returncode}")[-500:]
    try:
        record: dict[str, Any] = json.loads(shown.stdout.splitlines()[0])
    except json.JSONDecodeError as exc:
        return None, f"quarantine show --json printed no JSON: {exc}"
    return record, ""


def _report_summary(raw: bytes) -> dict[str, Any]:
    """A report mail as text: its headers of interest, its text part decoded, and the
    type and name of every other part (never their content)."""
    import email
    from email import policy

    msg = email.message_from_bytes(raw, policy=policy.default)
    text = ""
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_type() == "text/plain" and not text:
            text = str(part.get_content())
        else:
            parts.append({"content_type": part.get_content_type(),
                          "filename": part.get_filename()})
    return {"from": str(msg["From"]), "subject": str(msg["Subject"]), "text": text,
            "other_parts": parts}


def _metric_lines(text: str) -> list[str]:
    wanted = ("mailfilter_messages_total", "mailfilter_matches_total",
              "mailfilter_attachments_scanned_total")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def run_demo(directory: Path) -> DemoResult:
    """The demo in `directory` (created, must be empty). Never raises for a failed
    check: the result says which one failed."""
    result = DemoResult(str(directory))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stand_in = stand_in_image(20240917)
    stand_in_path = directory / "stand-in.png"
    stand_in_path.write_bytes(stand_in)
    config = directory / "mailfilter.toml"
    port, metrics_port = _free_port(), _free_port()
    with _running_sink() as sink:
        config.write_text(CONFIG.format(dir=directory, port=port, sink=sink.port,
                                        metrics=metrics_port, report_to=REPORT_TO))
        result.info["proxy"] = f"127.0.0.1:{port}"
        result.info["sink"] = f"127.0.0.1:{sink.port}"
        result.info["metrics"] = f"http://127.0.0.1:{metrics_port}/metrics"

        added = _mailfilter("hashes", "add", "--config", str(config), "--list", LIST_NAME,
                            "--label", STAND_IN_LABEL, "--json", str(stand_in_path))
        summary = json.loads(added.stdout.splitlines()[-1]) if added.stdout.strip() else {}
        result.info["enrolled"] = {"list": LIST_NAME, "image": str(stand_in_path),
                                   "entries": summary.get("total"),
                                   "label": STAND_IN_LABEL}
        if not result.check("enroll the stand-in", added.returncode == 0,
                            added.stderr.strip()[-500:]):
            return result

        log_path = directory / "serve.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailfilter", "serve", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env=_clean_environment())
            try:
                _exercise(result, proc, config, sink, port, metrics_port,
                          stand_in)
            finally:
                code = _stop(proc)
                result.check("SIGTERM stops the service cleanly (exit 0)", code == 0,
                             f"exit {code}")
        result.info["serve_log"] = str(log_path)
    return result


def _exercise(result: DemoResult, proc: subprocess.Popen[bytes], config: Path, sink: _Sink,
              port: int, metrics_port: int, stand_in: bytes) -> None:
    ready, detail = _wait_ready(proc, metrics_port)
    if not result.check("service ready (/readyz)", ready, detail):
        return

    clean = _message("demo clean", "A clean message with an unrelated picture.\n",
                     ("holiday.png", stand_in_image(7)))
    reply = _send(port, clean)
    relayed = sink.wait(lambda m: b"Subject: demo clean" in m.data, DELIVERY_TIMEOUT)
    header = b"X-Mailfilter: clean\r\n"
    identical = relayed is not None and relayed.data == header + clean
    result.info["clean"] = {"reply": reply, "relayed": relayed is not None,
                            "byte_identical": identical, "size": len(clean)}
    result.check("clean message relayed (250)", reply.startswith("250"), reply)
    result.check("the sink got it byte for byte (after the added X-Mailfilter line)",
                 identical)

    copy = _resized_jpeg(stand_in, 0.6, 70)
    hit = _message("demo match", "A message carrying a resized, re-compressed copy of the "
                   "enrolled stand-in.\n", ("copy.jpg", copy))
    reply = _send(port, hit)
    entry_id = reply.split("Ok ", 1)[1].split()[0].rstrip(",") if " Ok " in reply else ""
    result.check("matching message accepted into quarantine (250)",
                  reply.startswith("250") and bool(entry_id), reply)
    record, why = _quarantine_record(config, entry_id) if entry_id else (None, "no id")
    result.check("`mailfilter quarantine show ID --json` shows the entry",
                 record is not None, why)
    matches = [{k: m.get(k) for k in ("list", "algorithm", "distance", "labels")}
               for m in (record or {}).get("matches", [])]
    result.info["match"] = {"reply": reply, "quarantine_id": entry_id, "matches": matches,
                            "record": record}
    result.check("quarantine entry holds the matches against 'demo-known'",
                 any(m["list"] == LIST_NAME for m in matches),
                 ", ".join(f"{m['list']}/{m['algorithm']} {m['distance']}" for m in matches))
    leaked = sink.wait(lambda m: b"Subject: demo match" in m.data and
                       RECIPIENT in m.rcpt_tos, 1.0)
    result.check("the matching message was not relayed", leaked is None)

    # Each quarantined message is reported: report mail to [report] to through the next
    # hop, sent from the durable outbox in the background.
    report = sink.wait(lambda m: REPORT_TO in m.rcpt_tos, DELIVERY_TIMEOUT)
    result.info["report"] = {"to": REPORT_TO, "received": report is not None,
                             **(_report_summary(report.data) if report is not None else {})}
    result.check(f"report mail reached the sink for {REPORT_TO}", report is not None)
    result.check("the report carries no image content",
                 report is not None and not _carries_image(report.data, copy))

    status, text = _http_get(metrics_port, "/metrics")
    result.info["metrics_lines"] = _metric_lines(text) if status == 200 else []


def _carries_image(raw: bytes, image: bytes) -> bool:
    """Whether a mail carries the image, as bytes or as any MIME part of an image type."""
    import email

    msg = email.message_from_bytes(raw)
    for part in msg.walk():
        if part.get_content_maintype() == "image":
            return True
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and image[:64] in payload:
            return True
    return False


# --- output ----------------------------------------------------------------------------------


def demo_text(result: DemoResult) -> str:
    info = result.info
    lines = [f"mailfilter demo in {result.directory}"]
    enrolled = info.get("enrolled")
    if enrolled:
        lines.append(f"  enrolled {enrolled['image']} (a generated benign stand-in, label "
                     f"{enrolled['label']!r}) into list {enrolled['list']!r}: "
                     f"{enrolled['entries']} entries")
    if "proxy" in info:
        lines.append(f"  mailfilter serve on {info['proxy']}, next hop: the demo's sink "
                     f"on {info['sink']}, metrics {info['metrics']}")
    clean = info.get("clean")
    if clean:
        lines += ["", "clean message (an unrelated generated picture):",
                  f"  reply: {clean['reply']}",
                  f"  relayed to the sink: {'yes' if clean['relayed'] else 'NO'}; "
                  f"byte-identical after the added 'X-Mailfilter: clean' line: "
                  f"{'yes' if clean['byte_identical'] else 'NO'}"]
    match = info.get("match")
    if match:
        lines += ["", "matching message (a resized JPEG copy of the stand-in):",
                  f"  reply: {match['reply']}",
                  f"  quarantine id: {match['quarantine_id'] or '-'}"]
        for m in match["matches"]:
            lines.append(f"    match: list {m['list']!r} {m['algorithm']} distance "
                         f"{distance_text(m['distance'])} labels {','.join(m['labels'] or [])}")
        record = match.get("record")
        if record:
            sender = (record.get("envelope") or {}).get("mail_from")
            lines.append("  `mailfilter quarantine show --json`: received "
                         f"{record.get('received')}, from {sender}, "
                         f"{len(record.get('attachments', []))} image(s), action "
                         f"{record.get('action')}; image content is never shown")
    report = info.get("report")
    if report:
        lines += ["", f"report mail to {report['to']} (as the sink received it):"]
        if report["received"]:
            lines += [f"  From: {report['from']}", f"  Subject: {report['subject']}", ""]
            lines += ["  " + line for line in report["text"].splitlines()]
            for part in report["other_parts"]:
                lines.append(f"  [attached: {part['content_type']}"
                             f"{' ' + part['filename'] if part['filename'] else ''}]")
        else:
            lines.append("  none arrived")
    if info.get("metrics_lines"):
        lines += ["", "counters:"] + ["  " + m for m in info["metrics_lines"]]
    lines += ["", "checks:"]
    lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}" + (f" ({c.detail})" if c.detail and
              not c.ok else "") for c in result.checks]
    lines.append("demo ok" if result.ok else "demo FAILED (serve log: "
                 f"{info.get('serve_log', '-')})")
    return "\n".join(lines)


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Work in this directory (created; must be empty) and keep "
              "it; default: a temporary directory, removed afterwards.")
@json_option
def demo(directory: Path | None, as_json: bool) -> None:
    """Run the whole filter once on this machine: embedded store, a local sink as next hop,
    a generated benign stand-in enrolled as "known", one clean and one matching message.

    Exit 0 when everything behaved as expected, 1 when a check failed, 2 when the demo could
    not run."""
    keep = directory is not None
    if directory is not None:
        if directory.exists() and any(directory.iterdir()):
            fail(f"{directory}: not empty (the demo needs an empty or new directory)")
        work = directory.resolve()
    else:
        work = Path(tempfile.mkdtemp(prefix="mailfilter-demo-"))
    try:
        result = run_demo(work)
    except OSError as exc:
        fail(f"demo could not run: {exc}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if not keep:
        result.info["removed"] = True
    if as_json:
        click.echo(json.dumps(result.as_json()))
    else:
        click.echo(demo_text(result))
        if not keep:
            click.echo(f"({work} removed; run with --dir DIR to keep the settings, store, "
                       "quarantine and log)")
    sys.exit(0 if result.ok else 1)

