"""The Grafana dashboard queries only metrics that exist, and compose, Prometheus and Grafana agree
on hosts, ports and files (there is no Docker engine here to start them)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import yaml

from streams.dashboard.metrics import registry
from streams.dashboard.model import ReadModel
from streams.metrics import WorkerMetrics
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy/grafana/dashboards/spendwatch-overview.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"

# What the dashboard process exports. Replace with the dashboard module's own list once it lands.
def dashboard_metric_names() -> set[str]:
    """Metric names the dashboard process exports (its collector over an empty read model)."""
    families = registry(ReadModel()).collect()
    return {f.name + ("_total" if f.type == "counter" else "") for f in families}



def worker_metric_names() -> set[str]:
    """Metric names a worker exports, as Prometheus stores them (counters with `_total`; a labelled gauge
    has no sample before its first value, so names come from the families)."""
    families = WorkerMetrics(process=False).registry.collect()
    return {f.name + ("_total" if f.type == "counter" else "") for f in families if f.name.startswith("spendwatch_")}


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def base_name(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


def test_the_dashboard_has_its_fixed_uid_and_queries_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "spendwatch-overview"
    worker = worker_metric_names()
    exported = {base_name(n) for n in worker} | worker | dashboard_metric_names()
    used = set()
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        exprs = list(expressions(panel["targets"]))
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            for name in re.findall(r"spendwatch_[a-z_]+", expr):
                used.add(name)
                assert name in exported or base_name(name) in exported, f"{panel['title']!r} queries {name}"
    for expr in expressions(dash["templating"]):
        for name in re.findall(r"spendwatch_[a-z_]+", expr):
            assert name in exported, f"template variable queries {name}"
    # every worker metric is on the dashboard
    assert {base_name(n) for n in worker} <= {base_name(n) for n in used}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    datasources = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasources == {ds["uid"] for ds in provisioned["datasources"]}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the compose file) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        out[container] = host
    return out


def test_compose_prometheus_and_grafana_agree():
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs) == {"spendwatch-worker", "spendwatch-dashboard"}

    # Prometheus runs the config file this repo holds
    prom = compose["prometheus"]
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    assert (COMPOSE.parent / mounts(prom)[config_arg.split("=", 1)[1]]).resolve() == PROMETHEUS.resolve()

    # the workers serve metrics where the worker job scrapes them, on an address Prometheus can reach
    argv = shlex.split(compose["worker"]["command"])
    worker_port = int(argv[argv.index("--metrics-port") + 1])
    assert argv[argv.index("--metrics-host") + 1] == "0.0.0.0"
    (sd,) = jobs["spendwatch-worker"]["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == worker_port

    # every static target is a compose service
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in compose, f"{job['job_name']} scrapes {target}"
    assert jobs["spendwatch-dashboard"]["static_configs"][0]["targets"] == ["dashboard:8080"]
    assert jobs["spendwatch-dashboard"].get("metrics_path", "/metrics") == "/metrics"

    # the dashboard listens where Prometheus scrapes it, and both hold the same bearer token file
    dash = compose["dashboard"]
    argv = shlex.split(dash["command"])
    assert argv[argv.index("--port") + 1] == "8080" and argv[argv.index("--bind") + 1] == "0.0.0.0"
    secret = dash["environment"]["SPENDWATCH_DASHBOARD_TOKEN_FILE"]
    assert jobs["spendwatch-dashboard"]["authorization"]["credentials_file"] == secret
    assert mounts(dash)[secret] == mounts(prom)[secret] == "./deploy/secrets/dashboard-token"

    # Grafana: its datasource is the compose Prometheus, its provisioning and dashboards are mounted
    grafana = compose["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    gm = mounts(grafana)
    for host in gm.values():
        assert (COMPOSE.parent / host).exists(), host
    datasources = yaml.safe_load((COMPOSE.parent / gm["/etc/grafana/provisioning/datasources"]
                                  / "prometheus.yml").read_text())["datasources"]
    url = urlparse(datasources[0]["url"])
    assert url.hostname == "prometheus" and url.hostname in compose
    assert any(p.endswith(f":{url.port}") for p in prom["ports"])  # Prometheus listens there (its default)
    providers = yaml.safe_load((COMPOSE.parent / gm["/etc/grafana/provisioning/dashboards"]
                                / "spendwatch.yml").read_text())["providers"]
    dash_dir = providers[0]["options"]["path"]
    assert (COMPOSE.parent / gm[dash_dir]).resolve() == DASHBOARD.parent.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dash_dir}/{DASHBOARD.name}"
