"""`spendwatch replay ...` and `spendwatch score`: backtests, series scoring, live replay, scorecard."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from spendwatch.cli.common import CliError, broker_arg

if TYPE_CHECKING:
    from replay.readers import ReadStats
    from schemas.structs import Event
    from spendwatch.cli.common import Subparsers

EXAMPLES = """examples:
  spendwatch replay backtest traffic.jsonl.gz --config spendwatch.toml --labels incidents.json --out out/
  spendwatch replay backtest ../shared/data/mini_swe_agent_gemini3_pro/per_call_usage.csv --out out/swe
  spendwatch replay backtest trace.csv --format azure --workflow chat --model gpt-4o --runs 50 --out out/az
  spendwatch replay compare main.toml tuned.toml traffic.jsonl.gz --labels incidents.json
  spendwatch replay score-series billing_hourly.csv --out scored.csv
  spendwatch replay nab ../shared/data/nab_dev --out out/nab
  spendwatch replay live ../shared/data/mooncake/conversation_trace.jsonl --broker kafka://127.0.0.1:9092 --speed 10
  spendwatch replay generate --seed 3 --days 1 --out scenario.jsonl --labels-out labels.json
"""


@contextlib.contextmanager
def counting(console: Console, what: str) -> Iterator[Any]:
    """A live counter with rate for inputs of unknown length."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} events"),
                  TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda n: bar.advance(task, n)


def _traffic(args: argparse.Namespace) -> tuple[Iterator[Event], ReadStats]:
    from replay.readers import Attribution, ReadStats, read_traffic

    stats = ReadStats()
    attribution = Attribution(workflow=args.workflow, model=args.model, provider=args.provider, team=args.team,
                              runs=args.runs)
    return read_traffic(args.files, fmt=args.format, attribution=attribution, mapping=args.map,
                        skip_bad=args.skip_bad, stats=stats), stats


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.1 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} is out of range: use 0.1 to 86400 seconds")
    return value


def _model_arg(text: str) -> tuple[str, Any]:
    """KEY=VALUE, VALUE as JSON (numbers, true, lists) or else as text."""
    import orjson

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. n_trees=25)")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _user_errors() -> tuple[type[Exception], ...]:
    from replay.labels import LabelError
    from replay.readers import ReplayInputError
    from spendwatch.config import ConfigError

    return (ReplayInputError, LabelError, ConfigError, ValueError, FileNotFoundError)


def cmd_backtest(args: argparse.Namespace) -> int:
    from replay.backtest import backtest
    from replay.labels import load_labels
    from spendwatch.config import load_settings

    console = Console()
    try:
        settings = load_settings(args.config)
        labels = load_labels(args.labels) if args.labels else None
        events, stats = _traffic(args)
        monitor = settings.build_monitor()
        with counting(console, "backtesting") as progress:
            summary = backtest(events, args.out, monitor, labels, progress=progress, tick=args.tick)
    except _user_errors() as err:
        raise CliError(str(err)) from None
    console.print(f"{summary['events']:,} events replayed at {summary['events_per_s'] or 0:,}/s; "
                  f"{summary['alerts']} alerts {summary['alerts_by_kind']}"
                  + (f"; skipped {stats.skipped} bad lines" if stats.skipped else ""))
    for kind, row in (summary.get("score") or {}).get("per_kind", {}).items():
        console.print(f"  {kind:8} recall {row['recall'] if row['recall'] is not None else '—'}  precision "
                      f"{row['precision'] if row['precision'] is not None else '—'}  median TTD "
                      f"{row['median_ttd_s'] if row['median_ttd_s'] is not None else '—'} s  saved ${row['saved_usd']}")
    console.print(f"wrote {args.out / 'alerts.jsonl'}, {args.out / 'summary.json'}, {args.out / 'report.html'}")
    if summary["contained_failures"]:
        console.print(f"[red]{summary['contained_failures']} contained engine failures[/] "
                      f"({summary['poisoned_events']} events not applied); first: "
                      f"{(summary['poisoned'] or [{'reason': 'in a detector tick, see the log'}])[0]['reason']}\n"
                      "A bug in spendwatch: please report it with summary.json's \"poisoned\" entries.")
        return 3 if args.strict else 0
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import orjson

    from replay.compare import check_spans, compare, render, run_side
    from replay.labels import load_labels
    from spendwatch.config import load_settings

    console = Console(stderr=args.json)
    try:
        check_spans(args.tolerance, args.window)
        configs = [(path, load_settings(path)) for path in (args.a, args.b)]
        labels = load_labels(args.labels) if args.labels else None
        sides = []
        for path, settings in configs:  # the traffic is read once per side: memory stays one event deep
            events, stats = _traffic(args)
            with counting(console, f"replaying {path.name}") as progress:
                sides.append(run_side(str(path), events, settings.build_monitor(), args.tick, labels, progress))
        doc = compare(sides[0], sides[1], labels=labels, tolerance=args.tolerance, window=args.window)
    except _user_errors() as err:
        raise CliError(str(err)) from None
    doc["skipped_lines"] = stats.skipped
    if args.out:
        from replay.report import write_compare_report

        try:
            write_compare_report(args.out, doc)
        except OSError as err:
            raise CliError(f"{args.out}: cannot write the report: {err.strerror}") from None
    if args.json:
        print(orjson.dumps(doc).decode())
        return 0
    render(doc, console, args.limit)
    if stats.skipped:
        console.print(f"skipped {stats.skipped} bad lines")
    if args.out:
        console.print(f"wrote {args.out}")
    return 0


def cmd_score_series(args: argparse.Namespace) -> int:
    from replay.series import score_series

    try:
        rows, best, at = score_series(args.series, args.out, args.skip_bad)
    except _user_errors() as err:
        raise CliError(str(err)) from None
    print(f"scored {rows} rows into {args.out}; highest anomaly score {best:.3f} at {at}")
    return 0


def cmd_nab(args: argparse.Namespace) -> int:
    import orjson
    from rich import box
    from rich.progress import BarColumn, MofNCompleteColumn
    from rich.table import Table

    from detectors.models import ModelSpec
    from replay.nab import DEFAULT_MODEL, DETECTOR, detect, evaluate, read_corpus, write_results

    console = Console(stderr=args.json)
    profiles = args.profile or ["standard", "reward_low_FP", "reward_low_FN"]
    spec = ModelSpec(args.model or DEFAULT_MODEL, dict(args.model_arg or []), args.scale)
    detector = DETECTOR if args.model is None else spec.path.replace(":", ".").rsplit(".", 1)[-1]
    try:
        spec.build()
        files = read_corpus(args.corpus)
        scores = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("scoring series", total=len(files))
            for f in files:
                scores.append(detect(f, spec.build()))
                write_results(args.out, f, scores[-1], detector)
                bar.advance(task)
        report = evaluate(files, scores, profiles)
    except _user_errors() + (OSError,) as err:
        raise CliError(str(err)) from None
    if args.json:
        print(orjson.dumps({"model": spec.path, "model_args": spec.args, "scale": spec.scale, "files": len(files),
                            "rows": sum(len(f.ts) for f in files), "out": str(args.out), "profiles": report}).decode())
        return 0

    def cell(row: dict[str, Any]) -> str:
        return f"{row['score']:.1f}" if row["score"] is not None else f"— [dim]({row['raw']:.2f})[/]"

    table = Table(title=f"NAB scores of {spec.path}, {len(files)} files of {args.corpus}", box=box.SIMPLE_HEAD,
                  pad_edge=False, caption="—: no window to normalise by; its raw score (false positives) instead")
    table.add_column("category", no_wrap=True)
    table.add_column("files", justify="right")
    table.add_column("windows", justify="right")
    for name in profiles:
        table.add_column(name.removeprefix("reward_"), justify="right")  # low_FP, low_FN: fits 80 columns
    first = report[profiles[0]]
    for cat, row in first["categories"].items():
        table.add_row(cat, str(row["files"]), str(row["windows"]),
                      *(cell(report[p]["categories"][cat]) for p in profiles))
    table.add_row("[bold]overall[/]", str(first["files"]), str(first["windows"]), *(f"[bold]{cell(report[p])}[/]"
                                                                                  for p in profiles))
    console.print(table)
    for name in profiles:
        r = report[name]
        at = f"{r['threshold']:.6g}" if r["threshold"] <= 1 else "1.1 (above every score: never fires)"
        console.print(f"{name}: {r['score']:.1f} at threshold {at} (raw {r['raw']:.2f}, null "
                      f"{r['null']:.2f}, perfect {r['perfect']:.2f}; {r['tp']} windows hit, {r['fn']} missed, "
                      f"{r['fp_rows']} false-positive rows)")
    console.print(f"wrote results to {args.out / detector}")
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from spendwatch.cli.live import replay_live

    speed = None if args.speed == "max" else float(args.speed)
    if speed is not None and speed <= 0:
        raise CliError("--speed must be a positive number or 'max'")
    console = Console()
    try:
        events, stats = _traffic(args)
        with counting(console, f"publishing to {args.topic}") as progress:
            res = asyncio.run(replay_live(events, args.broker, args.topic, speed, progress))
    except _user_errors() as err:
        raise CliError(str(err)) from None
    console.print(f"published {res['events']:,} events in {res['seconds']} s ({res['events_per_s']:,}/s)"
                  + (f", {res['dropped']} dropped" if res["dropped"] else "")
                  + (f", skipped {stats.skipped} bad lines" if stats.skipped else ""))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import orjson

    from replay.scenarios import generate

    events, labels = generate(args.seed, days=args.days, workflows=args.workflows)
    with open(args.out, "wb") as fh:
        for ev in events:
            fh.write(orjson.dumps(ev) + b"\n")
    if args.labels_out:
        args.labels_out.write_bytes(orjson.dumps(labels, option=orjson.OPT_INDENT_2))
    print(f"wrote {len(events):,} events to {args.out}" + (f" and {len(labels)} incidents to {args.labels_out}"
                                                           if args.labels_out else ""))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from replay.scorecard import print_scorecard, run_scorecard

    shared = args.shared_data if args.shared_data and args.shared_data.exists() else None
    print_scorecard(run_scorecard(seeds=args.seeds, shared_data=shared))
    return 0


def add_traffic_args(p: argparse.ArgumentParser) -> None:
    from replay.readers import FORMATS

    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="recorded traffic (plain or gzip)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="input format (default: detect)")
    p.add_argument("--map", metavar="FIELD=COLUMN,...", help="generic CSV: wire field = CSV column, "
                   "e.g. ts=created,input_tokens=prompt,output_tokens=completion,model=model_name")
    g = p.add_argument_group("attribution for traces that lack it")
    g.add_argument("--workflow", default="replay", help="workflow of every event (default: %(default)s)")
    g.add_argument("--model", default="gpt-4o-mini", help="model of traces without one (default: %(default)s)")
    g.add_argument("--provider", help="provider to price the model with")
    g.add_argument("--team", help="team of every event")
    g.add_argument("--runs", type=int,
                   help="spread calls round-robin over this many runs (for run detectors); these runs never "
                        "end, so pick enough that each stays as short as a real run (events / 20 or more), "
                        "or the loop detector rightly calls them loops")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad lines instead of stopping")


def add_replay_commands(sub: Subparsers) -> None:
    r = sub.add_parser("replay", help="Backtest detectors on recorded traffic, score a series, replay into Kafka.",
                       description="Replay recorded traffic.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = r.add_subparsers(dest="replay_command", required=True, metavar="SUBCOMMAND")

    b = rs.add_parser("backtest", help="run the worker's engine over files in virtual time (no broker)",
                      description="Run the same engine as the worker over recorded traffic, in event time. "
                      "Deterministic. Writes OUT/alerts.jsonl, OUT/summary.json and OUT/report.html.")
    add_traffic_args(b)
    b.add_argument("--out", type=Path, required=True, help="output directory")
    b.add_argument("--config", type=Path, help="TOML config (budgets, pricing)")
    b.add_argument("--labels", type=Path, help="incident labels JSON (see replay/labels.py) to score against")
    b.add_argument("--tick", type=_positive, default=10.0, help="detector interval in event seconds (default: 10)")
    b.add_argument("--strict", action="store_true",
                   help="exit 3 if the engine failed on any workflow slice (the worker would dead-letter it and "
                        "go on, and so does the backtest without this flag)")
    b.set_defaults(func=cmd_backtest)

    c = rs.add_parser("compare", help="two detector configs over the same traffic: alerts added, removed, moved",
                      description="Backtest two configurations (A, then B) on the same traffic and review B "
                      "against A: alerts added, removed and moved in time, and with --labels the recall, "
                      "precision, time-to-detect and false-alarm deltas B−A.")
    c.add_argument("a", type=Path, metavar="A.toml", help="the baseline config")
    c.add_argument("b", type=Path, metavar="B.toml", help="the changed config")
    add_traffic_args(c)
    c.add_argument("--labels", type=Path, help="incident labels JSON (see replay/labels.py) to score both against")
    c.add_argument("--tick", type=_positive, default=10.0, help="detector interval in event seconds (default: 10)")
    c.add_argument("--tolerance", type=float, default=300.0,
                   help="seconds a paired alert may shift and still count as unchanged (default: %(default)g)")
    c.add_argument("--window", type=float, default=3600.0,
                   help="seconds apart beyond which two alerts of one subject with different ids are two "
                        "alerts, not one that moved (default: %(default)g)")
    c.add_argument("--limit", type=_at_least_one, default=20, help="alerts listed per section (default: %(default)s)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    c.add_argument("--out", type=Path, metavar="REPORT.html", help="also write an HTML report")
    c.set_defaults(func=cmd_compare)

    s = rs.add_parser("score-series", help="anomaly score per row of a timestamp,value CSV",
                      description="Score a recorded series (CSV with timestamp,value) with the spike scorer, "
                      "causally; writes timestamp,value,anomaly_score.")
    s.add_argument("series", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--skip-bad", action="store_true", help="skip and count bad rows instead of stopping")
    s.set_defaults(func=cmd_score_series)

    n = rs.add_parser("nab", help="score an anomaly model on a NAB-format corpus by NAB's rules",
                      description="Run an anomaly model (the novelty scorer unless --model) causally over every series "
                      "of a Numenta Anomaly Benchmark corpus (CORPUS/data/<category>/<file>.csv, "
                      "CORPUS/labels/combined_windows.json), write OUT/<detector>/<category>/<detector>_<file>.csv, "
                      "and print NAB's normalised score per profile, at its optimised threshold, per category and "
                      "overall. Example: spendwatch replay nab NAB --out res --model river.anomaly.HalfSpaceTrees "
                      "--model-arg seed=42 --scale minmax")
    n.add_argument("corpus", type=Path, metavar="CORPUS_DIR")
    n.add_argument("--out", type=Path, required=True, help="results directory")
    n.add_argument("--profile", action="append", choices=["standard", "reward_low_FP", "reward_low_FN"],
                   help="score only this profile (repeatable; default: all three)")
    n.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    n.add_argument("--model", metavar="IMPORT.PATH", help="a River anomaly detector class or factory (default: "
                   "detectors.novelty.NoveltyScorer; the workers' own is detectors.spikes.SeriesScorer)")
    n.add_argument("--model-arg", action="append", type=_model_arg, metavar="KEY=VALUE",
                   help="a keyword argument of the model (repeatable; VALUE is read as JSON, else as text)")
    n.add_argument("--scale", choices=["none", "minmax", "standard"], default="none",
                   help="scale the value before a model from outside spendwatch (HalfSpaceTrees wants minmax)")
    n.set_defaults(func=cmd_nab)

    lv = rs.add_parser("live", help="publish recorded traffic into Kafka with its timing",
                       description="Publish recorded traffic into Kafka, timestamps rewritten to now, relative "
                       "timing divided by --speed (or as fast as possible with --speed max).")
    add_traffic_args(lv)
    lv.add_argument("--broker", type=broker_arg, required=True)
    lv.add_argument("--speed", default="1", help="N times real time, or 'max' (default: 1)")
    lv.add_argument("--topic", default="spendwatch.usage")
    lv.set_defaults(func=cmd_live)

    g = rs.add_parser("generate", help="write a labelled synthetic scenario (events JSONL + labels JSON)",
                      description="Generate labelled traffic with injected incidents, for backtests.")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--days", type=float, default=1.0)
    g.add_argument("--workflows", type=int, default=10)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--labels-out", type=Path)
    g.set_defaults(func=cmd_generate)

    sc = sub.add_parser("score", help="Detector scorecard on generated scenarios (and ../shared/data if present).",
                        description="Recall, precision, time to detect and false alarms per detector.")
    sc.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    sc.add_argument("--shared-data", type=Path, default=Path("../shared/data"),
                    help="folder of the shared real datasets (default: %(default)s; skipped if absent)")
    sc.set_defaults(func=cmd_score)
