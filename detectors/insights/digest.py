"""The weekly savings digest: one `insights` alert per workflow with opportunities, once a week.

Every copy has the workflow `*` (`schemas.alerts.ANY_WORKFLOW`) as its workflow and Kafka key,
so the copies of every worker meet on one alerts partition and the router groups them into one
message (`streams/routing.py` never repeats it); the Slack digest shows the five biggest. The
alert id names the workflow and the day, so a restarted worker's second copy is told nowhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from detectors.engine.periods import PeriodClock
from schemas.alerts import ANY_WORKFLOW, Alert

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
TOP = 5


def due(clock: PeriodClock, now: float, weekday: int, hour: int) -> str | None:
    """The day key when event time `now` is on the digest's weekday at or after its hour (local time).

    >>> clock = PeriodClock("Europe/Paris")
    >>> due(clock, 1_764_576_000.0, 0, 9), due(clock, 1_764_576_000.0, 0, 10)  # Mon 2025-12-01 09:00 Paris
    ('2025-12-01', None)
    """
    local = datetime.fromtimestamp(now, clock.tz)
    return local.strftime("%Y-%m-%d") if local.weekday() == weekday and local.hour >= hour else None


def digest_alert(workflow: str, day: str, insights: list[dict[str, Any]], per_outcome: dict[str, Any] | None,
                 now: float) -> Alert:
    """The week's opportunities of one workflow, biggest first, with its cost per outcome and waste trend."""
    top = insights[:TOP]
    per_day = round(sum(i["usd_per_day"] for i in insights), 2)
    waste = next((i["evidence"] for i in insights if i["kind"] == "token_waste"), None)
    lines = [f"{i['summary']} (${i['usd_per_day']:,.2f}/day)" for i in top]
    trend = ""
    if per_outcome is not None:
        trend += f"; {per_outcome['text']}"
    if waste is not None and waste.get("waste_ratio_last_week") is not None:
        trend += f"; token waste {waste['waste_ratio']:.0%} vs {waste['waste_ratio_last_week']:.0%} last week"
    return Alert(
        alert_id=f"insights:{workflow}:{day}", kind="insights", severity="info", workflow=ANY_WORKFLOW, ts=now,
        summary=f"{workflow}: ${per_day:,.2f}/day in savings opportunities — " + " · ".join(lines) + trend,
        evidence={"workflow": workflow, "usd_per_day": per_day, "usd_per_month": round(per_day * 30, 2),
                  "opportunities": [{k: i[k] for k in ("kind", "model", "usd_per_day", "summary")} for i in top],
                  "per_outcome": None if per_outcome is None else {k: v for k, v in per_outcome.items() if k != "text"},
                  "waste_ratio": None if waste is None else waste.get("waste_ratio"),
                  "waste_ratio_last_week": None if waste is None else waste.get("waste_ratio_last_week")})
