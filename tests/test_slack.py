"""Slack sink and notifier against a fake Slack speaking the real API over HTTP."""

import asyncio
import logging
import time

import pytest

from schemas.alerts import Alert
from streams.notifier import PENDING, UNCONFIRMED, Notifier
from streams.sinks import DeliveryError, marker
from streams.sinks.slack import EVENT_TYPE, SlackSink


def alert(i: int = 1, **kw) -> Alert:
    return Alert(alert_id=f"budget:workflow:w:2026-01-15:{i}", kind="budget", severity="warning", workflow="w",
                 team="cx", ts=1_768_471_200, summary=f"workflow w spent $9.10 of $10.00 ({i})",
                 evidence={"spent_usd": 9.1, "budget_usd": 10.0, "top_models": [["gpt-4o", 9.1]]}, **kw)


async def test_post_reads_well_and_update_reuses_the_message(fake_slack):
    sink = SlackSink(token=fake_slack.token, channel="#llm-spend", base_url=fake_slack.base_url)
    ts = await sink.send(alert(), None)
    msg = fake_slack.messages[0]
    assert msg["channel"] == fake_slack.channels["llm-spend"] and msg["ts"] == ts
    assert msg["metadata"] == {"event_type": EVENT_TYPE, "event_payload": {"id": marker(alert())}}
    texts = str(msg["blocks"])
    for needle in ("Budget threshold crossed", "workflow w spent $9.10", "`cx`", "gpt-4o $9.10",
                   "budget:workflow:w:2026-01-15:1", "*Action:* none"):
        assert needle in texts
    # chat.update takes channel IDs only (the fake, like Slack, refuses names there)
    assert await sink.send(alert(status="resolved"), ts) == ts
    assert len(fake_slack.messages) == 1 and fake_slack.updates[0]["ts"] == ts


async def test_slack_sdk_retries_rate_limits_of_a_post_but_not_server_errors(fake_slack):
    fake_slack.failures, fake_slack.retry_after = [429, 429], 0
    sink = SlackSink(token=fake_slack.token, channel="#c", base_url=fake_slack.base_url)
    await sink.send(alert(1), None)
    assert len(fake_slack.messages) == 1 and fake_slack.requests == 3
    fake_slack.failures = [500]  # Slack: "possible some aspect of the operation succeeded"
    with pytest.raises(DeliveryError) as err:
        await sink.send(alert(2), None)
    assert err.value.retryable and err.value.uncertain and fake_slack.calls["chat.postMessage"] == 4
    fake_slack.failures = [500, 503]  # an update may repeat: slack-sdk retries it
    ts = fake_slack.messages[0]["ts"]
    assert await sink.send(alert(1, status="resolved"), ts) == ts and fake_slack.calls["chat.update"] == 3


@pytest.mark.parametrize("how", ["slow", "dropped"])
async def test_a_post_whose_answer_is_lost_is_not_retried_behind_our_back(fake_slack, how):
    """slack-sdk's connection-error handler would re-post after a dropped connection; ours do not."""
    fake_slack.slow_s = 1.0
    setattr(fake_slack, f"{how}_posts", 1)
    sink = SlackSink(token=fake_slack.token, channel="#c", base_url=fake_slack.base_url, timeout_s=0.3)
    with pytest.raises(DeliveryError) as err:
        await sink.send(alert(), None)
    assert err.value.retryable and err.value.uncertain
    assert fake_slack.posted == {marker(alert()): 1} and fake_slack.calls["chat.postMessage"] == 1


async def test_find_pages_through_history_and_looks_up_a_channel_by_name(fake_slack):
    since = time.time()
    poster = SlackSink(token=fake_slack.token, channel="#llm-spend", base_url=fake_slack.base_url)
    ts = [await poster.send(alert(i), None) for i in range(7)]
    fake_slack.history_page = 2  # Slack pages: the first message is on the last page
    fresh = SlackSink(token=fake_slack.token, channel="#llm-spend", base_url=fake_slack.base_url)
    assert await fresh.find(marker(alert(0)), since) == ts[0]
    assert fake_slack.calls["conversations.list"] == 1 and fake_slack.calls["conversations.history"] == 4
    assert await fresh.find(marker(alert(9)), since) is None
    assert await fresh.find(marker(alert(0)), since + 3600) is None  # outside the searched window
    nowhere = SlackSink(token=fake_slack.token, channel="#no-such", base_url=fake_slack.base_url)
    with pytest.raises(DeliveryError) as err:
        await nowhere.find("x", since)
    assert not err.value.retryable and "configure its ID" in str(err.value)


async def test_bad_token_is_not_retryable(fake_slack):
    sink = SlackSink(token="xoxb-wrong", channel="#c", base_url=fake_slack.base_url)
    with pytest.raises(DeliveryError) as err:
        await sink.send(alert(), None)
    assert not err.value.retryable and "invalid_auth" in str(err.value)


async def test_webhook(fake_slack):
    sink = SlackSink(webhook_url=fake_slack.webhook_url)
    await sink.send(alert(), None)
    assert fake_slack.messages[0]["text"].startswith("Budget threshold crossed")


async def test_webhook_retries_answered_errors_but_posts_an_unanswered_one_at_most_once(fake_slack, caplog):
    """An incoming webhook has no history to search: a lost answer is not re-posted, and the log says so."""
    fake_slack.failures = [500, 429]
    sink = SlackSink(webhook_url=fake_slack.webhook_url, retries=0, timeout_s=0.3)
    ledger: dict[str, str] = {}
    notifier = Notifier([sink], ledger, max_backoff=0.05)
    await notifier.deliver(alert(1))
    fake_slack.slow_posts, fake_slack.slow_s = 1, 1.0
    with caplog.at_level(logging.ERROR, "spendwatch.notifier"):
        await notifier.deliver(alert(2))
    await notifier.deliver(alert(2))
    assert [m["text"][-3:] for m in fake_slack.messages] == ["(1)", "(2)"] and fake_slack.calls["webhook"] == 4
    assert ledger[f"slack:{marker(alert(1))}"] == "webhook"
    assert ledger[f"slack:{marker(alert(2))}"].startswith(UNCONFIRMED)
    assert "delivered at most once" in caplog.text


async def test_notifier_outlasts_an_outage_and_never_posts_twice(fake_slack):
    fake_slack.failures = [500] * 12  # longer than slack-sdk's own retries: the notifier backs off and retries
    sink = SlackSink(token=fake_slack.token, channel="#c", base_url=fake_slack.base_url, retries=1)
    ledger: dict[str, str] = {}
    notifier = Notifier([sink], ledger, max_backoff=0.2)
    await asyncio.wait_for(notifier.deliver(alert(1)), 30)
    await notifier.deliver(alert(2))
    await notifier.deliver(alert(1))  # redelivered from Kafka after a restart: the ledger stops a repost
    assert [m["text"].endswith("(1)") for m in fake_slack.messages] == [True, False]
    assert fake_slack.posted == {marker(alert(1)): 1, marker(alert(2)): 1}
    assert set(ledger) == {"slack:budget:workflow:w:2026-01-15:1:firing", "slack:budget:workflow:w:2026-01-15:2:firing"}
    assert not any(v.startswith(PENDING) for v in ledger.values())


def test_sink_needs_credentials():
    with pytest.raises(ValueError, match="bot token and a channel, or an incoming-webhook URL"):
        SlackSink(token="x")
