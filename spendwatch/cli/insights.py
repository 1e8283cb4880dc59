"""`spendwatch insights`: the biggest savings opportunities, in dollars, with their evidence.

From a running system (each workflow's latest snapshot on the snapshots topic, `--broker`) or
from recorded traffic replayed through the same engine in virtual time: either way the rows are
the `insights` of workflow snapshots, read through the dashboard's read model.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.table import Table

from spendwatch.cli.common import CliError, broker_arg, load_config

if TYPE_CHECKING:
    from spendwatch.cli.common import Subparsers

CSV_COLUMNS = ("kind", "workflow", "model", "usd_per_day", "usd_per_month", "summary", "evidence")
KIND_LABEL = {"right_sizing": "right-sizing", "caching": "caching", "context_bloat": "context bloat",
              "token_waste": "token waste"}


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else orjson.dumps(r[c]).decode() if c == "evidence" else r[c]
                        for c in CSV_COLUMNS])
        return buf.getvalue()
    table = Table(title="savings opportunities, biggest first", show_lines=False)
    for col, justify in (("#", "right"), ("$/day", "right"), ("$/month", "right"), ("lever", "left"),
                         ("workflow", "left"), ("model", "left"), ("evidence", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), f"${r['usd_per_day']:,.2f}", f"${r['usd_per_month']:,.0f}",
                      KIND_LABEL.get(r["kind"], r["kind"]), r["workflow"], r["model"] or "—", r["summary"])
    table.caption = (f"${sum(r['usd_per_day'] for r in rows):,.2f}/day over {len(rows)} opportunities; dollars are "
                     "estimates at catalog prices (README: Insights)") if rows else "no opportunity above the minimum"
    out = io.StringIO()
    Console(file=out, width=220, force_terminal=False).print(table)
    return out.getvalue()


def cmd_insights(args: argparse.Namespace) -> int:
    if bool(args.broker) == bool(args.files):
        raise CliError("give either --broker (a running system) or traffic FILEs (a recording), not "
                       + ("both" if args.broker else "neither"))
    settings = load_config(args.config)
    if args.broker:
        from spendwatch.cli.report import from_broker

        model = from_broker(args.broker, settings, args.wait)
    else:
        from spendwatch.cli.report import from_traffic

        model = from_traffic(args.files, args.traffic_format, settings, args.skip_bad)
    rows = model.insights(workflow=args.workflow, kind=args.kind, limit=args.limit)
    sys.stdout.write(render(rows, args.format))
    return 0


def _limit(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def add_insights_command(sub: Subparsers) -> None:
    from detectors.insights import KINDS
    from replay.readers import FORMATS

    r = sub.add_parser(
        "insights", help="Savings opportunities in dollars: right-sizing, caching, context bloat, token waste.",
        description="The biggest savings opportunities per workflow and model, in dollars per day and month with "
        "their evidence: routine calls on a frontier model (right-sizing), large prompts not cached, prompts "
        "growing week over week (context bloat), tokens spent on runs that produced nothing (token waste). From "
        "a running system's snapshots (--broker) or recorded traffic replayed through the same engine.",
        epilog="examples:\n  spendwatch insights --broker kafka://kafka:9092\n"
               "  spendwatch insights traffic.jsonl.gz --config spendwatch.toml --format json\n"
               "  spendwatch insights ../shared/data/mini_swe_agent_gemini3_pro/per_call_usage.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("files", type=Path, nargs="*", metavar="FILE", help="recorded traffic (plain or gzip)")
    r.add_argument("--broker", type=broker_arg, help="Kafka bootstrap of a running system, kafka://HOST:PORT")
    r.add_argument("--format", choices=["table", "csv", "json"], default="table", help="default: %(default)s")
    r.add_argument("--config", type=Path, help="TOML config ([insights]; prices and detectors for FILEs; topics)")
    r.add_argument("--workflow", help="only this workflow")
    r.add_argument("--kind", choices=KINDS, help="only this lever")
    r.add_argument("--limit", type=_limit, help="at most this many rows")
    r.add_argument("--traffic-format", default="auto", choices=["auto", *FORMATS],
                   help="input format of FILEs (default: detect)")
    r.add_argument("--skip-bad", action="store_true", help="skip and count bad lines of FILEs instead of stopping")
    r.add_argument("--wait", type=float, default=30.0, help="seconds to wait for Kafka (default: %(default)s)")
    r.set_defaults(func=cmd_insights)
