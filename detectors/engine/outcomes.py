"""Cost per outcome: what a workflow spends per unit of the work it exists to do.

Budget and zombie alerts carry it ("$4.10 per ticket_resolved today vs $1.20 yesterday"), so
on-call sees at once whether the spend bought anything; the dashboard shows it per workflow.
Workflows that never report outcomes get no figure (nothing to compare with).
"""

from __future__ import annotations

from typing import Any

from detectors.engine.workflow import WorkflowState
from detectors.pricing.money import fmt_usd, micros_to_usd


def cost_per_outcome(st: WorkflowState, today: str, yesterday: str) -> dict[str, Any] | None:
    """Spend per outcome today and yesterday, for the workflow's most frequent outcome name.

    >>> st = WorkflowState("support")
    >>> st.spend.periods = {"2025-12-02": [4_100_000] + [0] * 7, "2025-12-01": [12_000_000] + [0] * 7}
    >>> st.outcomes = {"2025-12-02": {"resolved": [1, 0]}, "2025-12-01": {"resolved": [10, 0]}}
    >>> cost_per_outcome(st, "2025-12-02", "2025-12-01")["text"]
    '$4.10 per resolved today (1) vs $1.20 yesterday (10)'
    """
    now, before = st.outcomes.get(today, {}), st.outcomes.get(yesterday, {})
    if not now and not before:
        return None
    counts: dict[str, int] = {}
    for named in (before, now):
        for name, (n, _) in named.items():
            counts[name] = counts.get(name, 0) + n
    name = max(counts, key=lambda k: (counts[k], k))
    n_today, n_before = sum(n for n, _ in now.values()), sum(n for n, _ in before.values())
    spent, spent_before = st.period_cost(today), st.period_cost(yesterday)
    per_today = spent / n_today if n_today else None
    per_before = spent_before / n_before if n_before else None
    head = (f"{fmt_usd(round(per_today))} per {name} today ({n_today})" if per_today is not None
            else f"no {name} yet today after {fmt_usd(spent)}")
    tail = f" vs {fmt_usd(round(per_before))} yesterday ({n_before})" if per_before is not None else ""
    return {"outcome": name, "outcomes_today": n_today, "outcomes_yesterday": n_before,
            "usd_per_outcome_today": None if per_today is None else round(micros_to_usd(round(per_today)), 6),
            "usd_per_outcome_yesterday": None if per_before is None else round(micros_to_usd(round(per_before)), 6),
            "text": head + tail}
