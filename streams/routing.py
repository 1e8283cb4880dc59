"""Alert routing the Alertmanager way: group, wait, dedup against a notification log, inhibit, resolve.

Pure and clock-injected: every call takes `now`, nothing sleeps or reads a clock,
so a test (or a replay) decides when time passes. A `Router` turns a stream of
alerts into few *digests* per group; the notify agent asks `due(now)` on a
timer, delivers what comes back and confirms each with `sent()`. Its state
dumps to a plain dict for a Faust table.

>>> r = Router(RoutingConfig(group_wait_s=30))
>>> a = Alert(alert_id="loop:support:r-1", kind="loop", severity="critical", workflow="support", ts=0.0,
...           summary="run r-1 loops", run_id="r-1")
>>> r.add(a, now=0.0)
'workflow=support|kind=loop'
>>> r.due(now=29.0)
[]
>>> [n] = r.due(now=30.0); n.notification_id, [x.alert_id for x in n.new], n.update_of
('workflow=support|kind=loop@0.000#1', ['loop:support:r-1'], None)
>>> r.sent(n); r.due(now=31.0)
[]
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.alerts import Alert

GROUPABLE = ("workflow", "team", "kind", "severity", "agent_id", "run_id", "action")
REPORTS = frozenset({"insights"})
"""Kinds that report rather than alarm (the weekly savings digest): told once, never repeated, and
forgotten without a "resolved" message when `resolve_timeout` passes."""


class RoutingConfig(BaseModel):
    """Alertmanager's timers, with Alertmanager's defaults (except resolve_timeout, see there)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    group_by: list[str] = Field(default_factory=lambda: ["workflow", "kind"])
    group_wait_s: float = Field(default=30.0, ge=0)
    """How long a new group collects alerts before its first notification."""
    group_interval_s: float = Field(default=300.0, ge=0)
    """Least time between two notifications of one group (new or resolved alerts wait for it)."""
    repeat_interval_s: float = Field(default=4 * 3600.0, gt=0)
    """A group with nothing new is notified again after this long while it still fires."""
    resolve_timeout_s: float = Field(default=24 * 3600.0, gt=0)
    """An alert neither re-sent nor resolved for this long counts as resolved (Alertmanager's
    resolve_timeout). spendwatch's detectors fire once per condition, so this is what ends
    repeats, closes groups and lifts a workflow kill's inhibition; a day covers a daily budget."""

    @field_validator("group_by")
    @classmethod
    def _groupable(cls, fields: list[str]) -> list[str]:
        if bad := [f for f in fields if f not in GROUPABLE]:
            raise ValueError(f"cannot group by {bad}; choose from {', '.join(GROUPABLE)}")
        return fields


class Notification(BaseModel):
    """One digest of a group: what fires, what is new since the last one, what resolved.

    `update_of` names the notification whose message this one rewrites (a Slack
    message is edited with chat.update); None means post a new message. Only a
    notification with nothing new to announce (resolved alerts, or `updated`
    ones: told before, since revised in place) edits: new alerts and repeats are
    posted so that on-call is pinged.
    """

    model_config = ConfigDict(frozen=True)

    group_key: str
    notification_id: str
    seq: int
    at: float
    firing: list[Alert]
    new: list[Alert]
    resolved: list[Alert]
    update_of: str | None = None
    updated: list[Alert] = Field(default_factory=list)


class _Group(BaseModel):
    """A group's alerts and its notification log (which firing alerts were told, when, as which message)."""

    created: float
    alerts: dict[str, Alert] = Field(default_factory=dict)
    seen: dict[str, float] = Field(default_factory=dict)
    notified: set[str] = Field(default_factory=set)
    revisions: dict[str, int] = Field(default_factory=dict)
    """The revision each notified alert was told at, where above 0 (an alert revised since is `updated`)."""
    last_sent: float | None = None
    seq: int = 0
    message: str | None = None


def kills_workflow(alert: Alert) -> bool:
    """A firing alert whose policy killed its whole workflow."""
    return alert.status == "firing" and alert.action == "kill" and alert.kill_scope == "workflow"


class Router:
    def __init__(self, config: RoutingConfig | None = None, groups: dict[str, _Group] | None = None):
        self.config = config or RoutingConfig()
        self.groups = groups or {}

    def key(self, alert: Alert) -> str:
        return "|".join(f"{f}={getattr(alert, f)}" for f in self.config.group_by)

    def add(self, alert: Alert, now: float) -> str:
        """Take a firing or resolved alert; returns its group key."""
        key = self.key(alert)
        group = self.groups.get(key)
        if alert.status == "resolved":
            if group is not None and alert.alert_id in group.alerts:
                group.alerts[alert.alert_id] = alert
            return key
        group = self.groups.setdefault(key, _Group(created=now))
        group.alerts[alert.alert_id] = alert
        group.seen[alert.alert_id] = now
        return key

    def due(self, now: float) -> list[Notification]:
        """The notifications to send now. Apart from retiring stale alerts, nothing changes until each
        is confirmed with `sent`: call due → deliver → sent in one task, never two at once."""
        self._tidy(now)
        muted = {a.workflow for g in self.groups.values() for a in g.alerts.values() if kills_workflow(a)}
        return [n for key, group in list(self.groups.items()) if (n := self._digest(key, group, now, muted))]

    def sent(self, notification: Notification) -> None:
        """Record a delivered notification in the log; a repeated confirmation changes nothing."""
        key, seq = notification.group_key, notification.seq
        group = self.groups.get(key)
        if group is None or seq <= group.seq or notification.notification_id != _id(key, group, seq):
            return  # confirmed before, or of an earlier episode of this group
        group.seq, group.last_sent = seq, notification.at
        group.notified |= {a.alert_id for a in notification.firing}
        group.revisions.update({a.alert_id: a.revision for a in notification.firing if a.revision})
        if notification.update_of is None:
            group.message = notification.notification_id
        for alert in notification.resolved:
            if group.alerts.get(alert.alert_id) == alert:  # not fired again since
                self._forget(group, alert.alert_id)
        if not group.alerts:
            del self.groups[notification.group_key]

    def last_seen(self) -> float:
        """Event time of the newest alert or notification here (0 if none): where the clock of
        a worker that reloads this router resumes, so nothing looks stale or due too early."""
        return max((max(group.created, group.last_sent or 0.0, *group.seen.values())
                    for group in self.groups.values()), default=0.0)

    def dump(self) -> dict[str, Any]:
        return {key: group.model_dump(mode="json") for key, group in self.groups.items()}

    @classmethod
    def load(cls, data: dict[str, Any], config: RoutingConfig | None = None) -> Router:
        return cls(config, {key: _Group.model_validate(group) for key, group in data.items()})

    def _digest(self, key: str, group: _Group, now: float, muted: set[str]) -> Notification | None:
        cfg = self.config
        firing = [a for a in group.alerts.values() if a.status == "firing" and not _inhibited(a, muted)]
        new = [a for a in firing if a.alert_id not in group.notified]
        updated = [a for a in firing if a.alert_id in group.notified
                   and a.revision > group.revisions.get(a.alert_id, 0)]
        resolved = [a for a in group.alerts.values() if a.status == "resolved"]
        if group.last_sent is None:
            if not firing or now < group.created + cfg.group_wait_s:
                return None
        elif now < group.last_sent + cfg.group_interval_s:
            return None
        else:
            repeat = (bool(firing) and now >= group.last_sent + cfg.repeat_interval_s
                      and not all(a.kind in REPORTS for a in firing))
            if not (new or resolved or updated or repeat):
                return None
            updated = [] if repeat else updated  # a reminder is posted anyway, with the alerts as they are now
        update_of = group.message if (resolved or updated) and not new else None
        seq = group.seq + 1
        return Notification(group_key=key, notification_id=_id(key, group, seq), seq=seq, at=now,
                            firing=firing, new=new, resolved=resolved, update_of=update_of, updated=updated)

    def _tidy(self, now: float) -> None:
        """Resolve alerts past resolve_timeout; drop resolved ones nobody was told had fired."""
        for key, group in list(self.groups.items()):
            for alert_id, alert in list(group.alerts.items()):
                if alert.status == "firing" and now - group.seen[alert_id] >= self.config.resolve_timeout_s:
                    if alert.kind in REPORTS:
                        self._forget(group, alert_id)
                        continue
                    group.alerts[alert_id] = alert = alert.model_copy(update={"status": "resolved"})
                if alert.status == "resolved" and alert_id not in group.notified:
                    self._forget(group, alert_id)
            if not group.alerts:
                del self.groups[key]

    @staticmethod
    def _forget(group: _Group, alert_id: str) -> None:
        group.alerts.pop(alert_id, None)
        group.seen.pop(alert_id, None)
        group.notified.discard(alert_id)
        group.revisions.pop(alert_id, None)


def _id(key: str, group: _Group, seq: int) -> str:
    """Stable per group and sequence; the creation time keeps a group that closed and opened again
    from reusing ids the notification ledger has already seen."""
    return f"{key}@{group.created:.3f}#{seq}"


def _inhibited(alert: Alert, killed_workflows: set[str]) -> bool:
    """Per-run and per-agent alerts say nothing new while their whole workflow is killed."""
    return (alert.workflow in killed_workflows and not kills_workflow(alert)
            and (alert.run_id is not None or alert.agent_id is not None))
