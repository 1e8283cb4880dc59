"""The checks every detector must pass, whatever it detects (after river's `utils.check_estimator`).

`yield_checks()` yields them one at a time, for a parametrised test
(tests/test_detector_checks.py runs each on every registered detector);
`check_detector(make)` runs them all. A check takes `make`, which returns a new
detector, and drives detectors as the Monitor does (`play`): events in batches,
`flagged` after each batch, a tick of every workflow the detector holds on a
clock that never goes back. Its input is real engine events
(`schemas.structs`): `traffic()`, six hours in which each registered detector
has something to find, and `EDGES`, what broken clients and clocks send. They
check what the Monitor relies on and no single detector's test would catch:

- the protocol, with `workflows` as the state the Monitor may drop an entry of;
- `dump` / `load`: a detector restored mid-stream goes on exactly as the original;
- determinism, and no clock but event time;
- asking again at the same time (`flagged`, `tick`) brings nothing new;
- every alert is of the detector's `kind`, with an id of that kind;
- edge inputs never raise, and a gap of years in event time costs what two days do.

Random streams over the same contract (hypothesis) are in tests/test_detector_state.py.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any
from unittest import mock

import msgspec
import orjson

from detectors.detector import Detector
from schemas.alerts import Alert
from schemas.structs import BY_TYPE, Event, to_wire

Make = Callable[[], Detector]
Batch = list[Event]
Stream = list[Batch | float]
"""What `play` does, in order: observe a batch of events (then `flagged`), or tick every workflow at this time."""

T0 = 1_740_960_000.0  # 2025-03-03 00:00 UTC
TICK = 10.0
BATCH = 25
FLUSH = 3600.0
YEARS = 10 * 365 * 86_400.0
CLOCKS = ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "process_time")


def event(doc: dict[str, Any]) -> Event:
    """A wire-contract event as the engine gets it (a Struct of `schemas.structs`), checked like one."""
    return msgspec.convert({k: x for k, x in doc.items() if x is not None}, BY_TYPE[doc["type"]])


class _Events:
    """Usage and outcome events with ids unique within one stream, so every stream is the same each time."""

    def __init__(self) -> None:
        self.n = 0

    def usage(self, ts: float, workflow: str, *, run: str | None = None, step: int | None = None,
              fp: str | None = None, agent: str | None = None, status: str = "ok", input_tokens: int = 3000,
              output_tokens: int = 200) -> Event:
        self.n += 1
        return event({"type": "usage", "event_id": f"u{self.n}", "ts": ts, "workflow": workflow, "model": "gpt-4o",
                      "run_id": run, "step": step, "fingerprint": fp, "agent_id": agent, "status": status,
                      "input_tokens": input_tokens, "output_tokens": output_tokens, "team": "checks"})

    def outcome(self, ts: float, workflow: str, *, run: str | None = None, agent: str | None = None) -> Event:
        self.n += 1
        return event({"type": "outcome", "event_id": f"o{self.n}", "ts": ts, "workflow": workflow,
                      "outcome": "done", "run_id": run, "agent_id": agent})

    def run(self, run: str, start: float, workflow: str, fps: Sequence[str | None], *, agent: str | None = None,
            outputs: list[int] | None = None, done: bool = True) -> list[Event]:
        """One agent run: a call every 5 s with a growing context, and its outcome if `done`."""
        evs = [self.usage(start + 5.0 * k, workflow, run=run, step=k, fp=fp, agent=agent,
                          input_tokens=2000 + 700 * k, output_tokens=outputs[k - 1] if outputs else 150 + 37 * (k % 11))
               for k, fp in enumerate(fps, 1)]
        return evs + ([self.outcome(start + 5.0 * len(fps) + 1.0, workflow, run=run, agent=agent)] if done else [])


def cost(ev: Event) -> int:
    """Micro-USD at gpt-4o's list price, as the Monitor would pass it."""
    return 0 if ev.type == "outcome" else round(2.5 * ev.input_tokens + 10.0 * ev.output_tokens)


def traffic() -> list[Event]:
    """Six hours of three workflows, ts-ordered: `chat`'s steady calls until its prompts bloat five-fold at
    3 h (a spike); `inbox`'s always-on agent with an outcome every 10 min until 3 h and none after (a
    zombie); `coder`'s agent runs every 20 min, among them one that repeats its action, one that echoes
    the same output, one that fails the same way, and one whose agent goes on spending after its outcome."""
    e = _Events()
    evs: list[Event] = []
    for m in range(200):
        n = 20 + m % 5
        tokens = 15_000 if 180 <= m < 190 else 3000
        evs += [e.usage(T0 + 60.0 * m + 60.0 * i / n, "chat", input_tokens=tokens) for i in range(n)]
    for t in range(0, 6 * 3600, 60):
        evs.append(e.usage(T0 + t + 7.0, "inbox", agent="watcher"))
        if t < 3 * 3600 and t % 600 == 300:
            evs.append(e.outcome(T0 + t + 8.0, "inbox", agent="watcher"))
    for k in range(18):
        start, run, agent = T0 + 1200.0 * k + 30.0, f"run-{k}", f"coder-{k % 3}"
        if k == 5:
            evs += e.run(run, start, "coder", [f"f{i}" for i in range(4)] + ["pytest"] * 8, agent=agent)
        elif k == 9:
            evs += e.run(run, start, "coder", [None] * 10, agent=agent, outputs=[90, 311, 54] + [222] * 7)
        elif k == 12:
            evs += e.run(run, start, "coder", ["a", "b"] * 5, agent=agent)
        elif k == 15:
            evs += e.run(run, start, "coder", [f"f{i}" for i in range(8)], agent=agent)
            evs += [e.usage(start + 60.0 + 30.0 * i, "coder", run=run, agent=agent, fp="poll") for i in range(5)]
        else:
            evs += e.run(run, start, "coder", [f"f{i}" for i in range(12)], agent=agent)
    return sorted(evs, key=lambda ev: ev.ts)


def same_instant() -> list[Event]:
    """Everything at one timestamp: steps that stay 0, zero tokens, an outcome amid its run's calls."""
    e = _Events()
    evs = [e.usage(T0, "wf", run="r0", step=0, fp="ls", agent="a0", input_tokens=k % 2 * 3000, output_tokens=0)
           for k in range(40)]
    evs.insert(20, e.outcome(T0, "wf", run="r0", agent="a0"))
    return evs + [e.usage(T0, "wf", agent="a0", input_tokens=0, output_tokens=0) for _ in range(60)]


def outcome_first() -> list[Event]:
    """Outcomes before any usage: of a run and agent that call afterwards, and of a workflow with no calls."""
    e = _Events()
    evs = [e.outcome(T0, "wf", run="r1", agent="a1"), e.outcome(T0, "silent", run="r9", agent="a9"),
           e.outcome(T0 + 1.0, "wf", agent="a1")]
    return evs + e.run("r1", T0 + 2.0, "wf", ["pytest"] * 12, agent="a1") + e.run("r2", T0 + 90.0, "wf", ["x"] * 6)


def out_of_order() -> list[Event]:
    """An hour of runs, calls and outcomes whose timestamps go back up to 2 min, steps that go back, and
    a call a day late."""
    e, rng = _Events(), random.Random(13)
    evs: list[Event] = []
    for k in range(30):
        evs += e.run(f"r{k}", T0 + 120.0 * k, "wf", [f"f{k % 4}"] * 3 + [f"g{i}" for i in range(6)], agent=f"a{k % 2}")
    shuffled = [ev if ev.type == "outcome" else event({**to_wire(ev), "ts": ev.ts - rng.uniform(0, 120),
                                                        "step": rng.randint(0, 9)}) for ev in evs]
    shuffled.insert(len(shuffled) // 2, e.usage(T0 - 86_400.0, "wf", run="r0", step=1, agent="a0"))
    return shuffled


def huge_gap() -> list[Event]:
    """Half an hour of traffic, then ten years later the same again."""
    e = _Events()
    evs: list[Event] = []
    for start in (T0, T0 + YEARS):
        evs += [e.usage(start + 6.0 * i, "wf", agent="a1") for i in range(300)]
        evs += e.run("r1", start + 10.0, "wf", ["ls", "cat", "pytest", "pytest"], agent="a2")
        evs.append(e.outcome(start + 30.0, "wf", agent="a1"))
    return sorted(evs, key=lambda ev: ev.ts)


EDGES: dict[str, Callable[[], list[Event]]] = {
    "same instant": same_instant, "outcome first": outcome_first, "out of order": out_of_order, "huge gap": huge_gap,
}


def plan(events: Iterable[Event], tick: float = TICK, batch: int = BATCH, flush: float = FLUSH) -> Stream:
    """Batches and ticks as the replay driver makes them (`replay/driver.py`), in batches of at most
    `batch` events: a tick every `tick` s of event time up to `flush` s past the latest event, where a
    longer gap is jumped over, and as long past the end."""
    steps: Stream = []
    pending: Batch = []
    latest = next_tick = -math.inf
    for ev in events:
        if next_tick == -math.inf:
            next_tick = ev.ts - ev.ts % tick + tick
        if pending and (ev.ts >= next_tick or len(pending) == batch):
            steps.append(pending)
            pending = []
        while ev.ts >= next_tick:
            steps.append(next_tick)
            next_tick += tick
            if next_tick > latest + flush:
                next_tick = max(next_tick, ev.ts - ev.ts % tick)
        pending.append(ev)
        latest = max(latest, ev.ts)
    if pending:
        steps.append(pending)
    while next_tick <= latest + flush:
        steps.append(next_tick)
        next_tick += tick
    return steps


def streams() -> dict[str, Stream]:
    return {"traffic": plan(traffic()), **{name: plan(make()) for name, make in EDGES.items()}}


def tick_all(det: Detector, now: float) -> list[Alert]:
    """What the Monitor's tick does: each workflow the detector holds, over a copy of the keys."""
    return [a for name in list(det.workflows) for a in det.tick(name, now)]


def play(det: Detector, steps: Stream, again: bool = False) -> list[Alert]:
    """Drive `det` through `steps`; with `again`, ask twice each time and check the second answer is empty."""
    alerts: list[Alert] = []
    latest = -math.inf
    for step in steps:
        if isinstance(step, float):
            for name in list(det.workflows):
                alerts += det.tick(name, step)
                if again:
                    repeat = det.tick(name, step)
                    assert repeat == [], f"a second tick of {name!r} at {step} alerted again: {_ids(repeat)}"
            continue
        for ev in step:
            det.observe(ev, cost(ev))
            latest = max(latest, ev.ts)
        alerts += det.flagged(latest)
        if again:
            repeat = det.flagged(latest)
            assert repeat == [], f"a second flagged at {latest} alerted again: {_ids(repeat)}"
    return alerts


def restored(det: Detector, make: Make) -> Detector:
    """A new detector holding what `det` holds, through plain JSON bytes as the detectors table keeps it."""
    new = make()
    for name in det.workflows:
        new.load(name, orjson.loads(orjson.dumps(det.dump(name))))
    return new


def dumps(det: Detector) -> dict[str, Any]:
    return {name: det.dump(name) for name in det.workflows}


def _ids(alerts: list[Alert]) -> list[str]:
    return [a.alert_id for a in alerts]


def _docs(alerts: list[Alert]) -> list[dict[str, Any]]:
    return [a.model_dump() for a in alerts]


class TooMuchWork(Exception):
    """`fn` made more function calls than `calls_during` was told to allow."""


def calls_during(fn: Callable[[], object], limit: float = math.inf) -> int:
    """Python and C function calls made by `fn`: a measure of work that holds on any machine. Past
    `limit` calls, `fn` is stopped with TooMuchWork, so work that grows with a gap cannot take forever."""
    n = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal n
        n += event in ("call", "c_call")
        if n > limit:
            raise TooMuchWork(f"more than {limit} function calls")

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


# -- the checks -----------------------------------------------------------------------------------


def check_protocol(make: Make) -> None:
    """The protocol, and `workflows` as the Monitor uses it: one entry per workflow held, each with a
    versioned plain-data dump, none for any other; an entry dropped (a contained failure) is simply
    a workflow seen afresh."""
    det = make()
    assert isinstance(det, Detector), f"{type(det).__name__} does not have every member of the Detector protocol"
    assert isinstance(type(det).kind, str) and type(det).kind, "`kind` must be a non-empty class attribute"
    assert det.workflows == {} and isinstance(det.workflows, dict), "a new detector holds no workflow"
    assert det.tick("never-seen", T0) == [] and det.dump("never-seen") is None and det.flagged(T0) == []
    steps = plan(traffic())
    half = len(steps) // 2
    play(det, steps[:half])
    names = {ev.workflow for step in steps if not isinstance(step, float) for ev in step}
    assert det.workflows and set(det.workflows) <= names, f"workflows {sorted(det.workflows)} not among {names}"
    for name in det.workflows:
        doc = det.dump(name)
        assert isinstance(doc, dict) and type(doc.get("v")) is int, f"dump({name!r}) has no integer format \"v\""
        assert orjson.loads(orjson.dumps(doc)) == doc, f"dump({name!r}) is not plain data orjson round-trips"
    assert det.tick("never-seen", T0 + YEARS) == [] and det.dump("never-seen") is None
    assert "never-seen" not in det.workflows
    dropped = sorted(det.workflows)[0]
    det.workflows.pop(dropped)
    assert det.dump(dropped) is None, "a dropped workflow still has a dump"
    play(det, steps[half:])


def check_dump_load_mid_stream(make: Make) -> None:
    """Saved and restored between any two batches, a detector raises exactly the alerts the original
    does on the rest of the stream, and ends in the same state."""
    for name, steps in streams().items():
        whole = make()
        expected = _docs(play(whole, steps))
        for k in (len(steps) // 4, len(steps) // 2, 3 * len(steps) // 4):
            first = make()
            before = play(first, steps[:k])
            again = restored(first, make)
            assert dumps(again) == dumps(first), f"{name}: load(dump) does not give the dumped state back"
            rest = play(again, steps[k:])
            assert _docs(before + rest) == expected, f"{name}: restored at step {k} of {len(steps)}, alerts differ"
            assert dumps(again) == dumps(whole), f"{name}: restored at step {k}, the final state differs"


def check_deterministic(make: Make) -> None:
    """The same input twice, to two detectors made one after the other, gives the same alerts and state
    (nothing random, nothing shared between instances)."""
    for name, steps in streams().items():
        a, b = make(), make()
        first = _docs(play(a, steps))
        assert _docs(play(b, steps)) == first, f"{name}: the same stream gave other alerts"
        assert dumps(a) == dumps(b), f"{name}: the same stream left another state"


def check_no_clock(make: Make) -> None:
    """Event time is the only time: a detector that reads a clock behaves differently in replay."""
    det = make()
    module = sys.modules[type(det).__module__]
    clocks = {getattr(time, name) for name in CLOCKS}
    held = [name for name, x in vars(module).items() if any(x is c for c in clocks)]
    assert not held, f"{module.__name__} imports clock functions {held}"

    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("a detector read the clock; it must go by event time only")

    refused: dict[str, Any] = dict.fromkeys(CLOCKS, refuse)
    with mock.patch.multiple(time, **refused):
        for steps in streams().values():
            play(make(), steps)


def check_nothing_new_at_the_same_time(make: Make) -> None:
    """`flagged` and `tick` asked again at the same time return nothing, and asking twice changes nothing."""
    for name, steps in streams().items():
        once = _docs(play(make(), steps))
        assert _docs(play(make(), steps, again=True)) == once, f"{name}: asking twice changed the alerts"


def check_alerts_are_of_its_kind(make: Make) -> None:
    """Every alert carries the detector's kind, a workflow of the stream, a finite time, and an id of
    its kind and workflow (`alert_id`), so no two detectors' alerts can share one."""
    kind = make().kind
    for name, steps in streams().items():
        names = {ev.workflow for step in steps if not isinstance(step, float) for ev in step}
        for a in play(make(), steps):
            assert isinstance(a, Alert) and a.kind == kind, f"{name}: a {a.kind!r} alert from the {kind!r} detector"
            assert a.workflow in names and math.isfinite(a.ts), f"{name}: alert {a.alert_id} for {a.workflow!r}"
            assert a.alert_id.startswith(f"{kind}:{a.workflow}:"), f"{name}: alert id {a.alert_id!r}"


def check_edge_inputs(make: Make) -> None:
    """Edge inputs never raise (`EDGES`, played by the other checks too) and leave state that restores."""
    for name, events in EDGES.items():
        det = make()
        play(det, plan(events()), again=True)
        assert dumps(restored(det, make)) == dumps(det), f"{name}: the state left does not restore"


def check_gap_costs_what_two_days_do(make: Make) -> None:
    """A tick after ten years without events does the work of one after two days: interval work never
    steps through a gap in event time."""
    steps = plan(traffic())
    warm = make()
    play(warm, steps[: len(steps) // 2])
    end = max(ev.ts for step in steps[: len(steps) // 2] if not isinstance(step, float) for ev in step)

    def tick_after(gap: float, limit: float = math.inf) -> int:
        det, e = restored(warm, make), _Events()
        for name in sorted(det.workflows):
            det.observe(e.usage(end + gap, name, run="late", step=1, agent="a1"), 5000)
        return calls_during(partial(tick_all, det, end + gap + TICK), limit)

    days = tick_after(2 * 86_400.0)
    try:
        tick_after(YEARS, limit=days + 50)
    except TooMuchWork:
        raise AssertionError(f"a tick after ten years makes over 50 function calls more than one after two days "
                             f"({days})") from None


def yield_checks() -> Iterator[Callable[[Make], None]]:
    yield check_protocol
    yield check_dump_load_mid_stream
    yield check_deterministic
    yield check_no_clock
    yield check_nothing_new_at_the_same_time
    yield check_alerts_are_of_its_kind
    yield check_edge_inputs
    yield check_gap_costs_what_two_days_do


def check_detector(make: Make) -> None:
    """Run every check on detectors from `make`; the first that fails raises AssertionError."""
    for check in yield_checks():
        check(make)
