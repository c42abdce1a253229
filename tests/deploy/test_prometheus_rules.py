"""deploy/prometheus/alerts.yml names only metrics mailfilter really exports, with label
values the code really uses; every rule is complete."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import running_smtp_sink
from proxy.proxy_harness import free_port

from deploy.serving import http_get, running, start

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
# Not ours: Prometheus's own scrape health and the blackbox exporter's probe result.
FOREIGN = {"up", "probe_success"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "sum", "min", "max", "avg", "count", "rate", "increase",
    "histogram_quantile", "abs", "absent", "irate", "delta", "topk", "bottomk",
}
SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name a running `mailfilter serve` exports. Its /metrics lists each
    family (`# TYPE`) even before it has samples, so names come from those lines."""
    directory = tmp_path_factory.mktemp("metrics")
    with running_smtp_sink() as sink:
        served = start("metrics", directory, {
            "MAILFILTER_SMTP__LISTEN": f"127.0.0.1:{free_port()}",
            "MAILFILTER_SMTP__NEXT_HOP": sink.address,
            "MAILFILTER_METRICS__LISTEN": f"127.0.0.1:{free_port()}",
            "MAILFILTER_STORE__PATH": str(directory / "state"),
            "MAILFILTER_QUARANTINE__PATH": str(directory / "quarantine"),
            "MAILFILTER_WORKERS__PROCESSES": "1",
        })
        with running(served):
            status, text = http_get(served.metrics_port, "/metrics")
    assert status == 200
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def rules() -> list[dict[str, object]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that name series: not inside {...}, [...] or quotes,
    not functions, keywords or numbers."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
        rest = bare[m.end():].lstrip()
        if m.group(0) in PROMQL_WORDS or rest.startswith("("):
            continue
        found.add(m.group(0))
    return found


def label_values(expr: str) -> list[tuple[str, str]]:
    """(label, value) of every matcher; regex alternatives are split."""
    out = []
    for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        for alternative in (value.split("|") if "~" in op else [value]):
            out.append((label, alternative))
    return out


def test_every_rule_is_complete() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 10
    for rule in rules():
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        labels, notes = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in ("critical", "warning")
        assert isinstance(notes, dict) and notes["summary"] and notes["description"]


def test_alerts_name_only_exported_metrics(exported: set[str]) -> None:
    assert "mailfilter_messages_total" in exported  # the helper itself works
    assert "mailfilter_stage_seconds_bucket" in exported
    for rule in rules():
        for name in metric_names(str(rule["expr"])):
            assert name in exported or name in FOREIGN, f"{rule['alert']}: {name} unknown"


def test_alert_label_values_exist_in_the_code() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "mailfilter").rglob("*.py"))
    jobs = {job["job_name"] for job in
            yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    for rule in rules():
        for label, value in label_values(str(rule["expr"])):
            if label == "job":
                assert value in jobs, f"{rule['alert']}: no scrape job {value!r}"
            else:
                assert f'"{value}"' in source, f"{rule['alert']}: {label}={value!r} unknown"


def test_the_checks_above_can_fail(exported: set[str]) -> None:
    assert metric_names('sum by (job) (rate(mailfilter_messges_total{action="x"}[5m])) > 0'
                        ) == {"mailfilter_messges_total"}
    assert "mailfilter_messges_total" not in exported
    assert label_values('x{reason=~"a|b", job="j"}') == [("reason", "a"), ("reason", "b"),
                                                        ("job", "j")]


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    run = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    run = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
