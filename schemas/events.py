"""Usage and outcome events: the input wire contract.

A Kafka record holds one event object or a JSON array of them. `parse_record`
turns raw bytes into valid events plus one clear reason per rejected event, so
one bad event in an array never takes its neighbours down with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas import limits

Id = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_ID_LEN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_NAME_LEN)]
Tokens = Annotated[int, Field(ge=0, le=limits.MAX_TOKENS)]


def parse_ts(value: Any) -> float:
    """Event time as epoch seconds, from a number or an RFC 3339 string."""
    if isinstance(value, bool):
        raise ValueError("ts must be epoch seconds or an RFC 3339 string, not a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"ts {value!r} is neither epoch seconds nor RFC 3339") from None
        if dt.tzinfo is None:
            raise ValueError(f"ts {value!r} has no timezone offset (RFC 3339 needs Z or +HH:MM)")
        ts = dt.timestamp()
    else:
        raise ValueError("ts must be epoch seconds or an RFC 3339 string")
    if not limits.TS_MIN <= ts <= limits.TS_MAX:
        raise ValueError(f"ts {value!r} is outside 2000..2100 (milliseconds instead of seconds?)")
    return ts


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    ts: float
    workflow: Name
    agent_id: Id | None = None
    run_id: Id | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> float:
        return parse_ts(value)


class UsageEvent(_Event):
    """One LLM call's token usage. `input_tokens` includes cache tokens;
    `output_tokens` includes reasoning tokens (genai-prices' convention)."""

    type: Literal["usage"]
    model: Name
    input_tokens: Tokens
    output_tokens: Tokens
    provider: Name | None = None
    team: Name | None = None
    service: Name | None = None
    step: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    cache_read_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    cost_usd: Annotated[float, Field(ge=0, le=limits.MAX_COST_USD, allow_inf_nan=False)] | None = None
    status: Name = "ok"
    latency_ms: Annotated[float, Field(ge=0, le=86_400_000)] | None = None
    fingerprint: Id | None = None
    labels: dict[Name, Annotated[str, StringConstraints(max_length=limits.MAX_ID_LEN)]] = Field(
        default_factory=dict, max_length=limits.MAX_LABELS
    )

    @model_validator(mode="after")
    def _token_parts(self) -> UsageEvent:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                "cache_read_tokens + cache_write_tokens exceed input_tokens; input_tokens must "
                "count the whole prompt including cache (Anthropic: add cache tokens to input_tokens)"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens exceed output_tokens; output_tokens must include reasoning")
        return self

    @property
    def is_error(self) -> bool:
        return self.status != "ok"


class OutcomeEvent(_Event):
    """Work that succeeded (a resolved ticket, a merged PR): turns spend into value."""

    type: Literal["outcome"]
    outcome: Name
    value_usd: Annotated[float, Field(ge=0, le=limits.MAX_COST_USD, allow_inf_nan=False)] | None = None


Event = Annotated[Union[UsageEvent, OutcomeEvent], Field(discriminator="type")]
_adapter: TypeAdapter[UsageEvent | OutcomeEvent] = TypeAdapter(Event)
_many: TypeAdapter[list[UsageEvent | OutcomeEvent]] = TypeAdapter(list[Event])


class RecordError(ValueError):
    """Why (part of) a record was rejected; `index` is the array position, if any."""

    def __init__(self, reason: str, index: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.index = index


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        loc_parts = e["loc"][1:] if e["loc"][:1] in (("usage",), ("outcome",)) else e["loc"]
        loc = ".".join(str(p) for p in loc_parts) or "event"
        msg = e["msg"]
        if e["type"] == "union_tag_invalid":
            msg = "unknown event type (expected 'usage' or 'outcome')"
        elif e["type"] == "union_tag_not_found":
            msg = "missing 'type' (expected 'usage' or 'outcome')"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field (put extra attribution in 'labels')"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def validate_event(obj: Any) -> UsageEvent | OutcomeEvent:
    """Validate one decoded JSON object, raising RecordError with a readable reason."""
    try:
        return _adapter.validate_python(obj)
    except ValidationError as err:
        raise RecordError(_explain(err)) from None


def parse_record(
    raw: bytes, max_bytes: int = limits.MAX_RECORD_BYTES
) -> tuple[list[UsageEvent | OutcomeEvent], list[RecordError]]:
    """Decode one Kafka record value into (valid events, errors)."""
    if len(raw) > max_bytes:
        return [], [RecordError(f"record is {len(raw)} bytes, over the {max_bytes}-byte limit")]
    try:  # fast path: pydantic-core parses and validates the whole record in one pass
        many = _many if raw.lstrip()[:1] == b"[" else None
        events = many.validate_json(raw) if many else [_adapter.validate_json(raw)]
        if len(events) <= limits.MAX_EVENTS_PER_RECORD:
            return events, []
    except ValueError:
        pass  # find out exactly which events are bad, and why
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return [], [RecordError(f"not valid JSON: {err}")]
    if isinstance(doc, dict):
        try:
            return [validate_event(doc)], []
        except RecordError as err:
            return [], [err]
    if not isinstance(doc, list):
        return [], [RecordError(f"record must be a JSON object or array of objects, got {type(doc).__name__}")]
    if len(doc) > limits.MAX_EVENTS_PER_RECORD:
        return [], [RecordError(f"array of {len(doc)} events, over the {limits.MAX_EVENTS_PER_RECORD} limit")]
    events, errors = [], []
    for i, obj in enumerate(doc):
        if not isinstance(obj, dict):
            errors.append(RecordError(f"[{i}]: array items must be event objects", i))
            continue
        try:
            events.append(validate_event(obj))
        except RecordError as err:
            errors.append(RecordError(f"[{i}] {err.reason}", i))
    return events, errors
