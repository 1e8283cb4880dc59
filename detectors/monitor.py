"""The engine: events in, alerts out, in event time. Live and replay drive this same object."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors.budgets import BudgetConfig, budget_alert, crossed_thresholds
from detectors.detector import Detector
from detectors.loops import LoopDetector
from detectors.counters import CACHED, CALLS, COST, ERRORS, INPUT, OUTPUT
from detectors.money import usd_to_micros
from detectors.periods import PeriodClock
from detectors.pricing import PriceBook
from detectors.rollup import TeamState
from detectors.spikes import SpikeDetector
from detectors.workflow import WorkflowState
from detectors.zombies import ZombieDetector
from schemas.alerts import Alert
from schemas.structs import Event

BUCKET = 5.0
"""Finest window bucket (the 1 min window's); every coarser bucket is a multiple of it."""
PRUNE_EVERY = 60.0
"""Seconds of event time between prunes of a workflow's dedup ids and idle entities."""


@dataclass
class Output:
    """What one batch produced: alerts, team snapshots to route, and rejected events."""

    alerts: list[Alert] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    late: list[tuple[Event, str]] = field(default_factory=list)
    duplicates: int = 0
    accepted: int = 0
    touched: set[str] = field(default_factory=set)
    cost: dict[str, int] = field(default_factory=dict)  # micro-USD accepted per workflow in this batch


def default_detectors() -> list[Detector]:
    return [LoopDetector(), ZombieDetector(), SpikeDetector()]


class Monitor:
    """Prices, deduplicates and aggregates events per workflow, checks budgets, runs detectors.

    Per event (`process`): O(1) pricing, dedup, counters and detector updates.
    Per interval (`tick(now)`): the detectors' model and timeout work. `now` is
    event time: the replay driver advances it from the data, the worker from a
    timer. `load_*` let the stream layer rebuild state from its tables after a
    restart; in replay they are absent and state starts empty.
    """

    def __init__(
        self,
        budgets: BudgetConfig | None = None,
        prices: PriceBook | None = None,
        timezone: str = "UTC",
        dedup_window: float = 3600.0,
        load_workflow: Callable[[str], WorkflowState | None] | None = None,
        load_team: Callable[[str], TeamState | None] | None = None,
        detectors: Sequence[Detector] | None = None,
        load_detectors: Callable[[str], bytes | None] | None = None,
    ):
        self.budgets = budgets or BudgetConfig()
        self.prices = prices or PriceBook()
        self.clock = PeriodClock(timezone)
        self.timezone = timezone
        self._keep: dict[str, set[str]] = {}
        self.dedup_window = dedup_window
        self.workflows: dict[str, WorkflowState] = {}
        self.teams: dict[str, TeamState] = {}
        self._load_workflow = load_workflow
        self._load_team = load_team
        self.detectors = list(detectors) if detectors is not None else default_detectors()
        self._load_detectors = load_detectors

    def workflow(self, name: str) -> WorkflowState:
        st = self.workflows.get(name)
        if st is None:
            st = (self._load_workflow and self._load_workflow(name)) or WorkflowState(name)
            self.workflows[name] = st
            blob = self._load_detectors and self._load_detectors(name)
            if blob:
                self.restore_detectors(name, blob)
        return st

    def team(self, name: str) -> TeamState:
        st = self.teams.get(name)
        if st is None:
            st = (self._load_team and self._load_team(name)) or TeamState(name)
            self.teams[name] = st
        return st

    def process(self, events: Iterable[Event], out: Output | None = None) -> Output:
        """Apply a batch of events; budgets are checked once per touched workflow.

        The per-event loop is the worker's hot path: locals instead of attribute
        lookups, one state lookup per run of same-workflow events (a record's
        events share one), and counters summed per (bucket, team, model, agent)
        before they touch any rolling window.
        """
        out = out or Output()
        teams_touched: dict[str, set[str]] = {}
        grouped: dict[tuple, list[int]] = {}
        clock_keys, price, window = self.clock.keys, self.prices.price, self.dedup_window
        observers = [det.observe for det in self.detectors]
        cost, touched = out.cost, out.touched
        name: str | None = None
        st: WorkflowState = None  # type: ignore[assignment]  # set by the first event
        dedup: dict[str, float] = {}
        for ev in events:
            if ev.workflow != name:
                name = ev.workflow
                st = self.workflow(name)
                dedup = st.dedup
            ts = ev.ts
            if ts < st.watermark - window:
                out.late.append((ev, f"late: ts is more than {window:.0f}s behind the workflow's event time, "
                                     "beyond the dedup window, so it cannot be counted exactly once"))
                continue
            if ev.event_id in dedup:
                out.duplicates += 1
                continue
            dedup[ev.event_id] = ts
            if ts > st.watermark:
                st.watermark = ts
            out.accepted += 1
            touched.add(name)
            keys = clock_keys(ts)
            if ev.type == "outcome":
                st.add_outcome(keys, usd_to_micros(ev.value_usd) if ev.value_usd else 0)
                for observe in observers:
                    observe(ev, 0)
                continue
            priced = price(ev)
            micros = priced.micros
            if priced.source == "fallback":
                st.unpriced += 1
            group = (name, ts - ts % BUCKET, keys, ev.team, ev.model, ev.agent_id)
            vec = grouped.get(group)
            if vec is None:
                grouped[group] = [micros, ev.input_tokens, ev.output_tokens, ev.cache_read_tokens,
                                  1, 0 if ev.status == "ok" else 1]
            else:
                vec[COST] += micros
                vec[INPUT] += ev.input_tokens
                vec[OUTPUT] += ev.output_tokens
                vec[CACHED] += ev.cache_read_tokens
                vec[CALLS] += 1
                vec[ERRORS] += ev.status != "ok"
            cost[name] = cost.get(name, 0) + micros
            for observe in observers:
                observe(ev, micros)
            if ev.team is not None:
                teams_touched.setdefault(name, set()).add(ev.team)
        if out.accepted:
            now = max(self.workflows[n].watermark for n in touched)
            out.alerts.extend(a for det in self.detectors for a in det.flagged(now))
        for (wf, ts, keys, team, model, agent), vec in grouped.items():
            self.workflows[wf].add_usage(ts, keys, vec, team, model, agent)
        for name in out.touched:
            st = self.workflows[name]
            out.alerts.extend(self._check_workflow_budget(st))
            for team in teams_touched.get(name, ()):
                out.snapshots.append(self._snapshot(st, team))
            if st.watermark - st.pruned_at >= PRUNE_EVERY:
                st.prune(self.dedup_window, self._keep_periods(st.watermark))
        return out

    def tick(self, now: float) -> list[Alert]:
        """Interval work of every detector at event time `now`."""
        return [alert for det in self.detectors for alert in det.tick(now)]

    def dump_detectors(self, workflow: str) -> bytes:
        """One workflow's detector state (models, runs, agents), for the detectors table."""
        return pickle.dumps({det.kind: det.workflows.get(workflow) for det in self.detectors})

    def restore_detectors(self, workflow: str, blob: bytes) -> None:
        states = pickle.loads(blob)
        for det in self.detectors:
            if states.get(det.kind) is not None:
                det.workflows[workflow] = states[det.kind]

    def merge_snapshots(self, snapshots: Iterable[dict[str, Any]]) -> list[Alert]:
        """Fold workflow→team snapshots into team totals and check team budgets."""
        alerts: list[Alert] = []
        touched: dict[str, float] = {}
        for snap in snapshots:
            if self.team(snap["team"]).merge(snap):
                touched[snap["team"]] = max(touched.get(snap["team"], 0.0), snap["ts"])
        for name, ts in touched.items():
            alerts.extend(self._check_team_budget(self.teams[name], ts))
            self.teams[name].prune(self._keep_periods(ts))
        return alerts

    def _keep_periods(self, now: float) -> set[str]:
        """Current and previous day and month: late events of yesterday still land in yesterday."""
        day, month = self.clock.keys(now)
        keep = self._keep.get(day)
        if keep is None:
            prev_day, prev_month = PeriodClock(self.timezone).keys(self.clock.bounds(day)[0] - 1)
            keep = self._keep[day] = {day, month, prev_day, prev_month}
        return keep

    def _snapshot(self, st: WorkflowState, team: str) -> dict[str, Any]:
        entity = st.by["team"][team]
        return {"team": team, "workflow": st.name, "ts": st.watermark,
                "periods": dict(entity.periods)}

    def _check_workflow_budget(self, st: WorkflowState) -> list[Alert]:
        budget = self.budgets.workflows.get(st.name)
        if budget is None:
            return []
        alerts = []
        for period, key in zip(("day", "month"), self.clock.keys(st.watermark)):
            limit = budget.micros(period)
            if limit is None:
                continue
            spent = st.period_cost(key)
            for t in crossed_thresholds(spent, limit, self.budgets.thresholds, st.fired, key):
                alerts.append(budget_alert(
                    scope="workflow", name=st.name, workflow=st.name, period=period, period_key=key,
                    threshold=t, spent=spent, budget=limit, ts=st.watermark,
                    team=next(iter(st.by["team"]), None),
                    evidence=self._burn_evidence(st, key, period),
                ))
        return alerts

    def _check_team_budget(self, team: TeamState, ts: float) -> list[Alert]:
        budget = self.budgets.teams.get(team.name)
        if budget is None:
            return []
        alerts = []
        for period, key in zip(("day", "month"), self.clock.keys(ts)):
            limit = budget.micros(period)
            if limit is None:
                continue
            spent = team.total(key)
            for t in crossed_thresholds(spent, limit, self.budgets.thresholds, team.fired, key):
                top = team.top_workflows(key)
                alerts.append(budget_alert(
                    scope="team", name=team.name, workflow=top[0][0] if top else "*", period=period,
                    period_key=key, threshold=t, spent=spent, budget=limit, ts=ts, team=team.name,
                    evidence={"top_workflows": top, **self._forecast(spent, key, ts)},
                ))
        return alerts

    def _burn_evidence(self, st: WorkflowState, key: str, period: str) -> dict[str, Any]:
        hour = st.spend.window("1h", st.watermark)
        minute = st.spend.window("1m", st.watermark)
        totals = st.totals(key)
        return {
            "top_models": st.top("model", key),
            "top_agents": st.top("agent", key),
            "top_agents_last_hour": st.top_last_hour("agent"),
            "burn_usd_per_hour": hour / 1e6,
            "burn_usd_per_min_last_minute": minute / 1e6,
            "calls": totals[4],
            "cached_tokens": totals[CACHED],
            **self._forecast(st.period_cost(key), key, st.watermark),
        }

    def _forecast(self, spent: int, key: str, now: float) -> dict[str, Any]:
        """Linear end-of-period projection from the share of the period elapsed."""
        start, end = self.clock.bounds(key)
        elapsed = max(now - start, 60.0)
        return {"forecast_usd": round(spent / 1e6 * (end - start) / elapsed, 2)}
