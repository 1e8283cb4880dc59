"""`spendwatch dashboard`: the live page, the JSON API and /metrics over the snapshots topic."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from spendwatch.cli.common import CliError, broker_arg, kafka_security, load_config, port
from spendwatch.emitter import bootstrap_of
from streams.secrets import register

if TYPE_CHECKING:
    from spendwatch.cli.common import Subparsers

TOKEN_ENV = "SPENDWATCH_DASHBOARD_TOKEN"
TOKEN_FILE_ENV = "SPENDWATCH_DASHBOARD_TOKEN_FILE"
"""A file holding the token instead (Docker and Kubernetes secrets are files)."""


def loopback(bind: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def token_for(bind: str) -> str | None:
    """The bearer token from the environment; required (CliError) when `bind` is not loopback."""
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is None and (path := os.environ.get(TOKEN_FILE_ENV, "").strip()):
        try:
            token = Path(path).read_text().strip() or None
        except OSError as err:
            raise CliError(f"{TOKEN_FILE_ENV}={path}: cannot read the token ({err.strerror or err})") from None
        if token is None:
            raise CliError(f"{TOKEN_FILE_ENV}={path} is empty; put the token in it "
                           f"(e.g. `openssl rand -hex 24 > {path}`)")
    if token is None and not loopback(bind):
        raise CliError(f"--bind {bind} exposes spend data beyond this machine: set {TOKEN_ENV} (or {TOKEN_FILE_ENV}, "
                       "a file holding it) to a long random secret "
                       f"(e.g. `export {TOKEN_ENV}=$(openssl rand -hex 24)`); clients then send "
                       "'Authorization: Bearer <token>', or open the page once as /?token=<token>")
    if token is not None and len(token) < 16:
        raise CliError(f"{TOKEN_ENV} is too short to guess-proof a dashboard: use at least 16 characters")
    return token


def cmd_dashboard(args: argparse.Namespace) -> int:
    from streams.dashboard.feed import FeedTopics
    from streams.dashboard.server import Dashboard

    settings = load_config(args.config)
    token = token_for(args.bind)
    register(token)  # masked in every log line from here on (streams/secrets.py)
    topics = FeedTopics(settings.topics.snapshots, settings.topics.alerts, settings.topics.control)
    dash = Dashboard(bootstrap_of(args.broker), topics, args.bind, args.port, token,
                     security=kafka_security(settings))
    console = Console()

    async def main() -> None:
        try:
            url = await dash.start()
        except OSError as err:
            raise CliError(f"cannot listen on {args.bind}:{args.port} ({err.strerror or err}); pick another "
                           "--port, or stop what holds it") from None
        console.print(f"spendwatch dashboard on [bold]{url}[/] (API: {url}api/v1/summary, metrics: {url}metrics)"
                      + (" — bearer token required" if token else ""))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await dash.stop()

    asyncio.run(main())
    return 0


def add_dashboard_command(sub: Subparsers) -> None:
    d = sub.add_parser(
        "dashboard", help="Serve the live spend page, the JSON API (/api/v1) and Prometheus /metrics.",
        description="Serve the live spend page, the JSON API (/api/v1/...) and Prometheus /metrics, built from the "
        "workers' snapshots topic (any number of workers) plus the alerts and control topics. Read-only. "
        f"Binds 127.0.0.1 unless --bind says otherwise; any other address needs ${TOKEN_ENV}.")
    d.add_argument("--broker", type=broker_arg, required=True, help="Kafka bootstrap, kafka://HOST:PORT[,HOST:PORT]")
    d.add_argument("--port", type=port, default=8080, help="TCP port (default: %(default)s; 0: a free one)")
    d.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    d.add_argument("--config", type=Path, help="TOML config file (its [topics] names; default: the defaults)")
    d.set_defaults(func=cmd_dashboard)

