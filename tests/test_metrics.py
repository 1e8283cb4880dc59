"""The worker's Prometheus metrics: scraped over HTTP from a real worker on the embedded broker,
and the label values that must stay bounded whatever callers send."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.decode import parse_record
from streams.broker import free_port
from streams.ingest import Record, TimeBounds, deadletter
from streams.metrics import (
    DEADLETTER_REASONS,
    OTHER,
    MetricsPortError,
    MetricsServer,
    WorkerMetrics,
    deadletter_category,
)
from tests.conftest import start_worker, wait_for
from tests.kafka_io import publish


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    async def get() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    text = asyncio.run(get())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def usage(event_id: str, workflow: str, model: str = "gpt-4o") -> bytes:
    return orjson.dumps({"type": "usage", "event_id": event_id, "ts": time.time(), "workflow": workflow,
                         "provider": "openai", "model": model, "input_tokens": 1000, "output_tokens": 100})


def test_a_worker_counts_what_it_was_sent_on_its_metrics_endpoint(fresh_broker, spawn):
    port = free_port()
    start_worker(spawn, fresh_broker, "--metrics-port", str(port))  # processes one probe event of its own
    tag = uuid.uuid4().hex[:6]
    workflows = [f"wf-{tag}-{i}" for i in range(3)]
    valid = [(wf.encode(), usage(f"{tag}-{i}", wf)) for i, wf in enumerate(workflows * 10)]  # 30 events
    valid.append((workflows[0].encode(), usage(f"{tag}-unknown", workflows[0], model="in-house-llm-7b")))
    duplicates = valid[:5]  # the same event ids again, in records of their own
    publish(fresh_broker.bootstrap, "spendwatch.usage", valid + duplicates + [(workflows[1].encode(), b"{not json")])
    accepted = len(valid) + 1  # and the probe

    def settled() -> dict | None:
        s = scrape(port)
        done = (sample(s, "spendwatch_worker_records_total", result="accepted") == accepted
                and sample(s, "spendwatch_worker_records_total", result="duplicate") == len(duplicates)
                and sample(s, "spendwatch_worker_records_total", result="deadletter") == 1)
        return s if done else None

    s = wait_for(settled, 30, "the worker's counters to reach what was sent", describe=lambda: {
        k: v for k, v in scrape(port).items() if k[0] == "spendwatch_worker_records_total"})
    assert isinstance(s, dict)
    for result in ("redelivered", "rerouted", "poisoned"):
        assert sample(s, "spendwatch_worker_records_total", result=result) == 0
    assert {r: sample(s, "spendwatch_worker_deadletters_total", reason=r) for r in DEADLETTER_REASONS} == {
        r: 1.0 if r == "malformed" else 0.0 for r in DEADLETTER_REASONS}
    assert sample(s, "spendwatch_worker_unpriced_calls_total", model="in-house-llm-7b") == 1
    # the unknown model raised an `unpriced` alert: published, and timed from its record's Kafka timestamp
    assert sample(s, "spendwatch_worker_alerts_total", kind="unpriced", severity="warning") == 1
    assert sample(s, "spendwatch_worker_event_to_alert_seconds_count") == 1
    assert 0 <= sample(s, "spendwatch_worker_event_to_alert_seconds_sum") < 30  # type: ignore[operator]
    assert sample(s, "spendwatch_worker_batch_seconds_count") > 0  # type: ignore[operator]
    assert sample(s, "spendwatch_worker_batch_records_sum") == 1 + len(valid) + len(duplicates) + 1  # records
    assert sample(s, "spendwatch_worker_workflows_in_memory") == 1 + len(workflows)  # the probe's too
    lag = wait_for(lambda: {k: v for k, v in scrape(port).items() if k[0] == "spendwatch_worker_consumer_lag_records"},
                   15, "the consumer lag gauge")
    assert {dict(labels)["topic"] for _, labels in lag} == {"spendwatch.usage"}  # type: ignore[union-attr]
    assert len(lag) == 4 and set(lag.values()) == {0.0}  # type: ignore[union-attr, arg-type]
    assert not any(name.startswith("spendwatch_worker") and ("run" in labels or "agent" in labels)
                   for name, labels in s)


def test_unpriced_model_names_stay_bounded():
    m = WorkerMetrics(unpriced_cap=50, process=False)
    book: dict[str, int] = {}
    for i in range(60):
        book[f"model-{i}"] = 2
        m.note_unpriced(book)
    m.note_unpriced(book)  # cumulative counts: seen again, nothing new
    values = {s.labels["model"]: s.value for s in m.unpriced.collect()[0].samples if s.name.endswith("_total")}
    assert len(values) == 51 and OTHER in values
    assert values[OTHER] == 10 * 2 and sum(values.values()) == 60 * 2
    book["model-0"] += 3  # a named one keeps its own label; an overflow one stays in `other`
    book["model-59"] += 1
    m.note_unpriced(book)
    values = {s.labels["model"]: s.value for s in m.unpriced.collect()[0].samples if s.name.endswith("_total")}
    assert (values["model-0"], values[OTHER], len(values)) == (5, 21, 51)


def test_every_dead_letter_reason_has_its_category():
    def category(raw: bytes | None) -> str:
        _, errors = parse_record(raw, max_bytes=1000)
        assert len(errors) == 1
        return deadletter_category(orjson.loads(deadletter("u", Record(b"k", raw, 0, 1), errors[0].reason)))

    assert category(None) == "tombstone"
    assert category(b"x" * 2000) == "too_large"
    assert category(b"{not json") == "malformed"
    assert category(b'"a string"') == "malformed"
    assert category(b"[1]") == "invalid_event"
    assert category(b'{"type":"refund"}') == "invalid_event"
    assert category(b'{"type":"usage","event_id":"m","ts":1,"workflow":"w","model":"m","input_tokens":-5,'
                    b'"output_tokens":1}') == "invalid_event"
    rec = Record(b"w", b"{}", 0, 1)
    ahead = TimeBounds(600, 60).reason(time.time() + 10_000, time.time())
    behind = TimeBounds(600, 60).reason(time.time() - 10_000, time.time())
    assert ahead and behind
    assert deadletter_category(orjson.loads(deadletter("u", rec, ahead))) == "event_time"
    assert deadletter_category(orjson.loads(deadletter("u", rec, behind))) == "event_time"
    assert deadletter_category({"reason": "late: ts is more than 3600s behind"}) == "late"
    poisoned = deadletter("u", rec, "processing failed, workflow state left as before: KeyError", events=[{}])
    assert deadletter_category(orjson.loads(poisoned)) == "processing_failed"


def test_a_metrics_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(MetricsPortError, match=r"metrics_port / --metrics-port"):
            MetricsServer(WorkerMetrics(process=False), "127.0.0.1", taken.getsockname()[1])


def test_bad_metrics_ports_are_refused_with_the_key_name(tmp_path, capsys):
    from spendwatch.cli import main
    from spendwatch.config import ConfigError, load_settings

    config = tmp_path / "spendwatch.toml"
    config.write_text("[worker]\nmetrics_port = 70000\n")
    with pytest.raises(ConfigError, match=r"worker\.metrics_port: Input should be less than or equal to 65535"):
        load_settings(config)
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--metrics-port", "99999"])
    assert exit_.value.code == 2
    assert "--metrics-port: '99999' is not a port" in capsys.readouterr().err
    config.write_text("[worker]\nmetrics_port = 9109\n")
    assert load_settings(config).worker.metrics_port == 9109
    assert load_settings(None).worker.metrics_port == 0  # off unless asked for
