"""The worker's Kafka shape: its topics and tables, and which partition holds each key's state.

Faust writes a table key to the changelog partition of the *current event* and its
RocksDB store looks a key up only there. Code that runs outside a stream (timers,
rebalance callbacks) or reads another workflow's state therefore names the partition
first: `Topology` hands out stand-in events per partition (`of`) and reads through them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import faust
import orjson
from faust.streams import _current_event  # the table's changelog partition comes from the current event

from detectors.engine.rollup import TeamState
from detectors.engine.workflow import WorkflowState
from streams import workflow_table
from streams.ingest import home_partition

MAX_STATE_RECORD_BYTES = 8_000_000
"""Largest record the worker writes (the producer's limit) and its changelog topics take; not the
usage records' limit (`schemas.limits.MAX_RECORD_BYTES`, 1 MB). A detectors
record of a workflow with thousands of runs in flight can pass 1 MB, Kafka's default, which would
refuse that state write. Set on the changelog topics the worker creates; older ones need
`kafka-configs --alter --add-config max.message.bytes=8000000`."""


@dataclass(frozen=True)
class Topics:
    """Topic names and the partition count every partitioned topic and changelog shares (their
    defaults are the config's, `[topics]`)."""

    usage: str
    alerts: str
    deadletter: str
    rollups: str
    control: str
    snapshots: str
    partitions: int


def in_context_of(event: Any) -> None:
    """Make `event` (a real one or a stand-in from `Topology.of`) the one table writes go to."""
    _current_event.set(weakref.ref(event))


def read(table: Any, key: bytes, where: Any) -> Any:
    """A table value, read in the context of `where` (an event of the partition it was written in).

    Read under whatever event came last, a workflow of another partition is "not found" and
    starts from zero. A value not found there is looked for in every partition (state an older
    version wrote elsewhere). The caller's current event is left as it was."""
    token = _current_event.set(weakref.ref(where))
    try:
        value = table.get(key)
        if value is None:
            _current_event.set(None)
            value = table.get(key)
        return value
    finally:
        _current_event.reset(token)


class Topology:
    """Every topic and table of one worker app, and where each key's state lives."""

    def __init__(self, app: faust.App, topics: Topics):
        self.app = app
        self.names = topics
        n = topics.partitions

        def topic(name: str) -> faust.TopicT:
            return app.topic(name, key_type=bytes, value_type=bytes, partitions=n)

        def table(name: str) -> Any:
            return app.Table(name, key_type=bytes, value_type=bytes, partitions=n,
                             extra_topic_configs={"max.message.bytes": str(MAX_STATE_RECORD_BYTES)})

        self.usage, self.alerts = topic(topics.usage), topic(topics.alerts)
        self.deadletter, self.rollups = topic(topics.deadletter), topic(topics.rollups)
        self.control = app.topic(topics.control, key_type=bytes, value_type=bytes, partitions=1,
                                 config={"cleanup.policy": "compact"})
        # the latest snapshot per workflow is the dashboard's whole view of it (detectors.engine.snapshot)
        self.snapshots = app.topic(topics.snapshots, key_type=bytes, value_type=bytes, partitions=n,
                                   config={"cleanup.policy": "compact"})
        self.workflows, self.teams, self.detectors = table("workflows"), table("teams"), table("detectors")
        self.ledger, self.routes = table("alert-ledger"), table("alert-routes")
        self._stand_ins: dict[tuple[str, int], _StandIn] = {}

    def of(self, topic: str, partition: int) -> Any:
        """A stand-in for "an event of `topic`'s partition" (kept here: Faust holds the current
        event by weak reference)."""
        key = (topic, partition)
        if key not in self._stand_ins:
            self._stand_ins[key] = _StandIn(SimpleNamespace(topic=topic, partition=partition))
        return self._stand_ins[key]

    def partitions(self, topic: str) -> int:
        """The topic's real partition count (the configured one until the consumer knows it)."""
        return self.app.consumer.topic_partitions(topic) or self.names.partitions

    def home(self, topic: str, key: str) -> Any:
        """The stand-in event of `key`'s partition of `topic`: where its table values were written."""
        return self.of(topic, home_partition(key.encode(), self.partitions(topic)))

    def load_workflow(self, name: str) -> WorkflowState | None:
        where = self.home(self.names.usage, name)
        return workflow_table.load(lambda key: read(self.workflows, key, where), name)

    def load_team(self, name: str) -> TeamState | None:
        raw = read(self.teams, name.encode(), self.home(self.names.rollups, name))
        return TeamState.load(orjson.loads(raw)) if raw else None

    def load_detectors(self, name: str) -> bytes | None:
        return read(self.detectors, name.encode(), self.home(self.names.usage, name))

    def ledger_view(self) -> LedgerView:
        return LedgerView(self.ledger)

    def route_store(self) -> RouteTable:
        return RouteTable(self)


class RouteTable:
    """The digest routers' state, one key per alerts partition (a `streams.digests.RouteStore`)."""

    def __init__(self, topology: Topology):
        self.table = topology.routes
        self.where = lambda partition: topology.of(topology.names.alerts, partition)

    def load_routes(self, partition: int) -> bytes | None:
        return read(self.table, str(partition).encode(), self.where(partition))

    def save_routes(self, partition: int, doc: dict[str, Any]) -> None:
        self.enter(partition)
        self.table[str(partition).encode()] = orjson.dumps(doc)

    def enter(self, partition: int) -> None:
        in_context_of(self.where(partition))


class _StandIn:
    __slots__ = ("message", "__weakref__")

    def __init__(self, message: Any):
        self.message = message


class LedgerView(MutableMapping[str, str]):
    """The notification ledger as a str→str mapping over a bytes table."""

    def __init__(self, table: Any):
        self.table = table

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.table.get(key.encode()) is not None

    def __getitem__(self, key: str) -> str:
        raw = self.table.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return str(raw.decode())

    def __setitem__(self, key: str, value: str) -> None:
        self.table[key.encode()] = value.encode()

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self.table.keys())

    def __len__(self) -> int:
        return len(self.table)
