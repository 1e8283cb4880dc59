"""Detect → decide → kill → guard raises → release: end to end on the embedded broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.signing import Keyring, make_command
from spendwatch.bench.kill import kill_trial
from spendwatch.control import publish_command
from spendwatch.guard import KillSwitch, SpendKilled
from tests.conftest import start_worker

KEYS = "k1:0123456789abcdef0123456789abcdef"


def test_looping_run_is_killed_in_the_runtime_and_release_lets_it_go_on(broker, spawn, tmp_path, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_CONTROL_KEYS", KEYS)
    cfg = tmp_path / "policy.toml"
    cfg.write_text('[[policy.rules]]\nkind = "loop"\naction = "kill"\nkill_scope = "run_id"\nttl_s = 600\n')
    start_worker(spawn, broker, "--config", str(cfg), env={"SPENDWATCH_CONTROL_KEYS": KEYS})

    async def scenario() -> list[float]:
        keyring = Keyring.load()
        switch = KillSwitch(broker.url, keyring=keyring)
        assert await switch.start(wait=10)
        try:
            latencies = []
            for _ in range(3):
                run, latency = await kill_trial(switch, broker.url)
                latencies.append(latency)
            with pytest.raises(SpendKilled) as stop:
                switch.check(run_id=run)
            assert stop.value.alert_id == f"loop:agents:{run}" and "repeated" in stop.value.reason
            await publish_command(broker.url, "spendwatch.control", make_command(
                "release", "run_id", run, "fixed", 600, "test", keyring=keyring))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    switch.check(run_id=run)
                    break
                except SpendKilled:
                    await asyncio.sleep(0.1)
            switch.check(run_id=run)  # calls flow again
            return latencies
        finally:
            await switch.stop()

    latencies = asyncio.run(scenario())
    print("event-to-SpendKilled latencies:", [f"{x:.2f}s" for x in latencies])
    assert max(latencies) <= 5.0


def test_ed25519_kill_from_the_cli_stops_a_guard_holding_only_the_public_key(broker, tmp_path, capsys):
    """`spendwatch keys generate` → `spendwatch kill` signs with the private key → a guard with the public key
    alone raises SpendKilled; a command forged by a runtime (holding the public key) is ignored."""
    import uuid

    from spendwatch.cli import main

    topic = f"control-{uuid.uuid4().hex[:8]}"
    assert main(["keys", "generate", "--out", str(tmp_path), "--kid", "ops", "--workflows", "support"]) == 0
    guard_keys = Keyring.load(tmp_path / "ops.pub")
    switch = KillSwitch(broker.url, topic, keyring=guard_keys, poll_s=0.2)
    assert switch.start_thread(wait=10)
    try:
        run = ["--broker", broker.url, "--topic", topic, "--keys-file", str(tmp_path / "ops.key")]
        assert main(["kill", "--run", "r-ed", "--of-workflow", "support", "--reason", "loop", *run]) == 0
        assert "signed with key ops" in capsys.readouterr().out
        # a compromised runtime tries: an HMAC command under the key's id (checked as Ed25519: the key decides)
        forged = make_command("kill", "workflow", "billing", "forged", 600, "evil",
                              keyring=Keyring({"ops": b"public key bytes"}))
        asyncio.run(publish_command(broker.url, topic, forged))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (switch.rejected and switch.kills.latest):
            time.sleep(0.05)
        with pytest.raises(SpendKilled, match="loop"):
            switch.check(workflow="support", run_id="r-ed")
        switch.check(workflow="billing", run_id="r-other")  # the forged kill stops nothing
        assert switch.rejected == {"bad signature": 1}
        assert main(["release", "--run", "r-ed", "--of-workflow", "support", *run]) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and switch.kills.find([("run_id", "r-ed")], time.time(), "support"):
            time.sleep(0.05)
        switch.check(workflow="support", run_id="r-ed")  # released
    finally:
        switch.close()
