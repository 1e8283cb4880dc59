"""Delivers alerts to sinks at least once, without duplicates: a ledger records each send.

Slack has no idempotency key, so the ledger (`sink:alert_id` → message ts) is
checked before every post; a send that failed for a retryable reason is tried
again with backoff until it lands, delaying alerts but never dropping them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping, Sequence

from schemas.alerts import Alert
from streams.sinks import DeliveryError, Sink

log = logging.getLogger("spendwatch.notifier")


class Notifier:
    def __init__(self, sinks: Sequence[Sink], ledger: MutableMapping[str, str], max_backoff: float = 60.0):
        self.sinks = list(sinks)
        self.ledger = ledger
        self.max_backoff = max_backoff
        self.delivered = 0
        self.failed = 0

    async def deliver(self, alert: Alert) -> None:
        for sink in self.sinks:
            key = f"{sink.name}:{alert.alert_id}:{alert.status}"
            if key in self.ledger:
                continue
            self.ledger[key] = await self._send(sink, alert)

    async def _send(self, sink: Sink, alert: Alert) -> str:
        backoff = 1.0
        while True:
            try:
                ref = await sink.send(alert, None)
                self.delivered += 1
                return ref or "sent"
            except DeliveryError as err:
                if not err.retryable:
                    self.failed += 1
                    log.error("%s rejected alert %s for good: %s (check the sink's credentials and channel)",
                              sink.name, alert.alert_id, err)
                    return f"failed: {err}"
                log.warning("%s could not take alert %s (%s); retrying in %.0fs", sink.name, alert.alert_id,
                            err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
