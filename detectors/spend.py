"""Spend of one entity (a workflow, or a team, model or agent within it)."""

from __future__ import annotations

from typing import Any

from detectors.counters import COST, RollingWindow, add_into, zero

Windows = dict[str, tuple[float, int]]
WINDOWS: Windows = {"1m": (60.0, 12), "1h": (3600.0, 12), "24h": (86400.0, 24)}
"""Rolling windows of a workflow: name -> (span seconds, buckets)."""
ENTITY_WINDOWS: Windows = {"1h": (3600.0, 12)}
"""Rolling windows of a team, model or agent within a workflow: who burns *now* (alert evidence).
Fewer than the workflow's, because every event updates three entities."""


class EntitySpend:
    """Rolling windows (by default 1 min / 1 h / 24 h) plus day and month period totals."""

    __slots__ = ("windows", "periods", "last_ts")

    def __init__(self, windows: Windows = WINDOWS) -> None:
        self.windows = {name: RollingWindow(span, n) for name, (span, n) in windows.items()}
        self.periods: dict[str, list[int]] = {}
        self.last_ts = 0.0

    def add(self, ts: float, period_keys: tuple[str, str], vec: list[int]) -> None:
        for w in self.windows.values():
            w.add(ts, vec[COST])
        for key in period_keys:
            cur = self.periods.get(key)
            if cur is None:
                self.periods[key] = list(vec)
            else:
                add_into(cur, vec)
        if ts > self.last_ts:
            self.last_ts = ts

    def window(self, name: str, now: float) -> int:
        """Micro-USD spent in the window `name` ending at `now`."""
        return self.windows[name].total(now)

    def period(self, key: str) -> list[int]:
        return self.periods.get(key) or zero()

    def prune(self, now: float, keep_periods: set[str]) -> None:
        for w in self.windows.values():
            w.prune(now)
        for key in [k for k in self.periods if k not in keep_periods]:
            del self.periods[key]

    @property
    def empty(self) -> bool:
        return not self.periods and not any(w.data for w in self.windows.values())

    def dump(self) -> dict[str, Any]:
        return {
            "w": {name: w.dump() for name, w in self.windows.items()},
            "p": self.periods,
            "t": self.last_ts,
        }

    @classmethod
    def load(cls, doc: dict[str, Any], windows: Windows = WINDOWS) -> EntitySpend:
        spend = cls({})
        spend.windows = {
            name: RollingWindow.load(span, n, doc["w"].get(name, {})) for name, (span, n) in windows.items()
        }
        spend.periods = doc["p"]
        spend.last_ts = doc["t"]
        return spend
