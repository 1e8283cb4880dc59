"""Multi-window burn-rate alerts on budgets, after the Google SRE workbook (chapter 5).

A budget of B over a period of P seconds allows B / P per second. A tier fires when the
spend rate over both its long and its short window is `factor` times that: the long window
says the burn is big enough to matter, the short one that it is still going on, so an alert
stops as soon as the burn does. Defaults are the workbook's: page at 14.4× over 1 h and
5 min (2 % of a 30-day budget in an hour), ticket at 6× over 6 h and 30 min. An episode
resolves when the short window drops below the factor, through the alert's own id.

The rates come from the workflow's rolling spend windows (`EntitySpend.track` adds the ones
the standard windows lack), so a burn check costs a few window sums per batch, nothing per event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detectors.engine.spend import window_name
from detectors.pricing.money import fmt_usd, micros_to_usd
from schemas.alerts import Alert, Severity

Tier = Literal["page", "ticket"]
SEVERITY: dict[str, Severity] = {"page": "critical", "ticket": "warning"}
DEFAULTS: dict[str, dict[str, float]] = {
    "page": {"long_s": 3600, "short_s": 300, "factor": 14.4},
    "ticket": {"long_s": 21600, "short_s": 1800, "factor": 6.0},
}
MARK = ":burn:"
"""In a fired mark `<day>:burn:<period>:<tier>:<episode start>`: an episode that fires now."""


class BurnTier(BaseModel):
    """One tier's windows (seconds of event time) and how many times the budgeted rate fires it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    long_s: float = Field(ge=300, le=30 * 86400)
    short_s: float = Field(ge=60, le=30 * 86400)
    factor: float = Field(ge=1, le=1000)
    enabled: bool = True

    @model_validator(mode="after")
    def _short_inside_long(self) -> BurnTier:
        if self.short_s >= self.long_s:
            raise ValueError(f"short_s ({self.short_s:g}) must be shorter than long_s ({self.long_s:g}): the short "
                             "window tells that a burn the long window sees is still going on")
        return self


class BurnRateConfig(BaseModel):
    """`[budgets.burn_rate.page]` and `[budgets.burn_rate.ticket]`; a key left out keeps the tier's default."""

    model_config = ConfigDict(extra="forbid")

    page: BurnTier = Field(default_factory=lambda: BurnTier.model_validate(DEFAULTS["page"]))
    ticket: BurnTier = Field(default_factory=lambda: BurnTier.model_validate(DEFAULTS["ticket"]))

    @model_validator(mode="before")
    @classmethod
    def _tier_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {**data, **{t: {**DEFAULTS[t], **data[t]} for t in DEFAULTS if isinstance(data.get(t), dict)}}

    def tiers(self) -> list[tuple[str, BurnTier]]:
        return [(name, tier) for name, tier in (("page", self.page), ("ticket", self.ticket)) if tier.enabled]

    def windows(self) -> frozenset[str]:
        """The spend windows (`window_name`) a budgeted workflow needs."""
        return frozenset(window_name(s) for _, t in self.tiers() for s in (t.long_s, t.short_s))


@dataclass(frozen=True)
class BudgetNow:
    """One budget of one subject at one moment: what a burn check weighs the rates against."""

    scope: str  # workflow | team
    name: str
    workflow: str
    team: str | None
    period: str  # day | month
    period_key: str
    start: float  # the period's bounds, epoch seconds
    end: float
    budget: int  # micro-USD
    spent: int  # micro-USD in the period so far
    now: float

    @property
    def allowed(self) -> float:
        """The budgeted rate, micro-USD per second."""
        return self.budget / (self.end - self.start)


def has_episode(fired: set[str]) -> bool:
    """Whether any burn-rate episode is firing (what `tick` must keep checking)."""
    return any(MARK in mark for mark in fired)


def check_burn(
    b: BudgetNow,
    config: BurnRateConfig,
    rate: Callable[[str], float],
    fired: set[str],
    day_key: str,
    context: Callable[[], dict[str, Any]],
) -> list[Alert]:
    """Fire, or resolve, each tier of one budget. `rate(window name)` is the subject's spend in
    micro-USD per second; `fired` holds the episodes (marks under `day_key`, re-marked when the day
    turns so a long episode outlives the prune of old days); `context()`, asked only when an
    alert fires, adds evidence (who burns)."""
    alerts = []
    for tier_name, tier in config.tiers():
        tag = f"{MARK}{b.period}:{tier_name}:"
        mark = next((m for m in fired if tag in m), None)
        short_x = rate(window_name(tier.short_s)) / b.allowed
        if mark is not None:
            start = float(mark.rsplit(":", 1)[1])
            fired.discard(mark)
            if short_x < tier.factor:
                alerts.append(_resolved(b, tier_name, tier, start, short_x))
            else:
                fired.add(f"{day_key}{tag}{start:.0f}")
            continue
        if short_x < tier.factor:
            continue
        long_rate = rate(window_name(tier.long_s))
        if long_rate / b.allowed >= tier.factor:
            fired.add(f"{day_key}{tag}{b.now:.0f}")
            alerts.append(_firing(b, tier_name, tier, long_rate, short_x, context()))
    return alerts


def runs_out(b: BudgetNow, rate: float) -> float | None:
    """When the budget is spent at `rate` (micro-USD/s): `now` if it already is, None if it lasts the period."""
    left = b.budget - b.spent
    if left <= 0:
        return b.now
    at = b.now + left / rate if rate > 0 else float("inf")
    return at if at < b.end else None


def _alert_id(b: BudgetNow, tier: str, start: float) -> str:
    return f"burn_rate:{b.scope}:{b.name}:{b.period}:{tier}:{start:.0f}"


def _firing(b: BudgetNow, tier_name: str, tier: BurnTier, long_rate: float, short_x: float,
            context: dict[str, Any]) -> Alert:
    long_x = long_rate / b.allowed
    label = _label(b.period)
    out = runs_out(b, long_rate)
    if out == b.now:
        outlook = f"the {label} budget is already spent"
    elif out is not None:
        outlook = f"at this rate it runs out at {_clock(out, b.now)} (in {span(out - b.now)})"
    else:
        outlook = f"at this rate it lasts until the {_period_noun(b.period)} ends (in {span(b.end - b.now)})"
    pct = b.spent * 100 / b.budget
    return Alert(
        alert_id=_alert_id(b, tier_name, b.now),
        kind="burn_rate",
        severity=SEVERITY[tier_name],
        workflow=b.workflow,
        team=b.team,
        ts=b.now,
        summary=(
            f"{b.scope} {b.name} is burning its {label} budget {long_x:.1f}× too fast: "
            f"{_per_hour(long_rate)}/h over the last {span(tier.long_s)} against {_per_hour(b.allowed)}/h "
            f"budgeted, {short_x:.1f}× over the last {span(tier.short_s)}. Spent {fmt_usd(b.spent)} of "
            f"{fmt_usd(b.budget)} ({pct:.0f}%) in {b.period_key}; {outlook}"
        ),
        evidence={
            "long_window_x": round(long_x, 2),
            "short_window_x": round(short_x, 2),
            "usd_per_hour": round(micros_to_usd(round(long_rate * 3600)), 2),
            "budgeted_usd_per_hour": round(micros_to_usd(round(b.allowed * 3600)), 2),
            "spent_usd": micros_to_usd(b.spent),
            "budget_usd": micros_to_usd(b.budget),
            "runs_out_at": _iso(out) if out is not None else None,
            "runs_out_in_min": round((out - b.now) / 60, 1) if out is not None else None,
            **context,
            "tier": tier_name,
            "factor": tier.factor,
            "long_window_s": tier.long_s,
            "short_window_s": tier.short_s,
            "scope": b.scope,
            "period": b.period,
            "period_key": b.period_key,
            "pct": round(pct, 2),
        },
    )


def _resolved(b: BudgetNow, tier_name: str, tier: BurnTier, start: float, short_x: float) -> Alert:
    return Alert(
        alert_id=_alert_id(b, tier_name, start),
        kind="burn_rate",
        severity=SEVERITY[tier_name],
        workflow=b.workflow,
        team=b.team,
        ts=b.now,
        status="resolved",
        summary=(
            f"{b.scope} {b.name} no longer burns its {_label(b.period)} budget {tier.factor:g}× too fast: "
            f"{_per_hour(short_x * b.allowed)}/h over the last {span(tier.short_s)} ({short_x:.2f}× the "
            f"budgeted {_per_hour(b.allowed)}/h), {span(b.now - start)} after it fired. Spent "
            f"{fmt_usd(b.spent)} of {fmt_usd(b.budget)} ({b.spent * 100 / b.budget:.0f}%) in {b.period_key}"
        ),
        evidence={
            "short_window_x": round(short_x, 2),
            "spent_usd": micros_to_usd(b.spent),
            "budget_usd": micros_to_usd(b.budget),
            "fired_at": _iso(start),
            "tier": tier_name,
            "factor": tier.factor,
            "scope": b.scope,
            "period": b.period,
            "period_key": b.period_key,
        },
    )


def span(seconds: float) -> str:
    """A duration as on-call reads it.

    >>> span(300), span(3600), span(4320), span(21600), span(2 * 86400 + 3 * 3600 + 59)
    ('5 min', '1 h', '1 h 12 min', '6 h', '2 d 3 h')
    """
    minutes = int(seconds // 60)
    days, hours, mins = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins} min" if mins else f"{int(seconds)} s"


def _label(period: str) -> str:
    return "daily" if period == "day" else "monthly"


def _period_noun(period: str) -> str:
    return "day" if period == "day" else "month"


def _per_hour(micros_per_s: float) -> str:
    return fmt_usd(round(micros_per_s * 3600))


def _clock(ts: float, now: float) -> str:
    """The time of day, and the date too when it is not within a day of `now`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M UTC" if ts - now < 86400 else "%Y-%m-%d %H:%M UTC")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
