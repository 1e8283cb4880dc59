"""The worker: a Faust app whose agents and timers hand their work to one stage object each.

`build_app` is the factory: it makes the topics and tables (`streams.topology`), the
stages (`streams.stages`: ingest, rollup; `streams.publisher`: alerts and kills;
`streams.digests`: Slack digests) and binds them to Faust's agents, timers and
rebalance signals. Usage records skip Faust's per-record path: the consumer hands each
fetch to a `streams.bulk.BulkFeed` and one task ingests them in batches. The other
agents take records in batches too; the notifier has an agent of its own, so a slow or
failing Slack never delays detection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from detectors.engine.monitor import Monitor
from detectors.policy import PolicyConfig
from schemas.alerts import Alert
from schemas.signing import Keyring
from streams.bulk import BulkFeed
from streams.clock import EventClock
from streams.digests import DigestScheduler
from streams.ingest import Ingestor, TimeBounds
from streams.kafka_security import KafkaSecurity
from streams.metrics import LAG_EVERY_S, MetricsServer, WorkerMetrics
from streams.notifier import Notifier
from streams.publisher import AlertPublisher
from streams.routing import RoutingConfig
from streams.sinks import Sink
from streams.stages import DeadLetters, IngestStage, RollupStage, SnapshotStage, Stats
from streams.topology import MAX_STATE_RECORD_BYTES, Topics, Topology
from streams.transport import FlowControl, Transport, drained

log = logging.getLogger("spendwatch.worker")

__all__ = ["Stats", "Worker", "WorkerOptions", "build_app"]


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker needs from the config, already built (the face turns Settings into this;
    the defaults and bounds are the config's)."""

    topics: Topics
    monitor: Callable[..., Monitor]
    """Makes the engine, given the table loaders (`load_workflow`, `load_team`, `load_detectors`)."""
    policy: PolicyConfig
    routing: RoutingConfig
    keyring: Keyring | None
    """Signs kill commands; None when no policy rule kills."""
    time_bounds: TimeBounds
    strict_contract: bool
    batch_max: int
    """Most usage records ingested as one batch (several fetches merged while the ingest task was busy)."""
    batch_within_s: float
    """How long the rollup agent waits to fill a batch."""
    tick_every_s: float
    evict_idle_s: float
    snapshot_every_s: float
    commit_interval_s: float
    session_timeout_s: float
    check_changelog_offsets: bool
    metrics_port: int = 0
    """Serve `/metrics` (Prometheus) on this port; 0: no endpoint (the metrics are still kept)."""
    metrics_host: str = "127.0.0.1"
    kafka: KafkaSecurity | None = None
    """SASL/TLS for every Kafka client of the worker; None: the SPENDWATCH_KAFKA_* variables (none set: plaintext)."""


@dataclass
class Worker:
    app: faust.App
    monitor: Monitor
    stats: Stats
    usage: faust.TopicT
    broker: str
    control_topic: str
    metrics: WorkerMetrics
    metrics_server: MetricsServer | None = None
    kafka: KafkaSecurity | None = None
    """The security its Kafka clients use: what a task talking to the same broker uses too."""


def fatal(agent: str) -> None:
    """Stop the process before Faust acks the failed batch (it acks on the way out of
    `take_events`): a restarted worker redelivers it and dedup keeps totals exact."""
    log.critical("%s agent failed; exiting so the batch is redelivered", agent, exc_info=True)
    logging.shutdown()
    os._exit(70)


def faust_app(opts: WorkerOptions, broker: str, app_id: str, data_dir: Path | None) -> faust.App:
    """The Faust app; with `data_dir` its tables live in RocksDB there (one database per table
    and partition), else in memory, rebuilt from changelogs on start."""
    disk = {"store": "rocksdb://", "tabledir": str(data_dir.resolve())} if data_dir else {"store": "memory://"}
    security = opts.kafka if opts.kafka is not None else KafkaSecurity.from_env()
    app = faust.App(
        app_id,
        broker=broker,
        broker_credentials=security.faust_credentials(),
        **disk,  # type: ignore[arg-type]  # faust.App's stub checks str values against its typed keywords (monitor...)
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=opts.topics.partitions,
        producer_enable_idempotence=False,  # Tansu rejects InitProducerId; event-id dedup covers retries
        web_enabled=False,
        recovery_consistency_check=opts.check_changelog_offsets,
        broker_session_timeout=opts.session_timeout_s,
        broker_heartbeat_interval=opts.session_timeout_s / 4,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=MAX_STATE_RECORD_BYTES,  # table values can outgrow 1 MB on very busy workflows
        broker_commit_interval=opts.commit_interval_s,
        broker_max_poll_records=opts.batch_max,  # a fetch's usage records are one slice of at most a batch
    )
    app.transport = Transport(app.conf.broker_consumer, app)  # end offsets right on Tansu too
    app.flow_control = FlowControl(loop=app.loop)  # recovery's resume keeps the records already queued
    return app


def build_app(opts: WorkerOptions, broker: str, sinks: Sequence[Sink], *, app_id: str = "spendwatch",
              data_dir: Path | None = None, on_alert: Callable[[Alert], None] | None = None) -> Worker:
    """Make the stages and bind them to Faust."""
    app = faust_app(opts, broker, app_id, data_dir)
    topo = Topology(app, opts.topics)
    t = opts.topics
    feed = BulkFeed(t.usage, lambda: app.consumer_generation_id)
    app.transport.bulk = feed  # type: ignore[attr-defined]  # read by streams.transport's consumer
    monitor = opts.monitor(load_workflow=topo.load_workflow, load_team=topo.load_team,
                           load_detectors=topo.load_detectors)
    drain = functools.partial(drained, app.producer)
    clock = EventClock()
    ingestor = Ingestor(monitor, t.usage, bounds=opts.time_bounds, partitions=t.partitions,
                        strict=opts.strict_contract)

    async def send_control(key: bytes, value: bytes) -> Any:
        return await topo.control.send(key=key, value=value)

    async def send_alert(key: bytes, value: bytes) -> Any:
        return await topo.alerts.send(key=key, value=value)

    metrics = WorkerMetrics()
    metrics.watch_workflows(lambda: len(monitor.workflows))
    # bound now: a port in use stops the start with a clear error
    server = MetricsServer(metrics, opts.metrics_host, opts.metrics_port) if opts.metrics_port else None
    publisher = AlertPublisher(opts.policy, opts.keyring, f"worker:{socket.gethostname()}:{os.getpid()}",
                               send_control, send_alert, on_alert, metrics=metrics)
    stats = Stats(unknown_fields=ingestor.unknown_fields, alerts=publisher.counts)
    dead = DeadLetters(topo, stats, metrics)
    ingest = IngestStage(topo, monitor, ingestor, publisher, clock, stats, drain, metrics=metrics)
    rollup = RollupStage(topo, monitor, publisher, dead, drain)
    snapshots = SnapshotStage(topo, monitor, ingest.changed)
    # The console shows every alert at once; remote sinks get Alertmanager-style grouped digests.
    ledger = topo.ledger_view()
    console = Notifier([x for x in sinks if x.name == "console"], ledger)
    # A pending ledger entry must reach the changelog before its post leaves: a worker that dies
    # between the two is replaced by one that looks the message up instead of posting again.
    remote = Notifier([x for x in sinks if x.name != "console"], ledger, persist=lambda: app.producer.flush())
    digests = DigestScheduler(remote, opts.routing, topo.route_store(), clock)
    _bind(app, opts, topo, feed, ingest, rollup, snapshots, publisher, console, digests, dead, clock)
    _bind_metrics(app, t.usage, metrics, server)
    return Worker(app, monitor, stats, topo.usage, broker, t.control, metrics, server,
                  opts.kafka if opts.kafka is not None else KafkaSecurity.from_env())


def _bind_metrics(app: faust.App, usage: str, metrics: WorkerMetrics, server: MetricsServer | None) -> None:
    """The `/metrics` endpoint, and the consumer lag refreshed on a timer."""
    if server is not None:
        @app.task
        async def serve_metrics() -> None:
            await server.start()
            try:
                await asyncio.Event().wait()  # until Faust cancels its tasks on stop
            finally:
                await server.stop()

    @app.timer(LAG_EVERY_S)
    async def consumer_lag() -> None:
        """High watermark (of the consumer's last fetch) minus fetch position, per assigned usage partition."""
        consumer = app.consumer
        lags = {}
        try:
            for tp in consumer.assignment():
                if tp.topic != usage:
                    continue
                high = consumer.highwater(tp)
                position = await asyncio.wait_for(consumer.position(tp), 5.0)
                if high is not None and position is not None:
                    lags[tp.partition] = max(0, high - position)
        except Exception as err:  # noqa: BLE001 - not started, rebalancing: the next refresh will do
            log.debug("consumer lag not refreshed: %r", err)
            return
        metrics.set_lag(usage, lags)


def _bind(app: faust.App, opts: WorkerOptions, topo: Topology, feed: BulkFeed, ingest: IngestStage, rollup: RollupStage,
          snapshots: SnapshotStage, publisher: AlertPublisher, console: Notifier, digests: DigestScheduler,
          dead: DeadLetters, clock: EventClock) -> None:
    """Faust's agents, timers and signals, each handing its work to a stage."""
    t = opts.topics

    app.topics.add(topo.usage)  # subscribed like an agent's topic; its records go to `feed` (streams.bulk)

    @app.task
    async def ingest_usage() -> None:
        while True:
            batch = await feed.take(opts.batch_max)
            try:
                await ingest.handle(batch.records, topo.partitions(t.usage))
            except Exception:
                feed.failed()
                fatal("ingest")
            feed.done(batch)

    @app.agent(topo.rollups, name="rollup")
    async def rollup_agent(stream: faust.StreamT) -> None:
        # take_events again: faust.Stream has it, the StreamT protocol in faust's stubs does not
        async for events in stream.take_events(1000, within=0.2):  # type: ignore[attr-defined]
            try:
                await rollup.handle(events)
            except Exception:
                fatal("rollup")

    @app.agent(topo.alerts, name="notify")
    async def notify_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                alert = Alert.model_validate_json(event.value or b"null")
            except ValueError as err:
                await dead.put(t.alerts, event, f"not an alert: {str(err)[:500]}")
                continue
            await console.deliver(alert)
            if digests.enabled:
                digests.add(event.message.partition, alert)

    @app.timer(1.0)
    async def route() -> None:
        await digests.flush()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust's stub wants a `signal` keyword
    async def resume_routing(app: faust.App, **kwargs: Any) -> None:
        """Tables are restored by now: reload the routers of the alert partitions this worker owns."""
        digests.resume(tp.partition for tp in app.consumer.assignment() if tp.topic == t.alerts)

    @app.task
    async def declare_control_topic() -> None:
        await topo.control.maybe_declare()
        await topo.snapshots.maybe_declare()

    @app.timer(opts.snapshot_every_s)
    async def publish_snapshots() -> None:
        """What changed, for the dashboard; a failure costs a late snapshot, never spend."""
        try:
            await snapshots.publish()
        except Exception:
            log.exception("publishing workflow snapshots failed; retried at the next interval")

    @app.timer(opts.tick_every_s)
    async def tick() -> None:
        """Detector interval work; time passes for quiet agents even when no event arrives."""
        try:
            await publisher.publish(ingest.monitor.tick(clock.now()))
        except Exception:
            fatal("tick")

    @app.timer(min(60.0, opts.evict_idle_s / 4))
    async def evict() -> None:
        await snapshots.publish()  # an evicted workflow's last snapshot goes out first
        if evicted := ingest.evict(opts.evict_idle_s):
            log.info("%d idle workflows left memory, %d held", evicted, len(ingest.monitor.workflows))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's stub wants a `signal` keyword
    async def forget_cached_state(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        await snapshots.publish()  # the last word on the workflows leaving, before they are forgotten
        ingest.forget()
        digests.clear()
