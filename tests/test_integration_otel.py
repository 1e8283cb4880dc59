"""OpenTelemetry GenAI spans → usage events: the real `opentelemetry-sdk` through `SpendwatchSpanExporter`, and
OTLP records as a Collector's kafka exporter writes them (`otlp_proto`, `otlp_json`) through the bridge, all on
the embedded broker; malformed records are counted and skipped."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from detectors.pricing.prices import PriceBook
from spendwatch.cli import main
from spendwatch.integrations.otel import OtlpBridge, SpanMapper, SpendwatchSpanExporter
from spendwatch.usage import digest
from tests.kafka_io import events_on, publish, topic_of

RESOURCE = Resource.create({"service.name": "search-api", "team": "discovery",
                            "deployment.environment.name": "prod"})


def make_spans(provider: TracerProvider) -> None:
    """An agent run as instrumentations record it: new and legacy conventions, OpenLLMetry, OpenLIT."""
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent coder", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 99_999,  # an aggregate
            "gen_ai.usage.output_tokens": 99_999}):
        with tracer.start_as_current_span("chat claude-sonnet-4-5", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.response.model": "claude-sonnet-4-5-20250929",
                "gen_ai.usage.input_tokens": 10_120, "gen_ai.usage.output_tokens": 450,
                "gen_ai.usage.cache_read.input_tokens": 8_000, "gen_ai.usage.cache_creation.input_tokens": 2_000,
                "gen_ai.workflow.name": "coder", "gen_ai.agent.id": "agent-1", "gen_ai.conversation.id": "conv-1"}):
            pass
        with tracer.start_as_current_span("execute_tool run_tests", attributes={
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "run_tests",
                "gen_ai.tool.call.arguments": '{"path": "tests/"}', "gen_ai.tool.call.result": "2 failed"}):
            pass
        with tracer.start_as_current_span("chat gpt-4o", attributes={  # legacy names
                "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.prompt_tokens": 1_200, "gen_ai.usage.completion_tokens": 300,
                "gen_ai.workflow.name": "coder", "gen_ai.conversation.id": "conv-1"}):
            pass
    with tracer.start_as_current_span("anthropic.chat", attributes={  # OpenLLMetry
            "traceloop.span.kind": "llm", "gen_ai.system": "Anthropic", "llm.request.model": "claude-sonnet-4-5",
            "llm.usage.prompt_tokens": 500, "llm.usage.completion_tokens": 40,
            "traceloop.workflow.name": "triage"}):
        pass
    with tracer.start_as_current_span("triage.workflow", attributes={"traceloop.span.kind": "workflow",
                                                                      "llm.usage.prompt_tokens": 500}):
        pass
    with tracer.start_as_current_span("openai.chat", attributes={  # OpenLIT: reasoning and its own cost
            "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "o3-mini",
            "gen_ai.usage.input_tokens": 2_000, "gen_ai.usage.output_tokens": 900,
            "gen_ai.usage.reasoning_tokens": 700, "gen_ai.usage.cost": 0.00616}):
        pass
    with tracer.start_as_current_span("chat gpt-4o", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "error.type": "RateLimitError"}) as failed:
        failed.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))


def check_events(events: list[Any]) -> None:
    assert len(events) == 5, [(e.model, e.workflow) for e in events]
    by = {(e.model, e.workflow, e.status): e for e in events}
    claude = by["claude-sonnet-4-5-20250929", "coder", "ok"]
    assert (claude.provider, claude.agent_id, claude.run_id, claude.team, claude.service) == (
        "anthropic", "agent-1", "conv-1", "discovery", "search-api")
    assert (claude.input_tokens, claude.cache_read_tokens, claude.cache_write_tokens, claude.output_tokens) == (
        10_120, 8_000, 2_000, 450)
    assert claude.fingerprint is None and claude.labels["environment"] == "prod"
    gpt = by["gpt-4o", "coder", "ok"]
    assert (gpt.provider, gpt.input_tokens, gpt.output_tokens, gpt.run_id) == ("openai", 1_200, 300, "conv-1")
    # the tool ran between the two calls: it is the fingerprint of the call that reads its result
    assert gpt.fingerprint == digest({"name": "run_tests", "arguments": '{"path": "tests/"}'})
    assert gpt.observation == digest("2 failed")
    triage = by["claude-sonnet-4-5", "triage", "ok"]
    assert (triage.provider, triage.input_tokens, triage.output_tokens) == ("anthropic", 500, 40)
    o3 = by["o3-mini", "search-api", "ok"]  # no workflow attribute: the service name
    assert (o3.output_tokens, o3.reasoning_tokens, o3.cost_usd) == (900, 700, None)
    err = by["gpt-4o", "search-api", "error"]
    assert (err.input_tokens, err.output_tokens, err.labels["error"]) == (0, 0, "RateLimitError")
    assert all(e.event_id.count("-") == 1 and len(e.event_id) == 49 for e in events)
    book = PriceBook()
    assert all(book.price(e).source.startswith("genai-prices:") for e in events)


def test_sdk_spans_through_the_exporter(broker):
    topic = topic_of(broker, "otel-usage")
    exporter = SpendwatchSpanExporter(broker.url, topic)
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    make_spans(provider)
    assert provider.force_flush(10_000)
    provider.shutdown()
    check_events(events_on(broker, topic, 5))
    assert exporter.mapper.counts["tool"] == 1 and exporter.mapper.counts["skipped"] == 2


def recorded_spans() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    make_spans(provider)
    return list(memory.get_finished_spans())


def otlp_json(spans: list[ReadableSpan]) -> bytes:
    """OTLP/JSON as the Collector writes it: lowerCamelCase, trace and span ids in hex, not base64."""
    doc = MessageToDict(encode_spans(spans))

    def hexify(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)
        elif isinstance(node, list):
            for item in node:
                hexify(item)

    hexify(doc)
    return orjson.dumps(doc)


def test_collector_records_are_bridged_and_malformed_ones_skipped(broker):
    spans = recorded_spans()
    proto = encode_spans(spans).SerializeToString()
    for encoding, good, bad in [
        ("otlp_proto", [proto],
         [b"not otlp", b"", proto[:-7]]),
        ("otlp_json", [otlp_json(spans)],
         [b"{not json", b'{"resourceSpans": 5}', b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
          b"[1, 2]"]),
    ]:
        source, usage = topic_of(broker, f"otlp_spans-{encoding}"), topic_of(broker, f"otel-bridged-{encoding}")
        publish(broker.bootstrap, source, [(None, value) for value in [bad[0], *good, *bad[1:]]])
        bridge = OtlpBridge(broker.url, source, encoding, usage_topic=usage, group=f"g-{uuid.uuid4().hex[:6]}")
        asyncio.run(bridge.run(idle_exit=2))
        assert (bridge.records, bridge.malformed) == (1 + len(bad), len(bad)), encoding
        check_events(events_on(broker, usage, 5))
        # the same records again (a restarted bridge, a second Collector): the same event ids, counted once
        again = OtlpBridge(broker.url, source, encoding, usage_topic=usage, group=f"g-{uuid.uuid4().hex[:6]}")
        asyncio.run(again.run(idle_exit=2))
        ids = [e.event_id for e in events_on(broker, usage, 10)]
        assert len(ids) == 10 and len(set(ids)) == 5


def test_the_bridge_command_and_the_mapping(broker, capsys):
    source, usage = topic_of(broker, "otlp_spans-cli"), topic_of(broker, "otel-cli")
    publish(broker.bootstrap, source, [(None, otlp_json(recorded_spans())), (None, b"garbage")])
    assert main(["otel-bridge", "--broker", broker.url, "--topic", source, "--encoding", "otlp_json",
                 "--usage-topic", usage, "--map", "workflow=app.name,resource:service.name",
                 "--use-span-cost", "--exit-when-idle", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 records, 5 usage events, 1 malformed" in out
    events = events_on(broker, usage, 5)
    assert {e.workflow for e in events} == {"search-api"}  # the override replaced gen_ai.workflow.name
    assert [e.cost_usd for e in events if e.model == "o3-mini"] == [0.00616]
    assert main(["otel-bridge", "--broker", broker.url, "--map", "wokflow=x"]) == 2


def test_mapper_keeps_pending_tools_bounded_and_ignores_spans_without_usage():
    mapper = SpanMapper()
    mapper.MAX_PENDING = 3
    from spendwatch.integrations.otel import SpanView

    for i in range(5):
        mapper.map([SpanView("tool", f"{i:032x}", "1" * 16, 0, 1, {"gen_ai.operation.name": "execute_tool",
                                                                   "gen_ai.tool.name": "ls"})])
    assert list(mapper.pending) == [f"{i:032x}" for i in (2, 3, 4)]
    assert mapper.map([SpanView("http GET", "a" * 32, "1" * 16, 0, 1, {"http.method": "GET"}),
                       SpanView("chat", "a" * 32, "2" * 16, 0, 1, {"gen_ai.operation.name": "chat"})]) == []
