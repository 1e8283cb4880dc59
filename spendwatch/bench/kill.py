"""Kill latency: from the call that makes a loop evident to `SpendKilled` in the agent runtime.

A simulated agent runtime guards every LLM call with a `KillSwitch`, then
starts repeating one failing action; the worker detects the loop, the policy
kills the run, and the guard raises. Used by `spendwatch bench --kill` and the
end-to-end test.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from aiokafka import AIOKafkaProducer

from spendwatch.emitter import bootstrap_of
from spendwatch.guard import KillSwitch, SpendKilled


def _call(run: str, step: int, fp: str) -> bytes:
    return orjson.dumps({"type": "usage", "event_id": uuid.uuid4().hex, "ts": time.time(), "workflow": "agents",
                         "team": "eng", "model": "gpt-4o", "agent_id": f"agent-{run}", "run_id": run,
                         "step": step, "input_tokens": 5000 + 600 * step, "output_tokens": 250, "fingerprint": fp,
                         "status": "error" if fp == "pytest -x" else "ok"})


async def kill_trial(switch: KillSwitch, broker: str, topic: str = "spendwatch.usage", every: float = 0.5,
                     timeout: float = 30.0) -> tuple[str, float]:
    """Run one looping agent until the guard stops it; (run id, seconds from evident step to SpendKilled)."""
    run = f"run-{uuid.uuid4().hex[:10]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_of(broker))
    await producer.start()
    evident = None
    try:
        plan = ["ls", "cat app.py", "edit app.py"] + ["pytest -x"] * 1000
        deadline = time.monotonic() + timeout
        for step, fp in enumerate(plan, 1):
            try:
                switch.check(workflow="agents", run_id=run)
            except SpendKilled:
                assert evident is not None
                return run, time.monotonic() - evident
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run} was not killed within {timeout:.0f}s")
            await producer.send_and_wait(topic, _call(run, step, fp), key=b"agents")
            if step == 6 and evident is None:  # the third failing repeat: the detector's evident point
                evident = time.monotonic()
            await asyncio.sleep(every)
    finally:
        await producer.stop()
    raise AssertionError("unreachable")


def run_kill_bench(trials: int = 20) -> dict[str, float]:
    """Kill latency over `trials` looping runs against a real worker on the embedded broker."""
    import os
    import secrets
    import statistics

    from schemas.signing import KEYS_ENV, Keyring
    from spendwatch.bench.load import make_load, publish
    from spendwatch.bench.run import Workers
    from streams.broker import EmbeddedBroker

    os.environ.setdefault(KEYS_ENV, f"bench:{secrets.token_hex(16)}")
    cfg = '[[policy.rules]]\nkind = "loop"\naction = "kill"\nkill_scope = "run_id"\nttl_s = 600\n'

    async def trials_on(broker: EmbeddedBroker) -> list[float]:
        switch = KillSwitch(broker.url, keyring=Keyring.load())
        await switch.start(wait=10)
        try:
            return [(await kill_trial(switch, broker.url))[1] for _ in range(trials)]
        finally:
            await switch.stop()

    with EmbeddedBroker() as broker:
        workers = Workers(broker, config=cfg)
        try:
            asyncio.run(publish(broker.bootstrap, "spendwatch.usage", make_load(1, 1).records))
            workers.wait_for(1, timeout=120)
            lat = sorted(asyncio.run(trials_on(broker)))
        finally:
            workers.stop()
    return {"trials": len(lat), "p50_s": round(statistics.median(lat), 3),
            "p95_s": round(statistics.quantiles(lat, n=20)[18], 3), "max_s": round(lat[-1], 3)}
