"""The engine: events in, alerts out, in event time. Live and replay drive this same object."""

from __future__ import annotations

import logging
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from detectors.correlation import Inhibitor
from detectors.detector import Detector, observe_slice
from detectors.engine.budgets import Budget, BudgetConfig, budget_alert, crossed_thresholds
from detectors.engine.burn import BudgetNow, check_burn, has_episode
from detectors.engine.counters import CACHE_WRITE, CACHED, CALLS, COST, ERRORS, INPUT, OUTPUT, REASONING
from detectors.engine.outcomes import cost_per_outcome
from detectors.engine.periods import PeriodClock
from detectors.engine.rollup import TeamState
from detectors.engine.snapshot import workflow_snapshot
from detectors.engine.versions import StateError
from detectors.engine.workflow import Group, WorkflowState
from detectors.insights import InsightsEngine
from detectors.insights.digest import digest_alert, due
from detectors.loops import LoopDetector
from detectors.pricing.money import micros_to_usd, usd_to_micros
from detectors.pricing.prices import PriceBook, unpriced_alert
from detectors.registry import build as build_detectors
from detectors.spikes import FOLD_SHARE, SpikeDetector
from schemas.alerts import ANY_WORKFLOW, Alert
from schemas.structs import Event

BUCKET = 5.0
"""Finest window bucket (the 1 min window's); every coarser bucket is a multiple of it."""
PRUNE_EVERY = 60.0
"""Seconds of event time between prunes of a workflow's dedup ids and idle entities."""
DETECTORS_V = 1
"""Format of a workflow's detector-state blob (each detector's part carries its own version too)."""

log = logging.getLogger("spendwatch.monitor")


@dataclass(frozen=True)
class Poisoned:
    """A workflow's slice of a batch that raised: not applied, to be dead-lettered with `reason`."""

    workflow: str
    events: list[Event]
    reason: str


@dataclass(frozen=True)
class Failure:
    stage: str  # "process", or "tick:<detector kind>"
    workflow: str
    reason: str


def describe(exc: BaseException) -> str:
    """Exception type, message and where it was raised (package-relative), for a dead letter."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        where = f" at {'/'.join(f.filename.replace(chr(92), '/').split('/')[-2:])}:{f.lineno} in {f.name}"
    return f"{type(exc).__name__}: {str(exc)[:500]}{where}"


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
    poisoned: list[Poisoned] = field(default_factory=list)


PER_OUTCOME_KINDS = frozenset({"budget", "zombie"})
"""Alerts that say what the workflow's spend buys per outcome (where it reports outcomes)."""


class Monitor:
    """Prices, deduplicates and aggregates events per workflow, checks budgets, runs detectors.

    Per event (`process`): O(1) pricing, dedup, counters and detector updates.
    Per interval (`tick(now)`): the detectors' model and timeout work. `now` is
    event time: the replay driver advances it from the data, the worker from a
    timer. `load_*` let the stream layer rebuild state from its tables after a
    restart; in replay they are absent and state starts empty. `detectors`
    defaults to one of each registered kind (`detectors/registry.py`) as its
    constructor's defaults have it; the config builds the configured ones.
    Their alerts pass the correlation stage (`detectors/correlation.py`): a spike
    that open loop or zombie alerts spent (the spike detector's `fold_share` of
    its excess) comes out as updates of those alerts instead.
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
        insights: InsightsEngine | None = None,
    ):
        self.budgets = budgets or BudgetConfig()
        self._burn_windows = self.budgets.burn_rate.windows()
        self.prices = prices or PriceBook()
        self.clock = PeriodClock(timezone)
        self.timezone = timezone
        self._keep: dict[str, set[str]] = {}
        self.dedup_window = dedup_window
        self.workflows: dict[str, WorkflowState] = {}
        self.teams: dict[str, TeamState] = {}
        self._load_workflow = load_workflow
        self._load_team = load_team
        self.detectors = list(detectors) if detectors is not None else build_detectors()
        self.inhibitor = Inhibitor(next((d.fold_share for d in self.detectors if isinstance(d, SpikeDetector)),
                                        FOLD_SHARE))
        self.insight_engine = insights or InsightsEngine()
        if self.insight_engine.idle is None:  # a run is over when the loop detector says so
            self.insight_engine.idle = next((d.idle for d in self.detectors if isinstance(d, LoopDetector)), None)
        self._load_detectors = load_detectors
        self.failures = 0  # contained failures since start
        self.last_failures: deque[Failure] = deque(maxlen=100)

    def workflow(self, name: str) -> WorkflowState:
        st = self.workflows.get(name)
        if st is None:
            st = (self._load_workflow and self._load_workflow(name)) or WorkflowState(name)
            st.spend.track(self._burn_windows if name in self.budgets.workflows else frozenset())
            self.workflows[name] = st
            blob = self._load_detectors and self._load_detectors(name)
            if blob:
                try:
                    self.restore_detectors(name, blob)
                except (StateError, ValueError, KeyError, TypeError) as exc:
                    # Models are learned again from traffic; totals are never guessed (WorkflowState refuses).
                    for part in self._stateful():
                        part.workflows.pop(name, None)
                    log.error("detector state of workflow %r refused, detectors start afresh: %s", name, exc)
        return st

    def team(self, name: str) -> TeamState:
        st = self.teams.get(name)
        if st is None:
            st = (self._load_team and self._load_team(name)) or TeamState(name)
            self.teams[name] = st
        return st

    def process(self, events: Iterable[Event], out: Output | None = None) -> Output:
        """Apply a batch of events, one workflow's slice at a time.

        A slice that raises (a bug, or input no one foresaw) is contained: the
        workflow's state goes back to what it was before the slice, its events
        come back in `out.poisoned` with the reason, and the other workflows of
        the batch are applied as if it had not been there.
        """
        out = out or Output()
        slices: dict[str, list[Event]] = {}
        for ev in events:
            evs = slices.get(ev.workflow)
            if evs is None:
                evs = slices[ev.workflow] = []
            evs.append(ev)
        for name, evs in slices.items():
            undo = self._undo_point(name)
            marks = (len(out.alerts), len(out.snapshots), len(out.late), out.duplicates, out.accepted)
            try:
                self._apply(name, evs, out)
            except Exception as exc:  # noqa: BLE001 - containment is the point
                del out.alerts[marks[0]:], out.snapshots[marks[1]:], out.late[marks[2]:]
                out.duplicates, out.accepted = marks[3], marks[4]
                out.touched.discard(name)
                out.cost.pop(name, None)
                self._rollback(name, undo)
                out.poisoned.append(Poisoned(name, evs, describe(exc)))
                self._failed("process", name, exc)
        return out

    def _apply(self, name: str, events: list[Event], out: Output) -> None:
        """One workflow's slice: dedup, price, aggregate, observe, then budgets and alerts.

        The per-event work is the worker's hot path, so it runs in passes over the slice,
        each with its state in locals: dedup, pricing (`PriceBook.costs`), counters summed
        per (bucket, team, model, agent) before they touch any rolling window, then each
        detector over the whole slice. Detectors keep state of their own only, so observing
        detector by detector gives what event by event did.
        """
        st = self.workflow(name)
        dedup, watermark, window = st.dedup, st.watermark, self.dedup_window
        applied: list[Event] = []  # accepted, in order; with their costs for the detectors and insights
        for ev in events:
            ts = ev.ts
            if ts < watermark - window:
                out.late.append((ev, f"late: ts is more than {window:.0f}s behind the workflow's event time, "
                                     "beyond the dedup window, so it cannot be counted exactly once"))
                continue
            if ev.event_id in dedup:
                out.duplicates += 1
                continue
            dedup[ev.event_id] = ts
            if ts > watermark:
                watermark = st.watermark = ts
            applied.append(ev)
        if not applied:
            return
        accepted = len(applied)
        costs, fallbacks = self.prices.costs(applied)
        span = self.clock.span
        keys, lo, hi = span(applied[0].ts)
        grouped: dict[Group, list[int]] = {}
        teams: set[str] = set()
        for ev, micros in zip(applied, costs):
            ts = ev.ts
            if not lo <= ts < hi:
                keys, lo, hi = span(ts)
            if ev.type == "outcome":
                st.add_outcome(keys, ev.outcome, usd_to_micros(ev.value_usd) if ev.value_usd else 0)
                continue
            group = (ts - ts % BUCKET, keys, ev.team, ev.model, ev.agent_id)
            vec = grouped.get(group)
            if vec is None:
                grouped[group] = [micros, ev.input_tokens, ev.output_tokens, ev.cache_read_tokens,
                                  1, 0 if ev.status == "ok" else 1, ev.cache_write_tokens, ev.reasoning_tokens]
            else:
                vec[COST] += micros
                vec[INPUT] += ev.input_tokens
                vec[OUTPUT] += ev.output_tokens
                vec[CACHED] += ev.cache_read_tokens
                vec[CALLS] += 1
                vec[ERRORS] += ev.status != "ok"
                vec[CACHE_WRITE] += ev.cache_write_tokens
                vec[REASONING] += ev.reasoning_tokens
            if ev.team is not None:
                teams.add(ev.team)
        unpriced: dict[tuple[str | None, str, str], list[int]] = {}  # (provider, model, day) -> [calls, micros]
        for i in fallbacks:
            ev = applied[i]
            assert ev.type == "usage", "an outcome is never priced"
            st.unpriced += 1
            seen = unpriced.setdefault((ev.provider, ev.model, self.clock.keys(ev.ts)[0]), [0, 0])
            seen[0] += 1
            seen[1] += costs[i]
        micros_sum = sum(costs)
        for det in self.detectors:
            observe_slice(det, name, applied, costs)
        if name in self.inhibitor.workflows:  # open loop or zombie alerts: their subjects' calls keep them open
            observe_slice(self.inhibitor, name, applied, costs)
        alerts = [a for det in self.detectors for a in det.flagged(st.watermark)]
        st.add_groups(grouped)
        self.insight_engine.observe(name, applied, costs)
        alerts.extend(self._check_workflow_budget(st))
        for (provider, model, day), (calls, micros) in unpriced.items():
            if (mark := f"{day}:unpriced:{provider}/{model}") not in st.fired:
                st.fired.add(mark)
                alerts.append(unpriced_alert(name, model, provider, day, calls, micros, self.prices.fallback,
                                             st.watermark))
        folded = self._fold(alerts)
        self.insight_engine.alerted(folded)
        out.alerts.extend(folded)
        out.snapshots.extend(self._snapshot(st, team) for team in teams if team in st.by["team"])  # not folded
        if st.watermark - st.pruned_at >= PRUNE_EVERY:
            st.prune(self.dedup_window, self._keep_periods(st.watermark))
        out.accepted += accepted
        out.touched.add(name)
        if micros_sum or grouped:
            out.cost[name] = out.cost.get(name, 0) + micros_sum

    def _undo_point(self, name: str) -> Any:
        """What `_rollback` needs to put a workflow's totals back. With a durable store (the
        worker's tables, saved after every batch) that is the store itself; without one
        (replay), the workflow's cheap undo point (its ids are kept, not copied)."""
        if self._load_workflow is not None:
            return None
        st = self.workflows.get(name)
        return st.undo_point() if st else ()

    def _rollback(self, name: str, undo: Any) -> None:
        """Forget a workflow's in-memory state; its totals come back from the store (worker) or the
        undo point (replay). Its detectors come back as of their last save (worker, at most
        `DETECTOR_SAVE_EVERY` old) or start afresh (replay, which saves none)."""
        st = self.workflows.get(name)
        self.forget(name)
        if undo and st is not None:
            self.workflows[name] = st.rolled_back(undo)

    def forget(self, name: str) -> None:
        """Drop a workflow's in-memory state (it is reloaded from the store when it is next seen)."""
        self.workflows.pop(name, None)
        for part in self._stateful():
            part.workflows.pop(name, None)

    def _stateful(self) -> list[Detector | Inhibitor | InsightsEngine]:
        """Everything that keeps per-workflow state beside the totals, saved in the detectors blob."""
        return [*self.detectors, self.inhibitor, self.insight_engine]

    def _fold(self, alerts: list[Alert]) -> list[Alert]:
        """Alerts through the correlation stage; if it raises, as they are (a duplicate page beats none).
        Budget and zombie alerts first get their workflow's cost per outcome."""
        alerts = [self._with_outcomes(a) if a.kind in PER_OUTCOME_KINDS else a for a in alerts]
        try:
            return self.inhibitor.fold(alerts)
        except Exception as exc:  # noqa: BLE001 - containment is the point
            self._failed("fold", alerts[0].workflow if alerts else "?", exc)
            return alerts

    def _with_outcomes(self, alert: Alert) -> Alert:
        st = self.workflows.get(alert.workflow)
        if st is None or alert.status != "firing":
            return alert
        today = self.clock.keys(alert.ts)[0]
        per = cost_per_outcome(st, today, self.clock.day_before(today))
        if per is None:
            return alert
        return alert.model_copy(update={"summary": f"{alert.summary}; {per.pop('text')}",
                                        "evidence": {**alert.evidence, "per_outcome": per}})

    def _failed(self, stage: str, workflow: str, exc: BaseException) -> None:
        self.failures += 1
        self.last_failures.append(Failure(stage, workflow, describe(exc)))
        log.error("%s of workflow %r failed and was contained: %s", stage, workflow, describe(exc))

    def tick(self, now: float) -> list[Alert]:
        """Interval work of every detector for every workflow it holds, at event time `now`.

        A detector that raises for one workflow loses that workflow's state (it
        starts learning again) and the other workflows go on.
        """
        alerts: list[Alert] = []
        for det in self.detectors:
            for name in list(det.workflows):
                try:
                    alerts.extend(det.tick(name, now))
                except Exception as exc:  # noqa: BLE001 - containment is the point
                    det.workflows.pop(name, None)
                    self._failed(f"tick:{det.kind}", name, exc)
        for name, budget in self.budgets.workflows.items():  # a burn resolves when spend stops, too
            st = self.workflows.get(name)
            if st is not None and has_episode(st.fired):
                try:
                    alerts.extend(self._check_burn(st, budget, max(now, st.watermark)))
                except Exception as exc:  # noqa: BLE001
                    self._failed("tick:burn_rate", name, exc)
        self.inhibitor.tick(now)
        for name in list(self.insight_engine.workflows):
            try:
                self.insight_engine.tick(name, now)
            except Exception as exc:  # noqa: BLE001
                self.insight_engine.workflows.pop(name, None)
                self._failed("tick:insights", name, exc)
        if self.insight_engine.digest is not None:
            alerts.extend(self._digests(now, *self.insight_engine.digest))
        folded = self._fold(alerts)
        self.insight_engine.alerted(folded)
        return folded

    def _digests(self, now: float, weekday: int, hour: int) -> list[Alert]:
        """The weekly savings digest of every workflow held, once on its day (marked in `fired`)."""
        day = due(self.clock, now, weekday, hour)
        if day is None:
            return []
        alerts = []
        yesterday = self.clock.day_before(day)
        for name, st in self.workflows.items():
            if (mark := f"{day}:insights-digest") in st.fired:
                continue
            st.fired.add(mark)
            if found := self.insights(name, fresh=True):
                per_outcome = cost_per_outcome(st, day, yesterday)
                alerts.append(digest_alert(name, day, found, per_outcome, now))
        return alerts

    def insights(self, workflow: str, fresh: bool = False) -> list[dict[str, Any]]:
        """Savings opportunities of `workflow` at its event time, biggest first: dicts with `kind`
        (right_sizing, caching, context_bloat, token_waste), `workflow`, `model`, `usd_per_day`,
        `usd_per_month`, `evidence` and a one-line `summary` (`detectors/insights/`). Reused for the
        engine's `refresh` seconds of event time unless `fresh`; [] if computing them fails."""
        st = self.workflows.get(workflow)
        if st is None:
            return []
        try:
            return self.insight_engine.insights(workflow, st.watermark, self.prices, fresh)
        except Exception as exc:  # noqa: BLE001 - a report must not take the snapshot down with it
            self._failed("insights", workflow, exc)
            return []

    def dump_detectors(self, workflow: str) -> bytes:
        """One workflow's detector state (models, runs, agents), for the detectors table: plain JSON
        with a format version per detector, never pickle (a changelog must not be able to run code)."""
        try:
            return orjson.dumps({"v": DETECTORS_V, **{det.kind: det.dump(workflow) for det in self._stateful()}})
        except Exception:  # noqa: BLE001 - find the detector whose state cannot be saved; it starts afresh
            doc: dict[str, Any] = {"v": DETECTORS_V}
            for det in self._stateful():
                try:
                    doc[det.kind] = orjson.Fragment(orjson.dumps(det.dump(workflow)))
                except Exception as exc:  # noqa: BLE001
                    det.workflows.pop(workflow, None)
                    doc[det.kind] = None
                    self._failed(f"dump:{det.kind}", workflow, exc)
            return orjson.dumps(doc)

    def restore_detectors(self, workflow: str, blob: bytes) -> None:
        """Load what `dump_detectors` wrote; a blob this version cannot read raises StateError."""
        try:
            doc = orjson.loads(blob)
        except orjson.JSONDecodeError:
            raise StateError(f"detector state of workflow {workflow!r} is not JSON (written by an older "
                             "spendwatch with pickle?)") from None
        if not isinstance(doc, dict) or doc.get("v") != DETECTORS_V:
            raise StateError(f"detector state of workflow {workflow!r} has format "
                             f"{doc.get('v') if isinstance(doc, dict) else type(doc).__name__!r}, "
                             f"this spendwatch reads {DETECTORS_V}")
        for det in self._stateful():
            if doc.get(det.kind) is not None:
                det.load(workflow, doc[det.kind])

    def merge_snapshots(self, snapshots: Iterable[dict[str, Any]]) -> list[Alert]:
        """Fold workflow→team snapshots into team totals and check team budgets. A snapshot that
        cannot be merged (e.g. a team state of a newer format) is skipped, counted and logged."""
        alerts: list[Alert] = []
        touched: dict[str, float] = {}
        for snap in snapshots:
            try:
                if self.team(snap["team"]).merge(snap):
                    touched[snap["team"]] = max(touched.get(snap["team"], 0.0), snap["ts"])
            except Exception as exc:  # noqa: BLE001 - snapshots are cumulative: the next one re-carries this
                self._failed("rollup", snap.get("workflow", "?"), exc)
        for name, ts in touched.items():
            try:
                alerts.extend(self._check_team_budget(self.teams[name], ts))
                self.teams[name].prune(self._keep_periods(ts))
            except Exception as exc:  # noqa: BLE001
                self._failed("rollup", name, exc)
        return alerts

    def snapshot(self, name: str) -> dict[str, Any]:
        """What the dashboard sees of workflow `name` (`detectors.engine.snapshot`)."""
        loops = next((d for d in self.detectors if isinstance(d, LoopDetector)), None)
        runs = loops.in_flight(name) if loops is not None else []
        return workflow_snapshot(self.workflow(name), self.clock, self.budgets, runs, self.insights(name))

    def _keep_periods(self, now: float) -> set[str]:
        """Current and previous day and month: late events of yesterday still land in yesterday."""
        day, month = self.clock.keys(now)
        keep = self._keep.get(day)
        if keep is None:
            prev_day = self.clock.day_before(day)
            prev_month = prev_day[:7]
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
        alerts.extend(self._check_burn(st, budget, st.watermark))
        return alerts

    def _check_burn(self, st: WorkflowState, budget: Budget, now: float) -> list[Alert]:
        """Burn-rate tiers of a workflow's daily and monthly budget at event time `now`."""
        alerts = []
        keys = self.clock.keys(now)
        team = next(iter(st.by["team"]), None)
        for period, key in zip(("day", "month"), keys):
            limit = budget.micros(period)
            if limit is None:
                continue
            start, end = self.clock.bounds(key)
            b = BudgetNow("workflow", st.name, st.name, team, period, key, start, end, limit, st.period_cost(key), now)
            alerts.extend(check_burn(
                b, self.budgets.burn_rate, lambda name: st.spend.rate(name, now), st.fired, keys[0],
                partial(self._who_burns, st, key)))
        return alerts

    @staticmethod
    def _who_burns(st: WorkflowState, key: str) -> dict[str, Any]:
        return {"top_agents_last_hour": st.top_last_hour("agent"), "top_models": st.top("model", key)}

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
                    scope="team", name=team.name, workflow=top[0][0] if top else ANY_WORKFLOW, period=period,
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
            "burn_usd_per_hour": micros_to_usd(hour),
            "burn_usd_per_min_last_minute": micros_to_usd(minute),
            "calls": totals[4],
            "cached_tokens": totals[CACHED],
            **self._forecast(st.period_cost(key), key, st.watermark),
        }

    def _forecast(self, spent: int, key: str, now: float) -> dict[str, Any]:
        """Linear end-of-period projection from the share of the period elapsed."""
        start, end = self.clock.bounds(key)
        elapsed = max(now - start, 60.0)
        return {"forecast_usd": round(micros_to_usd(spent) * (end - start) / elapsed, 2)}
