"""The usage topic's records, taken off the consumer's fetches in bulk instead of one Faust event each.

Faust turns every fetched record into a message, an event, a channel put and two tasks
(`wait_first`) before a stream sees it: on single-event records that cost ~5× what the
worker's own work does (profiled in the README, "Speed"). The consumer (`streams.transport`)
hands each fetch's usage records here as one `Slice` instead, and the ingest task takes
them, several slices merged, as one batch. Faust keeps everything else: the other topics,
tables and changelogs, timers, rebalancing and the commits, which read how far each usage
partition is processed from `BulkFeed.processed` (never past a record not yet applied).

The rules that keep counts exact, as Faust's streams kept them:
- slices of one partition are applied in fetch order, by one task;
- a partition's processed offset moves only after its batch's state and effects are acked
  by the broker (the ingest stage drains the producer before returning), and only within
  the consumer generation the records were fetched in;
- on revocation the feed stops: queued slices are dropped, the batch in hand finishes
  before Faust goes on, and nothing is taken until the flow resumes, after Faust has sought
  every partition back to its committed offset (dropped records are fetched again).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.ingest import Record

log = logging.getLogger("spendwatch.worker")

QUEUED_SLICES = 4
"""Fetches (of at most `batch_max` records each) waiting for the ingest task before the consumer waits too."""
BATCH_BYTES = 8 << 20
"""Most record bytes per batch: ~25k events, ~0.5 s of work on 2 cores (20,000 single-event records fit)."""
QUIESCE_TIMEOUT_S = 60.0
"""How long a revocation waits for the batch in hand (one batch takes well under a second)."""


@dataclass
class Slice:
    """Usage records (each partition's in offset order) and the generation they were fetched in."""

    records: list[Record]
    generation: int

    @property
    def last(self) -> dict[int, int]:
        """Partition -> its highest offset in the slice."""
        return {rec.partition: rec.offset for rec in self.records}


def to_slice(fetched: Mapping[int, Sequence[Any]], generation: int) -> Slice:
    """aiokafka's records per partition → a `Slice` (Kafka timestamps in ms become seconds)."""
    return Slice([Record(r.key, r.value, partition, r.offset, r.timestamp / 1000.0 if r.timestamp is not None else None)
                  for partition, recs in fetched.items() for r in recs], generation)


class BulkFeed:
    """The queue between the consumer's fetches and the ingest task, and the processed offsets."""

    def __init__(self, topic: str, generation: Callable[[], int], maxsize: int = QUEUED_SLICES):
        self.topic = topic
        self.generation = generation
        """The consumer's current generation: a slice of an older one is dropped, not applied."""
        self.processed: dict[int, int] = {}
        """Partition -> the next offset to read once everything before it is applied (what may be committed)."""
        self._queue: deque[Slice] = deque()
        self._head = 0  # records of the first queued slice already taken
        self._maxsize = maxsize
        self._ready = asyncio.Event()  # the queue has slices
        self._space = asyncio.Event()  # the queue has room
        self._space.set()
        self._idle = asyncio.Event()  # no batch in hand
        self._idle.set()
        self._paused = False
        self.dropped = 0  # records dropped by a revocation, to be read again

    async def offer(self, fetched: Mapping[int, Sequence[Any]], generation: int) -> None:
        """A fetch's usage records, by partition; waits while the queue is full."""
        while len(self._queue) >= self._maxsize and not self._paused:
            self._space.clear()
            await self._space.wait()
        if self._paused or generation != self.generation():
            self.dropped += sum(len(r) for r in fetched.values())
            return
        piece = to_slice(fetched, generation)
        if piece.records:
            self._queue.append(piece)
            self._ready.set()

    async def take(self, max_records: int, max_bytes: int = BATCH_BYTES) -> Slice:
        """The next batch: the oldest queued records of the current generation, in fetch order, up to
        `max_records` records and `max_bytes` of values (at least one record). A fetch larger than that
        is split: a batch's time is bounded, since it holds the event loop and with it the rebalance
        callbacks (a 500-event record is 500 events). Marks a batch in hand until `done`."""
        while True:
            while not self._queue or self._paused:
                self._ready.clear()
                await self._ready.wait()
            generation = self._queue[0].generation
            if generation != self.generation():
                self.dropped += len(self._queue.popleft().records) - self._head
                self._head = 0
                continue
            records: list[Record] = []
            size = 0
            while self._queue and self._queue[0].generation == generation:
                head = self._queue[0].records
                end = self._head
                while end < len(head) and len(records) < max_records and (size < max_bytes or not records):
                    rec = head[end]
                    records.append(rec)
                    size += len(rec.value or b"")
                    end += 1
                if end < len(head):
                    self._head = end
                    break
                self._queue.popleft()
                self._head = 0
            self._space.set()
            self._idle.clear()
            return Slice(records, generation)

    def done(self, batch: Slice) -> None:
        """`batch` is applied and its effects acked: its partitions may be committed past it."""
        if batch.generation == self.generation():  # a revocation waits for this batch: its offsets count
            for partition, offset in batch.last.items():
                if offset + 1 > self.processed.get(partition, -1):
                    self.processed[partition] = offset + 1
        self._idle.set()

    def failed(self) -> None:
        """The batch in hand was not applied (the worker is exiting)."""
        self._idle.set()

    async def quiesce(self, timeout: float = QUIESCE_TIMEOUT_S) -> None:
        """Partitions are being revoked: drop what is queued, wait for the batch in hand, take nothing more
        until `resume`."""
        self._paused = True
        self.dropped += sum(len(s.records) for s in self._queue) - self._head
        self._queue.clear()
        self._head = 0
        self._space.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("a usage batch was still in hand %.0f s into a rebalance; going on without it "
                        "(its records are not committed and will be read again)", timeout)

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.processed.pop(partition, None)

    def resume(self) -> None:
        """Faust resumed the flow after seeking every partition to its committed offset."""
        self._paused = False
        if self._queue:
            self._ready.set()
