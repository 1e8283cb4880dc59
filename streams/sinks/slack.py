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
from streams.sinks import DeliveryError
from streams.sinks.text import SEVERITY_EMOJI, evidence_lines, title, who

RETRYABLE_API_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}


def _handlers(retries: int) -> list[Any]:
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=retries),
        AsyncRateLimitErrorRetryHandler(max_retry_count=retries),
        AsyncServerErrorRetryHandler(max_retry_count=retries),
    ]


def blocks(alert: Alert) -> list[dict[str, Any]]:
    """A Block Kit message: what burns, who, how much and how fast, since when, what was done."""
    emoji = ":white_check_mark:" if alert.status == "resolved" else SEVERITY_EMOJI[alert.severity]
    when = datetime.fromtimestamp(alert.ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n`{v}`"} for k, v in who(alert)]
    fields += [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in evidence_lines(alert)]
    out: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{title(alert)}"[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {alert.summary}"}},
    ]
    for i in range(0, len(fields), 10):  # Slack allows 10 fields per section
        out.append({"type": "section", "fields": fields[i:i + 10]})
    action = f"*Action:* {alert.action}"
    if alert.undo:
        action += f"\n*Undo:* `{alert.undo}`"
    out.append({"type": "section", "text": {"type": "mrkdwn", "text": action}})
    out.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"fired at {when} (event time) · `{alert.alert_id}` · spendwatch"}]})
    return out


class SlackSink:
    """Posts new alerts, and updates the earlier message when the same alert id comes again."""

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
        payload = {"text": f"{title(alert)}: {alert.summary}", "blocks": blocks(alert)}
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
