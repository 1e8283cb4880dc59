"""A generic JSON webhook: each alert, or each routed digest, POSTed as spendwatch's own JSON.

The body is `Alert` JSON (has `alert_id`) or `Notification` JSON (has
`notification_id`, `firing`, `new`, `resolved`, `update_of`), so a receiver
can deduplicate on those ids: delivery is at least once.
"""

from __future__ import annotations

import aiohttp
from pydantic import SecretStr

from schemas.alerts import Alert
from streams.routing import Notification
from streams.secrets import secret
from streams.sinks import DeliveryError


class HttpJsonSink:
    """What JSON-over-HTTP sinks share: one lazily opened aiohttp session (it must be made inside the
    running loop) and which answers are worth retrying: 429, 5xx and no answer at all."""

    name: str

    def __init__(self, timeout_s: float = 10.0, headers: dict[str, str] | None = None):
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, url: str, body: bytes) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            async with self._session.post(url, data=body) as resp:
                answer = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise DeliveryError(f"{self.name} unreachable: {err!r}", retryable=True) from None
        if resp.status == 429 or resp.status >= 500:
            raise DeliveryError(f"{self.name} answered {resp.status}", retryable=True)
        if resp.status >= 400:
            raise DeliveryError(f"{self.name} answered {resp.status}: {answer[:300]!r}", retryable=False)
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class WebhookSink(HttpJsonSink):
    """POSTs to one URL; give each webhook its own `name`, which keys its entries in the ledger."""

    def __init__(self, url: str | SecretStr, *, name: str = "webhook", headers: dict[str, str] | None = None,
                 timeout_s: float = 10.0):
        super().__init__(timeout_s, headers)
        self.url = secret(url)
        """A SecretStr: a webhook URL often carries its credential (a token in the path or query)."""
        self.name = name

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r})"

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        await self._post(self._target(), alert.model_dump_json().encode())
        return None

    async def send_digest(self, notification: Notification, previous: str | None) -> str | None:
        await self._post(self._target(), notification.model_dump_json().encode())
        return None

    def _target(self) -> str:
        assert self.url is not None
        return self.url.get_secret_value()
