"""Run the Faust worker in this process, with or without the embedded broker."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import faust
from faust.exceptions import ConsistencyError
from rich.console import Console

from spendwatch.config import Settings
from streams.app import Worker, build_app
from streams.broker import EmbeddedBroker
from streams.sinks import Sink
from streams.sinks.console import ConsoleSink
from streams.sinks.pagerduty import PagerDutySink
from streams.sinks.slack import SlackSink
from streams.sinks.webhook import WebhookSink

log = logging.getLogger("spendwatch")

GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700)."""


def make_sinks(settings: Settings, console: Console) -> list[Sink]:
    sinks: list[Sink] = [ConsoleSink(console)]
    s = settings.slack
    if s.webhook_url() or (s.token() and s.channel):
        sinks.append(SlackSink(token=s.token(), channel=s.channel, webhook_url=s.webhook_url(), base_url=s.base_url))
    elif s.channel:
        log.warning("slack.channel is set but $%s is empty: Slack alerts are off", s.token_env)
    if url := os.environ.get(settings.sinks.webhook_url_env):
        sinks.append(WebhookSink(url))
    if key := os.environ.get(settings.sinks.pagerduty_routing_key_env):
        sinks.append(PagerDutySink(key, base_url=settings.sinks.pagerduty_base_url))
    return sinks


def run(
    settings: Settings,
    broker: str | None,
    *,
    data_dir: Path | None = None,
    console: Console | None = None,
    tasks: list[Callable[[Worker], Awaitable[None]]] = (),  # type: ignore[assignment]
    duration: float | None = None,
    loglevel: str = "warning",
) -> Worker:
    """Start (embedded broker,) worker and `tasks`; return when stopped (Ctrl-C, SIGTERM or `duration`)."""
    console = console or Console()
    with ExitStack() as stack:
        if broker is None:
            embedded = stack.enter_context(EmbeddedBroker())
            broker = embedded.url
            console.print(f"[dim]embedded Tansu broker on {embedded.bootstrap} (memory storage)[/]")
        worker = build_app(settings, broker, make_sinks(settings, console), data_dir=data_dir)
        for task in tasks:
            worker.app.task(_bind(task, worker))
        if duration is not None:
            @worker.app.task
            async def stop_after() -> None:
                await asyncio.sleep(duration)
                signal.raise_signal(signal.SIGTERM)
        fw = faust.Worker(worker.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        # Faust's start-up spinner sets the root logger to DEBUG (to spin on every record), so every
        # send and table write would build a debug LogRecord: a fifth of a busy worker's time.
        fw.spinner = None
        # Everything alive now (imports, Faust, the app) lives as long as the process: freeze it
        # so full collections skip it, and collect young objects less often, since a batch
        # allocates thousands that die with it.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        try:
            fw.execute_from_commandline()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                if isinstance(fw.crash_reason, ConsistencyError):
                    raise fw.crash_reason from None  # the CLI says what to do about it
                raise
    return worker


def _bind(task: Callable[[Worker], Awaitable[None]], worker: Worker) -> Callable[[], Awaitable[None]]:
    async def bound() -> None:
        await task(worker)
    bound.__name__ = getattr(task, "__name__", "task")
    bound.__qualname__ = bound.__name__
    return bound

