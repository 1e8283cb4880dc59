"""Virtual time: drive the same `Monitor` as the worker over recorded events, deterministically.

Events are fed in ts order in batches of one tick interval of event time; the
detectors tick every `tick` seconds of event time and for `flush` seconds past
the last event, so timeouts (zombies, idle runs) fire as they would live. A
longer gap between events is jumped over: its cost is bounded by `flush`, not
by how long the gap is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from typing import Any

from detectors.engine.monitor import Event, Monitor
from schemas.alerts import Alert
from schemas.decode import validate_event
from schemas.structs import Usage

TICK = 10.0
FLUSH = 900.0


@dataclass
class Replayed:
    alerts: list[Alert] = field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    late: int = 0
    poisoned: list[dict[str, Any]] = field(default_factory=list)
    """Workflow slices whose processing raised: not applied; what the worker would dead-letter."""
    first_ts: float | None = None
    last_ts: float | None = None
    spend: dict[str, dict[int, int]] = field(default_factory=dict)  # workflow -> tick start -> micro-USD
    watched: dict[tuple[str, str], list[tuple[float, int, int]]] = field(default_factory=dict)
    """(subject field, id) -> [(ts, micro-USD, tokens)] for labelled subjects (savings of an early kill)."""


def run(
    events: Iterable[dict[str, Any] | Event],
    monitor: Monitor | None = None,
    *,
    tick: float = TICK,
    flush: float = FLUSH,
    watch: Set[tuple[str, str]] = frozenset(),
    progress: Callable[[int], None] | None = None,
) -> Replayed:
    """Replay `events` (wire dicts, or readers' validated events, ts-ordered) and collect every alert."""
    monitor = monitor or Monitor()
    out = Replayed()
    batch: list[Event] = []
    next_tick: float | None = None

    def flush_batch(at: float) -> None:
        res = monitor.process(batch)
        out.alerts.extend(res.alerts)
        out.alerts.extend(monitor.merge_snapshots(res.snapshots))
        out.duplicates += res.duplicates
        out.late += len(res.late)
        out.poisoned.extend({"workflow": bad.workflow, "events": len(bad.events), "first_ts": bad.events[0].ts,
                             "first_event_id": bad.events[0].event_id, "reason": bad.reason} for bad in res.poisoned)
        bucket = int(at - tick)
        for wf, micros in res.cost.items():
            series = out.spend.setdefault(wf, {})
            series[bucket] = series.get(bucket, 0) + micros
        if progress:
            progress(len(batch))
        batch.clear()

    for doc in events:
        ev = validate_event(doc) if isinstance(doc, dict) else doc
        if next_tick is None:
            next_tick = ev.ts - ev.ts % tick + tick
            out.first_ts = ev.ts
        if ev.ts >= next_tick:
            flush_batch(next_tick)
            quiet_until = (out.last_ts or ev.ts) + flush  # past this, nothing is left to time out
            while ev.ts >= next_tick:
                out.alerts.extend(monitor.tick(next_tick))
                next_tick += tick
                if next_tick > quiet_until:  # a gap of days costs `flush / tick` ticks, not days of them
                    next_tick = max(next_tick, ev.ts - ev.ts % tick)
        batch.append(ev)
        out.events += 1
        out.last_ts = ev.ts
        if watch and isinstance(ev, Usage):
            for subject, value in (("run_id", ev.run_id), ("agent_id", ev.agent_id), ("workflow", ev.workflow)):
                if value is not None and (key := (subject, value)) in watch:  # a label's id is never None
                    out.watched.setdefault(key, []).append(
                        (ev.ts, monitor.prices.price(ev).micros, ev.input_tokens + ev.output_tokens))
    if next_tick is not None:
        flush_batch(next_tick)
        end = (out.last_ts or next_tick) + flush
        while next_tick <= end:
            out.alerts.extend(monitor.tick(next_tick))
            next_tick += tick
    return out
