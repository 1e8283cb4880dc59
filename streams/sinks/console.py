"""Alerts printed to the terminal with rich: what on-call sees in `spendwatch demo`."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from schemas.alerts import Alert
from streams.sinks.text import evidence_lines, title, who

STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


class ConsoleSink:
    name = "console"

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=False)

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        grid = Table.grid(padding=(0, 2))
        for k, v in who(alert) + evidence_lines(alert, limit=8):
            grid.add_row(f"[dim]{k}[/]", v)
        when = datetime.fromtimestamp(alert.ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        body = Table.grid()
        body.add_row(alert.summary)
        body.add_row(grid)
        body.add_row(f"[dim]{alert.alert_id} · event time {when} · action: {alert.action}[/]")
        if alert.undo:
            body.add_row(f"undo: [bold]{alert.undo}[/]")
        self.console.print(Panel(body, title=title(alert), border_style=STYLE[alert.severity], expand=False))
        return "printed"

    async def close(self) -> None:
        return None
