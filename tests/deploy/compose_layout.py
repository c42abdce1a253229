"""The compose layout (deploy/docker/compose.yaml), read as data: the services, the
mailfilter instances' environment, the Postfix container's content filter and `scan`
transport. Used by the structural checks and by the containerless run of the layout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
POSTFIX_MAIN = DOCKER / "postfix" / "main.cf"
POSTFIX_MASTER = DOCKER / "postfix" / "master.cf.append"
FILTERS = ("mf1", "mf2")


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    svc = compose()["services"][name]
    assert isinstance(svc, dict)
    return svc


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    assert isinstance(env, dict), f"{name}: environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


def main_cf() -> dict[str, str]:
    """main.cf as key -> value (continuation lines joined, comments dropped)."""
    values: dict[str, str] = {}
    key = ""
    for line in POSTFIX_MAIN.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key:
            values[key] += " " + line.strip()
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        values[key] = value.strip()
    return values


def master_services() -> dict[str, list[str]]:
    """master.cf.append's services: "name/type" -> the service line and its -o lines."""
    services: dict[str, list[str]] = {}
    current = ""
    for line in POSTFIX_MASTER.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            services[current].append(line.strip())
            continue
        fields = line.split()
        current = f"{fields[0]}/{fields[1]}"
        services[current] = [line.strip()]
    return services


def content_filter() -> tuple[str, str, int]:
    """(transport, host, port) of main.cf's `content_filter = transport:[host]:port`."""
    value = main_cf()["content_filter"]
    m = re.fullmatch(r"(\w+):\[([^\]]+)\]:(\d+)", value)
    assert m, f"content_filter = {value}: expected transport:[host]:port"
    return m.group(1), m.group(2), int(m.group(3))


def scan_transport_block(chroot: str | None = None) -> str:
    """The `scan` transport of master.cf.append as master.cf text; `chroot` replaces its
    chroot column (the containerless check chroots it to give it its own /etc/hosts)."""
    transport = content_filter()[0]
    lines = list(master_services()[f"{transport}/unix"])
    fields = lines[0].split()
    if chroot is not None:
        fields[4] = chroot
    return "\n".join([" ".join(fields), *(f"  {x}" for x in lines[1:])]) + "\n"
