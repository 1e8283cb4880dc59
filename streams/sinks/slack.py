"""Slack through slack-sdk: a bot token + channel (chat.postMessage / chat.update) or a webhook.

Retries on 429 (honouring Retry-After), 5xx and connection errors use
slack-sdk's async retry handlers, so the event loop never sleeps in a thread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from schemas.alerts import Alert
from streams.routing import Notification
from streams.sinks import DeliveryError
from streams.sinks.text import SEVERITY_EMOJI, digest_title, evidence_lines, title, who

RETRYABLE_API_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}


def _handlers(retries: int) -> list[Any]:
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


def digest_blocks(n: Notification) -> list[dict[str, Any]]:
    """A group's digest: new alerts first, then those still firing, then resolved ones, each in full."""
    new = {a.alert_id for a in n.new}
    alerts = n.new + [a for a in n.firing if a.alert_id not in new] + n.resolved
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
    """Posts new alerts and digests, and updates the earlier message when asked to."""

    name = "slack"

    def __init__(self, *, token: str | None = None, channel: str | None = None, webhook_url: str | None = None,
                 base_url: str | None = None, retries: int = 3):
        if webhook_url:
            self._webhook: AsyncWebhookClient | None = AsyncWebhookClient(webhook_url,
                                                                           retry_handlers=_handlers(retries))
            self._web: AsyncWebClient | None = None
        elif token and channel:
            kwargs: dict[str, Any] = {"base_url": base_url} if base_url else {}
            self._web = AsyncWebClient(token=token, retry_handlers=_handlers(retries), **kwargs)
            self._webhook = None
        else:
            raise ValueError("Slack needs a bot token and a channel, or an incoming-webhook URL")
        self.channel = channel

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        return await self._post({"text": f"{title(alert)}: {alert.summary}", "blocks": blocks(alert)}, previous)

    async def send_digest(self, notification: Notification, previous: str | None) -> str | None:
        """Post the digest, or rewrite the group's message (`previous`, a ts) when the router says so."""
        text = digest_title(notification)
        return await self._post({"text": text, "blocks": digest_blocks(notification)}, previous)

    async def _post(self, payload: dict[str, Any], previous: str | None) -> str | None:
        try:
            if self._webhook is not None:
                resp = await self._webhook.send(**payload)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise DeliveryError(f"webhook answered {resp.status_code}", retryable=True)
                if resp.status_code != 200:
                    raise DeliveryError(f"webhook answered {resp.status_code}: {resp.body}", retryable=False)
                return previous or "webhook"
            assert self._web is not None
            if previous and previous != "webhook":
                resp = await self._web.chat_update(channel=self.channel, ts=previous, **payload)
            else:
                resp = await self._web.chat_postMessage(channel=self.channel, **payload)
            return str(resp["ts"])
        except SlackApiError as err:
            code = err.response.get("error", "") if err.response is not None else ""
            status = err.response.status_code if err.response is not None else 0
            retryable = code in RETRYABLE_API_ERRORS or status == 429 or status >= 500
            raise DeliveryError(f"Slack API error {code or status}", retryable=retryable) from None
        except (SlackClientError, OSError, TimeoutError) as err:
            raise DeliveryError(f"Slack unreachable: {err!r}", retryable=True) from None

    async def close(self) -> None:
        return None
