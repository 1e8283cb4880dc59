"""Microbenchmark of the pure core: decoding, `Monitor.process`, `Monitor.tick` and pricing, no Kafka.

The worker's throughput is bounded by the per-event cost of the core, so this
times it alone, on the same traffic as `spendwatch bench` (`make_load(N, 500)`
and `make_load(N, 1)`, decoded with `parse_record` outside the timing) fed in
batches as the worker's ingest takes them, with the worker's garbage collector
settings (`spendwatch.runner.tune_gc`). Single-event records put fewer calls of
a workflow in each batch, so per-slice work weighs more. Each figure is the
best of `--repeat` runs with a fresh Monitor (a warm one would reject every
event as a duplicate); the machine may be shared, so compare two versions in
the same invocation, interleaved.

Decoding plus `Monitor.process` is the floor of a worker's cost per event: what it
would cost if Kafka, state writes and Faust cost nothing. Its inverse, printed as
"floor", bounds what one worker process can reach, whatever the consumer does.

    python -m spendwatch.bench.core [--events 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

from detectors.engine.monitor import Monitor
from detectors.pricing.prices import PriceBook
from schemas.decode import parse_record, parse_records
from spendwatch.bench.load import make_load

BATCH = 20_000
"""Events per `Monitor.process` call: a worker batch of single-event records (`batch_max`); an 8 MB
batch of 500-event records holds ~28k."""
T0 = 1_790_000_000.0
"""Fixed event time of the load, so two runs see the same days and intervals."""


def values(n: int, per_record: int = 500) -> list[bytes]:
    """The record values of `n` events of benchmark traffic with `per_record` events per record."""
    return [value for _key, value in make_load(n, per_record, t0=T0).records]


def decoded(raws: list[bytes]) -> list[Any]:
    """The events of record values, in record order (all valid: they are the bench's own)."""
    out: list[Any] = []
    for value in raws:
        evs, errors = parse_record(value)
        assert not errors, errors
        out.extend(evs)
    return out


def batches(evs: list[Any], size: int = BATCH) -> list[list[Any]]:
    return [evs[i:i + size] for i in range(0, len(evs), size)]


def best(fn: Callable[[], float], repeat: int) -> float:
    """The fastest of `repeat` timings (seconds): the others measured the neighbours too."""
    times = []
    for _ in range(repeat):
        gc.collect()
        times.append(fn())
    return min(times)


def time_decode(chunks: list[list[bytes]]) -> float:
    """Seconds to decode every batch of record values as the worker's ingest does (`parse_records`)."""
    t = time.perf_counter()
    for chunk in chunks:
        parse_records(chunk)
    return time.perf_counter() - t


def time_process(chunks: list[list[Any]]) -> float:
    """Seconds to feed every batch to a fresh Monitor (the price catalog is warm: see `main`)."""
    monitor = Monitor()
    t = time.perf_counter()
    for chunk in chunks:
        monitor.process(chunk)
    return time.perf_counter() - t


def time_tick(chunks: list[list[Any]], ticks: int = 20) -> float:
    """Seconds per `Monitor.tick`, called once per second of event time after the traffic, as the
    worker's timer does (the first one closes the traffic's intervals: the worst case is timed)."""
    monitor = Monitor()
    for chunk in chunks:
        monitor.process(chunk)
    now = max(ev.ts for ev in chunks[-1])
    t = time.perf_counter()
    for i in range(ticks):
        monitor.tick(now + 61.0 + i)
    return (time.perf_counter() - t) / ticks


def time_pricing(evs: list[Any]) -> float:
    book = PriceBook()
    price = book.price
    for ev in evs[:100]:
        price(ev)  # resolve the catalog rates outside the timing
    t = time.perf_counter()
    for ev in evs:
        price(ev)
    return time.perf_counter() - t


def run(n: int, repeat: int) -> dict[str, float]:
    from spendwatch.runner import tune_gc

    raw, raw_singles = values(n), values(n, per_record=1)
    evs, singles = decoded(raw), decoded(raw_singles)
    chunks, single_chunks = batches(evs), batches(singles)
    raw_chunks = batches(raw, BATCH // 500)  # as many events per batch as `chunks`
    raw_single_chunks = batches(raw_singles)
    time_process(chunks[:2])  # loads the price catalog (seconds) and warms every code path
    tune_gc()
    process = best(lambda: time_process(chunks), repeat)
    single = best(lambda: time_process(single_chunks), repeat)
    decode = best(lambda: time_decode(raw_chunks), repeat)
    single_decode = best(lambda: time_decode(raw_single_chunks), repeat)
    pricing = best(lambda: time_pricing(evs), repeat)
    tick = best(lambda: time_tick(chunks), max(1, repeat // 2))
    return {"events": len(evs), "process_us": process / len(evs) * 1e6, "process_eps": len(evs) / process,
            "single_us": single / len(singles) * 1e6, "single_eps": len(singles) / single,
            "decode_us": decode / len(evs) * 1e6, "single_decode_us": single_decode / len(singles) * 1e6,
            "floor_eps": len(evs) / (decode + process), "single_floor_eps": len(singles) / (single_decode + single),
            "pricing_us": pricing / len(evs) * 1e6, "tick_ms": tick * 1e3}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m spendwatch.bench.core", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = ap.parse_args(argv)
    r = run(args.events, args.repeat)
    if args.json:
        import orjson

        print(orjson.dumps(r).decode())
        return
    print(f"events: {r['events']}, batches of {BATCH}, best of {args.repeat}, the worker's GC settings")
    print(f"Monitor.process  {r['process_us']:7.2f} µs/event  {r['process_eps']:10,.0f} events/s  (500-event records)")
    print(f"Monitor.process  {r['single_us']:7.2f} µs/event  {r['single_eps']:10,.0f} events/s  (single-event records)")
    for label, us in (("500-event", r["decode_us"]), ("single-event", r["single_decode_us"])):
        print(f"parse_records    {us:7.2f} µs/event  {1e6 / us:10,.0f} events/s  ({label} records)")
    print(f"floor: decode + process, at most {r['floor_eps']:,.0f} events/s (500-event records), "
          f"{r['single_floor_eps']:,.0f} (single-event) per worker process")
    print(f"PriceBook.price  {r['pricing_us']:7.2f} µs/event  {1e6 / r['pricing_us']:10,.0f} events/s")
    print(f"Monitor.tick     {r['tick_ms']:7.2f} ms/tick (after the traffic, once a second)")


if __name__ == "__main__":
    main()
