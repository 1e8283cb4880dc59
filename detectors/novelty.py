"""`NoveltyScorer`: how rarely a series has taken a value like this one, as a River anomaly detector.

Most incidents, in spend and in NAB's real series alike, are values the series has rarely or never
taken: a level it never sat at, a burst beyond its usual bursts, a middle value in a square wave.
So the score is the surprise of the value's bin under the series' own histogram, −log p, on the
scale of the rarest possible bin (1 / rows seen), squashed into [0, 1): a value in a bin never seen
scores ≈ 0.52, one in the series' most common bins well under 0.3. Bins are a fixed width, set from
the spread of the warm-up (its 1st–99th percentile over `bins`), so a new level or a bigger burst
lands in a new bin; a daily pattern's levels are all seen after one day, so a nightly batch stops
scoring once its level is known. Neighbouring bins count `smooth` as much (a value next to a common
one is not rare). Beyond `MAX_BINS_OUT` (one) warm-up range either side the bins grow
geometrically (each twice as far out as the last): fine grain where the series lives, a log scale
far from it, so a burst ten times the biggest one seen is still new, where fixed-width bins clamped
far out would put it in the same bin (a series that was all zeros in its warm-up, or that moved to a
level far beyond it, could then never look new again), while the next nightly blip a little higher
than the last one is not.

A second histogram does the same for the mean of the last `span` rows: a burst of spikes each no
higher than the usual ones, or a level that moved within the seen range but stays there, is a new
short-window mean though no single value is new. A third learns periodic structure: it keeps, per
5-minute slot of the day, that recent mean on each of the last `days` days, and judges how far the
recent mean now is from the closest of them (slot ± 1, so a row a few minutes off its slot still
finds its time of day). Its histogram has one bin per warm-up range of these departures, so only a
departure well beyond the usual day-to-day differences is new: a day whose morning rise does not
come, a nightly batch that does not run. The score is the highest of the three.

The value's bins widen with the series: when `widen` × the running mean absolute change between
rows reaches two bin widths, the width doubles (counts of paired bins merge), so a series that grew
noisier than its warm-up is judged at its new grain and does not page on every tail of its noise.

Then one page per incident: after a score above `fire`, the next `rest` rows score 0 unless they
beat the highest score since by more than `BEAT` (an onset that keeps getting worse still shows; a
value that is merely as new, or the mean catching up with the value that fired, does not), so a
level shift scores once at its onset and not for every row until the histograms have learned it.

State is bounded however long a series runs: each histogram holds at most `max_bins(bins)` counts,
the window `span` − 1 values, the profile 288 slots × (`days` + 1) means.

Measured on NAB (`spendwatch replay nab ../shared/data/nab_dev --out DIR`: 35 real and artificial
series, NAB's rules): 76.6 standard, 73.1 reward_low_FP, 79.7 reward_low_FN (standard per category:
artificialWithAnomaly 91.7, realAWSCloudwatch 75.9, realTraffic 72.0; 43 of 50 windows, 33
false-positive rows), against 0.0 for the Holt–Winters `SeriesScorer`, 37.1 for a windowed Gaussian,
74.8 for ARTime, 75.4 for Numenta HTM and 77.0 for contextOSE on the same files. Each step, on the
same corpus (standard / low_FP / low_FN): the value histogram alone 67.5 / 63.3 / 71.0; geometric
bins past the linear reach (then eight warm-up ranges) 69.3 / 65.1 / 72.9; the short-window mean
beside it 72.9 / 67.3 / 76.6 (spans of 16, 24 and 48 rows give 72.7–72.9); the rest's `BEAT` 73.2 /
67.9 / 76.8; the time-of-day departure 74.8 / 69.2 / 78.5 (74.6–74.9 with 5-, 10- or 15-minute
slots, 2 or 3 days; 72.1 with one bin per tenth of the warm-up range instead of one per range, 73.1
with 15-minute slots and no neighbours); widening the value's bins 76.0 / 71.7 / 79.3 (`widen` 0.35:
75.3, 0.4: 75.4, 0.6: 74.4, 0.7: 73.1, 0.25: no change; with the mean's bins widened too 75.7; with
the changes clipped at 3 or 10 times their mean, 75.0–75.2); fixed-width bins reaching one warm-up
range out instead of eight 76.6 / 73.1 / 79.7 (two or four: 76.1; twelve: 75.9; half a range: 68.3,
the geometric bins then start inside the series' own range; with growth 1.25, 1.5 or 2.5 instead of
2: 76.3, 76.7, 75.0).
Tried and dropped, each lower on the same corpus (standard): Numenta's anomaly likelihood on top
(50.6), a distance-graded score for unseen bins (61.9), an asinh value transform (55.2), sequence
contexts of coarse levels in the manner of contextOSE (56.4), an hour-of-day histogram beside the
global one (65.2), discounting series that are often novel (44.5), bins clamped at 1, 2 or 16
warm-up ranges out instead of 8 (56.9, 62.4, 67.1); with the value histogram alone, a warm-up of
100–300 rows instead of 400 (62.5–66.6), scoring from row 100–300 on a provisional fit refitted
until row 400 (67.2–69.3), forgetting old counts (half-lives of 500–4000 rows: no change or lower),
`rest` 50/200/400 (67.7, 66.3, 54.1), `bins` 10/30/40 (62.0, 66.4, 66.1); beside the value and the
32-row mean, a histogram of the 288-row (a day at 5 min) mean (72.5: the day that does not rise is
found, but slow drifts page), of a 4-, 8- or 128-row mean (71.5, 69.0, 69.8), of the 32-row
standard deviation (72.3), of the first difference (67.4), of the raw value's distance to the same
time of day (67.4–70.8, at the fine grain); `rest` 50/150/200 with both (72.6, 71.8, 68.3); a rest
restarted by every new bin, shown or not (70.1), or one that shows a value beyond the incident's
range instead of a higher score (68.8–73.4); adding a share of the lower channel's score to the
higher (72.6 at 1 %, 69.0 at 10 %); judging a value against neighbours as wide as the recent spread
(62.4–65.7); a bin-width floor of 1 % or 3 % of the level in place of widening (74.8, 74.2: 23
false-positive rows but two windows of a quiet 2 % CPU series lost); scoring from row 300 on a
provisional fit (75.1 before widening, but 72.9 from row 100 or 200: one short file's luck). With
the departure and widening (on 76.0, before the one-range reach): the departure's histogram widened
too (74.2–74.3: the day that does not rise is lost), requiring novelty at 2–8 times coarser bins too
(61.1–73.6), a fixed scale for −log p instead of 1 / rows seen (69.3–71.0), the value's own
departure from its time of day as a fourth channel (76.3), value novelty explained away by a close
value at the same time on the last days (73.2–76.1), a histogram of (previous, current) coarse bins
in the manner of contextOSE (no change), the rest ending after 10–60 rows without a new bin
(75.4–76.5: more pages). At the chosen settings, neighbours score: `widen` 0.35/0.4/0.6/0.7 75.8/
75.8/75.2/74.5, `days` 4 76.5, `rest` 80/150 76.5/75.0, `bins` 16/18/24 75.4/73.5/74.0, `warmup`
300 72.7; `span` 16–28 77.7–78.1 (the same plus one more window in `speed_7578`, the threshold
moving to the next score tier; artificial and AWS a little lower, so 32 stays) and 40–48 74.1–74.6.
River has no histogram-surprise detector to reuse.

>>> s = NoveltyScorer(warmup=50, rest=10)
>>> for i in range(300):
...     s.learn_one({"value": 100.0 + i % 7})
>>> round(s.score_one({"value": 103.0}), 2), round(s.score_one({"value": 400.0}), 2)
(0.26, 0.53)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

from river import base

from detectors import state
from detectors.models import Sample

FORMAT = 2
"""The layout `dump` writes: 2 added the short-window mean's histogram and window, the seasonal
profile and its residuals' histogram, and the noise that widens the value's bins (a format-1 doc,
the value histogram alone, loads with the rest empty: they warm up again)."""


def _finite_or_text(v: float) -> float | str:
    """JSON has no inf: ±inf (a runaway value, or a window holding one) is written as text."""
    return v if math.isfinite(v) else repr(v)


def _number(v: Any) -> float:
    return float(v) if v in ("inf", "-inf") else state.num(v)


class _Histogram:
    """Counts of one feature's values in bins: fixed-width ones set from the warm-up's spread, then
    geometric ones far out. Plain state, scored and learned by `NoveltyScorer`."""

    MAX_BINS_OUT = 1
    GROWTH = 2.0
    MAX_GROWTHS = 64

    def __init__(self, bins: int, warmup: int, alpha: float, smooth: float):
        self.bins, self.warmup, self.alpha, self.smooth = bins, warmup, alpha, smooth
        self.buffer: list[float] | None = []
        self.lo = 0.0
        self.width = 0.0
        self.counts: dict[int, float] = {}
        self.total = 0.0

    @property
    def ready(self) -> bool:
        return self.buffer is None

    def bin(self, value: float) -> int:
        """Linear within MAX_BINS_OUT warm-up ranges either side, then each bin GROWTH times further
        out, MAX_GROWTHS at most (±inf land in the last)."""
        reach = self.MAX_BINS_OUT * self.bins
        z = (value - self.lo) / self.width
        if -reach <= z <= self.bins + reach:
            return math.floor(z)
        out = z / (self.bins + reach) if z > 0 else -z / reach  # > 1
        k = self.MAX_GROWTHS if math.isinf(out) else min(math.floor(math.log(out, self.GROWTH)), self.MAX_GROWTHS)
        return self.bins + reach + 1 + k if z > 0 else -reach - 1 - k

    def _centre(self, b: int) -> float:
        """A value inside bin `b` (its middle, or the geometric middle of a far one)."""
        reach = self.MAX_BINS_OUT * self.bins
        if -reach <= b <= self.bins + reach:
            z = b + 0.5
        elif b > 0:
            z = (self.bins + reach) * self.GROWTH ** (b - self.bins - reach - 1 + 0.5)
        else:
            z = -reach * self.GROWTH ** (-reach - 1 - b + 0.5)
        return self.lo + z * self.width

    def raw(self, value: float) -> float:
        if self.buffer is not None:
            return 0.0
        b, c = self.bin(value), self.counts
        near = c.get(b, 0.0) + self.smooth * (c.get(b - 1, 0.0) + c.get(b + 1, 0.0))
        p = (near + self.alpha) / (self.total * (1.0 + 2.0 * self.smooth) + self.alpha * 2.5 * self.bins)
        x = -math.log(p) / math.log((self.total + 1.0) / self.alpha)
        return x / (1.0 + x)

    def learn(self, value: float) -> None:
        if self.buffer is None:
            self._add(value)
            return
        self.buffer.append(value)
        if len(self.buffer) >= self.warmup:
            self._fit()

    def widen(self, least: float) -> None:
        """Double the bin width until it is at least half of `least`, each old bin's count moving to
        the new bin of its middle (exact for the fixed-width bins: pairs merge)."""
        if self.buffer is not None or not self.width * 2.0 <= least < math.inf:
            return
        while self.width * 2.0 <= least:
            old = [(self._centre(b), n) for b, n in self.counts.items()]
            self.width *= 2.0
            self.counts = {}
            for v, n in old:
                b = self.bin(v)
                self.counts[b] = self.counts.get(b, 0.0) + n

    def _fit(self) -> None:
        """Bin width from the warm-up's spread, then learn the warm-up."""
        xs, self.buffer = sorted(self.buffer or []), None
        lo, hi = xs[int(0.01 * len(xs))], xs[max(int(0.99 * len(xs)) - 1, 0)]
        self.lo = lo
        self.width = max((hi - lo) / self.bins, 1e-3 * max(abs(hi), abs(lo)), 1e-12)
        for v in xs:
            self._add(v)

    def _add(self, value: float) -> None:
        b = self.bin(value)
        self.counts[b] = self.counts.get(b, 0.0) + 1.0
        self.total += 1.0

    def dump(self) -> dict[str, Any]:
        return {"buffer": None if self.buffer is None else [_finite_or_text(v) for v in self.buffer],
                "lo": self.lo, "width": self.width, "total": self.total,
                "counts": [[b, n] for b, n in sorted(self.counts.items())]}

    def load(self, doc: Any) -> None:
        d = state.obj(doc)
        buf = d["buffer"]
        self.buffer = None if buf is None else [_number(v) for v in state.seq(buf)]
        self.lo, self.width, self.total = state.num(d["lo"]), state.num(d["width"]), state.num(d["total"])
        self.counts = {int(b): n for b, n in (state.nums(p, 2) for p in state.seq(d["counts"]))}
        if self.buffer is None and self.width <= 0:
            raise ValueError("a novelty scorer past its warm-up has a positive bin width")


class NoveltyScorer(base.AnomalyDetector):
    """Surprise of a value's bin, of the recent mean's bin, and of the recent mean's departure from
    the same time of day on the last days, under the series' histograms, with one score per incident.

    Parameters: `bins` across the warm-up's 1st–99th percentile; `warmup` values before any score;
    `alpha` pseudo-count per bin; `smooth` weight of the two neighbouring bins; `rest` rows of
    quiet after a score above `fire`; `span` rows in the short-window mean (0: the value alone);
    `days` of time-of-day profile the recent mean is compared with (0: none); `widen` the share of
    the mean absolute change between rows that the value's bins are at least half as wide as
    (0: never widened); `on` the feature of `x` that is the series' value.
    """

    MAX_BINS_OUT = _Histogram.MAX_BINS_OUT
    """Fixed-width bins reach this many warm-up ranges either side; geometric ones follow, so a
    runaway series holds at most 3·bins + 2·65 counts per histogram, however far it goes."""

    BEAT = 0.005
    """How much a score in the rest must beat the highest since to show."""

    SLOT = 300.0
    """Seconds of the day per slot of the time-of-day profile (288 slots); the recent mean is compared
    with the nearest of its slot's and the two neighbouring slots' means on each of the last days."""

    NOISE_RATE = 0.01
    """Weight of each row's change in the running mean absolute change between rows."""

    def __init__(self, bins: int = 20, warmup: int = 400, alpha: float = 0.5, smooth: float = 0.5,
                 rest: int = 100, fire: float = 0.5, span: int = 32, days: int = 3, widen: float = 0.5,
                 on: str = "value"):
        if span < 0 or span == 1:
            raise ValueError(f"span is a window of 2 rows or more, or 0 for none; not {span!r}")
        if days < 0 or widen < 0:
            raise ValueError(f"days and widen are 0 (off) or more; not {days!r}, {widen!r}")
        self.bins, self.warmup, self.alpha, self.smooth = bins, warmup, alpha, smooth
        self.rest, self.fire, self.span, self.days, self.widen, self.on = rest, fire, span, days, widen, on
        self._value = _Histogram(bins, warmup, alpha, smooth)
        self._mean = _Histogram(bins, warmup, alpha, smooth)
        self._season = _Histogram(1, warmup, alpha, smooth)  # one bin per warm-up range: only far departures
        self._recent: deque[float] = deque(maxlen=max(span - 1, 0))  # the rows before this one
        self._profile: dict[int, list[tuple[int, float]]] = {}  # slot -> (day, last recent mean) for days + 1
        self._prev: float | None = None  # the last finite value learned
        self._noise: float | None = None  # running mean absolute change between rows, from the first change
        self._ts = 0.0  # the time of the row being scored or learned
        self._left = 0  # rows of rest still to go
        self._last = 0.0  # the highest score shown since the rest began

    @classmethod
    def max_bins(cls, bins: int) -> int:
        """The most bins one histogram can hold."""
        return (2 * cls.MAX_BINS_OUT + 1) * bins + 2 * (_Histogram.MAX_GROWTHS + 1) + 1

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"warmup": 20, "rest": 5, "span": 4}

    def _unit_test_skips(self) -> set[str]:
        # River's dataset checks feed multi-feature datasets; this scores one named feature.
        return {"check_learn_one", "check_pickling", "check_shuffle_features_no_impact", "check_emerging_features",
                "check_disappearing_features", "check_radically_disappearing_features", "check_predict_one_pure",
                "check_predict_one_before_any_learn", "check_no_state_aliasing_with_input",
                "check_clone_is_independent", "check_roc_auc"}

    def _window_mean(self, value: float) -> float | None:
        """The mean of the last `span` rows, this one included; None until there are that many (or
        when +inf and -inf meet in the window)."""
        if self.span == 0 or len(self._recent) < self.span - 1:
            return None
        m = (sum(self._recent) + value) / self.span
        return None if math.isnan(m) else m

    def _slot(self) -> tuple[int, int]:
        """(slot of the day, day) of the current row."""
        day, into = divmod(self._ts, 86_400.0)
        return int(into // self.SLOT), int(day)

    def _departure(self, recent: float | None) -> float | None:
        """The recent mean minus the closest of its time of day's means on each of the last `days`
        days (slot ± 1), whichever is closest; None without `days` days of profile."""
        if self.days == 0 or recent is None or not math.isfinite(recent) or not math.isfinite(self._ts):
            return None
        slot, today = self._slot()
        n = int(86_400.0 // self.SLOT)
        per_day: dict[int, float] = {}
        for j in (-1, 0, 1):
            for day, m in self._profile.get((slot + j) % n, ()):
                if day < today and (day not in per_day or abs(recent - m) < abs(per_day[day])):
                    per_day[day] = recent - m
        if len(per_day) < self.days:
            return None
        return min((per_day[d] for d in sorted(per_day)[-self.days:]), key=abs)

    def _raw(self, value: float) -> float:
        m = self._window_mean(value)
        d = self._departure(m)
        return max(self._value.raw(value), 0.0 if m is None else self._mean.raw(m),
                   0.0 if d is None else self._season.raw(d))

    def _at(self, x: Sample) -> None:
        ts = x.get("ts", 0.0)
        self._ts = float(ts) if isinstance(ts, (int, float)) else 0.0

    def score_one(self, x: Sample) -> float:
        value = float(x[self.on])
        if math.isnan(value):
            return 0.0  # no value: nothing to judge (and nothing learned)
        self._at(x)
        s = self._raw(value)
        return 0.0 if self._left > 0 and s <= self._last + self.BEAT else s

    def learn_one(self, x: Sample) -> None:
        value = float(x[self.on])
        if math.isnan(value):
            return
        self._at(x)
        if self._value.ready:
            self._step(self._raw(value))
        m = self._window_mean(value)
        d = self._departure(m)
        self._value.learn(value)
        if m is not None:
            self._mean.learn(m)
        if d is not None:
            self._season.learn(d)
        if self.span:
            self._recent.append(value)
        if self.days and m is not None and math.isfinite(m) and math.isfinite(self._ts):
            slot, today = self._slot()
            kept = self._profile.setdefault(slot, [])
            if kept and kept[-1][0] == today:
                kept[-1] = (today, m)
            else:
                kept.append((today, m))
                del kept[:-(self.days + 1)]
        if math.isfinite(value):
            if self._prev is not None:
                change = abs(value - self._prev)  # inf only between values near the float limits: skipped
                if math.isfinite(change):
                    self._noise = change if self._noise is None else \
                        self._noise + self.NOISE_RATE * (change - self._noise)
            self._prev = value
        if self.widen and self._noise is not None:
            self._value.widen(self.widen * self._noise)

    def _step(self, s: float) -> None:
        """The rest after a score above `fire`, restarted by a score that shows in it."""
        if self._left > 0:
            self._left -= 1
            if s <= self._last + self.BEAT:
                return
        self._last = s
        if s > self.fire:
            self._left = self.rest

    def dump(self) -> dict[str, Any]:
        """What was learned; the constructor's parameters are configuration, given again on load.
        The window keeps its non-finite values as text (JSON has no inf)."""
        return {"v": FORMAT, **self._value.dump(), "mean": self._mean.dump(), "season": self._season.dump(),
                "recent": [_finite_or_text(v) for v in self._recent],
                "profile": [[slot, day, m] for slot, kept in sorted(self._profile.items()) for day, m in kept],
                "prev": self._prev, "noise": self._noise, "left": self._left, "last": self._last}

    def load(self, doc: dict[str, Any]) -> None:
        d = state.obj(doc)
        version = d.get("v", 1)
        if version not in (1, FORMAT):
            raise ValueError(f"a novelty scorer state of format {version!r}; this one reads 1 and {FORMAT}")
        value, mean, season = (_Histogram(self.bins, self.warmup, self.alpha, self.smooth),
                               _Histogram(self.bins, self.warmup, self.alpha, self.smooth),
                               _Histogram(1, self.warmup, self.alpha, self.smooth))
        value.load(d)
        recent: deque[float] = deque(maxlen=max(self.span - 1, 0))
        profile: dict[int, list[tuple[int, float]]] = {}
        prev: float | None = None
        noise: float | None = None
        if version == FORMAT:
            mean.load(d["mean"])
            season.load(d["season"])
            for v in state.seq(d["recent"]):
                recent.append(_number(v))
            for entry in state.seq(d["profile"]):
                slot, day, m = state.seq(entry, 3)
                profile.setdefault(state.count(slot), []).append((state.integer(day), state.num(m)))
            prev, noise = state.opt_num(d["prev"]), state.opt_num(d["noise"])
        left, last = state.count(d["left"]), state.num(d["last"])
        self._value, self._mean, self._season, self._recent = value, mean, season, recent
        self._profile, self._prev, self._noise, self._left, self._last = profile, prev, noise, left, last
