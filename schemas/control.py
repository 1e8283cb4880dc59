"""Kill / release commands published on the compacted control topic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class ControlCommand(BaseModel):
    """A signed instruction to stop (or resume) spending for one target.

    `signature` is an HMAC-SHA256 over the canonical JSON of every other field,
    under the key named by `key_id`.
    """

    model_config = ConfigDict(extra="forbid")

    command_id: str
    action: Literal["kill", "release"]
    scope: Literal["workflow", "agent_id", "run_id"]
    target: str
    reason: str
    issued_at: float
    expires_at: float
    issued_by: str
    alert_id: str | None = None
    workflow: str | None = None
    key_id: str = ""
    signature: str = ""
