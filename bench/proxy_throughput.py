"""How fast does the SMTP proxy relay mail, and what latency does it add?

Postfix's `smtp-source` drives mail into `mailfilter serve` (a subprocess, real worker pool,
embedded local store), whose next hop is Postfix's `smtp-sink`. The baseline, in the same
run against the same sink: a bare relay, aiosmtpd receiving and aiosmtplib sending (reusing
its next-hop connections, no scanning) -- the floor of any Python proxy.

Rows:
- text: text-only mail (~2 KB), `smtp-source -s SESSIONS -m MESSAGES`;
- photo: one ~1 MP JPEG (~250 KB message), verdict cache off, so every message is
  decoded and hashed; photo (cache): the same with the cache on (the same photo again);
- video: one ~5 MB 720p H.264 clip (ffmpeg's testsrc2, made with the system ffmpeg),
  verdict cache off: every message's frames are sampled (once a second) and hashed;
- latency: one client, one message at a time, time from the final "." to the reply;
  p50/p99 for the proxy and the bare relay, and the p99 the proxy adds.

Loopback only; every run is bounded in messages and time.

    python bench/proxy_throughput.py [--sessions 20] [--messages 2000] [--rounds 5] [--json]

The text rows alternate bare and proxy runs (`--rounds`) with both servers up, and give the
median of each and the median of the per-round ratios: one long run of each in turn was
swayed by whatever else the machine did at the time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

RUN_TIMEOUT = 600.0

BARE_RELAY = textwrap.dedent("""
    import asyncio, sys
    import aiosmtplib
    from aiosmtpd.smtp import SMTP

    host, port, sink_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    idle = []

    class Relay:
        async def handle_DATA(self, server, session, envelope):
            client = idle.pop() if idle else None
            try:
                if client is None or not client.is_connected:
                    client = aiosmtplib.SMTP(hostname=host, port=sink_port, start_tls=False)
                    await client.connect()
                await client.sendmail(envelope.mail_from, envelope.rcpt_tos,
                                      envelope.original_content)
            except Exception as exc:
                return f"451 4.4.1 {exc}"
            idle.append(client)
            return "250 2.0.0 Ok"

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Relay(), hostname="bare.test", decode_data=False,
                         data_size_limit=100_000_000), host, port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} never opened")


@contextlib.contextmanager
def process(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def text_message() -> bytes:
    from factories import message, message_bytes

    body = "Hello,\n\n" + "This is a plain text message for the throughput bench.\n" * 30
    return message_bytes(message(subject="bench text", body=body))


def photo_message() -> bytes:
    from factories import jpeg, message, message_bytes

    return message_bytes(message(subject="bench photo", attachments=[
        ("photo.jpg", "image/jpeg", jpeg(7, 1200, 860, quality=90))]))


def video_message(tmp: Path) -> bytes | None:
    """A message carrying a ~5 MB 720p H.264 clip, or None without a system ffmpeg."""
    if shutil.which("ffmpeg") is None:
        return None
    clip = tmp / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=duration=15:size=1280x720:rate=25", "-c:v", "libx264",
                    "-b:v", "2600k", "-pix_fmt", "yuv420p", "-y", str(clip)], check=True)
    from factories import message, message_bytes

    return message_bytes(message(subject="bench video", attachments=[
        ("clip.mp4", "video/mp4", clip.read_bytes())]))


def smtp_source(port: int, file: Path, sessions: int, messages: int) -> float:
    """Seconds smtp-source took; raises when it failed."""
    started = time.perf_counter()
    run = subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-f", "alice@example.org",
         "-t", "bob@example.net", "-F", str(file), f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {run.stderr.strip()[:300]}")
    return seconds


def latencies(port: int, raw: bytes, count: int) -> list[float]:
    """Milliseconds from the final dot to the reply, one message at a time."""
    sock = socket.create_connection(("127.0.0.1", port), 30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle/delayed-ACK stalls
    f = sock.makefile("rb")

    def reply() -> str:
        while True:
            line = f.readline().decode()
            if len(line) < 4 or line[3] != "-":
                return line

    reply()
    sock.sendall(b"EHLO bench.test\r\n")
    reply()
    out = []
    for _ in range(count):
        sock.sendall(b"MAIL FROM:<a@example.org>\r\n")
        assert reply().startswith("250")
        sock.sendall(b"RCPT TO:<b@example.net>\r\n")
        assert reply().startswith("250")
        sock.sendall(b"DATA\r\n")
        assert reply().startswith("354")
        sock.sendall(raw)
        started = time.perf_counter()
        sock.sendall(b".\r\n")
        answer = reply()
        out.append((time.perf_counter() - started) * 1000)
        assert answer.startswith("250"), answer
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def config(tmp: Path, port: int, sink_port: int, cache: bool) -> Path:
    path = tmp / f"mailfilter-{'cache' if cache else 'nocache'}.toml"
    path.write_text(textwrap.dedent(f"""
        [smtp]
        listen = "127.0.0.1:{port}"
        next_hop = "127.0.0.1:{sink_port}"
        hostname = "mailfilter.bench"
        max_connections = 200
        [store]
        path = "{tmp / 'store'}"
        cache_ttl = "{'1d' if cache else '0s'}"
        [quarantine]
        path = "{tmp / 'quarantine'}"
        [metrics]
        listen = ""
    """))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--photo-messages", type=int, default=1000)
    ap.add_argument("--latency-messages", type=int, default=500)
    ap.add_argument("--video-messages", type=int, default=40,
                    help="messages with one ~5 MB video (0: leave the row out)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating bare/proxy text runs; the ratio is their median")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian/Ubuntu: apt-get install postfix)")

    results: dict[str, Any] = {"cores": os.cpu_count(), "sessions": args.sessions}
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp_name:
        tmp = Path(tmp_name)
        text_file, photo_file = tmp / "text.eml", tmp / "photo.eml"
        text_raw, photo_raw = text_message(), photo_message()
        # smtp-source wants LF line ends (it adds the CR)
        text_file.write_bytes(text_raw.replace(b"\r\n", b"\n"))
        photo_file.write_bytes(photo_raw.replace(b"\r\n", b"\n"))
        results["photo_message_bytes"] = len(photo_raw)
        sink_port = free_port()
        sink_args = ["smtp-sink", "-u", "nobody", "-m", "1000", f"127.0.0.1:{sink_port}",
                     "1000"]
        if os.geteuid() != 0:
            sink_args = [a for a in sink_args if a not in ("-u", "nobody")]
        with contextlib.ExitStack() as stack:
            stack.enter_context(process(sink_args, sink_port, tmp / "sink.log"))
            bare_port, port = free_port(), free_port()
            stack.enter_context(process(
                [sys.executable, "-c", BARE_RELAY, "127.0.0.1", str(bare_port),
                 str(sink_port)], bare_port, tmp / "bare.log"))
            stack.enter_context(process(
                [sys.executable, "-m", "mailfilter", "serve", "--config",
                 str(config(tmp, port, sink_port, False))], port, tmp / "serve.log"))
            time.sleep(1.0)  # workers up
            # Warm both up (connections to the sink, imports, the allocator), then
            # alternate the text runs so that whatever else the machine does falls on both.
            smtp_source(bare_port, text_file, args.sessions, args.messages // 4)
            smtp_source(port, text_file, args.sessions, args.messages // 4)
            bare_mps, proxy_mps, ratios = [], [], []
            for i in range(args.rounds):
                order = [(bare_port, bare_mps), (port, proxy_mps)]
                for target, out in order if i % 2 == 0 else reversed(order):
                    out.append(args.messages / smtp_source(target, text_file, args.sessions,
                                                           args.messages))
                ratios.append(proxy_mps[-1] / bare_mps[-1])
            results["bare_text_mps"] = statistics.median(bare_mps)
            results["proxy_text_mps"] = statistics.median(proxy_mps)
            results["text_ratio"] = statistics.median(ratios)
            results["text_ratios"] = [round(r, 3) for r in ratios]
            results["bare_latency_ms"] = latencies(bare_port, text_raw, args.latency_messages)
            results["proxy_latency_ms"] = latencies(port, text_raw, args.latency_messages)
            seconds = smtp_source(port, photo_file, args.sessions, args.photo_messages)
            results["proxy_photo_mps"] = args.photo_messages / seconds
            video_raw = video_message(tmp) if args.video_messages > 0 else None
            if video_raw is not None:
                video_file = tmp / "video.eml"
                video_file.write_bytes(video_raw.replace(b"\r\n", b"\n"))
                results["video_message_bytes"] = len(video_raw)
                seconds = smtp_source(port, video_file, min(args.sessions, 4),
                                      args.video_messages)
                results["proxy_video_mps"] = args.video_messages / seconds
            cached_port = free_port()
            stack.enter_context(process(
                [sys.executable, "-m", "mailfilter", "serve", "--config",
                 str(config(tmp, cached_port, sink_port, True))], cached_port,
                tmp / "serve-cached.log"))
            time.sleep(1.0)
            seconds = smtp_source(cached_port, photo_file, args.sessions, args.photo_messages)
            results["proxy_photo_cached_mps"] = args.photo_messages / seconds

    bare_l, proxy_l = results.pop("bare_latency_ms"), results.pop("proxy_latency_ms")
    results.update(
        bare_p50_ms=statistics.median(bare_l), bare_p99_ms=pct(bare_l, 99),
        proxy_p50_ms=statistics.median(proxy_l), proxy_p99_ms=pct(proxy_l, 99),
    )
    results["added_p99_ms"] = results["proxy_p99_ms"] - results["bare_p99_ms"]
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in results.items()}))
        return 0
    r = results
    print(f"Proxy throughput ({r['cores']} cores, smtp-source -s {args.sessions}; "
          f"{args.messages} text / {args.photo_messages} photo messages)\n")
    print("| case | bare relay | mailfilter | target |")
    print("|---|---:|---:|---|")
    print(f"| text-only, messages/s (median of {args.rounds} alternating runs) | "
          f"{r['bare_text_mps']:.0f} | {r['proxy_text_mps']:.0f} "
          f"(median ratio {r['text_ratio']:.2f}x) | >= 0.9x bare |")
    print(f"| one ~1 MP photo ({r['photo_message_bytes'] // 1000} KB), cache off, "
          f"messages/s | - | {r['proxy_photo_mps']:.0f} | >= 100 |")
    print(f"| same photo again, cache on, messages/s | - | {r['proxy_photo_cached_mps']:.0f} "
          f"| |")
    if "proxy_video_mps" in r:
        print(f"| one ~5 MB 720p video ({r['video_message_bytes'] // 1000} KB), cache off, "
              f"messages/s | - | {r['proxy_video_mps']:.2f} | (reported) |")
    print(f"| text latency p50, ms (one at a time) | {r['bare_p50_ms']:.2f} | "
          f"{r['proxy_p50_ms']:.2f} | |")
    print(f"| text latency p99, ms | {r['bare_p99_ms']:.2f} | {r['proxy_p99_ms']:.2f} "
          f"({r['added_p99_ms']:+.2f}) | <= +5 ms |")
    print(f"\nratio in each round: {', '.join(f'{x:.2f}' for x in r['text_ratios'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
