"""The read model with many workers (issue 15, item 1): two real worker processes in one consumer
group (each publishes snapshots of the workflows it owns; when the second joins mid-stream, a
workflow's snapshots come from both, the stale one ignored), one dashboard process showing every
workflow exact to the micro-dollar, and a new dashboard rebuilding the same view from the topic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

from detectors.pricing.money import usd_to_micros
from tests.conftest import ROOT, start_worker, wait_for
from tests.kafka_io import publish

WORKFLOWS = [f"wf-{i}" for i in range(12)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_two_workers_one_dashboard_every_workflow_exact(fresh_broker, spawn, tmp_path):
    config = tmp_path / "spendwatch.toml"
    config.write_text("snapshot_every_s = 1\n")
    start_worker(spawn, fresh_broker, "--config", str(config))
    spawn("worker", "--broker", fresh_broker.url, "--config", str(config), log="worker2.log")
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
    publish(fresh_broker.bootstrap, "spendwatch.usage", records)

    def shown() -> dict[str, int]:
        rows = get(base + "workflows?limit=1000")["workflows"]
        return {r["workflow"]: usd_to_micros(r["today_usd"]) for r in rows if r["workflow"] in truth}

    wait_for(lambda: shown() == dict(truth), 120, "every workflow's spend on the dashboard", describe=shown)
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
