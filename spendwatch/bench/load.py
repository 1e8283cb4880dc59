"""Benchmark traffic with known totals, and Kafka helpers to publish it and watch a group's lag."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from detectors.loops import REPEAT_OK

MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
          ("google", "gemini-2.5-flash")]


@dataclass
class Load:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    events: int = 0
    truth: dict[str, list[int]] = field(default_factory=dict)  # workflow -> [calls, input, output]


def make_load(events: int, per_record: int, workflows: int = 200, seed: int = 1, t0: float | None = None,
              spacing: float = 0.002) -> Load:
    """Realistic agent traffic: many workflows, runs of 40 steps, varied models and token sizes.
    Calls are `spacing` seconds apart in event time, from `t0` (by default, so the last one is now).

    A workflow's calls are numbered on their own, so its runs have 40 steps whether a record holds
    one call or many (numbered across all workflows, single-call records made nearly every call a
    run of its own). Traffic published live must have the spacing of its rate: at 0.002 s, 27k
    calls/s ran 600 s ahead of the wall clock within 11 s, and the worker dead-lettered the rest as
    too far ahead (the latency run then counted the loops injected after that as missed)."""
    rng = random.Random(seed)
    t0 = t0 if t0 is not None else time.time() - events * spacing
    load = Load()
    calls: dict[str, int] = {}  # workflow -> its calls so far
    i = 0
    while i < events:
        wf = f"wf-{rng.randrange(workflows)}"
        n = min(per_record, events - i)
        batch = []
        for _ in range(n):
            k = calls[wf] = calls.get(wf, -1) + 1
            provider, model = MODELS[rng.randrange(4)]
            inp, out = rng.randrange(500, 30_000), rng.randrange(20, 1_500)
            batch.append({"type": "usage", "event_id": f"b{seed}-{i}", "ts": t0 + i * spacing, "workflow": wf,
                          "team": f"team-{zlib.crc32(wf.encode()) % 9}", "provider": provider, "model": model,
                          "input_tokens": inp, "output_tokens": out, "cache_read_tokens": inp // 3,
                          "agent_id": f"{wf}-a{k % 4}", "run_id": f"{wf}-r{k // 40}", "step": k % 40,
                          "fingerprint": f"act-{rng.randrange(60)}"})
            t = load.truth.setdefault(wf, [0, 0, 0])
            t[0] += 1
            t[1] += inp
            t[2] += out
            i += 1
        value = orjson.dumps(batch if per_record > 1 else batch[0])
        load.records.append((wf.encode(), value))
    load.events = events
    return load


async def publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Publish as fast as one producer goes; returns seconds taken."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=1_000_000,
                                max_request_size=8_000_000)
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = [await producer.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


def loop_run(run: str, now: float) -> list[dict[str, Any]]:
    """REPEAT_OK identical successful actions in a row: the loop detector's evident case."""
    return [{"type": "usage", "event_id": f"{run}-{s}", "ts": now, "workflow": "bench-loops", "model": "gpt-4o",
             "run_id": run, "agent_id": "looper", "step": s, "input_tokens": 4000 + 500 * s, "output_tokens": 200,
             "fingerprint": "pytest -x"} for s in range(1, REPEAT_OK + 1)]
