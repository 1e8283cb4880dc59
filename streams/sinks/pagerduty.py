"""PagerDuty Events API v2: trigger and resolve incidents, deduplicated by PagerDuty on `dedup_key`.

A single alert uses its `alert_id` as the key, a routed digest its group key:
PagerDuty folds every trigger with one key into one open incident (so repeats
and new alerts of a group page once), and a resolve closes it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import SecretStr

from schemas.alerts import Alert
from streams.routing import Notification
from streams.secrets import secret
from streams.sinks.text import digest_title, title
from streams.sinks.webhook import HttpJsonSink

SEVERITY_ORDER = ("info", "warning", "critical")  # PagerDuty knows these three (and "error")
SUMMARY_MAX = 1024


class PagerDutySink(HttpJsonSink):
    name = "pagerduty"

    def __init__(self, routing_key: str | SecretStr, *, base_url: str = "https://events.pagerduty.com",
                 timeout_s: float = 10.0):
        super().__init__(timeout_s)
        self.routing_key = secret(routing_key)
        """A SecretStr: it is in the request body only."""
        self.url = f"{base_url.rstrip('/')}/v2/enqueue"

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        payload = {"summary": f"{title(alert)}: {alert.summary}", "severity": alert.severity,
                   "source": alert.workflow, "timestamp": _iso(alert.ts), "class": alert.kind,
                   "custom_details": alert.model_dump(mode="json", exclude_none=True)}
        return await self._enqueue(alert.alert_id, payload if alert.status == "firing" else None)

    async def send_digest(self, notification: Notification, previous: str | None) -> str | None:
        n = notification
        if not n.firing:
            return await self._enqueue(n.group_key, None)
        payload = {
            "summary": f"{digest_title(n)}: {(n.new or n.firing)[0].summary}",
            "severity": max((a.severity for a in n.firing), key=SEVERITY_ORDER.index),
            "source": ", ".join(sorted({a.workflow for a in n.firing})),
            "timestamp": _iso(min(a.ts for a in n.firing)),
            "class": ", ".join(sorted({a.kind for a in n.firing})),
            "custom_details": {"notification_id": n.notification_id, "new": [a.alert_id for a in n.new],
                               "resolved": [a.alert_id for a in n.resolved],
                               "firing": [a.model_dump(mode="json", exclude_none=True) for a in n.firing]},
        }
        return await self._enqueue(n.group_key, payload)

    async def _enqueue(self, dedup_key: str, payload: dict[str, Any] | None) -> str:
        """Trigger with `payload`, or resolve when there is none; returns PagerDuty's dedup key."""
        assert self.routing_key is not None
        event: dict[str, Any] = {"routing_key": self.routing_key.get_secret_value(), "dedup_key": dedup_key,
                                 "event_action": "resolve"}
        if payload is not None:
            payload["summary"] = payload["summary"][:SUMMARY_MAX]
            event.update(event_action="trigger", client="spendwatch", payload=payload)
        answer = await self._post(self.url, orjson.dumps(event))
        return str(orjson.loads(answer).get("dedup_key", dedup_key))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
