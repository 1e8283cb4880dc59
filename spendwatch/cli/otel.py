"""`spendwatch otel-bridge`: the OpenTelemetry Collector's `kafka` exporter topic → usage events."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from spendwatch.cli.common import CliError, broker_arg

if TYPE_CHECKING:
    import argparse

    from spendwatch.cli.common import Subparsers

EXAMPLE = """example (a Collector with `exporters: kafka: {brokers: [kafka:9092], traces: {topic: otlp_spans}}`):
  spendwatch otel-bridge --broker kafka://kafka:9092 --topic otlp_spans --encoding otlp_proto
"""


def cmd_otel_bridge(args: argparse.Namespace) -> int:
    try:
        from spendwatch.integrations.otel import OtlpBridge, SpanMapper
    except ImportError as err:
        raise CliError(f"the OpenTelemetry extra is not installed ({err.name}): pip install 'spendwatch[otel]'") \
            from None
    mapping = {}
    for item in args.map or []:
        name, sep, sources = item.partition("=")
        if not sep or not sources:
            raise CliError(f"--map {item!r}: use FIELD=SOURCE[,SOURCE...], e.g. workflow=resource:service.name")
        mapping[name.strip()] = [s.strip() for s in sources.split(",") if s.strip()]
    try:
        mapper = SpanMapper(mapping, use_span_cost=args.use_span_cost)
    except ValueError as err:
        raise CliError(str(err)) from None
    bridge = OtlpBridge(args.broker, args.topic, args.encoding, usage_topic=args.usage_topic, group=args.group,
                        mapper=mapper)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await bridge.run(stop, idle_exit=args.exit_when_idle)

    asyncio.run(run())
    print(f"otel-bridge: {bridge.records} records, {bridge.events} usage events, {bridge.malformed} malformed "
          f"records skipped; spans: {dict(bridge.mapper.counts)}")
    return 0


def add_otel_command(sub: Subparsers) -> None:
    help_ = ("Bridge an OpenTelemetry Collector's kafka exporter topic to the usage topic: GenAI spans become "
             "usage events, so a Collector feeds spendwatch with configuration only.")
    import argparse

    p = sub.add_parser("otel-bridge", help=help_, description=help_, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_otel_bridge)
    p.add_argument("--broker", type=broker_arg, required=True, help="Kafka bootstrap, kafka://HOST:PORT[,HOST:PORT]")
    p.add_argument("--topic", default="otlp_spans", help="the Collector's traces topic (default: %(default)s)")
    p.add_argument("--encoding", default="otlp_proto", choices=["otlp_proto", "otlp_json"],
                   help="the Collector exporter's encoding (default: %(default)s)")
    p.add_argument("--usage-topic", default="spendwatch.usage", help="where usage events go (default: %(default)s)")
    p.add_argument("--group", default="spendwatch-otel-bridge", help="consumer group (default: %(default)s)")
    p.add_argument("--map", action="append", metavar="FIELD=SOURCE[,SOURCE...]",
                   help="attribution override, repeatable, e.g. workflow=app.name,resource:service.name")
    p.add_argument("--use-span-cost", action="store_true",
                   help="send a span's own cost attribute (OpenLIT's gen_ai.usage.cost) as cost_usd")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS", help="stop once no record came for this long")
