"""Live event time for a worker's timers."""

from __future__ import annotations

import time
from collections.abc import Callable


class EventClock:
    """The highest event time seen, moved on by a monotonic clock since.

    Lets zombie and idle-run timeouts fire when traffic stops, while a worker fed
    historical data (a replay into Kafka) still ticks in that data's time. `wall`
    is injected so a test decides when time passes.

    >>> wall = [100.0]
    >>> clock = EventClock(wall=lambda: wall[0])
    >>> clock.now()  # no event yet: no time
    0.0
    >>> clock.advance(1_000.0); wall[0] += 5; clock.now()
    1005.0
    >>> clock.advance(900.0); clock.now()  # an older event does not move it back
    1005.0
    """

    def __init__(self, wall: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.watermark = 0.0
        self.wall_at = wall()

    def advance(self, ts: float) -> None:
        if ts > self.watermark:
            self.watermark = ts
            self.wall_at = self.wall()

    def now(self) -> float:
        return self.watermark + (self.wall() - self.wall_at) if self.watermark else 0.0
