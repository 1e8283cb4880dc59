"""Spend spikes and level shifts per workflow, scored per interval of event time.

`SeriesScorer` scores one series causally: the expected value is a robust
local level plus an hour-of-day profile (Holt–Winters in log space), and the
score is how many robust sigmas a value sits above it, squashed into [0, 1].
Log space makes "3× normal" mean the same at night and at peak; the fast level
follows gradual growth and daily ramps; the profile removes the ramp lag once
a day has been seen; anomalous values are not learned, so a spike never
becomes the new normal (a shift that persists is accepted after a while).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

from detectors.detector import Event, alert_id
from detectors.money import fmt_usd
from schemas.alerts import Alert

SIGMA_PER_MAD = 1.25
"""A normal's standard deviation over its mean absolute deviation (√(π/2))."""
TAIL_SIGMAS = 2.58
"""Where a normal's 99th percentile of |x| lies, in sigmas."""


class SeriesScorer:
    """Causal anomaly score in [0, 1] for one series of (ts, value) samples.

    >>> s = SeriesScorer(offset=1.0, warmup=10)
    >>> for i in range(120):
    ...     s.learn_one(i * 60.0, 100 + (i % 7))
    >>> round(s.score_one(120 * 60.0, 104), 2), round(s.score_one(120 * 60.0, 600), 2)
    (0.02, 1.0)
    """

    __slots__ = (
        "period", "slots", "alpha", "gamma", "beta", "offset", "direction", "warmup", "clip",
        "protect", "adapt_after", "min_scale", "z_half",
        "tail_q", "tail_rate",
        "level", "season", "scale", "tail", "n", "streak", "_buffer",
    )  # fmt: skip

    def __init__(
        self,
        period: float = 86_400.0,
        slots: int = 24,
        alpha: float = 0.05,
        gamma: float = 0.1,
        beta: float = 0.03,
        offset: float | None = None,
        direction: Literal["up", "both"] = "up",
        warmup: int = 30,
        clip: float = 3.0,
        protect: float = 6.0,
        adapt_after: int = 120,
        min_scale: float = 0.02,
        z_half: float = 5.0,
        tail_q: float = 0.99,
        tail_rate: float = 0.05,
    ):
        self.period, self.slots = period, slots
        self.alpha, self.gamma, self.beta = alpha, gamma, beta
        self.offset = offset
        self.direction = direction
        self.warmup, self.clip, self.protect, self.adapt_after = warmup, clip, protect, adapt_after
        self.min_scale, self.z_half = min_scale, z_half
        self.tail_q, self.tail_rate = tail_q, tail_rate
        self.tail = 0.0  # the tail_q quantile of |residual|, tracked by stochastic approximation
        self.level = 0.0
        self.season = [0.0] * slots
        self.scale = 0.0
        self.n = 0
        self.streak = 0  # consecutive anomalous samples not learned
        self._buffer: list[tuple[float, float]] | None = [] if offset is None else None

    def _slot(self, ts: float) -> int:
        return int(ts % self.period * self.slots // self.period)

    def _y(self, value: float) -> float:
        return math.log(max(value, 0.0) + self.offset)  # type: ignore[operator]

    def _sigma(self) -> float:
        return max(SIGMA_PER_MAD * self.scale, self.tail / TAIL_SIGMAS, self.min_scale)

    def expected(self, ts: float) -> float:
        """The value this series is expected to take at `ts`."""
        if self.offset is None or self.n == 0:
            return 0.0
        return max(math.exp(self.level + self.season[self._slot(ts)]) - self.offset, 0.0)

    def zscore(self, ts: float, value: float) -> float:
        """Robust sigmas between `value` and its expected level (log space; + above)."""
        if self.n < self.warmup:
            return 0.0
        return (self._y(value) - self.level - self.season[self._slot(ts)]) / self._sigma()

    def score_one(self, ts: float, value: float) -> float:
        z = self.zscore(ts, value)
        z = abs(z) if self.direction == "both" else max(z, 0.0)
        return z * z / (z * z + self.z_half * self.z_half)

    def learn_one(self, ts: float, value: float) -> None:
        if self._buffer is not None:
            self._buffer.append((ts, value))
            if len(self._buffer) >= self.warmup:
                self._fit_buffer()
            return
        y = self._y(value)
        if self.n == 0:
            self.level, self.n = y, 1
            return
        slot = self._slot(ts)
        sigma = self._sigma()
        e = y - self.level - self.season[slot]
        z = e / sigma
        if self.tail <= 0.0:
            self.tail = abs(e)
        elif abs(e) > self.tail:
            self.tail *= math.exp(self.tail_rate * self.tail_q)
        else:
            self.tail *= math.exp(-self.tail_rate * (1.0 - self.tail_q))
        if self.n >= self.warmup and (z if self.direction == "up" else abs(z)) >= self.protect:
            self.streak += 1
            if self.streak <= self.adapt_after:
                return  # protect the baseline; a shift that outlasts adapt_after is learned
        else:
            self.streak = 0
        lim = self.clip * sigma
        ec = min(max(e, -lim), lim)
        a = max(self.alpha, 1.0 / (self.n + 1))
        self.level += a * ec
        self.season[slot] += self.gamma * (1.0 - a) * ec
        b = max(self.beta, 1.0 / (self.n + 1))
        self.scale += b * (min(abs(e), lim if self.n >= self.warmup else abs(e)) - self.scale)
        self.n += 1

    def _fit_buffer(self) -> None:
        """Pick the log offset from the first values' typical size, then learn them."""
        buf, self._buffer = self._buffer or [], None
        mags = sorted(abs(v) for _, v in buf)
        self.offset = max(0.1 * mags[len(mags) // 2], 0.01 * mags[-1], 1e-9)
        for ts, value in buf:
            self.learn_one(ts, value)


FEATURES = ("spend", "calls", "tokens_per_call", "error_rate")
OFFSETS = {"spend": 0.01, "calls": 1.0, "tokens_per_call": 200.0, "error_rate": 0.02}
"""Noise floors in each feature's unit (USD/min, calls/min, tokens, fraction): a change
from 0 to 0.001 USD/min is not a spike, so the log transform adds these."""


class WorkflowSpikes:
    """Per-workflow state: open interval counters, the trailing window, one scorer per feature."""

    __slots__ = ("team", "open", "next", "window", "scorers", "incident", "quiet")

    def __init__(self, first: int, smooth: int, scorer: dict[str, float | int]):
        self.team: str | None = None
        self.open: dict[int, list[float]] = {}  # interval index -> [micros, calls, input tokens, errors]
        self.next = first  # the next interval index to close
        self.window: deque[list[float]] = deque(maxlen=smooth)
        self.scorers = {f: SeriesScorer(offset=OFFSETS[f], **scorer) for f in FEATURES}  # type: ignore[arg-type]
        self.incident: float | None = None  # start of the open incident
        self.quiet = 0  # intervals since the incident last scored anomalous


class SpikeDetector:
    """Spend spikes and level shifts per workflow (subject `workflow`), one alert per incident.

    Every `interval` seconds of event time each workflow's features over the
    last `smooth` intervals (spend rate, call rate, input tokens per call,
    error rate) are scored by a `SeriesScorer` each; the workflow's score is
    the highest, and the alert names what moved: a traffic surge (calls), a
    retry storm (errors with calls), context bloat (tokens per call) or a
    pricier mix (spend alone), with the ratio to baseline.

    >>> from schemas.events import UsageEvent
    >>> det = SpikeDetector()
    >>> def burst(minute, calls, tokens=3000):
    ...     for i in range(calls):
    ...         ts = 1_740_960_000.0 + minute * 60.0 + 60.0 * i / calls
    ...         det.observe(UsageEvent(type="usage", event_id=f"{minute}-{i}", ts=ts, workflow="search",
    ...                                model="gpt-4o", input_tokens=tokens, output_tokens=200), 9500)
    ...     return det.tick(1_740_960_000.0 + (minute + 1) * 60.0 + 10.0)
    >>> [a for m in range(180) for a in burst(m, 20 + m % 5)]
    []
    >>> alerts = [a for m in range(180, 190) for a in burst(m, 20, tokens=15_000)]
    >>> [(a.kind, a.evidence["cause"]) for a in alerts]
    [('spike', 'context bloat')]
    """

    kind = "spike"

    def __init__(self, interval: float = 60.0, smooth: int = 5, threshold: float = 0.5, grace: float = 5.0,
                 cooldown: int = 15, min_usd_per_min: float = 0.01, scorer: dict[str, float | int] | None = None):
        self.interval, self.smooth, self.threshold, self.grace = interval, smooth, threshold, grace
        self.cooldown, self.min_usd_per_min = cooldown, min_usd_per_min
        self.scorer = scorer or {}
        self.workflows: dict[str, WorkflowSpikes] = {}

    def observe(self, event: Event, cost_micros: int) -> None:
        if event.type != "usage":
            return
        idx = int(event.ts // self.interval)
        wf = self.workflows.get(event.workflow)
        if wf is None:
            wf = self.workflows[event.workflow] = WorkflowSpikes(idx, self.smooth, self.scorer)
        wf.team = event.team or wf.team
        acc = wf.open.get(max(idx, wf.next))  # a late event counts in the first open interval
        if acc is None:
            acc = wf.open[max(idx, wf.next)] = [0.0, 0.0, 0.0, 0.0]
        acc[0] += cost_micros
        acc[1] += 1
        acc[2] += event.input_tokens
        acc[3] += event.status != "ok"

    def tick(self, now: float) -> list[Alert]:
        alerts = []
        for name, wf in self.workflows.items():
            while (wf.next + 1) * self.interval + self.grace <= now:
                alert = self._close(name, wf)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _close(self, name: str, wf: WorkflowSpikes) -> Alert | None:
        start = wf.next * self.interval
        wf.window.append(wf.open.pop(wf.next, [0.0, 0.0, 0.0, 0.0]))
        wf.next += 1
        micros, calls, tokens, errors = (sum(col) for col in zip(*wf.window))
        minutes = len(wf.window) * self.interval / 60.0
        values = {"spend": micros / 1e6 / minutes, "calls": calls / minutes}
        if calls:
            values["tokens_per_call"], values["error_rate"] = tokens / calls, errors / calls
        ts = start + self.interval
        scores = {f: wf.scorers[f].score_one(ts, x) for f, x in values.items()}
        moved = {f: (x, wf.scorers[f].expected(ts)) for f, x in values.items()}
        for f, x in values.items():
            wf.scorers[f].learn_one(ts, x)
        top = max(scores.values())
        if top < self.threshold or values["spend"] < self.min_usd_per_min:
            if wf.incident is not None:
                wf.quiet += 1
                if wf.quiet >= self.cooldown:
                    wf.incident = None
            return None
        wf.quiet = 0
        if wf.incident is not None:
            return None
        wf.incident = start
        return self._alert(name, wf, ts, scores, moved)

    def _alert(self, name: str, wf: WorkflowSpikes, ts: float, scores: dict[str, float],
               moved: dict[str, tuple[float, float]]) -> Alert:
        hot = {f for f, s in scores.items() if s >= self.threshold}
        ratio = {f: (x + OFFSETS[f]) / (base + OFFSETS[f]) for f, (x, base) in moved.items()}
        if "error_rate" in hot:
            cause = "retry storm" if ratio["calls"] >= 1.5 else "error spike"
        elif "tokens_per_call" in hot:
            cause = "context bloat"
        elif "calls" in hot:
            cause = "traffic surge"
        else:
            cause = "spend spike"
        spend, base = moved["spend"]
        parts = ", ".join(f"{f.replace('_', ' ')} ×{ratio[f]:.1f}" for f in FEATURES if f in hot)
        return Alert(
            alert_id=alert_id("spike", name, "workflow", wf.incident), kind="spike",
            severity="critical" if ratio["spend"] >= 5 else "warning", workflow=name, ts=ts, team=wf.team,
            summary=(f"{cause} in {name}: {parts} vs baseline; spend {fmt_usd(round(spend * 1e6))}/min "
                     f"(normal {fmt_usd(round(base * 1e6))}/min)"),
            evidence={
                "cause": cause, "score": round(max(scores.values()), 3), "since": wf.incident,
                "features": {f: {"value": round(x, 6), "baseline": round(b, 6), "ratio": round(ratio[f], 2),
                                 "score": round(scores[f], 3)} for f, (x, b) in moved.items()},
            },
        )  # fmt: skip
