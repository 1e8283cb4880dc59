"""Kafka → read model: the snapshots, alerts and control topics, every partition, from the start.

No consumer group (every dashboard reads everything; nothing to commit), so any number of
dashboards can run. Topics that do not exist yet (no worker has started) are picked up
when they appear; a broker that goes away is waited for, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.dashboard.model import ReadModel
from streams.kafka_security import KafkaSecurity

log = logging.getLogger("spendwatch.dashboard")


@dataclass(frozen=True)
class FeedTopics:
    snapshots: str = "spendwatch.snapshots"
    alerts: str = "spendwatch.alerts"
    control: str = "spendwatch.control"


class Feed:
    """Follows the three topics into `model`; `caught_up` is set once everything that was there at
    the start (or at a topic's appearance) has been read."""

    def __init__(self, model: ReadModel, bootstrap: str, topics: FeedTopics = FeedTopics(),
                 poll_s: float = 0.5, rediscover_s: float = 5.0, security: KafkaSecurity | None = None):
        self.model = model
        self.security = security if security is not None else KafkaSecurity.from_env()
        """SASL/TLS settings; by default the SPENDWATCH_KAFKA_* variables (none set: plaintext)."""
        self._security_kwargs = self.security.aiokafka_kwargs()
        self.bootstrap = bootstrap
        self.topics = topics
        self.poll_s, self.rediscover_s = poll_s, rediscover_s
        self.caught_up = asyncio.Event()
        self.apply: dict[str, Callable[[bytes | None], bool]] = {
            topics.snapshots: model.apply_snapshot, topics.alerts: model.apply_alert,
            topics.control: model.apply_command}
        self.records = 0

    async def run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                        auto_offset_reset="earliest", request_timeout_ms=10_000,
                                        max_partition_fetch_bytes=8 * 1024 * 1024, **self._security_kwargs)
            try:
                await consumer.start()
                await self._follow(consumer)
            except (KafkaError, TimeoutError, OSError) as err:
                log.warning("dashboard feed: Kafka at %s unavailable (%r); retrying", self.bootstrap, err)
            finally:
                await consumer.stop()
            await asyncio.sleep(self.rediscover_s)

    async def _discover(self, consumer: AIOKafkaConsumer, have: set[TopicPartition]) -> set[TopicPartition]:
        # All topics' metadata: a request naming a topic that does not exist yet could auto-create it
        # (uncompacted, default partitions) before the worker declares it; and the consumer's own
        # metadata follows only the topics it is assigned, so it would never see one appear.
        cluster = await asyncio.wait_for(consumer._client.fetch_all_metadata(), 10)
        tps = {TopicPartition(t, p) for t in self.apply for p in cluster.partitions_for_topic(t) or ()}
        if tps != have:
            consumer.assign(sorted(tps))
            new = sorted(tps - have)
            if new:
                await consumer.seek_to_beginning(*new)
        return tps

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        tps: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        discovered_at = -1e9
        end: dict[TopicPartition, int] = {}
        while True:
            if loop.time() - discovered_at >= self.rediscover_s:
                tps = await self._discover(consumer, tps)
                discovered_at = loop.time()
                if not self.caught_up.is_set() and tps:
                    end = await asyncio.wait_for(consumer.end_offsets(list(tps)), 10)
            if not tps:
                self.caught_up.set()  # nothing to read yet: an empty dashboard is up to date
                await asyncio.sleep(self.poll_s)
                continue
            batch = await consumer.getmany(timeout_ms=int(self.poll_s * 1000), max_records=20_000)
            for tp, records in batch.items():
                apply = self.apply[tp.topic]
                for rec in records:
                    apply(rec.value)  # validates and counts; never raises on bad input
                self.records += len(records)
            if not self.caught_up.is_set():
                positions = {tp: await consumer.position(tp) for tp in end}
                if all(positions[tp] >= end[tp] for tp in end):
                    self.caught_up.set()
                    log.info("dashboard feed caught up: %d records", self.records)
