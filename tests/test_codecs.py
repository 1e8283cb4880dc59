"""Records from librdkafka (confluent-kafka), the producer of Go, Node, kcat and the OTel Collector.

librdkafka compresses (gzip, snappy, lz4, zstd) and hashes keys with CRC32, where aiokafka and
the Java client use murmur2. Tansu passes the compressed batches through as produced (aiokafka
on the consuming side sees batches of codec 1..4), so the worker must decode every codec.

`test_each_codec_is_counted_exactly` is about codecs only: one partition, so partitioning cannot
matter. Its records are what a Go, Java or Node service sends (README "Any-language producers"):
single events and JSON arrays, some with Kafka headers (ignored), timestamps as epoch seconds and as
RFC 3339. `kcat` (Debian's, run on the librdkafka of the confluent-kafka wheel: see
`kcat_command`) publishes one more workflow, compressed with zstd. `test_a_workflow_published_by_both_partitioners_is_counted_exactly` is about the other
half: the same workflow key sent by aiokafka and by librdkafka lands on two partitions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.engine.counters import CALLS, COST, INPUT, OUTPUT
from streams.broker import EmbeddedBroker
from streams.workflow_table import latest_states
from tests.conftest import start_worker, wait_for
from tests.kafka_io import create_topic, publish, read_all

confluent_kafka = pytest.importorskip("confluent_kafka")

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
MODEL = "codec-llm-unpriced"  # the fallback rate: 10 µUSD per input token, 30 per output token
TOPIC = "spendwatch.usage"


def events_for(wf: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    now = time.time()
    return [{"type": "usage", "event_id": f"{wf}-{i}", "ts": round(now - 120 + i * 0.01, 3), "workflow": wf,
             "model": MODEL, "input_tokens": 100 + i % 997, "output_tokens": 1 + i % 89, "agent_id": "a1"}
            for i in range(start, start + n)]


def rfc3339(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its timestamp as RFC 3339 (`2026-01-15T10:00:00.120000Z`), as Go's time.RFC3339Nano,
    Java's Instant.toString() and JavaScript's Date.toISOString() write it."""
    return {**event, "ts": datetime.fromtimestamp(event["ts"], UTC).isoformat().replace("+00:00", "Z")}


HEADERS = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
           ("content-type", b"application/json")]


def kcat_command() -> tuple[list[str], dict[str, str]] | None:
    """`kcat` and its environment, or None when it cannot talk to the embedded broker here.

    Debian's kcat 1.7.1 links librdkafka 2.0.2, which cannot read Tansu's ApiVersions v3 response: Tansu
    writes its tagged fields even at their default values (FinalizedFeaturesEpoch, an 8-byte field),
    and librdkafka 2.0.2 skips one byte too few of every tagged field ("Protocol read buffer underflow
    for ApiVersion v3"). With `api.version.request=false` and an old `broker.version.fallback` it gets
    metadata but Tansu refuses the legacy produce and list-offsets versions. Apache Kafka omits
    default tagged fields, so the same kcat works against it. Run on a newer librdkafka (the one in
    the confluent-kafka wheel, via LD_PRELOAD) kcat works unchanged."""
    kcat = shutil.which("kcat")
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    lib = next(iter(sorted(libs.glob("librdkafka*.so*"))), None) if libs.is_dir() else None
    if kcat is None or lib is None:
        return None
    return [kcat], {**os.environ, "LD_PRELOAD": str(lib)}


def kcat_publish(bootstrap: str, records: list[tuple[bytes, bytes]], codec: str) -> None:
    """One record per line, `key<TAB>value`, with headers, as a shell script would send them."""
    command = kcat_command()
    assert command is not None
    argv, env = command
    lines = b"".join(key + b"\t" + value + b"\n" for key, value in records)
    subprocess.run([*argv, "-b", bootstrap, "-P", "-t", TOPIC, "-K", "\t", "-z", codec,
                    "-H", "source=kcat", "-X", "linger.ms=50"], input=lines, env=env, check=True, timeout=60)


def truth(events: list[dict[str, Any]]) -> list[int]:
    return [sum(10 * e["input_tokens"] + 30 * e["output_tokens"] for e in events),
            sum(e["input_tokens"] for e in events), sum(e["output_tokens"] for e in events), len(events)]


def totals(bootstrap: str) -> dict[str, list[int]]:
    out = {}
    for wf, st in latest_states(read_all(bootstrap, "spendwatch-workflows-changelog")).items():
        days = [v for k, v in st.spend.periods.items() if len(k) == 10]
        out[wf] = [sum(v[i] for v in days) for i in (COST, INPUT, OUTPUT, CALLS)]
    return out


def librdkafka_publish(bootstrap: str, records: list[tuple[bytes, bytes]], codec: str,
                       headers: Callable[[int], list[tuple[str, bytes]] | None] = lambda i: None) -> list[int]:
    """Produce with confluent-kafka's defaults (partitioner consistent_random: CRC32 of the key) and
    `codec`; returns each record's partition. Lingers so batches hold many records to compress."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                                         "linger.ms": 50, "message.max.bytes": 8_000_000})
    partitions: list[int] = []
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        (errors.append(err) if err else partitions.append(msg.partition()))

    for i, (key, value) in enumerate(records):
        producer.produce(TOPIC, value=value, key=key, headers=headers(i), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "librdkafka could not deliver everything in 30 s"
    assert not errors, errors[:3]
    return partitions


@dataclass
class CodecRun:
    events: dict[str, list[dict[str, Any]]]
    bootstrap: str
    worker: Any
    log: Path
    totals: dict[str, list[int]]
    deadletters: list[Any]


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodecRun]:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    tmp = tmp_path_factory.mktemp("codecs")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, env: dict[str, str] | None = None, log: str = "proc.log") -> subprocess.Popen[bytes]:
        out = open(tmp / log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "spendwatch", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc

    config = tmp / "spendwatch.toml"
    config.write_text("[topics]\npartitions = 1\n")
    with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
        try:
            for topic in (TOPIC, "spendwatch.alerts", "spendwatch.deadletter", "spendwatch.rollups"):
                create_topic(broker.bootstrap, topic, 1)
            worker = start_worker(spawn, broker, "--config", str(config))
            events = {}
            for codec in CODECS:
                wf = f"codec-{codec}"
                evs = events[wf] = events_for(wf, 1_300)
                wire = [rfc3339(e) if i % 2 else e for i, e in enumerate(evs)]  # both timestamp forms
                singles = [(wf.encode(), orjson.dumps(e)) for e in wire[:300]]
                arrays = [(wf.encode(), orjson.dumps(wire[i:i + 50])) for i in range(300, 1_300, 50)]
                librdkafka_publish(broker.bootstrap, singles + arrays, codec,
                                   headers=lambda i: HEADERS if i % 3 == 0 else None)  # headers are ignored
            if kcat_command() is not None:
                evs = events["codec-kcat"] = events_for("codec-kcat", 600)
                kcat_publish(broker.bootstrap, [(b"codec-kcat", orjson.dumps([rfc3339(e) for e in evs[i:i + 20]]))
                                                for i in range(0, 600, 20)], "zstd")
            want = {wf: truth(evs) for wf, evs in events.items()}
            try:
                wait_for(lambda: all(totals(broker.bootstrap).get(wf) == t for wf, t in want.items())
                         or worker.poll() is not None, 90, "every codec's events counted")
            except AssertionError:
                pass  # the tests below say which codec is short
            yield CodecRun(events, broker.bootstrap, worker, tmp / "worker.log", totals(broker.bootstrap),
                           read_all(broker.bootstrap, "spendwatch.deadletter"))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


@pytest.mark.parametrize("codec", [*CODECS, "kcat"])
def test_each_codec_is_counted_exactly(codec_run: CodecRun, codec: str):
    wf = f"codec-{codec}"
    if wf not in codec_run.events:
        pytest.skip("no kcat, or no confluent-kafka wheel librdkafka to run it on (see kcat_command)")
    assert codec_run.worker.poll() is None, (f"worker exited with {codec_run.worker.returncode}:\n"
                                            + codec_run.log.read_text(errors="replace")[-3000:])
    assert codec_run.totals.get(wf) == truth(codec_run.events[wf]), (
        f"{codec}: got {codec_run.totals.get(wf)}, want {truth(codec_run.events[wf])} [µUSD, in, out, calls]")
    assert not codec_run.deadletters, [orjson.loads(v)["reason"][:100] for _, v in codec_run.deadletters[:5]]


def _murmur2_partition(key: bytes, n: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % n


def test_a_workflow_published_by_both_partitioners_is_counted_exactly(fresh_broker: EmbeddedBroker,
                                                                      spawn: Callable[..., Any], tmp_path: Path):
    """One workflow, two producers: aiokafka puts its key on partition murmur2 % 4, librdkafka on
    CRC32 % 4. Every event must still count exactly once (DESIGN: "anything keyed by the
    workflow's partition must cope"), with repeats from both producers and a SIGKILL between."""
    broker, n = fresh_broker, 4
    wf = next(w for w in (f"mixed-{i}" for i in range(100))
              if _murmur2_partition(w.encode(), n) != zlib.crc32(w.encode()) % n)
    for topic in (TOPIC, "spendwatch.alerts", "spendwatch.deadletter", "spendwatch.rollups"):
        create_topic(broker.bootstrap, topic, n)
    worker = start_worker(spawn, broker)
    first, second, third = events_for(wf, 200), events_for(wf, 50, 200), events_for(wf, 100, 250)
    publish(broker.bootstrap, TOPIC, [(wf.encode(), orjson.dumps(e)) for e in first])  # murmur2
    wait_for(lambda: totals(broker.bootstrap).get(wf, [0] * 4)[3] >= 200, 60, "the aiokafka events")
    # librdkafka's own events, and 50 of aiokafka's again (a retrying publisher): forwarded, counted once
    parts = librdkafka_publish(broker.bootstrap, [(wf.encode(), orjson.dumps(e)) for e in second + first[:50]],
                               "lz4")
    assert set(parts) == {zlib.crc32(wf.encode()) % n}  # librdkafka's default: CRC32 of the key
    worker.kill()  # SIGKILL while the forwards may be in flight: a new worker takes over from the changelog
    worker.wait()
    worker = start_worker(spawn, broker)
    publish(broker.bootstrap, TOPIC, [(wf.encode(), orjson.dumps(third))]  # murmur2 again, one array,
            + [(wf.encode(), orjson.dumps(e)) for e in second[:20]])  # and 20 of librdkafka's again
    want = truth(first + second + third)
    try:
        wait_for(lambda: totals(broker.bootstrap).get(wf) == want, 60, "all 350 events")
    except AssertionError:
        pass
    got = totals(broker.bootstrap).get(wf)
    assert worker.poll() is None
    assert got == want, (f"{wf} (murmur2 partition {_murmur2_partition(wf.encode(), n)}, CRC32 partition "
                         f"{zlib.crc32(wf.encode()) % n}): got {got}, want {want} [µUSD, in, out, calls]")


def test_debians_kcat_alone_cannot_read_the_embedded_brokers_api_versions(codec_run: CodecRun):
    """Why `kcat_command` runs kcat on the wheel's librdkafka (README "Any-language producers"). If this
    starts failing, Debian's kcat (or Tansu) changed: kcat may work as is, and the README should say so."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("no kcat")
    version = subprocess.run([kcat, "-V"], capture_output=True, text=True, timeout=10).stdout
    if "librdkafka 2.0." not in version:
        pytest.skip(f"this kcat is not Debian 12's (librdkafka 2.0.x): {version.strip()[:120]}")
    plain = subprocess.run([kcat, "-b", codec_run.bootstrap, "-L", "-m", "3"], capture_output=True, text=True,
                           timeout=30)
    assert plain.returncode != 0 and "ApiVersionRequest failed" in plain.stderr, plain.stderr[-500:]
    command = kcat_command()
    assert command is not None
    fixed = subprocess.run([*command[0], "-b", codec_run.bootstrap, "-L", "-t", TOPIC], capture_output=True,
                           text=True, env=command[1], timeout=30)
    assert fixed.returncode == 0 and f'topic "{TOPIC}" with 1 partitions' in fixed.stdout, fixed.stderr[-500:]
