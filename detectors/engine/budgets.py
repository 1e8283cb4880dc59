"""Budget thresholds per period: one alert per threshold per period, never twice."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from detectors.engine.burn import BurnRateConfig
from detectors.pricing.money import fmt_usd, micros_to_usd, usd_to_micros
from schemas.alerts import Alert, Severity


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    daily_usd: float | None = Field(default=None, ge=0.01, le=1e9)
    monthly_usd: float | None = Field(default=None, ge=0.01, le=1e9)
    """At least a cent: a smaller budget rounds to zero micro-dollars and every threshold divides by it."""

    def micros(self, period: str) -> int | None:
        usd = self.daily_usd if period == "day" else self.monthly_usd
        return None if usd is None else usd_to_micros(usd)


class BudgetConfig(BaseModel):
    """`[budgets]` in the config file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    thresholds: list[int] = Field(default_factory=lambda: [50, 75, 90, 100])
    workflows: dict[str, Budget] = Field(default_factory=dict)
    teams: dict[str, Budget] = Field(default_factory=dict)
    burn_rate: BurnRateConfig = Field(default_factory=BurnRateConfig)

    @field_validator("thresholds")
    @classmethod
    def _sorted_percentages(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 < t <= 1000 for t in v):
            raise ValueError("thresholds are percentages of the budget between 1 and 1000, e.g. [50, 75, 90, 100]")
        return sorted(set(v))


def severity_for(pct: int) -> Severity:
    return "critical" if pct >= 100 else "warning" if pct >= 90 else "info"


def crossed_thresholds(
    spent: int, budget: int, thresholds: list[int], fired: set[str], period_key: str
) -> list[int]:
    """Thresholds reached by `spent` in `period_key` that have not fired yet (marks them fired)."""
    out = []
    for t in thresholds:
        tag = f"{period_key}:{t}"
        if spent * 100 >= budget * t and tag not in fired:
            fired.add(tag)
            out.append(t)
    return out


def budget_alert(
    *,
    scope: str,
    name: str,
    workflow: str,
    period: str,
    period_key: str,
    threshold: int,
    spent: int,
    budget: int,
    ts: float,
    evidence: dict,
    team: str | None = None,
) -> Alert:
    """The alert for one crossed threshold; its id is stable per (subject, period, threshold)."""
    pct = spent * 100 / budget
    label = "daily" if period == "day" else "monthly"
    return Alert(
        alert_id=f"budget:{scope}:{name}:{period_key}:{threshold}",
        kind="budget",
        severity=severity_for(threshold),
        workflow=workflow,
        team=team,
        ts=ts,
        summary=(
            f"{scope} {name} has spent {fmt_usd(spent)} of its {label} budget "
            f"{fmt_usd(budget)} ({pct:.0f}%, crossed {threshold}%) in {period_key}"
        ),
        evidence={
            "scope": scope,
            "period": period,
            "period_key": period_key,
            "threshold_pct": threshold,
            "spent_usd": micros_to_usd(spent),
            "budget_usd": micros_to_usd(budget),
            "pct": round(pct, 2),
            **evidence,
        },
    )
