"""Poison containment: one workflow's bad slice, record or stored state never stops the others.

The faulty detector here is a plugin written for the test (the `detectors=`
argument is how users add their own); the point is what the Monitor, the
Ingestor and the backtest do when any detector raises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.engine.counters import CALLS
from detectors.engine.monitor import Monitor
from detectors.engine.versions import StateError
from detectors.engine.workflow import WorkflowState
from detectors.loops import VERSION as LOOP_VERSION
from detectors.loops import LoopDetector
from schemas.alerts import Alert
from schemas.decode import validate_event
from streams.ingest import Ingestor, Record, TimeBounds, home_partition
from tests.conftest import ROOT

T0 = 1_763_000_000.0
DAY = "2025-11-13"


def usage(i: int, workflow: str = "ok-wf", **extra: Any) -> dict[str, Any]:
    return {"type": "usage", "event_id": f"{workflow}-{i}", "ts": T0 + i, "workflow": workflow, "model": "gpt-4o",
            "input_tokens": 1000, "output_tokens": 100, **extra}


class Brittle:
    """A detector with a bug: observing a run called "boom" divides by zero; ticking "tick-boom" too."""

    kind = "brittle"

    def __init__(self) -> None:
        self.workflows: dict[str, list[str]] = {}

    def observe(self, event: Any, cost_micros: int) -> None:
        self.workflows.setdefault(event.workflow, []).append(event.event_id)
        if event.run_id == "boom":
            1 / 0  # noqa: B018  (the failure this detector exists to raise)

    def flagged(self, now: float) -> list[Alert]:
        return []

    def tick(self, workflow: str, now: float) -> list[Alert]:
        if workflow == "tick-boom":
            raise RuntimeError("tick bug")
        return []

    def dump(self, workflow: str) -> dict[str, Any] | None:
        ids = self.workflows.get(workflow)
        if workflow == "dump-boom":
            return {"v": 1, "ids": set(ids or ())}  # not JSON
        return None if ids is None else {"v": 1, "ids": list(ids)}

    def load(self, workflow: str, doc: dict[str, Any]) -> None:
        self.workflows[workflow] = list(doc["ids"])


def monitor(**kwargs: Any) -> Monitor:
    return Monitor(detectors=[LoopDetector(), Brittle()], **kwargs)


def test_a_slice_that_raises_is_rolled_back_and_the_others_applied() -> None:
    m = monitor()
    m.process([validate_event(usage(0, "bad-wf")), validate_event(usage(0))])
    before = m.workflows["bad-wf"].dump()
    batch = [validate_event(usage(1, "bad-wf")), validate_event(usage(1)),
             validate_event(usage(2, "bad-wf", run_id="boom")), validate_event(usage(2))]
    out = m.process(batch)
    assert [(p.workflow, len(p.events)) for p in out.poisoned] == [("bad-wf", 2)]
    reason = out.poisoned[0].reason
    assert reason.startswith("ZeroDivisionError: division by zero at tests/test_containment.py:")
    assert "in observe" in reason
    assert m.workflows["bad-wf"].dump() == before  # totals as before the slice: no half-applied batch
    assert m.detectors[1].dump("bad-wf") is None  # without a store (replay) its detectors start afresh
    assert m.workflows["ok-wf"].spend.periods[DAY][CALLS] == 3
    assert out.accepted == 2 and out.touched == {"ok-wf"} and set(out.cost) == {"ok-wf"}
    assert m.failures == 1 and m.last_failures[0].workflow == "bad-wf"
    # The same workflow's good events still count afterwards.
    m.process([validate_event(usage(3, "bad-wf"))])
    assert m.workflows["bad-wf"].spend.periods[DAY][CALLS] == 2


def test_a_rolled_back_slice_takes_its_outcomes_back_too() -> None:
    """The undo point is a copy: an outcome counted before the slice failed does not stay counted."""
    m = monitor()
    outcome = {"type": "outcome", "workflow": "bad-wf", "outcome": "resolved", "value_usd": 2.5}
    m.process([validate_event(usage(0, "bad-wf")), validate_event({**outcome, "event_id": "o0", "ts": T0})])
    before = orjson.loads(orjson.dumps(m.workflows["bad-wf"].dump()))
    assert before["outcomes"][DAY] == {"resolved": [1, 2_500_000]}
    out = m.process([validate_event({**outcome, "event_id": "o1", "ts": T0 + 1}),
                     validate_event(usage(2, "bad-wf", run_id="boom"))])
    assert [p.workflow for p in out.poisoned] == ["bad-wf"]
    assert m.workflows["bad-wf"].outcomes[DAY] == {"resolved": [1, 2_500_000]}
    assert orjson.loads(orjson.dumps(m.workflows["bad-wf"].dump())) == before


def test_a_tick_that_raises_resets_only_that_workflow_of_that_detector() -> None:
    m = monitor()
    m.process([validate_event(usage(0, "tick-boom", run_id="r")), validate_event(usage(0, run_id="r"))])
    m.tick(T0 + 10)
    assert m.failures == 1 and m.last_failures[0].stage == "tick:brittle"
    assert "tick-boom" not in m.detectors[1].workflows and "ok-wf" in m.detectors[1].workflows
    assert "tick-boom" in m.detectors[0].workflows  # the loop detector's state is untouched
    assert m.workflows["tick-boom"].spend.periods[DAY][CALLS] == 1


def test_a_detector_state_that_cannot_be_saved_starts_afresh_and_the_others_are_saved() -> None:
    m = monitor()
    m.process([validate_event(usage(0, "dump-boom", run_id="r"))])
    doc = orjson.loads(m.dump_detectors("dump-boom"))
    assert doc["brittle"] is None and doc["loop"]["v"] == LOOP_VERSION
    assert "dump-boom" not in m.detectors[1].workflows and m.last_failures[0].stage == "dump:brittle"
    fresh = monitor()
    fresh.restore_detectors("dump-boom", orjson.dumps(doc))
    assert "r" in fresh.detectors[0].workflows["dump-boom"].runs


def test_the_worker_ingestor_dead_letters_the_slice_with_where_it_came_from() -> None:
    store: dict[str, WorkflowState] = {}
    m = monitor(load_workflow=lambda name: store.get(name) and WorkflowState.load(store[name].dump()))
    ing = Ingestor(m, "spendwatch.usage")
    good = Record(b"ok-wf", orjson.dumps([usage(0), usage(1)]), 0, 10)
    bad = Record(b"bad-wf", orjson.dumps([usage(0, "bad-wf"), usage(1, "bad-wf", run_id="boom")]), 1, 20)
    tombstone = Record(b"ok-wf", None, 0, 11)
    fx = ing.handle([good, bad, tombstone])
    letters = [orjson.loads(v) for v in fx.deadletters]
    assert fx.accepted == 2 and set(fx.dirty) == {"ok-wf"}
    assert {(d["partition"], d["offset"]) for d in letters} == {(1, 20), (0, 11)}
    poisoned = next(d for d in letters if d["offset"] == 20)
    assert poisoned["reason"].startswith("processing failed, workflow state left as before: ZeroDivisionError")
    assert [e["event_id"] for e in poisoned["events"]] == ["bad-wf-0", "bad-wf-1"]
    assert next(d for d in letters if d["offset"] == 11)["reason"].startswith("null value (a tombstone)")
    assert "bad-wf" not in m.workflows  # reloaded from the store on its next event


def test_records_off_their_home_partition_are_forwarded_and_count_once() -> None:
    """librdkafka's CRC32 puts a workflow on another partition than aiokafka's murmur2: its
    offsets there say nothing about the home partition's, so its events go home, where a
    second forward (a crash before the commit) is a duplicate by event id."""
    ing = Ingestor(Monitor(), "spendwatch.usage", partitions=4)
    wf = b"ok-wf"
    home = home_partition(wf, 4)
    away = (home + 1) % 4
    fx = ing.handle([Record(wf, orjson.dumps(usage(0)), home, 100)])
    assert fx.accepted == 1
    foreign = Record(wf, orjson.dumps([usage(1), usage(2)]), away, 5)  # a low offset, on another partition
    fx = ing.handle([foreign])
    assert fx.accepted == 0 and fx.redelivered == 0 and [p for p, _, _ in fx.reroutes] == [home, home]
    forwarded = [Record(k, v, p, 101 + i) for i, (p, k, v) in enumerate(fx.reroutes)]
    again = [Record(k, v, p, 103 + i) for i, (p, k, v) in enumerate(ing.handle([foreign]).reroutes)]
    fx = ing.handle(forwarded + again)
    assert (fx.accepted, fx.duplicates) == (2, 2)
    assert ing.monitor.workflows["ok-wf"].spend.periods[DAY][CALLS] == 3


def test_stored_state_of_an_unknown_format_is_refused_not_misread() -> None:
    doc = {**WorkflowState("future").dump(), "v": 99}
    m = Monitor(load_workflow=lambda name: WorkflowState.load(doc) if name == "future" else None)
    ing = Ingestor(m, "spendwatch.usage")
    fx = ing.handle([Record(b"future", orjson.dumps(usage(0, "future")), 0, 1),
                     Record(b"ok-wf", orjson.dumps(usage(0)), 0, 2)])
    reason = orjson.loads(fx.deadletters[0])["reason"]
    assert "StateError: workflow state has format v99; this spendwatch reads v0..v2" in reason
    assert fx.accepted == 1
    with pytest.raises(StateError):
        WorkflowState.load({"name": "x", "v": "1"})


def test_a_v1_workflow_state_keeps_its_totals_and_outcomes_under_v2() -> None:
    """v1 stored outcomes without their names and six-wide counter vectors; both load, nothing lost."""
    m = monitor()
    m.process([validate_event(usage(0, "old-wf"))])
    doc = orjson.loads(orjson.dumps(m.workflows["old-wf"].dump()))
    vec = doc["spend"]["p"][DAY]
    doc |= {"v": 1, "outcomes": {DAY: [3, 7_000_000]}}
    doc["spend"]["p"] = {k: v[:6] for k, v in doc["spend"]["p"].items()}
    st = WorkflowState.load(doc)
    assert st.outcomes[DAY] == {"(unnamed)": [3, 7_000_000]}
    assert st.spend.periods[DAY] == vec[:6] + [0, 0]
    st.add_outcome((DAY, DAY[:7]), "resolved", 1)
    assert st.outcomes[DAY] == {"(unnamed)": [3, 7_000_000], "resolved": [1, 1]}


def test_old_pickled_detector_state_is_refused_and_models_start_afresh() -> None:
    import pickle

    m = Monitor(load_workflow=lambda name: None, load_detectors=lambda name: pickle.dumps({"loop": None}))
    out = m.process([validate_event(usage(0, run_id="r"))])
    assert out.accepted == 1 and not out.poisoned


def test_events_far_from_the_wall_clock_are_dead_lettered_with_the_reason() -> None:
    now = T0 + 100
    ing = Ingestor(Monitor(), "spendwatch.usage", bounds=TimeBounds(600.0, 86_400.0), clock=lambda: now)
    week = 7 * 86_400
    records = [Record(b"ok-wf", orjson.dumps([usage(0), {**usage(1), "ts": now + week},
                                              {**usage(2), "ts": now - 2 * 86_400}, {**usage(3), "ts": now + 500}]), 0, 1)]
    fx = ing.handle(records)
    reasons = [orjson.loads(v)["reason"] for v in fx.deadletters]
    assert fx.accepted == 2
    assert reasons[0].startswith("ts is 604800s ahead of the worker's clock (limit 600s")
    assert reasons[1].startswith("ts is 172800s behind the worker's clock (limit 86400s")


def test_backtest_reports_a_poisoned_slice_and_strict_fails(tmp_path: Path) -> None:
    from replay.backtest import backtest

    events = [usage(i) for i in range(5)] + [usage(5, "bad-wf", run_id="boom"), usage(6, "bad-wf")]
    summary = backtest(events, tmp_path / "out", monitor())
    assert summary["poisoned_events"] == 2 and summary["poisoned"][0]["workflow"] == "bad-wf"
    assert summary["spend_usd_by_workflow"].keys() == {"ok-wf"}


def test_backtest_cli_on_the_loop_from_step_zero(tmp_path: Path) -> None:
    """The crash this issue started from: a failing loop whose steps count from 0. No failure now,
    so `--strict` passes too; and `--tick 0` is refused with a reason instead of looping forever."""
    lines = [usage(i, "w", run_id="r1", step=i, status="error", fingerprint="pytest") for i in range(3)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in lines))
    args = [sys.executable, "-m", "spendwatch", "replay", "backtest", str(src), "--out", str(tmp_path / "o")]
    res = subprocess.run(args + ["--strict"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    alerts = [orjson.loads(x) for x in (tmp_path / "o" / "alerts.jsonl").read_bytes().splitlines()]
    assert [(a["kind"], a["evidence"]["loop_start_step"], a["evidence"]["repeats"]) for a in alerts] == [("loop", 0, 3)]
    bad = subprocess.run(args + ["--tick", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_names_are_caller_input_so_per_workflow_entities_and_price_caches_are_bounded() -> None:
    """An agent id, model or team per call must not grow a workflow's state past what a Kafka record
    can carry (the table write would fail and the worker crash-loop on the batch)."""
    from detectors.engine import workflow
    from detectors.pricing import prices as pricing

    m = Monitor()
    events = [validate_event(usage(i, agent_id=f"agent-{i}", team=f"team-{i}", model=f"unknown-{i}"))
              for i in range(workflow.MAX_ENTITIES + 500)]
    m.process(events)
    st = m.workflows["ok-wf"]
    assert all(len(st.by[d]) == workflow.MAX_ENTITIES + 1 for d in ("team", "agent", "model"))  # + OTHER
    assert st.by["agent"][workflow.OTHER].period(DAY) == st.by["agent"]["agent-0"].period(DAY) * 500
    assert st.spend.periods[DAY][CALLS] == len(events) and m.failures == 0
    assert len(m.prices.unpriced) == pricing.MAX_UNPRICED + 1
    assert sum(m.prices.unpriced.values()) == len(events)
    assert len(orjson.dumps(st.dump())) < 1_000_000
