"""Every malformed event gets rejected with a reason that says what to fix; arrays keep their good items."""

import json

import orjson
import pytest

from schemas.decode import parse_record
from schemas.export import export_json_schemas

GOOD = {"type": "usage", "event_id": "e1", "ts": 1_768_435_200.5, "workflow": "w", "model": "gpt-4o",
        "input_tokens": 100, "output_tokens": 10}


def reason(obj) -> str:
    events, errors = parse_record(obj if isinstance(obj, bytes) else orjson.dumps(obj))
    assert not events and len(errors) == 1
    return errors[0].reason


@pytest.mark.parametrize("patch,expected", [
    ({"input_tokens": -1}, "input_tokens: Input should be greater than or equal to 0"),
    ({"output_tokens": 10**9}, "output_tokens: Input should be less than or equal to 100000000"),
    ({"input_tokens": "lots"}, "input_tokens must be a JSON number, not a str"),
    ({"input_tokens": "5"}, "input_tokens must be a JSON number, not a str"),  # the schema says number
    ({"type": "refund"}, "unknown event type"),
    ({"ts": 1_768_435_200_000}, "milliseconds instead of seconds"),
    ({"ts": "2026-01-15 10:00"}, "no timezone offset"),
    ({"ts": "last tuesday"}, "neither epoch seconds nor RFC 3339"),
    ({"ts": True}, "not a boolean"),
    ({"workflow": "x" * 500}, "workflow: String should have at most 128 characters"),
    ({"cache_read_tokens": 200}, "cache_read_tokens + cache_write_tokens exceed input_tokens"),
    ({"reasoning_tokens": 11}, "reasoning_tokens exceed output_tokens"),
    ({"cost_usd": -0.5}, "cost_usd: Input should be greater than or equal to 0"),
    ({"labels": {f"k{i}": "v" for i in range(40)}}, "labels: Dictionary should have at most 32 items"),
])
def test_bad_fields_are_explained(patch, expected):
    assert expected in reason({**GOOD, **patch})


def test_unknown_fields_are_ignored_and_counted_unless_the_contract_is_strict():
    from collections import Counter

    raw, unknown = orjson.dumps({**GOOD, "inputTokens": 5}), Counter()
    events, errors = parse_record(raw, unknown=unknown)
    assert len(events) == 1 and not errors and events[0].input_tokens == 100 and unknown == {"inputTokens": 1}
    events, errors = parse_record(raw, strict=True)
    assert not events and "inputTokens: unknown field (strict_contract is on; put extra attribution in 'labels')" \
        in errors[0].reason


def test_missing_required_fields_are_named():
    r = reason({"type": "usage", "event_id": "e"})
    for name in ("ts", "workflow", "model", "input_tokens", "output_tokens"):
        assert f"{name}: Field required" in r


def test_one_formatter_says_where_and_what_for_every_input():
    from pydantic import BaseModel, ValidationError, model_validator

    from schemas.errors import explain

    class Inner(BaseModel):
        n: int

    class Doc(BaseModel):
        inner: Inner
        tags: list[str] = []

        @model_validator(mode="after")
        def _whole(self) -> "Doc":
            if self.inner.n == 0:
                raise ValueError("n must not be 0")
            return self

    with pytest.raises(ValidationError) as err:
        Doc.model_validate({"inner": {"n": "x"}, "tags": ["a", 5]})
    assert explain(err.value, "config") == ("inner.n: Input should be a valid integer, unable to parse string as an "
                                            "integer; tags.1: Input should be a valid string")
    assert explain(err.value, tags={"inner"}, messages={"string_type": "a tag is text"}).endswith("tags.1: a tag is text")
    assert explain(err.value, tags={"inner"}).startswith("n: Input should be")  # a union tag is no field
    with pytest.raises(ValidationError) as err:
        Doc.model_validate({"inner": {"n": 0}})
    assert explain(err.value, "config") == "config: Value error, n must not be 0"


def test_missing_type_and_non_objects():
    assert "missing 'type'" in reason({k: v for k, v in GOOD.items() if k != "type"})
    assert "not valid JSON" in reason(b"{oops")
    assert "JSON object or array" in reason(b"42")


def test_oversize_record_is_rejected_before_parsing():
    assert "over the 100-byte limit" in parse_record(orjson.dumps(GOOD) + b" " * 100, max_bytes=100)[1][0].reason


def test_array_keeps_good_events_and_reports_bad_ones_by_index():
    events, errors = parse_record(orjson.dumps([GOOD, {**GOOD, "input_tokens": -1}, "x", {**GOOD, "event_id": "e2"}]))
    assert [e.event_id for e in events] == ["e1", "e2"]
    assert [e.index for e in errors] == [1, 2]
    assert errors[0].reason.startswith("[1] input_tokens")


def test_rfc3339_and_epoch_give_the_same_time():
    a = parse_record(orjson.dumps({**GOOD, "ts": "2026-01-15T00:00:00.5Z"}))[0][0]
    b = parse_record(orjson.dumps({**GOOD, "ts": "2026-01-15T01:00:00.5+01:00"}))[0][0]
    assert a.ts == b.ts == 1_768_435_200.5


def test_outcome_event():
    events, _ = parse_record(orjson.dumps({"type": "outcome", "event_id": "o", "ts": 1_768_435_200,
                                           "workflow": "w", "outcome": "resolved", "value_usd": 3.5}))
    assert events[0].type == "outcome" and events[0].value_usd == 3.5


def test_json_schema_export_describes_the_contract(tmp_path):
    paths = export_json_schemas(tmp_path)
    assert {p.name for p in paths} == {"usage_event.schema.json", "outcome_event.schema.json",
                                       "alert.schema.json", "control_command.schema.json", "usage_record.schema.json"}
    usage = json.loads((tmp_path / "usage_event.schema.json").read_text())
    assert {"type", "event_id", "ts", "workflow", "model", "input_tokens", "output_tokens"} <= set(
        usage["required"])
    assert "additionalProperties" not in usage  # unknown fields are ignored and counted, not refused
