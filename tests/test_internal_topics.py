"""Internal topics are inputs too: garbage on rollups, alerts and usage never stops a real worker.

Before: one unparsable record on `spendwatch.rollups` ended the worker with exit
70 after every restart, a tombstone on the usage topic likewise, an alert that
did not validate killed the notify agent, and one event stamped a week ahead
dragged event time along. Now each is dead-lettered with a reason, and team
budgets, alert delivery and counting go on.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from detectors.engine.counters import CALLS
from streams.workflow_table import latest_states
from tests.conftest import start_worker, wait_for
from tests.kafka_io import create_topic, publish, read_all


def usage(event_id: str, ts: float, workflow: str = "triage") -> bytes:
    return orjson.dumps({"type": "usage", "event_id": event_id, "ts": ts, "workflow": workflow, "team": "cx",
                         "model": "gpt-4o", "input_tokens": 400_000, "output_tokens": 1000})


def test_garbage_on_every_input_topic_is_dead_lettered_and_the_worker_goes_on(fresh_broker, spawn, tmp_path: Path):
    broker = fresh_broker
    config = tmp_path / "spendwatch.toml"
    config.write_text("[budgets.teams.cx]\ndaily_usd = 1.0\n")
    for topic in ("spendwatch.rollups", "spendwatch.deadletter"):
        create_topic(broker.bootstrap, topic)
    worker = start_worker(spawn, broker, "--config", str(config), "--data-dir", str(tmp_path / "tables"))
    now = time.time()
    publish(broker.bootstrap, "spendwatch.rollups", [
        (b"cx", b"{not json"), (b"cx", b'{"team": 1}'), (b"cx", None),
        (b"cx", b'{"team": "cx", "workflow": "w", "ts": 1, "periods": {"2026-12-01": "lots"}}'),
        (b"cx", b'[7, {"team": "cx", "workflow": "w", "ts": 1, "periods": {}}, "x"]'),  # the array form, two bad
    ])
    publish(broker.bootstrap, "spendwatch.alerts", [(b"triage", b'{"kind": "loop"}'), (b"triage", None)])
    publish(broker.bootstrap, "spendwatch.usage", [
        (b"triage", None),  # a tombstone
        (b"triage", usage("future", now + 7 * 86_400)),  # a week ahead of the worker's clock
        (b"triage", usage("real-1", now)), (b"triage", usage("real-2", now + 1)),
    ])

    def letters() -> list[dict]:
        return [orjson.loads(v) for _, v in read_all(broker.bootstrap, "spendwatch.deadletter") if v]

    wait_for(lambda: len(letters()) >= 9, 90, "9 dead letters", describe=lambda: [d["reason"] for d in letters()])
    by_topic: dict[str, list[str]] = {}
    for d in letters():
        by_topic.setdefault(d["topic"], []).append(d["reason"])
    assert len(by_topic["spendwatch.rollups"]) == 5
    assert "bad team snapshot: a snapshot is a JSON object (and 1 more)" in by_topic["spendwatch.rollups"]
    assert any("not valid JSON" in r for r in by_topic["spendwatch.rollups"])
    assert any("periods must map" in r for r in by_topic["spendwatch.rollups"])
    assert len(by_topic["spendwatch.alerts"]) == 2 and all(r.startswith("not an alert") for r in by_topic["spendwatch.alerts"])
    usage_reasons = sorted(by_topic["spendwatch.usage"])
    assert usage_reasons[0].startswith("null value (a tombstone)")
    assert usage_reasons[1].startswith("ts is 604") and "ahead of the worker's clock" in usage_reasons[1]

    # Counting, team budgets (rollup agent) and alert delivery (notify agent) all still work.
    def calls() -> int:
        states = latest_states(read_all(broker.bootstrap, "spendwatch-workflows-changelog"))
        return sum(v[CALLS] for k, v in states["triage"].spend.periods.items() if len(k) == 7) if "triage" in states else 0

    wait_for(lambda: calls() == 2, 60, "both real events counted", describe=calls)
    def team_alerts() -> list[str]:
        docs = [orjson.loads(v) for _, v in read_all(broker.bootstrap, "spendwatch.alerts") if v]
        return [d["alert_id"] for d in docs if str(d.get("alert_id")).startswith("budget:team:cx:")]

    wait_for(team_alerts, 60, "a team budget alert from the rollup agent")
    wait_for(lambda: "budget" in (tmp_path / "worker.log").read_text(), 30, "the console sink to print it")
    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
