"""Slack sink and notifier against a fake Slack speaking the real API over HTTP."""

import asyncio

import pytest

from schemas.alerts import Alert
from streams.notifier import Notifier
from streams.sinks import DeliveryError
from streams.sinks.slack import SlackSink


def alert(i: int = 1, **kw) -> Alert:
    return Alert(alert_id=f"budget:workflow:w:2026-01-15:{i}", kind="budget", severity="warning", workflow="w",
                 team="cx", ts=1_768_471_200, summary=f"workflow w spent $9.10 of $10.00 ({i})",
                 evidence={"spent_usd": 9.1, "budget_usd": 10.0, "top_models": [["gpt-4o", 9.1]]}, **kw)


async def test_post_reads_well_and_update_reuses_the_message(fake_slack):
    sink = SlackSink(token=fake_slack.token, channel="#llm-spend", base_url=fake_slack.base_url)
    ts = await sink.send(alert(), None)
    msg = fake_slack.messages[0]
    assert msg["channel"] == "#llm-spend" and msg["ts"] == ts
    texts = str(msg["blocks"])
    for needle in ("Budget threshold crossed", "workflow w spent $9.10", "`cx`", "gpt-4o $9.10",
                   "budget:workflow:w:2026-01-15:1", "*Action:* none"):
        assert needle in texts
    assert await sink.send(alert(status="resolved"), ts) == ts
    assert len(fake_slack.messages) == 1 and fake_slack.updates[0]["ts"] == ts


async def test_rate_limits_and_server_errors_are_retried_by_slack_sdk(fake_slack):
    fake_slack.failures = [429, 500, 503]
    sink = SlackSink(token=fake_slack.token, channel="#c", base_url=fake_slack.base_url)
    await sink.send(alert(), None)
    assert len(fake_slack.messages) == 1 and fake_slack.requests == 4


async def test_bad_token_is_not_retryable(fake_slack):
    sink = SlackSink(token="xoxb-wrong", channel="#c", base_url=fake_slack.base_url)
    with pytest.raises(DeliveryError) as err:
        await sink.send(alert(), None)
    assert not err.value.retryable and "invalid_auth" in str(err.value)


async def test_webhook(fake_slack):
    sink = SlackSink(webhook_url=fake_slack.webhook_url)
    await sink.send(alert(), None)
    assert fake_slack.messages[0]["text"].startswith("Budget threshold crossed")


async def test_notifier_outlasts_an_outage_and_never_posts_twice(fake_slack):
    fake_slack.failures = [500] * 12  # longer than slack-sdk's own retries: the notifier backs off and retries
    sink = SlackSink(token=fake_slack.token, channel="#c", base_url=fake_slack.base_url, retries=1)
    ledger: dict[str, str] = {}
    notifier = Notifier([sink], ledger, max_backoff=0.2)
    await asyncio.wait_for(notifier.deliver(alert(1)), 30)
    await notifier.deliver(alert(2))
    await notifier.deliver(alert(1))  # redelivered from Kafka after a restart: the ledger stops a repost
    assert [m["text"].endswith("(1)") for m in fake_slack.messages] == [True, False]
    assert set(ledger) == {"slack:budget:workflow:w:2026-01-15:1:firing", "slack:budget:workflow:w:2026-01-15:2:firing"}


def test_sink_needs_credentials():
    with pytest.raises(ValueError, match="bot token and a channel, or an incoming-webhook URL"):
        SlackSink(token="x")
