"""Usage and outcome events: the input wire contract, as pydantic models.

These models are the source of truth (JSON Schema export, readable errors);
`schemas.structs` derives the engine's fast types from them and
`schemas.decode` turns raw records into events.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from schemas import limits

Id = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_ID_LEN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_NAME_LEN)]
Tokens = Annotated[int, Field(ge=0, le=limits.MAX_TOKENS)]


RFC3339 = (r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
           r"([.,][0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
"""An RFC 3339 date-time in 2000..2099, as the exported JSON Schema's pattern says it (ECMA and Python
read it alike: ASCII digits only, and `$` is held to the end by `fullmatch`). Two limits the pattern
cannot state: a calendar day that does not exist (Feb 30) and an offset that moves 2000-01-01 or
2099-12-31 across the range."""
_RFC3339 = re.compile(RFC3339[1:-1])


def parse_ts(value: Any, name: str = "ts", naive_utc: bool = False) -> float:
    """Event time as epoch seconds, from a number or an RFC 3339 string: the one timestamp rule of the
    wire, the replay readers and the labels files (`name` is the field errors name).

    `naive_utc` also takes any ISO 8601 date-time `datetime.fromisoformat` reads, and one without an
    offset as UTC (`2023-11-16 18:15:46.6805900`): recorded traces and series exports (Azure, NAB) write
    UTC that way. The wire refuses it: a live producer can say its offset, and a guessed zone would
    move spend between days."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be epoch seconds or an RFC 3339 string, not a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip() if naive_utc else value
        try:
            dt = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        except ValueError:
            dt = None
        if dt is not None and dt.tzinfo is None:
            if not naive_utc:
                raise ValueError(f"{name} {value!r} has no timezone offset (RFC 3339 needs Z or +HH:MM)")
            dt = dt.replace(tzinfo=UTC)
        if dt is None or not (naive_utc or _RFC3339.fullmatch(value)):
            raise ValueError(f"{name} {value!r} is neither epoch seconds nor RFC 3339 "
                             "(e.g. 2026-01-15T10:00:00Z)") from None
        ts = dt.timestamp()
    else:
        raise ValueError(f"{name} must be epoch seconds or an RFC 3339 string")
    if not limits.TS_MIN <= ts <= limits.TS_MAX:
        raise ValueError(f"{name} {value!r} is outside 2000..2100 (milliseconds instead of seconds?)")
    return ts


Ts = Annotated[float, BeforeValidator(parse_ts), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": limits.TS_MIN, "maximum": limits.TS_MAX},
              {"type": "string", "pattern": RFC3339}]})]
"""A wire timestamp field: epoch seconds or RFC 3339 in, epoch seconds out (`parse_ts`)."""


def json_number(value: Any, info: ValidationInfo) -> Any:
    """A number field takes a JSON number, as the exported schema says: pydantic's lax mode would
    read `true` as 1 and `"5"` as 5. (msgspec, the fast path, never does.)"""
    if isinstance(value, (bool, str)):
        raise ValueError(f"{info.field_name} must be a JSON number, not a {type(value).__name__}")
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
    ts: Ts = Field(description="event time: epoch seconds in 2000..2100 (milliseconds are refused), or RFC 3339 "
                               "with an offset")
    workflow: Name
    agent_id: Id | None = None
    run_id: Id | None = None


class UsageEvent(_Event):
    """One LLM call's token usage. `input_tokens` includes cache tokens;
    `output_tokens` includes reasoning tokens (genai-prices' convention).

    Rules JSON Schema cannot state, checked by the worker: cache_read_tokens +
    cache_write_tokens <= input_tokens; cache_write_1h_tokens <= cache_write_tokens;
    reasoning_tokens <= output_tokens."""

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
    """A short hash of the action or tool call this step performed: the strongest loop signal."""
    observation: Id | None = None
    """A short hash of what that action returned (its tool result): the same action with the same
    observation again and again is a stuck agent, the same action with a changing one is polling."""
    labels: dict[Name, Annotated[str, StringConstraints(max_length=limits.MAX_ID_LEN)]] = Field(
        default_factory=dict, max_length=limits.MAX_LABELS
    )

    _json_number = field_validator("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                   "cache_write_1h_tokens", "reasoning_tokens", "step", "cost_usd", "latency_ms",
                                   mode="before")(json_number)

    @model_validator(mode="after")
    def _token_parts(self) -> UsageEvent:
        check_token_parts(self)
        return self


class OutcomeEvent(_Event):
    """Work that succeeded (a resolved ticket, a merged PR): turns spend into value."""

    type: Literal["outcome"]
    outcome: Name
    value_usd: Annotated[float, Field(ge=0, le=limits.MAX_COST_USD, allow_inf_nan=False)] | None = None

    _json_number = field_validator("value_usd", mode="before")(json_number)


WireEvent = Annotated[UsageEvent | OutcomeEvent, Field(discriminator="type")]
"""A wire event as pydantic validates it (readable errors, the JSON Schema); the engine's own
event type is the faster `schemas.structs.Event`, derived from these models."""
ADAPTER: TypeAdapter[UsageEvent | OutcomeEvent] = TypeAdapter(WireEvent)
