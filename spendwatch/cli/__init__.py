"""`spendwatch` command line. Every subcommand's --help says what it does and shows an example."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from spendwatch.cli.common import CliError, Command, broker_arg, load_config, port, positive
from spendwatch.cli.dashboard import add_dashboard_command

if TYPE_CHECKING:
    from streams.app import Worker

EPILOG = """examples:
  spendwatch demo                         embedded broker + worker + traffic, live console
  spendwatch demo --duration 60           the same, exits after 60 s and prints the alerts raised
  spendwatch worker --broker kafka://kafka:9092 --config spendwatch.toml
  spendwatch dashboard --broker kafka://kafka:9092   live page, JSON API and /metrics on 127.0.0.1:8080
  spendwatch report --broker kafka://kafka:9092 --by team --period month   showback per team
  spendwatch insights traffic.jsonl.gz    savings opportunities in dollars (or --broker for a running system)
  spendwatch broker                       a local Kafka-compatible broker for development
  spendwatch emit events.jsonl --broker kafka://127.0.0.1:9092
  spendwatch schema export schemas-out/   JSON Schema files for publishers in other languages
  spendwatch otel-bridge --broker kafka://kafka:9092   OpenTelemetry Collector spans → usage events
"""


def cmd_worker(args: argparse.Namespace) -> int:
    from spendwatch.runner import run

    if args.data_dir and not args.broker:
        raise CliError("--data-dir needs --broker: the embedded broker keeps topics in memory, so tables on disk "
                       "would outlive their changelogs. Point --broker at a Kafka that keeps its data, or drop "
                       "--data-dir to keep tables in memory.")
    settings = load_config(args.config)
    if args.metrics_port is not None or args.metrics_host is not None:  # the flags win over [worker]
        settings.worker = settings.worker.model_copy(update={
            k: v for k, v in (("metrics_port", args.metrics_port), ("metrics_host", args.metrics_host))
            if v is not None})
    from faust.exceptions import ConsistencyError

    try:  # tables on disk ahead of their changelogs (runner re-raises it from Faust's crash)
        run(settings, args.broker, data_dir=args.data_dir, loglevel=args.log_level)
    except ConsistencyError:
        raise CliError(f"the tables in {args.data_dir} are ahead of their changelog topics. If the topics were "
                       "deleted or recreated, move the directory away and start again (tables are rebuilt from "
                       "the changelogs); to keep them as they are, set check_changelog_offsets = false in the "
                       "config.") from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.live import Live

    from spendwatch.demo import demo_settings, inject_incidents, produce_traffic, summary_table
    from spendwatch.runner import run

    console = Console()
    settings = demo_settings(load_config(args.config))
    started = time.time()

    async def live_summary(worker: Worker) -> None:
        with Live(summary_table(worker, started), console=console, refresh_per_second=2) as live:
            while True:
                await asyncio.sleep(0.5)
                live.update(summary_table(worker, started))

    async def dashboard(worker: Worker) -> None:
        from spendwatch.emitter import bootstrap_of
        from streams.dashboard.feed import FeedTopics
        from streams.dashboard.server import Dashboard

        t = settings.topics
        dash = Dashboard(bootstrap_of(worker.broker), FeedTopics(t.snapshots, t.alerts, t.control), port=args.port,
                         security=worker.kafka)
        try:
            url = await dash.start()
        except OSError:  # the port is taken (another dashboard?): any free one will do for a demo
            dash.port = 0
            url = await dash.start()
        console.print(f"[bold]dashboard: {url}[/] (JSON API under {url}api/v1/, Prometheus at {url}metrics)")
        try:
            await asyncio.Event().wait()
        finally:
            await dash.stop()

    worker = run(settings, args.broker, console=console,
                 tasks=[produce_traffic, inject_incidents, dashboard, live_summary], duration=args.duration,
                 loglevel=args.log_level)
    counts = worker.stats.alerts
    console.print(f"\nalerts raised: {sum(counts.values())} "
                  + (" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "(none)"))
    console.print(f"events accepted: {worker.stats.accepted:,}, duplicates dropped: {worker.stats.duplicates}, "
                  f"dead-lettered: {worker.stats.deadletters}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port)
    status = broker.serve(lambda b: print(f"Tansu broker listening on {b.bootstrap}  (use --broker {b.url}); "
                                          "Ctrl-C or SIGTERM stops it", flush=True))
    if status:
        print(f"spendwatch: error: the broker exited with status {status}; its log is {broker.log_path}",
              file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from spendwatch.bench.report import print_bench, to_json
    from spendwatch.bench.run import run_bench

    if args.dashboard:
        from spendwatch.bench.dashboard import print_dashboard_bench, run_dashboard_bench

        result = run_dashboard_bench(args.dashboard)
        if args.json:
            print(json.dumps(result))
        else:
            print_dashboard_bench(result)
        return 0
    if args.kill:
        from spendwatch.bench.kill import run_kill_bench

        result = run_kill_bench(args.trials)
        print(json.dumps(result) if args.json else
              f"event-to-SpendKilled over {result['trials']} looping runs: p50 {result['p50_s']} s, "
              f"p95 {result['p95_s']} s, max {result['max_s']} s")
        return 0
    result = run_bench(quick=args.quick)
    if args.json:
        print(to_json(result))
    else:
        print_bench(result)
    return 0


def cmd_schema_export(args: argparse.Namespace) -> int:
    from schemas.export import export_json_schemas

    for path in export_json_schemas(args.dir):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spendwatch", description="Real-time LLM spend monitor: prices token-usage events from Kafka, keeps "
        "rolling spend per workflow, team, model and agent, and alerts within seconds.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, func: Command | None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    broker_help = "Kafka bootstrap, kafka://HOST:PORT[,HOST:PORT]"
    w = add("worker", "Run a worker: consume usage events, keep spend, publish alerts (for real deployments).",
            cmd_worker)
    w.add_argument("--broker", type=broker_arg, help=broker_help + " (default: start the embedded broker)")
    w.add_argument("--config", type=Path, help="TOML config file (budgets, pricing, topics, Slack)")
    w.add_argument("--data-dir", type=Path, help="keep tables in RocksDB here, one database per table and "
                   "partition, so a restart reads only the changelog tail (default: in memory, rebuilt from "
                   "the changelog topics on start); needs --broker")
    w.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    w.add_argument("--metrics-port", type=port, metavar="PORT", help="serve Prometheus metrics at "
                   "http://HOST:PORT/metrics; 0: off (default: [worker] metrics_port in the config, else off)")
    w.add_argument("--metrics-host", metavar="HOST", help="address the metrics endpoint listens on (default: "
                   "[worker] metrics_host, else 127.0.0.1; 0.0.0.0 in a container)")

    d = add("demo", "Embedded broker + worker + built-in traffic with a live console; fires a budget alert "
            "within a minute.", cmd_demo)
    d.add_argument("--duration", type=positive, metavar="SECONDS", help="stop after this long and print the "
                   "alerts raised, counted by kind (default: run until Ctrl-C)")
    d.add_argument("--config", type=Path, help="TOML config file (default: demo budgets)")
    d.add_argument("--broker", type=broker_arg, help=broker_help + " (default: embedded)")
    d.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    d.add_argument("--port", type=port, default=8080, help="the dashboard's port on 127.0.0.1 (default: "
                   "%(default)s, or a free one if it is taken)")

    b = add("broker", "Run the embedded Kafka-compatible broker (Tansu) alone and print its address.", cmd_broker)
    b.add_argument("--port", type=int, help="port to listen on (default: a free one)")

    from spendwatch.cli.emit import cmd_emit

    e = add("emit", "Publish usage/outcome events from a JSONL file (or - for stdin) to Kafka.", cmd_emit)
    e.add_argument("file", type=Path, help="JSONL: one event object or array of events per line; - for stdin")
    e.add_argument("--broker", type=broker_arg, required=True, help=broker_help)
    e.add_argument("--topic", default="spendwatch.usage", help="usage topic (default: %(default)s)")
    e.add_argument("--skip-bad", action="store_true", help="skip and count invalid lines instead of stopping")

    bn = add("bench", "Throughput, latency and memory of the real worker vs a naive baseline, same run.",
             cmd_bench)
    bn.add_argument("--quick", action="store_true", help="small loads, finishes in about a minute")
    bn.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bn.add_argument("--kill", action="store_true", help="measure kill latency instead: looping agent runtime "
                    "→ detection → signed kill → SpendKilled in the SDK guard")
    bn.add_argument("--dashboard", type=int, metavar="WORKFLOWS", help="measure the dashboard instead: catch-up "
                    "time, API latency, memory and page load with this many workflows (e.g. 10000)")
    bn.add_argument("--trials", type=int, default=20, help="looping runs for --kill (default: %(default)s)")

    s = add("schema", "Wire-contract tools.", None)
    ssub = s.add_subparsers(dest="schema_command", required=True, metavar="SUBCOMMAND")
    x = ssub.add_parser("export", help="write JSON Schema files for the wire models into DIR",
                        description="Write JSON Schema files (usage, outcome, alert, control) into DIR.")
    x.add_argument("dir", type=Path)
    x.set_defaults(func=cmd_schema_export)

    add_dashboard_command(sub)
    from spendwatch.cli.report import add_report_command

    add_report_command(sub)
    from spendwatch.cli.insights import add_insights_command

    add_insights_command(sub)
    from spendwatch.cli.control import add_control_commands

    add_control_commands(sub)
    from spendwatch.cli.replay import add_replay_commands

    add_replay_commands(sub)
    from spendwatch.cli.otel import add_otel_command

    add_otel_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from streams.secrets import redact_logs

    redact_logs()
    try:
        return args.func(args)
    except CliError as err:
        print(f"spendwatch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # last resort: one clear line instead of a traceback
        from schemas.signing import KeyringError
        from streams.broker import BrokerError
        from streams.kafka_security import KafkaSecurityError
        from streams.metrics import MetricsPortError

        if isinstance(err, (BrokerError, KeyringError, MetricsPortError, KafkaSecurityError)):
            print(f"spendwatch: error: {err}", file=sys.stderr)
            return 1
        raise
