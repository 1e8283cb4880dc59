"""Slack through slack-sdk: a bot token + channel (chat.postMessage / chat.update) or a webhook.

Slack has no idempotency key, so a post is never repeated blindly. slack-sdk's
async retry handlers (the event loop never sleeps in a thread) retry a post
only where Slack certainly did not take it: 429 and a connection that never
opened. A timeout, a dropped connection or a 5xx ("it's possible some aspect
of the operation succeeded", Slack says of internal_error) raise an
`uncertain` DeliveryError instead, and the notifier asks `find` whether the
message landed before it posts again. Every message carries its marker in
Slack message metadata for that search. chat.update and the lookups are
idempotent and keep all the handlers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from schemas.alerts import Alert
from streams.routing import Notification
from streams.secrets import secret
from streams.sinks import DeliveryError, marker
from streams.sinks.text import SEVERITY_EMOJI, digest_title, evidence_lines, title, who

RETRYABLE_API_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
EVENT_TYPE = "spendwatch_notification"
"""Metadata event type of our messages; `event_payload.id` is the delivery's marker."""
CLOCK_SKEW_S = 600.0
"""How far before our clock's time of the first attempt `find` searches: Slack's clock is not ours."""
CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")


def _post_handlers(retries: int) -> list[AsyncRetryHandler]:
    """Retries slack-sdk may make of a post on its own: only where nothing reached Slack. Its
    connection-error handler's defaults (ServerDisconnectedError, ClientOSError) would re-post a
    message whose answer was lost, so it gets ClientConnectorError (connect failed) alone."""
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=retries, error_types=[aiohttp.ClientConnectorError]),
        AsyncRateLimitErrorRetryHandler(max_retry_count=retries),
    ]


def _handlers(retries: int) -> list[AsyncRetryHandler]:
    """Retries of idempotent calls (chat.update, conversations.*): any connection error, 429 and 5xx."""
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=retries),
        AsyncRateLimitErrorRetryHandler(max_retry_count=retries),
        AsyncServerErrorRetryHandler(max_retry_count=retries),
    ]


def blocks(alert: Alert) -> list[dict[str, Any]]:
    """A Block Kit message: what burns, who, how much and how fast, since when, what was done."""
    return [_header(title(alert)), *_alert_blocks(alert)]


DIGEST_DETAIL = 8
"""Alerts a digest shows in full: at most 5 blocks each, and Slack takes 50 blocks per message."""


INSIGHTS_SHOWN = 5
"""Workflows the weekly savings digest shows (their opportunities, biggest dollars first)."""


def digest_blocks(n: Notification) -> list[dict[str, Any]]:
    """A group's digest: new alerts first, then those still firing, then resolved ones, each in full."""
    new = {a.alert_id for a in n.new}
    alerts = n.new + [a for a in n.firing if a.alert_id not in new] + n.resolved
    if alerts and all(a.kind == "insights" for a in alerts):  # the weekly digest: the biggest dollars first
        alerts = sorted(alerts, key=lambda a: -float(a.evidence.get("usd_per_day") or 0))[:INSIGHTS_SHOWN]
    out = [_header(digest_title(n))]
    for alert in alerts[:DIGEST_DETAIL]:
        out += _alert_blocks(alert, new=alert.alert_id in new)
    if len(alerts) > DIGEST_DETAIL:
        out.append(_context(f"…and {len(alerts) - DIGEST_DETAIL} more in `{n.group_key}`"))
    return out


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _alert_blocks(alert: Alert, new: bool = False) -> list[dict[str, Any]]:
    """One alert without a header: summary, who and evidence, action and undo, when it fired."""
    emoji = ":white_check_mark:" if alert.status == "resolved" else SEVERITY_EMOJI[alert.severity]
    when = datetime.fromtimestamp(alert.ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n`{v}`"} for k, v in who(alert)]
    fields += [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in evidence_lines(alert)]
    out: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {'*New* ' if new else ''}{alert.summary}"}},
    ]
    for i in range(0, len(fields), 10):  # Slack allows 10 fields per section
        out.append({"type": "section", "fields": fields[i:i + 10]})
    action = f"*Action:* {alert.action}"
    if alert.undo:
        action += f"\n*Undo:* `{alert.undo}`"
    out.append({"type": "section", "text": {"type": "mrkdwn", "text": action}})
    out.append(_context(f"fired at {when} (event time) · `{alert.alert_id}` · spendwatch"))
    return out


class SlackSink:
    """Posts new alerts and digests, updates the earlier message when asked to, and finds a message
    whose post went unanswered (`find`, for the notifier's ledger)."""

    name = "slack"

    def __init__(self, *, token: str | SecretStr | None = None, channel: str | None = None,
                 webhook_url: str | SecretStr | None = None, base_url: str | None = None, retries: int = 3,
                 timeout_s: float = 30.0):
        # SecretStr, and registered so that no error or log line (slack-sdk's debug lines name the
        # webhook URL) carries them; slack-sdk itself needs the plain values
        token = _reveal(secret(token))
        webhook_url = _reveal(secret(webhook_url))
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None
        self._posts: AsyncWebClient | None = None
        # slack-sdk annotates timeouts as int; aiohttp takes any number of seconds
        timeout: Any = timeout_s
        if webhook_url:
            # 5xx is retried: a webhook cannot be searched, and an answered error most likely posted nothing
            handlers = [*_post_handlers(retries), AsyncServerErrorRetryHandler(max_retry_count=retries)]
            self._webhook = AsyncWebhookClient(webhook_url, timeout=timeout, retry_handlers=handlers)
        elif token and channel:
            kwargs: dict[str, Any] = {"base_url": base_url} if base_url else {}
            self._web = AsyncWebClient(token=token, timeout=timeout, retry_handlers=_handlers(retries), **kwargs)
            self._posts = AsyncWebClient(token=token, timeout=timeout, retry_handlers=_post_handlers(retries),
                                         **kwargs)
        else:
            raise ValueError("Slack needs a bot token and a channel, or an incoming-webhook URL")
        self.channel = channel
        self._channel_id = channel if channel and CHANNEL_ID.fullmatch(channel) else None

    def __repr__(self) -> str:
        return f"SlackSink(channel={self.channel!r}, webhook={self._webhook is not None})"

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        payload = {"text": f"{title(alert)}: {alert.summary}", "blocks": blocks(alert)}
        return await self._deliver(payload, marker(alert), previous)

    async def send_digest(self, notification: Notification, previous: str | None) -> str | None:
        """Post the digest, or rewrite the group's message (`previous`, a ts) when the router says so."""
        payload = {"text": digest_title(notification), "blocks": digest_blocks(notification)}
        return await self._deliver(payload, marker(notification), previous)

    async def find(self, marker: str, since: float) -> str | None:
        """The ts of our message tagged `marker` (its metadata), searching the channel's history back to
        `since` less CLOCK_SKEW_S. Needs the channels:history (or groups:history) scope.

        An incoming webhook has no history to search: the post whose answer was lost is not sent
        again (at most once), and the notifier logs that it may be missing."""
        if self._web is None:
            raise DeliveryError("an incoming webhook cannot be searched, so whether the post landed is unknown",
                                retryable=False)
        channel, cursor = await self._channel(), ""
        while True:
            page = await self._call(self._web.conversations_history(
                channel=channel, oldest=f"{since - CLOCK_SKEW_S:.6f}", limit=200, include_all_metadata=True,
                cursor=cursor or None))
            for message in page.get("messages") or []:
                meta = message.get("metadata") or {}
                if meta.get("event_type") == EVENT_TYPE and (meta.get("event_payload") or {}).get("id") == marker:
                    return str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or ""
            if not page.get("has_more") or not cursor:
                return None

    async def _deliver(self, payload: dict[str, Any], tag: str, previous: str | None) -> str:
        if self._webhook is not None:
            return await self._hook(payload, previous)
        assert self._web is not None and self._posts is not None and self.channel is not None
        payload["metadata"] = {"event_type": EVENT_TYPE, "event_payload": {"id": tag}}
        if previous and previous != "webhook":
            channel = await self._channel()
            return str((await self._call(self._web.chat_update(channel=channel, ts=previous, **payload)))["ts"])
        resp = await self._call(self._posts.chat_postMessage(channel=self._channel_id or self.channel, **payload),
                                post=True)
        self._channel_id = str(resp["channel"])
        return str(resp["ts"])

    async def _channel(self) -> str:
        """The channel's ID, which chat.update and conversations.history require (they take no names):
        learnt from a post's answer, or looked up once by name (needs channels:read / groups:read)."""
        assert self._web is not None and self.channel is not None
        name, cursor = self.channel.lstrip("#"), ""
        while self._channel_id is None:
            page = await self._call(self._web.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000, cursor=cursor or None))
            self._channel_id = next((str(c["id"]) for c in page.get("channels") or [] if c.get("name") == name), None)
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or ""
            if self._channel_id is None and not cursor:
                raise DeliveryError(f"Slack has no channel named {self.channel}; configure its ID (C…) instead",
                                    retryable=False)
        return self._channel_id

    async def _call(self, call: Awaitable[AsyncSlackResponse], post: bool = False) -> AsyncSlackResponse:
        """Slack's answer, or a DeliveryError saying whether to retry and whether a post may have landed."""
        try:
            return await call
        except SlackApiError as err:
            code = err.response.get("error", "") if err.response is not None else ""
            status = err.response.status_code if err.response is not None else 0
            if status == 429 or code == "ratelimited":  # rejected before anything was done
                raise DeliveryError(f"Slack API error {code or status}", retryable=True) from None
            retryable = code in RETRYABLE_API_ERRORS or status >= 500
            raise DeliveryError(f"Slack API error {code or status}", retryable=retryable,
                                uncertain=post and retryable) from None
        except aiohttp.ClientConnectorError as err:  # no connection: nothing was sent
            raise DeliveryError(f"Slack unreachable: {err!r}", retryable=True) from None
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as err:  # sent; the answer was lost
            raise DeliveryError(f"no answer from Slack: {err!r}", retryable=True, uncertain=post) from None

    async def _hook(self, payload: dict[str, Any], previous: str | None) -> str:
        """An incoming-webhook post; webhooks cannot edit, so an update is a new message."""
        assert self._webhook is not None
        try:
            resp = await self._webhook.send(**payload)
        except aiohttp.ClientConnectorError as err:
            raise DeliveryError(f"Slack unreachable: {err!r}", retryable=True) from None
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as err:
            raise DeliveryError(f"no answer from the Slack webhook: {err!r}", retryable=True, uncertain=True) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise DeliveryError(f"webhook answered {resp.status_code}", retryable=True)
        if resp.status_code != 200:
            raise DeliveryError(f"webhook answered {resp.status_code}: {resp.body}", retryable=False)
        return previous or "webhook"

    async def close(self) -> None:
        return None


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
