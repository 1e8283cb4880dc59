"""The Faust app: topics, tables and the three agents (ingest, rollup, notify).

Each agent takes records in batches, hands them to the pure core and writes
each table key once per batch. The notifier has an agent of its own, so a slow
or failing Slack never delays detection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import orjson
from faust.streams import _current_event  # the table's changelog partition comes from the current event

from detectors.monitor import Monitor
from detectors.policy import apply_decision, decide
from detectors.rollup import TeamState, parse_snapshot
from detectors.workflow import WorkflowState
from schemas.alerts import Alert
from spendwatch.config import Settings
from spendwatch.control import make_command, record_of
from spendwatch.signing import Keyring
from streams import workflow_table
from streams.ingest import Ingestor, Record, TimeBounds, home_partition, unknown_fields_note
from streams.ingest import deadletter as deadletter_value
from streams.notifier import Notifier
from streams.progress import ProgressFile
from streams.routing import Router
from streams.sinks import Sink
from streams.transport import FlowControl, Transport, drained

log = logging.getLogger("spendwatch.worker")


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
    alerts: dict[str, int] = field(default_factory=dict)


@dataclass
class Worker:
    app: faust.App
    monitor: Monitor
    stats: Stats
    notifier: Notifier
    usage: faust.TopicT
    broker: str
    control_topic: str


UNKNOWN_LOG_EVERY_S = 3600.0
"""How often the worker repeats its line on ignored unknown fields (a new name is logged at once)."""
ACTED_KEEP = 100_000
"""Alert ids whose kill was issued that a worker remembers (bounded: bad input can mint ids)."""
DETECTOR_SAVE_EVERY = 10.0
"""Seconds between saves of a workflow's detector state; a crash loses at most this much model learning."""


class EventClock:
    """Live event time: the highest event time seen, moved on by the wall clock since.

    Lets zombie and idle-run timeouts fire when traffic stops, while a worker
    fed historical data (a replay into Kafka) still ticks in that data's time.
    """

    def __init__(self) -> None:
        self.watermark = 0.0
        self.wall_at = time.monotonic()

    def advance(self, ts: float) -> None:
        if ts > self.watermark:
            self.watermark = ts
            self.wall_at = time.monotonic()

    def now(self) -> float:
        return self.watermark + (time.monotonic() - self.wall_at) if self.watermark else 0.0


class RecentSet:
    """A set that forgets its oldest members beyond `size`."""

    def __init__(self, size: int):
        self.size = size
        self.items: dict[str, None] = {}

    def __contains__(self, item: object) -> bool:
        return item in self.items

    def add(self, item: str) -> None:
        self.items[item] = None
        if len(self.items) > self.size:
            del self.items[next(iter(self.items))]


def fatal(agent: str) -> None:
    """Stop the process before Faust acks the failed batch (it acks on the way out of
    `take_events`): a restarted worker redelivers it and dedup keeps totals exact."""
    log.critical("%s agent failed; exiting so the batch is redelivered", agent, exc_info=True)
    logging.shutdown()
    os._exit(70)


def _in_context_of(event: Any) -> None:
    _current_event.set(weakref.ref(event))


def _read(table: Any, key: bytes, where: Any) -> Any:
    """A table value, read in the context of `where` (an event of the partition it was written in).

    Faust's RocksDB store looks a key up only in the current event's partition: read under
    whatever event came last, a workflow of another partition is "not found" and starts from
    zero. A value not found there is looked for in every partition (state an older version
    wrote elsewhere). The caller's current event is left as it was."""
    token = _current_event.set(weakref.ref(where))
    try:
        value = table.get(key)
        if value is None:
            _current_event.set(None)
            value = table.get(key)
        return value
    finally:
        _current_event.reset(token)


def build_app(
    settings: Settings,
    broker: str,
    sinks: Sequence[Sink],
    *,
    app_id: str = "spendwatch",
    data_dir: Path | None = None,
    on_alert: Callable[[Alert], None] | None = None,
) -> Worker:
    """The worker's Faust app; with `data_dir` its tables live in RocksDB there (one
    database per table and partition), else in memory, rebuilt from changelogs on start."""
    disk = {"store": "rocksdb://", "tabledir": str(data_dir.resolve())} if data_dir else {"store": "memory://"}
    app = faust.App(
        app_id,
        broker=broker,
        **disk,  # type: ignore[arg-type]
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topics.partitions,
        producer_enable_idempotence=False,  # Tansu rejects InitProducerId; event-id dedup covers retries
        web_enabled=False,
        recovery_consistency_check=settings.check_changelog_offsets,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=8_000_000,
        broker_commit_interval=settings.commit_interval_s,  # table values can outgrow 1 MB on very busy workflows
        # take_events waits for batch_max records or batch_within_s; a smaller stream buffer (Faust's
        # default is 4096) could never hold a full batch, so every batch would wait out the timeout.
        stream_buffer_maxsize=2 * settings.batch_max,
    )
    app.transport = Transport(app.conf.broker_consumer, app)  # end offsets right on Tansu too
    app.flow_control = FlowControl(loop=app.loop)  # recovery's resume keeps the records already queued
    t = settings.topics
    usage = app.topic(t.usage, key_type=bytes, value_type=bytes, partitions=t.partitions)
    alerts_topic = app.topic(t.alerts, key_type=bytes, value_type=bytes, partitions=t.partitions)
    deadletter = app.topic(t.deadletter, key_type=bytes, value_type=bytes, partitions=t.partitions)
    rollups = app.topic(t.rollups, key_type=bytes, value_type=bytes, partitions=t.partitions)
    workflows = app.Table("workflows", key_type=bytes, value_type=bytes, partitions=t.partitions)
    teams = app.Table("teams", key_type=bytes, value_type=bytes, partitions=t.partitions)
    ledger_table = app.Table("alert-ledger", key_type=bytes, value_type=bytes, partitions=t.partitions)
    detector_table = app.Table("detectors", key_type=bytes, value_type=bytes, partitions=t.partitions)

    usage_partitions, rollup_partitions = _PartitionContexts(t.usage), _PartitionContexts(t.rollups)

    def home(contexts: _PartitionContexts, key: str) -> Any:
        """The stand-in event of `key`'s partition: where its table values were written."""
        n = app.consumer.topic_partitions(contexts.topic) or t.partitions
        return contexts.of(home_partition(key.encode(), n))

    def load_workflow(name: str) -> WorkflowState | None:
        where = home(usage_partitions, name)
        return workflow_table.load(lambda key: _read(workflows, key, where), name)

    def load_team(name: str) -> TeamState | None:
        raw = _read(teams, name.encode(), home(rollup_partitions, name))
        return TeamState.load(orjson.loads(raw)) if raw else None

    monitor = Monitor(settings.budgets, settings.price_book(), settings.timezone, settings.dedup_window_s,
                      load_workflow=load_workflow, load_team=load_team,
                      load_detectors=lambda name: _read(detector_table, name.encode(), home(usage_partitions, name)))
    clock = EventClock()
    saved_at: dict[str, float] = {}  # workflow -> wall time of its last detector save
    seen: dict[str, tuple[float, int]] = {}  # workflow -> (wall time of its last batch, its usage partition)
    ingestor = Ingestor(monitor, t.usage, bounds=TimeBounds(settings.max_ahead_s, settings.max_behind_s),
                        partitions=t.partitions, strict=settings.strict_contract)
    stats = Stats(unknown_fields=ingestor.unknown_fields)
    unknown_log = SimpleNamespace(names=0, at=-UNKNOWN_LOG_EVERY_S)  # what the last line on them said, and when
    control_topic = app.topic(t.control, key_type=bytes, value_type=bytes, partitions=1,
                              config={"cleanup.policy": "compact"})
    keyring = Keyring.load(settings.control_keys_file) if settings.kills() else None
    issuer = f"worker:{socket.gethostname()}:{os.getpid()}"
    acted = RecentSet(ACTED_KEEP)  # alert ids already acted on: a repeat of an alert does not re-issue its kill
    progress = ProgressFile()
    ledger = _LedgerView(ledger_table)
    # The console shows every alert at once; remote sinks get Alertmanager-style grouped digests.
    notifier = Notifier([x for x in sinks if x.name == "console"], ledger)
    # A pending ledger entry must reach the changelog before its post leaves: a worker that dies
    # between the two is replaced by one that looks the message up instead of posting again.
    digests = Notifier([x for x in sinks if x.name != "console"], ledger, persist=lambda: app.producer.flush())
    routes = app.Table("alert-routes", key_type=bytes, value_type=bytes, partitions=t.partitions)
    routers: dict[int, Router] = {}
    partitions = _PartitionContexts(t.alerts)  # the digest timer writes tables without an event of its own
    flushing = asyncio.Lock()

    async def publish_alerts(alerts: list[Alert]) -> list[Any]:
        """Send each alert (its kill command first); the sends' futures, for callers that must know
        the alerts are in Kafka before they record them as fired."""
        sent = []
        for alert in alerts:
            decision = decide(alert, settings.policy)
            alert = apply_decision(alert, decision)
            if decision.action == "kill" and alert.alert_id not in acted:
                cmd = make_command("kill", decision.scope, decision.target, alert.summary, decision.ttl_s, issuer,
                                   keyring=keyring, alert_id=alert.alert_id, workflow=alert.workflow)
                key, value = record_of(cmd)
                await control_topic.send(key=key, value=value)  # before the alert: stop first, then tell
                acted.add(alert.alert_id)
            stats.alerts[alert.kind] = stats.alerts.get(alert.kind, 0) + 1
            sent.append(await alerts_topic.send(key=alert.workflow.encode(), value=alert.model_dump_json().encode()))
            if on_alert:
                on_alert(alert)
        return sent

    @app.agent(usage, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            try:
                await ingest_batch(events)
            except Exception:
                fatal("ingest")

    async def ingest_batch(events: list[Any]) -> None:
        records = [Record(e.message.key, e.value, e.message.partition, e.message.offset) for e in events]
        ingestor.partitions = app.consumer.topic_partitions(t.usage) or t.partitions  # the topic's real count
        fx = ingestor.handle(records)
        for bad in fx.poisoned:
            log.error("workflow %r: %d events dead-lettered, its state left as before: %s",
                      bad.workflow, len(bad.events), bad.reason)
            stats.poisoned += len(bad.events)
        # Alerts and dead letters reach Kafka before the state that marks their records applied: a
        # worker killed in between re-fires them (Slack and kills dedup by alert id), never loses them.
        pending = [await deadletter.send(value=value) for value in fx.deadletters]
        pending += await publish_alerts(fx.alerts)
        if pending:
            await asyncio.gather(*pending)
        by_offset = {(e.message.partition, e.message.offset): e for e in events}
        wall = time.monotonic()
        for wf, rec in fx.dirty.items():
            _in_context_of(by_offset[(rec.partition, rec.offset)])
            st = monitor.workflows[wf]
            workflow_table.save(workflows, st)
            clock.advance(st.watermark)
            seen[wf] = (wall, rec.partition)
            if wall - saved_at.get(wf, 0.0) >= DETECTOR_SAVE_EVERY:  # models are saved per interval, not per batch
                detector_table[wf.encode()] = monitor.dump_detectors(wf)
                saved_at[wf] = wall
        for partition, key, value in fx.reroutes:
            await usage.send(key=key, value=value, partition=partition)
        for snap in fx.snapshots:
            await rollups.send(key=snap["team"].encode(), value=orjson.dumps(snap))
        await drained(app.producer)  # state and forwards in Kafka before the batch can be committed
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
        unknown = stats.unknown_fields
        if unknown and (len(unknown) > unknown_log.names or wall - unknown_log.at >= UNKNOWN_LOG_EVERY_S):
            log.warning(unknown_fields_note(unknown))  # a new name at once, the counts hourly
            unknown_log.names, unknown_log.at = len(unknown), wall
        progress.add(fx.accepted)  # first counts only: a rebalance redelivers records to the next owner

    @app.agent(rollups, name="rollup")
    async def rollup(stream: faust.StreamT) -> None:
        async for events in stream.take_events(1000, within=0.2):
            try:
                await rollup_batch(events)
            except Exception:
                fatal("rollup")

    async def rollup_batch(events: list[Any]) -> None:
        good = []
        for e in events:
            try:
                good.append((parse_snapshot(e.value), e))
            except ValueError as err:
                await dead_letter(t.rollups, e, f"bad team snapshot: {err}")
        alerts = monitor.merge_snapshots(snap for snap, _ in good)
        sent = await publish_alerts(alerts)  # in Kafka before the team state that marks them fired
        if sent:
            await asyncio.gather(*sent)
        last = {snap["team"]: e for snap, e in good}
        for team, event in last.items():
            _in_context_of(event)
            teams[team.encode()] = orjson.dumps(monitor.team(team).dump())
        await drained(app.producer)

    async def dead_letter(topic: str, event: Any, reason: str) -> None:
        """An internal topic's bad record: set aside with the reason, never fatal."""
        log.error("%s record at partition %d offset %d dead-lettered: %s",
                  topic, event.message.partition, event.message.offset, reason)
        rec = Record(event.message.key, event.value, event.message.partition, event.message.offset)
        await deadletter.send(value=deadletter_value(topic, rec, reason))
        stats.deadletters += 1

    def router_of(partition: int) -> Router:
        if partition not in routers:
            raw = _read(routes, str(partition).encode(), partitions.of(partition))
            routers[partition] = Router.load(orjson.loads(raw), settings.routing) if raw else Router(settings.routing)
        return routers[partition]

    @app.agent(alerts_topic, name="notify")
    async def notify(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                alert = Alert.model_validate_json(event.value or b"null")
            except ValueError as err:
                await dead_letter(t.alerts, event, f"not an alert: {str(err)[:500]}")
                continue
            await notifier.deliver(alert)
            if digests.sinks:
                p = event.message.partition
                router_of(p).add(alert, clock.now() or alert.ts)
                routes[str(p).encode()] = orjson.dumps(routers[p].dump())

    @app.timer(1.0)
    async def route() -> None:
        """Send the digests that are due; one flush at a time, the ledger blocks duplicates."""
        if not digests.sinks or not clock.watermark:
            return
        async with flushing:
            for p, router in list(routers.items()):
                due = router.due(clock.now())
                for n in due:
                    _in_context_of(partitions.of(p))
                    await digests.deliver_digest(n)
                    router.sent(n)
                if due:
                    _in_context_of(partitions.of(p))
                    routes[str(p).encode()] = orjson.dumps(router.dump())

    @app.on_rebalance_complete.connect
    async def resume_routing(app: faust.App, **kwargs: Any) -> None:
        """Reload the routers of the alert partitions this worker now owns (tables are restored
        by now): their pending digests, reminders and resolutions are due whether or not
        another alert ever arrives there. Event time resumes from the newest they hold, so a
        restart with no traffic still moves their clock on."""
        if digests.sinks:
            for tp in app.consumer.assignment():
                if tp.topic == t.alerts:
                    clock.advance(router_of(tp.partition).last_seen())

    @app.task
    async def declare_control_topic() -> None:
        await control_topic.maybe_declare()

    @app.timer(settings.tick_every_s)
    async def tick() -> None:
        """Detector interval work; time passes for quiet agents even when no event arrives."""
        try:
            await publish_alerts(monitor.tick(clock.now()))
        except Exception:
            fatal("tick")

    @app.timer(min(60.0, settings.evict_idle_s / 4))
    async def evict() -> None:
        """Workflows idle for `evict_idle_s` leave memory (saved first; reloaded when they return):
        workflow names are caller input, and a worker must not hold every one it ever saw."""
        wall = time.monotonic()
        idle = [(wf, partition) for wf, (last, partition) in seen.items() if wall - last >= settings.evict_idle_s]
        for wf, partition in idle:
            _in_context_of(usage_partitions.of(partition))
            detector_table[wf.encode()] = monitor.dump_detectors(wf)
            monitor.forget(wf)
            del seen[wf]
            saved_at.pop(wf, None)
        if idle:
            log.info("%d idle workflows left memory, %d held", len(idle), len(monitor.workflows))

    @app.on_partitions_revoked.connect
    async def forget_cached_state(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        monitor.workflows.clear()
        monitor.teams.clear()
        for det in monitor.detectors:
            det.workflows.clear()  # type: ignore[attr-defined]
        saved_at.clear()
        seen.clear()
        routers.clear()

    return Worker(app, monitor, stats, notifier, usage, broker, t.control)


class _PartitionContexts:
    """Stand-ins for "an event of partition p" of a topic.

    Faust writes a table key to the changelog partition of the current event. The
    digest timer runs outside any stream, so it sets one of these as the current event
    (they are kept here because Faust holds the current event by weak reference).
    """

    def __init__(self, topic: str):
        self.topic = topic
        self.contexts: dict[int, Any] = {}

    def of(self, partition: int) -> Any:
        if partition not in self.contexts:
            self.contexts[partition] = _StandIn(SimpleNamespace(topic=self.topic, partition=partition))
        return self.contexts[partition]


class _StandIn:
    __slots__ = ("message", "__weakref__")

    def __init__(self, message: Any):
        self.message = message


class _LedgerView:
    """The notification ledger as a str→str mapping over a bytes table."""

    def __init__(self, table: Any):
        self.table = table

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.table.get(key.encode()) is not None

    def __getitem__(self, key: str) -> str:
        raw = self.table.get(key.encode())
        if raw is None:
            raise KeyError(key)
        return raw.decode()

    def __setitem__(self, key: str, value: str) -> None:
        self.table[key.encode()] = value.encode()

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (k.decode() for k in self.table.keys())

    def __len__(self) -> int:
        return len(self.table)
