"""Prints bench figures as a table, next to the issue's targets."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_bench(r: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"spendwatch bench{' (quick)' if r['quick'] else ''} — {r['cores']} cores, embedded Tansu")
    for col in ("scenario", "events", "events/s", "vs naive", "peak RSS", "totals exact"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    base = r["naive"]["events_per_s"]
    for key, name in (("naive", "naive baseline: table write per event"), ("single", "worker, single-event records"),
                      ("batched", "worker, batched records (500/record)"), ("two_workers", "two workers, batched")):
        row = r[key]
        t.add_row(name, f"{row['events']:,}", f"{row['events_per_s']:,}", f"{row['events_per_s'] / base:.1f}×",
                  f"{row['peak_rss_mb']:,} MB", "—" if "totals_exact" not in row else str(row["totals_exact"]))
    console.print(t)
    b, m = r["batched"], r["memory"]
    console.print(f"event-to-alert latency at {b['latency_load_events_per_s']:,} events/s (half of max): "
                  f"p50 {b['latency_p50_s']} s, p99 {b['latency_p99_s']} s over {b['latency_samples']} loops "
                  f"({b['latency_missed']} missed)")
    console.print(f"state: {m['state_mb']:.0f} MB for {m['active_runs']:,} active runs in {m['workflows']:,} "
                  f"workflows = {m['bytes_per_run']:,.0f} bytes per run, of which per-run loop state "
                  f"{m['run_state_bytes']:,.0f} bytes (the rest: event-id dedup window, per-agent spend, "
                  f"per-workflow models); a fresh process holding it peaks at {m['peak_rss_mb']:,} MB RSS")
