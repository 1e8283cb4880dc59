"""The four savings levers, in dollars per day, from one workflow's aggregates and the price catalog.

Each function takes the aggregates of a window of UTC days, the `Window` (how many days of
event time it spans, to turn totals into per-day rates) and the engine's parameters, and
returns insight dicts (`kind`, `workflow`, `model`, `usd_per_day`, `usd_per_month`,
`evidence`, `summary`). Hypothetical usage is priced with the same `Rate` objects the
engine prices events with (`PriceBook.rate`), tiers included, at the window's mean prompt size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from detectors.insights.aggregates import (
    CACHE_READ,
    CALLS,
    DAY,
    ERRORS,
    HIST,
    INPUT,
    MICROS,
    OUTPUT,
    R_CACHE_READ,
    R_CACHE_WRITE,
    R_CALLS,
    R_INPUT,
    R_MICROS,
    R_OUTPUT,
    W_LOOP,
    W_MICROS,
    W_NO_OUTCOME,
    W_TOKENS,
    W_ZOMBIE,
    percentile,
)
from detectors.pricing.money import fmt_usd
from detectors.pricing.prices import PICO_PER_MICRO, PriceBook, Rate

if TYPE_CHECKING:
    from detectors.insights.engine import InsightParams

DAYS_PER_MONTH = 30
MIN_SPAN = 3600.0
"""Per-day rates from less than an hour of traffic would be noise: a shorter span counts as an hour."""
KINDS = ("right_sizing", "caching", "context_bloat", "token_waste")


@dataclass(frozen=True)
class Window:
    days: tuple[int, ...]
    span_s: float
    """Event time the window's traffic covers: from its start (or the workflow's first call) to now."""

    @property
    def span_days(self) -> float:
        return max(self.span_s, MIN_SPAN) / DAY


def merged(days: dict[int, dict[str, list[Any]]], window: tuple[int, ...]) -> dict[str, list[Any]]:
    """Per model, the counters and histogram of the window's days summed."""
    out: dict[str, list[Any]] = {}
    for d in window:
        for model, vec in days.get(d, {}).items():
            acc = out.get(model)
            if acc is None:
                acc = out[model] = [0] * HIST + [{}]
            for i in range(HIST):
                acc[i] += vec[i]
            hist = acc[HIST]
            for k, c in vec[HIST].items():
                hist[k] = hist.get(k, 0) + c
    return out


def rate_of(prices: PriceBook, model: str, provider: str | None) -> Rate | None:
    """The catalog rate of a model, also under its bare name and lower-case provider
    (`google/gemini-3-pro-preview` from provider `Google`); None if only the fallback prices it."""
    rate = prices.rate(model, provider)
    if rate is not prices.fallback:
        return rate
    bare = model.rpartition("/")[2]
    prov = provider.lower().split()[0] if provider and provider.strip() else None
    for m, p in ((bare, prov), (bare, None)):
        rate = prices.rate(m, p)
        if rate is not prices.fallback:
            return rate
    return None


def cost_micros(rate: Rate, calls: int, input_tokens: int, output_tokens: int, cache_read: int = 0,
                cache_write: int = 0) -> float:
    """What `calls` calls with these token totals cost at `rate`, each priced at the tier of the mean
    prompt size (exact for flat rates, and for tiered ones when calls are alike)."""
    if not calls:
        return 0.0
    prompt = input_tokens // calls
    pico = ((input_tokens - cache_read - cache_write) * rate.input.at(prompt)
            + cache_read * rate.cache_read.at(prompt)
            + cache_write * rate.cache_write.at(prompt)
            + output_tokens * rate.output.at(prompt))
    return pico / PICO_PER_MICRO


def per_mtok(pico_per_token: int) -> float:
    return pico_per_token / PICO_PER_MICRO


def insight(kind: str, workflow: str, model: str | None, micros_per_day: float, evidence: dict[str, Any],
            summary: str) -> dict[str, Any]:
    usd = micros_per_day / 1e6
    return {"kind": kind, "workflow": workflow, "model": model, "usd_per_day": round(usd, 4),
            "usd_per_month": round(usd * DAYS_PER_MONTH, 2), "evidence": evidence, "summary": summary}


def right_sizing(workflow: str, models: dict[str, list[Any]], win: Window, providers: dict[str, str | None],
                 prices: PriceBook, p: InsightParams) -> list[dict[str, Any]]:
    """Routine-shaped calls on a model the tier map sends to a cheaper one: their cost now and there."""
    out = []
    for model, v in models.items():
        target = p.tier_map.target(model)
        if target is None or v[R_CALLS] < p.min_calls or not v[CALLS]:
            continue
        success = 1.0 - v[ERRORS] / v[CALLS]
        share = v[R_CALLS] / v[CALLS]
        if success < p.min_success or share < p.min_share:
            continue
        rate = rate_of(prices, target, providers.get(model))
        if rate is None:
            continue
        there = cost_micros(rate, v[R_CALLS], v[R_INPUT], v[R_OUTPUT], v[R_CACHE_READ], v[R_CACHE_WRITE])
        saved = (v[R_MICROS] - there) / win.span_days
        if saved / 1e6 < p.min_usd_per_day:
            continue
        evidence = {
            "target_model": target, "calls": v[CALLS], "routine_calls": v[R_CALLS], "routine_share": round(share, 4),
            "routine_shape": {"max_prompt_tokens": p.max_prompt_tokens, "max_output_tokens": p.max_output_tokens,
                              "reasoning_tokens": 0, "status": "ok"},
            "mean_prompt_tokens": round(v[R_INPUT] / v[R_CALLS], 1),
            "mean_output_tokens": round(v[R_OUTPUT] / v[R_CALLS], 1),
            "success_rate": round(success, 4),
            "usd_per_day_now": round(v[R_MICROS] / win.span_days / 1e6, 4),
            "usd_per_day_on_target": round(there / win.span_days / 1e6, 4),
            "days": round(win.span_days, 3),
        }
        summary = (f"{v[R_CALLS]:,} of {v[CALLS]:,} calls ({share:.0%}) to {model} in {workflow} look routine "
                   f"(≤{p.max_prompt_tokens:,} prompt and ≤{p.max_output_tokens:,} output tokens, no reasoning, "
                   f"{success:.0%} ok): candidates for {target}, {fmt_usd(round(v[R_MICROS] / win.span_days))}/day "
                   f"→ {fmt_usd(round(there / win.span_days))}/day there (quality not judged)")
        out.append(insight("right_sizing", workflow, model, saved, evidence, summary))
    return out


def caching(workflow: str, models: dict[str, list[Any]], win: Window, providers: dict[str, str | None],
            prices: PriceBook, p: InsightParams) -> list[dict[str, Any]]:
    """Large prompts with a cache-read share below the assumed hit rate: what reaching it would save."""
    out = []
    for model, v in models.items():
        prompt = v[INPUT]
        if v[CALLS] < p.min_calls or not prompt:
            continue
        p50 = percentile(v[HIST], 0.5)
        if p50 < p.cache_min_prompt_tokens:
            continue
        rate = rate_of(prices, model, providers.get(model))
        if rate is None:
            continue
        mean = prompt / v[CALLS]
        p_in, p_read = rate.input.at(int(mean)), rate.cache_read.at(int(mean))
        if p_read >= p_in:
            continue  # no cache discount to gain
        share = v[CACHE_READ] / prompt
        if share >= p.low_cache_share:
            continue
        gap = max(0.0, p.hit_rate - share)
        saved = gap * prompt * (p_in - p_read) / PICO_PER_MICRO / win.span_days
        if saved / 1e6 < p.min_usd_per_day:
            continue
        realised = v[CACHE_READ] * (p_in - p_read) / PICO_PER_MICRO / win.span_days
        evidence = {
            "calls": v[CALLS], "prompt_p50": p50, "prompt_p95": percentile(v[HIST], 0.95),
            "prompt_tokens_per_day": round(prompt / win.span_days),
            "cache_share": round(share, 4), "assumed_hit_rate": p.hit_rate,
            "input_usd_per_mtok": per_mtok(p_in), "cached_usd_per_mtok": per_mtok(p_read),
            "realised_usd_per_day": round(realised / 1e6, 4), "days": round(win.span_days, 3),
        }
        summary = (f"{model} in {workflow} sends {p50:,}-token prompts (p50) with {share:.0%} read from cache: "
                   f"caching at an assumed {p.hit_rate:.0%} hit rate saves ~{fmt_usd(round(saved))}/day "
                   f"(cached input ${per_mtok(p_read):g} vs ${per_mtok(p_in):g}/MTok)")
        out.append(insight("caching", workflow, model, saved, evidence, summary))
    return out


def context_bloat(workflow: str, this: dict[str, list[Any]], last: dict[str, list[Any]], win: Window,
                  providers: dict[str, str | None], prices: PriceBook, p: InsightParams) -> list[dict[str, Any]]:
    """Prompt tokens per call up from last week to this one: what the extra tokens cost per day now."""
    out = []
    for model, v in this.items():
        u = last.get(model)
        if u is None or v[CALLS] < p.min_calls or u[CALLS] < p.min_calls or not u[INPUT]:
            continue
        mean, before = v[INPUT] / v[CALLS], u[INPUT] / u[CALLS]
        growth = mean / before - 1.0
        if growth < p.min_growth:
            continue
        rate = rate_of(prices, model, providers.get(model))
        if rate is None:
            continue
        share = v[CACHE_READ] / v[INPUT]
        per_token = (1.0 - share) * rate.input.at(int(mean)) + share * rate.cache_read.at(int(mean))
        calls_per_day = v[CALLS] / win.span_days
        cost = (mean - before) * calls_per_day * per_token / PICO_PER_MICRO
        if cost / 1e6 < p.min_usd_per_day:
            continue
        evidence = {
            "calls_per_day": round(calls_per_day, 1), "growth": round(growth, 4),
            "mean_prompt_tokens": {"this_week": round(mean, 1), "last_week": round(before, 1)},
            "prompt_p50": {"this_week": percentile(v[HIST], 0.5), "last_week": percentile(u[HIST], 0.5)},
            "prompt_p95": {"this_week": percentile(v[HIST], 0.95), "last_week": percentile(u[HIST], 0.95)},
            "extra_tokens_per_day": round((mean - before) * calls_per_day),
            "cache_share": round(share, 4), "days": round(win.span_days, 3),
        }
        summary = (f"prompts to {model} in {workflow} grew {growth:+.0%} week over week "
                   f"({before:,.0f} → {mean:,.0f} tokens per call, p95 {percentile(u[HIST], 0.95):,} → "
                   f"{percentile(v[HIST], 0.95):,}): the growth costs {fmt_usd(round(cost))}/day")
        out.append(insight("context_bloat", workflow, model, cost, evidence, summary))
    return out


def token_waste(workflow: str, this: dict[str, list[Any]], last: dict[str, list[Any]],
                waste: dict[int, dict[str, list[int]]], totals_by_day: dict[int, tuple[int, int]], win: Window,
                prev_days: tuple[int, ...], p: InsightParams) -> list[dict[str, Any]]:
    """Tokens and dollars of runs that ended without an outcome or hit loop/zombie alerts."""
    w = [0] * 5
    by_model: dict[str, int] = {}
    for d in win.days:
        for model, x in waste.get(d, {}).items():
            for i in range(5):
                w[i] += x[i]
            by_model[model] = by_model.get(model, 0) + x[W_MICROS]
    per_day = w[W_MICROS] / win.span_days
    if not w[W_MICROS] or per_day / 1e6 < p.min_usd_per_day:
        return []
    tokens = sum(v[INPUT] + v[OUTPUT] for v in this.values())
    micros = sum(v[MICROS] for v in this.values())
    before_tokens = sum(v[INPUT] + v[OUTPUT] for v in last.values())
    before_waste = sum(x[W_TOKENS] for d in prev_days for x in waste.get(d, {}).values())
    ratio = w[W_TOKENS] / tokens if tokens else 0.0
    before = before_waste / before_tokens if before_tokens else None
    daily = []
    for d in sorted(set(totals_by_day) | set(waste)):
        t = totals_by_day.get(d, (0, 0))[0]
        wt = sum(x[W_TOKENS] for x in waste.get(d, {}).values())
        daily.append({"day": d * 86400, "waste_ratio": round(wt / t, 4) if t else None})
    top = max(by_model, key=lambda m: by_model[m])
    evidence = {
        "waste_tokens": w[W_TOKENS], "tokens": tokens, "waste_ratio": round(ratio, 4),
        "waste_usd": round(w[W_MICROS] / 1e6, 6), "usd": round(micros / 1e6, 6),
        "usd_ratio": round(w[W_MICROS] / micros, 4) if micros else None,
        "waste_ratio_last_week": None if before is None else round(before, 4),
        "runs": {"no_outcome": w[W_NO_OUTCOME], "loop": w[W_LOOP], "zombie": w[W_ZOMBIE]},
        "usd_by_model": {m: round(x / 1e6, 6) for m, x in sorted(by_model.items(), key=lambda t: -t[1])},
        "daily": daily, "days": round(win.span_days, 3),
    }
    runs = w[W_NO_OUTCOME] + w[W_LOOP] + w[W_ZOMBIE]
    trend = "" if before is None else f", {before:.0%} last week"
    summary = (f"{ratio:.0%} of {workflow}'s tokens ({fmt_usd(round(per_day))}/day) went to {runs:,} runs that "
               f"ended without an outcome ({w[W_NO_OUTCOME]:,}), looped ({w[W_LOOP]:,}) or kept spending as "
               f"zombies ({w[W_ZOMBIE]:,}){trend}")
    return [insight("token_waste", workflow, top, per_day, evidence, summary)]

