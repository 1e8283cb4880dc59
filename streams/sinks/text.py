"""Alert wording shared by every sink, so console and Slack say the same thing."""

from __future__ import annotations

from typing import Any

from schemas.alerts import ANY_WORKFLOW, Alert
from streams.routing import Notification

SEVERITY_EMOJI = {"info": ":large_blue_circle:", "warning": ":warning:", "critical": ":rotating_light:"}
KIND_TITLE = {
    "budget": "Budget threshold crossed",
    "burn_rate": "Budget burning too fast",
    "spike": "Spend spike",
    "loop": "Runaway agent loop",
    "zombie": "Zombie agent",
    "unpriced": "Unpriced model",
    "insights": "Weekly savings digest",
}


def title(alert: Alert) -> str:
    head = KIND_TITLE.get(alert.kind, alert.kind)
    if alert.status == "resolved":
        return f"Resolved: {head}"
    return f"{head} — {alert.severity}{' (updated)' if alert.revision else ''}"


def digest_title(n: Notification) -> str:
    """What the group is about and how it stands, e.g. `Runaway agent loop in support — 3 firing, 2 new`."""
    alerts = n.firing or n.resolved
    kinds = sorted({a.kind for a in alerts})
    workflows = sorted({a.workflow for a in alerts})
    head = KIND_TITLE.get(kinds[0], kinds[0]) if len(kinds) == 1 else "Spend alerts"
    if len(workflows) == 1 and workflows[0] != ANY_WORKFLOW:
        head += f" in {workflows[0]}"
    if not n.firing:
        return f"Resolved: {head}"
    counts = [f"{len(n.firing)} firing"]
    counts += [f"{len(n.new)} new"] if n.new else []
    counts += [f"{len(n.updated)} updated"] if n.updated else []
    counts += [f"{len(n.resolved)} resolved"] if n.resolved else []
    return f"{head} — {', '.join(counts)}"


def who(alert: Alert) -> list[tuple[str, str]]:
    workflow = alert.workflow if alert.workflow != ANY_WORKFLOW else None
    pairs = [("workflow", workflow), ("team", alert.team), ("agent", alert.agent_id), ("run", alert.run_id)]
    return [(k, v) for k, v in pairs if v]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(f"{a} ${b:,.2f}" if isinstance(b, float) else str(a) for a, b in value) or "—"
    return str(value)


def evidence_lines(alert: Alert, limit: int = 10) -> list[tuple[str, str]]:
    return [(k.replace("_", " "), _fmt(v)) for k, v in list(alert.evidence.items())[:limit]]
