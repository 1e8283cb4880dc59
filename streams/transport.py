"""Faust's Kafka transport, fixed where it could lose or skip records: end offsets a broker
cannot under-report, a flush that waits, commits that never pass an unprocessed record.

Table recovery replays each changelog partition up to its end offset, taken from
ListOffsets. Tansu answers ListOffsets with the first offset of the partition's last
record batch plus one, so recovery stopped inside the last batch: the workflow states
it held were lost while the source offsets they covered stayed committed (the chaos
run lost 245 calls of one workflow that way). A fetch response's high watermark is
right on every broker, so end offsets are the larger of the two. On Kafka both agree
and the probe costs one fetch per rebalance.

Faust commits source offsets after `Producer.flush()`, which stops waiting on its
buffer after 0.1 s without a send: on a busy loop the commit could cover records
whose table writes were still in that buffer, and a kill then lost them (the chaos
run lost 192 calls of one workflow). `drained` waits for real.

Faust lets a commit pass one record its stream skipped after a rebalance
(`_Consumer._new_offset`): the commit waits and the partition is read again.

Faust empties every stream's queue when it resumes the flow at the end of table recovery,
but on a worker with tables the flow is already running then: the queued records were
fetched in this generation, never processed, and the next fetch starts after them, so
a commit passed them (the chaos run lost up to 1,695 calls that way). `FlowControl` only
empties queues filled before a suspension.

With a `streams.bulk.BulkFeed` on the transport, the consumer hands the feed's topic's records
to it, a fetch at a time, instead of to Faust's per-record path, and commits those partitions
as far as the feed has processed them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from streams.bulk import BulkFeed

PROBE_TIMEOUT_S = 5.0
log = logging.getLogger("spendwatch.worker")


async def fetched_highwaters(probe: AIOKafkaConsumer, ends: Mapping[TP, int],
                             timeout: float = PROBE_TIMEOUT_S) -> dict[TP, int]:
    """`ends` raised to the high watermarks of a fetch at each partition's last known
    record; a partition the probe does not hear from within `timeout` keeps its value.
    Leaves `probe` assigned to the non-empty partitions, at their ends."""
    known = {tp: end for tp, end in ends.items() if end is not None and end > 0}
    result = dict(ends)
    if not known:
        return result
    tps = {TopicPartition(tp.topic, tp.partition): tp for tp in known}
    probe.assign(list(tps))
    for kafka_tp, tp in tps.items():
        probe.seek(kafka_tp, known[tp] - 1)
    deadline = asyncio.get_running_loop().time() + timeout
    waiting = set(tps)
    while waiting and asyncio.get_running_loop().time() < deadline:
        await probe.getmany(*waiting, timeout_ms=200, max_records=1)
        for kafka_tp in list(waiting):
            highwater = probe.highwater(kafka_tp)
            if highwater is not None:
                result[tps[kafka_tp]] = max(known[tps[kafka_tp]], highwater)
                waiting.discard(kafka_tp)
    if waiting:
        log.warning("no fetch answered for %d changelog partitions within %.0f s: their end offsets are the "
                    "broker's ListOffsets answer, which Tansu under-reports: %s", len(waiting), timeout,
                    sorted(f"{tp.topic}[{tp.partition}]" for tp in waiting))
    return result


FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold a fetch that has too little data. Faust asks 1,500 ms; Kafka answers
as soon as a byte is there anyway, but Tansu holds a fetch for its whole wait while records arrive
(measured: records delivered 0.37 s late at the median and 0.75 s at most with 1,500 ms, 4 ms with
100 ms), and that wait is event-to-alert latency. An idle worker then sends ten empty fetches a second."""
DRAIN_TIMEOUT_S = 300.0
"""How long a batch waits for the broker to ack its writes before the worker gives up and exits."""


class DrainTimeout(RuntimeError):
    """The broker did not ack a batch's writes in time: the worker exits, its batch uncommitted."""


async def drained(producer: Any, timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Until every message sent so far, table changelog writes included, is acked by the broker.
    Awaited before a batch is acked, so no commit can cover a batch whose state is not in Kafka.

    Not forever: a partition whose leader the producer never learns (seen when two workers create
    the same topics at once on a fresh Tansu) would hold the worker silently. After `timeout` this
    raises, the stage's agent exits the process, and a restarted worker reads the batch again."""
    async def flush() -> None:
        while producer.buffer.size:
            await producer.buffer.flush()
        await producer.flush()

    try:
        await asyncio.wait_for(flush(), timeout)
    except TimeoutError:
        raise DrainTimeout(f"the broker has not acked this batch's writes in {timeout:.0f} s (a partition "
                           "without a leader?); exiting so a restarted worker reads the batch again") from None


def unprocessed_head(acked: list[int], committed: int | None) -> bool:
    """Whether the next offset to commit (`committed`) was never acked though later ones were."""
    return bool(acked) and committed is not None and min(acked) > committed


class FlowControl(FlowControlEvent):
    """`faust.App(...).flow_control`, except that resuming a flow that is not suspended keeps
    the queued records: they belong to this generation and nothing would fetch them again."""

    def resume(self) -> None:
        if not self.is_active():
            super().resume()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # Faust passes 1,500 ms, not a setting
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rewound: dict[TP, int] = {}  # partition -> the committed offset it was last read again from

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def bulk(self) -> BulkFeed | None:
        return getattr(self.transport, "bulk", None)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        """Faust's fetch, minus the bulk topic's records, which go to the feed (only those of partitions
        Faust would deliver now, as its `getmany` does; it seeks back when the flow is not active)."""
        records = await super()._getmany(active_partitions, timeout)
        feed = self.bulk
        if feed is None or not records:
            return records
        mine = {tp: recs for tp, recs in records.items() if tp.topic == feed.topic}
        if not mine:
            return records
        if self.flow_active:
            await feed.offer({tp.partition: recs for tp, recs in mine.items()
                              if active_partitions is None or tp in active_partitions
                              or tp in self._buffered_partitions}, self.app.consumer_generation_id)
            for tp in mine:
                self._acked[tp]  # noqa: B018 - makes Faust's commit look at the partition (`_new_offset`)
        return {tp: recs for tp, recs in records.items() if tp.topic != feed.topic}

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """The batch in hand finishes before anything is given up, as Faust waits for its streams' events."""
        if (feed := self.bulk) is not None:
            await feed.quiesce()
            feed.forget(tp.partition for tp in revoked if tp.topic == feed.topic)
        await super().on_partitions_revoked(revoked)

    def resume_flow(self) -> None:
        super().resume_flow()
        if (feed := self.bulk) is not None:
            feed.resume()

    def _new_offset(self, tp: TP) -> int | None:
        """Never commit past a record that was not processed.

        Faust's committed offset is the next one to read, but its check for a hole at the
        head of the acked offsets allows one missing record (`min(acked) - committed > 1`).
        A record its stream skipped after a rebalance (fetched under the old generation) was
        then committed unprocessed: a restarted worker lost the first event after its
        committed offset (1 run in ~10 of the restart test). Here the commit waits and the
        partition is read again from the committed offset; the per-workflow source offsets
        drop what was already applied."""
        feed = self.bulk
        if feed is not None and tp.topic == feed.topic:
            return feed.processed.get(tp.partition)
        committed = self._committed_offset[tp]
        if (committed is not None and unprocessed_head(self._acked[tp], committed) and not self._gap.get(tp)
                and self._rewound.get(tp) != committed):
            self._rewound[tp] = committed
            log.warning("%s[%d]: offset %d was skipped, not processed; reading again from it",
                        tp.topic, tp.partition, committed)
            asyncio.ensure_future(self.seek(tp, committed))
            return None
        return super()._new_offset(tp)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        ends = await super().highwaters(*partitions)
        if self.in_transaction or not any(ends.values()):
            return ends
        # the app's auth and timeouts; faust types `transport` as the abstract TransportT
        probe = self._thread._create_client_consumer(self.transport)  # type: ignore[arg-type]
        await probe.start()
        # aiokafka's close awaits its cancelled group task, which raises CancelledError if
        # the task never ran: let it start before anything can stop the probe.
        await asyncio.sleep(0)
        try:
            return await fetched_highwaters(probe, ends)
        finally:
            await probe.stop()


class Transport(faust_aiokafka.Transport):
    """`faust.App(...).transport` for a Kafka or Kafka-compatible broker."""

    Consumer = _Consumer

