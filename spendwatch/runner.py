"""Run the Faust worker in this process, with or without the embedded broker."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import faust
from aiokafka import AIOKafkaClient
from faust.exceptions import ConsistencyError
from rich.console import Console

from schemas.signing import KEYS_ENV, Keyring, KeyringError
from spendwatch.config import Settings, TopicsConfig
from spendwatch.emitter import bootstrap_of
from streams.app import Worker, WorkerOptions, build_app
from streams.broker import BrokerError, EmbeddedBroker
from streams.ingest import TimeBounds
from streams.kafka_security import KafkaSecurity, kafka_kwargs
from streams.secrets import redact_logs, register
from streams.sinks import Sink
from streams.sinks.console import ConsoleSink
from streams.sinks.pagerduty import PagerDutySink
from streams.sinks.slack import SlackSink
from streams.sinks.webhook import WebhookSink
from streams.topology import Topics

log = logging.getLogger("spendwatch")

GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700)."""
KAFKA_WAIT_ENV = "SPENDWATCH_KAFKA_WAIT"
"""How long a worker waits for Kafka to be reachable at start, in seconds; unset or `inf`: for ever."""
MAX_BACKOFF_S = 15.0


def tune_gc() -> None:
    """Everything alive now (imports, Faust, the app) lives as long as the process: freeze it so
    full collections skip it, and collect young objects less often, since a batch allocates
    thousands that die with it (the core on single-event traffic: ~25 → ~17 µs per event)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def kafka_wait_from_env() -> float:
    raw = os.environ.get(KAFKA_WAIT_ENV, "").strip().lower()
    try:
        wait = float(raw) if raw else math.inf
    except ValueError:
        wait = -1.0
    if not wait >= 0:
        raise BrokerError(f"{KAFKA_WAIT_ENV}={raw!r} is not a wait; use seconds (e.g. 300) or inf")
    return wait


def wait_for_kafka(broker: str, max_wait: float, security: KafkaSecurity | None = None) -> None:
    """Return once a bootstrap server answers a metadata request; retry with capped exponential backoff.

    Faust gives up within seconds, with a traceback, on a Kafka that is not up yet, which is the normal
    state of things when a whole stack starts at once (compose, Kubernetes): wait, and say what for.
    """
    bootstrap = bootstrap_of(broker)
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            asyncio.run(_probe(bootstrap, security))
            if attempt > 1:
                print(f"Kafka at {bootstrap} is reachable; starting the worker", file=sys.stderr, flush=True)
            return
        except Exception as err:  # refused, unresolvable, timed out: all mean "not yet"
            reason = str(err) or type(err).__name__
        left = max_wait - (time.monotonic() - started)
        if left <= 0:
            raise BrokerError(f"Kafka at {bootstrap} is still unreachable after {max_wait:.0f} s ({reason}); "
                              f"check --broker, or set {KAFKA_WAIT_ENV} (seconds, or inf) to wait longer")
        delay = min(2.0 ** (attempt - 1), MAX_BACKOFF_S, left)
        print(f"waiting for Kafka at {bootstrap} (attempt {attempt}, next in {delay:.0f} s)… {reason}",
              file=sys.stderr, flush=True)
        time.sleep(delay)


async def _probe(bootstrap: str, security: KafkaSecurity | None = None) -> None:
    """One metadata request; aiokafka's own error lines are muted: the waiting line says it once."""
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000, **kafka_kwargs(security))
    try:
        await asyncio.wait_for(client.bootstrap(), 10)
    finally:
        await client.close()
        quiet.setLevel(level)


async def partition_counts(bootstrap: str, topics: list[str],
                           security: KafkaSecurity | None = None) -> dict[str, int]:
    """Partitions of each of `topics` that exists (one metadata request)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kafka_kwargs(security))
    try:
        await asyncio.wait_for(client.bootstrap(), 15)
        await client.force_metadata_update()
        return {t: len(p) for t in topics if (p := client.cluster.partitions_for_topic(t))}
    finally:
        await client.close()


def check_partitions(worker: Worker, broker: str, topics_config: TopicsConfig,
                     security: KafkaSecurity | None = None) -> None:
    """Refuse to start on topics whose partition count is not the configured one: a table's
    changelog must match its source topic, and Faust only notices on the first write, after
    saying Ready, and then exits on every event."""
    partitions = topics_config.partitions
    topics = [topics_config.usage, topics_config.rollups] + [
        table.changelog_topic.get_topic_name() for table in worker.app.tables.values()]
    counts = asyncio.run(partition_counts(bootstrap_of(broker), topics, security))
    wrong = {t: n for t, n in counts.items() if n != partitions}
    if wrong:
        listed = ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
        raise BrokerError(
            f"the config says [topics] partitions = {partitions}, but {listed}. Set partitions to the usage "
            "topic's count; changelog topics left by a run with another count hold that run's state and "
            "must be deleted (or the usage topic given their count) before the worker can start")


def signing_keyring(path: Path | None) -> Keyring:
    """The worker's control keys, which must be able to sign (an HMAC secret or an Ed25519 private key)."""
    keyring = Keyring.load(path)
    if keyring.signing_key_id is None:
        raise KeyringError(f"{path or 'the control keys'}: public keys only; the worker signs kills and needs "
                           "the private key file of `spendwatch keys generate`")
    return keyring


def worker_options(settings: Settings, security: KafkaSecurity | None = None) -> WorkerOptions:
    """The config as the worker's narrow, already-built pieces (control keys are read here, so a
    missing key file stops the start with its error)."""
    return WorkerOptions(
        topics=Topics(**settings.topics.model_dump()),
        # a method, not a built Monitor: each call gets detectors of its own
        monitor=settings.build_monitor,
        policy=settings.policy,
        routing=settings.routing,
        keyring=signing_keyring(settings.control_keys_file) if settings.kills() else None,
        time_bounds=TimeBounds(settings.max_ahead_s, settings.max_behind_s),
        strict_contract=settings.strict_contract,
        batch_max=settings.batch_max,
        batch_within_s=settings.batch_within_s,
        tick_every_s=settings.tick_every_s,
        evict_idle_s=settings.evict_idle_s,
        snapshot_every_s=settings.snapshot_every_s,
        commit_interval_s=settings.commit_interval_s,
        session_timeout_s=settings.session_timeout_s,
        check_changelog_offsets=settings.check_changelog_offsets,
        metrics_port=settings.worker.metrics_port,
        metrics_host=settings.worker.metrics_host,
        kafka=security if security is not None else settings.kafka.security(),
    )


def protect_secrets(settings: Settings) -> None:
    """Mask every secret this process may hold in its logs and sink errors (`streams.secrets`): the
    control keys from the environment, the sinks' tokens, URLs and keys, the Kafka password."""
    redact_logs()
    keys = os.environ.get(KEYS_ENV, "")
    register(keys, *(item.partition(":")[2] for item in keys.split(",")))
    for read in (settings.slack.token, settings.slack.webhook_url, settings.sinks.webhook_url,
                 settings.sinks.pagerduty_routing_key):
        read()  # each registers what it reads
    register(os.environ.get(settings.kafka.password_env))


def make_sinks(settings: Settings, console: Console) -> list[Sink]:
    sinks: list[Sink] = [ConsoleSink(console)]
    s = settings.slack
    if s.webhook_url() or (s.token() and s.channel):
        sinks.append(SlackSink(token=s.token(), channel=s.channel, webhook_url=s.webhook_url(), base_url=s.base_url))
    elif s.channel:
        log.warning("slack.channel is set but $%s is empty: Slack alerts are off", s.token_env)
    if url := settings.sinks.webhook_url():
        sinks.append(WebhookSink(url))
    if key := settings.sinks.pagerduty_routing_key():
        sinks.append(PagerDutySink(key, base_url=settings.sinks.pagerduty_base_url))
    return sinks


def run(
    settings: Settings,
    broker: str | None,
    *,
    data_dir: Path | None = None,
    console: Console | None = None,
    tasks: Sequence[Callable[[Worker], Awaitable[None]]] = (),
    duration: float | None = None,
    loglevel: str = "warning",
    kafka_wait: float | None = None,
) -> Worker:
    """Start (embedded broker,) worker and `tasks`; return when stopped (Ctrl-C, SIGTERM or `duration`).

    With a `broker` given, wait up to `kafka_wait` s (default: $SPENDWATCH_KAFKA_WAIT, else for ever)
    for it to be reachable first.
    """
    console = console or Console()
    protect_secrets(settings)
    with ExitStack() as stack:
        embedded = None
        # the embedded broker speaks plaintext only
        security = KafkaSecurity() if broker is None else settings.kafka.security()
        if broker is None:
            embedded = stack.enter_context(EmbeddedBroker())
            broker = embedded.url
            console.print(f"[dim]embedded Tansu broker on {embedded.bootstrap} (memory storage)[/]")
        else:
            wait_for_kafka(broker, kafka_wait_from_env() if kafka_wait is None else kafka_wait, security)
            if security.protocol != "PLAINTEXT":
                log.info("Kafka security: %s", security.describe())
        worker = build_app(worker_options(settings, security), broker, make_sinks(settings, console), data_dir=data_dir)
        if embedded is None:
            check_partitions(worker, broker, settings.topics, security)
        for task in tasks:
            worker.app.task(_bind(task, worker))
        if duration is not None:
            @worker.app.task
            async def stop_after() -> None:
                await asyncio.sleep(duration)
                signal.raise_signal(signal.SIGTERM)
        fw = faust.Worker(worker.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        # Faust's start-up spinner sets the root logger to DEBUG (to spin on every record), so every
        # send and table write would build a debug LogRecord: a fifth of a busy worker's time.
        fw.spinner = None
        tune_gc()
        try:
            fw.execute_from_commandline()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                if isinstance(fw.crash_reason, ConsistencyError):
                    raise fw.crash_reason from None  # the CLI says what to do about it
                raise
    return worker


def _bind(task: Callable[[Worker], Awaitable[None]], worker: Worker) -> Callable[[], Awaitable[None]]:
    async def bound() -> None:
        await task(worker)
    bound.__name__ = getattr(task, "__name__", "task")
    bound.__qualname__ = bound.__name__
    return bound

