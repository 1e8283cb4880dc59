"""Delivers alerts and routed digests to sinks at least once, without duplicates: a ledger records each send.

Slack has no idempotency key, so the ledger (`sink:alert_id:status` or
`sink:notification_id` → message ts) is checked before every post; a send that
failed for a retryable reason is tried again with backoff until it lands,
delaying alerts but never dropping them. The ledger also tells a sink which of
its messages a digest rewrites (`update_of`).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from collections.abc import Awaitable, Callable, MutableMapping, Sequence

from schemas.alerts import Alert
from streams.routing import Notification
from streams.sinks import DeliveryError, DigestSink, Sink

log = logging.getLogger("spendwatch.notifier")

FAILED = "failed: "
"""Ledger value prefix of a send a sink refused for good (so it is neither retried nor updated)."""


class Notifier:
    def __init__(self, sinks: Sequence[Sink], ledger: MutableMapping[str, str], max_backoff: float = 60.0):
        self.sinks = list(sinks)
        self.ledger = ledger
        self.max_backoff = max_backoff
        self.delivered = 0
        self.failed = 0

    async def deliver(self, alert: Alert) -> None:
        for sink in self.sinks:
            await self._alert_once(sink, alert)

    async def deliver_digest(self, notification: Notification) -> None:
        """One message per digest-aware sink; other sinks get the digest's new and resolved alerts."""
        for sink in self.sinks:
            if not isinstance(sink, DigestSink):
                for alert in notification.new + notification.resolved:
                    await self._alert_once(sink, alert)
                continue
            previous = self._ref(f"{sink.name}:{notification.update_of}") if notification.update_of else None
            await self._once(sink, notification.notification_id, partial(sink.send_digest, notification, previous))

    def _ref(self, key: str) -> str | None:
        ref = self.ledger[key] if key in self.ledger else None
        return None if ref is None or ref.startswith(FAILED) else ref

    async def _alert_once(self, sink: Sink, alert: Alert) -> None:
        await self._once(sink, f"{alert.alert_id}:{alert.status}", partial(sink.send, alert, None))

    async def _once(self, sink: Sink, what: str, send: Callable[[], Awaitable[str | None]]) -> None:
        key = f"{sink.name}:{what}"
        if key not in self.ledger:
            self.ledger[key] = await self._send(sink.name, what, send)

    async def _send(self, sink: str, what: str, send: Callable[[], Awaitable[str | None]]) -> str:
        backoff = min(1.0, self.max_backoff)
        while True:
            try:
                ref = await send()
                self.delivered += 1
                return ref or "sent"
            except DeliveryError as err:
                if not err.retryable:
                    self.failed += 1
                    log.error("%s rejected %s for good: %s (check the sink's credentials and channel)",
                              sink, what, err)
                    return f"{FAILED}{err}"
                log.warning("%s could not take %s (%s); retrying in %.1fs", sink, what, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
