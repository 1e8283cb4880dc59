"""Where alerts go: the console, Slack. Each sink says whether a failure is worth retrying."""

from __future__ import annotations

from typing import Protocol

from schemas.alerts import Alert


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
