"""Alert routing on a replayed incident with an injected clock, and delivery of its digests over real HTTP.

Time passes only when a test says so (`Replay.at`); the router's state goes
through JSON after every step, as it would through a Faust table.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import orjson
import pytest
from pydantic import ValidationError
from rich.console import Console

from detectors.policy import PolicyConfig, PolicyRule, apply_decision, decide
from schemas.alerts import Alert
from streams.notifier import Notifier
from streams.routing import Notification, Router, RoutingConfig, kills_workflow
from streams.sinks import DeliveryError
from streams.sinks.console import ConsoleSink
from streams.sinks.pagerduty import PagerDutySink
from streams.sinks.slack import SlackSink, digest_blocks
from streams.sinks.webhook import WebhookSink
from tests.fakehttp import FakeHTTP

T0 = 1_768_471_200.0
HOUR = 3600.0
LOOP = "workflow=support|kind=loop"


def loop(run: str, workflow: str = "support", **kw: object) -> Alert:
    return Alert(alert_id=f"loop:{workflow}:{run}", kind="loop", severity="critical", workflow=workflow, ts=T0,
                 team="cx", agent_id=f"agent-{run}", run_id=run,
                 summary=f"run {run} in {workflow}: same tool call 12× from step 3; $4.20 burned, $1.10/min",
                 evidence={"usd": 4.2, "usd_per_min": 1.1, "typical_run": {"steps": 9.0}},
                 **kw)  # type: ignore[arg-type]


def resolved(alert: Alert) -> Alert:
    return alert.model_copy(update={"status": "resolved"})


def workflow_kill(workflow: str = "support") -> Alert:
    """A budget alert as the policy leaves it after killing the whole workflow."""
    alert = Alert(alert_id=f"budget:{workflow}", kind="budget", severity="critical", workflow=workflow, ts=T0,
                  summary=f"{workflow} has spent $50.00 of its daily budget $50.00 (100%)", evidence={"usd": 50.0})
    policy = PolicyConfig(rules=[PolicyRule(kind="budget", action="kill", kill_scope="workflow")])
    return apply_decision(alert, decide(alert, policy))


class Replay:
    """Feeds alerts to a router at times the test chooses; the router is reloaded from JSON each step."""

    def __init__(self, config: RoutingConfig | None = None):
        self.config = config or RoutingConfig()
        self.router = Router(self.config)
        self.now = 0.0

    def _persist(self) -> None:
        self.router = Router.load(orjson.loads(orjson.dumps(self.router.dump())), self.config)

    def at(self, t: float, *alerts: Alert) -> list[Notification]:
        """Advance the clock to `t`, add `alerts`, and return (and confirm) what is due."""
        assert t >= self.now, "time only moves forward"
        self.now = t
        for alert in alerts:
            self.router.add(alert, t)
        self._persist()
        due = self.router.due(t)
        for n in due:
            self.router.sent(n)
        self._persist()
        return due


def ids(alerts: list[Alert]) -> list[str]:
    return [a.alert_id for a in alerts]


def test_loop_incident_is_grouped_deduplicated_repeated_and_resolved():
    r = Replay()
    assert r.at(0, loop("r-1")) == []
    assert r.at(5, loop("r-2"), loop("r-1")) == []  # r-1 again: updated, not a second alert
    assert r.at(29.9) == []
    [first] = r.at(30)  # group_wait over: one digest for the whole loop incident
    assert (first.group_key, first.seq, first.update_of) == (LOOP, 1, None)
    assert ids(first.new) == ids(first.firing) == ["loop:support:r-1", "loop:support:r-2"]
    assert r.at(31) == [] and r.at(200, loop("r-3")) == []  # nothing new / new but inside group_interval
    [second] = r.at(330)
    assert ids(second.new) == ["loop:support:r-3"] and len(second.firing) == 3 and second.update_of is None
    assert r.at(330 + 4 * HOUR - 1) == []
    [repeat] = r.at(330 + 4 * HOUR)  # still firing, nothing new: a reminder, posted anew
    assert repeat.new == [] and len(repeat.firing) == 3 and repeat.update_of is None
    done = 330 + 4 * HOUR + 10
    assert r.at(done, resolved(loop("r-1")), resolved(loop("r-2"))) == []  # resolved waits for group_interval
    [partly] = r.at(done + 300)
    assert ids(partly.resolved) == ["loop:support:r-1", "loop:support:r-2"]
    assert ids(partly.firing) == ["loop:support:r-3"]
    assert partly.update_of == repeat.notification_id  # nothing new to announce: rewrite the group's message
    [last] = r.at(done + 600, resolved(loop("r-3")))
    assert last.firing == [] and ids(last.resolved) == ["loop:support:r-3"] and last.update_of == repeat.notification_id
    assert r.router.groups == {}
    assert len({n.notification_id for n in (first, second, repeat, partly, last)}) == 5


def test_last_seen_is_the_newest_alert_or_notification_a_reloaded_router_holds():
    r = Replay()
    assert r.router.last_seen() == 0.0
    r.at(0, loop("r-1"))
    r.at(5, loop("r-2"))
    assert Router.load(r.router.dump()).last_seen() == 5
    r.at(30)  # the digest goes out
    assert Router.load(r.router.dump()).last_seen() == 30


def test_groups_are_separate_and_a_reopened_group_gets_fresh_ids():
    r = Replay(RoutingConfig(group_wait_s=10, group_interval_s=60))
    spike = Alert(alert_id="spike:support", kind="spike", severity="warning", workflow="support", ts=T0,
                  summary="spend ×6")
    assert r.at(0, loop("r-1"), loop("r-9", workflow="billing"), spike) == []
    firsts = {n.group_key: n for n in r.at(10)}
    assert sorted(firsts) == ["workflow=billing|kind=loop", LOOP, "workflow=support|kind=spike"]
    [closed] = r.at(100, resolved(loop("r-1")))
    assert closed.group_key == LOOP and closed.firing == [] and LOOP not in r.router.groups
    assert r.at(500, loop("r-2"), resolved(loop("never-seen"))) == []  # an unknown resolve is ignored
    [reopened] = r.at(510)
    assert reopened.seq == 1 and reopened.notification_id not in {firsts[LOOP].notification_id,
                                                                   closed.notification_id}


def test_alert_resolved_before_anyone_was_told_is_never_announced():
    r = Replay()
    assert r.at(0, loop("r-1")) == [] and r.at(10, resolved(loop("r-1"))) == [] and r.at(30) == []
    assert r.router.groups == {}


def test_alerts_nobody_resolves_time_out_and_stop_repeating():
    r = Replay(RoutingConfig(resolve_timeout_s=6 * HOUR))
    assert r.at(0, loop("r-1")) == []
    [first] = r.at(30)
    [repeat] = r.at(30 + 4 * HOUR)
    [gone] = r.at(6 * HOUR)
    assert (first.seq, repeat.seq, gone.seq) == (1, 2, 3)
    assert gone.firing == [] and gone.resolved[0].status == "resolved" and r.router.groups == {}


def test_workflow_kill_inhibits_its_run_and_agent_alerts_until_it_resolves():
    kill = workflow_kill()
    assert kill.action == "kill" and kills_workflow(kill) and "--workflow support" in (kill.undo or "")
    run_kill = apply_decision(loop("r-7"), decide(loop("r-7"), PolicyConfig(rules=[
        PolicyRule(kind="loop", action="kill", kill_scope="run_id")])))
    assert run_kill.action == "kill" and not kills_workflow(run_kill)  # a run kill inhibits nothing
    assert not kills_workflow(resolved(kill))

    r = Replay()
    r.at(0, kill, loop("r-1"), loop("r-2"), loop("r-3", workflow="billing"))
    assert {n.group_key: ids(n.firing) for n in r.at(30)} == {
        "workflow=support|kind=budget": ["budget:support"],
        "workflow=billing|kind=loop": ["loop:billing:r-3"],
    }  # support's per-run loops are muted: the whole workflow is already stopped
    assert r.at(60, loop("r-4")) == []
    due = {n.group_key: n for n in r.at(330, resolved(kill))}  # kill lifted: the muted loops come out now
    assert due["workflow=support|kind=budget"].firing == []
    assert ids(due[LOOP].new) == ["loop:support:r-1", "loop:support:r-2", "loop:support:r-4"]


def test_sent_twice_or_for_an_old_episode_changes_nothing():
    router = Router()
    router.add(loop("r-1"), 0)
    [n] = router.due(30)
    router.sent(n)
    before = router.dump()
    router.sent(n)
    assert router.dump() == before
    router.add(resolved(loop("r-1")), 40)
    [end] = router.due(330)
    router.add(loop("r-2"), 331)
    router.sent(end)  # r-2 arrived while the resolve was in flight: the group stays open
    assert list(router.groups) == [LOOP] and list(router.groups[LOOP].alerts) == ["loop:support:r-2"]


def test_config_is_checked():
    with pytest.raises(ValidationError, match="cannot group by"):
        RoutingConfig(group_by=["evidence"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        RoutingConfig(group_wait=5)  # type: ignore[call-arg]
    assert Replay(RoutingConfig(group_by=["team"])).router.key(loop("r-1")) == "team=cx"


def test_slack_digest_says_what_who_how_much_what_was_done_and_how_to_undo():
    r = Replay()
    r.at(0, workflow_kill())
    [n] = r.at(30)
    text = str(digest_blocks(n))
    for needle in ("Budget threshold crossed in support — 1 firing, 1 new", "of its daily budget $50.00", "*New*",
                   "*Action:* kill", "*Undo:* `spendwatch release --workflow support --broker $SPENDWATCH_BROKER`",
                   "fired at 2026-01-15 10:00:00 UTC"):
        assert needle in text
    big = Replay()
    big.at(0, *[loop(f"r-{i}") for i in range(12)])
    [n] = big.at(30)
    blocks = digest_blocks(n)
    assert len(blocks) <= 50 and "…and 4 more" in str(blocks[-1])


@pytest.fixture
async def fake_http() -> AsyncIterator[FakeHTTP]:
    fake = await FakeHTTP().start()
    yield fake
    await fake.stop()


async def deliver(replay: Replay, notifier: Notifier, t: float, *alerts: Alert) -> list[Notification]:
    """What the notify agent does on each tick: route, deliver every due digest, then confirm it."""
    replay.now = t
    for alert in alerts:
        replay.router.add(alert, t)
    due = replay.router.due(t)
    for n in due:
        await notifier.deliver_digest(n)
        replay.router.sent(n)
    return due


async def test_digests_reach_slack_once_and_in_order_through_429s_and_500s(fake_slack):
    fake_slack.failures = [429, 500, 503, 500, 429]  # longer than slack-sdk's own retries
    fake_slack.retry_after = 1
    sink = SlackSink(token=fake_slack.token, channel="#llm-spend", base_url=fake_slack.base_url, retries=1)
    ledger: dict[str, str] = {}
    notifier = Notifier([sink], ledger, max_backoff=0.1)
    r = Replay()
    await deliver(r, notifier, 0, loop("r-1"), loop("r-2"), loop("r-9", workflow="billing"))
    firsts = await deliver(r, notifier, 30)
    await notifier.deliver_digest(firsts[0])  # redelivered after a crash before `sent` was saved: no repost
    await deliver(r, notifier, 100, loop("r-3"))
    seconds = await deliver(r, notifier, 330)
    await deliver(r, notifier, 400, *[resolved(loop(x)) for x in ("r-1", "r-2", "r-3")])
    ends = await deliver(r, notifier, 630)

    assert fake_slack.failures == [] and len(firsts) == 2 and len(seconds) == 1 and len(ends) == 1
    assert [m["text"] for m in fake_slack.messages] == [
        "Runaway agent loop in support — 2 firing, 2 new",
        "Runaway agent loop in billing — 1 firing, 1 new",
        "Runaway agent loop in support — 3 firing, 1 new",
    ]
    [update] = fake_slack.updates  # the resolve rewrites support's latest message instead of posting
    assert update["ts"] == fake_slack.messages[2]["ts"] and update["text"] == "Resolved: Runaway agent loop in support"
    assert ledger[f"slack:{ends[0].notification_id}"] == update["ts"]


async def test_sinks_without_digests_get_the_new_and_resolved_alerts_one_by_one():
    out = io.StringIO()
    notifier = Notifier([ConsoleSink(Console(file=out, width=200))], {})
    r = Replay(RoutingConfig(repeat_interval_s=HOUR))
    await deliver(r, notifier, 0, loop("r-1"), loop("r-2"))
    await deliver(r, notifier, 30)
    await deliver(r, notifier, 30 + HOUR)  # a repeat: nothing new for a per-alert sink
    await deliver(r, notifier, 30 + HOUR + 300, resolved(loop("r-1")))
    printed = out.getvalue()
    assert printed.count("Runaway agent loop — critical") == 2 and printed.count("Resolved: Runaway agent loop") == 1
    assert len(printed.splitlines()) == 3  # not a terminal: one line per alert


async def test_console_draws_a_panel_per_alert_on_a_terminal():
    out = io.StringIO()
    await ConsoleSink(Console(file=out, width=120, force_terminal=True)).send(loop("r-1"), None)
    printed = out.getvalue()
    assert "Runaway agent loop — critical" in printed and "╭" in printed and "$4.20 burned" in printed


async def test_webhook_posts_digest_json_and_retries_only_what_may_succeed(fake_http):
    fake_http.failures = [503, 429]
    sink = WebhookSink(f"{fake_http.url}/hook")
    notifier = Notifier([sink], {}, max_backoff=0.05)
    r = Replay()
    await deliver(r, notifier, 0, workflow_kill())
    [n] = await deliver(r, notifier, 30)
    await notifier.deliver_digest(n)
    [body] = fake_http.hooks
    assert body["notification_id"] == n.notification_id and body["new"][0]["undo"].startswith("spendwatch release")
    await sink.send(loop("r-1"), None)
    assert fake_http.hooks[-1]["alert_id"] == "loop:support:r-1" and fake_http.requests == 4

    fake_http.failures = [404]
    with pytest.raises(DeliveryError) as err:
        await sink.send(loop("r-1"), None)
    assert not err.value.retryable and "404" in str(err.value)
    await sink.close()
    nobody = WebhookSink("http://127.0.0.1:9/hook", timeout_s=2)
    with pytest.raises(DeliveryError) as err:
        await nobody.send(loop("r-1"), None)
    assert err.value.retryable
    await nobody.close()


async def test_pagerduty_triggers_one_incident_per_group_and_resolves_it(fake_http):
    sink = PagerDutySink(fake_http.routing_key, base_url=fake_http.url)
    notifier = Notifier([sink], {}, max_backoff=0.05)
    fake_http.failures = [429, 502]
    r = Replay()
    await deliver(r, notifier, 0, loop("r-1"), workflow_kill("billing"))
    await deliver(r, notifier, 30)
    await deliver(r, notifier, 330, loop("r-2"))
    await deliver(r, notifier, 400, resolved(loop("r-1")), resolved(loop("r-2")))
    await deliver(r, notifier, 630)

    assert fake_http.incidents == {LOOP: "resolved", "workflow=billing|kind=budget": "triggered"}
    loops = [e for e in fake_http.events if e["dedup_key"] == LOOP]
    assert [e["event_action"] for e in loops] == ["trigger", "trigger", "resolve"]
    payload = loops[0]["payload"]
    assert payload["severity"] == "critical" and payload["source"] == "support" and payload["class"] == "loop"
    assert payload["summary"].startswith("Runaway agent loop in support — 1 firing, 1 new: run r-1")
    assert payload["custom_details"]["firing"][0]["evidence"]["usd"] == 4.2

    assert await sink.send(loop("r-5"), None) == "loop:support:r-5"  # a single alert: keyed by its id
    assert await sink.send(resolved(loop("r-5")), None) == "loop:support:r-5"
    assert fake_http.incidents["loop:support:r-5"] == "resolved"
    stranger = PagerDutySink("wrong-key", base_url=fake_http.url)
    with pytest.raises(DeliveryError) as err:
        await stranger.send(loop("r-6"), None)
    assert not err.value.retryable and "routing_key" in str(err.value)
    await stranger.close()
    fake_http.failures = [500]
    with pytest.raises(DeliveryError) as err:
        await sink.send(loop("r-6"), None)
    assert err.value.retryable
    await sink.close()
