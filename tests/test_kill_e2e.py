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
