"""Incident labels for backtests: what happened, to whom, when. Documented JSON format.

    [{"kind": "loop", "subject": "run_id", "id": "run-42", "start": 1768471200, "end": 1768471800},
     {"kind": "zombie", "subject": "agent_id", "id": "watcher-3", "start": "2026-01-15T10:00:00Z",
      "end": "2026-01-15T14:00:00Z", "type": "zombie_no_outcome"}]

`kind` is an alert kind, `subject` the alert field that names the culprit
(`run_id`, `agent_id` or `workflow`), `id` its value, `start`/`end` the
incident's event-time span (epoch seconds or RFC 3339); `type` is optional.
A JSON array, or JSONL with one incident per line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from schemas.errors import explain
from schemas.events import Ts


class LabelError(ValueError):
    pass


class Incident(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: Literal["loop", "zombie", "spike", "budget", "burn_rate"]
    subject: Literal["run_id", "agent_id", "workflow"]
    id: str
    workflow: str | None = None
    """The workflow the incident happens in; alerts of other kinds there during it count as explained."""
    start: Ts
    end: Ts
    type: str | None = None

    @model_validator(mode="after")
    def _order(self) -> Incident:
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


def load_labels(path: Path) -> list[dict[str, Any]]:
    """Read and validate a labels file; errors name the incident and field."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LabelError(f"{path}: no such labels file") from None
    try:
        lines = [orjson.loads(line) for line in raw.splitlines() if line.strip()] if raw.lstrip()[:1] != b"[" else None
        docs = orjson.loads(raw) if lines is None else lines
    except orjson.JSONDecodeError as err:
        raise LabelError(f"{path}: not valid JSON or JSONL: {err}") from None
    out = []
    for i, doc in enumerate(docs):
        try:
            inc = Incident.model_validate(doc)
        except ValidationError as err:
            raise LabelError(f"{path}: incident {i}: {explain(err, 'incident')}") from None
        out.append({**inc.model_dump(exclude_none=True), "type": inc.type or inc.kind, "workflow": inc.workflow})
    return out
