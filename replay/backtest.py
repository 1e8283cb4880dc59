"""`spendwatch replay backtest`: the worker's engine over recorded traffic, with a report.

Writes `alerts.jsonl` (wire-contract alerts, `ts` = event time of firing),
`summary.json` and `report.html` with PNG plots. With labels: recall,
precision, time to detect, and what a kill at detection time would have saved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from detectors.engine.monitor import Monitor
from detectors.pricing.money import micros_to_usd
from replay import driver
from replay.scorecard import match
from schemas.alerts import Alert
from schemas.structs import Event


def savings(row: dict[str, Any], watched: dict[tuple[str, str], list[tuple[float, int, int]]]) -> dict[str, Any]:
    """Spend of the incident's subject from detection to the incident's end: what a kill would have saved."""
    alert: Alert | None = row["alert"]
    if alert is None:
        return {"saved_usd": 0.0, "saved_tokens": 0}
    calls = [c for c in watched.get((row["subject"], row["id"]), []) if alert.ts < c[0] <= row["end"]]
    return {"saved_usd": round(micros_to_usd(sum(c[1] for c in calls)), 6), "saved_tokens": sum(c[2] for c in calls)}


def detection_stats(rows: list[dict[str, Any]], alerts: list[Alert], explained: list[Alert],
                    false: list[Alert]) -> dict[str, Any]:
    """Recall, precision and time to detect of one group of `match` results (a kind, or all of them):
    `rows` its labelled incidents, `alerts` all its alerts, of which `explained` are side effects
    of an incident and `false` match nothing."""
    found = [r for r in rows if r["alert"] is not None]
    ttd = [r["alert"].ts - r["start"] for r in found]
    n_alerts = len(alerts) - len(explained)
    return {"incidents": len(rows), "detected": len(found), "recall": len(found) / len(rows) if rows else None,
            "alerts": n_alerts, "false_alarms": len(false),
            "precision": (n_alerts - len(false)) / n_alerts if n_alerts else None,
            "median_ttd_s": statistics.median(ttd) if ttd else None,
            "mean_ttd_s": statistics.fmean(ttd) if ttd else None}


def score(alerts: list[Alert], labels: list[dict[str, Any]], watched: dict) -> dict[str, Any]:
    """Per kind: recall, precision, median time to detect, savings; and the per-incident rows."""
    rows, explained, unmatched = match(alerts, labels)  # explained: side effects of a labelled incident
    per_kind: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows} | {a.kind for a in alerts}):
        rs = [r for r in rows if r["kind"] == kind]
        saved = [savings(r, watched) for r in rs if r["alert"] is not None]
        per_kind[kind] = {
            **detection_stats(rs, [a for a in alerts if a.kind == kind], [a for a in explained if a.kind == kind],
                              [a for a in unmatched if a.kind == kind]),
            "saved_usd": round(sum(s["saved_usd"] for s in saved), 2),
            "saved_tokens": sum(s["saved_tokens"] for s in saved),
        }
    incidents = [{**{k: v for k, v in r.items() if k != "alert"},
                  "detected_at": r["alert"].ts if r["alert"] else None,
                  "ttd_s": r["alert"].ts - r["start"] if r["alert"] else None,
                  "alert_id": r["alert"].alert_id if r["alert"] else None, **savings(r, watched)} for r in rows]
    return {"per_kind": per_kind, "incidents": incidents}


def backtest(events: Iterable[dict[str, Any] | Event], out_dir: Path, monitor: Monitor | None = None,
             labels: list[dict[str, Any]] | None = None, progress=None, tick: float = driver.TICK) -> dict[str, Any]:
    """Run, write alerts.jsonl / summary.json / report.html into `out_dir`, return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    monitor = monitor or Monitor()
    watch = {(lab["subject"], lab["id"]) for lab in labels or []}
    t0 = time.perf_counter()
    res = driver.run(events, monitor, tick=tick, watch=watch, progress=progress)
    elapsed = time.perf_counter() - t0
    with open(out_dir / "alerts.jsonl", "wb") as fh:
        for a in res.alerts:
            fh.write(a.model_dump_json().encode() + b"\n")
    fired = [a for a in res.alerts if a.status == "firing" and not a.revision]  # a resolution is no detection,
    # nor a false alarm; an alert updated in place (revision > 0) pages no one
    by_kind: dict[str, int] = {}
    for a in fired:
        by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
    summary: dict[str, Any] = {
        "events": res.events, "duplicates": res.duplicates, "late": res.late,
        "poisoned_events": sum(p["events"] for p in res.poisoned), "poisoned": res.poisoned[:100],
        "contained_failures": monitor.failures,
        "first_ts": res.first_ts, "last_ts": res.last_ts, "alerts": len(fired), "alerts_by_kind": by_kind,
        "resolved": sum(a.status != "firing" for a in res.alerts),
        "alert_updates": sum(a.status == "firing" and bool(a.revision) for a in res.alerts),
        "spend_usd_by_workflow": {wf: round(micros_to_usd(sum(s.values())), 6) for wf, s in sorted(res.spend.items())},
        "unpriced_models": dict(monitor.prices.unpriced),
        "elapsed_s": round(elapsed, 3), "events_per_s": round(res.events / elapsed) if elapsed else None,
        "insights": sorted((i for wf in sorted(monitor.workflows) for i in monitor.insights(wf, fresh=True)),
                           key=lambda i: -i["usd_per_day"]),
    }
    if labels is not None:
        summary["score"] = score(fired, labels, res.watched)
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    from replay.report import write_report

    write_report(out_dir, summary, res, tick)
    return summary
