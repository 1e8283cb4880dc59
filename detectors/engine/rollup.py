"""Team totals across workflows, exact under redelivery.

Workflows of one team live on different partitions (and workers), so each
workflow publishes *cumulative* per-period spend snapshots for every team it
spends for. Merging snapshots by max is idempotent and order-free: a snapshot
delivered twice or late changes nothing, and the team total is the sum of the
latest per-workflow values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from detectors.engine.versions import upgrade
from detectors.pricing.money import micros_to_usd

V = 1
"""Format of `dump()`; v0 is the same layout without `v`."""


class TeamState:
    """One team's per-workflow cumulative spend by period key, merged by max.

    >>> t = TeamState("growth")
    >>> t.merge({"workflow": "a", "periods": {"2026-11-23": 5}})
    True
    >>> t.merge({"workflow": "a", "periods": {"2026-11-23": 5}})  # redelivered
    False
    >>> _ = t.merge({"workflow": "b", "periods": {"2026-11-23": 7}}); t.total("2026-11-23")
    12
    """

    __slots__ = ("name", "workflows", "fired")

    def __init__(self, name: str):
        self.name = name
        self.workflows: dict[str, dict[str, int]] = {}
        self.fired: set[str] = set()

    def merge(self, snapshot: dict[str, Any]) -> bool:
        per_wf = self.workflows.setdefault(snapshot["workflow"], {})
        changed = False
        for key, micros in snapshot["periods"].items():
            if micros > per_wf.get(key, -1):
                per_wf[key] = micros
                changed = True
        return changed

    def total(self, period_key: str) -> int:
        return sum(p.get(period_key, 0) for p in self.workflows.values())

    def top_workflows(self, period_key: str, n: int = 3) -> list[list[Any]]:
        ranked = sorted(((p.get(period_key, 0), wf) for wf, p in self.workflows.items()), reverse=True)
        return [[wf, micros_to_usd(c)] for c, wf in ranked[:n] if c > 0]

    def prune(self, keep_periods: set[str]) -> None:
        for periods in self.workflows.values():
            for key in [k for k in periods if k not in keep_periods]:
                del periods[key]
        self.fired = {f for f in self.fired if f.split(":", 1)[0] in keep_periods}

    def dump(self) -> dict[str, Any]:
        return {"v": V, "name": self.name, "workflows": self.workflows, "fired": sorted(self.fired)}

    @classmethod
    def load(cls, doc: dict[str, Any]) -> TeamState:
        doc = upgrade(doc, "team", V, {0: dict}, default=0)
        st = cls(doc["name"])
        st.workflows = doc["workflows"]
        st.fired = set(doc["fired"])
        return st


SNAPSHOTS_PER_RECORD = 500
"""Most snapshots in one rollups record (~80 KB): a batch touching 10,000 workflows of one team stays
far below Kafka's 1 MB default record limit."""


def snapshot_records(snapshots: Iterable[dict[str, Any]],
                     per_record: int = SNAPSHOTS_PER_RECORD) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A batch's workflow→team snapshots as rollups records: one per team (its key), at most
    `per_record` snapshots each. One record per snapshot cost a send here and a Faust event in
    the rollup agent: 200 workflows of 9 teams made 200 records a batch, now 9.

    >>> snaps = [{"team": t, "workflow": w} for t, w in (("cx", "a"), ("ops", "b"), ("cx", "c"))]
    >>> [(team, [s["workflow"] for s in part]) for team, part in snapshot_records(snaps)]
    [('cx', ['a', 'c']), ('ops', ['b'])]
    >>> [len(part) for _, part in snapshot_records(snaps, per_record=1)]
    [1, 1, 1]
    """
    by_team: dict[str, list[dict[str, Any]]] = {}
    for snap in snapshots:
        by_team.setdefault(snap["team"], []).append(snap)
    for team, snaps in by_team.items():
        for start in range(0, len(snaps), per_record):
            yield team, snaps[start:start + per_record]


def parse_snapshots(raw: bytes | None) -> tuple[list[dict[str, Any]], list[str]]:
    """A rollups record: a JSON array of workflow→team snapshots (`snapshot_records`), or one
    snapshot object (records written before the array form). Returns the snapshots that pass
    `check_snapshot` and why the others did not: these come from other workers, and one bad
    snapshot must not stop team budgets or drop its record's good ones.

    >>> good, bad = parse_snapshots(b'[{"team": "cx", "workflow": "bot", "ts": 1.0, "periods": {"2026-11": 5}}, 7]')
    >>> [s["periods"] for s in good], bad
    ([{'2026-11': 5}], ['a snapshot is a JSON object'])
    >>> parse_snapshots(b'{"team": "cx", "workflow": "bot", "ts": 1.0, "periods": {}}')[0][0]["workflow"]
    'bot'
    >>> parse_snapshots(b'{oops')
    Traceback (most recent call last):
    ValueError: not valid JSON: unexpected character, expected a string key: line 1 column 2 (char 1)
    """
    try:
        doc = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err}") from None
    good: list[dict[str, Any]] = []
    bad: list[str] = []
    for item in doc if isinstance(doc, list) else [doc]:
        try:
            good.append(check_snapshot(item))
        except ValueError as err:
            bad.append(str(err))
    return good, bad


def check_snapshot(doc: Any) -> dict[str, Any]:
    """One workflow→team snapshot (`Monitor._snapshot`), checked field by field.

    >>> check_snapshot({"team": "cx", "workflow": "bot", "ts": 1.0, "periods": {"2026-11": 5}})["periods"]
    {'2026-11': 5}
    >>> check_snapshot({"team": "cx", "workflow": "bot", "ts": 1.0, "periods": {"2026-11": -5}})
    Traceback (most recent call last):
    ValueError: periods must map period keys to non-negative integer micro-USD
    """
    if not isinstance(doc, dict):
        raise ValueError("a snapshot is a JSON object")
    for name in ("team", "workflow"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise ValueError(f"{name} must be a non-empty string")
    ts = doc.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError("ts must be a number")
    periods = doc.get("periods")
    if not isinstance(periods, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in periods.items()):
        raise ValueError("periods must map period keys to non-negative integer micro-USD")
    return doc
