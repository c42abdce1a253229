#!/opt/mailfilter/bin/python
"""The container's health check: GET /healthz on the metrics listener that the settings
name (the settings file and MAILFILTER_* variables, read exactly as `mailfilter serve`
reads them), or, with metrics turned off, a TCP connect to the SMTP listener.

Exit 0: healthy; 1: not (one line on stdout says why; Docker keeps it in
`docker inspect --format '{{json .State.Health}}'`).
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request

from mailfilter.errors import ConfigError
from mailfilter.settings import load_settings, split_host_port

TIMEOUT = 4.0  # below the HEALTHCHECK --timeout


def _local(host: str) -> str:
    """Where to reach a listener bound to `host` from inside the container."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def main() -> int:
    try:
        settings = load_settings(None).settings
    except ConfigError as exc:
        print(f"unhealthy: {exc}")
        return 1
    if settings.metrics.listen:
        host, port = split_host_port(settings.metrics.listen)
        host = _local(host)
        url_host = f"[{host}]" if ":" in host else host
        try:
            with urllib.request.urlopen(f"http://{url_host}:{port}/healthz",
                                        timeout=TIMEOUT) as reply:
                ok = reply.status == 200
        except (urllib.error.URLError, OSError) as exc:
            print(f"unhealthy: /healthz on {url_host}:{port}: {exc}")
            return 1
        print("healthy" if ok else "unhealthy: /healthz did not answer 200")
        return 0 if ok else 1
    host, port = split_host_port(settings.smtp.listen)
    try:
        with socket.create_connection((_local(host), port), timeout=TIMEOUT):
            pass
    except OSError as exc:
        print(f"unhealthy: SMTP listener {host}:{port}: {exc}")
        return 1
    print("healthy (SMTP listener accepts connections; metrics are off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
