"""The exported JSON Schema says exactly what the worker accepts (issue 12).

Generated events, valid and invalid near every edge, are accepted by the worker's decoder if
and only if `jsonschema` validates them against `usage_record.schema.json`, except for the rules
the schema documents it cannot state (cross-field token sums, calendar days, offsets across the
year range). Before: RFC 3339 `ts` failed the schema, `"5"` passed the worker as 5 tokens.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from schemas import limits
from schemas.decode import parse_record
from schemas.events import _RFC3339
from schemas.export import json_schema

jsonschema = pytest.importorskip("jsonschema")
VALIDATOR = jsonschema.Draft202012Validator(json_schema("usage_record"))

USAGE = {"type": "usage", "event_id": "e1", "ts": 1_768_435_200, "workflow": "w", "model": "gpt-4o",
         "input_tokens": 1_000, "output_tokens": 100}
OUTCOME = {"type": "outcome", "event_id": "o1", "ts": 1_768_435_200, "workflow": "w", "outcome": "resolved"}
INT_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
              "reasoning_tokens", "step")
FLOAT_FIELDS = ("cost_usd", "latency_ms", "value_usd")
STR_FIELDS = ("event_id", "workflow", "model", "provider", "team", "service", "agent_id", "run_id", "status",
              "fingerprint", "observation", "outcome")

edge_ints = st.sampled_from([-1, 0, 1, 10_000_000, 10_000_001, limits.MAX_TOKENS, limits.MAX_TOKENS + 1, 2**62])
numbers = st.one_of(edge_ints, edge_ints.map(float), st.floats(-1, 2e8, allow_nan=False), st.sampled_from([
    0.5, 1e-9, 86_400_000.0, 86_400_000.5, limits.MAX_COST_USD, limits.MAX_COST_USD * 1.0001]))
junk = st.one_of(st.booleans(), st.none(), st.just([]), st.just({}), numbers.map(str),
                 st.text(max_size=3))
texts = st.one_of(st.sampled_from(["", "a", "x" * 128, "x" * 129, "x" * 256, "x" * 257, "é" * 128, "é" * 129]),
                  st.text(max_size=20))


def two(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda n: f"{n:02d}")


rfc3339 = st.builds(
    lambda y, mo, d, h, mi, s, frac, t, z: f"{y}-{mo}-{d}{t}{h}:{mi}:{s}{frac}{z}",
    st.integers(1999, 2101).map(str), two(0, 13), two(0, 32), two(0, 24), two(0, 60), two(0, 60),
    st.sampled_from(["", ".5", ",25", ".123456789", "."]), st.sampled_from(["T", "t", " "]),
    st.sampled_from(["Z", "z", "+01:00", "-05:30", "+24:00", "+0100", "", "+01:60"]))
timestamps = st.one_of(rfc3339, st.floats(9e8, 4.2e9, allow_nan=False), st.sampled_from([
    limits.TS_MIN, limits.TS_MAX, limits.TS_MIN - 1, limits.TS_MAX + 1, 1_768_435_200_000, "1768435200",
    "2026-01-15", "2026-01-15T10:00Z"]))


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    ev = dict(draw(st.sampled_from([USAGE, OUTCOME])))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([*INT_FIELDS, *FLOAT_FIELDS, *STR_FIELDS, "ts", "labels", "type", "drop",
                                     "unknown"]))
        if name == "drop":
            ev.pop(draw(st.sampled_from(sorted(ev))), None)
        elif name == "unknown":
            ev[draw(st.sampled_from(["region", "x-new", "Input_tokens"]))] = draw(junk)
        elif name == "ts":
            ev["ts"] = draw(timestamps)
        elif name == "labels":
            ev["labels"] = draw(st.one_of(junk, st.dictionaries(texts, st.one_of(texts, junk), max_size=3),
                                          st.just({f"k{i}": "v" for i in range(33)})))
        elif name == "type":
            ev["type"] = draw(st.one_of(st.sampled_from(["usage", "outcome", "refund", "Usage"]), junk))
        elif name in STR_FIELDS:
            ev[name] = draw(st.one_of(texts, junk))
        else:
            ev[name] = draw(st.one_of(numbers, junk))
    return ev


def documented_exception(ev: dict[str, Any]) -> bool:
    """True where the schema says it cannot decide (see schemas.events and the schema descriptions)."""
    ints = {k: ev.get(k, 0) for k in INT_FIELDS if k != "step"}
    if all(type(v) in (int, float) for v in ints.values()) and ev.get("type") == "usage":
        if (ints["cache_read_tokens"] + ints["cache_write_tokens"] > ints["input_tokens"]
                or ints["cache_write_1h_tokens"] > ints["cache_write_tokens"]
                or ints["reasoning_tokens"] > ints["output_tokens"]):
            return True
    ts = ev.get("ts")
    if isinstance(ts, str) and _RFC3339.fullmatch(ts):
        try:
            stamp = datetime.fromisoformat(ts.upper().replace("Z", "+00:00")).timestamp()
        except ValueError:
            return True  # a day the calendar does not have
        return not limits.TS_MIN <= stamp <= limits.TS_MAX  # an offset across the range's edge
    return False


FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"  # make fuzz


@settings(max_examples=20_000 if FUZZ else 600, deadline=None, derandomize=not FUZZ, database=None)
@given(st.one_of(events(), st.lists(events(), min_size=1, max_size=3)))
def test_the_worker_accepts_what_the_schema_validates(record: Any) -> None:
    assume(not any(documented_exception(e) for e in (record if isinstance(record, list) else [record])))
    accepted, errors = parse_record(orjson.dumps(record))
    note(f"worker errors: {[e.reason for e in errors]}")
    schema_ok = VALIDATOR.is_valid(record)
    assert (not errors) == schema_ok, (record, [e.reason for e in errors],
                                        [e.message for e in VALIDATOR.iter_errors(record)][:3])
