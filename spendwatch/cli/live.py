"""`spendwatch replay live`: recorded traffic into Kafka, keeping its rhythm (or as fast as possible).

Timestamps are rewritten to now (relative spacing kept, divided by `speed`)
and event ids get a per-run prefix, so a replay can be run again without the
worker deduplicating it away.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable

from schemas.structs import Event, to_wire
from spendwatch.emitter import UsageEmitter
from streams.kafka_security import KafkaSecurity


async def replay_live(events: Iterable[Event], broker: str, topic: str, speed: float | None,
                      progress: Callable[[int], None] | None = None,
                      security: KafkaSecurity | None = None) -> dict[str, float]:
    """Publish `events`; `speed` None means as fast as the producer goes. Returns rate statistics.
    `security` None: the SPENDWATCH_KAFKA_* variables (none set: plaintext)."""
    emitter = UsageEmitter(broker, topic, max_buffer=1_000_000, security=security)
    await emitter.start()
    run = uuid.uuid4().hex[:8]
    t0 = time.time()
    first: float | None = None
    sent = 0
    try:
        for ev in events:
            if first is None:
                first = ev.ts
            offset = (ev.ts - first) / speed if speed else 0.0
            if speed:
                delay = t0 + offset - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif len(emitter.buffer) > 200_000:
                await asyncio.sleep(0.01)  # let the sender drain
            ts = t0 + offset if speed else time.time()
            emitter.emit({**to_wire(ev), "ts": ts, "event_id": f"{run}:{ev.event_id}"})
            sent += 1
            if progress and sent % 1000 == 0:
                progress(1000)
        if progress:
            progress(sent % 1000)
        await emitter.flush(timeout=120)
    finally:
        await emitter.stop()
    elapsed = max(time.time() - t0, 1e-9)
    return {"events": sent, "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed),
            "dropped": emitter.dropped}
