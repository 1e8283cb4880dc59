"""One batch of input records → effects to publish. Kafka-free, so tests can drive it directly.

Validation, misrouting, redelivery and dead-lettering live here; pricing,
dedup and aggregation are the Monitor's.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from detectors.monitor import Monitor
from schemas.alerts import Alert
from schemas.decode import parse_record
from schemas.structs import to_wire


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    partition: int
    offset: int


@dataclass
class Effects:
    deadletters: list[bytes] = field(default_factory=list)
    reroutes: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) back to the usage topic
    alerts: list[Alert] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    dirty: dict[str, Record] = field(default_factory=dict)  # workflow -> last record (its partition owns the state)
    accepted: int = 0
    duplicates: int = 0
    redelivered: int = 0


DEADLETTER_KEEP_BYTES = 64_000


def deadletter(topic: str, rec: Record, reason: str, event: Any = None) -> bytes:
    """A dead-letter value with the reason and the original record.

    Records over `DEADLETTER_KEEP_BYTES` keep a prefix plus size and SHA-256: the
    whole record stays in the source topic at the given partition and offset.
    """
    value = rec.value[:DEADLETTER_KEEP_BYTES]
    try:
        original: Any = value.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(value).decode(), "base64"
    doc = {"reason": reason, "topic": topic, "partition": rec.partition, "offset": rec.offset,
           "key": rec.key.decode(errors="replace") if rec.key else None,
           "record": original, "encoding": encoding}
    if len(rec.value) > DEADLETTER_KEEP_BYTES:
        doc.update(truncated=True, bytes=len(rec.value), sha256=hashlib.sha256(rec.value).hexdigest())
    if event is not None:
        doc["event"] = event
    return orjson.dumps(doc)


class Ingestor:
    def __init__(self, monitor: Monitor, topic: str, max_record_bytes: int = 1_000_000):
        self.monitor = monitor
        self.topic = topic
        self.max_record_bytes = max_record_bytes

    def handle(self, records: list[Record]) -> Effects:
        fx = Effects()
        batch = []
        last: dict[str, Record] = {}
        for rec in records:
            events, errors = parse_record(rec.value, self.max_record_bytes)
            for err in errors:
                fx.deadletters.append(deadletter(self.topic, rec, err.reason))
            key = rec.key.decode(errors="replace") if rec.key else None
            for ev in events:
                if ev.workflow != key:
                    # State of a workflow lives on the partition of its key: send it there.
                    fx.reroutes.append((ev.workflow.encode(), orjson.dumps(to_wire(ev))))
                    continue
                if rec.offset <= self.monitor.workflow(key).offset:
                    fx.redelivered += 1
                    continue
                batch.append(ev)
                last[key] = rec
        out = self.monitor.process(batch)
        for ev, reason in out.late:
            fx.deadletters.append(deadletter(self.topic, last[ev.workflow], reason,
                                             to_wire(ev)))
        for wf, rec in last.items():
            self.monitor.workflows[wf].offset = rec.offset
        fx.dirty = last
        fx.alerts = out.alerts
        fx.snapshots = out.snapshots
        fx.accepted = out.accepted
        fx.duplicates = out.duplicates
        return fx
