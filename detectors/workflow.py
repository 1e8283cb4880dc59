"""All state of one workflow: dedup window, spend by entity, outcomes, fired budgets.

This is exactly what one Faust table value holds, so a single changelog record
carries the totals *and* the event ids they already include: a redelivered or
duplicated event is recognised after a crash as well as before.
"""

from __future__ import annotations

import itertools
from typing import Any

from detectors.counters import COST, zero
from detectors.spend import EntityCost, EntitySpend

DIMENSIONS = ("team", "model", "agent")


class WorkflowState:
    __slots__ = ("name", "offset", "watermark", "dedup", "spend", "by", "outcomes", "fired", "unpriced", "pruned_at")

    def __init__(self, name: str):
        self.name = name
        self.offset = -1  # last source offset applied (idempotence against redelivery)
        self.watermark = 0.0  # highest event time seen
        self.dedup: dict[str, float] = {}  # event_id -> ts, within the dedup window
        self.spend = EntitySpend()
        self.by: dict[str, dict[str, EntityCost]] = {d: {} for d in DIMENSIONS}
        self.outcomes: dict[str, list[int]] = {}  # period key -> [count, value_micros]
        self.fired: set[str] = set()
        self.unpriced = 0
        self.pruned_at = 0.0

    def add_usage(self, ts: float, keys: tuple[str, str], vec: list[int], team: str | None, model: str,
                  agent: str | None) -> None:
        self.spend.add(ts, keys, vec)
        micros = vec[COST]
        for dim, name in (("team", team), ("model", model), ("agent", agent)):
            if name is not None:
                entity = self.by[dim].get(name)
                if entity is None:
                    entity = self.by[dim][name] = EntityCost()
                entity.add(ts, keys, micros)

    def add_outcome(self, keys: tuple[str, str], value_micros: int) -> None:
        for key in keys:
            cur = self.outcomes.setdefault(key, [0, 0])
            cur[0] += 1
            cur[1] += value_micros

    def top(self, dim: str, period_key: str, n: int = 3) -> list[list[Any]]:
        """The `n` biggest spenders of a dimension in a period: [[name, usd], ...]."""
        return _ranked(((e.period(period_key), name) for name, e in self.by[dim].items()), n)

    def top_last_hour(self, dim: str, n: int = 3) -> list[list[Any]]:
        """The `n` biggest spenders of a dimension over the last hour of event time: who burns now."""
        now = self.watermark
        return _ranked(((e.last_hour(now), name) for name, e in self.by[dim].items()), n)

    def period_cost(self, key: str) -> int:
        return self.spend.period(key)[COST]

    def prune(self, horizon: float, keep_periods: set[str], max_ids: int = 20_000) -> None:
        """Forget event ids older than the dedup horizon (or beyond `max_ids`) and idle entities."""
        now = self.pruned_at = self.watermark
        # Ids sit in arrival order, which is event-time order up to jitter: drop from the
        # front until the first id still inside the horizon (a jittered one lingers a while,
        # which only makes dedup stricter). Costs the ids dropped, not the window.
        dedup, cut = self.dedup, now - horizon
        stale = [k for k, _ in itertools.takewhile(lambda kv: kv[1] < cut, dedup.items())]
        stale += itertools.islice(dedup, len(stale), max(len(dedup) - max_ids, 0))  # bound the table value
        for k in stale:
            del dedup[k]
        self.spend.prune(now, keep_periods)
        for entities in self.by.values():
            for name in list(entities):
                entities[name].prune(now, keep_periods)
                if entities[name].empty:
                    del entities[name]
        for key in [k for k in self.outcomes if k not in keep_periods]:
            del self.outcomes[key]
        self.fired = {f for f in self.fired if f.split(":", 1)[0] in keep_periods}

    def totals(self, period_key: str) -> list[int]:
        return self.spend.period(period_key) if period_key in self.spend.periods else zero()

    def dump(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "offset": self.offset,
            "watermark": self.watermark,
            "dedup": self.dedup,
            "spend": self.spend.dump(),
            "by": {d: {n: e.dump() for n, e in ents.items()} for d, ents in self.by.items()},
            "outcomes": self.outcomes,
            "fired": sorted(self.fired),
            "unpriced": self.unpriced,
        }

    @classmethod
    def load(cls, doc: dict[str, Any]) -> WorkflowState:
        st = cls(doc["name"])
        st.offset = doc["offset"]
        st.watermark = doc["watermark"]
        st.dedup = doc["dedup"]
        st.spend = EntitySpend.load(doc["spend"])
        st.by = {d: {n: EntityCost.load(e) for n, e in doc["by"].get(d, {}).items()} for d in DIMENSIONS}
        st.outcomes = doc["outcomes"]
        st.fired = set(doc["fired"])
        st.unpriced = doc["unpriced"]
        return st


def _ranked(costs: Any, n: int) -> list[list[Any]]:
    return [[name, cost / 1e6] for cost, name in sorted(costs, reverse=True)[:n] if cost > 0]
