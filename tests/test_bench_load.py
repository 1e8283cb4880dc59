"""The bench's traffic: exact truth, and event time that keeps to the wall clock when published live."""

from __future__ import annotations

import time

import orjson

from spendwatch.bench.load import Load, make_load
from spendwatch.config import Settings


def _times(load: Load) -> list[float]:
    return [ev["ts"] for _, value in load.records for ev in orjson.loads(value)]


def test_a_live_load_at_its_rate_never_runs_ahead_of_the_wall_clock() -> None:
    """27k calls/s for 15 s, spaced 0.002 s apart, ended 810 s ahead: past the worker's 600 s limit,
    so the worker dead-lettered the last quarter and the latency run saw its loops as missed."""
    rate, seconds = 27_000, 15
    t0 = 1_000_000.0
    load = make_load(rate * seconds, 500, t0=t0, spacing=1 / rate)
    ts = _times(load)
    assert len(ts) == load.events == rate * seconds
    assert ts == sorted(ts) and ts[-1] - t0 <= seconds
    assert ts[-1] - t0 < Settings().max_ahead_s
    assert sum(calls for calls, _, _ in load.truth.values()) == load.events


def test_a_backlog_ends_now() -> None:
    before = time.time()
    ts = _times(make_load(5_000, 500))
    assert before - 5_000 * 0.002 - 1 <= ts[0] and ts[-1] <= time.time()
