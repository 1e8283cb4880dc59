"""Alertmanager-style digests per alerts partition: routers kept in a table, sent on a timer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from schemas.alerts import Alert
from streams.clock import EventClock
from streams.notifier import Notifier
from streams.routing import Router, RoutingConfig


class RouteStore(Protocol):
    """Where each alerts partition's router state lives (a Faust table in the worker)."""

    def load_routes(self, partition: int) -> bytes | None: ...

    def save_routes(self, partition: int, doc: dict[str, Any]) -> None: ...

    def enter(self, partition: int) -> None:
        """Make `partition` the one table writes (the notifier's ledger entries) go to."""
        ...


class DigestScheduler:
    """One `Router` per alerts partition this worker owns, loaded from the store on first use.

    The notify agent `add`s each alert; a timer calls `flush`, which sends what is due and
    confirms it (one flush at a time: the ledger then blocks duplicates). After a rebalance,
    `resume` reloads the owned partitions' routers, since their pending digests, reminders and
    resolutions are due whether or not another alert arrives there.
    """

    def __init__(self, notifier: Notifier, config: RoutingConfig, store: RouteStore, clock: EventClock):
        self.notifier = notifier
        self.config = config
        self.store = store
        self.clock = clock
        self.routers: dict[int, Router] = {}
        self._flushing = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.notifier.sinks)

    def router(self, partition: int) -> Router:
        if partition not in self.routers:
            raw = self.store.load_routes(partition)
            self.routers[partition] = Router.load(orjson.loads(raw), self.config) if raw else Router(self.config)
        return self.routers[partition]

    def add(self, partition: int, alert: Alert) -> None:
        router = self.router(partition)
        router.add(alert, self.clock.now() or alert.ts)
        self.store.save_routes(partition, router.dump())

    async def flush(self) -> None:
        if not self.enabled or not self.clock.watermark:
            return
        async with self._flushing:
            for partition, router in list(self.routers.items()):
                due = router.due(self.clock.now())
                for notification in due:
                    self.store.enter(partition)
                    await self.notifier.deliver_digest(notification)
                    router.sent(notification)
                if due:
                    self.store.save_routes(partition, router.dump())

    def resume(self, partitions: Iterable[int]) -> None:
        """Event time resumes from the newest alert the routers hold, so a restart with no
        traffic still moves their clock on."""
        if self.enabled:
            for partition in partitions:
                self.clock.advance(self.router(partition).last_seen())

    def clear(self) -> None:
        self.routers.clear()
