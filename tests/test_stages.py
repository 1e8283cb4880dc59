"""The worker's stages without a broker: alert publishing with kills, digest scheduling, the event clock."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from detectors.policy import PolicyConfig, PolicyRule
from schemas.alerts import ANY_WORKFLOW, Alert
from schemas.control import ControlCommand
from schemas.signing import Keyring, Verifier
from streams.clock import EventClock
from streams.digests import DigestScheduler
from streams.notifier import Notifier
from streams.publisher import AlertPublisher
from streams.routing import Notification, RoutingConfig

KILL_RUNS = PolicyConfig(rules=[PolicyRule(kind="loop", action="kill", kill_scope="run_id")])
RING = Keyring({"k1": b"secret"})


def loop_alert(run: str = "r-1", workflow: str = "support") -> Alert:
    return Alert(alert_id=f"loop:{workflow}:{run}", kind="loop", severity="critical", workflow=workflow, ts=100.0,
                 summary=f"run {run} loops", run_id=run)


class Topics:
    """Both topics in one list, in send order, as Kafka would receive them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def sender(self, topic: str) -> Any:
        async def send(key: bytes, value: bytes) -> asyncio.Future[None]:
            self.sent.append((topic, key, value))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return send


def publisher(policy: PolicyConfig, keyring: Keyring | None = RING) -> tuple[AlertPublisher, Topics]:
    topics = Topics()
    return AlertPublisher(policy, keyring, "worker:test", topics.sender("control"), topics.sender("alerts")), topics


async def test_the_kill_goes_out_before_its_alert_and_once_per_alert_id():
    pub, topics = publisher(KILL_RUNS)
    futures = await pub.publish([loop_alert(), loop_alert()])  # the same alert twice: a re-fire
    assert len(futures) == 2
    assert [t for t, _, _ in topics.sent] == ["control", "alerts", "alerts"]
    _, key, value = topics.sent[0]
    cmd = ControlCommand.model_validate_json(value)
    assert (key, cmd.action, cmd.scope, cmd.target, cmd.alert_id) == (b"run_id:r-1", "kill", "run_id", "r-1",
                                                                       "loop:support:r-1")
    Verifier(RING).verify(cmd, now=cmd.issued_at)  # signed with the worker's key
    told = Alert.model_validate_json(topics.sent[1][2])
    assert (told.action, told.kill_scope) == ("kill", "run_id")
    assert told.undo == "spendwatch release --run r-1 --broker $SPENDWATCH_BROKER"
    assert topics.sent[1][1] == b"support"  # keyed by workflow: its digests meet on one partition
    assert pub.counts == {"loop": 2}


async def test_an_alert_about_no_one_workflow_is_never_a_kill_target():
    pub, topics = publisher(PolicyConfig(rules=[PolicyRule(action="kill", kill_scope="workflow")]))
    unpriced = Alert(alert_id="unpriced:m:2026-01-15", kind="unpriced", severity="warning", workflow=ANY_WORKFLOW,
                     ts=0.0, summary="unpriced")
    await pub.publish([unpriced, loop_alert()])
    assert [(t, k) for t, k, _ in topics.sent] == [("alerts", b"*"), ("control", b"workflow:support"),
                                                    ("alerts", b"support")]


async def test_shadow_kills_send_no_command():
    pub, topics = publisher(PolicyConfig(), keyring=None)  # the default rules shadow-kill loops
    await pub.publish([loop_alert()])
    assert [t for t, _, _ in topics.sent] == ["alerts"]
    assert Alert.model_validate_json(topics.sent[0][2]).action == "shadow"


class Routes:
    """A route store in a dict, with the partition table writes go to."""

    def __init__(self) -> None:
        self.docs: dict[int, bytes] = {}
        self.entered: list[int] = []

    def load_routes(self, partition: int) -> bytes | None:
        return self.docs.get(partition)

    def save_routes(self, partition: int, doc: dict[str, Any]) -> None:
        self.docs[partition] = orjson.dumps(doc)

    def enter(self, partition: int) -> None:
        self.entered.append(partition)


class DigestRecorder:
    name = "recorder"

    def __init__(self) -> None:
        self.digests: list[Notification] = []

    async def send(self, alert: Alert, previous: str | None) -> str | None:
        raise AssertionError("digest sinks get digests")

    async def send_digest(self, notification: Notification, previous: str | None) -> str | None:
        self.digests.append(notification)
        return f"ts-{len(self.digests)}"

    async def close(self) -> None:
        pass


def scheduler(routes: Routes, sink: DigestRecorder, ledger: dict[str, str], wall: list[float]) -> DigestScheduler:
    clock = EventClock(wall=lambda: wall[0])
    return DigestScheduler(Notifier([sink], ledger), RoutingConfig(group_wait_s=30), routes, clock)


async def test_digests_wait_for_the_group_then_go_once_and_survive_a_restart():
    routes, sink, ledger, wall = Routes(), DigestRecorder(), {}, [0.0]
    digests = scheduler(routes, sink, ledger, wall)
    digests.clock.advance(100.0)
    digests.add(2, loop_alert("r-1"))
    digests.add(2, loop_alert("r-2"))
    await digests.flush()
    assert sink.digests == []  # inside group_wait
    wall[0] += 30
    await digests.flush()
    await digests.flush()
    [n] = sink.digests
    assert sorted(a.alert_id for a in n.new) == ["loop:support:r-1", "loop:support:r-2"]
    assert routes.entered == [2]  # the ledger entry was written to the alert's partition
    # A new worker takes partition 2 over: it reloads the router, its clock resumes from it,
    # and nothing already sent goes again.
    again = scheduler(routes, sink, ledger, [0.0])
    again.resume([2])
    assert again.clock.watermark == 130.0  # the newest thing it holds: the digest sent at 130
    await again.flush()
    assert len(sink.digests) == 1


async def test_without_digest_sinks_nothing_is_routed():
    digests = DigestScheduler(Notifier([], {}), RoutingConfig(), Routes(), EventClock())
    assert not digests.enabled
    digests.resume([0, 1])
    assert digests.routers == {}


def test_a_kill_rule_without_keys_is_refused_before_any_send():
    pub, topics = publisher(KILL_RUNS, keyring=None)
    with pytest.raises(RuntimeError, match="no control keys"):
        asyncio.run(pub.publish([loop_alert()]))
    assert topics.sent == []
