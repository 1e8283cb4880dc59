"""JSON Schema export, so publishers in other languages validate before sending."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.alerts import Alert
from schemas.control import ControlCommand
from schemas.events import OutcomeEvent, UsageEvent

MODELS: dict[str, type[BaseModel]] = {
    "usage_event": UsageEvent,
    "outcome_event": OutcomeEvent,
    "alert": Alert,
    "control_command": ControlCommand,
}


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write one `<name>.schema.json` per wire model into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written
