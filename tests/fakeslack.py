"""A local stand-in for Slack's Web API and incoming webhooks, over real HTTP.

Speaks `chat.postMessage`, `chat.update` and webhook posts the way Slack does
(form or JSON bodies, `{"ok": ...}` answers, 429 with Retry-After), records
every accepted message, and can be told to fail for a while.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeSlack:
    token: str = "xoxb-test-token"
    messages: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)  # status codes to answer next, in order
    retry_after: int = 1
    requests: int = 0
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/T000/B000/XXXX"

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            return await request.json()
        form = await request.post()
        body = dict(form)
        for key in ("blocks", "attachments"):
            if isinstance(body.get(key), str):
                body[key] = json.loads(body[key])
        return body

    def _failure(self) -> web.Response | None:
        self.requests += 1
        if not self.failures:
            return None
        status = self.failures.pop(0)
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
        error = "ratelimited" if status == 429 else "internal_error"
        return web.json_response({"ok": False, "error": error}, status=status, headers=headers)

    async def api(self, request: web.Request) -> web.Response:
        if (fail := self._failure()) is not None:
            return fail
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        body = await self._body(request)
        method = request.match_info["method"]
        if method == "chat.postMessage":
            if not body.get("channel"):
                return web.json_response({"ok": False, "error": "channel_not_found"})
            ts = f"{1700000000 + len(self.messages)}.{len(self.messages):06d}"
            self.messages.append({**body, "ts": ts})
            return web.json_response({"ok": True, "channel": body["channel"], "ts": ts, "message": body})
        if method == "chat.update":
            if not any(m["ts"] == body.get("ts") for m in self.messages):
                return web.json_response({"ok": False, "error": "message_not_found"})
            self.updates.append(body)
            return web.json_response({"ok": True, "channel": body.get("channel"), "ts": body["ts"]})
        return web.json_response({"ok": False, "error": "unknown_method"})

    async def webhook(self, request: web.Request) -> web.Response:
        if (fail := self._failure()) is not None:
            return web.Response(status=fail.status, text="rate_limited", headers=fail.headers)
        self.messages.append(await request.json())
        return web.Response(text="ok")

    def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self.api)
        app.router.add_post("/webhook/{path:.*}", self.webhook)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
