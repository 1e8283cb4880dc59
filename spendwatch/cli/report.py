"""`spendwatch report`: showback and chargeback, per workflow or team, for the current day or month.

From a running system (the workers' snapshots topic, `--broker`) or from recorded traffic (the
same engine in virtual time): either way the rows come from workflow snapshots through the
dashboard's read model, so the report, the API and the page agree to the cent.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.table import Table

from spendwatch.cli.common import CliError, broker_arg, kafka_security, load_config
from spendwatch.emitter import bootstrap_of

if TYPE_CHECKING:
    from spendwatch.cli.common import Subparsers
    from spendwatch.config import Settings
    from streams.dashboard.model import ReadModel

COLUMNS = {
    "workflow": ("workflow", "team", "period", "cost_usd", "calls", "errors", "input", "output", "cache_read",
                 "cache_write", "reasoning", "outcomes", "usd_per_outcome", "outcome_value_usd", "budget_usd",
                 "budget_used"),
    "team": ("team", "period", "cost_usd", "workflows", "budget_usd", "budget_used"),
}


def from_broker(broker: str, settings: Settings, wait_s: float) -> ReadModel:
    """Every snapshot on the topic, read once to its end."""
    from streams.dashboard.feed import Feed, FeedTopics
    from streams.dashboard.model import ReadModel

    model = ReadModel()
    t = settings.topics
    feed = Feed(model, bootstrap_of(broker), FeedTopics(t.snapshots, t.alerts, t.control), rediscover_s=1.0,
                security=kafka_security(settings))

    async def read() -> None:
        task = asyncio.ensure_future(feed.run())
        try:
            await asyncio.wait_for(feed.caught_up.wait(), wait_s)
        except TimeoutError:
            raise CliError(f"could not read {t.snapshots} at {broker} within {wait_s:.0f} s: is Kafka up, and "
                           "have workers run (they publish the snapshots)?") from None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(read())
    return model


def from_traffic(files: list[Path], fmt: str, settings: Settings, skip_bad: bool) -> ReadModel:
    """Recorded traffic through the configured engine in virtual time, then every workflow's snapshot."""
    from replay import driver
    from replay.readers import ReadStats, ReplayInputError, read_traffic
    from streams.dashboard.model import ReadModel

    for f in files:
        if not f.is_file():
            raise CliError(f"{f}: no such traffic file")
    monitor = settings.build_monitor()
    try:
        driver.run(read_traffic(files, fmt=fmt, skip_bad=skip_bad, stats=ReadStats()), monitor)
    except (ReplayInputError, FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from None
    model = ReadModel()
    for name in sorted(monitor.workflows):
        monitor.insights(name, fresh=True)  # as of the workflow's last event
        model.apply_snapshot(orjson.dumps(monitor.snapshot(name)))
    return model


def render(rows: list[dict[str, Any]], by: str, fmt: str) -> str:
    cols = COLUMNS[by]
    if fmt == "json":
        return orjson.dumps([{c: r.get(c) for c in cols} for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
        return buf.getvalue()
    shown = [c for c in cols if c not in ("period", "cache_write", "reasoning", "outcome_value_usd")]
    table = Table(title=f"spend by {by}, {rows[0]['period'] if rows else 'no data'}")
    for c in shown:
        table.add_column(c.replace("_", " "), justify="left" if c in ("workflow", "team") else "right")
    for r in rows:
        table.add_row(*(_cell(c, r.get(c)) for c in shown))
    if rows:
        total = sum(r["cost_usd"] for r in rows)
        table.caption = f"total ${total:,.2f} over {len(rows)} {by}s"
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False).print(table)
    return out.getvalue()


def _cell(col: str, value: Any) -> str:
    if value is None:
        return "—"
    if col in ("cost_usd", "usd_per_outcome", "budget_usd"):
        return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
    if col == "budget_used":
        return f"{value:.0%}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def cmd_report(args: argparse.Namespace) -> int:
    if bool(args.broker) == bool(args.files):
        raise CliError("give either --broker (a running system) or traffic FILEs (a recording), not "
                       + ("both" if args.broker else "neither"))
    settings = load_config(args.config)
    model = (from_broker(args.broker, settings, args.wait) if args.broker
             else from_traffic(args.files, args.traffic_format, settings, args.skip_bad))
    rows = model.showback(args.by, args.period)
    sys.stdout.write(render(rows, args.by, args.format))
    return 0


def add_report_command(sub: Subparsers) -> None:
    from replay.readers import FORMATS

    r = sub.add_parser(
        "report", help="Showback/chargeback: spend per workflow or team for the current day or month.",
        description="Spend per workflow or team for the current day or month (the newest the data holds), with "
        "tokens by type, calls, errors, outcomes, cost per outcome and budget use; from a running system's "
        "snapshots (--broker) or from recorded traffic replayed through the same engine.",
        epilog="examples:\n  spendwatch report --broker kafka://kafka:9092 --by team --period month\n"
               "  spendwatch report traffic.jsonl.gz --by workflow --format csv > december.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("files", type=Path, nargs="*", metavar="FILE", help="recorded traffic (plain or gzip)")
    r.add_argument("--broker", type=broker_arg, help="Kafka bootstrap of a running system, kafka://HOST:PORT")
    r.add_argument("--by", choices=["workflow", "team"], default="workflow", help="rows (default: %(default)s)")
    r.add_argument("--period", choices=["day", "month"], default="month", help="default: %(default)s")
    r.add_argument("--format", choices=["table", "csv", "json"], default="table", help="default: %(default)s")
    r.add_argument("--config", type=Path, help="TOML config (topics; budgets, prices and timezone for FILEs)")
    r.add_argument("--traffic-format", default="auto", choices=["auto", *FORMATS],
                   help="input format of FILEs (default: detect)")
    r.add_argument("--skip-bad", action="store_true", help="skip and count bad lines of FILEs instead of stopping")
    r.add_argument("--wait", type=float, default=30.0, help="seconds to wait for Kafka (default: %(default)s)")
    r.set_defaults(func=cmd_report)
