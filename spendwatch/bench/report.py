"""Bench figures: latency summaries, ratios, valid JSON, and a table next to the issue's targets.

Pure functions over the result dict, so they are tested without a broker.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table

LATENCY_TARGET_S = 2.0
"""Issue 18: every loop alert inside 2 s at half load; a slower one is reported as late."""
PEER_MISSING = ("quixstreams is not installed here (pip install 'quixstreams==3.28.*', then "
                "pip install 'pydantic>=2.14': README, Performance)")

SCENARIOS = (  # key, label, record shape: ratios compare like with like
    ("raw_single", "raw consume ceiling, single-event records", "single"),
    ("raw_batched", "raw consume ceiling, batched records", "batched"),
    ("naive", "naive baseline: table write per event", "single"),
    ("peer_single", "quix-streams peer, single-event records", "single"),
    ("peer_batched", "quix-streams peer, batched records", "batched"),
    ("single", "spendwatch, single-event records", "single"),
    ("batched", "spendwatch, batched records (500/record)", "batched"),
    ("two_workers", "spendwatch, two workers, batched", "batched"),
)


def percentile(values: list[float | None], p: float) -> float | None:
    """Nearest-rank percentile, with a missed sample (None) ranked above every latency:
    None when the percentile falls on a missed one, so a miss is never hidden."""
    if not values:
        return None
    ranked = sorted(values, key=lambda v: math.inf if v is None else v)
    v = ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]
    return None if v is None else round(v, 3)


def latency_summary(latencies: list[float | None], target: float = LATENCY_TARGET_S) -> dict[str, Any]:
    """`latencies`: seconds from the loop's last event to its alert, None where no alert came."""
    arrived = sorted(v for v in latencies if v is not None)
    return {"samples": len(latencies), "alerted": len(arrived), "missed": len(latencies) - len(arrived),
            "late": sum(v > target for v in arrived), "late_s": [round(v, 3) for v in arrived if v > target],
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "max_s": round(arrived[-1], 3) if arrived else None}


def add_ratios(r: dict[str, Any]) -> None:
    """Each measured scenario's rate over the ceiling, the naive baseline and the peer for its record shape."""
    def rate(key: str) -> float | None:
        v = r.get(key, {}).get("events_per_s")
        return v if isinstance(v, (int, float)) and v > 0 and math.isfinite(v) else None

    for key, _, shape in SCENARIOS:
        row = r.get(key)
        if not isinstance(row, dict) or rate(key) is None:
            continue
        mine = rate(key)
        assert mine is not None
        for name, ref in (("vs_ceiling", f"raw_{shape}"), ("vs_naive", "naive"), ("vs_peer", f"peer_{shape}")):
            base = rate(ref)
            row[name] = None if base is None or ref == key else float(f"{mine / base:.3g}")


def clean(x: Any) -> Any:
    """The result with every non-finite float turned into None: JSON has no NaN or Infinity."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def to_json(r: dict[str, Any]) -> str:
    """Strict JSON (allow_nan=False would raise on a NaN that `clean` missed)."""
    return json.dumps(clean(r), allow_nan=False)


def _fmt(v: Any, spec: str = ",", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}×"


def _latency_line(name: str, lat: dict[str, Any]) -> str:
    late = f", late (> {LATENCY_TARGET_S:g} s): {lat['late']} {lat['late_s']}" if lat["late"] else ""
    return (f"{name}: event-to-alert at {lat['load_events_per_s']:,} events/s (half of max): "
            f"p50 {_fmt(lat['p50_s'], '')} s, p99 {_fmt(lat['p99_s'], '')} s, max {_fmt(lat['max_s'], '')} s "
            f"over {lat['samples']} loops — {lat['missed']} missed{late}")


def print_bench(r: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=160)
    r = clean(r)
    t = Table(title=f"spendwatch bench{' (quick)' if r['quick'] else ''} — {r['cores']} cores, embedded Tansu")
    for col in ("scenario", "events", "events/s", "vs ceiling", "vs naive", "vs peer", "peak RSS", "totals exact"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for key, name, _ in SCENARIOS:
        row = r.get(key)
        if not row:
            continue
        if "skipped" in row:
            t.add_row(name, "skipped", "", "", "", "", "", "")
            continue
        t.add_row(name, _fmt(row.get("events")), _fmt(row.get("events_per_s")),
                  _ratio(row.get("vs_ceiling")), _ratio(row.get("vs_naive")), _ratio(row.get("vs_peer")),
                  _fmt(row.get("peak_rss_mb"), ",", " MB"),
                  str(row.get("totals_exact", "—")))
    console.print(t)
    for key in ("peer_single", "peer_batched"):
        if "skipped" in r.get(key, {}):
            console.print(f"quix-streams peer skipped: {r[key]['skipped']}")
            break
    for key, name in (("single", "single-event records"), ("batched", "batched records")):
        if isinstance(r.get(key), dict) and r[key].get("latency"):
            console.print(_latency_line(name, r[key]["latency"]))
    m = r.get("memory")
    if m:
        console.print(f"state: {m['state_mb']:.0f} MB for {m['active_runs']:,} active runs in {m['workflows']:,} "
                      f"workflows = {m['bytes_per_run']:,.0f} bytes per run all told; one more run adds "
                      f"{m['bytes_per_more_run']:,.0f} bytes (its loop state {m['run_state_bytes']:,.0f}, the rest its "
                      f"event id, agent and spike-blame entries), one more workflow {m['bytes_per_workflow']:,.0f} "
                      f"(models, counters, insights); a fresh process holding it peaks at {m['peak_rss_mb']:,} MB RSS")
