"""What the worker's agents do with a batch, apart from Faust: the ingest and rollup stages.

Each stage takes a batch of records, hands it to the pure core and writes what comes
back in the order that keeps exactly-once counting: dead letters and alerts first,
then the state that marks their records applied, then everything acked by the
broker before the batch may be committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors.engine.monitor import Monitor
from detectors.engine.rollup import parse_snapshots, snapshot_records
from streams import workflow_table
from streams.clock import EventClock
from streams.ingest import Ingestor, Record, unknown_fields_note
from streams.ingest import deadletter as deadletter_value
from streams.metrics import WorkerMetrics
from streams.progress import ProgressFile
from streams.publisher import AlertPublisher
from streams.topology import Topology, in_context_of

log = logging.getLogger("spendwatch.worker")

UNKNOWN_LOG_EVERY_S = 3600.0
"""How often the worker repeats its line on ignored unknown fields (a new name is logged at once)."""
DETECTOR_SAVE_EVERY = 10.0
"""Seconds between saves of a workflow's detector state; a crash loses at most this much model learning."""


@dataclass
class Stats:
    """Counters the console summary and the periodic log line read."""

    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    redelivered: int = 0
    deadletters: int = 0
    rerouted: int = 0
    poisoned: int = 0  # events of workflow slices whose processing raised (dead-lettered, state untouched)
    unknown_fields: Counter[str] = field(default_factory=Counter)  # ignored field name -> events carrying it
    alerts: dict[str, int] = field(default_factory=dict)  # published, by kind


def record_of_event(event: Any) -> Record:
    return Record(event.message.key, event.value, event.message.partition, event.message.offset)


class DeadLetters:
    """Bad records of internal topics, set aside with the reason, never fatal."""

    def __init__(self, topology: Topology, stats: Stats, metrics: WorkerMetrics | None = None):
        self.topic = topology.deadletter
        self.stats = stats
        self.metrics = metrics

    async def put(self, topic: str, event: Any, reason: str) -> None:
        log.error("%s record at partition %d offset %d dead-lettered: %s",
                  topic, event.message.partition, event.message.offset, reason)
        await self.topic.send(value=deadletter_value(topic, record_of_event(event), reason))
        self.stats.deadletters += 1
        if self.metrics:
            self.metrics.count("deadletter", 1)
            self.metrics.deadletter("internal")


class IngestStage:
    """Usage records → priced, deduplicated spend in the workflows table, alerts, dead letters.

    Also keeps which workflows it holds and when each was last busy, so idle ones leave memory
    (`evict`) and a revoked assignment forgets them (`forget`).
    """

    def __init__(self, topology: Topology, monitor: Monitor, ingestor: Ingestor, publisher: AlertPublisher,
                 clock: EventClock, stats: Stats, drain: Callable[[], Awaitable[None]],
                 wall: Callable[[], float] = time.monotonic, metrics: WorkerMetrics | None = None):
        self.topology = topology
        self.monitor = monitor
        self.ingestor = ingestor
        self.publisher = publisher
        self.clock = clock
        self.stats = stats
        self.drain = drain
        self.wall = wall
        self.metrics = metrics
        self.progress = ProgressFile()
        self.saved_at: dict[str, float] = {}  # workflow -> wall time of its last detector save
        self.seen: dict[str, tuple[float, int]] = {}  # workflow -> (wall time of its last batch, usage partition)
        self.changed: set[str] = set()  # workflows whose snapshot is not published yet
        self._unknown_logged = (0, -UNKNOWN_LOG_EVERY_S)  # names the last line on unknown fields named, and when

    async def handle(self, records: list[Record], partitions: int) -> None:
        """One batch of the usage topic, which has `partitions` partitions now."""
        topo, stats = self.topology, self.stats
        started = time.perf_counter()
        self.ingestor.partitions = partitions
        fx = self.ingestor.handle(records)
        for bad in fx.poisoned:
            log.error("workflow %r: %d events dead-lettered, its state left as before: %s",
                      bad.workflow, len(bad.events), bad.reason)
            stats.poisoned += len(bad.events)
        # Alerts and dead letters reach Kafka before the state that marks their records applied: a
        # worker killed in between re-fires them (Slack and kills dedup by alert id), never loses them.
        pending = [await topo.deadletter.send(value=value) for value in fx.deadletters]
        pending += await self.publisher.publish(fx.alerts)
        if pending:
            await asyncio.gather(*pending)
        if fx.alerts and self.metrics:
            self._observe_alert_latency(records, fx.alerts)
        wall = self.wall()
        usage = topo.names.usage
        for wf, rec in fx.dirty.items():
            in_context_of(topo.of(usage, rec.partition))
            st = self.monitor.workflows[wf]
            workflow_table.save(topo.workflows, st)
            self.clock.advance(st.watermark)
            self.seen[wf] = (wall, rec.partition)
            self.changed.add(wf)
            if wall - self.saved_at.get(wf, 0.0) >= DETECTOR_SAVE_EVERY:  # models are saved per interval
                topo.detectors[wf.encode()] = self.monitor.dump_detectors(wf)
                self.saved_at[wf] = wall
        for partition, key, value in fx.reroutes:
            await topo.usage.send(key=key, value=value, partition=partition)
        for team, snaps in snapshot_records(fx.snapshots):
            await topo.rollups.send(key=team.encode(), value=orjson.dumps(snaps))
        await self.drain()  # state and forwards in Kafka before the batch can be committed
        stats.records += len(records)
        stats.accepted += fx.accepted
        stats.duplicates += fx.duplicates
        stats.redelivered += fx.redelivered
        stats.deadletters += len(fx.deadletters)
        if fx.reroutes and not stats.rerouted:
            log.warning("events arrived off their workflow's home partition and were forwarded there (a record "
                        "keyed by another workflow, or a librdkafka producer's CRC32 partitioner: set "
                        "partitioner=murmur2_random on it to save the hop); logged once")
        stats.rerouted += len(fx.reroutes)
        self._note_unknown_fields(wall)
        self.progress.add(fx.accepted)  # first counts only: a rebalance redelivers records to the next owner
        if m := self.metrics:
            m.count("accepted", fx.accepted)
            m.count("duplicate", fx.duplicates)
            m.count("redelivered", fx.redelivered)
            m.count("rerouted", len(fx.reroutes))
            m.count("poisoned", sum(len(bad.events) for bad in fx.poisoned))
            m.deadletter_values(fx.deadletters)
            m.note_unpriced(self.monitor.prices.unpriced)
            m.batch(len(records), time.perf_counter() - started)

    def _observe_alert_latency(self, records: list[Record], alerts: list[Any]) -> None:
        """Event to alert: from the Kafka timestamp of the newest record of the alert's workflow in this
        batch (of the whole batch for alerts about no one workflow) to now, when the broker has acked
        the alert. The record that tipped it may be older: a lower bound."""
        assert self.metrics is not None
        newest: dict[bytes | None, float] = {}
        for rec in records:
            ts = rec.timestamp
            if ts is not None and ts > newest.get(rec.key, 0.0):
                newest[rec.key] = ts
        if not newest:
            return
        latest, now = max(newest.values()), time.time()
        for alert in alerts:
            self.metrics.event_to_alert.observe(max(0.0, now - newest.get(alert.workflow.encode(), latest)))

    def _note_unknown_fields(self, wall: float) -> None:
        unknown = self.stats.unknown_fields
        names, at = self._unknown_logged
        if unknown and (len(unknown) > names or wall - at >= UNKNOWN_LOG_EVERY_S):
            log.warning(unknown_fields_note(unknown))  # a new name at once, the counts hourly
            self._unknown_logged = (len(unknown), wall)

    def evict(self, idle_s: float) -> int:
        """Workflows idle for `idle_s` (wall time) leave memory, saved first, reloaded when they return:
        workflow names are caller input, and a worker must not hold every one it ever saw."""
        wall = self.wall()
        idle = [(wf, partition) for wf, (last, partition) in self.seen.items() if wall - last >= idle_s]
        for wf, partition in idle:
            in_context_of(self.topology.of(self.topology.names.usage, partition))
            self.topology.detectors[wf.encode()] = self.monitor.dump_detectors(wf)
            self.monitor.forget(wf)
            del self.seen[wf]
            self.saved_at.pop(wf, None)
        return len(idle)

    def forget(self) -> None:
        """Partitions were revoked: whatever they held is another worker's now."""
        self.monitor.workflows.clear()
        self.monitor.teams.clear()
        for det in self.monitor.detectors:
            det.workflows.clear()
        self.monitor.insight_engine.workflows.clear()
        self.saved_at.clear()
        self.seen.clear()


class SnapshotStage:
    """Publishes the snapshot of every workflow changed since the last call (`detectors.engine.snapshot`)
    to the compacted snapshots topic: the dashboard's read model. Snapshots are derived state, so
    they are sent after the fact and not awaited with the batch: a lost one is replaced by the next."""

    def __init__(self, topology: Topology, monitor: Monitor, changed: set[str]):
        self.topic = topology.snapshots
        self.monitor = monitor
        self.changed = changed
        self.published = 0

    async def publish(self) -> int:
        names = [wf for wf in self.changed if wf in self.monitor.workflows]
        self.changed.clear()
        for wf in names:
            await self.topic.send(key=wf.encode(), value=orjson.dumps(self.monitor.snapshot(wf)))
        self.published += len(names)
        return len(names)


class RollupStage:
    """Team snapshots from every workflow partition → team budgets and their alerts."""

    def __init__(self, topology: Topology, monitor: Monitor, publisher: AlertPublisher, dead: DeadLetters,
                 drain: Callable[[], Awaitable[None]]):
        self.topology = topology
        self.monitor = monitor
        self.publisher = publisher
        self.dead = dead
        self.drain = drain

    async def handle(self, events: Sequence[Any]) -> None:
        good: list[tuple[dict[str, Any], Any]] = []
        for e in events:
            try:
                snaps, bad = parse_snapshots(e.value)
            except ValueError as err:
                snaps, bad = [], [str(err)]
            if bad:  # the record's good snapshots still count: merging is idempotent should it be replayed
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                await self.dead.put(self.topology.names.rollups, e, f"bad team snapshot: {bad[0]}{more}")
            good.extend((snap, e) for snap in snaps)
        alerts = self.monitor.merge_snapshots(snap for snap, _ in good)
        sent = await self.publisher.publish(alerts)  # in Kafka before the team state that marks them fired
        if sent:
            await asyncio.gather(*sent)
        last = {snap["team"]: e for snap, e in good}
        for team, event in last.items():
            in_context_of(event)
            self.topology.teams[team.encode()] = orjson.dumps(self.monitor.team(team).dump())
        await self.drain()
