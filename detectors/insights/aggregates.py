"""What the insights engine keeps per workflow: per UTC day and model, counters and a prompt-size
histogram; per run in flight, a small counter; per day, the tokens and dollars of wasted runs.

Memory is bounded per workflow: `KEEP_DAYS` days × at most `MAX_MODELS` models × (16 integers +
a histogram of at most ~90 log buckets), `MAX_RUNS` runs of 8 fields. Everything is plain data
(`dump` / `load`, format "v": 1) for the detectors blob the Monitor saves.

Histogram buckets are logarithmic, four per octave (about ±12 % resolution):

>>> [bucket(n) for n in (0, 3, 1000, 1100, 20_000)]
[0, 3, 43, 44, 60]
>>> [round(value(bucket(n))) for n in (1000, 20_000)]  # the middle of [896, 1024) and [16384, 20480)
[960, 18432]
>>> percentile({bucket(1000): 9, bucket(20_000): 1}, 0.5), percentile({}, 0.5)
(960, 0)
"""

from __future__ import annotations

from typing import Any

from detectors import state

KEEP_DAYS = 14
"""Days of per-model aggregates kept (this week and last, for trends)."""
MAX_MODELS = 20
"""Models tracked per workflow and day; calls to more are left out of the insights (counted in `dropped`)."""
MAX_RUNS = 2_000
"""Runs in flight tracked per workflow for waste (the state is one table record); more are not tracked."""
DAY = 86_400

# per day × model counters
CALLS, ERRORS, INPUT, OUTPUT, CACHE_READ, CACHE_WRITE, REASONING, MICROS = range(8)
R_CALLS, R_INPUT, R_OUTPUT, R_CACHE_READ, R_CACHE_WRITE, R_MICROS = range(8, 14)
"""The same for the calls whose shape looks routine (short prompt and output, no reasoning, ok)."""
HIST = 14
"""Index of the prompt-token histogram (log bucket → calls) in a model-day list."""
WIDTH = 15

# per run: [last ts, tokens, micros, tokens after outcome, micros after outcome, flags, model, agent]
LAST, TOKENS, RUN_MICROS, POST_TOKENS, POST_MICROS, FLAGS, MODEL, AGENT = range(8)
ENDED, LOOP, ZOMBIE = 1, 2, 4

# per day × model waste: [tokens, micros, runs without outcome, looping runs, zombie runs]
W_TOKENS, W_MICROS, W_NO_OUTCOME, W_LOOP, W_ZOMBIE = range(5)


def bucket(n: int) -> int:
    """Log bucket of a token count: exact below 8, then four buckets per power of two."""
    b = n.bit_length()
    return n if b <= 3 else (b << 2) | ((n >> (b - 3)) & 3)


def value(idx: int) -> float:
    """The middle of bucket `idx` (the inverse of `bucket`, up to its width)."""
    if idx < 8:
        return float(idx)
    b, s = idx >> 2, idx & 3
    return (4.5 + s) * 2.0 ** (b - 3) if b > 3 else float(idx)


def percentile(hist: dict[int, int], q: float) -> int:
    """The q-quantile of a bucket histogram (the middle of its bucket), 0 when empty."""
    n = sum(hist.values())
    if not n:
        return 0
    rank, seen = q * n, 0
    for idx in sorted(hist):
        seen += hist[idx]
        if seen >= rank:
            return round(value(idx))
    return round(value(max(hist)))


def new_model_day() -> list[Any]:
    return [0] * HIST + [{}]


class WorkflowAggregates:
    """One workflow's insight state."""

    __slots__ = ("days", "runs", "waste", "providers", "first", "swept", "dropped", "per_run", "cached")

    def __init__(self) -> None:
        self.days: dict[int, dict[str, list[Any]]] = {}
        """UTC day index → model → counters (see CALLS ... HIST)."""
        self.runs: dict[str, list[Any]] = {}
        self.waste: dict[int, dict[str, list[int]]] = {}
        """UTC day of a wasted run's last call → its model → W_* counters."""
        self.providers: dict[str, str | None] = {}
        self.first = 0.0
        """Event time of the first call still inside the kept days (the span the per-day rates divide by)."""
        self.swept = 0.0
        self.dropped = 0
        self.per_run = False
        """The workflow sends outcomes per run (with a `run_id`): only then is a run without one waste."""
        self.cached: tuple[float, list[dict[str, Any]]] | None = None
        """(event time, insights) last computed: the snapshot reuses them for `refresh` seconds."""

    def prune(self, now: float) -> None:
        """Forget days older than KEEP_DAYS (and models no kept day mentions)."""
        oldest = int(now // DAY) - KEEP_DAYS + 1
        for d in [d for d in self.days if d < oldest]:
            del self.days[d]
        for d in [d for d in self.waste if d < oldest]:
            del self.waste[d]
        if self.first < oldest * DAY:
            self.first = oldest * DAY if self.days else 0.0
        live = {m for day in self.days.values() for m in day} | {m for day in self.waste.values() for m in day}
        for m in [m for m in self.providers if m not in live]:
            del self.providers[m]

    def fresh(self) -> bool:
        return not self.days and not self.runs and not self.waste

    def dump(self) -> dict[str, Any]:
        return {
            "v": state.V,
            "days": {str(d): {m: [*vec[:HIST], {str(k): c for k, c in vec[HIST].items()}] for m, vec in models.items()}
                     for d, models in self.days.items()},
            "runs": self.runs,
            "waste": {str(d): models for d, models in self.waste.items()},
            "providers": self.providers, "first": self.first, "swept": self.swept, "dropped": self.dropped,
            "per_run": self.per_run,
        }

    @classmethod
    def load(cls, doc: dict[str, Any]) -> WorkflowAggregates:
        d = state.obj(doc)
        wf = cls()
        for day, models in state.obj(d["days"]).items():
            kept: dict[str, list[Any]] = {}
            for model, vec in state.obj(models).items():
                v = state.seq(vec, WIDTH)
                kept[state.text(model)] = [*(state.count(x) for x in v[:HIST]),
                                           {int(k): state.count(c) for k, c in state.obj(v[HIST]).items()}]
            wf.days[int(day)] = kept
        for rid, run in state.obj(d["runs"]).items():
            r = state.seq(run, 8)
            wf.runs[state.text(rid)] = [state.num(r[LAST]), *(state.count(x) for x in r[TOKENS:MODEL]),
                                        state.text(r[MODEL]), state.opt_text(r[AGENT])]
        if len(wf.runs) > MAX_RUNS:
            raise ValueError(f"at most {MAX_RUNS} runs")
        for day, models in state.obj(d["waste"]).items():
            wf.waste[int(day)] = {state.text(m): [state.count(x) for x in state.seq(w, 5)]
                                  for m, w in state.obj(models).items()}
        wf.providers = {state.text(m): state.opt_text(p) for m, p in state.obj(d["providers"]).items()}
        wf.first, wf.swept, wf.dropped = state.num(d["first"]), state.num(d["swept"]), state.count(d["dropped"])
        wf.per_run = state.flag(d["per_run"])
        return wf
