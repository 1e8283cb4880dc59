"""Kill / release commands published on the compacted control topic, and how a kill is undone."""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import BaseModel, ConfigDict

Scope = Literal["run_id", "agent_id", "workflow"]
"""What a command stops: one run, one agent, or a whole workflow."""
MAX_TTL_S = 30 * 86400.0
"""Longest kill; a release is valid this long, so it always outlives the kill it undoes."""
CLI_FLAGS: dict[str, str] = {"run_id": "--run", "agent_id": "--agent", "workflow": "--workflow"}
"""`spendwatch kill/release` flag naming each scope."""


class ControlCommand(BaseModel):
    """A signed instruction to stop (or resume) spending for one target.

    `signature` is an HMAC-SHA256 (64 hex digits) or an Ed25519 signature (128 hex digits) over the
    canonical JSON of every other field, under the key named by `key_id` (the key decides the algorithm).
    `workflow` and `team` say whose spend a run or agent command stops: a guard checks them against the
    scope of a restricted key (`team`, when None, is left out of the signed body, so commands signed
    before it existed still verify).
    """

    model_config = ConfigDict(extra="forbid")

    command_id: str
    action: Literal["kill", "release"]
    scope: Scope
    target: str
    reason: str
    issued_at: float
    expires_at: float
    issued_by: str
    alert_id: str | None = None
    workflow: str | None = None
    team: str | None = None
    key_id: str = ""
    signature: str = ""


def record_of(cmd: ControlCommand) -> tuple[bytes, bytes]:
    """(key, value) of the control record, for any producer: keyed `scope:target`, so compaction
    keeps the latest command per target."""
    return f"{cmd.scope}:{cmd.target}".encode(), cmd.model_dump_json().encode()


def release_command(scope: Scope, target: str, broker: str = "$SPENDWATCH_BROKER", topic: str | None = None) -> str:
    """The exact CLI line that lifts a kill (`broker` is left unquoted so a $VARIABLE expands)."""
    line = f"spendwatch release {CLI_FLAGS[scope]} {shlex.quote(target)} --broker {broker}"
    return line + (f" --topic {shlex.quote(topic)}" if topic else "")
