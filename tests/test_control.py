"""Kill switch: signed commands, the SDK guard on a real broker, the CLI, and the response policy."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from detectors.policy import PolicyConfig, PolicyRule, apply_decision, decide
from schemas.alerts import Alert
from schemas.signing import CommandRejected, Keyring, KeyringError, Verifier, make_command
from spendwatch.cli import main
from spendwatch.control import publish_command, read_active
from spendwatch.guard import KillSwitch, SpendKilled, arg
from tests.kafka_io import create_topic, publish

ROOT = Path(__file__).resolve().parent.parent
KEYS = Keyring({"k1": b"secret-one", "k2": b"secret-two"})
KEYS_ENV = {"SPENDWATCH_CONTROL_KEYS": "k1:secret-one,k2:secret-two", "COLUMNS": "200"}


def kill(target: str = "r-1", ttl: float = 600, ring: Keyring = KEYS, now: float | None = None,
         scope: str = "run_id", action: str = "kill"):  # type: ignore[no-untyped-def]
    return make_command(action, scope, target, "looping on search", ttl, "test", keyring=ring,  # type: ignore[arg-type]
                        alert_id="al-1", now=now)


def new_topic() -> str:
    return f"control-{uuid.uuid4().hex[:8]}"


async def eventually(probe, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """Poll `probe()` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s")


def killed(switch: KillSwitch, **targets: str) -> SpendKilled | None:
    try:
        switch.check(**targets)
    except SpendKilled as err:
        return err
    return None


# --- signing -----------------------------------------------------------------------------------------

def test_sign_verify_round_trip_and_key_rotation():
    cmd = kill()
    assert cmd.key_id == "k1" and len(cmd.signature) == 64
    Verifier(KEYS).verify(cmd, time.time())
    rotated = Keyring({"k2": b"secret-two", "k1": b"secret-one"})  # new signing key, old one still accepted
    Verifier(KEYS).verify(kill(ring=rotated), time.time())


@pytest.mark.parametrize("tamper,reason", [
    (lambda c: c.model_copy(update={"signature": "", "key_id": ""}), "unsigned"),
    (lambda c: c.model_copy(update={"key_id": "k9"}), "unknown key id"),
    (lambda c: c.model_copy(update={"target": "r-2"}), "bad signature"),
    (lambda c: Keyring({"k1": b"guessed"}).sign(c), "bad signature"),
    (lambda c: KEYS.sign(c.model_copy(update={"expires_at": c.issued_at - 1})), "expired"),
    (lambda c: KEYS.sign(c.model_copy(update={"issued_at": c.issued_at + 600})), "issued in the future"),
])
def test_verifier_rejects(tamper, reason):
    with pytest.raises(CommandRejected, match=reason):
        Verifier(KEYS).verify(tamper(kill()), time.time())


def test_verifier_rejects_a_replayed_command_id_and_forgets_the_oldest():
    verifier, now = Verifier(KEYS, max_seen=2), time.time()
    first = kill()
    verifier.verify(first, now)
    with pytest.raises(CommandRejected, match="replayed"):
        verifier.verify(first, now)
    verifier.verify(kill(), now)
    verifier.verify(kill(), now)
    verifier.verify(first, now)  # bounded memory: the oldest id was dropped


def test_keyring_from_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SPENDWATCH_CONTROL_KEYS", "a:x:y, b:z")
    ring = Keyring.load()
    assert ring.signing_key_id == "a" and ring.keys == {"a": b"x:y", "b": b"z"}
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-01\nnew:s2\n\nold:s1\n")
    assert list(Keyring.load(path).keys) == ["new", "old"]
    monkeypatch.setenv("SPENDWATCH_CONTROL_KEYS", "")
    with pytest.raises(KeyringError, match="set SPENDWATCH_CONTROL_KEYS=kid:secret or --keys-file"):
        Keyring.load()
    with pytest.raises(KeyringError, match="kid:secret"):
        Keyring.parse(["lonely"], "test")
    with pytest.raises(KeyringError, match="cannot read keys file"):
        Keyring.load(tmp_path / "missing")


# --- the guard on a real broker ----------------------------------------------------------------------

async def test_guard_ignores_unsigned_forged_unknown_expired_and_replayed(broker):
    topic, now = new_topic(), time.time()
    genuine = kill("r-genuine")
    for cmd in [kill().model_copy(update={"signature": "", "key_id": ""}),
                Keyring({"k1": b"guessed"}).sign(kill()),
                kill(ring=Keyring({"k9": b"secret-one"})),
                kill(ttl=60, now=now - 120),
                genuine, genuine]:
        await publish_command(broker.url, topic, cmd)
    await asyncio.to_thread(publish, broker.bootstrap, topic, [(b"run_id:r-1", b"{not json")])
    switch = KillSwitch(broker.url, topic, keyring=KEYS, poll_s=0.2)
    try:
        assert await switch.start()
        assert switch.rejected == Counter({"unsigned": 1, "bad signature": 1, "unknown key id": 1, "expired": 1,
                                           "replayed": 1, "malformed": 1})
        switch.check(run_id="r-1")
        assert killed(switch, run_id="r-genuine")
    finally:
        await switch.stop()


async def test_kill_stops_calls_within_seconds_and_release_resumes_them(broker):
    topic = new_topic()  # does not exist yet: the guard starts ready (nothing to obey) and picks it up
    switch = KillSwitch(broker.url, topic, keyring=KEYS, poll_s=0.2)
    try:
        assert await switch.start() and switch.active() == []
        started = time.monotonic()
        await publish_command(broker.url, topic, kill("r-1"))
        err = await eventually(lambda: killed(switch, workflow="w", run_id="r-1"))
        assert time.monotonic() - started < 5
        assert (err.reason, err.alert_id, err.scope, err.target) == ("looping on search", "al-1", "run_id", "r-1")
        switch.check(workflow="w", run_id="r-2")

        @switch.protect(run_id="r-1")
        def call_sync() -> str:
            return "spent"

        @switch.protect(run_id="r-1")
        async def call_async() -> str:
            return "spent"

        for attempt in (call_sync, call_async):
            with pytest.raises(SpendKilled, match="looping on search"):
                await attempt() if attempt is call_async else attempt()
        with pytest.raises(SpendKilled):
            with switch.guard(run_id="r-1"):
                pass
        with pytest.raises(SpendKilled):
            async with switch.guard(run_id="r-1"):
                pass

        release = kill("r-1", action="release")
        await publish_command(broker.url, topic, release)
        await eventually(lambda: not killed(switch, run_id="r-1"))
        # an older kill published after the release cannot bring it back
        await publish_command(broker.url, topic, kill("r-1", now=release.issued_at - 5))
        await eventually(lambda: switch.rejected["superseded"] == 1)
        switch.check(run_id="r-1")

        await publish_command(broker.url, topic, kill("wf-x", scope="workflow"))
        assert (await eventually(lambda: killed(switch, workflow="wf-x", run_id="any"))).scope == "workflow"
    finally:
        await switch.stop()


def test_protect_takes_its_targets_from_each_calls_arguments(broker):
    """One decorated function serves every run: the run, agent or workflow to check comes from the call
    (by name, positional or keyword, a default, an attribute of an argument, or a function of the call),
    in a synchronous program whose guard follows the topic from a thread of its own."""
    topic = new_topic()
    asyncio.run(publish_command(broker.url, topic, kill("r-bad")))
    asyncio.run(publish_command(broker.url, topic, kill("agent-bad", scope="agent_id")))
    switch = KillSwitch(broker.url, topic, keyring=KEYS, poll_s=0.2)
    assert switch.start_thread(wait=15) and switch.start_thread(wait=0)  # idempotent
    try:
        assert {c.target for c in switch.active()} == {"r-bad", "agent-bad"}

        @switch.protect(workflow="support-bot", run_id=arg("run_id"), agent_id=arg("task.agent"))
        def step(prompt: str, task: dict[str, str], run_id: str = "r-default") -> str:
            return f"{prompt} for {run_id}"

        @switch.protect(run_id=lambda *a, **kw: kw["run_id"])
        async def step_async(prompt: str, *, run_id: str) -> str:
            return prompt

        assert step("hi", {"agent": "a1"}, "r-good") == "hi for r-good"
        assert step("hi", {"agent": "a1"}) == "hi for r-default"
        assert step("hi", {}, run_id="r-good") == "hi for r-good"  # no agent: that scope is not checked
        for call in (lambda: step("hi", {"agent": "a1"}, "r-bad"), lambda: step("hi", task={"agent": "a1"},
                                                                                    run_id="r-bad"),
                     lambda: step("hi", {"agent": "agent-bad"}, "r-good")):
            with pytest.raises(SpendKilled, match="looping on search"):
                call()
        assert asyncio.run(step_async("hi", run_id="r-good")) == "hi"
        with pytest.raises(SpendKilled):
            asyncio.run(step_async("hi", run_id="r-bad"))
        with pytest.raises(TypeError, match="no argument 'run'"):
            switch.protect(run_id=arg("run"))(lambda run_id: None)
        with pytest.raises(TypeError, match="targets are workflow, agent_id and run_id"):
            switch.protect(run=arg("run_id"))  # type: ignore[arg-type]
    finally:
        switch.close()
        switch.close()


async def test_kill_expires_with_its_ttl(broker):
    topic, clock = new_topic(), [time.time()]
    await publish_command(broker.url, topic, kill("r-ttl", ttl=30, now=clock[0]))
    switch = KillSwitch(broker.url, topic, keyring=KEYS, poll_s=0.2, clock=lambda: clock[0])
    try:
        assert await switch.start()
        assert killed(switch, run_id="r-ttl")
        clock[0] += 31
        switch.check(run_id="r-ttl")
        assert switch.active() == []
    finally:
        await switch.stop()
    assert await read_active(broker.url, topic, KEYS, now=clock[0] - 31) != []


async def test_unreachable_control_plane_fails_open_by_default_and_closed_on_request(caplog):
    fail_open = KillSwitch("kafka://127.0.0.1:9", keyring=KEYS, poll_s=0.1)
    fail_closed = KillSwitch("kafka://127.0.0.1:9", keyring=KEYS, poll_s=0.1, fail_closed=True)
    try:
        assert not await fail_open.start(wait=0.3) and not await fail_closed.start(wait=0.3)
        with caplog.at_level(logging.WARNING, logger="spendwatch.guard"):
            caplog.clear()
            fail_open.check(run_id="r-1")
            fail_open.check(run_id="r-1")
        assert [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()] == [
            "spendwatch kill switch: control plane unreachable (spendwatch.control on kafka://127.0.0.1:9); "
            "allowing calls not already known to be killed (fail open)"]
        with pytest.raises(SpendKilled) as err:
            fail_closed.check(run_id="r-1")
        assert err.value.reason == "control plane unreachable"
    finally:
        await fail_open.stop()
        await fail_closed.stop()


# --- the CLI -----------------------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] = KEYS_ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spendwatch", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_cli_kill_status_release(broker, tmp_path):
    topic, alerts = new_topic(), new_topic()
    create_topic(broker.bootstrap, alerts, 2)
    for _ in range(2):  # one record per batch: Tansu reports a batch's end offset as its base offset + 1
        publish(broker.bootstrap, alerts, [(b"w", b"{}")])
    r = run_cli("kill", "--run", "r-cli", "--reason", "loop on search", "--ttl", "30m", "--alert", "al-9",
                "--broker", broker.url, "--topic", topic)
    assert r.returncode == 0, r.stderr
    undo = r.stdout.strip().splitlines()[-1].strip()
    assert undo == f"spendwatch release --run r-cli --broker {broker.url} --topic {topic}"
    assert "killed run_id r-cli until" in r.stdout and "(30m)" in r.stdout

    keys_file = tmp_path / "keys"
    keys_file.write_text("k1:secret-one\n")
    r = run_cli("status", "--broker", broker.url, "--topic", topic, "--alerts-topic", alerts,
                "--keys-file", str(keys_file), env={"SPENDWATCH_CONTROL_KEYS": "", "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "r-cli" in line)
    assert "loop on search" in row and "al-9" in row and "cli:" in row and ("30m" in row or "29.9m" in row)
    assert f"alerts published to {alerts} in the last hour: 2" in r.stdout

    r = run_cli(*shlex.split(undo)[1:])
    assert r.returncode == 0 and "released run_id r-cli" in r.stdout, r.stderr
    r = run_cli("status", "--broker", broker.url, "--topic", topic, "--alerts-topic", alerts)
    assert f"no active kills on {topic}" in r.stdout, r.stderr


@pytest.mark.parametrize("args,expected", [
    (["kill", "--reason", "x", "--broker", "kafka://127.0.0.1:9"],
     "one of the arguments --run --agent --workflow is required"),
    (["kill", "--run", "r", "--reason", "x", "--ttl", "5y", "--broker", "kafka://127.0.0.1:9"],
     "argument --ttl: '5y' is not a duration; use e.g. 90s, 30m, 1h, 2d"),
    (["kill", "--run", "r", "--reason", "x", "--ttl", "31d", "--broker", "kafka://127.0.0.1:9"],
     "must be more than 0 and at most 30d"),
    (["release", "--run", "r", "--agent", "a", "--broker", "kafka://127.0.0.1:9"], "not allowed with argument"),
    (["status", "--broker", "localhost"], "is not a broker address"),
])
def test_cli_bad_arguments(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_missing_keys_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("SPENDWATCH_CONTROL_KEYS", raising=False)
    assert main(["kill", "--run", "r", "--reason", "x", "--broker", "kafka://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == ("spendwatch: error: no control keys configured: set "
                                       "SPENDWATCH_CONTROL_KEYS=kid:secret or --keys-file\n")


def test_cli_unreachable_broker_is_one_line():
    r = run_cli("release", "--workflow", "w", "--broker", "kafka://127.0.0.1:9")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("spendwatch: error: cannot use the control topic on kafka://127.0.0.1:9")


# --- response policy ---------------------------------------------------------------------------------

def alert(kind: str = "loop", **kw) -> Alert:  # type: ignore[no-untyped-def]
    fields = {"alert_id": "a1", "kind": kind, "severity": "critical", "workflow": "support", "ts": 0.0,
              "summary": "s", "run_id": "r-7", "agent_id": "ag-1", "evidence": {"usd": 12.5, "confidence": 0.9}}
    return Alert(**{**fields, **kw})


def test_default_policy_is_safe():
    cfg = PolicyConfig()
    assert decide(alert(), cfg).action == "shadow" and decide(alert(), cfg).target == "r-7"
    no_run = decide(alert(run_id=None), cfg)
    assert (no_run.action, no_run.scope, no_run.target) == ("shadow", "agent_id", "ag-1")
    assert decide(alert("zombie", run_id=None), cfg).scope == "agent_id"
    assert decide(alert("spike"), cfg).action == "notify"
    assert decide(alert(status="resolved"), cfg).reason == "alert resolved"


def test_policy_kill_and_its_downgrades():
    rule = PolicyRule(kind="loop", action="kill", kill_scope="run_id", min_usd_burned=5, min_confidence=0.8,
                      ttl_s=1800)
    cfg = PolicyConfig(rules=[PolicyRule(kind="loop", workflow="sandbox", action="warn"), rule],
                       allowlist=["workflow:payments", "agent_id:ag-vip"])
    d = decide(alert(), cfg)
    assert (d.action, d.scope, d.target, d.ttl_s) == ("kill", "run_id", "r-7", 1800)
    assert d.reason == "rule 2: kill run_id r-7"
    out = apply_decision(alert(), d)
    assert out.action == "kill" and out.undo == "spendwatch release --run r-7 --broker $SPENDWATCH_BROKER"
    assert decide(alert(workflow="sandbox"), cfg).action == "warn"
    for changed, why in [({"workflow": "payments"}, "workflow:payments is allowlisted"),
                         ({"agent_id": "ag-vip"}, "agent_id:ag-vip is allowlisted"),
                         ({"evidence": {"spent_usd": 0.4}}, "$0.4000 burned < min $5.00"),
                         ({"evidence": {"usd_burned": 50, "confidence": 0.5}}, "confidence 0.50 < min 0.80")]:
        d = decide(alert(**changed), cfg)
        assert d.action == "shadow" and d.reason == f"rule 2: would kill run_id r-7 but {why}"
        assert apply_decision(alert(**changed), d).undo is None
    notified = apply_decision(alert("spike"), decide(alert("spike"), cfg))
    assert (notified.action, notified.undo) == ("none", None)


@pytest.mark.parametrize("config,expected", [
    ({"rules": [{"kind": "loop", "action": "kill"}]}, "kill_scope is required"),
    ({"rules": [{"kind": "lopo"}]}, "rules.0.kind"),
    ({"allowlist": ["payments"]}, "must be one of workflow, team, agent_id, run_id"),
])
def test_bad_policy_config(config, expected):
    with pytest.raises(ValidationError, match=expected):
        PolicyConfig.model_validate(config)
