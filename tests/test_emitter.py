"""The SDK emitter on a real broker, and with no broker at all."""

import asyncio
import decimal
import inspect
import threading
import uuid

import orjson
import pytest

from schemas.decode import validate_event
from spendwatch import UsageEmitter, usage_from_anthropic, usage_from_openai
from tests.kafka_io import create_topic, read_all


async def test_emitter_batches_per_workflow_and_delivers_everything(broker):
    await asyncio.to_thread(create_topic, broker.bootstrap, "emit-test", 2)
    emitter = UsageEmitter(broker.url, "emit-test", max_batch=100)
    await emitter.start()
    for i in range(1000):
        assert emitter.emit({"type": "usage", "event_id": f"e{i}", "ts": 1_768_435_200 + i,
                             "workflow": f"w{i % 3}", "model": "m", "input_tokens": 1, "output_tokens": 1})
    await emitter.stop()
    records = await asyncio.to_thread(read_all, broker.bootstrap, "emit-test")
    events = [ev for key, value in records for ev in orjson.loads(value)]
    assert sorted(e["event_id"] for e in events) == sorted(f"e{i}" for i in range(1000))
    assert all(all(e["workflow"] == key.decode() for e in orjson.loads(v)) for key, v in records)
    assert len(records) < 100  # batched, not one record per event


async def test_emitter_never_blocks_when_kafka_is_down_and_counts_drops():
    emitter = UsageEmitter("kafka://127.0.0.1:9", max_buffer=50)
    await emitter.start()
    assert not inspect.iscoroutinefunction(emitter.emit)  # the caller never awaits Kafka
    results = [emitter.emit({"event_id": str(i)}) for i in range(80)]  # all in one turn of the event loop
    assert results.count(False) == 30 and emitter.dropped == 30 and len(emitter.buffer) == 50
    await asyncio.wait_for(emitter.stop(), 30)


def usage(event_id: str, workflow: str = "w", **extra: object) -> dict[str, object]:
    return {"type": "usage", "event_id": event_id, "ts": 1_768_435_200, "workflow": workflow, "model": "m",
            "input_tokens": 1, "output_tokens": 1, **extra}


def delivered(broker, topic: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [ev["event_id"] for _, value in read_all(broker.bootstrap, topic) for ev in orjson.loads(value)]


async def test_events_json_cannot_carry_are_counted_and_dropped_and_the_rest_still_flow(broker):
    """A Decimal cost (and friends) used to kill the sender task for good; now only that event is lost."""
    topic = f"emit-bad-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topic, broker.bootstrap, topic, 1)
    emitter = UsageEmitter(broker.url, topic, max_request_size=100_000)
    await emitter.start()
    bad = [usage("b1", cost_usd=decimal.Decimal("0.0021")), usage("b2", labels={1: "x"}),
           usage("b3", input_tokens=2**70), usage("b4", workflow="\ud800"), usage("b5", blob="x" * 200_000),
           ["not", "a", "dict"], None]
    results = []
    for i in range(20):  # bad events in the middle of the same batches as good ones
        results.append(emitter.emit(usage(f"g{i}", workflow=f"w{i % 2}")))
        if i % 3 == 0 and bad:
            results.append(emitter.emit(bad.pop()))  # type: ignore[arg-type]
    while bad:
        results.append(emitter.emit(bad.pop()))  # type: ignore[arg-type]
    await emitter.flush()
    assert emitter.emit(usage("after"))  # the sender is still alive
    await emitter.stop()
    assert results.count(False) == 7 and emitter.invalid == 7 and emitter.dropped == 0
    assert sorted(await asyncio.to_thread(delivered, broker, topic)) == sorted([f"g{i}" for i in range(20)] + ["after"])
    assert emitter.sent == 21


def test_emitter_built_outside_any_loop_sends_from_the_loop_that_runs_it(broker):
    """Built at import time (no loop), fed before the loop exists, started inside asyncio.run()."""
    topic = f"emit-loop-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    emitter = UsageEmitter(broker.url, topic)
    assert all(emitter.emit(usage(f"early{i}")) for i in range(10))

    async def main() -> None:
        await emitter.start()
        assert all(emitter.emit(usage(f"late{i}")) for i in range(10))
        await emitter.stop()

    asyncio.run(main())
    assert sorted(delivered(broker, topic)) == sorted([f"early{i}" for i in range(10)] + [f"late{i}" for i in range(10)])


def test_emitter_follows_its_caller_to_a_new_loop_in_another_thread(broker):
    """First used in one asyncio.run() that ends without stop(), then in another loop on another thread:
    nothing emitted in either is lost (at-least-once: a record cut off mid-send may come twice)."""
    topic = f"emit-loop-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    emitter = UsageEmitter(broker.url, topic)

    async def first() -> None:  # no start(): the first emit() binds the emitter to this loop
        for i in range(300):
            emitter.emit(usage(f"a{i}"))
            if i == 150:
                await asyncio.sleep(0.5)  # some are sent from this loop, the rest are not yet

    async def second() -> None:
        for i in range(300):
            emitter.emit(usage(f"b{i}"))
        await emitter.stop()

    asyncio.run(first())
    sent_by_first = emitter.sent
    thread = threading.Thread(target=asyncio.run, args=(second(),))
    thread.start()
    thread.join(60)
    assert 0 < sent_by_first < 600
    ids = delivered(broker, topic)
    assert set(ids) == {f"a{i}" for i in range(300)} | {f"b{i}" for i in range(300)}


def test_emitter_refuses_a_second_loop_while_its_own_still_runs(broker):
    """Two loops sharing one emitter would race on its buffer: start() on the second fails loudly, and
    emit() from it still never raises (the first loop's sender delivers the event)."""
    topic = f"emit-loop-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    emitter = UsageEmitter(broker.url, topic)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(emitter.start(), loop).result(10)

        async def elsewhere() -> bool:
            with pytest.raises(RuntimeError, match="another thread"):
                await emitter.start()
            return emitter.emit(usage("from-the-other-loop"))

        assert asyncio.run(elsewhere())
        asyncio.run_coroutine_threadsafe(emitter.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert delivered(broker, topic) == ["from-the-other-loop"]


def test_a_synchronous_program_sends_from_a_background_thread(broker):
    """No asyncio anywhere in the caller: start_thread() (here as a `with` block) sends from a thread of its
    own, emit() works from many threads at once, flush_sync() waits for delivery and close() ends it."""
    topic = f"emit-sync-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 2)
    with UsageEmitter(broker.url, topic, max_batch=100) as emitter:
        assert emitter.start_thread() is emitter  # idempotent

        def worker(n: int) -> None:
            for i in range(500):
                assert emitter.emit(usage(f"t{n}-{i}", workflow=f"w{i % 3}"))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        emitter.flush_sync(30)
        assert emitter.sent == 2_000 and emitter.pending == 0
        assert emitter.emit(usage("last"))
    assert emitter._thread is None and emitter.pending == 0  # close() flushed the last one
    emitter.close()  # idempotent
    with pytest.raises(RuntimeError, match="start_thread"):
        emitter.flush_sync()
    ids = delivered(broker, topic)
    assert sorted(ids) == sorted([f"t{n}-{i}" for n in range(4) for i in range(500)] + ["last"])


def test_the_background_thread_refuses_an_emitter_running_on_another_loop(broker):
    emitter = UsageEmitter(broker.url, "emit-test")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(emitter.start(), loop).result(10)
        with pytest.raises(RuntimeError, match="another thread"):
            emitter.start_thread()
        assert emitter._thread is None
        asyncio.run_coroutine_threadsafe(emitter.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_an_unclosed_emitter_is_flushed_when_the_program_exits(broker, tmp_path):
    """A script that never calls close(): the interpreter's exit flushes what is buffered."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    topic = f"emit-exit-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    script = tmp_path / "script.py"
    script.write_text(
        "from spendwatch import UsageEmitter\n"
        f"emitter = UsageEmitter({broker.url!r}, {topic!r}, linger=5.0).start_thread()\n"  # nothing sent by itself
        "for i in range(100):\n"
        "    emitter.emit({'type': 'usage', 'event_id': f'x{i}', 'ts': 1768435200, 'workflow': 'w',"
        " 'model': 'm', 'input_tokens': 1, 'output_tokens': 1})\n")
    subprocess.run([sys.executable, str(script)], cwd=ROOT, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert sorted(delivered(broker, topic)) == sorted(f"x{i}" for i in range(100))


def test_openai_usage_counts_cache_inside_prompt():
    resp = {"model": "gpt-4o", "usage": {"prompt_tokens": 1200, "completion_tokens": 300,
                                         "prompt_tokens_details": {"cached_tokens": 1000},
                                         "completion_tokens_details": {"reasoning_tokens": 200}}}
    ev = validate_event(usage_from_openai(resp, workflow="w", run_id="r1"))
    assert (ev.input_tokens, ev.cache_read_tokens, ev.output_tokens, ev.reasoning_tokens) == (1200, 1000, 300, 200)
    assert ev.model == "gpt-4o" and ev.run_id == "r1"


def test_anthropic_usage_adds_cache_tokens_to_input():
    resp = {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 50, "output_tokens": 400,
                                                    "cache_read_input_tokens": 9000,
                                                    "cache_creation_input_tokens": 1000}}
    ev = validate_event(usage_from_anthropic(resp, workflow="w"))
    assert (ev.input_tokens, ev.cache_read_tokens, ev.cache_write_tokens) == (10_050, 9000, 1000)
