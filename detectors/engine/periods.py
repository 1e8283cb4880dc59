"""Budget periods (day, month) in a configured timezone, in event time."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class PeriodClock:
    """Maps event timestamps to day and month keys (`2026-11-23`, `2026-11`).

    Converting a timestamp to a local date costs ~1 µs; the current day's bounds
    are cached so the common case is two float comparisons.

    >>> clock = PeriodClock("America/New_York")
    >>> clock.keys(1764565200.0)  # 2025-12-01 05:00 UTC is midnight in New York
    ('2025-12-01', '2025-12')
    >>> clock.keys(1764565199.0)
    ('2025-11-30', '2025-11')
    """

    def __init__(self, timezone: str = "UTC"):
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {timezone!r} (use an IANA name like 'Europe/Paris' or 'UTC')") from None
        self._lo = self._hi = 0.0
        self._keys = ("", "")
        self._bounds: dict[str, tuple[float, float]] = {}

    def keys(self, ts: float) -> tuple[str, str]:
        if not self._lo <= ts < self._hi:
            self.span(ts)
        return self._keys

    def span(self, ts: float) -> tuple[tuple[str, str], float, float]:
        """The keys of `ts` and the bounds [lo, hi) of its day: a caller looping over events
        keeps them and asks again only for a `ts` outside, without a call per event."""
        if not self._lo <= ts < self._hi:
            local = datetime.fromtimestamp(ts, self.tz)
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            end = (start + timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe next midnight
            self._lo, self._hi = start.timestamp(), end.timestamp()
            self._keys = (start.strftime("%Y-%m-%d"), start.strftime("%Y-%m"))
        return self._keys, self._lo, self._hi

    @staticmethod
    def day_before(key: str) -> str:
        """The day key before day `key`; calendar arithmetic, so the cached current day stays.

        >>> PeriodClock.day_before("2026-03-01")
        '2026-02-28'
        """
        return (date.fromisoformat(key) - timedelta(days=1)).isoformat()

    def bounds(self, key: str) -> tuple[float, float]:
        """Start and end (epoch seconds) of a day (`YYYY-MM-DD`) or month (`YYYY-MM`) key (cached:
        burn-rate checks ask for the current ones every batch)."""
        got = self._bounds.get(key)
        if got is None:
            if len(self._bounds) >= 64:
                self._bounds.clear()
            got = self._bounds[key] = self._compute_bounds(key)
        return got

    def _compute_bounds(self, key: str) -> tuple[float, float]:
        if len(key) == 10:
            start = datetime.strptime(key, "%Y-%m-%d").replace(tzinfo=self.tz)
            end = (start + timedelta(days=1, hours=2)).replace(hour=0)
        else:
            start = datetime.strptime(key, "%Y-%m").replace(tzinfo=self.tz)
            end = (start + timedelta(days=32)).replace(day=1)
        return start.timestamp(), end.timestamp()
