"""Usage and outcome events: the input wire contract, as pydantic models.

These models are the source of truth (JSON Schema export, readable errors);
`schemas.structs` derives the engine's fast types from them and
`schemas.decode` turns raw records into events.
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
    ValidationInfo,
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


def no_bool(value: Any, info: ValidationInfo) -> Any:
    """pydantic reads `true` as 1 in a number field; a boolean there is a publisher's bug, not a token.
    (msgspec, the fast path, never reads a boolean as a number.)"""
    if isinstance(value, bool):
        raise ValueError(f"{info.field_name} must be a number, not a boolean")
    return value


def check_token_parts(ev: Any) -> None:
    """Token parts must fit in their totals (shared by the model and its Struct in `schemas.structs`)."""
    if ev.cache_write_1h_tokens > ev.cache_write_tokens:
        raise ValueError("cache_write_1h_tokens exceed cache_write_tokens; cache_write_tokens must count "
                         "every cache write, the 1-hour ones included")
    if ev.cache_read_tokens + ev.cache_write_tokens > ev.input_tokens:
        raise ValueError(
            "cache_read_tokens + cache_write_tokens exceed input_tokens; input_tokens must "
            "count the whole prompt including cache (Anthropic: add cache tokens to input_tokens)"
        )
    if ev.reasoning_tokens > ev.output_tokens:
        raise ValueError("reasoning_tokens exceed output_tokens; output_tokens must include reasoning")


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
    cache_write_1h_tokens: Tokens = 0
    """The part of `cache_write_tokens` written with a 1-hour lifetime (Anthropic bills it higher)."""
    reasoning_tokens: Tokens = 0
    cost_usd: Annotated[float, Field(ge=0, le=limits.MAX_COST_USD, allow_inf_nan=False)] | None = None
    status: Name = "ok"
    latency_ms: Annotated[float, Field(ge=0, le=86_400_000)] | None = None
    fingerprint: Id | None = None
    labels: dict[Name, Annotated[str, StringConstraints(max_length=limits.MAX_ID_LEN)]] = Field(
        default_factory=dict, max_length=limits.MAX_LABELS
    )

    _no_bool = field_validator("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                               "cache_write_1h_tokens", "reasoning_tokens", "step", "cost_usd", "latency_ms", mode="before")(no_bool)

    @model_validator(mode="after")
    def _token_parts(self) -> UsageEvent:
        check_token_parts(self)
        return self


class OutcomeEvent(_Event):
    """Work that succeeded (a resolved ticket, a merged PR): turns spend into value."""

    type: Literal["outcome"]
    outcome: Name
    value_usd: Annotated[float, Field(ge=0, le=limits.MAX_COST_USD, allow_inf_nan=False)] | None = None

    _no_bool = field_validator("value_usd", mode="before")(no_bool)


Event = Annotated[Union[UsageEvent, OutcomeEvent], Field(discriminator="type")]
ADAPTER: TypeAdapter[UsageEvent | OutcomeEvent] = TypeAdapter(Event)
