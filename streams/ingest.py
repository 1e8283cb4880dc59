"""One batch of input records → effects to publish. Kafka-free, so tests can drive it directly.

Validation, misrouting, redelivery and dead-lettering live here; pricing,
dedup and aggregation are the Monitor's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiokafka.partitioner import murmur2

from detectors.engine.monitor import Monitor, Poisoned, describe
from schemas.alerts import Alert
from schemas.decode import parse_records
from schemas.structs import to_wire


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int
    offset: int
    timestamp: float | None = None  # the Kafka record's, in seconds


@dataclass
class Effects:
    deadletters: list[bytes] = field(default_factory=list)
    reroutes: list[tuple[int | None, bytes, bytes]] = field(default_factory=list)  # (partition, key, value) to usage
    alerts: list[Alert] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    dirty: dict[str, Record] = field(default_factory=dict)  # workflow -> last record (its partition owns the state)
    poisoned: list[Poisoned] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    redelivered: int = 0


DEADLETTER_KEEP_BYTES = 64_000


def deadletter(topic: str, rec: Record, reason: str, event: Any = None, **extra: Any) -> bytes:
    """A dead-letter value with the reason and the original record.

    Records over `DEADLETTER_KEEP_BYTES` keep a prefix plus size and SHA-256: the
    whole record stays in the source topic at the given partition and offset.
    """
    raw = rec.value or b""
    value = raw[:DEADLETTER_KEEP_BYTES]
    try:
        original: Any = value.decode() if rec.value is not None else None
        encoding = "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(value).decode(), "base64"
    doc = {"reason": reason, "topic": topic, "partition": rec.partition, "offset": rec.offset,
           "key": rec.key.decode(errors="replace") if rec.key else None,
           "record": original, "encoding": encoding}
    if len(raw) > DEADLETTER_KEEP_BYTES:
        doc.update(truncated=True, bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    if event is not None:
        doc["event"] = event
    events = extra.pop("events", None)
    if events is not None:  # a poisoned slice's events, unless too many to carry (Kafka's 1 MB default)
        listed = orjson.dumps(events)
        doc["events"] = orjson.Fragment(listed) if len(listed) <= DEADLETTER_KEEP_BYTES * 4 else None
        doc["event_count"] = len(events)
    doc.update(extra)
    return orjson.dumps(doc)


class TimeBounds(NamedTuple):
    """How far event time may stray from the wall clock in a live worker (None: unbounded).

    A publisher with a wrong clock, or a backfill, can send timestamps days off.
    Ahead, one such event would drag every workflow's event time along and make
    its real events "late"; far behind is history, which `spendwatch replay` is for.
    """

    ahead_s: float | None = 600.0
    behind_s: float | None = None

    def reason(self, ts: float, now: float) -> str | None:
        if self.ahead_s is not None and ts > now + self.ahead_s:
            return (f"ts is {ts - now:.0f}s ahead of the worker's clock (limit {self.ahead_s:.0f}s, "
                    "setting max_ahead_s): the publisher's clock is wrong, or ts is not epoch seconds")
        if self.behind_s is not None and ts < now - self.behind_s:
            return (f"ts is {now - ts:.0f}s behind the worker's clock (limit {self.behind_s:.0f}s, "
                    "setting max_behind_s): backtest history with `spendwatch replay backtest`")
        return None


NO_BOUNDS = TimeBounds(None, None)
"""Every event time accepted."""


@functools.lru_cache(maxsize=1 << 16)
def home_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java client and aiokafka (murmur2) give `key`: a workflow's state lives there.
    librdkafka (Go, Node, confluent-kafka, kcat) hashes with CRC32 by default, so its records are forwarded.
    Cached: aiokafka's murmur2 is pure Python (~2 µs), asked once per record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def unknown_fields_note(counts: Counter[str], most: int = 5) -> str:
    """The log line for ignored fields: the commonest names and what to do."""
    names = ", ".join(f"{name} ({n:,})" for name, n in counts.most_common(most))
    more = f" and {len(counts) - most} more" if len(counts) > most else ""
    return (f"events carry fields this worker does not know, ignored (their spend counts): {names}{more}; "
            "a newer publisher? upgrade the worker, or set strict_contract = true to dead-letter such events")


class Ingestor:
    """Turns a batch of usage-topic records into effects. Nothing a record holds stops it:
    bad records, out-of-bounds times and workflows whose processing raises are dead-lettered
    with the reason; events off their workflow's home partition (another key, another partitioner)
    are forwarded there; everything else is applied.

    Fields this version does not know are ignored and counted in `unknown_fields`, unless
    `strict` dead-letters their events.

    `partitions` is the usage topic's partition count (None: every record is on its home partition,
    as in replay): one workflow's records then come from one partition, in order, so the last
    applied offset tells redelivery apart, and its state has one owner."""

    def __init__(self, monitor: Monitor, topic: str, max_record_bytes: int = 1_000_000,
                 bounds: TimeBounds = NO_BOUNDS, clock: Callable[[], float] = time.time,
                 partitions: int | None = None, strict: bool = False):
        self.monitor = monitor
        self.topic = topic
        self.partitions = partitions
        self.max_record_bytes = max_record_bytes
        self.bounds = bounds
        self.clock = clock
        self.strict = strict
        self.unknown_fields: Counter[str] = Counter()  # field name -> events that carried it (ignored)

    def handle(self, records: list[Record]) -> Effects:
        fx = Effects()
        batch = []
        sources: dict[str, list[tuple[Record, list[Any]]]] = {}  # workflow -> its records and their events
        now = self.clock()
        # event times inside these need no bounds check (the common case, one comparison per event)
        ahead, behind = self.bounds.ahead_s, self.bounds.behind_s
        latest = now + ahead if ahead is not None else math.inf
        earliest = now - behind if behind is not None else -math.inf
        offsets: dict[str, int] = {}  # workflow -> its last applied offset, looked up once per batch
        parsed = parse_records([rec.value for rec in records], self.max_record_bytes, self.strict, self.unknown_fields)
        for rec, (events, errors) in zip(records, parsed, strict=True):
            for err in errors:
                fx.deadletters.append(deadletter(self.topic, rec, err.reason))
            key: str | None = None
            home = False  # without a key, a record has no home partition: all its events are forwarded
            if rec.key:
                key = rec.key.decode(errors="replace")
                home = self.partitions is None or rec.partition == home_partition(rec.key, self.partitions)
            mine = []
            for ev in events:
                if ev.workflow != key or not home:
                    # State of a workflow lives on its key's home partition: send it there (its event
                    # id makes a second forward after a crash a duplicate, not a second count).
                    wkey = ev.workflow.encode()
                    part = home_partition(wkey, self.partitions) if self.partitions else None
                    fx.reroutes.append((part, wkey, orjson.dumps(to_wire(ev))))
                    continue
                if not earliest <= ev.ts <= latest and (why := self.bounds.reason(ev.ts, now)):
                    fx.deadletters.append(deadletter(self.topic, rec, why, to_wire(ev)))
                    continue
                mine.append(ev)
            if not mine:
                continue
            assert key is not None, "events are kept only on their key's home partition"
            offset = offsets.get(key)
            if offset is None:
                try:
                    offset = offsets[key] = self.monitor.workflow(key).offset
                except Exception as exc:  # noqa: BLE001 - e.g. stored state of a newer format
                    fx.poisoned.append(Poisoned(key, mine, describe(exc)))
                    fx.deadletters.append(deadletter(self.topic, rec, describe(exc),
                                                     events=[to_wire(e) for e in mine]))
                    continue
            if rec.offset <= offset:
                fx.redelivered += len(mine)
                continue
            batch.extend(mine)
            sources.setdefault(key, []).append((rec, mine))
        out = self.monitor.process(batch)
        for ev, reason in out.late:
            fx.deadletters.append(deadletter(self.topic, _source(sources[ev.workflow], ev), reason, to_wire(ev)))
        for bad in out.poisoned:
            reason = f"processing failed, workflow state left as before: {bad.reason}"
            for rec, evs in sources.pop(bad.workflow):
                fx.deadletters.append(deadletter(self.topic, rec, reason, events=[to_wire(e) for e in evs]))
        fx.poisoned.extend(out.poisoned)
        for wf, recs in sources.items():
            rec = recs[-1][0]
            self.monitor.workflows[wf].offset = rec.offset
            fx.dirty[wf] = rec
        fx.alerts = out.alerts
        fx.snapshots = out.snapshots
        fx.accepted = out.accepted
        fx.duplicates = out.duplicates
        return fx


def _source(records: list[tuple[Record, list[Any]]], event: Any) -> Record:
    """The record an event came from (only asked for rare late events)."""
    return next(rec for rec, evs in records if any(e is event for e in evs))
