"""A Slack outage end to end: the real Router, Notifier and SlackSink against the fake Slack over HTTP.

Slack answers 500 and 429 for a few seconds (standing in for minutes of a real
outage), then takes a post but answers only after the client timed out, then
recovers. Every alert must be announced exactly once, counted on the fake
server, and the resolve must rewrite the group's message with chat.update. A
worker that dies between a post and its answer is replaced by a new notifier
on the same ledger, which must find the message instead of posting it again.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.alerts import Alert
from streams.notifier import PENDING, Notifier
from streams.routing import Notification, Router, RoutingConfig
from streams.sinks.slack import SlackSink
from tests.fakeslack import FakeSlack

T0 = 1_768_471_200.0
TIMEOUT_S = 0.3
"""The sink's client timeout; a slow answer takes SLOW_S, well past it."""
SLOW_S = 1.0


def loop(run: str, workflow: str = "support", status: str = "firing") -> Alert:
    return Alert(alert_id=f"loop:{workflow}:{run}", kind="loop", severity="critical", workflow=workflow, ts=T0,
                 status=status, team="cx", run_id=run, summary=f"run {run} in {workflow} repeats one tool call",
                 evidence={"usd": 4.2})  # type: ignore[arg-type]


def sink(fake: FakeSlack, timeout_s: float = TIMEOUT_S) -> SlackSink:
    return SlackSink(token=fake.token, channel="#llm-spend", base_url=fake.base_url, retries=2, timeout_s=timeout_s)


async def step(router: Router, notifier: Notifier, t: float, *alerts: Alert) -> list[Notification]:
    """What the notify agent does: route at event time `t`, deliver what is due, then confirm it."""
    for alert in alerts:
        router.add(alert, t)
    due = router.due(t)
    for n in due:
        await asyncio.wait_for(notifier.deliver_digest(n), 60)
        router.sent(n)
    return due


def announced(fake: FakeSlack, alert: Alert) -> int:
    """How many posted messages announce `alert` as new."""
    return sum(str(m["blocks"]).count(f"*New* {alert.summary}") for m in fake.messages)


async def test_outage_then_a_lost_answer_then_recovery_delivers_every_alert_once(fake_slack):
    fake_slack.retry_after = 1
    fake_slack.outage(3.0, (500, 429))
    fake_slack.slow_posts, fake_slack.slow_s = 1, SLOW_S  # the first post Slack takes is answered too late
    ledger: dict[str, str] = {}
    notifier = Notifier([sink(fake_slack)], ledger, max_backoff=0.2)
    router = Router(RoutingConfig())
    support, billing = [loop("r-1"), loop("r-2")], [loop("r-9", "billing")]

    started = time.monotonic()
    await step(router, notifier, 0, *support, *billing)
    first = await step(router, notifier, 30)
    assert time.monotonic() - started >= 3.0  # nothing got through before the outage ended
    more = await step(router, notifier, 330, loop("r-3"))
    ends = await step(router, notifier, 400, *[loop(r, status="resolved") for r in ("r-1", "r-2", "r-3")],
                      loop("r-9", "billing", "resolved"))  # billing's group_interval is over: it resolves now
    ends += await step(router, notifier, 700)  # support's (it last spoke at 330) a little later

    assert [n.group_key for n in first] == ["workflow=support|kind=loop", "workflow=billing|kind=loop"]
    assert [n.group_key for n in ends] == ["workflow=billing|kind=loop", "workflow=support|kind=loop"]
    assert len(more) == 1 and all(n.update_of for n in ends)
    assert fake_slack.calls["chat.postMessage"] > 3  # the outage was felt
    posts = [*first, *more]
    assert fake_slack.posted == {n.notification_id: 1 for n in posts}  # one message per notification
    for alert in [*support, *billing, loop("r-3")]:
        assert announced(fake_slack, alert) == 1, alert.alert_id
    # the lost answer was reconciled by an update of the message it had posted, not by a second post
    assert fake_slack.updated == {first[0].notification_id: 1, **{n.notification_id: 1 for n in ends}}
    by_id = {m["metadata"]["event_payload"]["id"]: m["ts"] for m in fake_slack.messages}
    resolves = {u["metadata"]["event_payload"]["id"]: u["ts"] for u in fake_slack.updates}
    assert resolves[ends[1].notification_id] == by_id[more[0].notification_id]  # support's latest message
    assert resolves[ends[0].notification_id] == by_id[first[1].notification_id]
    assert "Resolved: Runaway agent loop in support" in [u["text"] for u in fake_slack.updates]
    assert ledger[f"slack:{first[0].notification_id}"] == by_id[first[0].notification_id]
    assert not [v for v in ledger.values() if v.startswith(PENDING)]


async def test_a_worker_killed_between_post_and_answer_is_replaced_without_a_second_post(fake_slack):
    fake_slack.slow_posts, fake_slack.slow_s = 1, SLOW_S
    ledger: dict[str, str] = {}
    seen_before_post: list[tuple[dict[str, str], int]] = []

    async def persist() -> None:
        seen_before_post.append((dict(ledger), fake_slack.calls["chat.postMessage"]))

    doomed = Notifier([sink(fake_slack, timeout_s=30)], ledger, max_backoff=0.2, persist=persist)
    router = Router(RoutingConfig())
    await step(router, doomed, 0, loop("r-1"))
    [n] = router.due(30)
    task = asyncio.create_task(doomed.deliver_digest(n))
    while fake_slack.posted[n.notification_id] == 0:  # Slack has the post; its answer is on the way
        await asyncio.sleep(0.01)
    task.cancel()  # the worker dies before the answer arrives: no ts in the ledger, `sent` never recorded
    with pytest.raises(asyncio.CancelledError):
        await task
    key = f"slack:{n.notification_id}"
    assert ledger[key].startswith(PENDING) and seen_before_post == [({key: ledger[key]}, 0)]

    fake_slack.failures = [500, 503, 500, 429]  # and the replacement starts into a short outage
    fake_slack.retry_after = 0
    replacement = Notifier([sink(fake_slack)], ledger, max_backoff=0.1)  # a new process: new sink, same ledger
    due = await step(router, replacement, 30)
    assert [d.notification_id for d in due] == [n.notification_id]  # redelivered, as the router never heard back
    [ts] = [m["ts"] for m in fake_slack.messages]
    assert ledger[key] == ts and fake_slack.posted == {n.notification_id: 1}
    assert fake_slack.updated[n.notification_id] == 1  # found, and brought up to date

    await step(router, replacement, 100, loop("r-1", status="resolved"))
    [end] = await step(router, replacement, 400)
    assert end.update_of == n.notification_id and fake_slack.updates[-1]["ts"] == ts
    assert len(fake_slack.messages) == 1 and fake_slack.updated[end.notification_id] == 1


async def test_a_worker_killed_before_its_post_left_is_replaced_by_one_that_posts(fake_slack):
    """A pending entry whose post never reached Slack: the search comes back empty, so it is posted, once."""
    router = Router(RoutingConfig())
    router.add(loop("r-1"), 0)
    [n] = router.due(30)
    ledger = {f"slack:{n.notification_id}": f"{PENDING}{time.time():.3f}:{n.notification_id}"}
    fake_slack.failures = [500, 500]  # the search itself must outlast errors before it may say "absent"
    notifier = Notifier([sink(fake_slack)], ledger, max_backoff=0.1)
    await notifier.deliver_digest(n)
    await notifier.deliver_digest(n)
    assert fake_slack.posted == {n.notification_id: 1} and not fake_slack.updated
    assert fake_slack.calls["conversations.history"] >= 1
    assert ledger[f"slack:{n.notification_id}"] == fake_slack.messages[0]["ts"]
