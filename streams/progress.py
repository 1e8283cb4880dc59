"""Optional progress file for benchmarks: how many events a worker has processed, and when.

Set `SPENDWATCH_PROGRESS_FILE`; the worker rewrites it (JSON) after each batch:
events so far, and the time and size of the first batch and the time of the last.
Lag from the broker is not used because Tansu reports batch end offsets wrongly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson


class ProgressFile:
    def __init__(self, path: str | None = os.environ.get("SPENDWATCH_PROGRESS_FILE")):
        self.path = Path(path) if path else None
        self.events = self.first_events = 0
        self.first = self.last = 0.0

    def add(self, events: int) -> None:
        if self.path is None or not events:
            return
        now = time.perf_counter()
        if not self.first:
            self.first, self.first_events = now, events
        self.last = now
        self.events += events
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"events": self.events, "first": self.first, "first_events": self.first_events,
                                      "last": self.last, "pid": os.getpid()}))
        tmp.replace(self.path)
