"""Delivers alerts and routed digests to sinks at least once, without duplicates: a ledger records each send.

Slack has no idempotency key, so the ledger (`sink:alert_id:status` or
`sink:notification_id` → message ts) is checked before every post; a send that
failed for a retryable reason is tried again with backoff until it lands,
delaying alerts but never dropping them. The ledger also tells a sink which of
its messages a digest rewrites (`update_of`).

A post to a ReconcilingSink (Slack) may land although its answer never comes
(a timeout, a dropped connection, a 5xx). So the attempt is written to the
ledger before it is made (`pending:<first attempt time>:<marker>`); when an
attempt's outcome is unknown, in this process or in one that died mid-post,
the sink is asked to find the message by its marker first: found, its ts is
recorded and the message is updated (chat.update is idempotent); certainly
absent, it is posted again. A sink that cannot search (a Slack webhook) is
not posted to again: at most once, with an error in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial

from schemas.alerts import Alert
from streams.routing import Notification
from streams.sinks import DeliveryError, DigestSink, ReconcilingSink, Sink, marker

log = logging.getLogger("spendwatch.notifier")

FAILED = "failed: "
"""Ledger value prefix of a send a sink refused for good (so it is neither retried nor updated)."""
PENDING = "pending:"
"""Ledger value prefix of a post that was attempted and whose outcome is not known yet."""
UNCONFIRMED = "unconfirmed: "
"""Ledger value prefix of a post that may have landed but cannot be checked: not sent again."""

Send = Callable[[str | None], Awaitable[str | None]]
"""A delivery to one sink: given the ref of the message to update (None: post), returns the new ref."""


class Notifier:
    def __init__(self, sinks: Sequence[Sink], ledger: MutableMapping[str, str], max_backoff: float = 60.0,
                 persist: Callable[[], Awaitable[None]] | None = None):
        """`persist`, when given, is awaited after a pending entry is written and before the post, so
        that the entry is durable first (for a Faust table: flush the changelog producer)."""
        self.sinks = list(sinks)
        self.ledger = ledger
        self.max_backoff = max_backoff
        self.persist = persist
        self.delivered = 0
        self.failed = 0

    async def deliver(self, alert: Alert) -> None:
        for sink in self.sinks:
            await self._alert_once(sink, alert)

    async def deliver_digest(self, notification: Notification) -> None:
        """One message per digest-aware sink; other sinks get the digest's new, updated and resolved alerts."""
        for sink in self.sinks:
            if not isinstance(sink, DigestSink):
                for alert in notification.new + notification.updated + notification.resolved:
                    await self._alert_once(sink, alert)
                continue
            previous = self._ref(f"{sink.name}:{notification.update_of}") if notification.update_of else None
            await self._once(sink, marker(notification), partial(sink.send_digest, notification), previous)

    def _ref(self, key: str) -> str | None:
        """The message a sink may update; a pending one (its ts was lost with a crash) is posted anew."""
        ref = self.ledger[key] if key in self.ledger else None
        return None if ref is None or ref.startswith((FAILED, PENDING, UNCONFIRMED)) else ref

    async def _alert_once(self, sink: Sink, alert: Alert) -> None:
        await self._once(sink, marker(alert), partial(sink.send, alert), None)

    async def _once(self, sink: Sink, what: str, send: Send, previous: str | None) -> None:
        key = f"{sink.name}:{what}"
        entry = self.ledger[key] if key in self.ledger else None
        if entry is None or entry.startswith(PENDING):
            self.ledger[key] = await self._send(sink, key, what, send, previous, _since(entry))

    async def _send(self, sink: Sink, key: str, what: str, send: Send, previous: str | None,
                    doubt: float | None) -> str:
        """Send until it lands. `doubt` is the time of the first attempt whose outcome is unknown."""
        careful = isinstance(sink, ReconcilingSink) and previous is None  # a post, and posts are not idempotent
        backoff = min(1.0, self.max_backoff)
        while True:
            started = time.time()
            try:
                if careful and previous is None and doubt is not None:
                    previous = await self._find(sink, what, doubt)
                    if previous is not None:
                        self.ledger[key] = previous  # found: from now on only updates, which may repeat
                if careful and previous is None:
                    self.ledger[key] = f"{PENDING}{started if doubt is None else doubt:.3f}:{what}"
                    if self.persist is not None:
                        await self.persist()
                ref = await send(previous)
                self.delivered += 1
                return ref or previous or "sent"
            except _Unverifiable as err:
                self.failed += 1
                log.error("%s may or may not have shown %s (its answer was lost) and cannot check: %s; "
                          "not sending it again, so it is delivered at most once", sink.name, what, err)
                return f"{UNCONFIRMED}{err}"
            except DeliveryError as err:
                if not err.retryable:
                    self.failed += 1
                    log.error("%s rejected %s for good: %s (check the sink's credentials and channel)",
                              sink.name, what, err)
                    return f"{FAILED}{err}"
                if careful and previous is None:
                    if err.uncertain:
                        doubt = started if doubt is None else doubt
                    elif doubt is None:
                        del self.ledger[key]  # Slack said no, and no earlier attempt is in doubt
                log.warning("%s could not take %s (%s); %s in %.1fs", sink.name, what, err,
                            "checking whether it landed" if careful and doubt is not None else "retrying", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    @staticmethod
    async def _find(sink: Sink, what: str, since: float) -> str | None:
        assert isinstance(sink, ReconcilingSink)
        try:
            found = await sink.find(what, since)
        except DeliveryError as err:
            if err.retryable:
                raise
            raise _Unverifiable(str(err)) from None
        log.info("%s: %s %s", sink.name, what, f"had landed as {found}; updating it" if found else
                 "had not landed; posting it")
        return found


class _Unverifiable(Exception):
    """A sink cannot tell whether an unanswered post landed (and never will)."""


def _since(entry: str | None) -> float | None:
    """When the first attempt of a pending entry was made (None if there is no pending entry)."""
    if entry is None or not entry.startswith(PENDING):
        return None
    try:
        return float(entry[len(PENDING):].split(":", 1)[0])
    except ValueError:
        return 0.0  # an unreadable time: search all of the channel's history
