"""Runs every benchmark scenario on its own embedded broker and reports figures with ratios.

Throughput is timed from the moment the load is published on a warmed-up
worker until the consumer group has committed every record (commit interval
0.2 s), so Faust's own start-up never counts. Totals are checked against the
load's ground truth after every scenario.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from detectors.engine.workflow import WorkflowState
from spendwatch.bench import peer_quix
from spendwatch.bench.load import Load, loop_run, make_load, publish
from spendwatch.bench.report import LATENCY_TARGET_S, PEER_MISSING, add_ratios, clean, latency_summary
from streams.broker import EmbeddedBroker
from streams.workflow_table import latest_states

TOPIC = "spendwatch.usage"
BENCH_CONFIG = "session_timeout_s = 6\n"
"""Workers join the group 2 s sooner (start-up only: rates are timed from the first batch on)."""
DRAIN_S = 30.0
"""How long the latency run keeps listening after the last event: an alert later than this is missed."""


def _rss_peak_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # the process has exited
        pass
    return None


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class Workers:
    """Worker processes (the real one or the naive baseline) on one broker, each reporting progress."""

    def __init__(self, broker: EmbeddedBroker, kind: str = "worker", count: int = 1, config: str = ""):
        self.dir = Path(tempfile.mkdtemp(prefix="spendwatch-bench-"))
        toml = self.dir / "spendwatch.toml"
        toml.write_text(BENCH_CONFIG + config)
        cmd = {"naive": [sys.executable, "-m", "spendwatch.bench.naive", broker.url],
               "peer": [sys.executable, "-m", "spendwatch.bench.peer_quix", broker.bootstrap, str(self.dir / "state")],
               "worker": [sys.executable, "-m", "spendwatch", "worker", "--broker", broker.url, "--config", str(toml)],
               }[kind]
        self.files = [self.dir / f"progress-{i}.json" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for f in self.files:
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               env={**os.environ, "SPENDWATCH_PROGRESS_FILE": str(f)}))
            if f != self.files[-1]:
                # Two workers creating the same topics at once on a fresh Tansu can leave a changelog
                # partition without a leader in the metadata, and the producer waiting for it forever
                # (seen in 4 of ~25 simultaneous starts): the next worker joins once this one has
                # created them, which also makes it a rebalance under load.
                _wait_for_file(f, timeout=120)

    def progress(self) -> list[dict[str, Any]]:
        return [orjson.loads(f.read_bytes()) for f in self.files if f.exists()]

    def wait_for(self, events: int, timeout: float) -> float:
        """Events per second once `events` are done, timed from the end of each worker's first batch:
        that batch's events are left out, since a backlog makes it large and its start is unknown."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.progress()
            if sum(p["events"] for p in done) >= events:
                span = max(p["last"] for p in done) - min(p["first"] for p in done)
                timed = sum(p["events"] - p["first_events"] for p in done)
                return timed / span if span > 0 else float("inf")
            time.sleep(0.05)
        raise TimeoutError(f"workers processed {sum(p['events'] for p in self.progress())} of {events} events "
                           f"in {timeout:.0f}s")

    def peak_rss_mb(self) -> float | None:
        peaks = [_rss_peak_mb(p.pid) for p in self.procs]
        return None if any(x is None for x in peaks) else max(x for x in peaks if x is not None)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of `topic`, in partition order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[tuple[bytes | None, bytes | None]] = []
        for tp in tps:
            while await consumer.position(tp) < end[tp]:
                records += ((m.key, m.value) for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # partitions_for_topic reads cached metadata only
    return consumer.partitions_for_topic(topic) or set()


async def read_states(bootstrap: str) -> dict[str, WorkflowState]:
    return latest_states(await read_topic(bootstrap, "spendwatch-workflows-changelog"))


async def check_naive_totals(broker: EmbeddedBroker, load: Load, patience: float = 30.0) -> bool:
    """The naive table's last value per workflow is [calls, input + output tokens]: equal to the truth."""
    deadline = time.monotonic() + patience
    while True:
        latest = dict(await read_topic(broker.bootstrap, "spendwatch-naive-naive-spend-changelog"))
        exact = all((v := latest.get(wf.encode())) is not None and orjson.loads(v) == [c, i + o]
                    for wf, (c, i, o) in load.truth.items())
        if exact or time.monotonic() > deadline:
            return exact
        await asyncio.sleep(1.0)


def totals_match(seen: dict[str, list[int]], load: Load) -> bool:
    return {wf: list(t) for wf, t in seen.items()} == load.truth


async def raw_consume(bootstrap: str, load: Load, timeout: float = 300) -> dict[str, Any]:
    """The ceiling for one Python consumer: aiokafka `getmany` and an orjson decode of every
    record, summing calls and tokens per workflow (to check), no other work. Timed from the
    end of the first fetch, like the workers."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8_000_000, fetch_max_bytes=64_000_000)
    await consumer.start()
    try:
        parts = await _partitions(consumer, TOPIC)
        tps = [TopicPartition(TOPIC, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: dict[str, list[int]] = {}
        events = first_events = 0
        first = 0.0
        deadline = time.monotonic() + timeout
        while events < load.events and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500, max_records=100_000)).values():
                for m in msgs:
                    value = orjson.loads(m.value)
                    for ev in value if isinstance(value, list) else (value,):
                        t = seen.get(ev["workflow"])
                        if t is None:
                            t = seen[ev["workflow"]] = [0, 0, 0]
                        t[0] += 1
                        t[1] += ev["input_tokens"]
                        t[2] += ev["output_tokens"]
                        events += 1
            if events and not first:
                first, first_events = time.perf_counter(), events
        span = time.perf_counter() - first
        rate = (events - first_events) / span if span > 0 else None
        return {"events": events, "events_per_s": None if rate is None else round(rate), "peak_rss_mb": None,
                "totals_exact": events == load.events and totals_match(seen, load)}
    finally:
        await consumer.stop()


async def check_totals(broker: EmbeddedBroker, load: Load, patience: float = 30.0) -> bool:
    """Calls and tokens per workflow equal the published ground truth, exactly.

    The last batches' changelog records may still be in the worker's producer
    when the progress file says done, so this reads again for `patience` seconds.
    """
    deadline = time.monotonic() + patience
    while True:
        states = await read_states(broker.bootstrap)
        exact = True
        for wf, (calls, inp, out) in load.truth.items():
            months = [v for k, v in states[wf].spend.periods.items() if len(k) == 7] if wf in states else []
            exact &= [sum(v[i] for v in months) for i in (4, 1, 2)] == [calls, inp, out]
        if exact or time.monotonic() > deadline:
            return exact
        await asyncio.sleep(1.0)


async def latency_at(broker: EmbeddedBroker, rate: float, seconds: float, per_record: int = 500,
                     patience: float = DRAIN_S) -> dict[str, float | None]:
    """Event-to-alert latency of evident loops while background load runs at `rate` events/s.

    Two loops a second are injected. After the last event this keeps listening up to
    `patience` seconds for the outstanding loops' alerts, so a late alert is reported with
    its latency and only one that never came within that time counts as missed (None)."""
    # Tansu holds a fetch for its whole max wait while records arrive: aiokafka's 500 ms would be timed too
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=20)
    await consumer.start()
    tps = [TopicPartition("spendwatch.alerts", p) for p in range(4)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    async def listen() -> None:
        while True:
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                for m in msgs:
                    a = orjson.loads(m.value)
                    if a["kind"] == "loop" and a["run_id"] in sent and a["run_id"] not in got:
                        got[a["run_id"]] = time.perf_counter()

    listener = asyncio.create_task(listen())
    background = make_load(int(rate * seconds) + per_record, per_record, seed=7, t0=time.time(), spacing=1 / rate)
    every = max(1, int(rate / per_record / 2))  # two loops a second
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_request_size=8_000_000)
    await producer.start()
    start = time.perf_counter()
    try:
        for i, (key, value) in enumerate(background.records):
            due = start + i * per_record / rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            await producer.send(TOPIC, value, key=key)
            if i % every == 0:
                run = f"loop-{uuid.uuid4().hex[:8]}"
                for ev in loop_run(run, time.time()):
                    await producer.send(TOPIC, orjson.dumps(ev), key=b"bench-loops")
                await producer.flush()
                sent[run] = time.perf_counter()
        await producer.flush()
        drained = time.perf_counter() + patience
        while len(got) < len(sent) and time.perf_counter() < drained:  # late alerts, told from missing ones
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await consumer.stop()
    return {r: (got[r] - t if r in got else None) for r, t in sent.items()}


def memory_per_run(runs: int = 100_000, workflows: int = 10_000) -> dict[str, float | None]:
    """State per active run, in a fresh process: its peak RSS holding `runs` runs, then the
    bytes the state takes (tracemalloc, a second pass) and the loop detector's share, and what
    `runs` more runs of the same workflows add: the cost of one more run, apart from the
    workflows' own state (models, counters), which the whole divided by `runs` includes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure_state, runs, workflows).result()


def _measure_state(runs: int, workflows: int) -> dict[str, float | None]:
    import tracemalloc

    from detectors.engine.monitor import Monitor
    from detectors.loops import LoopDetector
    from schemas.structs import Usage

    t0 = time.time() - 3600
    spacing = 600 / (2 * runs)  # every run stays in flight: none is idle for the loop detector's 900 s
    # type checkers see the pydantic model the Struct mirrors, whose `type` is the Struct's tag
    events = [Usage(event_id=f"m{i}", ts=t0 + i * spacing, workflow=f"wf-{i % workflows}",
                    model="gpt-4o", run_id=f"run-{i}", agent_id=f"ag-{i % (workflows * 3)}", step=1,
                    input_tokens=3000, output_tokens=300, fingerprint="a")  # type: ignore[call-arg]
              for i in range(2 * runs)]

    def fill(monitor: Monitor, start: int, stop: int) -> Monitor:
        for i in range(start, stop, 5000):
            monitor.process(events[i:min(i + 5000, stop)])
        return monitor

    untraced = fill(Monitor(), 0, runs)  # also loads the price catalog, which would take a minute under tracemalloc
    rss = _rss_peak_mb(os.getpid())
    del untraced
    tracemalloc.start()
    kept = fill(Monitor(), 0, runs)
    total = tracemalloc.get_traced_memory()[0]
    by_file = tracemalloc.take_snapshot().statistics("filename")
    fill(kept, runs, 2 * runs)
    doubled = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    loops = next(d for d in kept.detectors if isinstance(d, LoopDetector))
    if (in_flight := sum(len(wf.runs) for wf in loops.workflows.values())) != 2 * runs:
        raise RuntimeError(f"{in_flight:,} runs in flight after {2 * runs:,}: the marginal cost would be wrong")
    per_run = sum(st.size for st in by_file if Path(st.traceback[0].filename).match("detectors/loops.py"))
    marginal = (doubled - total) / runs
    return {"active_runs": runs, "workflows": workflows, "peak_rss_mb": _round(rss), "state_mb": total / 2**20,
            "bytes_per_run": total / runs, "run_state_bytes": per_run / runs,
            "bytes_per_more_run": marginal, "bytes_per_workflow": (total - marginal * runs) / workflows}


def scenario(name: str, fn: Any) -> Any:
    print(f"  · {name} ...", end="", file=sys.stderr, flush=True)
    start = time.monotonic()
    result = fn()
    print(f" {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def run_bench(quick: bool = False) -> dict[str, Any]:
    # single-event loads as large as the peer's: the first batch (up to `batch_max` records) is not timed
    n_single, n_batched, n_naive = (50_000, 150_000, 3_000) if quick else (150_000, 600_000, 10_000)
    n_raw, n_peer = (150_000, 50_000) if quick else (600_000, 150_000)
    out: dict[str, Any] = {"quick": quick, "cores": os.cpu_count(), "latency_target_s": LATENCY_TARGET_S,
                           "latency_drain_s": DRAIN_S}

    def one(load: Load, kind: str = "worker", count: int = 1, extra: Any = None) -> dict[str, Any]:
        with EmbeddedBroker() as broker:
            asyncio.run(publish(broker.bootstrap, TOPIC, load.records))  # a backlog: max throughput
            if kind == "raw":
                return asyncio.run(raw_consume(broker.bootstrap, load))
            workers = Workers(broker, kind=kind, count=count)
            try:
                rate = workers.wait_for(load.events, timeout=900)
                res: dict[str, Any] = {"events": load.events, "events_per_s": round(rate),
                                       "peak_rss_mb": _round(workers.peak_rss_mb())}
                if kind == "naive":
                    res["totals_exact"] = asyncio.run(check_naive_totals(broker, load))
                elif kind == "peer":
                    res["totals_exact"] = _peer_totals(workers, load)
                else:
                    res["totals_exact"] = asyncio.run(check_totals(broker, load))
                if extra:
                    res["latency"] = extra(broker, rate)
                return res
            finally:
                workers.stop()

    def latency(per_record: int) -> Any:
        def measure(broker: EmbeddedBroker, rate: float) -> dict[str, Any]:
            got = asyncio.run(latency_at(broker, rate / 2, 5 if quick else 15, per_record=per_record))
            return {"load_events_per_s": round(rate / 2), **latency_summary(list(got.values()))}
        return measure

    out["raw_single"] = scenario("raw consume ceiling, single-event records (aiokafka getmany + orjson)",
                                 lambda: one(make_load(n_raw, 1), kind="raw"))
    out["raw_batched"] = scenario("raw consume ceiling, batched records (500 events)",
                                  lambda: one(make_load(n_batched, 500), kind="raw"))
    out["naive"] = scenario("naive baseline (one table write per event)",
                            lambda: one(make_load(n_naive, 1), kind="naive"))
    if peer_quix.available():
        out["peer_single"] = scenario("quix-streams peer, single-event records",
                                      lambda: one(make_load(n_peer, 1), kind="peer"))
        out["peer_batched"] = scenario("quix-streams peer, batched records (500 events)",
                                       lambda: one(make_load(n_batched, 500), kind="peer"))
    else:
        out["peer_single"] = out["peer_batched"] = {"skipped": PEER_MISSING}
        print(f"  · quix-streams peer skipped: {PEER_MISSING}", file=sys.stderr, flush=True)
    out["single"] = scenario("worker, single-event records",
                             lambda: one(make_load(n_single, 1), extra=latency(1)))
    out["batched"] = scenario("worker, batched records (500 events)",
                              lambda: one(make_load(n_batched, 500), extra=latency(500)))
    out["two_workers"] = scenario("two workers, batched records", lambda: one(make_load(n_batched, 500), count=2))
    out["memory"] = scenario("memory per active run", lambda: memory_per_run(10_000 if quick else 100_000,
                                                                             1_000 if quick else 10_000))
    add_ratios(out)
    return clean(out)


def _round(x: float | None) -> int | None:
    return None if x is None else round(x)


def _peer_totals(workers: Workers, load: Load, patience: float = 5.0) -> bool:
    deadline = time.monotonic() + patience
    while True:
        seen = {k: v for p in workers.progress() for k, v in p.get("totals", {}).items()}
        if totals_match(seen, load) or time.monotonic() > deadline:
            return totals_match(seen, load)
        time.sleep(0.2)
