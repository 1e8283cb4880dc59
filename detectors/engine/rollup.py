"""Team totals across workflows, exact under redelivery.

Workflows of one team live on different partitions (and workers), so each
workflow publishes *cumulative* per-period spend snapshots for every team it
spends for. Merging snapshots by max is idempotent and order-free: a snapshot
delivered twice or late changes nothing, and the team total is the sum of the
latest per-workflow values.
"""

from __future__ import annotations

import math
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


def parse_snapshot(raw: bytes | None) -> dict[str, Any]:
    """A workflow→team snapshot record (`Monitor._snapshot`), checked field by field: these
    come from other workers, and one bad record must not stop team budgets.

    >>> parse_snapshot(b'{"team": "cx", "workflow": "bot", "ts": 1.0, "periods": {"2026-11": 5}}')["periods"]
    {'2026-11': 5}
    >>> parse_snapshot(b'{"team": "cx", "workflow": "bot", "ts": 1.0, "periods": {"2026-11": -5}}')
    Traceback (most recent call last):
    ValueError: periods must map period keys to non-negative integer micro-USD
    """
    try:
        doc = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not valid JSON: {err}") from None
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
