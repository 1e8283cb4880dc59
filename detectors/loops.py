"""Runaway agent loops: one alert per run that repeats itself or burns far past normal.

Two kinds of evidence, both checked per event in O(1):

- Fingerprints (the action a step performed) repeating, after OpenHands' stuck
  detector: the same failing action 3× in a row; the same successful action 9×
  in a row getting the same observation (the hash of its result) every time,
  or 9× when the run sends no observations; A/B alternation over 6 steps, an
  A/B/C cycle over 9, or a 16-step tail with at most 3 distinct actions. Agents
  legitimately repeat a successful step: polling CI, a deploy, a queue, a page
  still loading, 2–8 times, so 4 successful repeats (OpenHands' bound) would
  alarm on ordinary runs every day, while a runaway loop repeats tens of times.
  A repeat whose observation changes is progress (a poll whose answer moves),
  not a stuck agent: such a streak restarts, and only the 16-step tail rule or
  the volume rules flag it. Runs without fingerprints get one weaker version:
  5 identical output sizes in a row, which is what a deterministic model
  repeating itself looks like (never more than 3 in 500 real SWE-agent runs).
- Volume, for silent loops: a run's LLM calls, tokens, context size or spend
  beyond `z` log-sigmas of what the workflow's finished runs reach, learned
  online per workflow (`LogBaseline`) from generous priors. Runs are heavy-
  tailed (a long productive run is 3–4× the median), so the limit is a ratio
  in log space, not a count. In 371 resolved real SWE-agent runs the largest
  was 3.3 log-sigmas out; z = 4 leaves margin (3.5 already flags one real
  unresolved run).

A flagged run
alerts once, when the batch that flagged it ends (`flagged`), so a burst of
events costs one alert and an evident loop never waits for the next tick.

State is saved as plain data (`dump` / `load`, format "v": 3: each run a list
in `RUN_FIELDS` order); `MIGRATIONS` upgrades older formats.
"""

from __future__ import annotations

import heapq
import zlib
from array import array
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from detectors import state
from detectors.detector import Event, LogBaseline, alert_id
from detectors.pricing.money import fmt_usd, micros_to_usd
from schemas.alerts import Alert, Severity
from schemas.limits import MAX_ID_LEN

MAX_RUNS = 4_000
"""Active runs watched per workflow: its state is one table record (Kafka's default limit is 1 MB,
~150 B a run with a UUID run id); runs beyond are not watched until others end (their spend is
still counted)."""
REPEAT_OK = 9
"""Successful repeats of one action (with the same or no observation) that make a loop: one more than
the longest ordinary poll (2–8), and still within 10 steps of a loop's start."""
REPEAT_ERROR = 3
ALTERNATION = 6
CYCLE = 9
WINDOW = 16
FEW_DISTINCT = 3
ECHO = 5
ECHO_MIN_TOKENS = 20
FEATURES = ("calls", "tokens", "context", "usd")
PRIORS: dict[str, tuple[float, float]] = {
    "calls": (20.0, 0.7),
    "tokens": (300_000.0, 1.2),
    "context": (30_000.0, 0.8),
    "usd": (0.5, 1.2),
}
"""Cold-start (median, log-sigma) of a finished run: at z = 4 a new workflow alerts
only past ~330 calls, 36M tokens, 740k context or $61 per run."""
Flag = tuple[str, int, int, str | None]  # (rule, loop start step, repeats, fingerprint)


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """v0 is an illustrative older layout (never shipped) that exercises the migration path:
    runs under "active", a run's fingerprint CRCs under "crcs" and its spend under "spend_micros"."""
    runs = {rid: {("recent" if k == "crcs" else "micros" if k == "spend_micros" else k): x for k, x in run.items()}
            for rid, run in doc["active"].items()}
    return {"runs": runs, **{k: x for k, x in doc.items() if k != "active"}}


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """v2 keeps each run's last observation CRC ("obs"); v1 runs had none, which reads as "not sent"."""
    return {**doc, "runs": {rid: {**run, "obs": None} for rid, run in state.obj(doc["runs"]).items()}}


RUN_FIELDS = ("agent", "team", "start", "last", "step", "calls", "tokens", "context", "micros", "recent", "obs",
              "same", "same_err", "alt", "cycle", "echo", "last_out", "flag", "fired", "ended")
"""A run's values in a v3 dump, in this order: a list, not an object, is half the bytes and a third of
the time to write (a workflow's runs are all saved every few seconds). A new field is a new version."""


def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    """v3 writes each run as a list in RUN_FIELDS order instead of an object."""
    runs = state.obj(doc["runs"]).items()
    return {**doc, "runs": {rid: [state.obj(run)[f] for f in RUN_FIELDS] for rid, run in runs}}


MIGRATIONS = {0: _v0_to_v1, 1: _v1_to_v2, 2: _v2_to_v3}
"""Format n → n + 1 of a workflow's dump: a layout change adds a function here, so stored state still loads."""
VERSION = 3
"""The format `dump` writes."""


_CRCS: dict[str, int] = {}
"""CRC-32 of recent fingerprints and observations: a run repeats a few actions, so most are hits."""
MAX_CRCS = 4_096


def _crc(text: str) -> int:
    """CRC-32 of `text`, remembered (forgotten all at once past MAX_CRCS: the names are caller input)."""
    if len(_CRCS) >= MAX_CRCS:
        _CRCS.clear()
    h = _CRCS[text] = zlib.crc32(text.encode())
    return h


class Run:
    """What the detector keeps per run: counters, CRC-32s of the last WINDOW fingerprints and of the
    last observation: about 450 bytes in memory however long the run. `same` counts the last action's
    repeats that got the same observation as the one before (or sent none)."""

    __slots__ = RUN_FIELDS

    def __init__(self, ts: float, agent: str | None, team: str | None):
        self.agent, self.team = agent, team
        self.start = self.last = ts
        self.step = self.calls = self.tokens = self.context = self.micros = 0
        self.recent = array("I")  # CRC-32 of the last WINDOW fingerprints, oldest first: 4 bytes each, not 32
        self.obs: int | None = None  # CRC-32 of the last step's observation, None if it sent none
        self.same = self.same_err = self.alt = self.cycle = self.echo = self.last_out = 0
        self.flag: Flag | None = None
        self.fired = False
        self.ended: float | None = None  # ts of the run's outcome

    def dump(self) -> list[Any]:
        doc = list(_values(self))
        doc[_RECENT] = self.recent.tolist()
        if self.flag is not None:
            doc[_FLAG] = list(self.flag)
        return doc

    @classmethod
    def load(cls, doc: list[Any]) -> Run:
        d = dict(zip(RUN_FIELDS, state.seq(doc, len(RUN_FIELDS))))
        run = cls(state.num(d["start"]), state.opt_text(d["agent"]), state.opt_text(d["team"]))
        run.last = state.num(d["last"])
        for s in ("step", "calls", "tokens", "context", "micros", "same", "same_err", "alt", "cycle", "echo",
                  "last_out"):
            setattr(run, s, state.count(d[s]))
        recent = state.seq(d["recent"])
        if len(recent) > WINDOW:
            raise ValueError(f"recent must hold at most {WINDOW} CRCs")
        run.recent = array("I", [state.count(h) for h in recent])
        run.obs = None if d["obs"] is None else state.count(d["obs"])
        f = d["flag"]
        if f is not None:
            rule, since, repeats, fp = state.seq(f, 4)
            run.flag = (state.text(rule), state.integer(since), state.count(repeats), state.opt_text(fp))
        run.fired = state.flag(d["fired"])
        run.ended = state.opt_num(d["ended"])
        return run

    def values(self) -> tuple[float, float, float, float]:
        return (self.calls, self.tokens, self.context, micros_to_usd(self.micros))

    def fingerprint_rule(self, fp: str, obs: str | None, error: bool) -> Flag | None:
        rec, step = self.recent, self.step
        fp = fp[:MAX_ID_LEN]  # the wire caps it there; a bigger one must not cost O(size) per event, nor be kept
        h = _CRCS.get(fp)
        if h is None:
            h = _crc(fp)
        o = None
        if obs is not None:
            obs = obs[:MAX_ID_LEN]
            o = _CRCS.get(obs)
            if o is None:
                o = _crc(obs)
        last = rec[-1] if rec else None
        if h == last:
            moved = o is not None and self.obs is not None and o != self.obs  # a poll whose answer changed
            self.same = 1 if moved else self.same + 1
            self.same_err = self.same_err + 1 if error else 0
        else:
            self.same, self.same_err = 1, int(error)
        self.obs = o
        self.alt = self.alt + 1 if len(rec) >= 2 and h == rec[-2] and h != last else 0
        self.cycle = self.cycle + 1 if len(rec) >= 3 and h == rec[-3] and h not in (last, rec[-2]) else 0
        rec.append(h)
        if len(rec) > WINDOW:
            del rec[0]
        if self.same_err >= REPEAT_ERROR:
            return ("repeated failing action", step - self.same_err + 1, self.same_err, fp)
        if self.same >= REPEAT_OK:
            rule = "repeated action" if o is None else "repeated action and observation"
            return (rule, step - self.same + 1, self.same, fp)
        if self.alt >= ALTERNATION - 2:
            return ("A/B alternation", step - self.alt - 1, self.alt + 2, fp)
        if self.cycle >= CYCLE - 3:
            return ("3-step cycle", step - self.cycle - 2, self.cycle + 3, fp)
        # The last FEW_DISTINCT + 1 steps hold fewer distinct actions whenever the window does:
        # a set of 4 rules out most windows before the set of 16.
        if len(rec) == WINDOW and step % 4 == 0 and len(set(rec[-FEW_DISTINCT - 1:])) <= FEW_DISTINCT:
            distinct = len(set(rec))
            if distinct <= FEW_DISTINCT:
                return (f"{distinct} distinct actions in {WINDOW} steps", step - WINDOW + 1, WINDOW, fp)
        return None

    def echo_rule(self, output_tokens: int) -> Flag | None:
        if output_tokens < ECHO_MIN_TOKENS:
            self.echo = 0
            return None
        self.echo = self.echo + 1 if output_tokens == self.last_out else 1
        self.last_out = output_tokens
        if self.echo >= ECHO:
            return (f"identical {output_tokens}-token outputs", self.step - self.echo + 1, self.echo, None)
        return None


_values = attrgetter(*RUN_FIELDS)
_RECENT, _FLAG = RUN_FIELDS.index("recent"), RUN_FIELDS.index("flag")


class WorkflowLoops:
    """Per-workflow state: active runs, what finished runs reach, runs flagged since the last
    tick, and when idle runs were last swept (per workflow, so a tick is O(1) when none is due)."""

    __slots__ = ("runs", "baselines", "limits", "pending", "swept")

    def __init__(self, priors: dict[str, tuple[float, float]], z: float):
        self.runs: dict[str, Run] = {}
        self.baselines = {f: LogBaseline(*priors[f]) for f in FEATURES}
        self.limits: tuple[float, ...] = ()
        self.pending: list[str] = []
        self.swept = 0.0
        self.refresh(z)

    def fresh(self) -> bool:
        """Nothing here that a new WorkflowLoops would not have: safe to forget."""
        return not self.runs and not self.pending and all(b.n == 0 for b in self.baselines.values())

    def refresh(self, z: float) -> None:
        self.limits = tuple(self.baselines[f].limit(z) for f in FEATURES)

    def learn(self, run: Run, z: float) -> None:
        for f, x in zip(FEATURES, run.values()):
            self.baselines[f].learn_one(x)
        self.refresh(z)


class LoopDetector:
    """Flags runaway runs (subject `run_id`); one alert per run.

    >>> from schemas.events import UsageEvent
    >>> det = LoopDetector()
    >>> def call(step, fp):
    ...     return UsageEvent(type="usage", event_id=f"e{step}", ts=1_740_000_000.0 + 5 * step, workflow="coder",
    ...                       model="gpt-4o", run_id="run-1", step=step, input_tokens=2000 + 500 * step,
    ...                       output_tokens=150, fingerprint=fp)
    >>> for step, fp in enumerate(["ls", "cat a.py"] + ["pytest"] * 8, 1):
    ...     det.observe(call(step, fp), cost_micros=4000)
    >>> det.tick("coder", 1_740_000_050.0)  # polling with the same action 8 times is normal
    []
    >>> det.observe(call(11, "pytest"), cost_micros=4000)
    >>> [(a.kind, a.run_id, a.evidence["repeats"], a.evidence["loop_start_step"])
    ...  for a in det.tick("coder", 1_740_000_060.0)]
    [('loop', 'run-1', 9, 3)]
    >>> det.flagged(1_740_000_060.0), det.tick("other", 1_740_000_060.0)  # alerted once; a workflow it does not hold
    ([], [])
    """

    kind = "loop"

    def __init__(self, z: float = 4.0, idle: float = 900.0, min_calls: int = 20, interval: float = 60.0,
                 priors: dict[str, tuple[float, float]] | None = None):
        self.z, self.idle, self.min_calls, self.interval = z, idle, min_calls, interval
        self.priors = {**PRIORS, **(priors or {})}  # a config may set some features' priors only
        self.workflows: dict[str, WorkflowLoops] = {}
        self._flagged: dict[str, None] = {}  # flagged since the last `flagged`; a set's order varies by hash seed

    def observe(self, event: Event, cost_micros: int) -> None:
        self.observe_many(event.workflow, (event,), (cost_micros,))

    def observe_many(self, workflow: str, events: Sequence[Event], costs: Sequence[int]) -> None:
        """`observe` of each event of one workflow's slice: the workflow's state looked up once."""
        wf = self.workflows.get(workflow)
        runs = wf.runs if wf is not None else {}
        z, min_calls = self.z, self.min_calls
        for event, cost_micros in zip(events, costs):
            rid = event.run_id
            if rid is None:
                continue
            if wf is None:
                wf = self.workflows[workflow] = WorkflowLoops(self.priors, z)
                runs = wf.runs
            run = runs.get(rid)
            if event.type == "outcome":
                if run is not None and run.ended is None:
                    run.ended = event.ts
                    if not run.fired and run.flag is None:
                        wf.learn(run, z)
                continue
            if run is None:
                if len(runs) >= MAX_RUNS:
                    continue
                run = runs[rid] = Run(event.ts, event.agent_id, event.team)
            if event.ts > run.last:
                run.last = event.ts
            if run.ended is not None:
                continue  # spending after the run ended is the zombie detector's case
            inp = event.input_tokens
            run.step = event.step if event.step is not None else run.step + 1
            run.calls += 1
            run.tokens += inp + event.output_tokens
            if inp > run.context:
                run.context = inp
            run.micros += cost_micros
            if run.flag is not None:
                continue
            fp = event.fingerprint
            if fp is not None:
                flag = run.fingerprint_rule(fp, event.observation, event.status != "ok")
            elif event.status == "ok":
                flag = run.echo_rule(event.output_tokens)
            else:
                flag = None
            if flag is None and run.calls >= min_calls:
                lim = wf.limits  # compared inline first: this runs per event, the naming loop once per flag
                if (run.calls > lim[0] or run.tokens > lim[1] or run.context > lim[2]
                        or micros_to_usd(run.micros) > lim[3]):
                    i = next(i for i, (x, limit) in enumerate(zip(run.values(), lim)) if x > limit)
                    flag = (f"{FEATURES[i]} far beyond this workflow's runs", 0, 0, None)
            if flag is not None:
                run.flag = flag
                wf.pending.append(rid)
                self._flagged[workflow] = None

    def flagged(self, now: float) -> list[Alert]:
        alerts = []
        for name in self._flagged:
            wf = self.workflows.get(name)
            if wf is not None:
                alerts.extend(self._fire(name, wf, now))
        self._flagged.clear()
        return alerts

    def tick(self, workflow: str, now: float) -> list[Alert]:
        """Fire flags restored with a workflow's state; every `interval` s, forget idle runs
        (O(runs)) and then the workflow itself if nothing is left that a fresh one lacks."""
        wf = self.workflows.get(workflow)
        if wf is None:
            return []
        alerts = self._fire(workflow, wf, now) if wf.pending else []
        if now - wf.swept >= self.interval:
            wf.swept = now
            self._sweep(wf, now)
            if wf.fresh():
                del self.workflows[workflow]
        return alerts

    def in_flight(self, workflow: str, n: int = 20) -> list[dict[str, Any]]:
        """The `n` costliest runs of `workflow` that have not ended (what the dashboard lists)."""
        wf = self.workflows.get(workflow)
        if wf is None:
            return []
        live = heapq.nsmallest(n, ((-run.micros, rid, run) for rid, run in wf.runs.items() if run.ended is None),
                               key=lambda t: (t[0], t[1]))
        return [{"run_id": rid, "agent_id": run.agent, "start": run.start, "last": run.last, "steps": run.step,
                 "calls": run.calls, "tokens": run.tokens, "usd": round(micros_to_usd(run.micros), 6),
                 "flagged": run.flag is not None} for _, rid, run in live]

    def dump(self, workflow: str) -> dict[str, Any] | None:
        wf = self.workflows.get(workflow)
        if wf is None:
            return None
        return {"v": VERSION, "runs": {rid: run.dump() for rid, run in wf.runs.items()},
                "baselines": {f: b.dump() for f, b in wf.baselines.items()}, "pending": list(wf.pending),
                "swept": wf.swept}

    def load(self, workflow: str, doc: dict[str, Any]) -> None:
        with state.loading(self.kind, workflow):
            d = state.upgrade(doc, self.kind, workflow, MIGRATIONS, VERSION)
            wf = WorkflowLoops(self.priors, self.z)
            wf.runs = {state.text(rid): Run.load(run) for rid, run in state.obj(d["runs"]).items()}
            baselines = state.obj(d["baselines"])
            for f in FEATURES:
                wf.baselines[f].load(baselines[f])
            wf.refresh(self.z)
            wf.pending = [state.text(rid) for rid in state.seq(d["pending"])]
            if any(rid not in wf.runs for rid in wf.pending):
                raise ValueError("a pending run is not among the runs")
            wf.swept = state.num(d["swept"])
        self.workflows[workflow] = wf

    def _fire(self, name: str, wf: WorkflowLoops, now: float) -> list[Alert]:
        alerts = []
        for rid in wf.pending:
            run = wf.runs[rid]
            if not run.fired:
                run.fired = True
                alerts.append(self._alert(name, rid, run, wf, now))
        wf.pending.clear()
        return alerts

    def _sweep(self, wf: WorkflowLoops, now: float) -> None:
        """Runs idle for `idle` seconds are over: learn from those that ended quietly, then forget them."""
        for rid in [rid for rid, run in wf.runs.items() if now - run.last > self.idle]:
            run = wf.runs.pop(rid)
            if run.ended is None and not run.fired and run.flag is None:
                wf.learn(run, self.z)

    def _alert(self, workflow: str, rid: str, run: Run, wf: WorkflowLoops, now: float) -> Alert:
        assert run.flag is not None, "only flagged runs are pending"
        rule, since, repeats, fp = run.flag
        minutes = max(run.last - run.start, 60.0) / 60.0
        usd_per_min = micros_to_usd(run.micros) / minutes
        typical = {f: round(b.typical(), 6) for f, b in wf.baselines.items()}
        evidence = {
            "rule": rule, "steps": run.step, "calls": run.calls, "tokens": run.tokens,
            "context_tokens": run.context, "usd": round(micros_to_usd(run.micros), 6),
            "usd_per_min": round(usd_per_min, 6),
            "duration_s": round(run.last - run.start, 1), "run_start": run.start, "typical_run": typical,
        }
        burn = f"{fmt_usd(run.micros)} burned, {fmt_usd(round(run.micros / minutes))}/min"
        severity: Severity
        if repeats:  # a fingerprint rule; volume flags carry no repeats (a loop may start at step 0)
            evidence.update(repeats=repeats, loop_start_step=since, fingerprint=fp)
            what = f"{rule} ({repeats}× from step {since}{f', action {fp}' if fp else ''})"
            severity = "critical"
        else:
            feature = rule.split(" ", 1)[0]
            value = dict(zip(FEATURES, run.values()))[feature]
            evidence.update(feature=feature, value=value, limit=round(wf.limits[FEATURES.index(feature)], 6),
                            ratio_to_typical=round(value / max(typical[feature], 1e-9), 1))
            what = f"silent loop? {feature} {value:,.4g} is {evidence['ratio_to_typical']}× a typical run"
            severity = "warning"
        return Alert(
            alert_id=alert_id("loop", workflow, rid), kind="loop", severity=severity, workflow=workflow,
            ts=now, team=run.team, agent_id=run.agent, run_id=rid, evidence=evidence,
            summary=f"run {rid} in {workflow}: {what}; {run.step} steps, {burn}",
        )
