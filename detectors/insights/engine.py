"""The insights engine: savings levers per workflow, in dollars, from the events the Monitor applies.

Fed by the Monitor with each workflow's slice of a batch (`observe`): the
per-model totals come from the Monitor's own per-(bucket, team, model, agent)
groups, so per event only the prompt-size histogram, the routine-shape test and
the run counter are updated. Per interval (`tick`), runs idle past the loop
detector's `idle` are judged: without an outcome, or named by a loop or zombie
alert (`alerted`), their tokens and dollars are waste. `insights` turns the
last two weeks into the four levers (`detectors/insights/levers.py`), priced
from the catalog. Event time only; state is plain data in the detectors blob.

>>> from schemas.events import UsageEvent
>>> from detectors.pricing.prices import PriceBook
>>> eng = InsightsEngine(min_usd_per_day=0.01)
>>> T0 = 1_767_225_600.0  # 2026-01-01
>>> evs = [UsageEvent(type="usage", event_id=f"e{i}", ts=T0 + 60 * i, workflow="tagger", model="gpt-4o",
...                   input_tokens=300, output_tokens=5) for i in range(1440)]
>>> eng.observe("tagger", evs, [3_000] * len(evs))
>>> [(i["kind"], i["model"], i["evidence"]["target_model"], i["usd_per_day"])
...  for i in eng.insights("tagger", T0 + 86_340, PriceBook())]
[('right_sizing', 'gpt-4o', 'gpt-4o-mini', 4.2538)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detectors import state
from detectors.insights import levers
from detectors.insights.aggregates import (
    AGENT,
    CACHE_READ,
    CACHE_WRITE,
    CALLS,
    DAY,
    ENDED,
    ERRORS,
    FLAGS,
    HIST,
    INPUT,
    LAST,
    LOOP,
    MAX_MODELS,
    MAX_RUNS,
    MICROS,
    MODEL,
    OUTPUT,
    POST_MICROS,
    POST_TOKENS,
    R_CACHE_READ,
    R_CACHE_WRITE,
    R_CALLS,
    R_INPUT,
    R_MICROS,
    R_OUTPUT,
    REASONING,
    RUN_MICROS,
    TOKENS,
    W_LOOP,
    W_MICROS,
    W_NO_OUTCOME,
    W_TOKENS,
    W_ZOMBIE,
    ZOMBIE,
    WorkflowAggregates,
    new_model_day,
)
from detectors.insights.tiers import DEFAULT_TIERS, TierMap
from detectors.pricing.prices import PriceBook
from schemas.alerts import Alert
from schemas.structs import Event

MIGRATIONS: dict[int, Any] = {}
IDLE = 900.0
"""A run without calls this long is over (the loop detector's default `idle`; the Monitor passes its own)."""


@dataclass(frozen=True)
class InsightParams:
    """What the levers need to know (see `InsightsEngine` for each)."""

    tier_map: TierMap
    hit_rate: float
    window_days: int
    min_usd_per_day: float
    min_calls: int
    max_prompt_tokens: int
    max_output_tokens: int
    min_success: float
    min_share: float
    cache_min_prompt_tokens: int
    low_cache_share: float
    min_growth: float


class InsightsEngine:
    """Savings levers per workflow: right-sizing, caching, context bloat, token waste.

    `tiers`: frontier model (name or `*` pattern) → cheaper model, tried in order before the
    defaults (`tiers.DEFAULT_TIERS`; an empty value turns a default off). `hit_rate`: the cache-read
    share of prompt tokens caching is assumed to reach. `window_days`: days of traffic an insight
    looks at (and compares with the same many days before, for trends). `min_usd_per_day`: smaller
    opportunities are not reported. `min_calls`: calls a model needs in the window. A call looks
    routine with at most `max_prompt_tokens` prompt and `max_output_tokens` output tokens, no
    reasoning tokens and status ok, on a model whose calls succeed at least `min_success` of the
    time; reported when at least `min_share` of the model's calls look so. Caching is judged for
    models whose median prompt has `cache_min_prompt_tokens` or more and whose cache-read share is
    below `low_cache_share`;
    context bloat is prompt tokens per call up by `min_growth` or more week over week. `refresh`:
    seconds of event time the computed insights are reused (snapshots ask often). `idle`: a run
    silent this long is over (default: the loop detector's). `interval`: seconds between sweeps.
    `digest`: (weekday, hour) of the weekly digest alerts the Monitor sends; None (default): none.
    """

    kind = "insights"

    def __init__(self, tiers: Mapping[str, str] | None = None, hit_rate: float = 0.30, window_days: int = 7,
                 min_usd_per_day: float = 1.0, min_calls: int = 20, max_prompt_tokens: int = 2048,
                 max_output_tokens: int = 256, min_success: float = 0.95, min_share: float = 0.05,
                 cache_min_prompt_tokens: int = 4096, low_cache_share: float = 0.10, min_growth: float = 0.25,
                 refresh: float = 60.0, idle: float | None = None, interval: float = 60.0,
                 digest: tuple[int, int] | None = None):
        if not 1 <= window_days <= 7:
            raise ValueError("window_days must be 1 to 7 (two windows fit in the 14 days kept)")
        self.tiers = dict(tiers or {})
        self.params = InsightParams(TierMap([*self.tiers.items(), *DEFAULT_TIERS.items()]), hit_rate, window_days,
                                    min_usd_per_day, min_calls, max_prompt_tokens, max_output_tokens, min_success,
                                    min_share, cache_min_prompt_tokens, low_cache_share, min_growth)
        self.refresh, self.idle, self.interval = refresh, idle, interval
        self.digest = digest
        """(weekday 0 = Monday, local hour) of the weekly digest (`detectors/insights/digest.py`); None: off."""
        self.workflows: dict[str, WorkflowAggregates] = {}

    def observe(self, workflow: str, events: Sequence[Event], costs: Sequence[int]) -> None:
        """One workflow's applied events of a batch (usage and outcome), with their micro-USD.

        The worker's hot path: one pass, locals only, the day's model table looked up once per
        model change, and the routine-shape counters touched only for calls that look routine."""
        wf = self.workflows.get(workflow)
        if wf is None:
            wf = self.workflows[workflow] = WorkflowAggregates()
        days, runs, providers = wf.days, wf.runs, wf.providers
        p = self.params
        max_in, max_out = p.max_prompt_tokens, p.max_output_tokens
        day_start = day_end = 0  # whole days (`d * DAY`), compared with float event times
        models: dict[str, list[Any]] = {}
        for ev, micros in zip(events, costs):
            rid = ev.run_id
            if ev.type == "outcome":
                if rid is not None:
                    wf.per_run = True
                    if (run := runs.get(rid)) is not None:
                        run[FLAGS] |= ENDED
                continue
            ts = ev.ts
            if ts >= day_end or ts < day_start:
                d = int(ts // DAY)
                day_start, day_end = d * DAY, (d + 1) * DAY
                models = days.setdefault(d, {})
                if not wf.first or ts < wf.first:
                    wf.first = ts
            model = ev.model
            vec = models.get(model)
            if vec is None:
                if len(models) >= MAX_MODELS:
                    wf.dropped += 1
                    continue
                vec = models[model] = new_model_day()
                providers.setdefault(model, ev.provider)
            inp, out, rs = ev.input_tokens, ev.output_tokens, ev.reasoning_tokens
            vec[CALLS] += 1
            vec[INPUT] += inp
            vec[OUTPUT] += out
            vec[MICROS] += micros
            if cr := ev.cache_read_tokens:
                vec[CACHE_READ] += cr
            if cw := ev.cache_write_tokens:
                vec[CACHE_WRITE] += cw
            if rs:
                vec[REASONING] += rs
            if ev.status != "ok":
                vec[ERRORS] += 1
            elif inp <= max_in and out <= max_out and not rs:
                vec[R_CALLS] += 1
                vec[R_INPUT] += inp
                vec[R_OUTPUT] += out
                vec[R_CACHE_READ] += cr
                vec[R_CACHE_WRITE] += cw
                vec[R_MICROS] += micros
            b = inp.bit_length()
            idx = inp if b <= 3 else (b << 2) | ((inp >> (b - 3)) & 3)
            hist = vec[HIST]
            hist[idx] = hist.get(idx, 0) + 1
            if rid is not None:
                run = runs.get(rid)
                if run is None:
                    if len(runs) >= MAX_RUNS:
                        continue
                    run = runs[rid] = [ts, 0, 0, 0, 0, 0, model, ev.agent_id]
                elif ts > run[LAST]:
                    run[LAST] = ts
                if run[FLAGS] & ENDED:
                    run[POST_TOKENS] += inp + out
                    run[POST_MICROS] += micros
                else:
                    run[TOKENS] += inp + out
                    run[RUN_MICROS] += micros

    def alerted(self, alerts: Iterable[Alert]) -> None:
        """Loop and zombie alerts mark the runs they name (a zombie agent: its runs in flight) as waste."""
        for a in alerts:
            if a.kind not in ("loop", "zombie") or a.status != "firing":
                continue
            wf = self.workflows.get(a.workflow)
            if wf is None:
                continue
            flag = LOOP if a.kind == "loop" else ZOMBIE
            if a.run_id is not None:
                run = wf.runs.get(a.run_id)
                if run is not None:
                    run[FLAGS] |= flag
            elif a.agent_id is not None:
                for run in wf.runs.values():
                    if run[AGENT] == a.agent_id and not run[FLAGS] & ENDED:
                        run[FLAGS] |= flag

    def tick(self, workflow: str, now: float) -> None:
        """Every `interval` s of event time: judge runs idle past `idle` (O(runs)), drop old days,
        and forget the workflow once nothing is left."""
        wf = self.workflows.get(workflow)
        if wf is None or now - wf.swept < self.interval:
            return
        wf.swept = now
        idle = self.idle if self.idle is not None else IDLE
        for rid in [rid for rid, run in wf.runs.items() if now - run[LAST] > idle]:
            self._judge(wf, wf.runs.pop(rid), wf.per_run)
        wf.prune(now)
        if wf.fresh():
            del self.workflows[workflow]

    @staticmethod
    def _judge(wf: WorkflowAggregates, run: list[Any], per_run: bool) -> None:
        """A run that is over: waste if it looped, was a zombie's, or (in a workflow that reports
        outcomes per run) ended without one."""
        flags = run[FLAGS]
        if flags & LOOP:
            reason, tokens, micros = W_LOOP, run[TOKENS] + run[POST_TOKENS], run[RUN_MICROS] + run[POST_MICROS]
        elif not flags & ENDED and (per_run or flags & ZOMBIE):
            reason, tokens, micros = (W_ZOMBIE if flags & ZOMBIE else W_NO_OUTCOME), run[TOKENS], run[RUN_MICROS]
        elif flags & ZOMBIE:  # spent on after its outcome: only that part is waste
            reason, tokens, micros = W_ZOMBIE, run[POST_TOKENS], run[POST_MICROS]
        else:
            return
        day = wf.waste.setdefault(int(run[LAST] // DAY), {})
        w = day.get(run[MODEL])
        if w is None:
            w = day[run[MODEL]] = [0, 0, 0, 0, 0]
        w[W_TOKENS] += tokens
        w[W_MICROS] += micros
        w[reason] += 1

    def insights(self, workflow: str, now: float, prices: PriceBook, fresh: bool = False) -> list[dict[str, Any]]:
        """The workflow's opportunities at event time `now`, biggest dollars first (reused for
        `refresh` seconds unless `fresh`)."""
        wf = self.workflows.get(workflow)
        if wf is None:
            return []
        if not fresh and wf.cached is not None and 0 <= now - wf.cached[0] < self.refresh:
            return wf.cached[1]
        p = self.params
        d_now, n = int(now // DAY), p.window_days
        this_days = tuple(range(d_now - n + 1, d_now + 1))
        prev_days = tuple(range(d_now - 2 * n + 1, d_now - n + 1))
        win = levers.Window(this_days, now - max(wf.first, this_days[0] * DAY))
        this, last = levers.merged(wf.days, this_days), levers.merged(wf.days, prev_days)
        totals = {d: (sum(v[INPUT] + v[OUTPUT] for v in models.values()), sum(v[MICROS] for v in models.values()))
                  for d, models in wf.days.items()}
        found = [
            *levers.right_sizing(workflow, this, win, wf.providers, prices, p),
            *levers.caching(workflow, this, win, wf.providers, prices, p),
            *levers.context_bloat(workflow, this, last, win, wf.providers, prices, p),
            *levers.token_waste(workflow, this, last, wf.waste, totals, win, prev_days, p),
        ]
        found.sort(key=lambda i: (-i["usd_per_day"], i["kind"], i["model"] or ""))
        wf.cached = (now, found)
        return found

    def dump(self, workflow: str) -> dict[str, Any] | None:
        wf = self.workflows.get(workflow)
        return None if wf is None else wf.dump()

    def load(self, workflow: str, doc: dict[str, Any]) -> None:
        with state.loading(self.kind, workflow):
            wf = WorkflowAggregates.load(state.upgrade(doc, self.kind, workflow, MIGRATIONS))
        self.workflows[workflow] = wf
