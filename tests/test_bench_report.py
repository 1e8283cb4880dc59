"""Bench reporting without a broker: strict JSON, and a missed loop alert is a count and a null percentile."""

from __future__ import annotations

import io
import json

from rich.console import Console

from spendwatch.bench.report import PEER_MISSING, add_ratios, latency_summary, percentile, to_json


def _strict(text: str) -> object:
    def refuse(const: str) -> None:
        raise AssertionError(f"{const} in bench JSON")
    return json.loads(text, parse_constant=refuse)


def _result() -> dict:
    lat = {"load_events_per_s": 4000, **latency_summary([0.4, 0.5, 2.5, None])}
    return {"quick": True, "cores": 2,
            "raw_single": {"events": 10, "events_per_s": 400_000, "peak_rss_mb": None, "totals_exact": True},
            "raw_batched": {"events": 10, "events_per_s": 900_000, "peak_rss_mb": None, "totals_exact": True},
            "naive": {"events": 10, "events_per_s": 1_000, "peak_rss_mb": 90, "totals_exact": True},
            "peer_single": {"skipped": PEER_MISSING}, "peer_batched": {"skipped": PEER_MISSING},
            "single": {"events": 10, "events_per_s": 8_000, "peak_rss_mb": float("nan"), "totals_exact": True,
                       "latency": lat},
            "batched": {"events": 10, "events_per_s": float("inf"), "peak_rss_mb": 100, "totals_exact": True},
            "memory": {"active_runs": 1, "workflows": 1, "peak_rss_mb": 1, "state_mb": 1.0, "bytes_per_run": 1.0,
                       "run_state_bytes": 1.0, "bytes_per_more_run": 1.0, "bytes_per_workflow": 1.0}}


def test_missed_loop_is_a_count_and_a_null_percentile() -> None:
    s = latency_summary([0.4, 0.5, 2.5, None])
    assert s["missed"] == 1 and s["alerted"] == 3 and s["samples"] == 4
    assert s["p99_s"] is None and s["max_s"] == 2.5
    assert s["late"] == 1 and s["late_s"] == [2.5]
    assert percentile([0.1, 0.2, None], 50) == 0.2
    assert latency_summary([])["p99_s"] is None


def test_json_is_strict_and_keeps_the_miss() -> None:
    r = _result()
    add_ratios(r)
    out = _strict(to_json(r))
    assert isinstance(out, dict)
    assert out["single"]["latency"]["missed"] == 1 and out["single"]["latency"]["p99_s"] is None
    assert out["single"]["peak_rss_mb"] is None and out["batched"]["events_per_s"] is None
    assert out["single"]["vs_ceiling"] == 0.02 and out["naive"]["vs_ceiling"] == 0.0025 and out["single"]["vs_naive"] == 8.0
    assert out["single"]["vs_peer"] is None and out["peer_single"] == {"skipped": PEER_MISSING}


def test_table_prints_misses_and_skips() -> None:
    from spendwatch.bench.report import print_bench

    buf = io.StringIO()
    r = _result()
    add_ratios(r)
    print_bench(r, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "1 missed" in text and "p99 — s" in text and "skipped" in text
