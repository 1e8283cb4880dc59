"""The workflow snapshot record (topic `spendwatch.snapshots`, compacted, keyed by workflow).

Workers publish one per workflow they changed, every few seconds (`detectors.engine.snapshot`);
the dashboard, the API, `/metrics` and `spendwatch report` read them. Money is integer micro-USD,
times are event time (epoch seconds). A reader validates every record with this model: one
bad record is skipped and counted, never fatal.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Id, Name

Micros = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)


class Totals(_Strict):
    """One period's counters: money, tokens by type, calls and errors."""

    cost_micros: Micros = 0
    input_tokens: Count = 0
    output_tokens: Count = 0
    cached_tokens: Count = 0
    """Cache reads (part of `input_tokens`)."""
    cache_write_tokens: Count = 0
    reasoning_tokens: Count = 0
    calls: Count = 0
    errors: Count = 0


class Periods(_Strict):
    day: Totals = Totals()
    month: Totals = Totals()


class BudgetLimits(_Strict):
    day_micros: Micros | None = None
    month_micros: Micros | None = None


class Spender(_Strict):
    """A team, model or agent within the workflow."""

    name: Id
    day_micros: Micros = 0
    month_micros: Micros = 0
    hour_micros: Micros = 0
    budget: BudgetLimits | None = None
    """A team's own budget (teams only)."""


class Spenders(_Strict):
    team: list[Spender] = []
    model: list[Spender] = []
    agent: list[Spender] = []


class Run(_Strict):
    """A run in flight (not ended, seen within the loop detector's idle time)."""

    run_id: Id
    agent_id: str | None = None
    start: float
    last: float
    steps: Count = 0
    calls: Count = 0
    tokens: Count = 0
    usd: float = Field(ge=0)
    flagged: bool = False


InsightKind = Literal["right_sizing", "caching", "context_bloat", "token_waste"]


class Insight(_Strict):
    """A savings opportunity of the workflow (`detectors/insights/`): dollars at stake and why."""

    kind: InsightKind
    workflow: Name
    model: str | None = None
    usd_per_day: float = Field(ge=0)
    usd_per_month: float = Field(ge=0)
    evidence: dict[str, Any] = {}
    summary: str = ""


OutcomeCounts = dict[Name, Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]]
"""Outcome name -> [count, value_micros]."""


class WorkflowSnapshot(_Strict):
    v: int = 1
    workflow: Name
    ts: float = Field(ge=0, description="the workflow's watermark: event time the snapshot describes")
    day: str = Field(description="the current day key (YYYY-MM-DD, in the worker's budget timezone)")
    month: str
    totals: Periods
    windows: dict[str, Micros] = Field(description="spend in the rolling windows 1m, 1h, 24h ending at ts")
    recent: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        default=[], description="the 1 h window's 5-minute buckets: [start epoch s, micro-USD]")
    hourly: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        default=[], description="the 24 h window's hourly buckets: [start epoch s, micro-USD]")
    by: Spenders = Spenders()
    outcomes: dict[str, OutcomeCounts] = Field(default={}, description="'day' and 'month': outcome -> [count, value]")
    budget: BudgetLimits | None = None
    runs: list[Run] = []
    unpriced_calls: Count = 0
    insights: list[Insight] = Field(default=[], description="savings opportunities, biggest first")
