"""Backtest report: a self-contained HTML page with PNG plots beside it."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from detectors.pricing.money import micros_to_usd  # noqa: E402
from replay.compare import METRICS, summary_line  # noqa: E402
from replay.driver import Replayed  # noqa: E402

KIND_COLOR = {"loop": "tab:red", "zombie": "tab:purple", "spike": "tab:orange", "budget": "tab:blue",
              "burn_rate": "tab:cyan", "unpriced": "tab:gray"}
TOP = 8


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def plot_spend(res: Replayed, tick: float, path: Path) -> None:
    """Spend rate per workflow ($/h, the biggest few) with every alert marked."""
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    totals = sorted(res.spend, key=lambda wf: -sum(res.spend[wf].values()))
    if res.first_ts is not None and res.last_ts is not None:
        span = max(res.last_ts - res.first_ts, tick)
        width = max(tick, span / 300)
        for wf in totals[:TOP]:
            bins: dict[int, int] = {}
            for t, micros in res.spend[wf].items():
                b = int(t // width)
                bins[b] = bins.get(b, 0) + micros
            xs = sorted(bins)
            # matplotlib plots datetimes through its unit converters; its stubs only admit numbers
            ax.plot([_dt(b * width) for b in xs], [micros_to_usd(bins[b]) * 3600 / width for b in xs],  # type: ignore[arg-type]
                    label=wf, lw=1)
    fired = [a for a in res.alerts if a.status == "firing"]
    for a in fired:  # a datetime x again, through matplotlib's unit converters its stubs do not know
        ax.axvline(_dt(a.ts), color=KIND_COLOR.get(a.kind, "k"), alpha=0.35, lw=0.8)  # type: ignore[arg-type]
    for kind, color in KIND_COLOR.items():
        if any(a.kind == kind for a in fired):
            ax.plot([], [], color=color, label=f"{kind} alert")
    ax.set_ylabel("spend, $ per hour")
    ax.set_title("Spend per workflow (event time) with alerts")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_ttd(incidents: list[dict[str, Any]], path: Path) -> None:
    """Time to detect per incident, grouped by type; misses shown as red crosses."""
    types = sorted({i["type"] for i in incidents})
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(types)), dpi=100)
    for y, t in enumerate(types):
        rows = [i for i in incidents if i["type"] == t]
        ax.scatter([i["ttd_s"] / 60 for i in rows if i["ttd_s"] is not None],
                   [y] * sum(i["ttd_s"] is not None for i in rows), s=14, color="tab:green")
        misses = sum(i["ttd_s"] is None for i in rows)
        if misses:
            ax.scatter([0], [y], marker="x", color="tab:red", s=40)
            ax.annotate(f"{misses} missed", (0, y), textcoords="offset points", xytext=(8, -3), fontsize=7)
    ax.set_yticks(range(len(types)), types)
    ax.set_xlabel("minutes from incident start to alert (event time)")
    ax.set_title("Time to detect")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1e6 else _dt(v).strftime("%Y-%m-%d %H:%M:%S")
    return "" if v is None else str(v)


def write_report(out_dir: Path, summary: dict[str, Any], res: Replayed, tick: float) -> Path:
    plot_spend(res, tick, out_dir / "spend.png")
    parts = ["<h1>spendwatch backtest</h1>",
             f"<p>{summary['events']:,} events, {summary['alerts']} alerts "
             f"({', '.join(f'{k}: {v}' for k, v in sorted(summary['alerts_by_kind'].items())) or 'none'}), "
             f"{summary['duplicates']} duplicates, {summary['late']} late; replayed at "
             f"{summary['events_per_s'] or 0:,} events/s.</p>",
             '<img src="spend.png" alt="spend per workflow with alerts">']
    score = summary.get("score")
    if score:
        plot_ttd(score["incidents"], out_dir / "ttd.png")
        kinds = [{"kind": k, **v} for k, v in score["per_kind"].items()]
        parts += ["<h2>Detection score</h2>",
                  _table(kinds, ["kind", "incidents", "detected", "recall", "alerts", "false_alarms", "precision",
                                 "median_ttd_s", "saved_usd", "saved_tokens"]),
                  '<img src="ttd.png" alt="time to detect">', "<h2>Incidents</h2>",
                  _table(score["incidents"][:300], ["type", "subject", "id", "start", "end", "detected_at", "ttd_s",
                                                    "saved_usd", "alert_id"])]
    insights = summary.get("insights") or []
    parts += [f"<h2>Savings insights: {len(insights)}</h2>",
              "<p>Dollars per day and per 30-day month at catalog prices, over the last week of the traffic's event "
              "time (README: Insights). Right-sizing names candidates, not a quality verdict.</p>",
              _table([{**i, "usd_per_day": f"${i['usd_per_day']:,.2f}", "usd_per_month": f"${i['usd_per_month']:,.0f}"}
                      for i in insights[:100]], ["usd_per_day", "usd_per_month", "kind", "workflow", "model",
                                                  "summary"])]
    parts += ["<h2>Alerts</h2>",
              _table([a.model_dump() for a in res.alerts[:300]], ["ts", "kind", "severity", "status", "workflow",
                                                                  "agent_id", "run_id", "summary"])]
    page = out_dir / "report.html"
    page.write_text(_page("spendwatch backtest", parts))
    return page


def _page(title: str, parts: list[str]) -> str:
    style = ("<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:"
             "collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
             "img{max-width:100%}</style>")
    return f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>{style}" + "\n".join(parts)


def write_compare_report(path: Path, doc: dict[str, Any]) -> Path:
    """`replay compare`'s review as one HTML page: the summary line, the metrics, every changed alert."""
    alert_cols = ["ts", "kind", "severity", "status", "workflow", "agent_id", "run_id", "summary"]
    parts = [f"<h1>spendwatch compare</h1><p>A = {html.escape(doc['a']['config'])}, B = "
             f"{html.escape(doc['b']['config'])}; {doc['events']:,} events; moved: more than "
             f"{doc['tolerance_s']:g} s apart.</p><p><b>{html.escape(summary_line(doc))}</b></p>"]
    if "delta" in doc:
        sa, sb = doc["a"]["score"]["all"], doc["b"]["score"]["all"]
        parts += ["<h2>Detection score</h2>",
                  _table([{"metric": m, "A": sa[m], "B": sb[m], "B−A": doc["delta"][m]} for m in METRICS],
                         ["metric", "A", "B", "B−A"]),
                  "<h2>Incidents detected differently</h2>",
                  _table(doc["incident_changes"], ["change", "type", "subject", "id", "start", "ttd_a_s", "ttd_b_s"])]
    parts += [f"<h2>Added (B only): {len(doc['added'])}</h2>", _table(doc["added"], alert_cols),
              f"<h2>Removed (A only): {len(doc['removed'])}</h2>", _table(doc["removed"], alert_cols),
              f"<h2>Moved: {len(doc['moved'])}</h2>",
              _table([{"shift_s": m["shift_s"], "A at": m["a"]["ts"], "B at": m["b"]["ts"], **m["b"]}
                      for m in doc["moved"]], ["shift_s", "A at", "B at", "kind", "workflow", "agent_id", "run_id",
                                               "summary"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page("spendwatch compare", parts))
    return path
