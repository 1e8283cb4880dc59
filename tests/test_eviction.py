"""Idle workflows leave the worker's memory and come back whole: totals and detector state survive.

Workflow names are caller input; a worker that kept every name it ever saw in
memory would grow without bound. Here a workflow is evicted after 4 s idle,
then its run's last repeated action (the REPEAT_OK-th) must still be recognised
as a loop (the ones before it came back from the detectors table) and its totals
must continue exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from detectors.engine.counters import CALLS
from detectors.loops import REPEAT_OK
from streams.workflow_table import latest_states
from tests.conftest import start_worker, wait_for
from tests.kafka_io import publish, read_all


def step(i: int, now: float) -> tuple[bytes, bytes]:
    return b"coder", orjson.dumps({"type": "usage", "event_id": f"s{i}", "ts": now + i, "workflow": "coder",
                                   "model": "gpt-4o", "input_tokens": 2000, "output_tokens": 150,
                                   "run_id": "run-1", "step": i, "fingerprint": "pytest"})


def test_an_evicted_workflow_keeps_its_totals_and_its_loop_state(fresh_broker, spawn, tmp_path: Path) -> None:
    broker = fresh_broker
    config = tmp_path / "spendwatch.toml"
    config.write_text("evict_idle_s = 4\n")
    start_worker(spawn, broker, "--config", str(config), "--log-level", "info")
    now = time.time()

    def calls() -> int:
        st = latest_states(read_all(broker.bootstrap, "spendwatch-workflows-changelog")).get("coder")
        return sum(v[CALLS] for k, v in st.spend.periods.items() if len(k) == 7) if st else 0

    # Two batches within the detectors' 10 s save interval: only eviction saves the second one's state.
    publish(broker.bootstrap, "spendwatch.usage", [step(0, now), step(1, now)])
    wait_for(lambda: calls() == 2, 60, "two calls counted", describe=calls)
    publish(broker.bootstrap, "spendwatch.usage", [step(i, now) for i in range(2, REPEAT_OK - 1)])
    wait_for(lambda: calls() == REPEAT_OK - 1, 60, "all calls but the last counted", describe=calls)
    log = tmp_path / "worker.log"
    wait_for(lambda: "idle workflows left memory" in log.read_text(), 30, "the workflow to be evicted")
    publish(broker.bootstrap, "spendwatch.usage", [step(REPEAT_OK - 1, now)])
    wait_for(lambda: calls() == REPEAT_OK, 60, "the last call counted", describe=calls)

    def loops() -> list[dict]:
        return [a for _, v in read_all(broker.bootstrap, "spendwatch.alerts") if v
                and (a := orjson.loads(v)).get("kind") == "loop"]

    alerts = wait_for(loops, 30, "a loop alert from state that came back from the table")
    assert [(a["run_id"], a["evidence"]["repeats"]) for a in alerts] == [("run-1", REPEAT_OK)]  # type: ignore[union-attr]
