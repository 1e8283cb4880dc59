"""`spendwatch replay compare`: two detector configurations over the same traffic, alert by alert.

A detector change deserves the review a code change gets: which alerts it adds, which it
removes, which now fire earlier or later, and (with incident labels) what that does to recall,
precision, time to detect and false alarms. Both configurations run through the backtest's
engine and virtual time (`replay.driver`), so the difference is the configuration's alone.

Alerts of A and B are paired in two passes. First by `alert_id` and status: detectors keep one
id per condition (a run's loop, a budget threshold in a period), so the same id is the same
alert however far it moved. Then what is left by subject (kind, workflow, team, agent, run,
status) and time, nearest pairs first, no further apart than `window`: a spike whose episode
starts earlier gets another id, yet is the same alert. A pair more than `tolerance` apart has
moved; an alert without a pair was added (B only) or removed (A only).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from detectors.engine.monitor import Monitor
from replay import driver
from replay.backtest import detection_stats, score
from replay.scorecard import KINDS, match
from schemas.alerts import Alert
from schemas.structs import Event

TOLERANCE = 300.0
"""Seconds two paired alerts may be apart and still count as unchanged: five one-minute spike
intervals, thirty ten-second ticks."""
WINDOW = 3600.0
"""Seconds apart beyond which two alerts of one subject are two alerts, not one that moved."""
LIMIT = 20
"""Alerts listed per section in the table; the JSON has them all."""
DAY = 86_400.0
METRICS = ("recall", "precision", "false_alarms", "false_alarms_per_day", "mean_ttd_s", "median_ttd_s",
           "detected", "incidents", "alerts")


def subject(alert: Alert) -> tuple[str | None, ...]:
    """Who an alert is about, whatever its id: the key of the second matching pass."""
    return (alert.kind, alert.workflow, alert.team, alert.agent_id, alert.run_id, alert.status)


@dataclass
class AlertDiff:
    """Alerts of B against A; `moved` and `unchanged` are (A's, B's) pairs."""

    added: list[Alert] = field(default_factory=list)
    removed: list[Alert] = field(default_factory=list)
    moved: list[tuple[Alert, Alert]] = field(default_factory=list)
    unchanged: list[tuple[Alert, Alert]] = field(default_factory=list)


def _pair(a: Sequence[Alert], b: Sequence[Alert], left: set[int], right: set[int],
          key: Callable[[Alert], Hashable], window: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of unpaired alerts with one key at most `window` apart, nearest first (ties: earliest)."""
    groups: dict[Hashable, list[tuple[float, int]]] = {}
    for j in sorted(right, key=lambda j: (b[j].ts, j)):
        groups.setdefault(key(b[j]), []).append((b[j].ts, j))
    candidates = []
    for i in left:
        group = groups.get(key(a[i]), [])
        lo = bisect.bisect_left(group, (a[i].ts - window, -1))
        hi = bisect.bisect_right(group, (a[i].ts + window, len(b)))
        candidates += [(abs(ts - a[i].ts), a[i].ts, i, j) for ts, j in group[lo:hi]]
    pairs = []
    for _, _, i, j in sorted(candidates):
        if i in left and j in right:
            left.discard(i)
            right.discard(j)
            pairs.append((i, j))
    return pairs


def pages(alerts: Sequence[Alert]) -> list[Alert]:
    """The alerts that paged: not the updates in place (revision > 0)."""
    return [x for x in alerts if not x.revision]


def check_spans(tolerance: float, window: float) -> None:
    """A tolerance below zero, or a pairing window narrower than it, makes no sense: say so."""
    if not 0 <= tolerance <= window:
        raise ValueError(f"need 0 <= tolerance <= window: got tolerance {tolerance:g} s, window {window:g} s "
                         "(--tolerance, --window)")


def diff_alerts(a: Sequence[Alert], b: Sequence[Alert], tolerance: float = TOLERANCE,
                window: float = WINDOW) -> AlertDiff:
    """Pair the alerts of A and B (module docstring) and sort them into added, removed, moved, unchanged.
    Updates in place (revision > 0: a loop alert told of the spike folded into it) page no one and
    are left out: a page is compared, not its edits."""
    check_spans(tolerance, window)
    a, b = pages(a), pages(b)
    left, right = set(range(len(a))), set(range(len(b)))
    pairs = _pair(a, b, left, right, lambda x: (x.alert_id, x.status), float("inf"))
    pairs += _pair(a, b, left, right, subject, window)
    out = AlertDiff(added=sorted((b[j] for j in right), key=lambda x: x.ts),
                    removed=sorted((a[i] for i in left), key=lambda x: x.ts))
    for i, j in sorted(pairs, key=lambda p: (a[p[0]].ts, p)):
        (out.moved if abs(b[j].ts - a[i].ts) > tolerance else out.unchanged).append((a[i], b[j]))
    return out


def detection(alerts: Sequence[Alert], labels: list[dict[str, Any]], days: float | None) -> dict[str, Any]:
    """Recall, precision, time to detect and false alarms over all kinds that detect (the detectors'
    and any labelled kind: a budget or unpriced-model alert is no detection unless labels say so)."""
    kinds = set(KINDS) | {lab["kind"] for lab in labels}
    scored = [a for a in alerts if a.kind in kinds]
    rows, explained, false = match(scored, labels)
    out = detection_stats(rows, scored, explained, false)
    out["false_alarms_per_day"] = out["false_alarms"] / days if days else None
    return out


def _delta(a: Any, b: Any) -> Any:
    return b - a if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def incident_changes(a: list[dict[str, Any]], b: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """Labelled incidents whose detection differs: newly detected, newly missed, or detected more than
    `tolerance` earlier or later. `a` and `b` are `score(...)["incidents"]`, one row per label, in order."""
    out = []
    for ra, rb in zip(a, b):
        ta, tb = ra["ttd_s"], rb["ttd_s"]
        change = ("detected" if ta is None and tb is not None else "missed" if tb is None and ta is not None
                  else None if ta is None or tb is None or abs(tb - ta) <= tolerance
                  else "earlier" if tb < ta else "later")
        if change:
            out.append({"change": change, "type": ra["type"], "kind": ra["kind"], "subject": ra["subject"],
                        "id": ra["id"], "start": ra["start"], "ttd_a_s": ta, "ttd_b_s": tb})
    return out


@dataclass
class Side:
    """One configuration's replay: its name (the config file) and what came out."""

    name: str
    result: driver.Replayed


def run_side(name: str, events: Iterable[dict[str, Any] | Event], monitor: Monitor, tick: float = driver.TICK,
             labels: list[dict[str, Any]] | None = None, progress: Callable[[int], None] | None = None) -> Side:
    """Replay `events` through `monitor`, watching the labelled subjects (what a kill would have saved)."""
    watch = {(lab["subject"], lab["id"]) for lab in labels or []}
    return Side(name, driver.run(events, monitor, tick=tick, watch=watch, progress=progress))


def _alert(a: Alert) -> dict[str, Any]:
    return a.model_dump(exclude_none=True)


def _by_kind(alerts: Iterable[Alert]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in alerts:
        out[a.kind] = out.get(a.kind, 0) + 1
    return dict(sorted(out.items()))


def compare(a: Side, b: Side, labels: list[dict[str, Any]] | None = None, tolerance: float = TOLERANCE,
            window: float = WINDOW) -> dict[str, Any]:
    """The review of B against A, as one JSON-ready document (no NaN: absent numbers are None)."""
    d = diff_alerts(a.result.alerts, b.result.alerts, tolerance, window)
    pages_a, pages_b = pages(a.result.alerts), pages(b.result.alerts)
    first, last = a.result.first_ts, a.result.last_ts
    days = (last - first) / DAY if first is not None and last is not None and last > first else None
    out: dict[str, Any] = {
        "a": {"config": a.name, "alerts": len(pages_a), "alerts_by_kind": _by_kind(pages_a)},
        "b": {"config": b.name, "alerts": len(pages_b), "alerts_by_kind": _by_kind(pages_b)},
        "events": a.result.events, "first_ts": first, "last_ts": last, "days": days,
        "tolerance_s": tolerance, "window_s": window,
        "added": [_alert(x) for x in d.added], "removed": [_alert(x) for x in d.removed],
        "moved": [{"shift_s": y.ts - x.ts, "a": _alert(x), "b": _alert(y)} for x, y in d.moved],
        "unchanged": len(d.unchanged),
    }
    if labels is not None:
        for side, key in ((a, "a"), (b, "b")):
            out[key]["score"] = {"all": detection(side.result.alerts, labels, days),
                                 **score(side.result.alerts, labels, side.result.watched)}
        sa, sb = out["a"]["score"]["all"], out["b"]["score"]["all"]
        out["delta"] = {m: _delta(sa[m], sb[m]) for m in METRICS}
        out["incident_changes"] = incident_changes(out["a"]["score"]["incidents"], out["b"]["score"]["incidents"],
                                                   tolerance)
    return out


# -- the table a reviewer reads ---------------------------------------------------------------


def _num(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x:.0f}{unit}" if unit == " s" else f"{x:.2f}{unit}"


def _signed(x: Any, unit: str = "") -> str:
    return "—" if x is None else ("+" if x > 0 else "−" if x < 0 else "±") + _num(abs(x), unit)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S")


def _who(alert: dict[str, Any]) -> str:
    return " ".join(x for x in (alert["workflow"], alert.get("agent_id"), alert.get("run_id")) if x)


def summary_line(doc: dict[str, Any]) -> str:
    """The review in one line: what B changes, and with labels what that buys."""
    parts = [f"B: +{len(doc['added'])} alerts, −{len(doc['removed'])} alerts, {len(doc['moved'])} moved, "
             f"{doc['unchanged']} unchanged ({doc['a']['alerts']}→{doc['b']['alerts']})"]
    if "delta" in doc:
        sa, sb = doc["a"]["score"]["all"], doc["b"]["score"]["all"]
        for metric, name, unit in (("recall", "recall", ""), ("precision", "precision", ""),
                                   ("false_alarms_per_day", "false alarms/day", ""),
                                   ("median_ttd_s", "median TTD", " s")):
            parts.append(f"{name} {_num(sa[metric], unit)}→{_num(sb[metric], unit)}")
    return "; ".join(parts)


def _alert_table(title: str, alerts: list[dict[str, Any]], limit: int) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left",
              caption=f"… and {len(alerts) - limit} more (--json has all)" if len(alerts) > limit else None)
    t.add_column("time (UTC)", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("subject", max_width=24, overflow="fold")
    t.add_column("summary", ratio=1)
    for a in alerts[:limit]:
        t.add_row(_when(a["ts"]), a["kind"], _who(a), a["summary"])
    return t


def render(doc: dict[str, Any], console: Console, limit: int = LIMIT) -> None:
    """Summary line first, then the metrics (with labels) and the alert lists, each capped at `limit`."""
    console.print(f"[bold]A[/] = {doc['a']['config']}   [bold]B[/] = {doc['b']['config']}   "
                  f"{doc['events']:,} events over {_num(doc['days'])} days; a shift over "
                  f"{doc['tolerance_s']:g} s is a move (pairs up to {doc['window_s']:g} s)")
    console.print(f"[bold]{summary_line(doc)}[/]")
    if "delta" in doc:
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="alerts: detector alerts less those an incident explains (precision's denominator)")
        for col in ("metric", "A", "B", "B−A"):
            t.add_column(col, justify="left" if col == "metric" else "right")
        sa, sb = doc["a"]["score"]["all"], doc["b"]["score"]["all"]
        for m in METRICS:
            unit = " s" if m.endswith("_s") else ""
            t.add_row(m.removesuffix("_s").replace("_", " ").replace("ttd", "TTD"), _num(sa[m], unit),
                      _num(sb[m], unit), _signed(doc["delta"][m], unit))
        console.print(t)
        changes = doc["incident_changes"]
        if changes:
            it = Table(title="incidents detected differently", box=box.SIMPLE_HEAD, pad_edge=False,
                       title_justify="left",
                       caption=f"… and {len(changes) - limit} more" if len(changes) > limit else None)
            for col in ("change", "type", "subject", "start (UTC)", "TTD A", "TTD B"):
                it.add_column(col)
            for c in changes[:limit]:
                it.add_row(c["change"], c["type"], f"{c['subject']}={c['id']}", _when(c["start"]),
                           _num(c["ttd_a_s"], " s"), _num(c["ttd_b_s"], " s"))
            console.print(it)
    for title, key in (("added (B only)", "added"), ("removed (A only)", "removed")):
        if doc[key]:
            console.print(_alert_table(f"{title}: {len(doc[key])}", doc[key], limit))
    if doc["moved"]:
        mt = Table(title=f"moved: {len(doc['moved'])}", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left",
                   caption=f"… and {len(doc['moved']) - limit} more (--json has all)"
                   if len(doc["moved"]) > limit else None)
        for col in ("kind", "subject", "A at", "B at", "shift"):
            mt.add_column(col, justify="right" if col == "shift" else "left")
        for m in doc["moved"][:limit]:
            mt.add_row(m["a"]["kind"], _who(m["a"]), _when(m["a"]["ts"]), _when(m["b"]["ts"]),
                       _signed(m["shift_s"], " s"))
        console.print(mt)
