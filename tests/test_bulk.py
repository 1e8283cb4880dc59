"""The bulk feed between the consumer's fetches and the ingest task (`streams.bulk`).

The rules that keep counts exact across rebalances, without Kafka: what the worker
does with a feed over a real broker is covered by the pipeline, process and chaos tests.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from streams.bulk import BulkFeed, to_slice


def fetched(partition: int, offsets: range, ts_ms: int | None = 1_700_000_000_000) -> dict[int, list[SimpleNamespace]]:
    """What aiokafka's fetch gives for one partition (records with key, value, offset, timestamp)."""
    return {partition: [SimpleNamespace(key=b"wf", value=b"{}", offset=o, timestamp=ts_ms) for o in offsets]}


class Generation:
    def __init__(self) -> None:
        self.now = 1

    def __call__(self) -> int:
        return self.now


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_slice_keeps_partitions_offsets_and_timestamps_in_seconds() -> None:
    piece = to_slice({**fetched(0, range(5, 8)), **fetched(3, range(10, 11), ts_ms=None)}, generation=4)
    assert [(r.partition, r.offset) for r in piece.records] == [(0, 5), (0, 6), (0, 7), (3, 10)]
    assert piece.records[0].timestamp == 1_700_000_000.0 and piece.records[-1].timestamp is None
    assert piece.last == {0: 7, 3: 10} and piece.generation == 4


def test_queued_fetches_merge_up_to_the_batch_size_and_commit_only_when_done() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation())
        for start in (0, 3, 6):
            await feed.offer(fetched(0, range(start, start + 3)), 1)
        await feed.offer(fetched(1, range(0, 2)), 1)
        batch = await feed.take(max_records=7)
        assert [r.offset for r in batch.records] == [0, 1, 2, 3, 4, 5, 6]  # the third fetch is split
        assert feed.processed == {}  # nothing may be committed while the batch is in hand
        feed.done(batch)
        assert feed.processed == {0: 7}
        rest = await feed.take(max_records=7)
        assert [(r.partition, r.offset) for r in rest.records] == [(0, 7), (0, 8), (1, 0), (1, 1)]
        feed.done(rest)
        assert feed.processed == {0: 9, 1: 2}

    run(scenario())


def test_a_fetch_larger_than_a_batch_is_split_and_committed_as_far_as_applied() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation())
        await feed.offer({**fetched(0, range(10)), **fetched(1, range(4))}, 1)
        first = await feed.take(max_records=6)
        assert [(r.partition, r.offset) for r in first.records] == [(0, o) for o in range(6)]
        feed.done(first)
        assert feed.processed == {0: 6}  # not past the records still queued
        second = await feed.take(max_records=6)
        assert [(r.partition, r.offset) for r in second.records] == [(0, 6), (0, 7), (0, 8), (0, 9), (1, 0), (1, 1)]
        feed.done(second)
        third = await feed.take(max_records=6)
        feed.done(third)
        assert feed.processed == {0: 10, 1: 4}

    run(scenario())


def test_batches_are_bounded_by_bytes_but_hold_at_least_one_record() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation())
        await feed.offer(fetched(0, range(5)), 1)  # values of 2 bytes each
        assert len((await feed.take(max_records=100, max_bytes=5)).records) == 3  # 6 bytes: the third crosses it
        assert len((await feed.take(max_records=100, max_bytes=1)).records) == 1
        assert len((await feed.take(max_records=100, max_bytes=100)).records) == 1

    run(scenario())


def test_a_revocation_mid_fetch_drops_only_the_records_not_taken() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation())
        await feed.offer(fetched(0, range(10)), 1)
        batch = await feed.take(max_records=4)
        feed.done(batch)
        await feed.quiesce()
        assert feed.dropped == 6 and feed.processed == {0: 4}

    run(scenario())


def test_slices_of_an_older_generation_are_dropped_and_never_committed() -> None:
    async def scenario() -> None:
        gen = Generation()
        feed = BulkFeed("usage", gen)
        await feed.offer(fetched(0, range(3)), 1)
        gen.now = 2  # a rebalance happened since that fetch
        await feed.offer(fetched(0, range(3)), 2)
        batch = await feed.take(100)
        assert batch.generation == 2 and feed.dropped == 3
        gen.now = 3  # and another one while the batch was being applied
        feed.done(batch)
        assert feed.processed == {}

    run(scenario())


def test_a_revocation_waits_for_the_batch_in_hand_and_drops_the_queue_until_resumed() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation())
        await feed.offer(fetched(0, range(3)), 1)
        batch = await feed.take(100)
        await feed.offer(fetched(0, range(3, 6)), 1)

        finished = []

        async def apply() -> None:
            await asyncio.sleep(0.05)
            finished.append(True)
            feed.done(batch)

        applying = asyncio.create_task(apply())
        await feed.quiesce()
        assert finished == [True], "quiesce returned before the batch in hand was applied"
        assert feed.processed == {0: 3}  # applied in this generation: committable
        assert feed.dropped == 3  # the queued slice: read again after Faust seeks to the committed offset
        await feed.offer(fetched(0, range(6, 9)), 1)  # fetched during the rebalance: dropped too
        assert feed.dropped == 6
        waiting = asyncio.create_task(feed.take(100))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        feed.forget([0])
        assert feed.processed == {}
        feed.resume()
        await feed.offer(fetched(0, range(3, 5)), 1)
        assert [r.offset for r in (await asyncio.wait_for(waiting, 1)).records] == [3, 4]
        await applying

    run(scenario())


def test_a_full_queue_holds_the_fetcher_until_the_ingest_task_takes_a_slice() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation(), maxsize=2)
        await feed.offer(fetched(0, range(0, 1)), 1)
        await feed.offer(fetched(0, range(1, 2)), 1)
        blocked = asyncio.create_task(feed.offer(fetched(0, range(2, 3)), 1))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        await feed.take(max_records=1)
        await asyncio.wait_for(blocked, 1)
        offsets = [r.offset for r in (await feed.take(100)).records]
        assert offsets == [1, 2]

    run(scenario())


def test_a_revocation_releases_a_fetcher_waiting_on_a_full_queue() -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation(), maxsize=1)
        await feed.offer(fetched(0, range(1)), 1)
        blocked = asyncio.create_task(feed.offer(fetched(0, range(1, 2)), 1))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(feed.quiesce(), 1)
        await asyncio.wait_for(blocked, 1)
        assert feed.dropped == 2

    run(scenario())


def test_a_revocation_does_not_wait_forever_for_a_stuck_batch(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        feed = BulkFeed("usage", Generation())
        await feed.offer(fetched(0, range(1)), 1)
        await feed.take(100)  # never done
        await feed.quiesce(timeout=0.05)

    run(scenario())
    assert "still in hand" in caplog.text


def test_a_batch_whose_writes_are_never_acked_ends_the_wait_with_a_reason() -> None:
    """`drained` on a producer whose flush never returns (a partition without a leader): the stage's agent
    gets an error to exit on instead of waiting forever."""
    from streams.transport import DrainTimeout, drained

    class Stuck:
        buffer = SimpleNamespace(size=0)

        async def flush(self) -> None:
            await asyncio.Event().wait()

    with pytest.raises(DrainTimeout, match="not acked"):
        run(drained(Stuck(), timeout=0.05))
