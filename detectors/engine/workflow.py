"""All state of one workflow: dedup window, spend by entity, outcomes, fired budgets.

`checkpoint()` says what to persist: the totals together with the event ids
they already include, so a redelivered or duplicated event is recognised after
a crash as well as before. Ids are sealed into buckets of `SEAL_IDS` that are
written once, each under a key of its own, and the state value lists them: a
busy workflow's value then holds a few hundred fresh ids, not the whole hour.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

from detectors.engine.counters import COST, add_into, zero
from detectors.engine.spend import HOUR, EntityCost, EntitySpend
from detectors.engine.versions import upgrade
from detectors.pricing.money import micros_to_usd

DIMENSIONS = ("team", "model", "agent")
SEAL_IDS = 256
"""Fresh event ids that make a bucket: the most a state value carries."""
MAX_IDS = 20_000
"""Event ids kept per workflow (memory bound); a busier workflow dedups over less than the window."""
MAX_OUTCOMES = 100
"""Outcome names tracked per workflow and period; the rest are summed as `OTHER` (names are caller input)."""
MAX_ENTITIES = 1_000
"""Teams, models or agents tracked by name per workflow; the rest are summed as `OTHER`. Names are
caller input: without a bound, an agent id per call would grow a state past what Kafka can carry."""
OTHER = "(other)"
ENTITY_BUCKET = HOUR[0] / HOUR[1]
"""A bucket of the one window a team, model or agent keeps (the last hour's), in seconds."""
Group = tuple[float, tuple[str, str], str | None, str, str | None]
"""Calls summed together: (window bucket start, period keys, team, model, agent)."""
OTHER = "(other)"
V = 2
"""Format of `dump()`. v0: before versions, and before sealed id buckets (no `buckets`, `next_bucket`);
v1: outcomes per period without their names."""
UNNAMED = "(unnamed)"
"""The outcome name of counts stored before names were kept (v1)."""


def _from_v0(doc: dict[str, Any]) -> dict[str, Any]:
    return {"buckets": [], "next_bucket": 0, **doc}


def _from_v1(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "outcomes": {k: {UNNAMED: v} for k, v in doc["outcomes"].items()}}


MIGRATIONS = {0: _from_v0, 1: _from_v1}


class Checkpoint(NamedTuple):
    """What to write for a workflow, in this order: sealed id buckets, expired ones, then the state."""

    sealed: list[tuple[int, dict[str, float]]]  # (bucket number, event id -> ts), written once
    expired: list[int]  # bucket numbers whose ids all left the window: delete them
    state: dict[str, Any]  # the value that names the live buckets


class WorkflowState:
    __slots__ = ("name", "offset", "watermark", "dedup", "spend", "by", "outcomes", "fired", "unpriced", "pruned_at",
                 "buckets", "next_bucket", "expired")

    def __init__(self, name: str):
        self.name = name
        self.offset = -1  # last source offset applied (idempotence against redelivery)
        self.watermark = 0.0  # highest event time seen
        self.dedup: dict[str, float] = {}  # event_id -> ts, within the dedup window, in arrival order
        self.buckets: dict[int, int] = {}  # sealed bucket -> ids of it still in `dedup` (its oldest ids, in order)
        self.next_bucket = 0
        self.expired: list[int] = []  # buckets emptied by pruning, to delete at the next checkpoint
        self.spend = EntitySpend()
        self.by: dict[str, dict[str, EntityCost]] = {d: {} for d in DIMENSIONS}
        self.outcomes: dict[str, dict[str, list[int]]] = {}  # period key -> outcome -> [count, value_micros]
        self.fired: set[str] = set()
        self.unpriced = 0
        self.pruned_at = 0.0

    def add_groups(self, groups: dict[Group, list[int]]) -> None:
        """Counters of calls, grouped (whose vectors it may change), summed first: the workflow's
        windows per bucket, and each team's, model's and agent's hour per bucket of that window. A
        workflow's calls spread over many groups when each record holds one call, and this makes the
        cost an add per bucket and spender instead of one per group."""
        spend: dict[tuple[float, tuple[str, str]], list[int]] = {}
        costs: dict[Group, int] = {}
        for (ts, keys, team, model, agent), vec in groups.items():
            acc = spend.get((ts, keys))
            if acc is None:
                spend[ts, keys] = vec
            else:
                add_into(acc, vec)
            who = (ts - ts % ENTITY_BUCKET, keys, team, model, agent)
            costs[who] = costs.get(who, 0) + vec[COST]
        for (ts, keys), vec in spend.items():
            self.spend.add(ts, keys, vec)
        for (ts, keys, team, model, agent), micros in costs.items():
            self._add_cost(ts, keys, micros, team, model, agent)

    def _add_cost(self, ts: float, keys: tuple[str, str], micros: int, team: str | None, model: str,
                  agent: str | None) -> None:
        """`micros` spent at `ts` by a team, a model and an agent (their costs only: `spend` has the rest)."""
        for dim, name in (("team", team), ("model", model), ("agent", agent)):
            if name is not None:
                entities = self.by[dim]
                entity = entities.get(name)
                if entity is None:
                    if len(entities) >= MAX_ENTITIES:
                        name = OTHER
                        entity = entities.get(name)
                    if entity is None:
                        entity = entities[name] = EntityCost()
                entity.add(ts, keys, micros)

    def add_outcome(self, keys: tuple[str, str], outcome: str, value_micros: int) -> None:
        for key in keys:
            named = self.outcomes.setdefault(key, {})
            cur = named.get(outcome)
            if cur is None:
                if len(named) >= MAX_OUTCOMES:
                    outcome = OTHER
                cur = named.setdefault(outcome, [0, 0])
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

    def prune(self, horizon: float, keep_periods: set[str], max_ids: int = MAX_IDS) -> None:
        """Forget event ids older than the dedup horizon (or beyond `max_ids`) and idle entities."""
        now = self.pruned_at = self.watermark
        # Ids sit in arrival order, which is event-time order up to jitter: drop from the
        # front until the first id still inside the horizon (a jittered one lingers a while,
        # which only makes dedup stricter). Costs the ids dropped, not the window.
        dedup, cut = self.dedup, now - horizon
        stale = [k for k, _ in itertools.takewhile(lambda kv: kv[1] < cut, dedup.items())]
        stale += itertools.islice(dedup, len(stale), max(len(dedup) - max_ids, 0))
        for k in stale:
            del dedup[k]
        dropped = len(stale)
        for seq, n in list(self.buckets.items()):  # the oldest ids are the oldest buckets'
            if dropped < n:
                self.buckets[seq] = n - dropped
                break
            dropped -= n
            del self.buckets[seq]
            self.expired.append(seq)
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

    def checkpoint(self) -> Checkpoint:
        """Seal the fresh ids if there are `SEAL_IDS` of them, and say what to write."""
        sealed = []
        fresh = self._fresh_ids()
        if len(fresh) >= SEAL_IDS:
            sealed.append((self.next_bucket, fresh))
            self.buckets[self.next_bucket] = len(fresh)
            self.next_bucket += 1
            fresh = {}
        expired, self.expired = self.expired, []
        return Checkpoint(sealed, expired, self._dump(fresh))

    def _fresh_ids(self) -> dict[str, float]:
        """Ids added since the last seal: the newest entries of `dedup`."""
        n = len(self.dedup) - sum(self.buckets.values())
        return dict(reversed(list(itertools.islice(reversed(self.dedup.items()), n))))

    def dump(self) -> dict[str, Any]:
        return self._dump(self._fresh_ids())

    def undo_point(self) -> tuple[dict[str, Any], int]:
        """Everything but the ids, plus how many ids there are: cheap to take before every batch."""
        return self._dump({}), len(self.dedup)

    def rolled_back(self, point: tuple[dict[str, Any], int]) -> WorkflowState:
        """This state as it was at `point`: ids added since (the newest) are dropped."""
        doc, n = point
        st = WorkflowState.load(doc)
        st.dedup = dict(itertools.islice(self.dedup.items(), n))
        st.buckets, st.pruned_at = dict(self.buckets), self.pruned_at
        return st

    def _dump(self, fresh: dict[str, float]) -> dict[str, Any]:
        """A copy of the state (nothing in it is the live object): `rolled_back` restores from it."""
        return {
            "v": V,
            "name": self.name,
            "offset": self.offset,
            "watermark": self.watermark,
            "dedup": fresh,
            "buckets": list(self.buckets),
            "next_bucket": self.next_bucket,
            "spend": self.spend.dump(),
            "by": {d: {n: e.dump() for n, e in ents.items()} for d, ents in self.by.items()},
            "outcomes": {k: {n: list(v) for n, v in named.items()} for k, named in self.outcomes.items()},
            "fired": sorted(self.fired),
            "unpriced": self.unpriced,
        }

    @classmethod
    def load(cls, doc: dict[str, Any],
             bucket: Callable[[int], dict[str, float] | None] = lambda seq: None) -> WorkflowState:
        """The state from `dump()` (any format since v0); `bucket(seq)` reads a sealed id bucket back
        (None: gone). A format newer than this code raises StateError: totals are never guessed."""
        doc = upgrade(doc, "workflow", V, MIGRATIONS, default=0)
        st = cls(doc["name"])
        st.offset = doc["offset"]
        st.watermark = doc["watermark"]
        for seq in doc["buckets"]:
            ids = bucket(seq)
            if ids:
                st.buckets[seq] = len(ids)
                st.dedup.update(ids)
        st.dedup.update(doc["dedup"])
        st.next_bucket = doc["next_bucket"]
        st.spend = EntitySpend.load(doc["spend"])
        st.by = {d: {n: EntityCost.load(e) for n, e in doc["by"].get(d, {}).items()} for d in DIMENSIONS}
        st.outcomes = doc["outcomes"]
        st.fired = set(doc["fired"])
        st.unpriced = doc["unpriced"]
        return st


def _ranked(costs: Any, n: int) -> list[list[Any]]:
    return [[name, micros_to_usd(cost)] for cost, name in sorted(costs, reverse=True)[:n] if cost > 0]
