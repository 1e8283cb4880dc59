"""Alerts printed to the terminal with rich: what on-call sees in `spendwatch demo`.

On a terminal each alert is a panel; into a pipe or log file it is one line, which
greps well and costs ~100× less to render during an alert storm."""

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
        when = datetime.fromtimestamp(alert.ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if not self.console.is_terminal:
            undo = f" undo: {alert.undo}" if alert.undo else ""
            self.console.file.write(f"{when} ALERT {title(alert)}: {alert.summary} "
                                    f"[{alert.alert_id}] action: {alert.action}{undo}\n")
            self.console.file.flush()
            return "printed"
        grid = Table.grid(padding=(0, 2))
        for k, v in who(alert) + evidence_lines(alert, limit=8):
            grid.add_row(f"[dim]{k}[/]", v)
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
