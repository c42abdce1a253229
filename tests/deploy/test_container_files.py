"""deploy/docker: the Dockerfile, compose.yaml and the Postfix container's settings agree
with each other and with the settings code. (The layout itself runs, without containers,
in test_compose_layout.py.)"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import compose_layout as layout
from mailfilter.errors import ConfigError
from mailfilter.settings import load_settings, split_host_port

DOCKERFILE = layout.DOCKER / "Dockerfile"
DOCKERIGNORE = layout.REPO / ".dockerignore"
PROMETHEUS = layout.REPO / "deploy" / "prometheus"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


def settings_from(env: dict[str, str]) -> None:
    try:
        load_settings(None, env)
    except ConfigError as exc:
        pytest.fail(f"settings the image/compose file sets do not validate: {exc}")


def test_dockerfile_builds_a_wheel_and_runs_slim_non_root_with_a_health_check() -> None:
    build, runtime = stages(DOCKERFILE)
    args = dict(instructions(DOCKERFILE)[:1])
    assert args["ARG"].startswith("PYTHON_IMAGE=python:3.11-slim")
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert any(w == "RUN" and "pip wheel" in a for w, a in build)
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    run = " ".join(a for w, a in runtime if w == "RUN")
    assert "libarchive-tools" in run and "--no-install-recommends" in run
    assert "--no-index" in run  # the runtime installs the built wheels only
    assert "useradd --system --uid 10025" in run
    users = [a for w, a in runtime if w == "USER"]
    assert users == ["mailfilter"], "the runtime stage must run as the mailfilter user"
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    [health] = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert health.endswith('CMD ["mailfilter-healthcheck"]')
    assert any(w == "COPY" and "deploy/docker/healthcheck.py /opt/mailfilter/bin/"
               "mailfilter-healthcheck" in a for w, a in runtime)
    assert ("EXPOSE", "10025 9125") in runtime
    assert ("ENTRYPOINT", '["mailfilter"]') in runtime and ("CMD", '["serve"]') in runtime
    env = dict(re.findall(r"(MAILFILTER_\w+)=(\S+)", " ".join(
        a for w, a in runtime if w == "ENV")))
    assert split_host_port(env["MAILFILTER_SMTP__LISTEN"])[0] == "0.0.0.0"
    settings_from(env)
    # Listening on all interfaces, the image still refuses every non-loopback client
    # until allowed_clients says otherwise: never an open relay.
    assert "MAILFILTER_SMTP__ALLOWED_CLIENTS" not in env
    allowed = load_settings(None, env).settings.smtp.allowed_clients
    assert all(ipaddress.ip_network(n).is_loopback for n in allowed)


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def sent(path: str) -> bool:  # .dockerignore semantics: the last matching line wins
        included = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                included = negated
        return included

    copied = []
    for word, args in instructions(DOCKERFILE):
        if word == "COPY" and "--from=" not in args:
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            copied += sources
    assert copied
    for source in copied:
        assert (layout.REPO / source).exists(), f"COPY {source}: no such file"
        assert sent(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    assert not sent(".venv") and not sent("tests")


def test_compose_instances_share_one_redis_and_only_postfix_may_connect() -> None:
    compose = layout.compose()
    services = compose["services"]
    assert {"redis", "mf1", "mf2", "postfix", "sink"} <= set(services)
    subnet = ipaddress.ip_network(
        compose["networks"]["mail"]["ipam"]["config"][0]["subnet"])
    address = {name: ipaddress.ip_address(svc["networks"]["mail"]["ipv4_address"])
               for name, svc in services.items()
               if isinstance(svc.get("networks"), dict)}
    assert all(a in subnet for a in address.values())
    envs = {name: layout.environment(name) for name in layout.FILTERS}
    for name, env in envs.items():
        settings_from(env)
        s = load_settings(None, env).settings
        assert s.store.redis_url.startswith("redis://redis:")
        assert [ipaddress.ip_network(n) for n in s.smtp.allowed_clients] == [
            ipaddress.ip_network(f"{address['postfix']}/32")], name
        host, port = split_host_port(s.smtp.next_hop)
        assert host == "postfix" and f"{port}/inet" in layout.master_services()
        assert layout.service(name)["stop_grace_period"] == "90s"
        assert s.smtp.shutdown_timeout < 90
        assert "mailfilter" in services[name]["networks"]["mail"]["aliases"]
        for published in layout.service(name).get("ports", []):
            assert published.startswith("127.0.0.1:"), "metrics only for the Docker host"
    shared = {k: v for k, v in envs["mf1"].items() if "INSTANCE_NAME" not in k}
    assert shared == {k: v for k, v in envs["mf2"].items() if "INSTANCE_NAME" not in k}
    names = {env.get("MAILFILTER_QUARANTINE__INSTANCE_NAME") for env in envs.values()}
    assert len(names) == 2, "each instance needs its own quarantine instance name"
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_cmd and "--appendonly yes" in redis_cmd


def test_postfix_container_filters_through_both_instances() -> None:
    main = layout.main_cf()
    transport, host, port = layout.content_filter()
    envs = [layout.environment(name) for name in layout.FILTERS]
    assert all(split_host_port(e["MAILFILTER_SMTP__LISTEN"])[1] == port for e in envs)
    assert host == "mailfilter"
    scan = layout.master_services()[f"{transport}/unix"]
    assert scan[0].split()[-1] == "smtp"
    assert "-o smtp_send_xforward_command=yes" in scan
    assert "-o smtp_connection_cache_on_demand=no" in scan
    # Not an open relay: only loopback is trusted, outside mail only for relay_domains.
    assert main["mynetworks"] == "127.0.0.0/8"
    assert "reject_unauth_destination" in main["smtpd_relay_restrictions"]
    services = layout.compose()["services"]
    filters = {f"{services[n]['networks']['mail']['ipv4_address']}/32" for n in layout.FILTERS}
    reinject = layout.master_services()["10026/inet"]
    for option in ("mynetworks", "smtpd_authorized_xforward_hosts"):
        [value] = [o.split("=", 1)[1] for o in reinject if o.startswith(f"-o {option}=")]
        assert set(value.split(",")) == filters, option


def test_postfix_container_settings_parse(tmp_path: Path) -> None:
    """Postfix itself reads the files (main.cf, Debian's master.cf + our services)."""
    if shutil.which("postconf") is None:
        pytest.skip("postconf not installed")
    shipped = Path("/usr/share/postfix/master.cf.dist")
    if not shipped.exists():
        pytest.skip("no master.cf.dist to append to")
    (tmp_path / "main.cf").write_text(layout.POSTFIX_MAIN.read_text())
    (tmp_path / "master.cf").write_text(shipped.read_text()
                                        + layout.POSTFIX_MASTER.read_text())
    run = subprocess.run(["postconf", "-c", str(tmp_path), "-M", "scan/unix", "10026/inet",
                          "postlog/unix-dgram"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert len(run.stdout.splitlines()) == 3
    run = subprocess.run(["postconf", "-c", str(tmp_path), "-n"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0 and not run.stderr, run.stderr


def test_prometheus_scrapes_the_compose_instances() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["mailfilter"]["static_configs"][0]["targets"]
    assert targets == [f"{name}:9125" for name in layout.FILTERS]
    services = layout.compose()["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "blackbox" in services
