"""The read model with many workers (issue 15, item 1): two real worker processes in one consumer
group (each publishes snapshots of the workflows it owns; when the second joins mid-stream, a
workflow's snapshots come from both, the stale one ignored), one dashboard process showing every
workflow exact to the micro-dollar, and a new dashboard rebuilding the same view from the topic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

from detectors.pricing.money import usd_to_micros
from streams.broker import free_port
from tests.conftest import ROOT, start_worker, wait_for
from tests.kafka_io import publish
from tests.test_codecs import totals

WORKFLOWS = [f"wf-{i}" for i in range(12)]




def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_two_workers_one_dashboard_every_workflow_exact(fresh_broker, spawn, tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text("snapshot_every_s = 1\n")
    metrics = [free_port(), free_port()]
    start_worker(spawn, fresh_broker, "--config", str(config), "--metrics-port", str(metrics[0]))
    spawn("worker", "--broker", fresh_broker.url, "--config", str(config), "--metrics-port", str(metrics[1]),
          log="worker2.log")
    # Traffic only once the group has settled: both workers own usage partitions, none twice (their
    # /metrics list the partitions they are assigned), so no rebalance moves partitions mid-stream.
    wait_for(lambda: _split(metrics), 120, "both workers to own usage partitions", describe=lambda: _owned(metrics))
    port = free_port()
    spawn("dashboard", "--broker", fresh_broker.url, "--port", str(port), log="dashboard.log")
    base = f"http://127.0.0.1:{port}/api/v1/"
    wait_for(lambda: _answers(base), 60, "the dashboard to answer")

    now = time.time()
    truth: dict[str, int] = defaultdict(int)
    outcomes: dict[str, int] = defaultdict(int)
    records = []
    for i in range(600):
        wf = WORKFLOWS[i % len(WORKFLOWS)]
        cost = round(0.0001 * (1 + i % 97), 6)
        truth[wf] += usd_to_micros(cost)
        ev = {"type": "usage", "event_id": f"e2e-{i}", "ts": now - 300 + i * 0.4, "workflow": wf, "team": "t",
              "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 50, "cost_usd": cost}
        records.append((wf.encode(), json.dumps(ev).encode()))
        if i % 10 == 0:
            outcomes[wf] += 1
            done = {"type": "outcome", "event_id": f"e2e-o{i}", "ts": ev["ts"], "workflow": wf, "outcome": "done"}
            records.append((wf.encode(), json.dumps(done).encode()))
    for i in range(120):  # one-line labels from a frontier model: a right-sizing opportunity
        tag = {"type": "usage", "event_id": f"e2e-t{i}", "ts": now - 300 + i * 2, "workflow": "tagger",
               "model": "gpt-4o", "input_tokens": 300, "output_tokens": 5}
        records.append((b"tagger", json.dumps(tag).encode()))
    publish(fresh_broker.bootstrap, "spendwatch.usage", records)

    def shown() -> dict[str, int]:
        rows = get(base + "workflows?limit=1000")["workflows"]
        return {r["workflow"]: usd_to_micros(r["today_usd"]) for r in rows if r["workflow"] in truth}

    wait_for(lambda: shown() == dict(truth), 120, "every workflow's spend on the dashboard",
             describe=lambda: {"dashboard": shown(), "tables": {wf: t for wf, t in totals(fresh_broker.bootstrap).items()
                                                                if wf in truth}})
    by_outcome = {r["workflow"]: r["count"] for r in get(base + "outcomes")["outcomes"]}
    assert {wf: by_outcome.get(wf) for wf in outcomes} == dict(outcomes)
    assert len(WORKFLOWS) == len(truth)

    # showback from the same topic, as finance would pull it
    r = subprocess.run([sys.executable, "-m", "spendwatch", "report", "--broker", fresh_broker.url, "--by", "workflow",
                        "--period", "day", "--format", "json"], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    rows = {row["workflow"]: row for row in json.loads(r.stdout) if row["workflow"] in truth}
    assert {wf: usd_to_micros(row["cost_usd"]) for wf, row in rows.items()} == dict(truth)
    assert {wf: row["outcomes"] for wf, row in rows.items() if row["outcomes"]} == dict(outcomes)

    # savings insights from the same snapshots
    r = subprocess.run([sys.executable, "-m", "spendwatch", "insights", "--broker", fresh_broker.url, "--format",
                        "json"], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    found = json.loads(r.stdout)
    assert ("tagger", "right_sizing", "gpt-4o") in [(i["workflow"], i["kind"], i["model"]) for i in found]
    assert [i["usd_per_day"] for i in found] == sorted((i["usd_per_day"] for i in found), reverse=True)

    # a second dashboard started now reads the same view back from the topic
    port2 = free_port()
    spawn("dashboard", "--broker", fresh_broker.url, "--port", str(port2), log="dashboard2.log")
    base = f"http://127.0.0.1:{port2}/api/v1/"
    wait_for(lambda: _answers(base) and shown() == dict(truth), 60, "a new dashboard to rebuild the view",
             describe=lambda: _answers(base) and shown())


def _answers(base: str) -> bool:
    try:
        get(base + "summary")
        return True
    except OSError:
        return False


def _owned(ports: list[int]) -> list[set[str]]:
    """The usage partitions each worker reports as assigned (its consumer-lag gauge's labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    owned = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            owned.append(set())
            continue
        owned.append({s.labels["partition"] for f in text_string_to_metric_families(text)
                      if f.name == "spendwatch_worker_consumer_lag_records" for s in f.samples
                      if s.labels.get("topic") == "spendwatch.usage"})
    return owned


def _split(ports: list[int]) -> bool:
    a, b = _owned(ports)
    return bool(a) and bool(b) and not a & b and a | b == {"0", "1", "2", "3"}
