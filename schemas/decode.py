"""Raw records → events: msgspec on the fast path, pydantic for exact reasons.

A Kafka record holds one event object or a JSON array of them. `parse_record`
turns raw bytes into valid events plus one clear reason per rejected event, so
one bad event in an array never takes its neighbours down with it. Valid
records (nearly all) are decoded by msgspec into `schemas.structs` types in one
pass; only a record msgspec refuses is re-read item by item by the pydantic
models, which also accept RFC 3339 `ts` and give the exact reason for a refusal.

The contract is forward-compatible: a field this version does not know (a newer
publisher's `"region"`) is ignored and counted by name in `unknown`, and the
event's spend counts. `strict=True` rejects such events instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import orjson
from pydantic import ValidationError

from schemas import limits
from schemas.errors import explain
from schemas.events import ADAPTER
from schemas.structs import BY_TYPE, Event, from_model

MAX_UNKNOWN_NAMES = 1_000
"""Distinct unknown field names counted; the rest as OTHER (names are the publisher's to choose)."""
OTHER = "(other)"
_KNOWN = {tag: {"type", *struct.__struct_fields__} for tag, struct in BY_TYPE.items()}

_one = msgspec.json.Decoder(Event)
_many = msgspec.json.Decoder(list[Event])


class RecordError(ValueError):
    """Why (part of) a record was rejected; `index` is the array position, if any."""

    def __init__(self, reason: str, index: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.index = index


_HINTS = {
    "union_tag_invalid": "unknown event type (expected 'usage' or 'outcome')",
    "union_tag_not_found": "missing 'type' (expected 'usage' or 'outcome')",
    "extra_forbidden": "unknown field (strict_contract is on; put extra attribution in 'labels')",
}
"""What a publisher needs to hear instead of pydantic's message, by error type."""


def _known_only(obj: dict[str, Any], tag: Any, unknown: Counter[str]) -> dict[str, Any]:
    """`obj` without the fields its type does not have, counted by name in `unknown`."""
    known = _KNOWN.get(tag) if isinstance(tag, str) else None
    if known is None or obj.keys() <= known:
        return obj
    for name in obj.keys() - known:
        unknown[name if name in unknown or len(unknown) < MAX_UNKNOWN_NAMES else OTHER] += 1
    return {k: v for k, v in obj.items() if k in known}


def validate_event(obj: Any, strict: bool = False, unknown: Counter[str] | None = None) -> Any:
    """One decoded JSON object as an engine event, or RecordError with a readable reason.
    Unknown fields are dropped and counted in `unknown` unless `strict`."""
    tag = obj.get("type") if isinstance(obj, dict) else None
    if not strict and isinstance(obj, dict):
        obj = _known_only(obj, tag, Counter() if unknown is None else unknown)
    if isinstance(tag, str) and tag in BY_TYPE:  # the concrete Struct: converting to the Union costs 2×
        try:
            return msgspec.convert(obj, BY_TYPE[tag])
        except msgspec.ValidationError:
            pass
    try:
        return from_model(ADAPTER.validate_python(obj))
    except ValidationError as err:
        raise RecordError(explain(err, "event", BY_TYPE, _HINTS)) from None


def parse_record(raw: bytes | None, max_bytes: int = limits.MAX_RECORD_BYTES, strict: bool = False,
                 unknown: Counter[str] | None = None) -> tuple[list[Any], list[RecordError]]:
    """Decode one Kafka record value into (valid events, errors); unknown fields are counted
    by name in `unknown` and ignored, or (`strict`) make their event an error."""
    if raw is None:
        return [], [RecordError("null value (a tombstone): usage topics are not compacted, nothing to count")]
    if len(raw) > max_bytes:
        return [], [RecordError(f"record is {len(raw)} bytes, over the {max_bytes}-byte limit")]
    try:
        events = _many.decode(raw) if raw.lstrip()[:1] == b"[" else [_one.decode(raw)]
        if len(events) <= limits.MAX_EVENTS_PER_RECORD:
            return events, []
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass  # find out exactly which events are bad, and why
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return [], [RecordError(f"not valid JSON: {err}")]
    if isinstance(doc, dict):
        try:
            return [validate_event(doc, strict, unknown)], []
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
            events.append(validate_event(obj, strict, unknown))
        except RecordError as err:
            errors.append(RecordError(f"[{i}] {err.reason}", i))
    return events, errors


def parse_records(raws: Sequence[bytes | None], max_bytes: int = limits.MAX_RECORD_BYTES, strict: bool = False,
                  unknown: Counter[str] | None = None) -> list[tuple[list[Any], list[RecordError]]]:
    """`parse_record` of each of `raws`, in order.

    Records of one event object on one line (what non-Python publishers send: one record
    per call) are decoded together, as JSON lines, in one msgspec call: half the cost of
    one call each. Every line has to be exactly one valid event, so the events map to their
    records one to one; if any is not, each record is parsed on its own, which finds which
    and why. Records with a line break inside take the per-record path from the start.
    When every record qualifies, as in a batch of single-event records, that is checked
    on the joined bytes, not record by record (line breaks are separators only if there
    are exactly `len(raws) - 1`, each followed by `{`).

    >>> ok = b'{"type":"usage","event_id":"a","ts":1.8e9,"workflow":"w","model":"m","input_tokens":1,"output_tokens":1}'
    >>> [(len(evs), [e.reason for e in errs]) for evs, errs in parse_records([ok, b'{"type":"usage"},{', ok])]
    [(1, []), (0, ['not valid JSON: unexpected content after document: line 1 column 17 (char 16)']), (1, [])]
    """
    if len(raws) > 1 and None not in raws:  # the usual batch: every record qualifies, checked in C
        values = cast("Sequence[bytes]", raws)
        joined = b"\n".join(values)
        if (joined[:1] == b"{" and joined.count(b"\n") == joined.count(b"\n{") == len(raws) - 1
                and max(map(len, values)) <= max_bytes):
            if (events := _lines_of_one(joined, len(raws))) is not None:
                return [([ev], []) for ev in events]
            return [parse_record(raw, max_bytes, strict, unknown) for raw in values]
    lines = {i: raw for i, raw in enumerate(raws)
             if raw is not None and raw[:1] == b"{" and len(raw) <= max_bytes and b"\n" not in raw}
    done: dict[int, tuple[list[Any], list[RecordError]]] = {}
    if len(lines) > 1 and (events := _lines_of_one(b"\n".join(lines.values()), len(lines))) is not None:
        done = {i: ([ev], []) for i, ev in zip(lines, events, strict=True)}
    return [done.get(i) or parse_record(raw, max_bytes, strict, unknown) for i, raw in enumerate(raws)]


def _lines_of_one(joined: bytes, n: int) -> list[Any] | None:
    """The events of `n` JSON lines, one each, or None if any line is not exactly one valid event."""
    try:
        events = _one.decode_lines(joined)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return events if len(events) == n else None
