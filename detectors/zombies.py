"""Zombie agents: spending with nothing to show for it.

Two cases, both judged on `tick` because what gives a zombie away is time
passing without an outcome:

- An agent (subject `agent_id`) that keeps calling models for far longer
  than its own normal gap between outcomes. Gaps are measured in *active*
  time (time between calls counts up to `active_cap`), so an agent that was
  idle overnight is not a zombie when it wakes. The limit is `factor` times
  the agent's mean gap (learned online from a prior of `prior_gap` worth
  `prior_n` gaps): outcomes that arrive at random have exponential gaps, so a
  gap of 10× the mean happens once in ~22,000, and bursty agents (a few failed
  runs in a row) stay well inside it. Only agents that have produced an
  outcome are judged: one that never reports outcomes has no normal to
  compare with.
- An agent still spending on a run after that run's outcome (its work is done):
  `post_calls` calls over at least `post_seconds` after the outcome.

State is saved as plain data (`dump` / `load`, format "v": 1); `MIGRATIONS`
upgrades older formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from detectors import state
from detectors.detector import Event, alert_id
from detectors.pricing.money import fmt_usd, micros_to_usd
from schemas.alerts import Alert


class Agent:
    """Per-agent state: spend since the last outcome and what gaps between outcomes look like."""

    __slots__ = ("team", "last_outcome", "last_call", "active", "calls", "micros", "gap", "gaps", "fired")

    def __init__(self, team: str | None, prior_gap: float):
        self.team = team
        self.last_outcome: float | None = None
        self.last_call: float | None = None
        self.active = 0.0  # active seconds since the last outcome
        self.calls = self.micros = 0
        self.gap = prior_gap  # mean active seconds between outcomes
        self.gaps = 0  # gaps learned
        self.fired = False  # alerted in the current episode (since last_outcome)

    def learn_gap(self, gap: float, prior_n: float, window: float) -> None:
        self.gaps += 1
        self.gap += (gap - self.gap) / min(self.gaps + prior_n, window)

    def dump(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}

    @classmethod
    def load(cls, doc: dict[str, Any]) -> Agent:
        d = state.obj(doc)
        agent = cls(state.opt_text(d["team"]), state.num(d["gap"]))
        agent.last_outcome, agent.last_call = state.opt_num(d["last_outcome"]), state.opt_num(d["last_call"])
        agent.active = state.num(d["active"])
        agent.calls, agent.micros = state.count(d["calls"]), state.count(d["micros"])
        agent.gaps = state.count(d["gaps"])
        agent.fired = state.flag(d["fired"])
        return agent


class EndedRun:
    """A run whose outcome arrived, watched for calls that come after it."""

    __slots__ = ("agent", "team", "ended", "calls", "micros", "last", "fired")

    def __init__(self, agent: str | None, ended: float):
        self.agent, self.ended = agent, ended
        self.team: str | None = None  # of the calls after the outcome (an outcome carries no team)
        self.calls = self.micros = 0
        self.last = ended
        self.fired = False

    def dump(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}

    @classmethod
    def load(cls, doc: dict[str, Any]) -> EndedRun:
        d = state.obj(doc)
        run = cls(state.opt_text(d["agent"]), state.num(d["ended"]))
        run.team, run.last = state.opt_text(d["team"]), state.num(d["last"])
        run.calls, run.micros, run.fired = state.count(d["calls"]), state.count(d["micros"]), state.flag(d["fired"])
        return run


class WorkflowZombies:
    """Per-workflow state: agents, ended runs still watched, and when they were last checked
    (per workflow, so a tick is O(1) when no check is due)."""

    __slots__ = ("agents", "ended", "checked")

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.ended: dict[str, EndedRun] = {}
        self.checked = 0.0


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """v0 is an illustrative older layout (never shipped) that exercises the migration path:
    ended runs under "ended_runs" and the last check under "last_check"."""
    rest = {k: x for k, x in doc.items() if k not in ("ended_runs", "last_check")}
    return {**rest, "ended": doc["ended_runs"], "checked": doc["last_check"]}


MIGRATIONS = {0: _v0_to_v1}
"""Format n → n + 1 of a workflow's dump: a layout change adds a function here, so stored state still loads."""


MAX_WATCHED = 4_000
"""Agents, and ended runs, watched per workflow (one table record each workflow, see loops.MAX_RUNS)."""


class ZombieDetector:
    """Flags agents spending without outcomes (subject `agent_id`).

    >>> from schemas.events import OutcomeEvent, UsageEvent
    >>> det = ZombieDetector()
    >>> T0 = 1_740_960_000.0
    >>> def call(ts):
    ...     return UsageEvent(type="usage", event_id=f"u{ts}", ts=T0 + ts, workflow="inbox", model="gpt-4o-mini",
    ...                       agent_id="watcher-1", input_tokens=3000, output_tokens=200)
    >>> def done(ts):
    ...     return OutcomeEvent(type="outcome", event_id=f"o{ts}", ts=T0 + ts, workflow="inbox", outcome="mail_sorted",
    ...                         agent_id="watcher-1")
    >>> for t in range(0, 6 * 3600, 60):  # an outcome every 10 minutes for six hours
    ...     det.observe(call(float(t)), cost_micros=900)
    ...     if t % 600 == 300:
    ...         det.observe(done(float(t)), cost_micros=0)
    >>> [a for t in range(6 * 3600, 7 * 3600, 60) for a in det.tick("inbox", T0 + t)]
    []
    >>> alerts = []
    >>> for t in range(6 * 3600, 12 * 3600, 60):  # calls go on, outcomes stop
    ...     det.observe(call(float(t)), cost_micros=900)
    ...     alerts += det.tick("inbox", T0 + t)
    >>> [(a.kind, a.agent_id) for a in alerts], 3600 < alerts[0].evidence["minutes_without_outcome"] * 60 < 4 * 3600
    ([('zombie', 'watcher-1')], True)
    """

    kind = "zombie"

    def __init__(self, factor: float = 10.0, min_gap: float = 1800.0, prior_gap: float = 900.0, prior_n: float = 3.0,
                 window: float = 200.0, active_cap: float = 300.0, still: float = 600.0, min_calls: int = 10,
                 post_calls: int = 3, post_seconds: float = 60.0, forget: float = 86_400.0, interval: float = 60.0):
        self.factor, self.min_gap, self.window = factor, min_gap, window
        self.prior_gap, self.prior_n = prior_gap, prior_n
        self.active_cap, self.still, self.min_calls = active_cap, still, min_calls
        self.post_calls, self.post_seconds, self.forget, self.interval = post_calls, post_seconds, forget, interval
        self.workflows: dict[str, WorkflowZombies] = {}

    def observe(self, event: Event, cost_micros: int) -> None:
        self.observe_many(event.workflow, (event,), (cost_micros,))

    def observe_many(self, workflow: str, events: Sequence[Event], costs: Sequence[int]) -> None:
        """`observe` of each event of one workflow's slice: the workflow's state looked up once."""
        wf = self.workflows.get(workflow)
        active_cap = self.active_cap
        for event, cost_micros in zip(events, costs):
            aid, rid, ts = event.agent_id, event.run_id, event.ts
            if wf is None:
                if aid is None and (rid is None or event.type != "outcome"):
                    continue  # nothing to watch: no agent, and no run that ended
                wf = self.workflows[workflow] = WorkflowZombies()
            agent = None
            if aid is not None:
                agent = wf.agents.get(aid)
                if agent is None and len(wf.agents) < MAX_WATCHED:
                    agent = wf.agents[aid] = Agent(getattr(event, "team", None), self.prior_gap)
            if event.type == "outcome":
                if rid is not None and rid not in wf.ended and len(wf.ended) < MAX_WATCHED:
                    wf.ended[rid] = EndedRun(aid, ts)
                if agent is not None:
                    if agent.last_outcome is not None and not agent.fired:
                        agent.learn_gap(agent.active, self.prior_n, self.window)
                    agent.last_outcome, agent.active, agent.calls, agent.micros, agent.fired = ts, 0.0, 0, 0, False
                continue
            if rid is not None and wf.ended:
                run = wf.ended.get(rid)
                if run is not None and ts >= run.ended:
                    run.calls += 1
                    run.micros += cost_micros
                    run.team = event.team
                    if ts > run.last:
                        run.last = ts
            if agent is not None:
                last = agent.last_call
                if last is None:
                    agent.last_call = ts
                elif ts > last:
                    agent.active += min(ts - last, active_cap)
                    agent.last_call = ts
                agent.calls += 1
                agent.micros += cost_micros

    def limit(self, agent: Agent) -> float:
        """Active seconds without an outcome beyond which this agent is a zombie."""
        return max(self.factor * agent.gap, self.min_gap)

    def flagged(self, now: float) -> list[Alert]:
        """Zombies are a matter of time passing: only `tick` finds them."""
        return []

    def tick(self, workflow: str, now: float) -> list[Alert]:
        """Every `interval` s of event time, judge the workflow's agents and ended runs (O(agents +
        runs)) and forget those long quiet, then the workflow itself once nothing is left."""
        wf = self.workflows.get(workflow)
        if wf is None or now - wf.checked < self.interval:
            return []
        wf.checked = now
        alerts = []
        for aid in list(wf.agents):
            agent = wf.agents[aid]
            if agent.last_call is not None and now - agent.last_call > self.forget:
                del wf.agents[aid]
            elif self._is_zombie(agent, now):
                agent.fired = True
                alerts.append(self._agent_alert(workflow, aid, agent, now))
        for rid in list(wf.ended):
            run = wf.ended[rid]
            if not run.fired and run.calls >= self.post_calls and run.last - run.ended >= self.post_seconds:
                run.fired = True
                alerts.append(self._run_alert(workflow, rid, run, now))
            elif now - run.last > self.still:
                del wf.ended[rid]
        if not wf.agents and not wf.ended:
            del self.workflows[workflow]
        return alerts

    def dump(self, workflow: str) -> dict[str, Any] | None:
        wf = self.workflows.get(workflow)
        if wf is None:
            return None
        return {"v": state.V, "agents": {aid: a.dump() for aid, a in wf.agents.items()},
                "ended": {rid: r.dump() for rid, r in wf.ended.items()}, "checked": wf.checked}

    def load(self, workflow: str, doc: dict[str, Any]) -> None:
        with state.loading(self.kind, workflow):
            d = state.upgrade(doc, self.kind, workflow, MIGRATIONS)
            wf = WorkflowZombies()
            wf.agents = {state.text(aid): Agent.load(a) for aid, a in state.obj(d["agents"]).items()}
            wf.ended = {state.text(rid): EndedRun.load(r) for rid, r in state.obj(d["ended"]).items()}
            wf.checked = state.num(d["checked"])
        self.workflows[workflow] = wf

    def _is_zombie(self, agent: Agent, now: float) -> bool:
        return (
            agent.last_outcome is not None and not agent.fired and agent.calls >= self.min_calls
            and agent.last_call is not None and now - agent.last_call <= self.still
            and agent.active > self.limit(agent)
        )

    def _agent_alert(self, workflow: str, aid: str, agent: Agent, now: float) -> Alert:
        since = agent.last_outcome or now
        minutes = agent.active / 60.0
        usd_per_min = micros_to_usd(agent.micros) / max(minutes, 1.0)
        typical = agent.gap / 60.0
        return Alert(
            alert_id=alert_id("zombie", workflow, aid, since), kind="zombie", severity="warning",
            workflow=workflow, ts=now, team=agent.team, agent_id=aid,
            summary=(f"agent {aid} in {workflow} has spent {fmt_usd(agent.micros)} over {minutes:.0f} active min "
                     f"without an outcome (normally one every {typical:.0f} min); "
                     f"{fmt_usd(round(agent.micros / max(minutes, 1.0)))}/min"),
            evidence={
                "reason": "no outcome", "last_outcome_ts": since, "minutes_without_outcome": round(minutes, 1),
                "typical_gap_min": round(typical, 1), "limit_min": round(self.limit(agent) / 60.0, 1),
                "calls": agent.calls, "usd": round(micros_to_usd(agent.micros), 6),
                "usd_per_min": round(usd_per_min, 6),
            },
        )

    def _run_alert(self, workflow: str, rid: str, run: EndedRun, now: float) -> Alert:
        minutes = (run.last - run.ended) / 60.0
        subject = run.agent or rid
        return Alert(
            alert_id=alert_id("zombie", workflow, f"{subject}:{rid}"), kind="zombie", severity="warning",
            workflow=workflow, ts=now, team=run.team, agent_id=run.agent, run_id=rid,
            summary=(f"{'agent ' + run.agent if run.agent else 'run ' + rid} in {workflow} is still spending "
                     f"on run {rid} {minutes:.0f} min after its outcome: {run.calls} calls, {fmt_usd(run.micros)}"),
            evidence={
                "reason": "spending after run ended", "run_ended_ts": run.ended, "calls_after_end": run.calls,
                "usd_after_end": round(micros_to_usd(run.micros), 6), "minutes_after_end": round(minutes, 1),
            },
        )
