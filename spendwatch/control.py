"""Issue and read kill/release commands on the compacted control topic.

Records are keyed `scope:target`, so compaction keeps the latest command per
target. The worker (after a policy decision) and the CLI both issue commands
with `schemas.signing.make_command` + `publish_command`; `read_active` is the guard's view,
read once (for `spendwatch status`).
"""

from __future__ import annotations

import getpass
import socket
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.control import ControlCommand, record_of
from schemas.signing import Keyring
from spendwatch.emitter import bootstrap_of
from spendwatch.guard import KillSwitch
from streams.kafka_security import KafkaSecurity, kafka_kwargs


class ControlPlaneUnreachable(RuntimeError):
    """The control topic could not be read in time."""


def cli_issuer() -> str:
    """`cli:user@host`: who issued a command from the command line."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


async def ensure_control_topic(broker: str, topic: str, security: KafkaSecurity | None = None) -> None:
    """Create the topic compacted (latest command per target survives) unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_of(broker), **kafka_kwargs(security))
    try:
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def publish_command(broker: str, topic: str, cmd: ControlCommand, *,
                          security: KafkaSecurity | None = None) -> None:
    """Publish `cmd`; `security` None: the SPENDWATCH_KAFKA_* variables (none set: plaintext)."""
    await ensure_control_topic(broker, topic, security)
    # idempotence off: the embedded broker rejects InitProducerId; command ids make retries harmless
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_of(broker), enable_idempotence=False,
                                request_timeout_ms=10_000, **kafka_kwargs(security))
    try:
        await producer.start()
        key, value = record_of(cmd)
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_active(broker: str, topic: str, keyring: Keyring, now: float | None = None,
                      timeout: float = 10.0, security: KafkaSecurity | None = None) -> list[ControlCommand]:
    """The kills in force at `now`, exactly as a guard would see them."""
    clock = time.time if now is None else (lambda: now)
    switch = KillSwitch(broker, topic, keyring=keyring, clock=clock, poll_s=0.2, security=security)
    try:
        if not await switch.start(wait=timeout):
            raise ControlPlaneUnreachable(f"could not read {topic} on {broker} within {timeout:.0f}s")
        return sorted(switch.active(), key=lambda c: c.expires_at)
    finally:
        await switch.stop()


async def count_since(broker: str, topic: str, since: float, security: KafkaSecurity | None = None) -> int:
    """Records appended to `topic` since `since` (epoch s), from offsets alone: nothing is read.

    Exact on Kafka; on the embedded Tansu it undercounts multi-record batches (its end offset is the
    last batch's base offset + 1).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(broker), enable_auto_commit=False,
                                **kafka_kwargs(security))
    try:
        await consumer.start()  # its bootstrap fetched the metadata of every topic
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return 0
        end = await consumer.end_offsets(tps)
        first = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
        # no record that new: None on Kafka; Tansu answers offset 0 with timestamp -1 instead
        return sum(end[tp] - hit.offset for tp, hit in first.items() if hit is not None and hit.timestamp >= 0)
    finally:
        await consumer.stop()
