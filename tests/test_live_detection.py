"""Detectors run live in the worker: a loop reaches the alerts topic within seconds."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detectors.loops import REPEAT_OK
from tests.conftest import start_worker


def call(run: str, step: int, fp: str, status: str = "ok") -> bytes:
    return orjson.dumps({"type": "usage", "event_id": uuid.uuid4().hex, "ts": time.time(), "workflow": "coder",
                         "team": "eng", "model": "gpt-4o", "agent_id": "coder-1", "run_id": run, "step": step,
                         "input_tokens": 4000 + 700 * step, "output_tokens": 300, "fingerprint": fp,
                         "status": status})


async def alerts_from_now(bootstrap: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    tps = [TopicPartition("spendwatch.alerts", p) for p in range(4)]  # created with 4 partitions below
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def first_loop_alert(consumer: AIOKafkaConsumer, run: str, timeout: float) -> float:
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                for m in msgs:
                    a = orjson.loads(m.value)
                    if a["kind"] == "loop" and a["run_id"] == run:
                        return time.monotonic()
        raise AssertionError(f"no loop alert for {run} within {timeout}s")
    finally:
        await consumer.stop()


async def loop_latency(bootstrap: str, run: str) -> float:
    """Publish a run that starts repeating; seconds from the evident step to the alert."""
    waiter = asyncio.create_task(first_loop_alert(await alerts_from_now(bootstrap), run, 30))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for step, fp in enumerate(["ls", "cat a.py", "edit a.py"], 1):
            await producer.send_and_wait("spendwatch.usage", call(run, step, fp), key=b"coder")
        for step in range(4, 4 + REPEAT_OK):  # the REPEAT_OK-th identical action in a row makes the loop evident
            await producer.send_and_wait("spendwatch.usage", call(run, step, "pytest -x"), key=b"coder")
            evident = time.monotonic()
            await asyncio.sleep(0.3)
        return await waiter - evident
    finally:
        await producer.stop()


def test_loop_alert_reaches_the_alerts_topic_within_5_seconds(broker, spawn):
    start_worker(spawn, broker)
    latency = asyncio.run(loop_latency(broker.bootstrap, "run-looping"))
    print(f"event-to-alert latency of an evident loop: {latency:.2f}s")
    assert latency <= 5.0, f"loop alert took {latency:.1f}s"
