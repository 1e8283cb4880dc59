"""Runs every benchmark scenario on its own embedded broker and reports figures with ratios.

Throughput is timed from the moment the load is published on a warmed-up
worker until the consumer group has committed every record (commit interval
0.2 s), so Faust's own start-up never counts. Totals are checked against the
load's ground truth after every scenario.
"""

from __future__ import annotations

import asyncio
import os
import statistics
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
from spendwatch.bench.load import Load, loop_run, make_load, publish
from streams.broker import EmbeddedBroker
from streams.workflow_table import latest_states

TOPIC = "spendwatch.usage"
BENCH_CONFIG = "session_timeout_s = 6\n"
"""Workers join the group 2 s sooner (start-up only: rates are timed from the first batch on)."""


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Workers:
    """Worker processes (the real one or the naive baseline) on one broker, each reporting progress."""

    def __init__(self, broker: EmbeddedBroker, naive: bool = False, count: int = 1, config: str = ""):
        self.dir = Path(tempfile.mkdtemp(prefix="spendwatch-bench-"))
        toml = self.dir / "spendwatch.toml"
        toml.write_text(BENCH_CONFIG + config)
        cmd = ([sys.executable, "-m", "spendwatch.bench.naive", broker.url] if naive else
               [sys.executable, "-m", "spendwatch", "worker", "--broker", broker.url, "--config", str(toml)])
        self.files = [self.dir / f"progress-{i}.json" for i in range(count)]
        self.procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env={**os.environ, "SPENDWATCH_PROGRESS_FILE": str(f)})
                      for f in self.files]

    def progress(self) -> list[dict[str, float]]:
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

    def peak_rss_mb(self) -> float:
        return max(_rss_peak_mb(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


async def read_states(bootstrap: str) -> dict[str, WorkflowState]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition("spendwatch-workflows-changelog", p) for p in range(4)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[tuple[bytes | None, bytes | None]] = []
        for tp in tps:
            while await consumer.position(tp) < end[tp]:
                records += ((m.key, m.value) for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
        return latest_states(records)
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


async def latency_at(broker: EmbeddedBroker, rate: float, seconds: float) -> list[float]:
    """Event-to-alert latency of evident loops while background load runs at `rate` events/s."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
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
    per_record = 500
    background = make_load(int(rate * seconds) + per_record, per_record, seed=7, t0=time.time())
    start = time.perf_counter()
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, max_request_size=8_000_000)
    await producer.start()
    try:
        for i, (key, value) in enumerate(background.records):
            due = start + i * per_record / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await producer.send(TOPIC, value, key=key)
            if i % max(1, int(rate / per_record / 2)) == 0:  # two loops a second
                run = f"loop-{uuid.uuid4().hex[:8]}"
                for ev in loop_run(run, time.time()):
                    await producer.send(TOPIC, orjson.dumps(ev), key=b"bench-loops")
                await producer.flush()
                sent[run] = time.perf_counter()
        drained = time.perf_counter() + 5
        while len(got) < len(sent) and time.perf_counter() < drained:  # the last loops' alerts
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await consumer.stop()
    return [got[r] - t for r, t in sent.items() if r in got] + [float("inf")] * sum(r not in got for r in sent)


def memory_per_run(runs: int = 100_000, workflows: int = 10_000) -> dict[str, float]:
    """State per active run, in a fresh process: its peak RSS holding `runs` runs, then the
    bytes the state takes (tracemalloc, a second pass) and the loop detector's share."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure_state, runs, workflows).result()


def _measure_state(runs: int, workflows: int) -> dict[str, float]:
    import tracemalloc

    from detectors.engine.monitor import Monitor
    from schemas.structs import Usage

    t0 = time.time() - 3600
    # type checkers see the pydantic model the Struct mirrors, whose `type` is the Struct's tag
    events = [Usage(event_id=f"m{i}", ts=t0 + i * 0.01, workflow=f"wf-{i % workflows}",
                    model="gpt-4o", run_id=f"run-{i}", agent_id=f"ag-{i % (workflows * 3)}", step=1,
                    input_tokens=3000, output_tokens=300, fingerprint="a")  # type: ignore[call-arg]
              for i in range(runs)]

    def fill(monitor: Monitor) -> Monitor:
        for i in range(0, runs, 5000):
            monitor.process(events[i:i + 5000])
        return monitor

    untraced = fill(Monitor())  # also loads the price catalog, which would take a minute under tracemalloc
    rss = _rss_peak_mb(os.getpid())
    del untraced
    tracemalloc.start()
    _kept = fill(Monitor())  # alive while the snapshot is taken
    total = tracemalloc.get_traced_memory()[0]
    by_file = tracemalloc.take_snapshot().statistics("filename")
    tracemalloc.stop()
    per_run = sum(st.size for st in by_file if Path(st.traceback[0].filename).match("detectors/loops.py"))
    return {"active_runs": runs, "workflows": workflows, "peak_rss_mb": round(rss), "state_mb": total / 2**20,
            "bytes_per_run": total / runs, "run_state_bytes": per_run / runs}


def scenario(name: str, fn: Any) -> Any:
    print(f"  · {name} ...", end="", file=sys.stderr, flush=True)
    start = time.monotonic()
    result = fn()
    print(f" {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def run_bench(quick: bool = False) -> dict[str, Any]:
    n_single, n_batched, n_naive = (15_000, 150_000, 3_000) if quick else (30_000, 600_000, 10_000)
    out: dict[str, Any] = {"quick": quick, "cores": os.cpu_count()}

    def one(load: Load, naive: bool = False, count: int = 1, extra=None) -> dict[str, Any]:
        with EmbeddedBroker() as broker:
            asyncio.run(publish(broker.bootstrap, TOPIC, load.records))  # a backlog: max throughput
            workers = Workers(broker, naive=naive, count=count)
            try:
                rate = workers.wait_for(load.events, timeout=900)
                res = {"events": load.events, "events_per_s": round(rate), "peak_rss_mb": round(workers.peak_rss_mb())}
                if not naive:
                    res["totals_exact"] = asyncio.run(check_totals(broker, load))
                if extra:
                    res.update(extra(broker, rate))
                return res
            finally:
                workers.stop()

    def latency(broker: EmbeddedBroker, rate: float) -> dict[str, Any]:
        lat = asyncio.run(latency_at(broker, rate / 2, 5 if quick else 15))
        finite = sorted(x for x in lat if x != float("inf"))
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 2
        return {"latency_load_events_per_s": round(rate / 2), "latency_samples": len(lat),
                "latency_missed": len(lat) - len(finite), "latency_p50_s": round(statistics.median(lat), 3),
                "latency_p99_s": round(q[98], 3)}

    out["naive"] = scenario("naive baseline (one table write per event)",
                            lambda: one(make_load(n_naive, 1), naive=True))
    out["single"] = scenario("worker, single-event records", lambda: one(make_load(n_single, 1)))
    out["batched"] = scenario("worker, batched records (500 events)", lambda: one(make_load(n_batched, 500),
                                                                                   extra=latency))
    out["two_workers"] = scenario("two workers, batched records", lambda: one(make_load(n_batched, 500), count=2))
    out["memory"] = scenario("memory per active run", lambda: memory_per_run(10_000 if quick else 100_000,
                                                                             1_000 if quick else 10_000))
    base = out["naive"]["events_per_s"] or 1
    out["ratio_single_vs_naive"] = round(out["single"]["events_per_s"] / base, 1)
    out["ratio_batched_vs_naive"] = round(out["batched"]["events_per_s"] / base, 1)
    return out
