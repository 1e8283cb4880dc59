"""Where alerts go: the console, Slack, webhooks, PagerDuty. Each sink says whether a failure is worth retrying."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from schemas.alerts import Alert
from streams.routing import Notification


class DeliveryError(Exception):
    """A sink failed; `retryable` says whether trying again later may succeed."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class Sink(Protocol):
    name: str

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        """Deliver `alert`; `previous` is what an earlier send returned (e.g. a Slack ts) for an update."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class DigestSink(Sink, Protocol):
    """A sink that can say a routed group's digest in one message (others get its alerts one by one)."""

    async def send_digest(self, notification: Notification, previous: str | None) -> str | None:
        """Deliver `notification`; `previous` is what this sink returned for `notification.update_of`."""
        ...
