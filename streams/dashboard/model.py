"""The dashboard's read model: workflow snapshots, alerts and control commands in; views out.

Kafka-free and clock-injected: `streams.dashboard.feed` hands it the records of three topics
(snapshots, alerts, control) and the HTTP layer asks it for views (plain dicts, money in USD).
The latest snapshot of each workflow is the truth about it (`detectors.engine.snapshot`); the
per-minute spend history is built here from the growth of successive snapshots, seeded with
the buckets a workflow's first snapshot carries, so a restarted dashboard still shows the last
24 h (before it started: the last hour at 5-minute resolution, earlier hours at hour resolution;
at minute resolution since).

Memory: one snapshot and one 1,440-minute ring (11.5 kB) per workflow; 10k workflows take
about 200 MB. Bad records are counted and skipped, never fatal.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from detectors.pricing.money import micros_to_usd
from schemas.alerts import Alert
from schemas.control import ControlCommand, release_command
from schemas.errors import explain
from schemas.snapshots import BudgetLimits, Totals, WorkflowSnapshot

MINUTES = 1440
"""Per-minute history kept per workflow and team: 24 h."""
ALERT_HISTORY = 2000
"""Alert ids remembered (their latest revision), oldest forgotten first."""
OPEN_FOR_S = 86_400.0
"""A firing alert is open this long after it fired (event time), unless resolved before: most kinds
(a loop, a budget threshold) have no resolution of their own."""
SORTS = ("today", "hour", "month", "name", "per_outcome")
PERIODS = ("day", "month")


def usd(micros: float) -> float:
    return round(micros_to_usd(int(micros)), 6)


class Series:
    """Spend per minute over the last 24 h of event time, in a fixed ring (constant memory).

    >>> s = Series()
    >>> s.add(120.0, 5); s.add(150.0, 7); s.add(200.0, 1)
    >>> s.points(200.0)[-2:]
    [[120.0, 12], [180.0, 1]]
    """

    __slots__ = ("ring", "head")

    def __init__(self) -> None:
        self.ring = array("q", bytes(8 * MINUTES))
        self.head = -1  # the newest minute index written (epoch minutes)

    def add(self, ts: float, micros: int) -> None:
        minute = int(ts // 60)
        if minute > self.head:
            if self.head >= 0:  # clear the minutes the ring skips over (at most all of them)
                for m in range(self.head + 1, min(minute, self.head + MINUTES) + 1):
                    self.ring[m % MINUTES] = 0
            else:
                self.ring = array("q", bytes(8 * MINUTES))
            self.head = minute
        elif minute <= self.head - MINUTES:
            return  # older than the ring holds
        self.ring[minute % MINUTES] += micros

    def points(self, now: float, minutes: int = MINUTES) -> list[list[float]]:
        """[[minute start, micro-USD], ...] for the `minutes` ending at `now` (non-zero minutes only)."""
        last = min(int(now // 60), self.head)
        first = max(int(now // 60) - minutes + 1, self.head - MINUTES + 1)
        ring = self.ring
        return [[m * 60.0, ring[m % MINUTES]] for m in range(first, last + 1) if ring[m % MINUTES]]

    def total(self, now: float, minutes: int) -> int:
        return int(sum(v for _, v in self.points(now, minutes)))


@dataclass
class WorkflowView:
    snap: WorkflowSnapshot
    series: Series = field(default_factory=Series)


@dataclass
class Counts:
    snapshots: int = 0
    stale: int = 0
    alerts: int = 0
    commands: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


class ReadModel:
    """Everything the dashboard shows, from the three topics. `wall` gives wall time (kill expiry)."""

    def __init__(self, wall: Callable[[], float] = time.time):
        self.wall = wall
        self.workflows: dict[str, WorkflowView] = {}
        self.teams: dict[str, Series] = {}
        self.total = Series()
        self.alerts: OrderedDict[str, Alert] = OrderedDict()
        self.commands: dict[tuple[str, str], ControlCommand] = {}
        self.counts = Counts()
        self.now = 0.0  # the newest event time seen in any snapshot or alert
        self.day = self.month = ""  # the current period keys: the newest snapshot's
        self._newest = 0.0

    # -- input -------------------------------------------------------------------------------------

    def _bad(self, topic: str, why: str) -> None:
        self.counts.bad[topic] = self.counts.bad.get(topic, 0) + 1
        self.counts.last_error = f"{topic}: {why}"[:300]

    def apply_snapshot(self, raw: bytes | None) -> bool:
        """One snapshot record; False if it was malformed or older than the one held."""
        try:
            snap = WorkflowSnapshot.model_validate_json(raw or b"null")
        except ValidationError as err:
            self._bad("snapshots", explain(err))
            return False
        view = self.workflows.get(snap.workflow)
        if view is not None and snap.ts < view.snap.ts:
            self.counts.stale += 1  # a late copy from a worker that no longer owns the workflow
            return False
        self.counts.snapshots += 1
        self.now = max(self.now, snap.ts)
        if snap.ts >= self._newest:
            self._newest, self.day, self.month = snap.ts, snap.day, snap.month
        if view is None:
            view = self.workflows[snap.workflow] = WorkflowView(snap)
            for start, micros in _history(snap):  # what happened before this dashboard saw the workflow
                self._grew(snap, view.series, start, micros)
            self._grew_teams(None, snap)
            return True
        prev, view.snap = view.snap, snap
        grown = _growth(prev.month, prev.totals.month.cost_micros, snap.month, snap.totals.month.cost_micros)
        if grown:
            self._grew(snap, view.series, snap.ts, grown)
        self._grew_teams(prev, snap)
        return True

    def _grew(self, snap: WorkflowSnapshot, series: Series, ts: float, micros: int) -> None:
        series.add(ts, micros)
        self.total.add(ts, micros)

    def _grew_teams(self, prev: WorkflowSnapshot | None, snap: WorkflowSnapshot) -> None:
        before = {t.name: t.month_micros for t in prev.by.team} if prev is not None else {}
        for team in snap.by.team:
            if prev is None:
                grown = team.hour_micros  # a first sight: its last hour is all the history there is
            else:
                grown = _growth(prev.month, before.get(team.name, 0), snap.month, team.month_micros)
            if grown:
                self.teams.setdefault(team.name, Series()).add(snap.ts, grown)

    def apply_alert(self, raw: bytes | None) -> bool:
        try:
            alert = Alert.model_validate_json(raw or b"null")
        except ValidationError as err:
            self._bad("alerts", explain(err))
            return False
        self.counts.alerts += 1
        held = self.alerts.get(alert.alert_id)
        if held is not None and (held.revision, held.status == "resolved") > (alert.revision,
                                                                               alert.status == "resolved"):
            return False  # an older revision, redelivered
        self.alerts[alert.alert_id] = alert
        self.alerts.move_to_end(alert.alert_id)
        while len(self.alerts) > ALERT_HISTORY:
            self.alerts.popitem(last=False)
        self.now = max(self.now, alert.ts)
        return True

    def apply_command(self, raw: bytes | None) -> bool:
        """A control record (shown as published: the dashboard holds no keys to verify it)."""
        try:
            cmd = ControlCommand.model_validate_json(raw or b"null")
        except ValidationError as err:
            self._bad("control", explain(err))
            return False
        key = (cmd.scope, cmd.target)
        held = self.commands.get(key)
        if held is not None and held.issued_at > cmd.issued_at:
            return False
        self.counts.commands += 1
        self.commands[key] = cmd
        return True

    # -- views -------------------------------------------------------------------------------------

    def _period(self, snap: WorkflowSnapshot, period: str) -> Totals:
        day, month = self.day, self.month
        if period == "day":
            return snap.totals.day if snap.day == day else Totals()
        return snap.totals.month if snap.month == month else Totals()

    def _hour(self, snap: WorkflowSnapshot) -> int:
        """Spend in the hour before `now` (global event time), from the 5-minute buckets."""
        return int(sum(m for start, m in snap.recent if start + 300 > self.now - 3600))

    def _outcomes(self, snap: WorkflowSnapshot, period: str) -> dict[str, list[int]]:
        day, month = self.day, self.month
        current = snap.day == day if period == "day" else snap.month == month
        return snap.outcomes.get(period, {}) if current else {}

    def _marks(self) -> tuple[dict[str, int], set[str]]:
        """Open alerts per workflow and the workflows with a kill in force (once per request)."""
        alerts: dict[str, int] = {}
        for a in self._open():
            alerts[a.workflow] = alerts.get(a.workflow, 0) + 1
        return alerts, {c.workflow for c in self._active() if c.workflow}

    def _row(self, view: WorkflowView, marks: tuple[dict[str, int], set[str]] | None = None) -> dict[str, Any]:
        s = view.snap
        alerts, killed = marks or self._marks()
        today, month = self._period(s, "day"), self._period(s, "month")
        outcomes_today = sum(n for n, _ in self._outcomes(s, "day").values())
        return {
            "workflow": s.workflow,
            "today_usd": usd(today.cost_micros),
            "hour_usd": usd(self._hour(s)),
            "month_usd": usd(month.cost_micros),
            "calls_today": today.calls,
            "errors_today": today.errors,
            "outcomes_today": outcomes_today,
            "usd_per_outcome_today": usd(today.cost_micros / outcomes_today) if outcomes_today else None,
            "team": s.by.team[0].name if s.by.team else None,
            "budget_used": _used(today.cost_micros, month.cost_micros, s.budget),
            "last_event_ts": s.ts,
            "open_alerts": alerts.get(s.workflow, 0),
            "killed": s.workflow in killed,
        }

    def summary(self) -> dict[str, Any]:
        day, month = self.day, self.month
        today = _sum(self._period(v.snap, "day") for v in self.workflows.values())
        mtd = _sum(self._period(v.snap, "month") for v in self.workflows.values())
        outcomes = sum(n for v in self.workflows.values() for n, _ in self._outcomes(v.snap, "day").values())
        value = sum(x for v in self.workflows.values() for _, x in self._outcomes(v.snap, "day").values())
        budgets = [r for r in (self._budget_row(v.snap) for v in self.workflows.values()) if r]
        return {
            "now": self.now, "day": day, "month": month,
            "today_usd": usd(today.cost_micros), "month_usd": usd(mtd.cost_micros),
            "hour_usd": usd(sum(self._hour(v.snap) for v in self.workflows.values())),
            "tokens_today": _tokens(today), "calls_today": today.calls, "errors_today": today.errors,
            "outcomes_today": outcomes, "outcome_value_today_usd": usd(value),
            "usd_per_outcome_today": usd(today.cost_micros / outcomes) if outcomes else None,
            "workflows": len(self.workflows), "teams": len(self.teams),
            "open_alerts": len(self._open()), "active_kills": len(self._active()),
            "budgets": sorted(budgets, key=lambda r: -max(r["day_used"] or 0, r["month_used"] or 0))[:20],
            "records": {"snapshots": self.counts.snapshots, "alerts": self.counts.alerts,
                        "commands": self.counts.commands, "stale": self.counts.stale, "bad": self.counts.bad},
        }

    def _budget_row(self, snap: WorkflowSnapshot) -> dict[str, Any] | None:
        if snap.budget is None:
            return None
        day, month = self._period(snap, "day").cost_micros, self._period(snap, "month").cost_micros
        return {"workflow": snap.workflow, **_used(day, month, snap.budget), "today_usd": usd(day),
                "month_usd": usd(month), **_limits(snap.budget)}

    def workflow_rows(self, sort: str = "today", limit: int = 100, offset: int = 0,
                      team: str | None = None) -> dict[str, Any]:
        views: Iterable[WorkflowView] = self.workflows.values()
        if team is not None:
            views = [v for v in views if any(t.name == team for t in v.snap.by.team)]
        marks = self._marks()
        rows = [self._row(v, marks) for v in views]
        if sort == "name":
            rows.sort(key=lambda r: r["workflow"])
        elif sort == "per_outcome":
            rows.sort(key=lambda r: (r["usd_per_outcome_today"] is None, -(r["usd_per_outcome_today"] or 0)))
        else:
            rows.sort(key=lambda r: (-r[f"{sort}_usd"], r["workflow"]))
        return {"total": len(rows), "sort": sort, "offset": offset, "workflows": rows[offset:offset + limit]}

    def workflow(self, name: str) -> dict[str, Any] | None:
        view = self.workflows.get(name)
        if view is None:
            return None
        s = view.snap
        spenders = {dim: [{"name": e.name, "today_usd": usd(e.day_micros if s.day == self.day else 0),
                           "hour_usd": usd(e.hour_micros), "month_usd": usd(e.month_micros)}
                          for e in getattr(s.by, dim)] for dim in ("team", "model", "agent")}
        return {
            **self._row(view),
            "totals": {p: {**self._period(s, p).model_dump(), "cost_usd": usd(self._period(s, p).cost_micros)}
                       for p in PERIODS},
            "models": spenders["model"], "agents": spenders["agent"], "teams": spenders["team"],
            "runs_in_flight": [r.model_dump() for r in s.runs],
            "outcomes": self._outcome_rows(view, "day") + self._outcome_rows(view, "month"),
            "series": [[t, usd(m)] for t, m in view.series.points(self.now)],
            "alerts": [self._alert_row(a) for a in reversed(self.alerts.values()) if a.workflow == name][:50],
            "unpriced_calls": s.unpriced_calls,
            "budget": _limits(s.budget) if s.budget is not None else None,
        }

    def team_rows(self) -> list[dict[str, Any]]:
        day, month = self.day, self.month
        acc: dict[str, dict[str, Any]] = {}
        for view in self.workflows.values():
            s = view.snap
            for t in s.by.team:
                row = acc.setdefault(t.name, {"team": t.name, "today_usd": 0, "hour_usd": 0, "month_usd": 0,
                                              "workflows": 0, "budget": None})
                row["today_usd"] += t.day_micros if s.day == day else 0
                row["month_usd"] += t.month_micros if s.month == month else 0
                row["hour_usd"] += t.hour_micros if s.ts > self.now - 3600 else 0
                row["workflows"] += 1
                if t.budget is not None:
                    row["budget"] = t.budget
        rows = []
        for row in acc.values():
            budget = row.pop("budget")
            series = self.teams.get(row["team"], Series()).points(self.now, 60)
            rows.append({**row, "budget_used": _used(row["today_usd"], row["month_usd"], budget),
                         **{k: usd(row[k]) for k in ("today_usd", "hour_usd", "month_usd")},
                         "series": [[t, usd(m)] for t, m in series]})
        return sorted(rows, key=lambda r: (-r["today_usd"], r["team"]))

    def _open(self) -> list[Alert]:
        return [a for a in self.alerts.values()
                if a.status == "firing" and a.ts > self.now - OPEN_FOR_S and a.kind != "insights"]

    def _alert_row(self, a: Alert) -> dict[str, Any]:
        return {**a.model_dump(exclude={"evidence"}), "open": a.status == "firing" and a.ts > self.now - OPEN_FOR_S,
                "evidence": a.evidence}

    def alert_rows(self, status: Literal["open", "all"] = "open", kind: str | None = None,
                   workflow: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        alerts = self._open() if status == "open" else list(self.alerts.values())
        rows = [self._alert_row(a) for a in reversed(alerts)
                if (kind is None or a.kind == kind) and (workflow is None or a.workflow == workflow)]
        return rows[:limit]

    def _active(self) -> list[ControlCommand]:
        now = self.wall()
        return [c for c in self.commands.values() if c.action == "kill" and c.expires_at > now]

    def kill_rows(self) -> list[dict[str, Any]]:
        return [{"scope": c.scope, "target": c.target, "workflow": c.workflow, "reason": c.reason,
                 "alert_id": c.alert_id, "issued_at": c.issued_at, "expires_at": c.expires_at,
                 "issued_by": c.issued_by, "release": release_command(c.scope, c.target)}
                for c in sorted(self._active(), key=lambda c: -c.issued_at)]

    def _outcome_rows(self, view: WorkflowView, period: str) -> list[dict[str, Any]]:
        s = view.snap
        cost = self._period(s, period).cost_micros
        rows = []
        for name, (count, value) in sorted(self._outcomes(s, period).items()):
            rows.append({"workflow": s.workflow, "outcome": name, "period": period, "count": count,
                         "cost_usd": usd(cost), "usd_per_outcome": usd(cost / count) if count else None,
                         "value_usd": usd(value) if value else None,
                         "value_per_usd": round(value / cost, 4) if value and cost else None})
        return rows

    def outcome_rows(self, period: str = "day", workflow: str | None = None) -> list[dict[str, Any]]:
        views = [self.workflows[workflow]] if workflow in self.workflows else [] if workflow else \
            list(self.workflows.values())
        rows = [r for v in views for r in self._outcome_rows(v, period)]
        return sorted(rows, key=lambda r: (-r["cost_usd"], r["workflow"], r["outcome"]))

    def showback(self, by: Literal["workflow", "team"], period: Literal["day", "month"]) -> list[dict[str, Any]]:
        """Spend of the current `period` per workflow or team, with tokens, calls, errors, outcomes and
        budget use: the rows of `spendwatch report` (showback and chargeback)."""
        key = self.day if period == "day" else self.month
        rows: dict[str, dict[str, Any]] = {}
        for view in self.workflows.values():
            s = view.snap
            if (s.day if period == "day" else s.month) != key:
                continue
            t = self._period(s, period)
            done = sum(n for n, _ in self._outcomes(s, period).values())
            value = sum(v for _, v in self._outcomes(s, period).values())
            if by == "workflow":
                limit = _limit(s.budget, period)
                rows[s.workflow] = {
                    "workflow": s.workflow, "team": s.by.team[0].name if s.by.team else None, "period": key,
                    "cost_usd": usd(t.cost_micros), "calls": t.calls, "errors": t.errors, **_tokens(t),
                    "outcomes": done, "usd_per_outcome": usd(t.cost_micros / done) if done else None,
                    "outcome_value_usd": usd(value) if value else None,
                    "budget_usd": usd(limit) if limit else None,
                    "budget_used": round(t.cost_micros / limit, 4) if limit else None}
                continue
            for team in s.by.team:
                row = rows.setdefault(team.name, {"team": team.name, "period": key, "cost_usd": 0, "workflows": 0,
                                                  "budget": team.budget})
                row["cost_usd"] += team.day_micros if period == "day" else team.month_micros
                row["workflows"] += 1
        if by == "team":
            for row in rows.values():
                limit = _limit(row.pop("budget"), period)
                row["budget_used"] = round(row["cost_usd"] / limit, 4) if limit else None
                row["budget_usd"] = usd(limit) if limit else None
                row["cost_usd"] = usd(row["cost_usd"])
        return sorted(rows.values(), key=lambda r: (-r["cost_usd"], r.get("workflow") or r.get("team")))

    def insights(self, workflow: str | None = None, kind: str | None = None, limit: int | None = None
                 ) -> list[dict[str, Any]]:
        """Savings opportunities from each workflow's latest snapshot, biggest dollars first."""
        if workflow is None:
            views: Iterable[WorkflowView] = self.workflows.values()
        else:
            views = [self.workflows[workflow]] if workflow in self.workflows else []
        rows = [i.model_dump() for view in views for i in view.snap.insights if kind is None or i.kind == kind]
        rows.sort(key=lambda r: (-r["usd_per_day"], r["workflow"], r["kind"]))
        return rows[:limit] if limit is not None else rows

    def movers(self, n: int = 10) -> list[dict[str, Any]]:
        """Workflows whose last hour costs most over their usual hour (the 23 before it)."""
        rows: list[tuple[float, str, int, float]] = []
        for view in self.workflows.values():
            s = view.snap
            hour = self._hour(s)
            before = [m for start, m in s.hourly if start + 3600 <= self.now - 3600]
            usual = sum(before) / 23 if before else 0.0
            if hour > usual:
                rows.append((hour - usual, s.workflow, hour, usual))
        rows.sort(key=lambda r: (-r[0], r[1]))
        return [{"workflow": wf, "hour_usd": usd(hour), "usual_hour_usd": usd(usual), "delta_usd": usd(delta),
                 "ratio": round(hour / usual, 2) if usual else None} for delta, wf, hour, usual in rows[:n]]

    def series(self, minutes: int = 60) -> dict[str, Any]:
        """Per-minute spend, in total and for the top teams and workflows of the period shown."""
        top = sorted(self.workflows.values(), key=lambda v: -v.series.total(self.now, minutes))[:8]
        teams = sorted(self.teams.items(), key=lambda kv: -kv[1].total(self.now, minutes))[:8]
        return {"now": self.now, "minutes": minutes,
                "total": [[t, usd(m)] for t, m in self.total.points(self.now, minutes)],
                "workflows": {v.snap.workflow: [[t, usd(m)] for t, m in v.series.points(self.now, minutes)]
                              for v in top},
                "teams": {name: [[t, usd(m)] for t, m in s.points(self.now, minutes)] for name, s in teams}}


def _history(snap: WorkflowSnapshot) -> list[tuple[float, int]]:
    """A first snapshot's spend history as (bucket start, micro-USD): the 1 h window's 5-minute buckets,
    and the 24 h window's hourly buckets less what those 5-minute buckets already hold of them (so a
    workflow first seen at 10:31 shows its 10:25 spend at 10:25, not at 10:00)."""
    recent = [(float(start), int(micros)) for start, micros in snap.recent]
    out = []
    for start, micros in snap.hourly:
        inside = sum(m for s, m in recent if start <= s < start + 3600)
        if int(micros) > inside:
            out.append((float(start), int(micros) - inside))
    return sorted(out + recent)


def _growth(prev_month: str, prev: int, month: str, cur: int) -> int:
    """Spend added between two cumulative month totals (a new month starts from zero)."""
    if month != prev_month:
        return cur if month > prev_month else 0
    return max(cur - prev, 0)


def _limit(budget: BudgetLimits | None, period: str) -> int | None:
    return None if budget is None else budget.day_micros if period == "day" else budget.month_micros


def _sum(totals: Iterable[Totals]) -> Totals:
    acc: dict[str, int] = {}
    for t in totals:
        for k, v in t.model_dump().items():
            acc[k] = acc.get(k, 0) + v
    return Totals(**acc)


def _tokens(t: Totals) -> dict[str, int]:
    return {"input": t.input_tokens, "output": t.output_tokens, "cache_read": t.cached_tokens,
            "cache_write": t.cache_write_tokens, "reasoning": t.reasoning_tokens}


def _limits(budget: Any) -> dict[str, float | None]:
    """A budget's limits in USD (None where there is none)."""
    def limit(micros: int | None) -> float | None:
        return usd(micros) if micros is not None else None
    if budget is None:
        return {"day_budget_usd": None, "month_budget_usd": None}
    return {"day_budget_usd": limit(budget.day_micros), "month_budget_usd": limit(budget.month_micros)}


def _used(day_micros: float, month_micros: float, budget: Any) -> dict[str, float | None]:
    """Share of the daily and monthly budget spent (None where there is none)."""
    def share(spent: float, limit: int | None) -> float | None:
        return round(spent / limit, 4) if limit else None
    if budget is None:
        return {"day_used": None, "month_used": None}
    return {"day_used": share(day_micros, budget.day_micros), "month_used": share(month_micros, budget.month_micros)}
