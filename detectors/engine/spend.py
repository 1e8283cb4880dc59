"""Spend of a workflow (`EntitySpend`), and of a team, model or agent within it (`EntityCost`)."""

from __future__ import annotations

from typing import Any

from detectors.engine.counters import COST, RollingWindow, add_into, widened, zero

WINDOWS: dict[str, tuple[float, int]] = {"1m": (60.0, 12), "1h": (3600.0, 12), "24h": (86400.0, 24)}
"""Rolling windows of a workflow: name -> (span seconds, buckets)."""
HOUR = WINDOWS["1h"]
EXTRA_BUCKETS = 12
"""Buckets of a window a workflow keeps beyond `WINDOWS` (a burn-rate window of its budget)."""


def window_name(span: float) -> str:
    """The window of `span` seconds: the standard one of that span, else `<span>s`.

    >>> window_name(3600), window_name(300)
    ('1h', '300s')
    """
    for name, (s, _) in WINDOWS.items():
        if s == span:
            return name
    return f"{span:g}s"


def _geometry(name: str) -> tuple[float, int]:
    return WINDOWS.get(name) or (float(name[:-1]), EXTRA_BUCKETS)


class EntitySpend:
    """A workflow's rolling spend windows (1 min / 1 h / 24 h, and those `track` adds) and day and
    month counter vectors."""

    __slots__ = ("windows", "periods")

    def __init__(self) -> None:
        self.windows = {name: RollingWindow(span, n) for name, (span, n) in WINDOWS.items()}
        self.periods: dict[str, list[int]] = {}

    def add(self, ts: float, period_keys: tuple[str, str], vec: list[int]) -> None:
        for w in self.windows.values():
            w.add(ts, vec[COST])
        for key in period_keys:
            cur = self.periods.get(key)
            if cur is None:
                self.periods[key] = list(vec)
            else:
                add_into(cur, vec)

    def track(self, names: frozenset[str]) -> None:
        """Keep the windows `names` (`window_name`) besides the standard ones, and no other: a
        budget's burn-rate windows exist only where a budget needs them, and stop costing when the
        config no longer asks for them."""
        windows = self.windows
        for name in names:
            if name not in windows:
                windows[name] = RollingWindow(*_geometry(name))
        for name in [n for n in windows if n not in WINDOWS and n not in names]:
            del windows[name]

    def window(self, name: str, now: float) -> int:
        """Micro-USD spent in the window `name` ending at `now`."""
        return self.windows[name].total(now)

    def rate(self, name: str, now: float) -> float:
        """Micro-USD per second in the window `name` ending at `now` (`RollingWindow.rate`)."""
        return self.windows[name].rate(now)

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
        """A copy: an undo point taken from it must not move with the live totals."""
        return {
            "w": {name: w.dump() for name, w in self.windows.items()},
            "p": {k: list(v) for k, v in self.periods.items()},
        }

    @classmethod
    def load(cls, doc: dict[str, Any]) -> EntitySpend:
        spend = cls()
        spend.windows = {name: RollingWindow.load(*_geometry(name), doc["w"].get(name, {}))
                         for name in {**WINDOWS, **doc["w"]}}
        spend.periods = {k: widened(v) for k, v in doc["p"].items()}
        return spend


class EntityCost:
    """Cost of a team, model or agent within a workflow: the last hour, and day and month totals.

    Alerts only rank these by cost (who burns now, who burned today), and every
    event updates three of them, so they keep micro-USD alone and one window:
    a third of an `EntitySpend`'s memory.
    """

    __slots__ = ("hour", "periods")

    def __init__(self, hour: RollingWindow | None = None, periods: dict[str, int] | None = None) -> None:
        self.hour = hour or RollingWindow(*HOUR)
        self.periods: dict[str, int] = periods if periods is not None else {}

    def add(self, ts: float, period_keys: tuple[str, str], micros: int) -> None:
        self.hour.add(ts, micros)
        periods = self.periods
        for key in period_keys:
            periods[key] = periods.get(key, 0) + micros

    def last_hour(self, now: float) -> int:
        return self.hour.total(now)

    def period(self, key: str) -> int:
        return self.periods.get(key, 0)

    def prune(self, now: float, keep_periods: set[str]) -> None:
        self.hour.prune(now)
        for key in [k for k in self.periods if k not in keep_periods]:
            del self.periods[key]

    @property
    def empty(self) -> bool:
        return not self.periods and not self.hour.data

    def dump(self) -> dict[str, Any]:
        """A copy, as `EntitySpend.dump`."""
        return {"h": self.hour.dump(), "p": dict(self.periods)}

    @classmethod
    def load(cls, doc: dict[str, Any]) -> EntityCost:
        return cls(RollingWindow.load(*HOUR, doc["h"]), doc["p"])
