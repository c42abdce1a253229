"""No secrets and no message content where operators' logs go: `mailfilter serve` with a
Redis password and a webhook secret, made to log errors (Redis unreachable), mail with a
broken PDF (whose parser complains about the bytes it read); `check-config`'s printout; the
one-line error for a bad file. None of them may show the password, the secret or message
bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from email.policy import SMTP
from pathlib import Path

from factories import message
from faults.client import attempt
from faults.serve import serving
from proxy.proxy_harness import free_port, running_sink

PASSWORD = "Pw-d0nt-l0g-me-7f3a"
SECRET = "S3cret-webhook-k3y-91c2e"
CONTENT = b"UNIQUECONTENTMARKER"


def _secret_env() -> dict[str, str]:
    return {
        "MAILFILTER_STORE__REDIS_URL": f"redis://mailfilter:{PASSWORD}@127.0.0.1:{free_port()}/0",
        "MAILFILTER_REPORT__WEBHOOK_URL": "https://hooks.example.org/mailfilter",
        "MAILFILTER_REPORT__WEBHOOK_SECRET": SECRET,
    }


def _clean(text: str) -> None:
    assert PASSWORD not in text
    assert SECRET not in text
    assert CONTENT.decode() not in text


def test_serve_logs_no_secrets_and_no_content(tmp_path: Path) -> None:
    broken_pdf = b"%PDF" + CONTENT + b"\x00garbage that no PDF parser can read\n%%EOF"
    mail = message(subject="report", attachments=[("r.pdf", "application/pdf", broken_pdf)])
    raw = mail.as_bytes(policy=SMTP)
    with running_sink() as sink, serving(tmp_path, sink.address, env=_secret_env(),
                                         enroll=False) as s:
        s.wait_log("hash store unavailable, no lists loaded")
        result = attempt("127.0.0.1", s.port, raw)
        assert result.code == 451  # no lists: nothing passes unscanned
        assert s.terminate() == 0
        _clean(s.log_text())
        assert "mailfilter:***@" in s.log_text()  # the URL is shown, redacted


def test_serve_logs_no_content_of_a_broken_pdf(tmp_path: Path) -> None:
    """With lists loaded the PDF is parsed in a worker: what the parser says about it must
    not carry the attachment's bytes into the log (pypdf quoted the first bytes of a file
    it could not read), and every line of the log is one of ours."""
    broken = [b"%PDF" + CONTENT + b"\x00garbage that no PDF parser can read\n%%EOF",
              CONTENT + b"%PDF-1.4\n1 0 obj <</Type/XObject/Subtype/Image>> stream\n" + CONTENT]
    mail = message(subject="report", attachments=[
        (f"r{i}.pdf", "application/pdf", pdf) for i, pdf in enumerate(broken)])
    with running_sink() as sink, serving(tmp_path, sink.address) as s:
        result = attempt("127.0.0.1", s.port, mail.as_bytes(policy=SMTP))
        assert result.accepted, result
        assert s.terminate() == 0
        _clean(s.log_text())
        stray = [x for x in s.log_text().splitlines() if not x.startswith("{")]
        assert stray == []


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_check_config_shows_no_secrets(tmp_path: Path) -> None:
    out = _run("check-config", env=_secret_env())
    assert out.returncode == 0, out.stderr
    _clean(out.stdout + out.stderr)
    assert "redis_url = " in out.stdout and "webhook_secret = " in out.stdout


def test_config_errors_show_no_secrets(tmp_path: Path) -> None:
    bad_url = _run("check-config", env={
        "MAILFILTER_STORE__REDIS_URL": f"http://mailfilter:{PASSWORD}@redis.example.org/0"})
    short = _run("check-config", env={
        "MAILFILTER_REPORT__WEBHOOK_URL": "https://hooks.example.org/x",
        "MAILFILTER_REPORT__WEBHOOK_SECRET": PASSWORD[:12]})
    for out in (bad_url, short):
        assert out.returncode == 2
        assert PASSWORD[:12] not in out.stdout + out.stderr, out.stderr
    assert "redis_url" in bad_url.stderr and "webhook_secret" in short.stderr


def test_redis_urls_are_redacted_wherever_the_password_is() -> None:
    from mailfilter.settings import redact, redact_url

    for url, shown in [
        (f"rediss://mf:{PASSWORD}@h:6380/0?ssl_cert_reqs=required",
         "rediss://mf:***@h:6380/0?ssl_cert_reqs=required"),
        (f"redis://h:6379/0?db=1&password={PASSWORD}", "redis://h:6379/0?db=1&password=***"),
        (f"redis://mf:{PASSWORD}@[::1]:6379/0", "redis://mf:***@[::1]:6379/0"),
        (f"unix:///run/redis.sock?password={PASSWORD}", "unix:///run/redis.sock?password=***"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ]:
        assert redact_url(url) == shown
        assert PASSWORD not in redact("store", "redis_url", url)
    assert redact("report", "webhook_secret", SECRET) == "***"
