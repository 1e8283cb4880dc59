"""What the dashboard sees of one workflow: a snapshot of its state, published on an interval.

Workers own partitions, so no one worker sees every workflow. Each publishes, for the
workflows it changed, a self-contained snapshot (totals of the current day and month by
token type, spend in the rolling windows and their buckets, the biggest teams, models and
agents, outcomes by name, budgets, runs in flight, savings insights) to a compacted topic keyed by workflow.
The latest snapshot per workflow is then the whole truth about it: a dashboard reading the
topic gets a consistent global view however many workers there are, and a restarted worker
or dashboard loses nothing. The wire form is `schemas.snapshots.WorkflowSnapshot`.

All times are event time (the workflow's watermark): a snapshot replayed, or built in a
backtest, says the same thing as one built live.
"""

from __future__ import annotations

from typing import Any

from detectors.engine.budgets import BudgetConfig
from detectors.engine.counters import FIELDS, zero
from detectors.engine.periods import PeriodClock
from detectors.engine.workflow import WorkflowState

V = 1
TOP = 20
"""Teams, models and agents named per dimension; the rest are summed in the totals only."""


def totals(vec: list[int]) -> dict[str, int]:
    """A counter vector as named fields (`counters.FIELDS`)."""
    return dict(zip(FIELDS, vec))


def workflow_snapshot(st: WorkflowState, clock: PeriodClock, budgets: BudgetConfig,
                      runs: list[dict[str, Any]] | None = None,
                      insights: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The snapshot of `st` at its watermark (a plain dict, `WorkflowSnapshot`'s fields).

    >>> st = WorkflowState("triage")
    >>> vec = [2_000_000, 900, 40, 0, 1, 0, 0, 0]  # counters.FIELDS: $2, 900 input and 40 output tokens, 1 call
    >>> st.add_groups({(1_764_547_200.0, ("2025-12-01", "2025-12"), "cx", "gpt-4o", None): vec})
    >>> st.watermark = 1_764_547_200.0
    >>> snap = workflow_snapshot(st, PeriodClock(), BudgetConfig())
    >>> snap["day"], snap["totals"]["day"]["cost_micros"], snap["by"]["team"]
    ('2025-12-01', 2000000, [{'name': 'cx', 'day_micros': 2000000, 'month_micros': 2000000, 'hour_micros': 2000000}])
    """
    now = st.watermark
    day, month = clock.keys(now) if now > 0 else ("", "")
    windows = st.spend.windows
    hour, daylong = windows["1h"], windows["24h"]

    def buckets(w: Any) -> list[list[float]]:
        lo = int(now // w.width) - w.buckets
        return [[i * w.width, v] for i, v in sorted(w.data.items()) if i > lo]

    def ranked(dim: str) -> list[dict[str, Any]]:
        top = sorted(((-e.period(month), -e.last_hour(now), name, e) for name, e in st.by[dim].items()),
                     key=lambda t: t[:3])[:TOP]
        return [{"name": name, "day_micros": e.period(day), "month_micros": -month_micros,
                 "hour_micros": -hour_micros} for month_micros, hour_micros, name, e in top]

    budget = budgets.workflows.get(st.name)
    teams = ranked("team")
    for row in teams:
        if (tb := budgets.teams.get(row["name"])) is not None:
            row["budget"] = {"day_micros": tb.micros("day"), "month_micros": tb.micros("month")}
    return {
        "v": V,
        "workflow": st.name,
        "ts": now,
        "day": day,
        "month": month,
        "totals": {"day": totals(st.spend.period(day) if day else zero()),
                   "month": totals(st.spend.period(month) if month else zero())},
        "windows": {name: w.total(now) for name, w in windows.items() if name in ("1m", "1h", "24h")},
        "recent": buckets(hour),
        "hourly": buckets(daylong),
        "by": {"team": teams, "model": ranked("model"), "agent": ranked("agent")},
        "outcomes": {"day": {n: list(v) for n, v in st.outcomes.get(day, {}).items()},
                     "month": {n: list(v) for n, v in st.outcomes.get(month, {}).items()}},
        "budget": None if budget is None else {"day_micros": budget.micros("day"),
                                               "month_micros": budget.micros("month")},
        "runs": runs or [],
        "unpriced_calls": st.unpriced,
        "insights": insights or [],
    }
