"""Correlated alerts fold into their cause (issue 14, item 5), in event time with injected clocks.

The Monitor runs real detectors over generated traffic (the replay driver ticks it every 10 s
of event time); the Inhibitor's rule is also checked on its own, on alerts built by hand, for
the boundary around `fold_share`. The router and the notifier's ledger check that a revised
alert edits what was posted instead of paging again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detectors.correlation import QUIET, Inhibitor
from detectors.engine.monitor import Monitor
from detectors.loops import LoopDetector
from detectors.spikes import SpikeDetector
from detectors.zombies import ZombieDetector
from replay import driver
from schemas.alerts import Alert
from spendwatch.config import ConfigError, load_settings
from streams.notifier import Notifier
from streams.routing import Router, RoutingConfig

T0 = 1_740_960_000.0  # 2025-03-03 00:00 UTC
WARM = 180  # minutes of normal traffic: the spike scorers warm up over 120 one-minute intervals
WF = "coder"


def call(ts: float, run: str, agent: str, step: int, fp: str, usd: float, tokens: int = 3000,
         cached: int = 0) -> dict[str, Any]:
    return {"type": "usage", "event_id": f"{run}:{step}", "ts": ts, "workflow": WF, "model": "gpt-4o",
            "run_id": run, "agent_id": agent, "step": step, "fingerprint": fp, "input_tokens": tokens,
            "cache_read_tokens": cached, "output_tokens": 200, "cost_usd": usd}


def done(ts: float, run: str, agent: str) -> dict[str, Any]:
    return {"type": "outcome", "event_id": f"{run}:done", "ts": ts, "workflow": WF, "outcome": "tests_pass",
            "run_id": run, "agent_id": agent}


def healthy(minutes: range, runs_per_min: int = 4) -> Iterator[dict[str, Any]]:
    """Short productive runs: five distinct steps of $0.01 each, then an outcome."""
    for m in minutes:
        for k in range(runs_per_min):
            run, agent, start = f"h{m}-{k}", f"worker-{k % 4}", T0 + 60 * m + 60 * k / runs_per_min
            for step in range(1, 6):
                yield call(start + 2 * step, run, agent, step, f"step-{step}", 0.01, 3000 + 500 * step, cached=1000)
            yield done(start + 12, run, agent)


def looping(minutes: range, run: str = "r-loop", agent: str = "solo-1", usd: float = 0.06,
            fp: str | None = "pytest -x", growth: int = 400, per_min: int = 12) -> Iterator[dict[str, Any]]:
    """`per_min` calls a minute with a context that grows by `growth` tokens a step (0: a small
    one that does not): the same action over and over (`fp`), or distinct ones (None: no
    fingerprint rule fires)."""
    first = minutes[0]
    for m in minutes:
        for i in range(per_min):
            step = (m - first) * per_min + i + 1
            tokens = 20_000 + growth * step if growth else 3000
            yield call(T0 + 60 * m + 60 * i / per_min + 1, run, agent, step, fp or f"act-{step}", usd, tokens)


def replay(*streams: Iterator[dict[str, Any]], monitor: Monitor | None = None) -> list[Alert]:
    events = sorted((e for s in streams for e in s), key=lambda e: e["ts"])
    return driver.run(events, monitor or Monitor(), flush=1800.0).alerts


def kinds(alerts: list[Alert]) -> list[tuple[str, int]]:
    return [(a.kind, a.revision) for a in alerts]


# -- a loop's context spike folds into the loop alert ------------------------------------------------


def test_a_loop_that_bloats_its_context_is_one_alert_updated_with_the_workflow_impact() -> None:
    traffic = [*healthy(range(WARM + 30)), *looping(range(WARM, WARM + 10))]
    alone = replay(iter(traffic), monitor=Monitor(detectors=[SpikeDetector()]))
    assert [a.kind for a in alone] == ["spike"], "without the loop detector the spike pages"
    spike = alone[0]
    assert spike.evidence["behind"]["runs"][0]["run_id"] == "r-loop"

    alerts = replay(iter(traffic))
    assert kinds(alerts) == [("loop", 0), ("loop", 1)], "no spike page: the loop alert is updated instead"
    first, update = alerts
    assert update.alert_id == first.alert_id == "loop:coder:r-loop" and update.ts == first.ts
    impact = update.evidence["workflow_impact"]
    assert impact["spike_alert_id"] == spike.alert_id and impact["cause"] == spike.evidence["cause"]
    assert impact["share_of_excess"] >= 0.6 and impact["spend_ratio"] == spike.evidence["features"]["spend"]["ratio"]
    assert update.summary.startswith(first.summary) and "workflow impact: " in update.summary
    assert f"in a {impact['cause']} on coder (spend ×" in update.summary


def test_a_spike_healthy_runs_spent_pages_and_names_who_with_their_shares() -> None:
    """A traffic surge of healthy runs while one quiet run loops: the loop spent next to none of it."""
    alerts = replay(healthy(range(WARM + 30)), healthy(range(WARM, WARM + 10), runs_per_min=12),
                    looping(range(WARM - 5, WARM + 10), usd=0.001, growth=0, per_min=1))
    assert ("loop", 0) in kinds(alerts) and ("loop", 1) not in kinds(alerts)
    [spike] = [a for a in alerts if a.kind == "spike"]
    excess, behind = spike.evidence["excess"], spike.evidence["behind"]
    assert excess["usd"] > 0.1 and excess["usd"] == pytest.approx(excess["observed_usd"] - excess["expected_usd"])
    assert len(behind["runs"]) == 5 and all(r["share_of_excess"] < 0.2 for r in behind["runs"])
    assert "r-loop" not in {r["run_id"] for r in behind["runs"]}
    assert [a["agent_id"] for a in behind["agents"]][:4] == sorted(a["agent_id"] for a in behind["agents"][:4])
    assert {a["agent_id"] for a in behind["agents"][:4]} == {f"worker-{k}" for k in range(4)}
    assert all(0.1 < a["share_of_excess"] < 0.5 for a in behind["agents"][:4])  # over their normal: ~1/4 each
    [model] = behind["models"]
    assert model["model"] == "gpt-4o" and model["usd"] == pytest.approx(excess["observed_usd"], rel=0.01)
    assert model["share_of_spend"] == pytest.approx(1.0, abs=0.01) and model["share_of_excess"] == pytest.approx(1.0, abs=0.01)
    types = {t["type"]: t for t in behind["tokens"]}
    assert set(types) == {"input", "cache_read", "output"}  # no cache writes, no reasoning
    assert sum(t["share_of_excess"] for t in types.values()) == pytest.approx(1.0, abs=0.01)
    assert types["input"]["tokens"] > 1.2 * types["input"]["normal"] > 0 and types["input"]["share_of_excess"] > 0.5
    assert "behind the excess of $" in spike.summary and "model gpt-4o 100%" in spike.summary


def test_a_zombie_agent_s_spike_folds_into_the_zombie_alert() -> None:
    """An always-on agent with outcomes every few minutes stops producing them, keeps calling, and
    then calls much more: the zombie alert comes first and takes the spike in."""
    def watcher() -> Iterator[dict[str, Any]]:
        for m in range(WARM + 60):
            calls = 1 if m < WARM + 40 else 14
            for i in range(calls):
                ts = T0 + 60 * m + 60 * i / calls + 30
                yield call(ts, f"w{m}", "watcher", i + 1, f"poll-{m}-{i}", 0.01 if calls == 1 else 0.04)
            if m % 3 == 0 and m < WARM:
                yield done(T0 + 60 * m + 50, f"w{m}", "watcher")

    def zombies() -> ZombieDetector:
        return ZombieDetector(min_gap=600.0, prior_gap=180.0, still=600.0)

    alone = replay(healthy(range(WARM + 60)), watcher(), monitor=Monitor(detectors=[SpikeDetector()]))
    spikes = [a for a in alone if a.kind == "spike"]
    assert spikes and all(s.evidence["behind"]["agents"][0]["agent_id"] == "watcher" for s in spikes)

    alerts = replay(healthy(range(WARM + 60)), watcher(), monitor=Monitor(detectors=[zombies(), SpikeDetector()]))
    zombie, *updates = alerts
    assert (zombie.kind, zombie.revision) == ("zombie", 0) and zombie.ts < spikes[0].ts
    assert [(a.alert_id, a.revision) for a in updates] == [(zombie.alert_id, n + 1) for n in range(len(spikes))]
    assert [a.evidence["workflow_impact"]["spike_alert_id"] for a in updates] == [s.alert_id for s in spikes]
    assert updates[-1].summary.startswith(zombie.summary)  # each update is the alert as fired, plus the latest impact
    assert updates[-1].summary.count("workflow impact") == 1 and updates[-1].evidence["workflow_impact"]["spikes_folded"] == len(spikes)


def test_a_spike_pages_again_once_its_cause_went_quiet() -> None:
    """The loop run is stopped (killed) after its spike folded; an hour later it is released and
    swells its context again, with no repeated action for the loop detector to see (its volume
    limits are set out of reach): its loop alert closed when the run went quiet, so that spike pages."""
    monitor = Monitor(detectors=[LoopDetector(z=20.0), ZombieDetector(), SpikeDetector()])
    resumed = range(WARM + 70, WARM + 78)
    alerts = replay(healthy(range(WARM + 100)), looping(range(WARM, WARM + 10)), looping(resumed, fp=None, growth=100),
                    monitor=monitor)
    assert kinds(alerts) == [("loop", 0), ("loop", 1), ("spike", 0)]
    later = alerts[-1]
    assert later.ts > T0 + 60 * resumed[0] and later.evidence["behind"]["runs"][0]["run_id"] == "r-loop"
    assert later.evidence["behind"]["runs"][0]["share_of_excess"] >= 0.6  # it would have folded while open
    assert monitor.inhibitor.workflows == {}


# -- the rule on its own: the threshold, who counts, resolution --------------------------------------


def source(kind: str, subject: str, run: str | None = None, agent: str | None = None) -> Alert:
    return Alert(alert_id=f"{kind}:{WF}:{subject}", kind=kind, severity="warning", workflow=WF, ts=T0,
                 summary=f"{kind} {subject}", run_id=run, agent_id=agent)


def spike(excess: float, runs: list[tuple[str, str | None, float]] = (), agents: list[tuple[str, float]] = (),
          at: float = T0 + 300) -> Alert:
    return Alert(alert_id=f"spike:{WF}:workflow:{at:.0f}", kind="spike", severity="warning", workflow=WF, ts=at,
                 summary="spend spike", evidence={
                     "cause": "spend spike", "features": {"spend": {"ratio": 3.0}},
                     "excess": {"usd": excess, "since": at - 300},
                     "behind": {"runs": [{"run_id": r, "agent_id": a, "over_normal_usd": u} for r, a, u in runs],
                                "agents": [{"agent_id": a, "over_normal_usd": u} for a, u in agents]}})


@pytest.mark.parametrize(("share", "spent", "folds"), [
    (0.5, 1.0, True),  # exactly half of the excess: at the threshold folds
    (0.5, 0.98, False),
    (0.6, 1.0, False),  # the default threshold: half is not mostly
    (0.6, 1.2, True),
])
def test_the_fold_share_is_the_boundary(share: float, spent: float, folds: bool) -> None:
    inh = Inhibitor(share=share)
    loop = source("loop", "r-1", run="r-1", agent="a-1")
    out = inh.fold([loop, spike(2.0, runs=[("r-1", "a-1", spent), ("r-2", "a-2", 2.0 - spent)])])
    assert kinds(out) == ([("loop", 0), ("loop", 1)] if folds else [("loop", 0), ("spike", 0)])


def test_a_run_inside_a_zombie_agent_counts_once_and_both_alerts_are_updated() -> None:
    inh = Inhibitor(share=0.6)
    inh.fold([source("loop", "r-1", run="r-1", agent="a-1"), source("zombie", "a-1", agent="a-1")])
    assert inh.fold([spike(2.0, runs=[("r-1", "a-1", 0.7)], agents=[("a-1", 1.1)])])[0].kind == "spike"  # 55 %
    out = inh.fold([spike(2.0, runs=[("r-1", "a-1", 0.7)], agents=[("a-1", 1.3)], at=T0 + 600)])
    assert [(a.alert_id, a.revision, a.evidence["workflow_impact"]["share_of_excess"]) for a in out] == [
        ("zombie:coder:a-1", 1, 0.65), ("loop:coder:r-1", 1, 0.35)]
    assert all(a.evidence["workflow_impact"]["sources_share_of_excess"] == 0.65 for a in out)


def test_a_resolved_or_quiet_cause_folds_nothing() -> None:
    inh = Inhibitor(share=0.6)
    loop = source("loop", "r-1", run="r-1")
    inh.fold([loop])
    assert inh.fold([spike(1.0, runs=[("r-1", None, 0.9)])])[0].revision == 1
    assert inh.fold([loop.model_copy(update={"status": "resolved"})]) and inh.workflows == {}
    assert kinds(inh.fold([spike(1.0, runs=[("r-1", None, 0.9)], at=T0 + 900)])) == [("spike", 0)]

    inh.fold([loop])
    inh.tick(T0 + QUIET - 1)
    assert WF in inh.workflows
    inh.tick(T0 + QUIET)
    assert inh.workflows == {}


def test_a_spike_with_no_spend_over_normal_is_never_folded() -> None:
    """An error spike or bloat not yet billed has no excess: whoever caused it, it pages."""
    inh = Inhibitor(share=0.6)
    inh.fold([source("loop", "r-1", run="r-1")])
    assert kinds(inh.fold([spike(0.0, runs=[("r-1", None, 5.0)])])) == [("spike", 0)]


def test_open_causes_survive_a_restart_with_the_workflow_s_detector_state() -> None:
    traffic = sorted([*healthy(range(WARM + 30)), *looping(range(WARM, WARM + 10))], key=lambda e: e["ts"])
    cut = T0 + 60 * WARM + 50  # after the loop alert (9th ok repeat at +41 s), before the spike interval closes
    before = Monitor()
    first = driver.run([e for e in traffic if e["ts"] < cut], before, flush=0.0).alerts
    assert kinds(first) == [("loop", 0)]
    blob = before.dump_detectors(WF)
    after = Monitor(load_workflow=lambda name: before.workflows[name], load_detectors=lambda name: blob)
    after.workflow(WF)
    assert after.inhibitor.dump(WF) == before.inhibitor.dump(WF) is not None
    rest = driver.run([e for e in traffic if e["ts"] >= cut], after, flush=1800.0).alerts
    assert kinds(rest) == [("loop", 1)]


# -- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_a_fold_share_outside_0_to_1_is_a_config_error(tmp_path: Path, value: str) -> None:
    path = tmp_path / "spendwatch.toml"
    path.write_text(f"[detectors.spike]\nfold_share = {value}\n")
    with pytest.raises(ConfigError, match="detectors.spike.fold_share"):
        load_settings(path)


def test_the_configured_fold_share_is_the_monitor_s(tmp_path: Path) -> None:
    path = tmp_path / "spendwatch.toml"
    path.write_text("[detectors.spike]\nfold_share = 0.8\n")
    assert Monitor(detectors=load_settings(path).build_detectors()).inhibitor.share == 0.8
    assert Monitor().inhibitor.share == 0.6
    with pytest.raises(ValueError, match="fold_share"):
        SpikeDetector(fold_share=0.0)


# -- sinks: a revised alert is an edit, not a page ---------------------------------------------------


def test_a_revised_alert_edits_the_group_message_and_pages_no_one() -> None:
    r = Router(RoutingConfig(group_wait_s=30, group_interval_s=300))
    loop = source("loop", "r-1", run="r-1")
    r.add(loop, 0.0)
    [posted] = r.due(30.0)
    r.sent(posted)
    assert posted.update_of is None and posted.new == [loop]
    r.add(loop.model_copy(update={"revision": 1, "summary": "loop r-1; workflow impact: 80%"}), 60.0)
    assert r.due(100.0) == []  # waits for group_interval, like any change to a told group
    [edit] = r.due(330.0)
    assert edit.update_of == posted.notification_id and edit.new == [] and [a.revision for a in edit.updated] == [1]
    assert "workflow impact" in edit.firing[0].summary
    r.sent(edit)
    assert r.due(2000.0) == []  # told at revision 1: nothing more to say until the repeat
    r.add(loop, 2100.0)  # the detector re-fires revision 0 (a restart): no step back, no news
    assert r.due(2500.0) == []


class Recorder:
    """A sink that keeps what it was sent (the notifier's ledger decides what reaches it)."""

    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        self.sent.append((alert.alert_id, alert.revision))
        return "ok"

    async def close(self) -> None:
        return None


async def test_the_ledger_delivers_each_revision_once() -> None:
    sink, ledger = Recorder(), {}
    notifier = Notifier([sink], ledger)
    loop = source("loop", "r-1", run="r-1")
    update = loop.model_copy(update={"revision": 1})
    for alert in (loop, loop, update, update):
        await notifier.deliver(alert)
    assert sink.sent == [("loop:coder:r-1", 0), ("loop:coder:r-1", 1)]
    assert set(ledger) == {"recorder:loop:coder:r-1:firing", "recorder:loop:coder:r-1:firing:r1"}
