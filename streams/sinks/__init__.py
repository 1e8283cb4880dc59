"""Where alerts go: the console, Slack, webhooks, PagerDuty. Each sink says whether a failure is worth retrying."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from schemas.alerts import Alert
from streams.routing import Notification
from streams.secrets import redact


class DeliveryError(Exception):
    """A sink failed; `retryable` says whether trying again later may succeed, `uncertain` that the
    request may have taken effect anyway (the answer was lost, or Slack says part of it may have)."""

    def __init__(self, message: str, retryable: bool, uncertain: bool = False):
        super().__init__(redact(message))  # an HTTP error can carry a webhook URL or a key
        self.retryable = retryable
        self.uncertain = uncertain


def marker(item: Alert | Notification) -> str:
    """The stable id of one delivery: the notifier's ledger key (after the sink name) and the tag a
    sink puts on its message so that it can find it again when the answer to a post was lost. An alert
    revised in place (`revision`) is a delivery of its own: the sink is told again, under the same id."""
    if isinstance(item, Notification):
        return item.notification_id
    return f"{item.alert_id}:{item.status}" + (f":r{item.revision}" if item.revision else "")


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


@runtime_checkable
class ReconcilingSink(Sink, Protocol):
    """A sink whose posts have no idempotency key (Slack): a post whose answer was lost must not be
    sent again blindly. The notifier records each attempt first and, if its outcome is unknown, asks
    the sink to look for the message before posting again."""

    async def find(self, marker: str, since: float) -> str | None:
        """The ref (e.g. ts) of this sink's message tagged `marker`, posted no earlier than `since`
        (epoch seconds, our clock); None when it is certainly not there. Raises DeliveryError when it
        cannot tell: retryable if asking again later may answer, else never (then the notifier
        gives up rather than risk a second copy)."""
        ...
