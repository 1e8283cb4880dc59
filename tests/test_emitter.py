"""The SDK emitter on a real broker, and with no broker at all."""

import asyncio

import orjson

from spendwatch import UsageEmitter, usage_from_anthropic, usage_from_openai
from schemas.decode import validate_event
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
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = [emitter.emit({"event_id": str(i)}) for i in range(80)]
    assert loop.time() - t0 < 0.05
    assert results.count(False) == 30 and emitter.dropped == 30 and len(emitter.buffer) == 50
    await asyncio.wait_for(emitter.stop(), 30)


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
