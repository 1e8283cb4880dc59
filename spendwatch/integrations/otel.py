"""OpenTelemetry GenAI spans → spendwatch usage events: a `SpanExporter` for the OTel SDK, and a bridge
that reads what an OpenTelemetry Collector's `kafka` exporter publishes (`otlp_proto` or `otlp_json`).

Which spans count: a span that carries token usage (any input or output token attribute below), or a
failed one (status ERROR: an event of 0 tokens with `status="error"`), and is an inference
(`gen_ai.operation.name` absent or `chat`, `text_completion`, `generate_content`, `embeddings`;
OpenLLMetry's `traceloop.span.kind` absent or `llm`). Agent, workflow and tool spans that repeat their
children's totals are not counted again. One span is one event; its id is `<trace id>-<span id>`, so a
span delivered twice is counted once by the worker.

Tokens (first attribute present wins; `SpanMapper.TOKENS`): the current GenAI semantic conventions,
their deprecated names, OpenLLMetry's `llm.usage.*` and OpenLIT's extras. `input_tokens` includes cache
reads and writes, as the conventions say; an instrumentation that reports cache tokens beside the input
(the sum of cache tokens exceeds the input) has them added. Reasoning is part of `output_tokens`.

Tool spans (`gen_ai.operation.name == "execute_tool"`, or OpenLLMetry's `tool` spans) become the
`fingerprint` (tool name + arguments) and `observation` (its result, when recorded) of the *next*
inference in the same trace: the call that reads the tool's result. Several tools between two calls are
hashed together in order.

Attribution follows `mapping` (event field → sources in order, first with a value wins): a bare name is a
span attribute, then a resource attribute; `span:NAME` and `resource:NAME` only one of them; `trace_id`
the span's trace id; `=TEXT` a constant. `DEFAULT_MAPPING` is in the README's tables.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from schemas import limits
from spendwatch.emitter import UsageEmitter
from spendwatch.integrations._common import (
    BackgroundEmitter,
    broker_from_env,
    clip,
    clip_labels,
    provider_of,
    split_model,
)
from spendwatch.usage import digest
from streams.kafka_security import KafkaSecurity

log = logging.getLogger("spendwatch.integrations.otel")

INFERENCE_OPS = frozenset({"chat", "text_completion", "generate_content", "embeddings", "completion"})
TOOL_OP = "execute_tool"

DEFAULT_MAPPING: dict[str, tuple[str, ...]] = {
    "workflow": ("gen_ai.workflow.name", "traceloop.workflow.name", "spendwatch.workflow", "resource:service.name",
                 "=otel"),
    "agent_id": ("gen_ai.agent.id", "spendwatch.agent_id", "gen_ai.agent.name"),
    "run_id": ("gen_ai.conversation.id", "spendwatch.run_id", "session.id",
               "traceloop.association.properties.session_id"),
    "team": ("spendwatch.team", "resource:team"),
    "service": ("resource:service.name",),
}
"""Event field → sources in order. `workflow` always gets a value (the constant last)."""
MAPPED = tuple(DEFAULT_MAPPING)
DEFAULT_LABELS: dict[str, str] = {"operation": "gen_ai.operation.name", "environment":
                                  "resource:deployment.environment.name"}


@dataclass
class SpanView:
    """One finished span, from whichever source: the SDK, OTLP protobuf or OTLP JSON."""

    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any] = field(default_factory=dict)
    error: bool = False
    status_message: str | None = None


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0
    if isinstance(value, (int, float)) and value == value and value > 0:
        return min(int(value), limits.MAX_TOKENS)
    return 0


class SpanMapper:
    """Spans in end order → usage events; keeps the tool calls waiting for their trace's next inference."""

    TOKENS: dict[str, tuple[str, ...]] = {
        "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"),
        "output": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"),
        "cache_read": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                       "gen_ai.usage.input_tokens.cached", "llm.usage.cache_read_input_tokens"),
        "cache_write": ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
                        "gen_ai.usage.input_tokens.cache_write", "llm.usage.cache_creation_input_tokens"),
        "reasoning": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                      "gen_ai.usage.output_tokens.reasoning", "llm.usage.reasoning_tokens"),
    }
    PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.vendor")
    MODEL = ("gen_ai.response.model", "gen_ai.request.model", "llm.response.model", "llm.request.model")
    COST = ("gen_ai.usage.cost", "gen_ai.cost.total_cost")  # OpenLIT's (and some gateways') own price
    MAX_PENDING = 10_000

    def __init__(self, mapping: Mapping[str, Iterable[str]] | None = None, labels: Mapping[str, str] | None = None,
                 use_span_cost: bool = False):
        self.mapping = {**DEFAULT_MAPPING, **{k: tuple(v) for k, v in (mapping or {}).items()}}
        unknown = set(self.mapping) - set(MAPPED)
        if unknown:
            raise ValueError(f"mapping names unknown fields {sorted(unknown)}; known: {', '.join(MAPPED)}")
        self.labels = dict(DEFAULT_LABELS if labels is None else labels)
        self.use_span_cost = use_span_cost
        self.pending: OrderedDict[str, list[tuple[Any, Any]]] = OrderedDict()
        """trace id → (tool action, tool result) seen since the trace's last inference."""
        self.counts: Counter[str] = Counter()
        """Spans seen, by what became of them: usage, error, tool, skipped."""

    @staticmethod
    def _first(attrs: Mapping[str, Any], names: Iterable[str]) -> Any:
        for name in names:
            value = attrs.get(name)
            if value is not None and value != "":
                return value
        return None

    def lookup(self, span: SpanView, source: str) -> str | None:
        if source.startswith("="):
            return source[1:] or None
        if source == "trace_id":
            return span.trace_id
        if source.startswith("span:"):
            return clip(span.attributes.get(source[5:]))
        if source.startswith("resource:"):
            return clip(span.resource.get(source[9:]))
        return clip(span.attributes.get(source)) or clip(span.resource.get(source))

    def _kind(self, span: SpanView) -> str:
        a = span.attributes
        op = str(a.get("gen_ai.operation.name") or "").lower()
        kind = str(a.get("traceloop.span.kind") or "").lower()
        if op == TOOL_OP or kind == "tool":
            return "tool"
        if (op and op not in INFERENCE_OPS) or (kind and kind != "llm"):
            return "skipped"
        if any(self._first(a, self.TOKENS[k]) is not None for k in ("input", "output")):
            return "usage"
        if span.error and (op or self._first(a, self.MODEL) is not None):
            return "usage"  # a failed call: reported with 0 tokens and status "error"
        return "skipped"

    def map(self, spans: Iterable[SpanView]) -> list[dict[str, Any]]:
        events = []
        for span in sorted(spans, key=lambda s: s.end_ns):
            kind = self._kind(span)
            self.counts["span"] += 1
            if kind == "tool":
                self._tool(span)
            elif kind == "usage":
                events.append(self.event(span))
            self.counts[kind] += 1
        return events

    def _tool(self, span: SpanView) -> None:
        a = span.attributes
        name = self._first(a, ("gen_ai.tool.name", "traceloop.entity.name")) or span.name
        action = {"name": name, "arguments": self._first(a, ("gen_ai.tool.call.arguments", "traceloop.entity.input"))}
        result = self._first(a, ("gen_ai.tool.call.result", "traceloop.entity.output"))
        self.pending.setdefault(span.trace_id, []).append((action, result))
        self.pending.move_to_end(span.trace_id)
        while len(self.pending) > self.MAX_PENDING:
            self.pending.popitem(last=False)

    def event(self, span: SpanView) -> dict[str, Any]:
        a = span.attributes
        tokens = {k: _int(self._first(a, names)) for k, names in self.TOKENS.items()}
        inp, out = tokens["input"], tokens["output"]
        read, write = tokens["cache_read"], tokens["cache_write"]
        if read + write > inp:  # cache tokens reported beside the input (Anthropic's own way)
            inp = min(inp + read + write, limits.MAX_TOKENS)
        out = max(out, tokens["reasoning"])
        model, provider = split_model(str(self._first(a, self.MODEL) or "unknown"),
                                      provider_of(self._first(a, self.PROVIDER)))
        event: dict[str, Any] = {
            "type": "usage", "event_id": f"{span.trace_id}-{span.span_id}",
            "ts": span.end_ns / 1e9 if span.end_ns > 0 else time.time(),
            "model": clip(model, limits.MAX_NAME_LEN) or "unknown", "provider": clip(provider, limits.MAX_NAME_LEN),
            "input_tokens": inp, "output_tokens": out, "cache_read_tokens": read or None,
            "cache_write_tokens": write or None, "reasoning_tokens": tokens["reasoning"] or None,
            "status": "error" if span.error else "ok",
        }
        if 0 <= span.end_ns - span.start_ns < 86_400 * 10**9:
            event["latency_ms"] = round((span.end_ns - span.start_ns) / 1e6, 3)
        for name, sources in self.mapping.items():
            event[name] = next((v for s in sources if (v := self.lookup(span, s)) is not None), None)
        event["workflow"] = clip(event["workflow"], limits.MAX_NAME_LEN) or "otel"
        for name in ("team", "service"):
            event[name] = clip(event[name], limits.MAX_NAME_LEN)
        tools = self.pending.pop(span.trace_id, None)
        if tools:
            actions = [t[0] for t in tools]
            event["fingerprint"] = digest(actions[0] if len(actions) == 1 else actions)
            results = [t[1] for t in tools]
            if any(r is not None for r in results):
                event["observation"] = digest(results[0] if len(results) == 1 else results)
        cost = _float(self._first(a, self.COST))
        if self.use_span_cost and cost is not None:
            event["cost_usd"] = cost
        labels = {name: self.lookup(span, source) for name, source in self.labels.items()}
        if span.error:
            labels["error"] = self._first(a, ("error.type",)) or clip(span.status_message) or "error"
        event["labels"] = clip_labels(labels)
        if span.error:
            self.counts["error"] += 1
        return {k: v for k, v in event.items() if v is not None and v != {}}


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if 0 <= f <= limits.MAX_COST_USD else None


# ---- sources of spans ---------------------------------------------------------------------------------

def view_of_sdk_span(span: ReadableSpan) -> SpanView:
    ctx = span.get_span_context()
    return SpanView(
        name=span.name, trace_id=f"{ctx.trace_id:032x}" if ctx else "0" * 32,
        span_id=f"{ctx.span_id:016x}" if ctx else "0" * 16, start_ns=span.start_time or 0,
        end_ns=span.end_time or 0, attributes=dict(span.attributes or {}),
        resource=dict(span.resource.attributes) if span.resource else {},
        error=span.status.status_code is StatusCode.ERROR, status_message=span.status.description)


class MalformedPayload(ValueError):
    """An OTLP record that cannot be read."""


def _any_value(v: Any) -> Any:
    """An OTLP `AnyValue`, protobuf message or JSON object, as a plain value."""
    if isinstance(v, Mapping):  # OTLP/JSON: {"stringValue": ...}, ints as strings
        for key in ("stringValue", "boolValue", "doubleValue"):
            if key in v:
                return v[key]
        if "intValue" in v:
            return int(v["intValue"])
        if "arrayValue" in v:
            return [_any_value(x) for x in (v["arrayValue"] or {}).get("values", [])]
        return None
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, which)
    return None


def _attrs(items: Iterable[Any]) -> dict[str, Any]:
    out = {}
    for kv in items:
        key = kv.get("key") if isinstance(kv, Mapping) else kv.key
        value = kv.get("value", {}) if isinstance(kv, Mapping) else kv.value
        if key:
            out[str(key)] = _any_value(value)
    return out


def decode_otlp(payload: bytes | None, encoding: str) -> list[SpanView]:
    """One Collector `kafka` exporter record (`ExportTraceServiceRequest`) → spans; `MalformedPayload`
    if it is not one."""
    if not payload:
        raise MalformedPayload("empty record")
    try:
        if encoding == "otlp_proto":
            return _decode_proto(payload)
        if encoding == "otlp_json":
            return _decode_json(orjson.loads(payload))
    except MalformedPayload:
        raise
    except Exception as err:  # protobuf's DecodeError, JSON errors, wrong types in a well-formed document
        raise MalformedPayload(f"not an OTLP {encoding} traces record: {type(err).__name__}: {err}") from None
    raise ValueError(f"unknown encoding {encoding!r}; use otlp_proto or otlp_json")


def _decode_proto(payload: bytes) -> list[SpanView]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    spans = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                if len(s.trace_id) != 16 or len(s.span_id) != 8:
                    raise MalformedPayload("span without a valid trace or span id")
                spans.append(SpanView(
                    name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano, attributes=_attrs(s.attributes),
                    resource=resource, error=s.status.code == 2, status_message=s.status.message or None))
    return spans


def _decode_json(doc: Any) -> list[SpanView]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("resourceSpans", []), list):
        raise MalformedPayload("not an OTLP/JSON traces document (no resourceSpans list)")
    spans = []
    for rs in doc.get("resourceSpans", []):
        resource = _attrs((rs.get("resource") or {}).get("attributes", []))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                trace_id, span_id = str(s.get("traceId", "")).lower(), str(s.get("spanId", "")).lower()
                if len(trace_id) != 32 or len(span_id) != 16:
                    raise MalformedPayload("span without a valid hex traceId or spanId")
                bytes.fromhex(trace_id + span_id)
                status = s.get("status") or {}
                code = status.get("code")
                spans.append(SpanView(
                    name=str(s.get("name", "")), trace_id=trace_id, span_id=span_id,
                    start_ns=int(s.get("startTimeUnixNano", 0)), end_ns=int(s.get("endTimeUnixNano", 0)),
                    attributes=_attrs(s.get("attributes", [])), resource=resource,
                    error=code in (2, "STATUS_CODE_ERROR"), status_message=status.get("message") or None))
    return spans


# ---- the SDK exporter ---------------------------------------------------------------------------------

class SpendwatchSpanExporter(SpanExporter):
    """`BatchSpanProcessor(SpendwatchSpanExporter(broker=...))`: GenAI spans → usage events on Kafka.

    The processor calls `export` from its own thread, which has no event loop: events go through an
    emitter on a loop of its own (started on the first event), so nothing depends on the application's
    loops. `export` never blocks on Kafka and never fails the processor; `force_flush` and `shutdown`
    wait for delivery."""

    def __init__(self, broker: str | None = None, topic: str = "spendwatch.usage", *,
                 mapping: Mapping[str, Iterable[str]] | None = None, labels: Mapping[str, str] | None = None,
                 use_span_cost: bool = False, **emitter_kwargs: Any):
        self.broker = broker or broker_from_env()
        self.mapper = SpanMapper(mapping, labels, use_span_cost)
        self.background = BackgroundEmitter(lambda: UsageEmitter(self.broker, topic, **emitter_kwargs))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            for event in self.mapper.map(view_of_sdk_span(s) for s in spans):
                self.background.emit(event)
        except Exception:  # a span this code cannot read must not stop the processor
            log.exception("spendwatch span exporter: could not map a batch of %d spans", len(spans))
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.background.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.background.flush(10)
        self.background.stop()


# ---- the Collector bridge -----------------------------------------------------------------------------

class OtlpBridge:
    """Consumes the Collector's `kafka` exporter topic (consumer group `group`), publishes usage events to
    `usage_topic`, and commits a batch's offsets once Kafka confirmed its events (at least once; span-based
    event ids make a redelivered span count once). A record that is not OTLP is counted in `malformed`
    and skipped."""

    def __init__(self, broker: str, topic: str = "otlp_spans", encoding: str = "otlp_proto", *,
                 usage_topic: str = "spendwatch.usage", group: str = "spendwatch-otel-bridge",
                 mapper: SpanMapper | None = None, security: KafkaSecurity | None = None):
        if encoding not in ("otlp_proto", "otlp_json"):
            raise ValueError(f"unknown encoding {encoding!r}; use otlp_proto or otlp_json")
        self.broker, self.topic, self.encoding, self.group = broker, topic, encoding, group
        self.usage_topic = usage_topic
        self.security = security if security is not None else KafkaSecurity.from_env()
        """SASL/TLS for both its consumer and its emitter; by default the SPENDWATCH_KAFKA_* variables."""
        self.mapper = mapper or SpanMapper()
        self.records = self.events = self.malformed = 0
        self._logged_at = float("-inf")

    def handle(self, value: bytes | None) -> list[dict[str, Any]]:
        """One record → its usage events; a malformed record is counted and gives none."""
        self.records += 1
        try:
            spans = decode_otlp(value, self.encoding)
        except MalformedPayload as err:
            self.malformed += 1
            if time.monotonic() - self._logged_at > 60:
                self._logged_at = time.monotonic()
                log.warning("otel bridge: skipped a record that is not OTLP %s (%s); %d so far", self.encoding,
                            err, self.malformed)
            return []
        events = self.mapper.map(spans)
        self.events += len(events)
        return events

    async def run(self, stop: asyncio.Event | None = None, idle_exit: float | None = None) -> None:
        """Bridge until `stop` is set (or, with `idle_exit`, until no record came for that long)."""
        from aiokafka import AIOKafkaConsumer

        from spendwatch.emitter import bootstrap_of

        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=bootstrap_of(self.broker), group_id=self.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    **self.security.aiokafka_kwargs())
        emitter = UsageEmitter(self.broker, self.usage_topic, security=self.security)
        await consumer.start()
        await emitter.start()
        idle_since = time.monotonic()
        try:
            while not (stop and stop.is_set()):
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                if not batch:
                    if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                        return
                    continue
                idle_since = time.monotonic()
                for records in batch.values():
                    for rec in records:
                        for event in self.handle(rec.value):
                            await emitter.put(event)  # waits for room: nothing is dropped
                await emitter.flush()
                while emitter.pending:  # Kafka is away: the offsets wait for it, nothing is skipped
                    log.warning("otel bridge: %d usage events not confirmed by Kafka yet; waiting", emitter.pending)
                    await emitter.flush(10)
                await consumer.commit()
        finally:
            await emitter.stop()
            await consumer.stop()
