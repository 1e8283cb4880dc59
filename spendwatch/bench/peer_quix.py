"""The quix-streams peer: what a user would write by hand with another Python stream library.

It only prices each event from a cached per-model rate and sums spend per
workflow in 1-minute tumbling windows (event time) — no dedup, budgets or
detectors, far less than the spendwatch worker does. It runs only where the
optional `bench` extra (quixstreams) is installed.

    python -m spendwatch.bench.peer_quix 127.0.0.1:9092 STATE_DIR

Progress (and, for the bench's exactness check, the calls and tokens it saw per
workflow) is written by a thread every 50 ms to `SPENDWATCH_PROGRESS_FILE`,
since a file write per event would cost more than the pipeline itself.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson


def available() -> bool:
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        return False
    return True


class _Progress:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.events = 0
        self.first = self.last = 0.0
        self.totals: dict[str, list[int]] = {}

    def see(self, ev: dict[str, Any]) -> None:
        now = time.perf_counter()
        if not self.first:
            self.first = now
        self.last = now
        self.events += 1
        t = self.totals.get(ev["workflow"])
        if t is None:
            t = self.totals[ev["workflow"]] = [0, 0, 0]
        t[0] += 1
        t[1] += ev["input_tokens"]
        t[2] += ev["output_tokens"]

    def write_forever(self) -> None:
        while self.path is not None:
            time.sleep(0.05)
            if not self.events:
                continue
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps({"events": self.events, "first": self.first, "first_events": 1,
                                          "last": self.last, "pid": os.getpid(), "totals": dict(self.totals)}))
            tmp.replace(self.path)


def build(broker: str, state_dir: str, progress: _Progress, topic_name: str = "spendwatch.usage") -> Any:
    from quixstreams import Application

    from detectors.pricing.prices import PriceBook

    book = PriceBook()
    rates: dict[tuple[str | None, str], Any] = {}

    def price(ev: dict[str, Any]) -> dict[str, Any]:
        key = (ev.get("provider"), ev["model"])
        rate = rates.get(key)
        if rate is None:
            rate = rates[key] = book.rate(ev["model"], key[0])
        progress.see(ev)
        return {"micros": rate.cost_micros(ev["input_tokens"], ev["output_tokens"], ev.get("cache_read_tokens", 0)),
                "calls": 1}

    app = Application(broker_address=broker, consumer_group="spendwatch-peer", auto_offset_reset="earliest",
                      consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1500},
                      state_dir=state_dir, loglevel=os.environ.get("SPENDWATCH_PEER_LOGLEVEL", "WARNING"))
    topic = app.topic(topic_name, value_deserializer="json")
    # Tansu's DescribeConfigs leaves retention.ms out, which quix needs to derive the window's changelog
    topic.broker_config.extra_config.setdefault("retention.ms", "-1")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda v: v if isinstance(v, list) else [v], expand=True)
    sdf = sdf.set_timestamp(lambda v, key, ts, headers: int(v["ts"] * 1000))
    sdf = sdf.apply(price)
    sdf = sdf.tumbling_window(timedelta(minutes=1)).reduce(
        reducer=lambda agg, v: {"micros": agg["micros"] + v["micros"], "calls": agg["calls"] + v["calls"]},
        initializer=lambda v: v).final()
    return app


def main() -> None:
    progress = _Progress(os.environ.get("SPENDWATCH_PROGRESS_FILE"))
    threading.Thread(target=progress.write_forever, daemon=True).start()
    build(sys.argv[1], sys.argv[2], progress).run()


if __name__ == "__main__":
    main()
