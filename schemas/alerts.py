"""The alert wire model: what fired, for whom, how much, and what was done."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.control import Scope

Kind = Literal["budget", "burn_rate", "spike", "loop", "zombie", "unpriced", "insights"]
"""The kinds the engine emits: the exported schema promises no kind that never fires."""
Severity = Literal["info", "warning", "critical"]
Action = Literal["none", "shadow", "warn", "kill"]
ANY_WORKFLOW = "*"
"""The `workflow` of an alert about no one workflow (an unpriced model, a team with no spend
yet): its Kafka key, so that every worker's copy meets on one alerts partition and is told
once, and never a kill target."""


class Alert(BaseModel):
    """One firing (or resolution) of a detector for one subject.

    `alert_id` is stable for the same condition (e.g. one budget threshold in one
    period), so sinks can deduplicate and update instead of posting twice.
    """

    model_config = ConfigDict(extra="forbid")

    alert_id: str
    kind: Kind
    severity: Severity
    workflow: str
    ts: float = Field(description="event time at which the alert fired (epoch seconds)")
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    action: Action = "none"
    team: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    status: Literal["firing", "resolved"] = "firing"
    kill_scope: Scope | None = Field(default=None, description="what the kill stopped (action kill only): "
                                     "the alert's field of that name is the target")
    undo: str | None = Field(default=None, description="exact command that undoes the action")
    revision: int = Field(default=0, ge=0, description="how often the alert was updated in place since it "
                          "fired (0: as it fired), e.g. with the workflow impact of a spike folded into it: "
                          "sinks edit the message they posted, no one is paged again")
