"""Alerts into Kafka, each after the kill its policy decided: stop first, then tell."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from detectors.policy import PolicyConfig, apply_decision, decide
from schemas.alerts import Alert
from schemas.control import record_of
from schemas.signing import Keyring, make_command
from streams.metrics import WorkerMetrics

Send = Callable[[bytes, bytes], Awaitable[Any]]
"""Queue one record (key, value) for a topic; awaiting it gives the delivery's future."""
ACTED_KEEP = 100_000
"""Alert ids whose kill was issued that a worker remembers (bounded: bad input can mint ids)."""


class RecentSet:
    """A set that forgets its oldest members beyond `size`.

    >>> s = RecentSet(2); s.add("a"); s.add("b"); s.add("c")
    >>> "a" in s, "c" in s
    (False, True)
    """

    def __init__(self, size: int):
        self.size = size
        self.items: dict[str, None] = {}

    def __contains__(self, item: object) -> bool:
        return item in self.items

    def add(self, item: str) -> None:
        self.items[item] = None
        if len(self.items) > self.size:
            del self.items[next(iter(self.items))]


class AlertPublisher:
    """Decides each alert's action, sends its kill command (once per alert id) before it, then the alert.

    A repeat of an alert (a worker re-fires what it could not mark as sent) does not issue its
    kill again while this worker remembers the id; a new worker may re-issue it, which guards
    treat as the same kill (same target, later expiry).
    """

    def __init__(self, policy: PolicyConfig, keyring: Keyring | None, issuer: str, send_control: Send,
                 send_alert: Send, on_alert: Callable[[Alert], None] | None = None,
                 metrics: WorkerMetrics | None = None):
        self.policy = policy
        self.keyring = keyring
        self.issuer = issuer
        self.send_control = send_control
        self.send_alert = send_alert
        self.on_alert = on_alert
        self.metrics = metrics
        self.acted = RecentSet(ACTED_KEEP)
        self.counts: dict[str, int] = {}
        """Alerts published, by kind."""

    def _team_of(self, alert: Alert) -> str | None:
        """The alert's team when the signing key is restricted to teams (guards need it); else left out,
        so guards of versions before the field still accept the command."""
        assert self.keyring is not None and self.keyring.signing_key_id is not None
        return alert.team if self.keyring.entries[self.keyring.signing_key_id].teams is not None else None

    async def publish(self, alerts: list[Alert]) -> list[Any]:
        """The alerts' delivery futures, for callers that must know the alerts are in Kafka
        before they record them as fired."""
        sent = []
        for alert in alerts:
            decision = decide(alert, self.policy)
            alert = apply_decision(alert, decision)
            if alert.kill_scope is not None and decision.target is not None and alert.alert_id not in self.acted:
                if self.keyring is None:
                    raise RuntimeError("a kill rule fired but the worker has no control keys")
                cmd = make_command("kill", alert.kill_scope, decision.target, alert.summary, decision.ttl_s,
                                   self.issuer, keyring=self.keyring, alert_id=alert.alert_id,
                                   workflow=alert.workflow, team=self._team_of(alert))
                await self.send_control(*record_of(cmd))
                self.acted.add(alert.alert_id)
                if self.metrics:
                    self.metrics.kill(alert.kill_scope)
            self.counts[alert.kind] = self.counts.get(alert.kind, 0) + 1
            if self.metrics:
                self.metrics.alert(alert.kind, alert.severity)
            sent.append(await self.send_alert(alert.workflow.encode(), alert.model_dump_json().encode()))
            if self.on_alert:
                self.on_alert(alert)
        return sent
