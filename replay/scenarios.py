"""Labelled synthetic traffic: normal workloads, injected incidents, and hard negatives.

`generate` gives wire-contract event dicts sorted by `ts` and one label per
injected incident, so a detector change can be scored (recall, precision, time
to detect, false alarms) before it ships. The traffic is built to be hard in
the ways real traffic is: diurnal load with morning and afternoon peaks,
gradual growth, agent runs whose context grows with every step and whose
lengths are heavy-tailed, legitimate polls (the same action 2–8 times in a
row, its answer changing or, while the agent waits, the same until the last
poll), long productive runs, and always-on agents whose outcomes arrive at random.

Incident labels are `{kind, type, subject, id, workflow, start, end}` (plus
`start_step` for loops): `kind` is the alert kind expected (`loop`, `spike`,
`zombie`), `subject` names the alert field that identifies it (`run_id`,
`agent_id` or `workflow`) and `id` its value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

START = datetime(2025, 3, 3, tzinfo=UTC).timestamp()
"""A Monday, 00:00 UTC: scenarios start at midnight so the first hours are the quiet ones."""
DAY = 86_400.0
MODELS = (
    ("openai", "gpt-4o-mini"), ("openai", "gpt-4.1-mini"), ("openai", "gpt-4.1"),
    ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-haiku-4-5"), ("google", "gemini-2.5-flash"),
)
NAMES = {
    "chat": ("support-chat", "rag-search", "summarize", "translate", "classify"),
    "agent": ("code-agent", "triage-agent", "research-agent", "data-agent", "sre-agent"),
    "always_on": ("inbox-watcher", "ops-monitor", "crm-enricher", "feed-curator"),
}
KIND_CYCLE = ("chat", "agent", "agent", "always_on", "chat", "agent", "chat", "agent", "always_on", "chat")
INCIDENTS_PER_DAY = {  # per 10 workflows
    "fingerprint_loop": 4, "ping_pong": 2, "silent_loop": 3,
    "retry_storm": 1, "traffic_surge": 1, "context_bloat": 1,
    "zombie_no_outcome": 1, "zombie_after_end": 1,
}
POLL_P, POLL_MIN, POLL_MAX, WAIT_P = 0.35, 2, 8, 0.4
"""A run polls (re-runs its previous action 1–7 more times: CI, a deploy, a queue, a page still loading)
with probability POLL_P; WAIT_P of the polls get the same answer until the last one."""
RUN_CONTEXT_CAP = 120_000
"""Agents condense their history near the model window: context drops back to CONDENSED."""
CONDENSED = 30_000


@dataclass
class Workflow:
    """One workflow's traffic profile, drawn from the seed."""

    name: str
    kind: str  # chat | agent | always_on
    team: str
    provider: str
    model: str
    peak: float  # chat: calls/min, agent: runs/min at the daily peak
    floor: float  # night load as a fraction of the peak
    peaks: tuple[tuple[float, float, float], ...]  # (hour, width h, height) of daily bumps
    growth: float  # relative load growth per day
    prompt: float  # median input tokens (chat), system prompt (agent)
    completion: float  # median output tokens
    error_rate: float
    fingerprints: bool = True  # agents: does the runtime send action fingerprints?
    observations: bool = False  # agents with fingerprints: and a hash of each action's result?
    steps: float = 12.0  # agents: median steps per run
    gap: float = 5.0  # agents: median seconds between steps
    observation: float = 700.0  # agents: median tokens an observation adds to the context
    agents: list[str] = field(default_factory=list)
    # per-minute incident multipliers, filled in by the incident planner
    calls_x: dict[int, float] = field(default_factory=dict)
    prompt_x: dict[int, float] = field(default_factory=dict)
    errors_p: dict[int, float] = field(default_factory=dict)

    def load(self, t: np.ndarray, start: float) -> np.ndarray:
        """Relative load at times `t`: floor + daily bumps, times gradual growth."""
        hour = (t % DAY) / 3600.0
        bumps = np.zeros_like(t)
        for center, width, height in self.peaks:
            d = np.abs(hour - center)
            d = np.minimum(d, 24.0 - d)
            bumps = np.maximum(bumps, height * np.exp(-0.5 * (d / width) ** 2))
        return (self.floor + (1.0 - self.floor) * bumps) * (1.0 + self.growth * (t - start) / DAY)


class _Gen:
    """Builds events for one scenario; all randomness comes from one seeded numpy Generator."""

    def __init__(self, seed: int, start: float, days: float):
        self.rng = np.random.default_rng(seed)
        self.hashes = np.random.default_rng([seed, 1])  # observations: their own stream leaves the rest as it was
        self.seed = seed
        self.start, self.end = start, start + days * DAY
        self.events: list[dict[str, Any]] = []
        self.labels: list[dict[str, Any]] = []
        self.n = 0
        self.runs = 0

    # -- primitives --------------------------------------------------------------------

    def _id(self) -> str:
        self.n += 1
        return f"s{self.seed}-{self.n}"

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * float(self.rng.standard_normal()))

    def usage(self, wf: Workflow, ts: float, input_tokens: int, output_tokens: int, *, cached: int = 0,
              status: str = "ok", agent: str | None = None, run: str | None = None, step: int | None = None,
              fingerprint: str | None = None, observation: str | None = None) -> None:
        ev: dict[str, Any] = {
            "type": "usage", "event_id": self._id(), "ts": round(ts, 3), "workflow": wf.name, "team": wf.team,
            "provider": wf.provider, "model": wf.model, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "cache_read_tokens": cached, "status": status,
        }
        if agent is not None:
            ev["agent_id"] = agent
        if run is not None:
            ev["run_id"], ev["step"] = run, step
        if fingerprint is not None:
            ev["fingerprint"] = fingerprint
        if observation is not None:
            ev["observation"] = observation
        self.events.append(ev)

    def outcome(self, wf: Workflow, ts: float, agent: str | None, run: str | None, name: str = "resolved") -> None:
        ev: dict[str, Any] = {"type": "outcome", "event_id": self._id(), "ts": round(ts, 3), "workflow": wf.name,
                              "outcome": name, "value_usd": round(float(self.rng.uniform(0.5, 5.0)), 2)}
        if agent is not None:
            ev["agent_id"] = agent
        if run is not None:
            ev["run_id"] = run
        self.events.append(ev)

    def fp(self) -> str:
        return f"{int(self.rng.integers(0, 2**32)):08x}"

    def answer(self) -> str:
        """An observation's hash."""
        return f"{int(self.hashes.integers(0, 2**32)):08x}"

    def label(self, kind: str, type_: str, subject: str, id_: str, wf: Workflow, start: float, end: float,
              **extra: Any) -> None:
        self.labels.append({"kind": kind, "type": type_, "subject": subject, "id": id_, "workflow": wf.name,
                            "start": round(start, 3), "end": round(end, 3), **extra})

    def minutes(self, wf: Workflow, rate_per_min: float) -> tuple[np.ndarray, np.ndarray]:
        """Poisson arrivals per minute at `rate_per_min` × load × incident multiplier: (times, minute index)."""
        m0 = np.arange(int((self.end - self.start) // 60))
        t = self.start + m0 * 60.0
        lam = rate_per_min * wf.load(t + 30.0, self.start)
        for m, x in wf.calls_x.items():
            lam[m] *= x
        counts = self.rng.poisson(lam)
        idx = np.repeat(m0, counts)
        times = self.start + idx * 60.0 + self.rng.uniform(0.0, 60.0, len(idx))
        return times, idx

    # -- workloads -----------------------------------------------------------------------

    def chat(self, wf: Workflow) -> None:
        times, idx = self.minutes(wf, wf.peak)
        n = len(times)
        prompt = wf.prompt * np.exp(0.6 * self.rng.standard_normal(n))
        completion = wf.completion * np.exp(0.6 * self.rng.standard_normal(n))
        cache = self.rng.uniform(0.0, 0.5, n) if wf.provider != "google" else np.zeros(n)
        err_u = self.rng.random(n)
        for i in range(n):
            m = int(idx[i])
            p = int(prompt[i] * wf.prompt_x.get(m, 1.0)) + 50
            err = err_u[i] < wf.errors_p.get(m, wf.error_rate)
            self.usage(wf, float(times[i]), p, 0 if err else int(completion[i]) + 1,
                       cached=int(p * cache[i]), status="error" if err else "ok",
                       agent=f"{wf.name}-pod{m % 3}")

    def agent_runs(self, wf: Workflow) -> None:
        times, idx = self.minutes(wf, wf.peak)
        for t, m in zip(times.tolist(), idx.tolist()):
            self.run(wf, t, prompt_x=wf.prompt_x.get(m, 1.0), error_p=wf.errors_p.get(m, wf.error_rate))

    def run(self, wf: Workflow, t: float, *, steps: int | None = None, loop: str | None = None,
            loop_at: int = 0, loop_steps: int = 0, prompt_x: float = 1.0, error_p: float | None = None,
            outcome: bool | None = None, agent: str | None = None) -> tuple[str, str, float, int]:
        """One agentic run from `t`; returns (run_id, agent, end ts, steps). A `loop`
        (`same`, `same_error`, `ping_pong`, `silent`, `echo`) starts after step `loop_at`
        and lasts `loop_steps` steps, then the run is killed by its cost cap. A stuck agent's repeated
        action gets the same observation every time; a polling one's changes, at the latest when
        the wait is over."""
        rng = self.rng
        self.runs += 1
        run = f"{wf.name}-r{self.seed}-{self.runs}"
        agent = agent or wf.agents[int(rng.integers(len(wf.agents)))]
        error_p = wf.error_rate if error_p is None else error_p
        if steps is None:
            steps = max(2, round(self.lognormal(wf.steps, 0.45)))
            if rng.random() < 0.04:  # hard negative: a long productive run that ends in an outcome
                steps = int(wf.steps * rng.uniform(2.5, 4.0))  # real SWE-agent runs: max ≈ 4× the median
                outcome = True
        total = loop_at + loop_steps if loop else steps
        poll_at = int(rng.integers(2, max(3, total))) if rng.random() < POLL_P else -1
        poll_n = int(rng.integers(POLL_MIN, POLL_MAX + 1))  # the action runs 2–8 times in a row
        waiting = self.hashes.random() < WAIT_P  # the same answer until the last poll, else a changing one
        cacheable = wf.provider != "google"
        ctx = int(self.lognormal(wf.prompt, 0.3) * prompt_x)
        history: list[str] = []
        loop_fps = (self.fp(), self.fp())
        loop_answers = (self.answer(), self.answer())
        wait_answer = self.answer()
        echo_out = int(self.lognormal(wf.completion, 0.5)) + 20
        ts, prev_input, step = t, 0, 0
        for k in range(1, total + 1):
            ts += self.lognormal(wf.gap, 0.5)
            in_loop = loop is not None and k > loop_at
            fp: str | None
            answer = self.answer()
            if in_loop and loop in ("same", "same_error"):
                fp, answer = loop_fps[0], loop_answers[0]
            elif in_loop and loop == "ping_pong":
                fp, answer = loop_fps[(k - loop_at) % 2], loop_answers[(k - loop_at) % 2]
            elif 0 < poll_at < k < poll_at + poll_n:
                fp = history[-1]  # hard negative: a legitimate poll of the previous step's action
                answer = wait_answer if waiting and k < poll_at + poll_n - 1 else answer
            elif history and rng.random() < 0.12:
                fp = history[int(rng.integers(len(history)))]  # e.g. re-running the tests, not twice in a row
                fp = fp if fp != history[-1] else self.fp()
            else:
                fp = self.fp()
            if k == poll_at and waiting and not in_loop:
                answer = wait_answer
            history.append(fp)
            if rng.random() < error_p:  # a transient API error, retried: no action, same step
                self.usage(wf, ts, ctx, 0, status="error", agent=agent, run=run, step=step + 1)
                ts += self.lognormal(2.0, 0.5)
            step += 1
            out = echo_out if in_loop and loop == "echo" else int(self.lognormal(wf.completion, 0.7)) + 1
            status = "error" if in_loop and loop == "same_error" else "ok"
            cached = min(prev_input, ctx) if cacheable else 0
            self.usage(wf, ts, ctx, out, cached=cached, status=status, agent=agent, run=run, step=step,
                       fingerprint=fp if wf.fingerprints else None, observation=answer if wf.observations else None)
            prev_input = ctx
            looping = in_loop and loop in ("same", "same_error", "echo")
            obs = 300 if looping else int(self.lognormal(wf.observation, 0.8))
            obs = int(obs * prompt_x)  # context bloat: prompts and tool outputs both grow
            ctx += out + obs
            if ctx > RUN_CONTEXT_CAP:
                ctx, prev_input = CONDENSED, 0
        if outcome is None:
            outcome = loop is None and rng.random() < 0.75
        if outcome:
            ts += float(rng.uniform(0.2, 2.0))
            self.outcome(wf, ts, agent, run)
        return run, agent, ts, step

    def always_on(self, wf: Workflow, silence: dict[str, tuple[float, float]]) -> None:
        """Agents that call steadily and emit outcomes at random (Poisson); `silence`
        maps a zombie agent to the window in which its outcomes stop."""
        for agent in wf.agents:
            every = float(self.rng.uniform(30.0, 90.0))
            mean_gap = float(self.rng.uniform(300.0, 1200.0))
            quiet = silence.get(agent)
            t = self.start + float(self.rng.uniform(0, every))
            while t < self.end:
                self.usage(wf, t, int(self.lognormal(wf.prompt, 0.4)), int(self.lognormal(wf.completion, 0.5)) + 1,
                           agent=agent, status="error" if self.rng.random() < wf.error_rate else "ok")
                t += self.lognormal(every, 0.3)
            t = self.start + float(self.rng.exponential(mean_gap))
            while t < self.end:
                if quiet is None or not quiet[0] <= t < quiet[1]:
                    self.outcome(wf, t, agent, None, name="item_done")
                t += float(self.rng.exponential(mean_gap))

    # -- profiles and incidents ----------------------------------------------------------------

    def workflows(self, count: int) -> list[Workflow]:
        rng = self.rng
        out = []
        used: dict[str, int] = {}
        for i in range(count):
            kind = KIND_CYCLE[i % len(KIND_CYCLE)]
            base = NAMES[kind][int(rng.integers(len(NAMES[kind])))]
            used[base] = used.get(base, 0) + 1
            provider, model = MODELS[int(rng.integers(len(MODELS)))]
            peaks = ((float(rng.uniform(9, 11)), float(rng.uniform(1.5, 2.5)), 1.0),
                     (float(rng.uniform(14, 16)), float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.7, 1.0))))
            wf = Workflow(
                name=f"{base}-{used[base]}", kind=kind, team=("cx", "eng", "search", "growth", "ops")[i % 5],
                provider=provider, model=model,
                peak={"chat": float(rng.uniform(5, 40)), "agent": float(rng.uniform(0.4, 1.5)), "always_on": 0.0}[kind],
                floor=float(rng.uniform(0.1, 0.3)), peaks=peaks,
                growth=float(rng.choice([0.0, 0.0, rng.uniform(0.2, 0.6)])),
                prompt=float(rng.uniform(1500, 8000)), completion=float(rng.uniform(120, 400)),
                error_rate=float(rng.uniform(0.003, 0.02)),
                fingerprints=kind == "agent" and bool(i % 3 != 2), observations=kind == "agent" and i % 12 == 1,
                steps=float(rng.uniform(8, 20)), gap=float(rng.uniform(3, 8)),
                observation=float(rng.uniform(400, 1200)),
            )
            n_agents = int(rng.integers(3, 7)) if kind == "always_on" else int(rng.integers(4, 9))
            wf.agents = [f"{wf.name}-a{k}" for k in range(n_agents)]
            out.append(wf)
        return out

    def when(self, warmup: float, duration: float) -> float:
        return float(self.rng.uniform(self.start + warmup, self.end - duration - 600.0))

    def spike(self, wf: Workflow, type_: str, warmup: float) -> None:
        """Plan a workflow-level incident: per-minute multipliers applied while generating."""
        rng = self.rng
        dur = float(rng.uniform(10, 40)) * 60.0
        t0 = self.when(warmup, dur)
        m0, m1 = int((t0 - self.start) // 60), int((t0 + dur - self.start) // 60)
        x = float(rng.uniform(3, 8)) if type_ == "traffic_surge" else float(rng.uniform(2, 4))
        bloat = float(rng.uniform(3, 6))
        storm_p = float(rng.uniform(0.4, 0.7))
        for m in range(m0, m1):
            if type_ in ("traffic_surge", "retry_storm"):
                wf.calls_x[m] = x
            if type_ == "retry_storm":
                wf.errors_p[m] = storm_p
            if type_ == "context_bloat":
                wf.prompt_x[m] = bloat
        self.label("spike", type_, "workflow", wf.name, wf, self.start + m0 * 60.0, self.start + m1 * 60.0)

    def loop(self, wf: Workflow, type_: str, warmup: float) -> None:
        rng = self.rng
        loop_at = int(rng.integers(3, 11))
        if type_ == "silent_loop":
            mode = "echo" if rng.random() < 1 / 3 else "silent"
            loop_steps = int(rng.integers(150, 400))
        else:
            mode = "ping_pong" if type_ == "ping_pong" else ("same_error" if rng.random() < 0.4 else "same")
            loop_steps = int(rng.integers(25, 80))
        t0 = self.when(warmup, (loop_at + loop_steps) * wf.gap * 1.5)
        n0 = len(self.events)
        run, agent, end, _ = self.run(wf, t0, loop=mode, loop_at=loop_at, loop_steps=loop_steps)
        loop_start = next(e["ts"] for e in self.events[n0:] if e.get("step") == loop_at + 1)
        self.label("loop", type_, "run_id", run, wf, loop_start, end, start_step=loop_at + 1, mode=mode)

    def zombie_after_end(self, wf: Workflow, warmup: float) -> None:
        """A run ends with an outcome, but its agent keeps calling under the same run_id."""
        rng = self.rng
        dur = float(rng.uniform(30, 90)) * 60.0
        run, agent, ended, step = self.run(wf, self.when(warmup, dur + 600.0), outcome=True)
        t, stop = ended, ended + dur
        while True:
            t += float(rng.uniform(20.0, 60.0))
            if t >= stop:
                break
            step += 1
            self.usage(wf, t, int(self.lognormal(wf.prompt, 0.3)), int(self.lognormal(60, 0.3)),
                       agent=agent, run=run, step=step)
        self.label("zombie", "zombie_after_end", "agent_id", agent, wf, ended, stop, run_id=run)


def _counts(workflows: int, days: float) -> dict[str, int]:
    scale = workflows / 10.0 * days
    return {k: max(1, round(v * scale)) for k, v in INCIDENTS_PER_DAY.items()}


def generate(
    seed: int,
    days: float = 1.0,
    workflows: int = 10,
    start: float = START,
    incidents: bool = True,
    warmup: float = 3 * 3600.0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events (wire-contract dicts sorted by ts) and incident labels for one scenario.

    `workflows` mixes chat (request/response), agent (multi-step runs; about
    half of them send action fingerprints) and always-on agent workflows. With `incidents`,
    about `INCIDENTS_PER_DAY` per 10 workflows are injected after `warmup`
    seconds, so the detectors have seen normal traffic first.

    >>> events, labels = generate(seed=1, days=0.25, workflows=4, warmup=3600)
    >>> events == sorted(events, key=lambda e: e["ts"]), generate(1, 0.25, 4, warmup=3600)[0] == events
    (True, True)
    >>> sorted({label["kind"] for label in labels})
    ['loop', 'spike', 'zombie']
    """
    g = _Gen(seed, start, days)
    wfs = g.workflows(workflows)
    by_kind = {k: [w for w in wfs if w.kind == k] for k in NAMES}
    silence: dict[str, tuple[float, float]] = {}
    if incidents:
        counts = _counts(workflows, days)
        agents_fp = [w for w in by_kind["agent"] if w.fingerprints] or by_kind["agent"]
        spike_targets = by_kind["chat"] + by_kind["agent"]
        kinds = ("retry_storm", "traffic_surge", "context_bloat")
        for i, type_ in enumerate(t for t in kinds for _ in range(counts[t])):
            if spike_targets:
                g.spike(spike_targets[(i + seed) % len(spike_targets)], type_, warmup)
        for type_ in ("fingerprint_loop", "ping_pong", "silent_loop"):
            pool = agents_fp if type_ != "silent_loop" else by_kind["agent"]
            for _ in range(counts[type_] if pool else 0):
                g.loop(pool[int(g.rng.integers(len(pool)))], type_, warmup)
        for _ in range(counts["zombie_no_outcome"] if by_kind["always_on"] else 0):
            wf = by_kind["always_on"][int(g.rng.integers(len(by_kind["always_on"])))]
            agent = wf.agents[int(g.rng.integers(len(wf.agents)))]
            if agent in silence:
                continue
            dur = float(g.rng.uniform(5, 8)) * 3600.0
            t0 = g.when(warmup, min(dur, g.end - g.start - warmup - 1200.0))
            silence[agent] = (t0, min(t0 + dur, g.end))
            g.label("zombie", "zombie_no_outcome", "agent_id", agent, wf, t0, silence[agent][1])
        for _ in range(counts["zombie_after_end"] if by_kind["agent"] else 0):
            g.zombie_after_end(by_kind["agent"][int(g.rng.integers(len(by_kind["agent"])))], warmup)
    for wf in wfs:
        if wf.kind == "chat":
            g.chat(wf)
        elif wf.kind == "agent":
            g.agent_runs(wf)
        else:
            g.always_on(wf, silence)
    events = [e for e in g.events if e["ts"] < g.end]
    events.sort(key=lambda e: e["ts"])
    return events, sorted(g.labels, key=lambda lab: lab["start"])
