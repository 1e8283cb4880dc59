"""The dashboard's HTTP face (aiohttp): the JSON API under /api/v1, the live page, /metrics.

Read-only: every route is a GET. Bound to 127.0.0.1 unless told otherwise; on any other address a
bearer token is required (the CLI refuses to start without one). The page gets the token once
through `/?token=...`, which sets an HttpOnly cookie, so it never sits in the page's scripts.
Query parameters are checked: a bad one is a 400 whose body says which and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.dashboard.feed import Feed, FeedTopics
from streams.dashboard.metrics import registry
from streams.dashboard.model import SORTS, ReadModel
from streams.kafka_security import KafkaSecurity

COOKIE = "spendwatch_token"
STATIC = resources.files("streams.dashboard") / "static"
MAX_LIMIT = 1000
INSIGHT_KINDS = ("right_sizing", "caching", "context_bloat", "token_waste")
OPEN_PATHS = {"/healthz"}
MODEL_KEY = web.AppKey("model", ReadModel)
READY_KEY = web.AppKey("ready", object)


class BadQuery(web.HTTPBadRequest):
    def __init__(self, reason: str):
        super().__init__(text=orjson.dumps({"error": reason}).decode(), content_type="application/json")


def json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def choice(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in allowed:
        raise BadQuery(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def integer(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer from {lo} to {hi}, not {raw!r}") from None
    if not lo <= value <= hi:
        raise BadQuery(f"{name} must be from {lo} to {hi}, not {value}")
    return value


def text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and not 0 < len(value) <= 256:
        raise BadQuery(f"{name} must be 1 to 256 characters")
    return value


KNOWN = {
    "/api/v1/summary": set(), "/api/v1/series": {"minutes"}, "/api/v1/teams": set(), "/api/v1/kills": set(),
    "/api/v1/workflows": {"sort", "limit", "offset", "team"}, "/api/v1/alerts": {"status", "kind", "workflow", "limit"},
    "/api/v1/outcomes": {"period", "workflow"}, "/api/v1/movers": {"limit"},
    "/api/v1/insights": {"workflow", "kind", "limit"},
}


class RateLimit:
    """A token bucket per client address, on an injected clock (`allow(key, now)`).

    >>> r = RateLimit(1.0, burst=2.0)
    >>> [r.allow("a", 0.0), r.allow("a", 0.0), r.allow("a", 0.0), r.allow("b", 0.0), r.allow("a", 1.0)]
    [True, True, False, True, True]
    """

    MAX_CLIENTS = 10_000

    def __init__(self, rate_per_s: float, burst: float):
        self.rate, self.burst = rate_per_s, burst
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def allow(self, key: str, now: float) -> bool:
        tokens, at = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self.buckets) >= self.MAX_CLIENTS and key not in self.buckets:
            self.buckets.clear()  # a flood of addresses: start over rather than grow
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True


def make_app(model: ReadModel, token: str | None = None, ready: Callable[[], bool] = lambda: True,
             cache_s: float = 1.0, rate_per_s: float = 20.0) -> web.Application:
    """The aiohttp application over `model`; `token` (if any) is required on every route but /healthz.

    An API answer is reused for `cache_s` seconds: with 10k workflows a summary costs ~0.2 s of CPU,
    and every open page asks every 2 s, so the cost stays one computation per second however many
    people watch. Each client address may make `rate_per_s` requests a second (bursts of three
    seconds' worth); beyond, 429 with Retry-After (an open page makes about 3 a second)."""
    cache: dict[str, tuple[float, bytes]] = {}
    limiter = RateLimit(rate_per_s, burst=max(rate_per_s * 3, 1.0))

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if not limiter.allow(request.remote or "?", asyncio.get_running_loop().time()):
            raise web.HTTPTooManyRequests(text='{"error": "too many requests from this address; slow down"}',
                                          content_type="application/json", headers={"Retry-After": "1"})
        if token is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get(COOKIE, "")
            if request.path == "/" and "token" in request.query:
                if hmac.compare_digest(request.query["token"].encode(), token.encode()):
                    found = web.HTTPFound("/")
                    found.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
                    raise found
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(text='{"error": "a bearer token is required (Authorization: Bearer '
                                                '$SPENDWATCH_DASHBOARD_TOKEN, or open /?token=...)"}',
                                           content_type="application/json")
        known = KNOWN.get(request.path)
        if known is not None and (extra := sorted(set(request.query) - known)):
            raise BadQuery(f"unknown query parameter {', '.join(extra)}; this route takes "
                           f"{', '.join(sorted(known)) or 'none'}")
        api = request.path.startswith("/api/")
        now = asyncio.get_running_loop().time()
        hit = cache.get(request.path_qs) if api else None
        if hit is not None and now - hit[0] < cache_s:
            response: web.StreamResponse = web.Response(body=hit[1], content_type="application/json",
                                                        headers={"Cache-Control": "no-store"})
        else:
            response = await handler(request)
            body = response.body if isinstance(response, web.Response) else None
            if api and isinstance(body, bytes) and response.status == 200 and cache_s > 0:
                if len(cache) >= 1000:
                    cache.clear()
                cache[request.path_qs] = (now, body)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        return response

    app = web.Application(middlewares=[guard], client_max_size=4096)
    app[MODEL_KEY] = model
    metrics = registry(model)

    async def summary(request: web.Request) -> web.Response:
        return json({**model.summary(), "movers": model.movers(5)})

    async def series(request: web.Request) -> web.Response:
        return json(model.series(integer(request, "minutes", 60, 5, 1440)))

    async def workflows(request: web.Request) -> web.Response:
        return json(model.workflow_rows(sort=choice(request, "sort", SORTS, "today"),
                                        limit=integer(request, "limit", 100, 1, MAX_LIMIT),
                                        offset=integer(request, "offset", 0, 0, 10**9), team=text(request, "team")))

    async def workflow(request: web.Request) -> web.Response:
        found = model.workflow(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=orjson.dumps({"error": f"no workflow {request.match_info['name']!r} "
                                                               "(names are case-sensitive)"}).decode(),
                                   content_type="application/json")
        return json(found)

    async def teams(request: web.Request) -> web.Response:
        return json({"teams": model.team_rows()})

    async def alerts(request: web.Request) -> web.Response:
        status = choice(request, "status", ("open", "all"), "open")
        return json({"alerts": model.alert_rows(status, kind=text(request, "kind"), workflow=text(request, "workflow"),  # type: ignore[arg-type]  # checked by choice
                                                limit=integer(request, "limit", 100, 1, MAX_LIMIT))})

    async def kills(request: web.Request) -> web.Response:
        return json({"kills": model.kill_rows()})

    async def outcomes(request: web.Request) -> web.Response:
        return json({"outcomes": model.outcome_rows(choice(request, "period", ("day", "month"), "day"),
                                                    workflow=text(request, "workflow"))})

    async def insights(request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        if kind is not None and kind not in INSIGHT_KINDS:
            raise BadQuery(f"kind must be one of {', '.join(INSIGHT_KINDS)}, not {kind!r}")
        return json({"insights": model.insights(workflow=text(request, "workflow"), kind=kind,
                                                limit=integer(request, "limit", 100, 1, MAX_LIMIT))})

    async def movers(request: web.Request) -> web.Response:
        return json({"movers": model.movers(integer(request, "limit", 10, 1, 100))})

    async def healthz(request: web.Request) -> web.Response:
        return json({"ready": ready(), "workflows": len(model.workflows)})

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(request: web.Request) -> web.Response:
        return static_file("index.html")

    async def asset(request: web.Request) -> web.Response:
        return static_file(request.match_info["file"])

    app.router.add_get("/", page)
    app.router.add_get("/workflow/{name}", page)
    app.router.add_get("/static/{file}", asset)
    for path, handler in (("summary", summary), ("series", series), ("workflows", workflows), ("teams", teams),
                          ("alerts", alerts), ("kills", kills), ("outcomes", outcomes), ("movers", movers),
                          ("insights", insights)):
        app.router.add_get(f"/api/v1/{path}", handler)
    app.router.add_get("/api/v1/workflows/{name}", workflow)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus)
    return app


TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain",
         ".svg": "image/svg+xml"}


def static_file(name: str) -> web.Response:
    """A file of the package's static folder (no CDN: the page works with no internet)."""
    kind = next((t for ext, t in TYPES.items() if name.endswith(ext)), None)
    path = STATIC / name
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=kind, headers={"Cache-Control": "no-cache"})


class Dashboard:
    """Feed + read model + HTTP site, started and stopped together (the CLI and the demo use it)."""

    def __init__(self, bootstrap: str, topics: FeedTopics, bind: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, security: KafkaSecurity | None = None):
        self.model = ReadModel()
        self.feed = Feed(self.model, bootstrap, topics, security=security)
        self.bind, self.port, self.token = bind, port, token
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/"

    async def start(self) -> str:
        """Start serving (port 0: a free one); returns the page's URL. An address in use raises OSError."""
        self._task = asyncio.ensure_future(self.feed.run())
        app = make_app(self.model, self.token, ready=self.feed.caught_up.is_set)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._runner is not None:
            await self._runner.cleanup()
