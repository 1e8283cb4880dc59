"""A local stand-in for Slack's Web API and incoming webhooks, over real HTTP.

Speaks `chat.postMessage`, `chat.update`, `conversations.history`,
`conversations.list` and webhook posts the way Slack does (form or JSON
bodies, `{"ok": ...}` answers, 429 with Retry-After, channel names accepted
only where Slack accepts them), records every accepted message, and can be
told to misbehave: fail the next requests, fail everything for a while (an
outage), or take a post and answer only after the client gave up.

`posted` and `updated` count posts and updates per marker (the `id` in the
message metadata spendwatch attaches; an update counts under the marker it
carries), so a test can say "exactly one message per
alert" without trusting the code under test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeSlack:
    token: str = "xoxb-test-token"
    channels: dict[str, str] = field(default_factory=lambda: {"c": "C0000000C", "llm-spend": "C00LLMSPEND"})
    """Channel name → ID; posting to an unknown name creates the channel, as if it existed all along."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    edits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """ts → the message's content as chat.update last left it (`messages` keeps what was posted)."""
    posted: Counter[str | None] = field(default_factory=Counter)
    updated: Counter[str | None] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    """Requests per API method (`webhook` for webhook posts), failed ones included."""
    failures: list[int] = field(default_factory=list)  # status codes to answer next, in order
    retry_after: int = 1
    outage_until: float = 0.0
    outage_statuses: tuple[int, ...] = (500, 429)
    slow_posts: int = 0
    """How many of the next posts to accept and record, then answer only after `slow_s`."""
    slow_s: float = 0.0
    dropped_posts: int = 0
    """How many of the next posts to accept and record, then hang up on without an answer."""
    history_page: int = 100
    """Most messages conversations.history returns per page (Slack may return fewer than `limit`)."""
    requests: int = 0
    port: int = 0
    _late: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/T000/B000/XXXX"

    def outage(self, seconds: float, statuses: tuple[int, ...] = (500, 429)) -> None:
        """Answer every request with these statuses, in turn, for `seconds` from now."""
        self.outage_statuses, self.outage_until = statuses, time.monotonic() + seconds

    def marker_of(self, message: dict[str, Any]) -> str | None:
        meta = message.get("metadata") or {}
        return (meta.get("event_payload") or {}).get("id")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            return dict(request.query)
        if request.content_type == "application/json":
            return await request.json()
        form = await request.post()
        body = dict(form)
        for key in ("blocks", "attachments", "metadata"):
            if isinstance(body.get(key), str):
                body[key] = json.loads(body[key])
        return body

    def _failure(self, method: str) -> web.Response | None:
        self.requests += 1
        self.calls[method] += 1
        if self.failures:
            status = self.failures.pop(0)
        elif time.monotonic() < self.outage_until:
            status = self.outage_statuses[self.calls[method] % len(self.outage_statuses)]
        else:
            return None
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
        error = "ratelimited" if status == 429 else "internal_error"
        return web.json_response({"ok": False, "error": error}, status=status, headers=headers)

    def _channel(self, ref: str, names: bool) -> str | None:
        """The channel ID for `ref`; names (`#x` or `x`) only where Slack takes them (chat.postMessage)."""
        if ref in self.channels.values():
            return ref
        if not names or not ref:
            return None
        return self.channels.setdefault(ref.lstrip("#"), f"C{len(self.channels):08d}X")

    async def _answer_late(self, request: web.Request) -> None:
        """Misbehave after a post was accepted: answer after the client gave up, or hang up."""
        if self.dropped_posts > 0:
            self.dropped_posts -= 1
            assert request.transport is not None
            request.transport.close()
        elif self.slow_posts > 0:
            self.slow_posts -= 1
            self._late += 1
            try:
                await asyncio.sleep(self.slow_s)
            finally:
                self._late -= 1

    async def api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if (fail := self._failure(method)) is not None:
            return fail
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        body = await self._body(request)
        if method == "chat.postMessage":
            if (channel := self._channel(str(body.get("channel", "")), names=True)) is None:
                return web.json_response({"ok": False, "error": "channel_not_found"})
            ts = f"{int(time.time())}.{len(self.messages):06d}"
            message = {**body, "channel": channel, "ts": ts}
            self.messages.append(message)
            self.posted[self.marker_of(message)] += 1
            await self._answer_late(request)
            return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": message})
        if method == "chat.update":
            channel = self._channel(str(body.get("channel", "")), names=False)
            if channel is None:
                return web.json_response({"ok": False, "error": "channel_not_found"})
            found = [m for m in self.messages if m["ts"] == body.get("ts") and m["channel"] == channel]
            if not found:
                return web.json_response({"ok": False, "error": "message_not_found"})
            self.edits[body["ts"]] = {k: v for k, v in body.items() if k in ("text", "blocks", "metadata")}
            self.updates.append(body)
            self.updated[self.marker_of(body)] += 1
            return web.json_response({"ok": True, "channel": channel, "ts": body["ts"]})
        if method == "conversations.history":
            return self._history(body)
        if method == "conversations.list":
            channels = [{"id": cid, "name": name, "is_channel": True} for name, cid in self.channels.items()]
            return web.json_response({"ok": True, "channels": channels, "response_metadata": {"next_cursor": ""}})
        return web.json_response({"ok": False, "error": "unknown_method"})

    def _history(self, query: dict[str, Any]) -> web.Response:
        """Newest first, `oldest` exclusive, paged by an opaque cursor; metadata only when asked for."""
        channel = self._channel(str(query.get("channel", "")), names=False)
        if channel is None:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        oldest = float(query.get("oldest") or 0)
        msgs = [m for m in reversed(self.messages) if m["channel"] == channel and float(m["ts"]) > oldest]
        start = int(query.get("cursor") or 0)
        size = min(int(query.get("limit") or 100), self.history_page)
        page = [{**m, **self.edits.get(m["ts"], {})} for m in msgs[start:start + size]]
        with_meta = str(query.get("include_all_metadata", "")).lower() in ("1", "true")
        out = [{"type": "message", "ts": m["ts"], "text": m.get("text", ""),
                **({"metadata": m["metadata"]} if with_meta and "metadata" in m else {})} for m in page]
        more = start + size < len(msgs)
        return web.json_response({"ok": True, "messages": out, "has_more": more,
                                  "response_metadata": {"next_cursor": str(start + size) if more else ""}})

    async def webhook(self, request: web.Request) -> web.Response:
        if (fail := self._failure("webhook")) is not None:
            return web.Response(status=fail.status, text="rate_limited", headers=fail.headers)
        message = await request.json()
        self.messages.append(message)
        self.posted[self.marker_of(message)] += 1
        await self._answer_late(request)
        return web.Response(text="ok")

    def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self.api)
        app.router.add_post("/webhook/{path:.*}", self.webhook)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._runner = web.AppRunner(app, shutdown_timeout=1.0)
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
        deadline = time.monotonic() + self.slow_s + 1
        while self._late and time.monotonic() < deadline:  # let late answers finish: a clean shutdown
            time.sleep(0.05)

        async def cleanup() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
