"""A private Postfix instance for tests (its own config, queue and data directories, see
/work/shared/POSTFIX-NOTES.md) with mailfilter in one of three placements:

- ``after-queue``: ``content_filter = scan:[127.0.0.1]:FILTER`` (mail waits in Postfix's
  queue while the filter is down);
- ``before-queue``: ``-o smtpd_proxy_filter=127.0.0.1:FILTER`` on the public smtpd (the
  sending client gets mailfilter's answer, or 451 while the filter is down);
- ``milter``: ``smtpd_milters = inet:127.0.0.1:FILTER`` (the milter tests, tests/milter).

Either way the reinjection smtpd on REINJECT is mailfilter's next hop and a recording sink
is Postfix's relayhost; mail is sent to the public smtpd with swaks. `mailfilter serve`
runs as a subprocess (`start_proxy`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import waiting

from proxy.proxy_harness import (
    KNOWN,
    RecordingSink,
    enroll,
    free_port,
    running_sink,
    spawn_serve,
    wait_port,
    write_config,
)

Placement = Literal["after-queue", "before-queue", "milter"]


def require_postfix() -> None:
    """At module level of a Postfix test module: skip it when Postfix or swaks is missing,
    unless CI is set (then fail)."""
    missing = [t for t in ("postfix", "postconf", "postqueue", "swaks")
               if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {', '.join(missing)} not installed", pytrace=False)
        pytest.skip(f"Postfix tests need {', '.join(missing)} (not installed)",
                    allow_module_level=True)


def _postconf_main(key: str) -> str:
    return subprocess.run(["postconf", "-h", key], capture_output=True, text=True,
                          check=True).stdout.strip()


@dataclass
class Instance:
    config_dir: Path
    smtpd_port: int
    filter_port: int
    reinject_port: int
    sink: RecordingSink
    tmp: Path
    placement: Placement

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        # `postfix` prints its fatal errors only to a terminal: run it under script(1)
        return subprocess.run(["script", "-qec", " ".join(["postfix", "-c",
                               str(self.config_dir), *args]), "/dev/null"],
                              capture_output=True, text=True, timeout=60)

    def queue(self) -> list[dict[str, object]]:
        out = subprocess.run(["postqueue", "-c", str(self.config_dir), "-j"],
                             capture_output=True, text=True, timeout=30).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.config_dir), "-f"], capture_output=True,
                       timeout=30)

    def swaks(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["swaks", "--server", f"127.0.0.1:{self.smtpd_port}",
                               "--from", "alice@example.org", "--helo", "client.test",
                               *args], capture_output=True, text=True, timeout=60)

    def maillog(self) -> str:
        path = self.tmp / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtputf8_enable = yes
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 2s
maillog_file_prefixes = {tmp}
maillog_file = {tmp}/maillog
"""

# What each placement adds to main.cf, and to the public smtpd in master.cf.
PLACEMENT_MAIN_CF = {
    "after-queue": "content_filter = scan:[127.0.0.1]:{filter}\n",
    "before-queue": "",
    "milter": "smtpd_milters = inet:127.0.0.1:{filter}\nmilter_protocol = 6\n"
              "milter_default_action = tempfail\n",
}
PLACEMENT_SMTPD = {
    "after-queue": "",
    "before-queue": "  -o smtpd_proxy_filter=127.0.0.1:{filter}\n"
                    "  -o smtpd_proxy_timeout=30s\n",
    "milter": "",
}

PUBLIC_MASTER_CF = """\
127.0.0.1:{smtpd} inet n - n - - smtpd
{public_options}\
"""
REINJECT_MASTER_CF = """\
127.0.0.1:{reinject} inet n - n - 10 smtpd
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o smtpd_helo_restrictions=
  -o smtpd_client_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
"""
SERVICES_MASTER_CF = """\
scan      unix  -       -       n       -       10      smtp
  -o smtp_send_xforward_command=yes
  -o disable_mime_output_conversion=yes
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
showq     unix  n       -       n       -       -       showq
postlog   unix-dgram n  -       n       -       1       postlogd
"""
# The whole of it, as one template ({smtpd}, {public_options}, {reinject}).
MASTER_CF = PUBLIC_MASTER_CF + REINJECT_MASTER_CF + SERVICES_MASTER_CF


@contextlib.contextmanager
def postfix_instance(placement: Placement, extra_master: str = "",
                     relayhost_port: int | None = None, *, main_cf: str | None = None,
                     reinject_master: str | None = None, public_master: str | None = None
                     ) -> Iterator[Instance]:
    """Start a private Postfix with mailfilter in `placement`; stop and remove it after.
    `extra_master`: more master.cf lines (e.g. a second public smtpd); `relayhost_port`:
    relay to this port instead of the recording sink (a faster sink for benchmarks).
    `main_cf` / `reinject_master` / `public_master`: the placement's main.cf lines / the
    reinjection smtpd / the public service(s) instead of the harness's own (documented
    snippets, with `{filter}`, `{reinject}` and `{smtpd}` where their ports go)."""
    # Postfix's daemons run as user postfix: every directory above queue and data must be
    # traversable by it (pytest's own temp directory is 0700).
    tmp = Path(tempfile.mkdtemp(prefix="mailfilter-postfix-"))
    tmp.chmod(0o755)
    config_dir, queue, data = tmp / "etc", tmp / "queue", tmp / "data"
    for d in (config_dir, queue, data):
        d.mkdir()
    shutil.chown(data, "postfix")
    with running_sink() as sink:
        inst = Instance(config_dir, free_port(), free_port(), free_port(), sink, tmp,
                        placement)
        (config_dir / "main.cf").write_text(
            MAIN_CF.format(queue=queue, data=data, sink=relayhost_port or sink.port, tmp=tmp)
            + (PLACEMENT_MAIN_CF[placement] if main_cf is None else main_cf).format(
                filter=inst.filter_port))
        reinject = REINJECT_MASTER_CF if reinject_master is None else reinject_master
        public = PUBLIC_MASTER_CF.format(
            smtpd=inst.smtpd_port,
            public_options=PLACEMENT_SMTPD[placement].format(filter=inst.filter_port)) \
            if public_master is None else public_master.format(smtpd=inst.smtpd_port,
                                                               filter=inst.filter_port)
        (config_dir / "master.cf").write_text(
            public + reinject.format(reinject=inst.reinject_port) + SERVICES_MASTER_CF
            + extra_master)
        try:
            with started(inst):
                yield inst
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def started(inst: Instance) -> Iterator[Instance]:
    """The instance running (its config directory allowed in /etc/postfix's
    `alternate_config_directories` meanwhile, as `postfix -c` requires), then stopped."""
    config_dir = str(inst.config_dir)
    before = _postconf_main("alternate_config_directories")
    entries = [e for e in before.replace(",", " ").split() if e]
    subprocess.run(["postconf", "-e", "alternate_config_directories = "
                    + ", ".join([*entries, config_dir])], check=True)
    try:
        result = inst.postfix("start")
        if result.returncode != 0:
            pytest.fail(f"postfix start failed: {result.stdout}{result.stderr}")
        wait_port("127.0.0.1", inst.smtpd_port)
        yield inst
    finally:
        inst.postfix("stop")
        now = _postconf_main("alternate_config_directories")
        kept = [e for e in now.replace(",", " ").split() if e and e != config_dir]
        subprocess.run(["postconf", "-e", "alternate_config_directories = "
                        + ", ".join(kept)], check=True)


def start_proxy(instance: Instance, tmp_path: Path, sections: str = ""
                ) -> subprocess.Popen[bytes]:
    """`mailfilter serve` listening where `instance` expects its filter, relaying to the
    reinjection smtpd, with KNOWN enrolled; `sections`: more config tables ([policy] ...).
    The config is written on the first start in `tmp_path` and reused by later ones."""
    config = tmp_path / "mailfilter.toml"
    if not config.exists():
        config = write_config(tmp_path, f"127.0.0.1:{instance.reinject_port}",
                              instance.filter_port, free_port(), sections=sections)
        image = tmp_path / "known.jpg"
        image.write_bytes(KNOWN)
        enroll(config, image)
    proc = spawn_serve(config, tmp_path / "serve.log")
    wait_port("127.0.0.1", instance.filter_port, proc=proc)
    return proc


def stop_proxy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    return waiting.wait_until(predicate, timeout, step=0.1)


def arrived(sink: RecordingSink, marker: bytes) -> list[bytes]:
    """Messages the sink (Postfix's relayhost) received that contain `marker`."""
    return [m.data for m in sink.messages if marker in m.data]
