"""Tiny real-Kafka helpers for tests: publish records, read a whole topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from schemas.decode import parse_record
from streams.transport import fetched_highwaters

T = TypeVar("T")


def _admin(bootstrap: str, call: Callable[[AIOKafkaAdminClient], Awaitable[T]]) -> T:
    """`call` with a started admin client, closed after."""
    async def go() -> T:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return await call(admin)
        finally:
            await admin.close()

    return asyncio.run(go())


def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    async def create(admin: AIOKafkaAdminClient) -> None:
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        except TopicAlreadyExistsError:
            pass

    _admin(bootstrap, create)


def topic_configs(bootstrap: str, name: str) -> dict[str, str]:
    """The topic's configs as the broker describes them."""
    [response] = _admin(bootstrap, lambda a: a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)]))
    [(error, _message, _type, _name, entries)] = response.resources
    assert error == 0, _message
    return {entry[0]: entry[1] for entry in entries}


def topic_names(bootstrap: str) -> set[str]:
    """Every topic the broker has."""
    return set(_admin(bootstrap, lambda a: a.list_topics()))


def publish(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=8_000_000)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(go())


async def _partitions_and_ends(consumer: AIOKafkaConsumer, topic: str) -> tuple[list[TopicPartition],
                                                                              dict[TopicPartition, int]]:
    """`topic`'s partitions, in order, and their end offsets (raised by a fetch: Tansu's are short).
    Leaves `consumer` assigned to the non-empty ones."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    return tps, (await fetched_highwaters(consumer, await consumer.end_offsets(tps)) if tps else {})


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record currently in `topic`, in partition order (no consumer group)."""

    async def go() -> list[tuple[bytes | None, bytes | None]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps, end = await _partitions_and_ends(consumer, topic)
            if not tps:
                return []
            consumer.assign(tps)  # the probe assigned only the non-empty ones
            await consumer.seek_to_beginning(*tps)
            out: list[tuple[bytes | None, bytes | None]] = []
            for tp in tps:
                while await consumer.position(tp) < end[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    for msg in batch.get(tp, []):
                        out.append((msg.key, msg.value))
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def uncommitted(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition of `topic`: records past the offset `group` has committed (its end offset
    when nothing is committed). Read with a consumer that is assigned, not subscribed: it never
    joins `group`, so the group's members are not rebalanced."""

    async def go() -> dict[int, int]:
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        member = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await probe.start()
        await member.start()
        try:
            tps, end = await _partitions_and_ends(probe, topic)
            if not tps:
                return {}
            member.assign(tps)
            return {tp.partition: end[tp] - (await member.committed(tp) or 0) for tp in tps}
        finally:
            await member.stop()
            await probe.stop()

    return asyncio.run(go())


def topic_of(broker: Any, name: str) -> str:
    """A fresh one-partition topic named after `name`."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    return topic


def events_on(broker: Any, topic: str, expect: int, timeout: float = 20.0) -> list[Any]:
    """What the worker would count: every record decoded by its own parser, strictly (no unknown fields)."""
    deadline = time.monotonic() + timeout
    while True:
        events, errors = [], []
        for _, value in read_all(broker.bootstrap, topic):
            ok, bad = parse_record(value, strict=True)
            events += ok
            errors += bad
        assert errors == []
        if len(events) >= expect or time.monotonic() > deadline:
            return events
        time.sleep(0.3)
