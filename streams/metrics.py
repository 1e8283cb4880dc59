"""The worker's own health as Prometheus metrics, and the HTTP endpoint that serves them.

Spend, tokens and budgets per workflow are the dashboard process's metrics; these say
whether this worker keeps up: what became of the records it read, why records were
dead-lettered, how long a batch takes, how far it lags and how fast an alert leaves.

Label values are bounded, since most of what a record holds is caller input: no run,
agent or workflow ids; dead-letter reasons are mapped to `DEADLETTER_REASONS`; unpriced
model names keep their own label up to `UNPRICED_MODELS_CAP`, the rest count as `other`.
Each `WorkerMetrics` has a registry of its own, so tests and several apps in one process
never clash over Prometheus's global one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("spendwatch.worker")

RESULTS = ("accepted", "duplicate", "redelivered", "deadletter", "rerouted", "poisoned")
DEADLETTER_REASONS = ("malformed", "invalid_event", "too_large", "tombstone", "event_time", "late",
                      "processing_failed", "internal")
"""What a dead letter's free-text reason is counted as (`deadletter_category`)."""
UNPRICED_MODELS_CAP = 50
"""Unknown model names with a label of their own; the rest are counted as `OTHER`."""
OTHER = "other"
LAG_EVERY_S = 5.0
"""Seconds between refreshes of the consumer lag gauge."""


def deadletter_category(doc: Mapping[str, Any]) -> str:
    """The bounded category of one dead-letter value (`streams.ingest.deadletter`'s document).

    The reasons come from `schemas.decode.parse_record` (record and event validation),
    `streams.ingest` (event-time bounds, poisoned slices) and the Monitor (late events)."""
    reason = str(doc.get("reason") or "")
    if "event_count" in doc:  # a slice whose processing raised, carried with its events
        return "processing_failed"
    if reason.startswith("null value"):
        return "tombstone"
    if reason.startswith(("record is ", "array of ")) and ", over the " in reason:
        return "too_large"
    if reason.startswith(("not valid JSON", "record must be a JSON")):
        return "malformed"
    if reason.startswith("late:"):
        return "late"
    if reason.startswith("ts is ") and "the worker's clock" in reason:
        return "event_time"
    return "invalid_event"  # what is left of parse_record's refusals: `field.path: message`


class WorkerMetrics:
    """One worker's metrics, in a registry of its own (`registry`)."""

    def __init__(self, registry: CollectorRegistry | None = None, unpriced_cap: int = UNPRICED_MODELS_CAP,
                 process: bool = True):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)  # memory, CPU, open files of this process
        self.records = Counter("spendwatch_worker_records", "Usage-topic events by what became of them; a "
                               "deadletter is one dead-letter record written (any topic)", ["result"], registry=r)
        self.deadletters = Counter("spendwatch_worker_deadletters", "Dead-letter records written, by category of "
                                   "reason", ["reason"], registry=r)
        self.unpriced = Counter("spendwatch_worker_unpriced_calls", "Calls priced at the fallback rate (model not "
                                f"in the catalog); names beyond the first {unpriced_cap} count as {OTHER!r}",
                                ["model"], registry=r)
        self.alerts = Counter("spendwatch_worker_alerts", "Alerts this worker published", ["kind", "severity"],
                              registry=r)
        self.kills = Counter("spendwatch_worker_kills", "Signed kill commands this worker published", ["scope"],
                             registry=r)
        self.batch_seconds = Histogram("spendwatch_worker_batch_seconds", "Wall time to process one ingest batch",
                                       registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                                            5, 10, 30))
        self.batch_records = Histogram("spendwatch_worker_batch_records", "Kafka records per ingest batch",
                                       registry=r, buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 25_000,
                                                            100_000))
        self.event_to_alert = Histogram(
            "spendwatch_worker_event_to_alert_seconds",
            "From the Kafka timestamp of the newest record of the alert's workflow in the batch that raised it to "
            "the broker acking the alert (producer clocks count; alerts raised on timers are not observed)",
            registry=r, buckets=(.05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.lag = Gauge("spendwatch_worker_consumer_lag_records", "High watermark minus the consumer's fetch "
                         "position, per assigned usage partition", ["topic", "partition"], registry=r)
        self.workflows = Gauge("spendwatch_worker_workflows_in_memory", "Workflows whose state this worker holds "
                               "in memory", registry=r)
        self.unpriced_cap = unpriced_cap
        self._unpriced_seen: dict[str, int] = {}  # PriceBook name -> calls already counted
        self._unpriced_labels: set[str] = set()
        self._lag_partitions: set[tuple[str, str]] = set()
        for result in RESULTS:
            self.records.labels(result)  # every series from the start, at 0: rate() needs a first sample
        for reason in DEADLETTER_REASONS:
            self.deadletters.labels(reason)

    def count(self, result: str, n: int) -> None:
        if n:
            self.records.labels(result).inc(n)

    def deadletter(self, category: str) -> None:
        self.deadletters.labels(category).inc()

    def deadletter_values(self, values: list[bytes]) -> None:
        """Dead-letter records of the usage topic, as written: counted by result and category."""
        self.count("deadletter", len(values))
        for value in values:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:  # never: `streams.ingest.deadletter` writes them
                doc = {}
            self.deadletter(deadletter_category(doc))

    def note_unpriced(self, counts: Mapping[str, int]) -> None:
        """Counts up to a PriceBook's cumulative `unpriced` calls per model name."""
        seen = self._unpriced_seen
        for name, n in counts.items():
            if (new := n - seen.get(name, 0)) > 0:
                seen[name] = n
                self.unpriced.labels(self._model_label(name)).inc(new)

    def _model_label(self, name: str) -> str:
        if name in self._unpriced_labels:
            return name
        if len(self._unpriced_labels) < self.unpriced_cap:
            self._unpriced_labels.add(name)
            return name
        return OTHER

    def alert(self, kind: str, severity: str) -> None:
        self.alerts.labels(kind, severity).inc()

    def kill(self, scope: str) -> None:
        self.kills.labels(scope).inc()

    def batch(self, records: int, seconds: float) -> None:
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)

    def set_lag(self, topic: str, lags: Mapping[int, int]) -> None:
        """The lag of each assigned partition; partitions no longer listed leave the gauge."""
        now = {(topic, str(p)) for p in lags}
        for gone in self._lag_partitions - now:
            self.lag.remove(*gone)
        for p, lag in lags.items():
            self.lag.labels(topic, str(p)).set(lag)
        self._lag_partitions = now

    def watch_workflows(self, count: Callable[[], int]) -> None:
        self.workflows.set_function(count)


class MetricsPortError(RuntimeError):
    """The metrics endpoint cannot listen where it was told to."""


class MetricsServer:
    """`GET /metrics` over aiohttp on the worker's own event loop.

    The socket is bound at construction, before the worker starts, so a port in use is an
    error at start-up rather than a log line in a running worker."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
        except OSError as err:
            raise MetricsPortError(f"the metrics endpoint cannot listen on {host}:{port} ({err.strerror or err}); "
                                   "choose another [worker] metrics_port / --metrics-port, or 0 to turn it off") \
                from None
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.host = host
        self.metrics = metrics
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def handle(self, request: web.Request) -> web.Response:
        """Prometheus text format, or OpenMetrics when the scraper asks for it."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.metrics.registry), headers={"Content-Type": content_type})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
