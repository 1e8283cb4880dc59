"""`/metrics` of the dashboard process: global spend from the read model, in Prometheus' format.

A custom collector reads the model at scrape time (Prometheus' advice for exporting the state
of another system), so nothing is double-booked between scrapes. Counters are month-to-date
totals of the latest snapshots: they restart from zero when a month begins, which `rate()` and
`increase()` treat as any counter reset, and a restarted dashboard resumes them exactly. Labels are bounded: workflow,
team, model and outcome values beyond `MAX_VALUES` (by spend) are summed under `other`; run
and agent ids are never labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from detectors.pricing.money import micros_to_usd
from streams.dashboard.model import ReadModel

MAX_VALUES = 200
"""Label values per label (workflows, teams, models, outcomes); the rest go to `other`."""
OTHER = "other"
TOKEN_TYPES = {"input": "input_tokens", "output": "output_tokens", "cache_read": "cached_tokens",
               "cache_write": "cache_write_tokens", "reasoning": "reasoning_tokens"}
METRICS = ("spendwatch_cost_usd", "spendwatch_team_cost_usd", "spendwatch_model_cost_usd", "spendwatch_tokens",
           "spendwatch_calls", "spendwatch_errors", "spendwatch_outcomes", "spendwatch_budget_used_ratio",
           "spendwatch_alerts", "spendwatch_active_kills", "spendwatch_dashboard_records",
           "spendwatch_cache_read_share", "spendwatch_token_waste_ratio", "spendwatch_savings_usd_per_day")
"""The families this collector exports (counters without their `_total` suffix, as the client names them)."""


def capped(values: dict[str, float]) -> dict[str, float]:
    """The `MAX_VALUES` biggest label values; the rest summed under `other`.

    >>> capped({f"w{i}": float(i) for i in range(MAX_VALUES + 2)})["other"]
    1.0
    """
    if len(values) <= MAX_VALUES:
        return values
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    out = dict(ranked[:MAX_VALUES])
    out[OTHER] = out.get(OTHER, 0.0) + sum(v for _, v in ranked[MAX_VALUES:])
    return out


class ModelCollector(Collector):
    """The read model's totals as metric families (day totals for token and call counters: what a
    workflow's current snapshot holds)."""

    def __init__(self, model: ReadModel):
        self.model = model

    def collect(self) -> Iterator[Any]:
        m = self.model
        day, month = m.day, m.month
        cost: dict[str, float] = {}
        team_cost: dict[str, float] = {}
        model_cost: dict[str, float] = {}
        tokens: dict[tuple[str, str], float] = {}
        calls: dict[str, float] = {}
        errors: dict[str, float] = {}
        outcomes: dict[tuple[str, str], float] = {}
        used: list[tuple[str, str, float]] = []
        cache_share: dict[str, float] = {}
        waste: dict[str, float] = {}
        savings: dict[tuple[str, str], float] = {}
        for view in m.workflows.values():
            s = view.snap
            if s.month != month:
                continue
            for t in s.by.team:
                team_cost[t.name] = team_cost.get(t.name, 0.0) + t.month_micros
            for e in s.by.model:
                model_cost[e.name] = model_cost.get(e.name, 0.0) + e.month_micros
            totals = s.totals.month
            cost[s.workflow] = totals.cost_micros
            for kind, attr in TOKEN_TYPES.items():
                tokens[(s.workflow, kind)] = getattr(totals, attr)
            calls[s.workflow], errors[s.workflow] = totals.calls, totals.errors
            if totals.input_tokens:
                cache_share[s.workflow] = totals.cached_tokens / totals.input_tokens
            for i in s.insights:
                savings[(s.workflow, i.kind)] = savings.get((s.workflow, i.kind), 0.0) + i.usd_per_day
                if i.kind == "token_waste" and isinstance(i.evidence.get("waste_ratio"), int | float):
                    waste[s.workflow] = float(i.evidence["waste_ratio"])
            for name, (count, _) in s.outcomes.get("month", {}).items():
                outcomes[(s.workflow, name)] = count
            if s.budget is not None:
                for period, spent, limit in (("day", s.totals.day.cost_micros if s.day == day else 0,
                                              s.budget.day_micros),
                                             ("month", totals.cost_micros, s.budget.month_micros)):
                    if limit:
                        used.append((s.workflow, period, spent / limit))
        yield _counter("spendwatch_cost_usd", "LLM spend this month by workflow, USD", ["workflow"],
                       {(k,): micros_to_usd(int(v)) for k, v in capped(cost).items()})
        yield _counter("spendwatch_team_cost_usd", "LLM spend this month by team, USD", ["team"],
                       {(k,): micros_to_usd(int(v)) for k, v in capped(team_cost).items()})
        yield _counter("spendwatch_model_cost_usd", "LLM spend this month by model, USD", ["model"],
                       {(k,): micros_to_usd(int(v)) for k, v in capped(model_cost).items()})
        keep = set(capped(cost))
        yield _counter("spendwatch_tokens", "Tokens this month by workflow and type", ["workflow", "type"],
                       _fold(tokens, keep))
        yield _counter("spendwatch_calls", "LLM calls this month", ["workflow"],
                       _fold({(k, ""): v for k, v in calls.items()}, keep, 1))
        yield _counter("spendwatch_errors", "LLM calls this month that did not return ok", ["workflow"],
                       _fold({(k, ""): v for k, v in errors.items()}, keep, 1))
        yield _counter("spendwatch_outcomes", "Outcomes this month (resolved tickets, merged PRs...)",
                       ["workflow", "outcome"], _fold(outcomes, keep))
        ratio = GaugeMetricFamily("spendwatch_budget_used_ratio", "Share of the budget spent in the current period",
                                  labels=["workflow", "period"])
        for wf, period, r in used[:MAX_VALUES]:
            ratio.add_metric([wf, period], r)
        yield ratio
        yield _gauge("spendwatch_cache_read_share", "Share of this month's prompt tokens read from the provider's "
                     "cache", ["workflow"], {(wf,): v for wf, v in cache_share.items() if wf in keep})
        yield _gauge("spendwatch_token_waste_ratio", "Share of tokens in runs that ended without an outcome, looped "
                     "or kept spending as zombies (workflows with a token-waste insight)", ["workflow"],
                     {(wf,): v for wf, v in waste.items() if wf in keep})
        yield _gauge("spendwatch_savings_usd_per_day", "Dollars a day at stake in the savings insights",
                     ["workflow", "kind"], _fold(savings, keep))
        by_kind: dict[tuple[str, ...], float] = {}
        for a in m.alerts.values():
            by_kind[(a.kind, a.severity)] = by_kind.get((a.kind, a.severity), 0) + 1
        yield _counter("spendwatch_alerts", "Alerts seen (one per alert id)", ["kind", "severity"], by_kind)
        kills = GaugeMetricFamily("spendwatch_active_kills", "Kill commands in force", labels=["scope"])
        active: dict[str, int] = {"run_id": 0, "agent_id": 0, "workflow": 0}
        for c in m._active():
            active[c.scope] += 1
        for scope, n in active.items():
            kills.add_metric([scope], n)
        yield kills
        yield _counter("spendwatch_dashboard_records", "Records the dashboard read, by topic and result",
                       ["result"], {("snapshots",): m.counts.snapshots, ("alerts",): m.counts.alerts,
                                    ("commands",): m.counts.commands, ("stale",): m.counts.stale,
                                    ("bad",): sum(m.counts.bad.values())})


def _counter(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, v in values.items():
        family.add_metric(list(key), v)
    return family


def _gauge(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, v in values.items():
        family.add_metric(list(key), v)
    return family


def _fold(values: dict[tuple[str, str], float], keep: set[str], width: int = 2) -> dict[tuple[str, ...], float]:
    """Values keyed (workflow, x) with workflows not in `keep` summed as `other`; `width` 1 drops x."""
    out: dict[tuple[str, ...], float] = {}
    for (wf, other), v in values.items():
        key = (wf if wf in keep else OTHER, other)[:width]
        out[key] = out.get(key, 0.0) + v
    return out


def registry(model: ReadModel) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ModelCollector(model))
    return reg
