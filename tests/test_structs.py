"""The fast decoder (msgspec Structs) never accepts what the pydantic contract rejects,
and gives the same event when both accept."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import orjson
import pytest
from pydantic import ValidationError

from schemas import limits
from schemas.decode import parse_record
from schemas.events import ADAPTER
from schemas.structs import Event, from_model, to_wire

USAGE = {"type": "usage", "event_id": "e-1", "ts": 1_800_000_000.5, "workflow": "support", "model": "gpt-4o",
         "input_tokens": 1200, "output_tokens": 80, "provider": "openai", "team": "cx", "agent_id": "a",
         "run_id": "r", "step": 3, "cache_read_tokens": 200, "cache_write_tokens": 0, "reasoning_tokens": 10,
         "cost_usd": 0.01, "status": "ok", "latency_ms": 812.5, "fingerprint": "search", "observation": "3f9a", "service": "api",
         "labels": {"region": "eu"}}
OUTCOME = {"type": "outcome", "event_id": "o-1", "ts": 1_800_000_000, "workflow": "support", "outcome": "resolved",
           "value_usd": 3.5, "run_id": "r"}

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.5, 2**63, "", "x", "7", "1.5", "a" * (limits.MAX_ID_LEN + 1),
    "a" * limits.MAX_NAME_LEN, "a" * (limits.MAX_NAME_LEN + 1), [], {}, {"k": "v"}, {"": "v"}, {"k": 1},
    {f"k{i}": "v" for i in range(limits.MAX_LABELS + 1)}, limits.MAX_TOKENS, limits.MAX_TOKENS + 1,
    limits.TS_MIN - 1, limits.TS_MAX + 1, 1_700_000_000_000, "2026-11-23T10:00:00Z", "2026-11-23T10:00:00",
    limits.MAX_COST_USD * 2, 1e308, "usage", "outcome", "other",
]


def mutations(base: dict[str, Any]):
    """Every field set to every odd value, every field dropped, and an unknown field added."""
    for key, value in itertools.product(list(base) + ["extra"], ODD_VALUES):
        yield {**base, key: value}
    for key in base:
        yield {k: v for k, v in base.items() if k != key}
    yield {**base, "input_tokens": 10, "cache_read_tokens": 8, "cache_write_tokens": 8}
    yield {**base, "output_tokens": 5, "reasoning_tokens": 6}


def slow(doc: dict[str, Any]) -> Any:
    try:
        return from_model(ADAPTER.validate_python(doc))
    except ValidationError:
        return None


@pytest.mark.parametrize("base", [USAGE, OUTCOME], ids=["usage", "outcome"])
def test_fast_path_accepts_nothing_the_contract_rejects(base):
    checked = accepted = 0
    for doc in mutations(base):
        raw = orjson.dumps(doc, default=str)
        expected = slow(doc)
        for decode in (lambda: msgspec.json.decode(raw, type=Event), lambda: msgspec.convert(doc, Event)):
            try:
                fast = decode()
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue
            accepted += 1
            assert expected is not None, f"fast path accepted what pydantic rejects: {doc}"
            assert fast == expected and type(fast) is type(expected), doc
        checked += 1
    assert checked > 250 and accepted > 50  # the corpus exercises both outcomes


def test_parse_record_gives_the_same_events_on_fast_and_lax_paths():
    fast, _ = parse_record(orjson.dumps([USAGE, OUTCOME]))
    lax, errors = parse_record(orjson.dumps([{**USAGE, "ts": "2027-01-15T08:00:00.5Z", "input_tokens": 1200.0},
                                             {**OUTCOME, "ts": 1_800_000_000.0}]))
    assert not errors and [type(e) for e in fast] == [type(e) for e in lax]
    assert to_wire(lax[0]) == to_wire(fast[0])  # 2027-01-15T08:00:00.5Z is 1_800_000_000.5, 1200.0 is 1200
    assert to_wire(fast[1]) == to_wire(lax[1]) == {**OUTCOME, "ts": 1_800_000_000.0}
    assert to_wire(fast[0]) == {k: v for k, v in USAGE.items() if v != 0}  # all but defaults round-trip
