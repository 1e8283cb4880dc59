"""Response policy: what to do about an alert (notify, shadow-kill, warn, kill). Pure: no Kafka, no clock.

The first matching rule wins. Defaults are safe: loops and zombies get a
*shadow* kill (the alert says what would have been stopped; nothing is), all
else is notify. A real kill is downgraded to shadow when the alert's subject is
allowlisted or the rule's minimum confidence / dollars burned is not met.

>>> alert = Alert(alert_id="a1", kind="loop", severity="critical", workflow="support", ts=0.0,
...               summary="loop", run_id="r-7", evidence={"usd": 4.2})
>>> decide(alert, PolicyConfig())
Decision(action='shadow', scope='run_id', target='r-7', ttl_s=3600.0, reason='rule 1: shadow-kill run_id r-7')
>>> strict = PolicyConfig(rules=[PolicyRule(kind="loop", action="kill", kill_scope="run_id", min_usd_burned=5)])
>>> d = decide(alert, strict); d.action, d.reason
('shadow', 'rule 1: would kill run_id r-7 but $4.20 burned < min $5.00')
>>> apply_decision(alert, decide(alert.model_copy(update={"evidence": {"usd": 9}}), strict)).undo
'spendwatch release --run r-7 --broker $SPENDWATCH_BROKER'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detectors.pricing.money import fmt_usd, usd_to_micros
from schemas.alerts import ANY_WORKFLOW, Alert, Kind, Severity
from schemas.control import MAX_TTL_S, Scope, release_command

PolicyAction = Literal["notify", "shadow", "warn", "kill"]
USD_KEYS = ("usd_burned", "spent_usd", "usd", "usd_after_end")
"""Evidence keys read, in order, for the dollars an alert's subject has burned."""
ALLOWLIST_SCOPES = ("workflow", "team", "agent_id", "run_id")


class PolicyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Kind | Literal["*"] = "*"
    severity: Severity | None = None
    workflow: str | None = None
    team: str | None = None
    action: PolicyAction = "notify"
    kill_scope: Scope | None = None
    """What a kill / shadow-kill stops; a rule only matches alerts that name such a target (an
    alert about no one workflow, `ANY_WORKFLOW`, names none)."""
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    min_usd_burned: float = Field(default=0.0, ge=0)
    ttl_s: float = Field(default=3600.0, gt=0, le=MAX_TTL_S)

    @model_validator(mode="after")
    def _scope_iff_kill(self) -> PolicyRule:
        if (self.action in ("kill", "shadow")) != (self.kill_scope is not None):
            raise ValueError("kill_scope is required for action kill/shadow and only for those")
        return self

    def matches(self, alert: Alert) -> bool:
        return (self.kind in ("*", alert.kind) and self.severity in (None, alert.severity)
                and self.workflow in (None, alert.workflow) and self.team in (None, alert.team)
                and (self.kill_scope is None or getattr(alert, self.kill_scope) not in (None, ANY_WORKFLOW)))


DEFAULT_RULES = (
    PolicyRule(kind="loop", action="shadow", kill_scope="run_id"),
    PolicyRule(kind="loop", action="shadow", kill_scope="agent_id"),
    PolicyRule(kind="zombie", action="shadow", kill_scope="agent_id"),
    PolicyRule(kind="zombie", action="shadow", kill_scope="run_id"),
)


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rules: list[PolicyRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    allowlist: list[str] = Field(default_factory=list)
    """`scope:name` entries never killed, e.g. `workflow:payments` (covers its runs and agents), `team:cx`."""
    default_action: Literal["notify", "warn"] = "notify"

    @field_validator("allowlist")
    @classmethod
    def _scoped(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            scope, sep, name = entry.partition(":")
            if scope not in ALLOWLIST_SCOPES or not sep or not name:
                raise ValueError(f"allowlist entry {entry!r} must be one of {', '.join(ALLOWLIST_SCOPES)} "
                                 "followed by :name")
        return entries


@dataclass(frozen=True)
class Decision:
    action: PolicyAction
    scope: Scope | None = None
    target: str | None = None
    ttl_s: float = 0.0
    reason: str = ""


def decide(alert: Alert, config: PolicyConfig) -> Decision:
    """What to do about `alert`: the first matching rule, else the default action."""
    if alert.status == "resolved":
        return Decision("notify", reason="alert resolved")
    for number, rule in enumerate(config.rules, 1):
        if rule.matches(alert):
            return _by_rule(number, rule, alert, config)
    return Decision(config.default_action, reason="no rule matched")


def _by_rule(number: int, rule: PolicyRule, alert: Alert, config: PolicyConfig) -> Decision:
    if rule.kill_scope is None:
        return Decision(rule.action, reason=f"rule {number}: {rule.action}")
    target = getattr(alert, rule.kill_scope)
    subject = f"{rule.kill_scope} {target}"
    if rule.action == "shadow":
        return Decision("shadow", rule.kill_scope, target, rule.ttl_s, f"rule {number}: shadow-kill {subject}")
    veto = _veto(rule, alert, config)
    if veto:
        return Decision("shadow", rule.kill_scope, target, rule.ttl_s,
                        f"rule {number}: would kill {subject} but {veto}")
    return Decision("kill", rule.kill_scope, target, rule.ttl_s, f"rule {number}: kill {subject}")


def _veto(rule: PolicyRule, alert: Alert, config: PolicyConfig) -> str | None:
    """Why a kill must not happen, or None."""
    for scope in ALLOWLIST_SCOPES:
        value = getattr(alert, scope)
        if value is not None and f"{scope}:{value}" in config.allowlist:
            return f"{scope}:{value} is allowlisted"
    confidence = float(alert.evidence.get("confidence", 1.0))
    if confidence < rule.min_confidence:
        return f"confidence {confidence:.2f} < min {rule.min_confidence:.2f}"
    usd = next((float(alert.evidence[k]) for k in USD_KEYS if alert.evidence.get(k) is not None), 0.0)
    if usd < rule.min_usd_burned:
        return f"{fmt_usd(usd_to_micros(usd))} burned < min {fmt_usd(usd_to_micros(rule.min_usd_burned))}"
    return None


def apply_decision(alert: Alert, decision: Decision) -> Alert:
    """The alert as notified: what the policy did and, for a kill, how to undo it."""
    action = "none" if decision.action == "notify" else decision.action
    scope, undo = None, None
    if decision.action == "kill" and decision.scope is not None and decision.target is not None:
        scope, undo = decision.scope, release_command(decision.scope, decision.target)
    return alert.model_copy(update={"action": action, "kill_scope": scope, "undo": undo})
