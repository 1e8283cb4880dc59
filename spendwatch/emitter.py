"""`UsageEmitter`: publish usage events from a service without ever hurting its LLM calls.

`emit()` is synchronous and O(1): it appends to a bounded buffer. A background
task sends JSON arrays (one Kafka record per workflow per flush, keyed by
workflow). When Kafka is down the buffer fills, then new events are dropped
and counted in `dropped`: the caller's request path is never blocked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger("spendwatch.emitter")


def bootstrap_of(broker: str) -> str:
    """`kafka://host:port[,host:port]` or `host:port` → aiokafka's bootstrap string."""
    return ",".join(part.split("://", 1)[-1] for part in broker.split(","))


class UsageEmitter:
    """
    >>> async def handler(emitter):                                 # doctest: +SKIP
    ...     emitter.emit(usage_from_openai(resp, workflow="support-bot"))
    """

    def __init__(self, broker: str, topic: str = "spendwatch.usage", *, max_buffer: int = 100_000,
                 max_batch: int = 500, linger: float = 0.05, **producer_kwargs: Any):
        self.topic = topic
        self.max_batch = max_batch
        self.linger = linger
        self.buffer: deque[dict[str, Any]] = deque()
        self.max_buffer = max_buffer
        self.dropped = 0
        self.sent = 0
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap_of(broker), linger_ms=5,
                                          request_timeout_ms=10_000, **producer_kwargs)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._started = False
        self._inflight = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def emit(self, event: dict[str, Any]) -> bool:
        """Queue one event; False (and counted in `dropped`) if the buffer is full."""
        if len(self.buffer) >= self.max_buffer:
            self.dropped += 1
            return False
        self.buffer.append(event)
        if len(self.buffer) >= self.max_batch:
            self._wake.set()
        return True

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything buffered has been sent (or `timeout`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.buffer or self._inflight) and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._started:
            await self._producer.flush()

    async def stop(self) -> None:
        await self.flush(timeout=10.0)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._producer.stop()  # also closes a producer that never reached Kafka

    async def _run(self) -> None:
        while True:
            if not self._started:
                try:
                    await self._producer.start()
                    self._started = True
                except KafkaError as err:
                    log.warning("spendwatch emitter cannot reach Kafka (%s); buffering (%d queued, %d dropped)",
                                err, len(self.buffer), self.dropped)
                    await asyncio.sleep(2.0)
                    continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.linger)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self._send_some()

    async def _send_some(self) -> None:
        take = min(len(self.buffer), self.max_batch * 20)
        if not take:
            return
        batch = [self.buffer.popleft() for _ in range(take)]
        self._inflight = take
        by_workflow: dict[str, list[dict[str, Any]]] = {}
        for ev in batch:
            by_workflow.setdefault(str(ev.get("workflow", "")), []).append(ev)
        try:
            futures = []
            for wf, events in by_workflow.items():
                for i in range(0, len(events), self.max_batch):
                    futures.append(await self._producer.send(
                        self.topic, orjson.dumps(events[i:i + self.max_batch]), key=wf.encode()))
            await asyncio.gather(*futures)
            self.sent += take
        except KafkaError as err:
            log.warning("spendwatch emitter send failed (%s); will retry %d events", err, take)
            self.buffer.extendleft(reversed(batch))
            await asyncio.sleep(1.0)
        finally:
            self._inflight = 0
