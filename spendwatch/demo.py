"""`spendwatch demo`: embedded broker + worker + built-in traffic + live console.

The traffic is a handful of workflows, teams and models with realistic token
sizes; one workflow has a small daily budget so a budget alert fires within
the first minute. A few duplicates and malformed records show dedup and the
dead-letter topic at work.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from detectors.engine.budgets import Budget
from detectors.engine.counters import CALLS, COST, ERRORS
from detectors.policy import PolicyConfig, PolicyRule
from detectors.pricing.money import fmt_usd
from schemas.signing import KEYS_ENV, Keyring, make_command
from spendwatch.config import Settings
from spendwatch.control import publish_command
from spendwatch.guard import KillSwitch, SpendKilled
from streams.app import Worker


@dataclass(frozen=True)
class Profile:
    workflow: str
    team: str
    models: tuple[tuple[str, str], ...]  # (provider, model)
    rate: float  # calls per second
    prompt: tuple[int, int]  # log-uniform range of input tokens
    completion: tuple[int, int]
    agents: int = 3
    outcome: tuple[str, float, float | None] | None = None
    """(name, outcomes per call, value in USD or None): what the workflow's work produces."""


PROFILES = (
    Profile("support-bot", "cx", (("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-4o-mini")), 12, (2_000, 30_000),
            (150, 900), outcome=("ticket_resolved", 1 / 8, 6.0)),
    Profile("code-review", "eng", (("openai", "gpt-4o"),), 4, (8_000, 60_000), (300, 2_000),
            outcome=("review_posted", 1 / 5, None)),
    Profile("rag-search", "search", (("google", "gemini-2.5-flash"),), 20, (3_000, 20_000), (50, 400),
            outcome=("answer_accepted", 1 / 3, None)),  # big retrieved contexts, never cached: a caching lever
    Profile("ticket-tagger", "cx", (("openai", "gpt-4o"),), 6, (200, 1_200), (2, 30),
            outcome=("ticket_tagged", 1.0, None)),  # one-line labels from a frontier model: a right-sizing lever
    Profile("sales-agent", "growth", (("openai", "gpt-4.1"), ("openai", "gpt-4.1-mini")), 3, (3_000, 20_000),
            (200, 1_200), outcome=("meeting_booked", 1 / 40, 120.0)),
)


def demo_settings(base: Settings) -> Settings:
    """Demo budgets small enough to cross within a minute, and a policy that really kills loops and
    zombies (signed with a throwaway demo key), unless the config sets its own."""
    if base.policy == PolicyConfig():
        base.policy = PolicyConfig(rules=[
            PolicyRule(kind="loop", action="kill", kill_scope="run_id", ttl_s=600),
            PolicyRule(kind="zombie", action="kill", kill_scope="agent_id", ttl_s=600),
        ])
        os.environ.setdefault(KEYS_ENV, f"demo:{secrets.token_hex(16)}")
    if not base.budgets.workflows and not base.budgets.teams:
        base.budgets.workflows = {"support-bot": Budget(daily_usd=8.0, monthly_usd=200.0),
                                  "code-review": Budget(daily_usd=40.0)}
        base.budgets.teams = {"search": Budget(daily_usd=10.0)}
    return base


def _loguniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(lo * (hi / lo) ** rng.random())


def make_event(rng: random.Random, p: Profile, now: float) -> dict[str, Any]:
    provider, model = rng.choice(p.models)
    prompt = _loguniform(rng, *p.prompt)
    cached = int(prompt * rng.uniform(0.0, 0.6)) if provider != "google" else 0
    agent = rng.randrange(p.agents)
    return {
        "type": "usage", "event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "ts": now, "workflow": p.workflow,
        "team": p.team, "provider": provider, "model": model, "input_tokens": prompt,
        "output_tokens": _loguniform(rng, *p.completion), "cache_read_tokens": cached,
        "agent_id": f"{p.workflow}-agent-{agent}", "run_id": f"{p.workflow}-run-{int(now // 30)}-{agent}",
        "status": "error" if rng.random() < 0.02 else "ok", "latency_ms": rng.uniform(300, 9000),
    }


def make_outcome(rng: random.Random, workflow: str, name: str, value: float | None, now: float) -> dict[str, Any]:
    ev = {"type": "outcome", "event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "ts": now, "workflow": workflow,
          "outcome": name}
    return ev if value is None else {**ev, "value_usd": value}


async def produce_traffic(worker: Worker, seed: int = 7, speed: float = 1.0) -> None:
    """Publish live traffic through the worker's own producer until cancelled."""
    rng = random.Random(seed)
    topic = worker.usage
    tick = 0.25
    while True:
        now = time.time()
        sent: list[dict[str, Any]] = []
        for p in PROFILES:
            n = int(p.rate * tick * speed + rng.random())
            batch = [make_event(rng, p, now) for _ in range(n)]
            if p.outcome is not None:
                name, per_call, value = p.outcome
                batch += [make_outcome(rng, p.workflow, name, value, now) for _ in range(n) if rng.random() < per_call]
            if batch:
                await topic.send(key=p.workflow.encode(), value=orjson.dumps(batch))
                sent.extend(batch)
        if sent and rng.random() < 0.05:  # an SDK retry: the same events again
            dup = sent[:3]
            await topic.send(key=dup[0]["workflow"].encode(), value=orjson.dumps(dup))
        if rng.random() < 0.02:  # a broken publisher
            await topic.send(key=b"support-bot", value=b'{"type":"usage","event_id":"x","input_tokens":-5}')
        await asyncio.sleep(tick)


def _call(workflow: str, team: str, agent: str, run: str, step: int, fingerprint: str | None, prompt: int,
          status: str = "ok") -> dict[str, Any]:
    return {"type": "usage", "event_id": uuid.uuid4().hex, "ts": time.time(), "workflow": workflow, "team": team,
            "provider": "openai", "model": "gpt-4o", "agent_id": agent, "run_id": run, "step": step,
            "input_tokens": prompt, "output_tokens": 350, "fingerprint": fingerprint, "status": status}


async def inject_incidents(worker: Worker) -> None:
    """A coding agent that gets stuck re-running the same failing tests (a loop) until the kill
    switch stops it, is released by "on-call" and then finishes; and a triage agent that keeps
    calling the model after its ticket was resolved (a zombie)."""
    console = Console()
    switch = KillSwitch(worker.broker, worker.control_topic, keyring=Keyring.load(), security=worker.kafka)
    await switch.start()
    asyncio.ensure_future(_zombie(worker))
    await asyncio.sleep(10)
    run = "fix-billing-1187"
    plan = ["ls -R", "cat src/billing.py", "edit src/billing.py", "pytest tests/test_billing.py"]
    step = 0
    while step < 60:
        step += 1
        fp = plan[step - 1] if step <= len(plan) else "pytest tests/test_billing.py"
        try:
            switch.check(workflow="code-agent", agent_id="coder-1", run_id=run)
        except SpendKilled as stop:
            console.print(f"[bold red]coder-1 stopped by the kill switch[/] before step {step}: {stop}")
            await asyncio.sleep(15)
            await publish_command(worker.broker, worker.control_topic, make_command(
                "release", "run_id", run, "on-call: fixed the flaky test, resume", 600, "demo:on-call",
                keyring=Keyring.load()), security=worker.kafka)
            console.print(f"[green]on-call released run {run}[/] (spendwatch release --run {run})")
            while True:
                await asyncio.sleep(0.5)
                try:
                    switch.check(run_id=run)
                    break
                except SpendKilled:
                    continue
            plan = plan + ["edit tests/test_billing.py", "pytest tests/test_billing.py -k fixed", "git commit"]
            for extra, fp2 in enumerate(plan[4:], step):
                await worker.usage.send(key=b"code-agent", value=orjson.dumps(
                    _call("code-agent", "eng", "coder-1", run, extra, fp2, 9_000)))
                await asyncio.sleep(1.0)
            console.print(f"[green]coder-1 finished run {run} after the release[/]")
            break
        ev = _call("code-agent", "eng", "coder-1", run, step, fp, 6_000 + 900 * step,
                   "error" if step > len(plan) else "ok")
        await worker.usage.send(key=b"code-agent", value=orjson.dumps(ev))
        await asyncio.sleep(1.0)
    await switch.stop()


async def _zombie(worker: Worker) -> None:
    topic = worker.usage
    for step in range(1, 4):
        ev = _call("triage", "cx", "triage-bot-3", "ticket-5521", step, f"step-{step}", 4_000)
        await topic.send(key=b"triage", value=orjson.dumps(ev))
        await asyncio.sleep(1.0)
    done = {"type": "outcome", "event_id": uuid.uuid4().hex, "ts": time.time(), "workflow": "triage",
            "outcome": "resolved", "agent_id": "triage-bot-3", "run_id": "ticket-5521"}
    await topic.send(key=b"triage", value=orjson.dumps(done))
    for step in range(4, 400):  # the ticket is closed, the agent is not
        await asyncio.sleep(5.0)
        ev = _call("triage", "cx", "triage-bot-3", "ticket-5521", step, "poll inbox", 4_000)
        await topic.send(key=b"triage", value=orjson.dumps(ev))


def summary_table(worker: Worker, started: float) -> Table:
    """Live spend per workflow: today, last minute, last hour, calls, errors."""
    mon = worker.monitor
    table = Table(title="spendwatch — live spend (event time)", expand=False)
    for col in ("workflow", "team", "today", "last 1 min", "last 1 h", "calls", "errors", "top model"):
        table.add_column(col, justify="right" if col not in ("workflow", "team", "top model") else "left")
    for name in sorted(mon.workflows):
        st = mon.workflows[name]
        day, _ = mon.clock.keys(st.watermark)
        today = st.totals(day)
        top = st.top("model", day, 1)
        table.add_row(name, ", ".join(st.by["team"]) or "—", fmt_usd(today[COST]),
                      fmt_usd(st.spend.window("1m", st.watermark)),
                      fmt_usd(st.spend.window("1h", st.watermark)),
                      f"{today[CALLS]:,}", f"{today[ERRORS]:,}", top[0][0] if top else "—")
    s = worker.stats
    elapsed = max(time.time() - started, 1e-9)
    alerts = ", ".join(f"{k}: {v}" for k, v in sorted(s.alerts.items())) or "none yet"
    table.caption = (f"{s.accepted:,} events ({s.accepted / elapsed:,.0f}/s) · {s.duplicates} duplicates dropped · "
                     f"{s.deadletters} dead-lettered · alerts: {alerts}")
    return table
