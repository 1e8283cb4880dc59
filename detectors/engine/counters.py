"""Spend counters: a fixed vector of integers, and event-time rolling windows of them.

A counter vector is a plain list `[cost_micros, input, output, cached, calls, errors,
cache_write, reasoning]`: cheap to add, exact, and JSON-friendly for the table changelog. Vectors
stored before the last two existed are shorter: `widened` pads them.
"""

from __future__ import annotations

COST, INPUT, OUTPUT, CACHED, CALLS, ERRORS, CACHE_WRITE, REASONING = range(8)
FIELDS = ("cost_micros", "input_tokens", "output_tokens", "cached_tokens", "calls", "errors",
          "cache_write_tokens", "reasoning_tokens")
WIDTH = len(FIELDS)


def zero() -> list[int]:
    return [0] * WIDTH


def widened(vec: list[int]) -> list[int]:
    """`vec` at today's width (a stored vector may predate the cache-write and reasoning counts: 0).

    >>> widened([5, 100, 20, 0, 1, 0])
    [5, 100, 20, 0, 1, 0, 0, 0]
    """
    return vec + [0] * (WIDTH - len(vec)) if len(vec) < WIDTH else vec


def add_into(acc: list[int], vec: list[int]) -> None:
    # Unrolled: this runs several times per event group, and a loop costs twice as much.
    acc[0] += vec[0]
    acc[1] += vec[1]
    acc[2] += vec[2]
    acc[3] += vec[3]
    acc[4] += vec[4]
    acc[5] += vec[5]
    acc[6] += vec[6]
    acc[7] += vec[7]


class RollingWindow:
    """Spend (micro-USD) over the last `span` seconds of event time.

    Kept as `buckets` sparse buckets of `span / buckets` seconds each (a sliding
    window to one bucket's precision), so memory per entity is bounded. Only
    spend is kept: burn rates are what windows answer; token and call totals
    live in the period vectors.

    >>> w = RollingWindow(span=60, buckets=12)
    >>> w.add(1000.0, 5); w.add(1059.0, 7)
    >>> w.total(1059.0), w.total(1110.0)
    (12, 7)
    """

    __slots__ = ("width", "buckets", "data")

    def __init__(self, span: float, buckets: int = 12, data: dict[int, int] | None = None):
        self.width = span / buckets
        self.buckets = buckets
        self.data: dict[int, int] = data if data is not None else {}

    def add(self, ts: float, micros: int) -> None:
        idx = int(ts // self.width)
        self.data[idx] = self.data.get(idx, 0) + micros

    def total(self, now: float) -> int:
        lo = int(now // self.width) - self.buckets
        return sum(v for idx, v in self.data.items() if idx > lo)

    def rate(self, now: float) -> float:
        """Micro-USD per second over the part of the window `total` sums: the current bucket so
        far and the `buckets - 1` before it, so a rate is exact, not short by a partial bucket.

        >>> w = RollingWindow(span=60, buckets=12)
        >>> w.add(1000.0, 60); w.rate(1002.5)  # 55 s of full buckets + 2.5 s of the current one
        1.0434782608695652
        """
        cur = int(now // self.width)
        return self.total(now) / ((self.buckets - 1) * self.width + (now - cur * self.width))

    def prune(self, now: float) -> None:
        lo = int(now // self.width) - self.buckets
        for idx in [i for i in self.data if i <= lo]:
            del self.data[idx]

    def dump(self) -> dict[str, int]:
        return {str(k): v for k, v in self.data.items()}

    @classmethod
    def load(cls, span: float, buckets: int, data: dict[str, int]) -> RollingWindow:
        return cls(span, buckets, {int(k): v for k, v in data.items()})
