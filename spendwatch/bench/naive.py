"""The naive baseline: a Faust agent that validates each event and writes the table once per event.

This is what a first Faust version of spendwatch looks like; the benchmark
runs it in the same process setup as the real worker, against the same data.

    python -m spendwatch.bench.naive kafka://127.0.0.1:9092
"""

from __future__ import annotations

import sys

import faust
import orjson

from schemas.decode import parse_record
from streams.progress import ProgressFile


def build(broker: str, topic: str = "spendwatch.usage") -> faust.App:
    app = faust.App("spendwatch-naive", broker=broker, store="memory://", key_serializer="raw",
                    value_serializer="raw", producer_enable_idempotence=False, web_enabled=False,
                    broker_session_timeout=6, broker_heartbeat_interval=1.5, consumer_auto_offset_reset="earliest",
                    topic_partitions=4)
    source = app.topic(topic, key_type=bytes, value_type=bytes)
    spend = app.Table("naive-spend", key_type=bytes, value_type=bytes)

    progress = ProgressFile()

    @app.agent(source)
    async def count(stream: faust.StreamT) -> None:
        async for value in stream:
            events = parse_record(value)[0]
            progress.add(len(events))
            for ev in events:
                key = ev.workflow.encode()
                cur = orjson.loads(spend.get(key) or b"[0, 0]")
                spend[key] = orjson.dumps([cur[0] + 1, cur[1] + ev.input_tokens + ev.output_tokens])

    return app


if __name__ == "__main__":
    faust.Worker(build(sys.argv[1]), loglevel="warning", quiet=True).execute_from_commandline()
