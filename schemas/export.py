"""JSON Schema export, so publishers in other languages validate before sending.

The event schemas say what the worker accepts: fields it does not know are allowed (it
ignores and counts them; `strict_contract` refuses them), and `usage_record` is a whole
record value, one event or an array of them. What JSON Schema cannot state is in each
schema's description (cross-field token rules) or in `schemas.events.RFC3339`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import limits
from schemas.alerts import Alert
from schemas.control import ControlCommand
from schemas.events import OutcomeEvent, UsageEvent

MODELS: dict[str, type[BaseModel]] = {
    "usage_event": UsageEvent,
    "outcome_event": OutcomeEvent,
    "alert": Alert,
    "control_command": ControlCommand,
}
EVENTS = {"usage_event", "outcome_event"}
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(name: str) -> dict[str, Any]:
    """The schema of one wire model, or of a `usage_record` (what one Kafka record may hold)."""
    if name == "usage_record":
        event = {"oneOf": [{"$ref": "#/$defs/usage_event"}, {"$ref": "#/$defs/outcome_event"}]}
        return {"$schema": DRAFT, "title": "usage_record",
                "description": f"One usage-topic record value: an event, or an array of at most "
                               f"{limits.MAX_EVENTS_PER_RECORD} events; at most {limits.MAX_RECORD_BYTES} bytes.",
                "oneOf": [event, {"type": "array", "items": event, "maxItems": limits.MAX_EVENTS_PER_RECORD}],
                "$defs": {n: _hoisted(json_schema(n)) for n in sorted(EVENTS)}}
    schema = MODELS[name].model_json_schema()
    if name in EVENTS:
        schema.pop("additionalProperties", None)  # unknown fields are ignored, not refused
    schema["$schema"] = DRAFT
    return schema


def _hoisted(schema: dict[str, Any]) -> dict[str, Any]:
    """An event schema fit to sit under the record schema's $defs (its own $defs are not nested)."""
    inner = {k: v for k, v in schema.items() if k not in ("$schema", "$defs")}
    if schema.get("$defs"):
        raise ValueError("event schemas are expected to have no $defs of their own")
    return inner


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write one `<name>.schema.json` per wire model, and `usage_record`, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in [*MODELS, "usage_record"]:
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(json_schema(name), indent=2) + "\n")
        written.append(path)
    return written
