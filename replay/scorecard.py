"""How good are the detectors? Recall, precision, time to detect and false alarms.

`run_scorecard` drives the loop, zombie and spike detectors over labelled
scenarios from `replay.scenarios` in event time (events in ts order, `tick`
every `TICK` seconds of event time), exactly as a live worker would, and
matches alerts to incident labels. With a shared-data folder it also scores
`SeriesScorer` on the labelled Microsoft cloud-monitoring series (against
River's HalfSpaceTrees at the same false-alarm rate) and counts loop alarms
on the real mini-swe-agent runs that resolved their task: there, every loop
alarm is a false one.

    python -m replay.scorecard --seeds 1 2 3 4 5 --shared-data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from river import base

from detectors import models
from detectors.detector import Detector
from detectors.engine.monitor import Monitor
from detectors.loops import LoopDetector
from detectors.novelty import NoveltyScorer
from detectors.registry import DETECTORS, build
from detectors.spikes import SeriesScorer
from replay import driver
from replay.scenarios import generate
from schemas.alerts import Alert
from schemas.events import parse_ts
from schemas.structs import Event

TICK = 10.0
GRACE = 900.0
"""An alert up to this long after an incident's end still counts as detecting it."""
LOOP_STEPS = 10
FINGERPRINT_LOOPS = ("fingerprint_loop", "ping_pong")
SPIKE_THRESHOLD = 0.5
KINDS = tuple(DETECTORS)


def detectors() -> list[Detector]:
    """What the scorecard scores: one detector of each registered kind, with its defaults."""
    return build()


def detector_alerts(events: Iterable[dict[str, Any] | Event], dets: list[Detector], tick: float = TICK,
                    flush: float = GRACE) -> list[Alert]:
    """The detector alerts of `dets` over `events`, through the same engine and virtual time as a
    backtest (budget and unpriced-model alerts are not detections, and an alert updated in place, e.g.
    with a spike folded into it, is no new one: they are left out)."""
    alerts = driver.run(events, Monitor(detectors=dets), tick=tick, flush=flush).alerts
    return [a for a in alerts if a.kind in KINDS and not a.revision]


def _subject(alert: Alert, subject: str) -> str | None:
    return {"run_id": alert.run_id, "agent_id": alert.agent_id, "workflow": alert.workflow}[subject]


def _during(alert: Alert, lab: dict[str, Any]) -> bool:
    return lab["start"] - TICK <= alert.ts <= lab["end"] + GRACE


def match(alerts: list[Alert], labels: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Alert], list[Alert]]:
    """Each label with its first matching alert (or None); alerts of another kind that an
    incident explains (a loop of failing calls is also an error spike of its workflow);
    and false alarms, which match nothing."""
    used: set[str] = set()
    rows = []
    for lab in labels:
        hits = [a for a in alerts
                if a.kind == lab["kind"] and _subject(a, lab["subject"]) == lab["id"] and _during(a, lab)]
        used.update(a.alert_id for a in hits)
        rows.append({**lab, "alert": min(hits, key=lambda a: a.ts) if hits else None})
    rest = [a for a in alerts if a.alert_id not in used]
    explained = [a for a in rest if any(a.workflow == lab["workflow"] and _during(a, lab) for lab in labels)]
    ids = {a.alert_id for a in explained}
    return rows, explained, [a for a in rest if a.alert_id not in ids]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def score_scenarios(seeds: Iterable[int], days: float = 1.0, workflows: int = 10) -> dict[str, Any]:
    """Per incident type and per kind: recall, precision, time to detect, false alarms."""
    rows: list[dict[str, Any]] = []
    false: list[Alert] = []
    n_alerts: dict[str, int] = dict.fromkeys(KINDS, 0)
    n_explained: dict[str, int] = dict.fromkeys(KINDS, 0)
    seeds = list(seeds)
    for seed in seeds:
        events, labels = generate(seed, days=days, workflows=workflows)
        alerts = detector_alerts(events, detectors())
        matched, explained, unmatched = match(alerts, labels)
        rows += matched
        false += unmatched
        for a in alerts:
            n_alerts[a.kind] += 1
        for a in explained:
            n_explained[a.kind] += 1
    exposure = len(seeds) * days * workflows / 10.0  # days per 10 workflows
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["type"], []).append(r)
        groups.setdefault(r["kind"], []).append(r)
    out: dict[str, Any] = {}
    for name, rs in groups.items():
        found = [r for r in rs if r["alert"] is not None]
        row: dict[str, Any] = {
            "incidents": len(rs), "detected": len(found), "recall": len(found) / len(rs),
            "median_ttd_s": _median([r["alert"].ts - r["start"] for r in found]),
        }
        if name in KINDS:
            fa = sum(1 for a in false if a.kind == name)
            row.update(alerts=n_alerts[name], explained=n_explained[name], false_alarms=fa,
                       fa_per_day_10wf=fa / exposure,
                       precision=(n_alerts[name] - fa) / n_alerts[name] if n_alerts[name] else None)
        fingerprinted = [r for r in found if r["type"] in FINGERPRINT_LOOPS]
        steps = [r["alert"].evidence["steps"] - r["start_step"] + 1 for r in fingerprinted]
        if steps:
            row.update(median_loop_steps=_median(steps), max_loop_steps=max(steps),
                       within_steps=sum(s <= LOOP_STEPS for s in steps)
                       / sum(r["type"] in FINGERPRINT_LOOPS for r in rs))
        out[name] = row
    total_fa = len(false)
    return {"seeds": seeds, "days": days, "workflows": workflows, "rows": out,
            "fa_per_day_10wf": total_fa / exposure, "false_alarms": [a.summary for a in false]}


# -- real data --------------------------------------------------------------------------------


def _series(path: Path) -> Iterator[tuple[float, float, int]]:
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            ts = parse_ts(row["TimeStamp"], "TimeStamp", naive_utc=True)
            yield ts, float(row["Value"] or 0.0), int(row["Label"])


def _segments(labels: list[int]) -> list[tuple[int, int]]:
    segs: list[list[int]] = []
    for i, y in enumerate(labels):
        if y:
            if segs and i - segs[-1][1] <= 1:
                segs[-1][1] = i
            else:
                segs.append([i, i])
    return [(a, b) for a, b in segs]


def _auc(scores: list[float], labels: list[int]) -> float | None:
    """ROC-AUC by ranks (ties averaged)."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return (sum(r for r, y in zip(ranks, labels) if y) - pos * (pos + 1) / 2) / (pos * neg)


MS_MODELS: dict[str, Callable[[], base.AnomalyDetector]] = {
    "SeriesScorer": lambda: SeriesScorer(direction="both"),
    "NoveltyScorer": NoveltyScorer,
    "HalfSpaceTrees": lambda: models.build("river.anomaly.HalfSpaceTrees", {"seed": 42}, scale="minmax"),
}
"""The ms_cloud comparison; the first is judged at the spike threshold, the others at its false-alarm rate."""


def _model_scores(model: base.AnomalyDetector, points: list[tuple[float, float, int]]) -> list[float]:
    out = []
    for ts, value, _ in points:
        x: models.Sample = {"ts": ts, "value": value}
        out.append(model.score_one(x))
        model.learn_one(x)
    return out


def _detections(scores: list[float], labels: list[int], thr: float, tol: int = 2) -> tuple[int, int, int]:
    """(segments hit, segments, false-alarm episodes): a run of normal points scoring ≥ thr is one episode."""
    segs = _segments(labels)
    near = [False] * len(labels)
    for a, b in segs:
        for i in range(max(0, a - tol), min(len(labels), b + tol + 1)):
            near[i] = True
    hit = sum(1 for a, b in segs if max(scores[a:b + tol + 1]) >= thr)
    episodes, inside = 0, False
    for s, n in zip(scores, near):
        flagged = s >= thr and not n
        episodes += flagged and not inside
        inside = flagged
    return hit, len(segs), episodes


def score_ms_cloud(folder: Path, threshold: float = SPIKE_THRESHOLD) -> dict[str, Any]:
    """SeriesScorer (two-sided) on every labelled series, and the other `MS_MODELS` at the same
    false-alarm rate (each one's threshold is the pooled quantile that flags as many normal points)."""
    files = sorted(folder.glob("data/*/*.csv"))
    data = [list(_series(f)) for f in files]
    result: dict[str, Any] = {"series": len(files), "points": sum(map(len, data))}
    scored = {name: [_model_scores(make(), p) for p in data] for name, make in MS_MODELS.items()}
    labels = [[y for _, _, y in p] for p in data]
    normal_flags = sum(s >= threshold for ss, ls in zip(scored["SeriesScorer"], labels)
                       for s, y in zip(ss, ls) if not y)
    for name, all_scores in scored.items():
        thr = threshold
        if name != "SeriesScorer":
            normal = sorted(s for ss, ls in zip(all_scores, labels) for s, y in zip(ss, ls) if not y)
            thr = normal[max(len(normal) - normal_flags, 0)] if normal_flags else float("inf")
        hit = segs = episodes = 0
        aucs = []
        for ss, ls in zip(all_scores, labels):
            h, n, e = _detections(ss, ls, thr)
            hit, segs, episodes = hit + h, segs + n, episodes + e
            auc = _auc(ss, ls)
            if auc is not None:
                aucs.append(auc)
        result[name] = {"threshold": thr, "segment_recall": hit / segs, "segments": segs, "detected": hit,
                        "false_episodes_per_1k_points": 1000 * episodes / result["points"],
                        "mean_auc": sum(aucs) / len(aucs)}
    return result


def score_agent_runs(path: Path) -> dict[str, Any]:
    """Loop alarms on real mini-swe-agent runs: resolved runs should raise none."""
    from replay.readers import Attribution, read_traffic

    resolved: dict[str, bool] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            resolved[row["instance_id"]] = row["resolved"] == "True"
    events = read_traffic(path, fmt="agent-csv", attribution=Attribution(workflow="swe-bench"))
    alerts = [a for a in detector_alerts(events, [LoopDetector()]) if a.kind == "loop"]
    on_resolved = [a for a in alerts if resolved.get(a.run_id or "")]
    return {"runs": len(resolved), "resolved_runs": sum(resolved.values()), "loop_alerts": len(alerts),
            "loop_alerts_on_resolved": len(on_resolved),
            "alerts": [a.summary for a in alerts]}


def run_scorecard(seeds: Iterable[int] = (1, 2, 3, 4, 5), shared_data: Path | None = None,
                  days: float = 1.0, workflows: int = 10) -> dict[str, Any]:
    result: dict[str, Any] = {"scenarios": score_scenarios(seeds, days, workflows)}
    if shared_data is not None and Path(shared_data).is_dir():
        shared = Path(shared_data)
        if (shared / "ms_cloud_monitoring").is_dir():
            result["ms_cloud"] = score_ms_cloud(shared / "ms_cloud_monitoring")
        agent_csv = shared / "mini_swe_agent_gemini3_pro" / "per_call_usage.csv"
        if agent_csv.is_file():
            result["agent_runs"] = score_agent_runs(agent_csv)
    return result


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "–"
    if pct:
        return f"{100 * x:.0f}%"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def print_scorecard(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=140)
    sc = result["scenarios"]
    table = Table(title=f"detectors on generated scenarios: seeds {sc['seeds']}, {sc['days']:g} day(s), "
                        f"{sc['workflows']} workflows")
    for col in ("incident", "n", "recall", "median TTD", "alerts", "explained", "precision", "FA/day/10wf",
                f"≤{LOOP_STEPS} steps", "loop steps (med/max)"):
        table.add_column(col, justify="left" if col == "incident" else "right")
    for name, r in sorted(sc["rows"].items(), key=lambda kv: (kv[0] not in KINDS, kv[0])):
        ttd = r["median_ttd_s"]
        table.add_row(
            f"[bold]{name}[/bold]" if name in KINDS else f"  {name}", str(r["incidents"]), _fmt(r["recall"], True),
            "–" if ttd is None else f"{ttd:.0f} s", _fmt(r.get("alerts")), _fmt(r.get("explained")),
            _fmt(r.get("precision"), True),
            _fmt(r.get("fa_per_day_10wf")), _fmt(r.get("within_steps"), True),
            f"{r['median_loop_steps']:.0f}/{r['max_loop_steps']}" if "median_loop_steps" in r else "–",
        )
    console.print(table)
    console.print(f"false alarms, all kinds: {sc['fa_per_day_10wf']:.2f} per day per 10 workflows "
                  "(explained: alerts of another kind during an incident of the same workflow)")
    if "ms_cloud" in result:
        ms = result["ms_cloud"]
        t = Table(title=f"spike scorer on ms_cloud_monitoring ({ms['series']} series, {ms['points']:,} points)")
        for col in ("scorer", "threshold", "segments detected", "false episodes /1k pts", "mean ROC-AUC"):
            t.add_column(col)
        for name in MS_MODELS:
            m = ms[name]
            t.add_row(name, f"{m['threshold']:.3g}",
                      f"{m['detected']}/{m['segments']} ({100 * m['segment_recall']:.0f}%)",
                      f"{m['false_episodes_per_1k_points']:.2f}", f"{m['mean_auc']:.3f}")
        console.print(t)
    if "agent_runs" in result:
        ar = result["agent_runs"]
        console.print(f"real mini-swe-agent runs: {ar['runs']} runs ({ar['resolved_runs']} resolved): "
                      f"{ar['loop_alerts']} loop alerts, {ar['loop_alerts_on_resolved']} on resolved runs")
        for s in ar["alerts"]:
            console.print(f"  {s}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--workflows", type=int, default=10)
    parser.add_argument("--shared-data", type=Path, default=None)
    args = parser.parse_args(argv)
    print_scorecard(run_scorecard(args.seeds, args.shared_data, args.days, args.workflows))


if __name__ == "__main__":
    main()
