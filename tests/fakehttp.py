"""A generic webhook receiver and PagerDuty's Events API v2, over real HTTP in the test's own event loop.

`/hook` records each JSON body; `/v2/enqueue` checks events the way
PagerDuty documents them (routing key, event_action, a payload with summary,
source and severity on trigger), answers 202 with the dedup key, and folds
them into incidents by dedup key. `failures` answers the next requests with
those status codes, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PD_SEVERITIES = {"critical", "error", "warning", "info"}


@dataclass
class FakeHTTP:
    routing_key: str = "R0123456789abcdef0123456789abcde"
    hooks: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    requests: int = 0
    url: str = ""

    @property
    def incidents(self) -> dict[str, str]:
        """dedup_key → "triggered" / "resolved", as PagerDuty would show them after these events."""
        state: dict[str, str] = {}
        for e in self.events:
            state[e["dedup_key"]] = "resolved" if e["event_action"] == "resolve" else "triggered"
        return state

    def _failure(self) -> web.Response | None:
        self.requests += 1
        return web.json_response({"status": "error"}, status=self.failures.pop(0)) if self.failures else None

    async def hook(self, request: web.Request) -> web.Response:
        if (fail := self._failure()) is not None:
            return fail
        self.hooks.append(await request.json())
        return web.Response(text="ok")

    async def enqueue(self, request: web.Request) -> web.Response:
        if (fail := self._failure()) is not None:
            return fail
        event = await request.json()
        if errors := self._invalid(event):
            return web.json_response({"status": "invalid event", "message": "Event object is invalid",
                                      "errors": errors}, status=400)
        event.setdefault("dedup_key", f"generated-{len(self.events)}")
        self.events.append(event)
        return web.json_response({"status": "success", "message": "Event processed",
                                  "dedup_key": event["dedup_key"]}, status=202)

    def _invalid(self, event: dict[str, Any]) -> list[str]:
        errors = []
        if event.get("routing_key") != self.routing_key:
            errors.append("'routing_key' is invalid")
        if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        if event.get("event_action") != "trigger" and not event.get("dedup_key"):
            errors.append("'dedup_key' is required to acknowledge or resolve")
        if event.get("event_action") == "trigger":
            payload = event.get("payload") or {}
            errors += [f"'payload.{k}' is missing" for k in ("summary", "source", "severity") if not payload.get(k)]
            if payload.get("severity") not in PD_SEVERITIES:
                errors.append("'payload.severity' is invalid")
        return errors

    async def start(self) -> FakeHTTP:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        app.router.add_post("/v2/enqueue", self.enqueue)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()
