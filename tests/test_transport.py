"""The Faust transport fixes: end offsets from a fetch's high watermark (right even where
ListOffsets is short, as on Tansu), commits that never pass an unprocessed record, and a
flow resume that keeps the records already queued."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.transport import FlowControl, fetched_highwaters, unprocessed_head
from tests.kafka_io import create_topic


def test_end_offsets_count_every_record_of_the_last_batch(broker) -> None:
    create_topic(broker.bootstrap, "transport.batch", partitions=1)
    tp = TopicPartition("transport.batch", 0)

    async def go() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
        await producer.start()
        try:  # ten records sent together travel as one record batch
            await asyncio.gather(*[await producer.send(tp.topic, b"%d" % i, partition=0) for i in range(10)])
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            listed = (await consumer.end_offsets([tp]))[tp]
            return listed, (await fetched_highwaters(consumer, {tp: listed}))[tp]
        finally:
            await consumer.stop()

    listed, fetched = asyncio.run(go())
    assert fetched == 10, f"ListOffsets said {listed}, the fetch {fetched}"


def test_an_empty_partition_keeps_its_end_offset_without_a_fetch(broker) -> None:
    async def go() -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        await asyncio.sleep(0)  # aiokafka 0.14: stopping before its group task ran raises CancelledError
        try:
            return await fetched_highwaters(consumer, {TopicPartition("never.created", 0): 0}, timeout=0.1)
        finally:
            await consumer.stop()

    assert asyncio.run(go()) == {TopicPartition("never.created", 0): 0}


def test_a_commit_never_passes_a_record_that_was_not_processed() -> None:
    """Faust's committed offset is the next one to read; its own check let one unprocessed
    record at the head through (`min(acked) - committed > 1`)."""
    assert unprocessed_head([13, 14, 15], committed=12)  # 12 skipped: Faust would commit 16
    assert not unprocessed_head([12, 13], committed=12)
    assert not unprocessed_head([], committed=12)
    assert not unprocessed_head([0, 1], committed=None)  # nothing committed yet


def _queued_after_resumes(flow: FlowControlEvent, suspend_between: bool) -> int:
    """Records left in a stream queue (Faust's kind: emptied on resume) after recovery resumes twice."""
    async def go() -> int:
        queue: FlowControlQueue[int] = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        flow.resume()  # recovery starts the flow to read changelogs; the fetcher fills the queue
        for i in range(3):
            queue.put_nowait(i)
        if suspend_between:
            flow.suspend()  # a rebalance: what is queued is stale and is read again from the commit
        flow.resume()  # recovery done: Faust resumes the flow again
        return queue.qsize()
    return asyncio.run(go())


def test_resuming_a_running_flow_keeps_the_queued_records() -> None:
    """Faust emptied them, and the next fetch started after them: the chaos run lost 1,695 calls."""
    assert _queued_after_resumes(FlowControlEvent(), suspend_between=False) == 0  # Faust's own: lost
    assert _queued_after_resumes(FlowControl(), suspend_between=False) == 3
    assert _queued_after_resumes(FlowControl(), suspend_between=True) == 0
