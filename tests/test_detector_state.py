"""Detector state on random streams: the shared check suite (detectors/checks.py), pushed further.

Parametrized over the registered detectors and eager variants of them, on
random event streams (hypothesis) with what real traffic and bugs produce:
steps from 0, repeats, gaps of a week, out-of-order and duplicate timestamps,
zero and huge token counts, unicode and NUL in ids, outcomes before usage, one
run id in two workflows, agents without runs:

- `dump` is plain JSON data that orjson round-trips exactly, and a detector
  restored from it mid-stream raises the same alerts as one that never stopped;
- `observe`, `flagged` and `tick` never raise, whatever the order of calls;
- a doc of an unknown version, or a malformed one, raises StateError naming
  the detector, the workflow and the version, and changes nothing;
- `tick` on a workflow the detector does not hold is [];
- work per event, and the spike detector's scoring across a gap, is bounded:
  counted in function calls, not wall time, so the bounds hold on any machine.

`python -m tests.test_detector_state` prints the measured worst cases in µs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import spikes
from detectors.checks import calls_during
from detectors.detector import Detector, StateError
from detectors.loops import RUN_FIELDS, WINDOW, LoopDetector
from detectors.loops import VERSION as LOOP_VERSION
from detectors.registry import DETECTORS
from detectors.spikes import Horizon, SpikeDetector
from detectors.state import V as STATE_V
from detectors.zombies import ZombieDetector
from replay.scenarios import generate
from schemas.alerts import Alert
from schemas.decode import validate_event
from schemas.limits import MAX_ID_LEN, MAX_TOKENS
from schemas.structs import Outcome, Usage

T0 = 1_740_960_000.0  # 2025-03-03 00:00 UTC
WEEK = 7 * 86_400.0
SMALL_RUNS = {"calls": (5.0, 0.3), "tokens": (20_000.0, 0.3), "context": (5_000.0, 0.3), "usd": (0.05, 0.3)}
MAKERS: dict[str, Callable[[], Detector]] = {
    **DETECTORS,
    # the same code with thresholds that random streams cross often, so restored state is tested while it matters
    "loop-eager": lambda: LoopDetector(min_calls=3, idle=120.0, interval=20.0, priors=SMALL_RUNS),
    "zombie-eager": lambda: ZombieDetector(factor=2.0, min_gap=120.0, min_calls=3, post_calls=2, post_seconds=1.0,
                                           still=300.0, forget=7_200.0, interval=20.0, prior_gap=60.0),
    "spike-eager": lambda: SpikeDetector(interval=30.0, horizons=(3, 8), cooldown=4, scorer={"warmup": 20}),
}
VARIANTS = list(MAKERS)
KINDS = list(DETECTORS)
Step = tuple[str, Any]  # ("event", Usage | Outcome) or ("tick", seconds after the latest event)


def usage(ts: float, workflow: str = "wf", *, run: str | None = None, step: int | None = None,
          fp: str | None = None, agent: str | None = None, status: str = "ok", input_tokens: int = 3000,
          output_tokens: int = 200, obs: str | None = None, n: list[int] = [0]) -> Usage:  # noqa: B006 - ids
    n[0] += 1
    return Usage(event_id=f"u{n[0]}", ts=ts, workflow=workflow, model="gpt-4o-mini", run_id=run, step=step,
                 fingerprint=fp, observation=obs, agent_id=agent, status=status, input_tokens=input_tokens,
                 output_tokens=output_tokens)


def outcome(ts: float, workflow: str = "wf", *, run: str | None = None, agent: str | None = None,
            n: list[int] = [0]) -> Outcome:  # noqa: B006
    n[0] += 1
    return Outcome(event_id=f"o{n[0]}", ts=ts, workflow=workflow, outcome="done", run_id=run, agent_id=agent)


def warmup_events() -> list[Usage | Outcome]:
    """Five hours in which every detector learns something: a steady chat workflow (spikes), an
    always-on agent with an outcome every 10 min (zombies), finished runs of 15 steps (loops)."""
    evs: list[Usage | Outcome] = []
    for m in range(300):
        t = T0 + 60 * m
        evs += [usage(t + 6 * i, input_tokens=2000 + 97 * ((m + i) % 13)) for i in range(10)]
        evs.append(usage(t + 1, agent="a1"))
        if m % 10 == 5:
            evs.append(outcome(t + 2, agent="a1"))
        if m % 15 == 0:
            run = f"r{m // 15}"
            evs += [usage(t + 3 + 3 * k, run=run, step=k, fp=f"f{k}", agent="a2") for k in range(1, 16)]
            evs.append(outcome(t + 50, run=run, agent="a2"))
    return sorted(evs, key=lambda e: e.ts)


WARM_END = T0 + 300 * 60
_warm_docs: dict[str, dict[str, Any]] = {}


def warm(kind: str) -> Detector:
    """A detector in the state the warm-up leaves, loaded from its dump (the warm-up runs once)."""
    if kind not in _warm_docs:
        det = MAKERS[kind]()
        run(det, [("event", e) for e in warmup_events()] + [("tick", 0.0)], T0)
        _warm_docs[kind] = {w: orjson.loads(orjson.dumps(det.dump(w))) for w in det.workflows}
    det = MAKERS[kind]()
    for w, doc in _warm_docs[kind].items():
        det.load(w, copy.deepcopy(doc))
    return det


def tick_all(det: Detector, now: float) -> list[Alert]:
    """What the Monitor does every tick: each workflow the detector holds, over a copy of the keys."""
    return [a for w in list(det.workflows) for a in det.tick(w, now)]


def run(det: Detector, steps: Iterable[Step], now: float) -> tuple[list[Alert], float]:
    """Drive like the Monitor: events in batches, `flagged` after each batch, then a tick of every
    workflow at a clock that never goes back. Ends with a flush, so `flagged` has nothing pending."""
    alerts: list[Alert] = []
    latest, batch = now, False
    for kind, x in steps:
        if kind == "event":
            det.observe(x, 0 if x.type == "outcome" else 7_000 + x.input_tokens // 100)
            latest, batch = max(latest, x.ts), True
        else:
            alerts += det.flagged(latest)
            now = max(now, latest + x)
            alerts += tick_all(det, now)
            batch = False
    if batch:
        alerts += det.flagged(latest)
    return alerts, now


def roundtrip(doc: Any) -> Any:
    return orjson.loads(orjson.dumps(doc))


def restored(det: Detector, variant: str) -> Detector:
    new = MAKERS[variant]()
    for w in det.workflows:
        doc = det.dump(w)
        assert doc is not None and doc["v"] == {"loop": LOOP_VERSION, "spike": spikes.V}.get(det.kind, STATE_V)
        assert roundtrip(doc) == doc, "dump must be plain data orjson round-trips exactly (no inf/nan, tuples, ...)"
        new.load(w, roundtrip(doc))
    return new


# -- random streams -----------------------------------------------------------------------------

WORKFLOWS = ["wf", "wf-2", "ünïcödé ✓", "nul\x00wf"]
RUNS = ["r1", "r2", "r\x00", "rün", "r" * MAX_ID_LEN]
AGENTS = [None, None, "a1", "a2", "agent\x00ü"]
FPS = [None, "ls", "pytest", "a", "b", "c", "ünï", "x" * 2000]
GAPS = [0.0, 0.0, 0.001, 1.0, 5.0, 30.0, 61.0, 300.0, 901.0, 3600.0, 86_400.0, WEEK, -1.0, -90.0, -4000.0]


@st.composite
def burst(draw: st.DrawFn, ts: float) -> list[Usage | Outcome]:
    """A few events of one (workflow, run, agent): repeated, alternating or random actions, steps
    from 0 or from anywhere, and sometimes the run's outcome, before or after its calls."""
    wf, run_id, agent = draw(st.sampled_from(WORKFLOWS)), draw(st.sampled_from([None, *RUNS])), draw(st.sampled_from(AGENTS))
    n = draw(st.sampled_from([1, 1, 2, 4, 7, 12]))
    pattern = draw(st.sampled_from(["same", "ab", "abc", "random"]))
    fps = {"same": [draw(st.sampled_from(FPS))] * n, "ab": ["a", "b"] * n, "abc": ["a", "b", "c"] * n,
           "random": [draw(st.sampled_from(FPS)) for _ in range(n)]}[pattern]
    step = draw(st.one_of(st.none(), st.integers(0, 3), st.integers(0, 10**7)))
    status = draw(st.sampled_from(["ok", "ok", "error", "rate_limited"]))
    out = draw(st.sampled_from([0, 25, 222, MAX_TOKENS]))
    evs: list[Usage | Outcome] = []
    for i in range(n):
        evs.append(usage(ts, wf, run=run_id, agent=agent, step=None if step is None else step + i, fp=fps[i],
                         status=status, input_tokens=draw(st.sampled_from([0, 1, 3000, 50_000, MAX_TOKENS])),
                         output_tokens=out))
        ts += draw(st.sampled_from([0.0, 0.5, 3.0, 40.0]))
    if draw(st.integers(0, 2)) == 0:
        i = draw(st.integers(0, len(evs)))
        evs.insert(i, outcome(evs[i].ts if i < len(evs) else ts, wf, run=run_id, agent=agent))
    return evs


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    """Events and ticks after the warm-up; timestamps wander (gaps, repeats, going back)."""
    ts, steps = WARM_END, []
    for _ in range(draw(st.integers(1, 40))):
        if draw(st.integers(0, 4)) == 0:
            steps.append(("tick", draw(st.sampled_from([0.0, 10.0, 65.0, 1000.0, WEEK]))))
            continue
        ts = max(ts + draw(st.sampled_from(GAPS)), WARM_END - 86_400.0)
        steps += [("event", ev) for ev in draw(burst(ts))]
    return steps


CHECK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("kind", VARIANTS)
@CHECK
@given(steps=streams(), cut=st.floats(0.0, 1.0))
def test_restored_state_gives_the_same_alerts(kind: str, steps: list[Step], cut: float) -> None:
    k = int(cut * len(steps))
    whole = warm(kind)
    first, now = run(whole, steps[:k], WARM_END)
    stopped = warm(kind)
    assert [a.model_dump() for a in run(stopped, steps[:k], WARM_END)[0]] == [a.model_dump() for a in first]
    resumed = restored(stopped, kind)
    rest, _ = run(whole, steps[k:], now)
    again, _ = run(resumed, steps[k:], now)
    assert [a.model_dump() for a in again] == [a.model_dump() for a in rest]
    assert {w: resumed.dump(w) for w in resumed.workflows} == {w: whole.dump(w) for w in whole.workflows}


@pytest.fixture(scope="module")
def scenario() -> list[Step]:
    """Generated traffic with every kind of incident (loops, zombies, spikes), ticked every 10 s."""
    events, _ = generate(seed=11, days=0.5, workflows=6, warmup=2 * 3600)
    steps: list[Step] = []
    next_tick = events[0]["ts"] + 10.0
    for doc in events:
        while doc["ts"] >= next_tick:
            steps.append(("tick", next_tick - steps[-1][1].ts if steps and steps[-1][0] == "event" else 10.0))
            next_tick += 10.0
        steps.append(("event", validate_event(doc)))
    return steps


@pytest.mark.parametrize("kind", KINDS)
def test_restored_at_any_point_of_a_scenario_gives_the_same_alerts(kind: str, scenario: list[Step]) -> None:
    whole = MAKERS[kind]()
    start = scenario[0][1].ts
    expected = [a.model_dump() for a in run(whole, scenario, start)[0]]
    assert expected  # the scenario has incidents of every kind
    ticks = [i + 1 for i, (what, _) in enumerate(scenario) if what == "tick"]  # cut between batches, as the Monitor saves
    cuts = [ticks[len(ticks) * k // 9] for k in range(1, 9)]
    det, now, got = MAKERS[kind](), start, []
    for a, b in zip([0, *cuts], [*cuts, len(scenario)]):
        alerts, now = run(det, scenario[a:b], now)
        got += alerts
        det = restored(det, kind)
    assert [a.model_dump() for a in got] == expected


@pytest.mark.parametrize("kind", VARIANTS)
@CHECK
@given(steps=streams(), clocks=st.lists(st.sampled_from([-WEEK, -60.0, 0.0, 1.0, 59.0, 3600.0, WEEK]), max_size=20))
def test_never_raises_whatever_the_calls(kind: str, steps: list[Step], clocks: list[float]) -> None:
    det = warm(kind)
    now = WARM_END
    for i, (what, x) in enumerate(steps):
        if what == "event":
            det.observe(x, 0 if x.type == "outcome" else 10**11 if i % 7 == 0 else 5000)
        if clocks:
            now += clocks[i % len(clocks)]  # the clock may go back too: nothing must break
            det.flagged(now)
            for w in [*det.workflows, "unknown"]:
                assert isinstance(det.tick(w, now), list)
    for w in list(det.workflows):
        assert roundtrip(det.dump(w)) == det.dump(w)


@pytest.mark.parametrize("kind", VARIANTS)
def test_tick_of_a_workflow_it_does_not_hold_is_empty(kind: str) -> None:
    for det in (MAKERS[kind](), warm(kind)):
        assert det.tick("never-seen", WARM_END + WEEK) == []
        assert det.dump("never-seen") is None
        assert "never-seen" not in det.workflows


# -- versions, migrations, malformed docs -------------------------------------------------------------


@pytest.mark.parametrize("kind", VARIANTS)
@pytest.mark.parametrize("version", [9, 0.5, -1, "1", True, None, "missing", 1.0])  # 9: newer than any writes
def test_unknown_version_raises_a_state_error_that_says_whose(kind: str, version: Any) -> None:
    det = warm(kind)
    doc = det.dump("wf")
    before = copy.deepcopy(doc)
    bad = {k: x for k, x in doc.items() if k != "v"} if version == "missing" else {**doc, "v": version}
    with pytest.raises(StateError) as err:
        det.load("wf", bad)
    msg = str(err.value)
    said = "no format version" if version == "missing" else f"v{version}" if type(version) is int else repr(version)
    assert det.kind in msg and "'wf'" in msg and said in msg, msg
    assert det.dump("wf") == before  # a refused doc changes nothing


@pytest.mark.parametrize("kind", VARIANTS)
@pytest.mark.parametrize("doc", [None, [], "state", 1, {}])
def test_a_doc_that_is_no_state_raises_a_state_error(kind: str, doc: Any) -> None:
    det = MAKERS[kind]()
    with pytest.raises(StateError, match=det.kind):
        det.load("wf", doc)


def _leaves(doc: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, x in doc.items() for p in _leaves(x, (*path, k))] or [path]
    if isinstance(doc, list):
        return [p for i, x in enumerate(doc) for p in _leaves(x, (*path, i))] or [path]
    return [path]


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=5), st.just([]), st.just({}), st.just([1.0, 2.0]), st.just({"v": 1}))


@pytest.mark.parametrize("kind", VARIANTS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_malformed_doc_raises_a_state_error_or_loads(kind: str, data: st.DataObject) -> None:
    """Replace any one field with any JSON value (or drop it): load refuses with StateError or
    accepts it; never another exception, never a half-loaded workflow."""
    det = warm(kind)
    doc = det.dump("wf")
    path = data.draw(st.sampled_from([p for p in _leaves(doc) if p and p[0] != "v"]))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    before = det.dump("wf")
    try:
        det.load("wf", doc)
    except StateError as exc:
        assert det.kind in str(exc) and "'wf'" in str(exc)
        assert det.dump("wf") == before


V0 = {
    "loop": {
        "v": 0,
        "active": {"r9": {
            "agent": "a2", "team": None, "start": 1.0, "last": 16.0, "step": 3, "calls": 3, "tokens": 6600,
            "context": 2300, "spend_micros": 21_000, "crcs": [1, 2, 2], "same": 2, "same_err": 0, "alt": 0,
            "cycle": 0, "echo": 0, "last_out": 0, "flag": None, "fired": False, "ended": None,
        }},
        "baselines": {"calls": [3.0, 0.49, 0], "tokens": [12.6, 1.44, 0], "context": [10.3, 0.64, 0],
                      "usd": [-0.69, 1.44, 0]},
        "pending": [],
        "swept": 0.0,
    },
    "zombie": {
        "v": 0,
        "agents": {"a1": {"team": "ops", "last_outcome": 1.0, "last_call": 61.0, "active": 60.0, "calls": 1,
                          "micros": 900, "gap": 600.0, "gaps": 4, "fired": False}},
        "ended_runs": {"r1": {"agent": "a1", "team": None, "ended": 1.0, "calls": 0, "micros": 0, "last": 1.0,
                              "fired": False}},
        "last_check": 60.0,
    },
}
"""Hand-written docs of the illustrative v0 layouts (older names for the same fields)."""


@pytest.mark.parametrize("kind", ["loop", "zombie"])
def test_a_v0_doc_migrates_to_the_current_format(kind: str) -> None:
    det = MAKERS[kind]()
    det.load("wf", copy.deepcopy(V0[kind]))
    doc = det.dump("wf")
    assert doc is not None and doc["v"] == (LOOP_VERSION if kind == "loop" else 1)
    if kind == "loop":
        run = dict(zip(RUN_FIELDS, doc["runs"]["r9"]))
        assert (run["micros"], run["recent"], run["calls"], run["obs"]) == (21_000, [1, 2, 2], 3, None)
        assert "active" not in doc
    else:
        assert doc["ended"]["r1"]["agent"] == "a1" and doc["checked"] == 60.0 and doc["agents"]["a1"]["gaps"] == 4
    assert roundtrip(doc) == doc


def test_a_v1_loop_doc_loads_and_its_runs_carry_on_as_if_they_sent_no_observations() -> None:
    """v1 had no observation per run: a stored run halfway through a repeat streak finishes it."""
    det = LoopDetector()
    streak = [usage(T0 + k, run="r", step=k, fp="pytest" if k > 2 else f"f{k}") for k in range(1, 8)]
    run(det, [("event", e) for e in streak], T0)
    v3 = roundtrip(det.dump("wf"))
    v2 = {**v3, "v": 2, "runs": {rid: dict(zip(RUN_FIELDS, r)) for rid, r in v3["runs"].items()}}
    assert v3["v"] == 3 and v2["runs"]["r"]["same"] == 5 and v2["runs"]["r"]["obs"] is None
    v1 = {**v2, "v": 1, "runs": {rid: {k: x for k, x in r.items() if k != "obs"} for rid, r in v2["runs"].items()}}
    migrated = LoopDetector()
    migrated.load("wf", v1)
    assert migrated.dump("wf") == v3
    rest = [("event", usage(T0 + k, run="r", step=k, fp="pytest", obs="same")) for k in range(8, 12)]
    alerts, _ = run(migrated, rest, T0 + 8)
    assert [(a.evidence["loop_start_step"], a.evidence["repeats"]) for a in alerts] == [(3, 9)]
    with pytest.raises(StateError, match="'wf'"):
        LoopDetector().load("wf", {**v2, "runs": {"r": {**v2["runs"]["r"], "obs": -1}}})
    with pytest.raises(StateError, match="'wf'"):
        LoopDetector().load("wf", {**v3, "runs": {"r": v3["runs"]["r"][:-1]}})  # a field short


def test_a_v0_spike_doc_migrates_to_v2_and_behaves_the_same() -> None:
    """v1 → v2 added who spent in recent intervals: a migrated doc starts without, and alerts the same."""
    det = warm("spike")
    v2 = det.dump("wf")
    v1 = {k: x for k, x in v2.items() if k not in ("blame", "normal", "calm")}
    det.load("wf", {**v1, "v": 1})  # what the upgraded worker has: no one's spend known yet
    v0 = {k: x for k, x in v1.items() if k not in ("next", "window", "idle")}
    v0.update(v=0, next_interval=v1["next"], closed=v1["window"])  # v0 had no idle count: it comes from the rows
    migrated = SpikeDetector()
    migrated.load("wf", v0)
    assert migrated.dump("wf") == det.dump("wf") == {
        **v1, "v": 2, "blame": [[idx, [{}, {}, {}, [0] * 5]] for idx, _ in v1["open"]],
        "normal": {"agents": {}, "models": {}, "tokens": [0.0] * 5}, "calm": 0}
    steps = [("event", usage(WARM_END + 5 * k, input_tokens=40_000)) for k in range(200)] + [("tick", 0.0)]
    assert [a.model_dump() for a in run(migrated, steps, WARM_END)[0]] == [a.model_dump() for a in run(det, steps, WARM_END)[0]]


def test_spike_state_of_another_interval_is_refused_so_the_workflow_starts_afresh() -> None:
    """Interval indices of another length would be read as other times (after a longer interval is
    configured, stored ones would never come due): the Monitor starts such a workflow afresh."""
    doc = warm("spike").dump("wf")
    with pytest.raises(StateError, match="intervals of 60 s where this detector has 120 s"):
        SpikeDetector(interval=120.0).load("wf", doc)
    older = {k: x for k, x in doc.items() if k != "interval"}  # written before the interval was configurable
    det = SpikeDetector()
    det.load("wf", older)
    assert det.dump("wf") == doc


# -- bounded work -------------------------------------------------------------------------------


def test_spike_tick_scores_at_most_max_horizons_intervals_across_a_week(monkeypatch: pytest.MonkeyPatch) -> None:
    det = warm("spike")
    scored = []
    real = Horizon.score_learn
    monkeypatch.setattr(Horizon, "score_learn", lambda self, ts, *a: scored.append(ts) or real(self, ts, *a))
    per_interval = len(det.horizons)
    tick_all(det, WARM_END + 10.0)
    scored.clear()
    det.observe(usage(WARM_END + WEEK), 5000)  # one event a week ahead
    tick_all(det, WARM_END + WEEK + 70.0)
    assert len(scored) == per_interval  # the week's intervals are skipped; only the one with data is scored
    assert det.workflows["wf"].next == int((WARM_END + WEEK + 70.0 - det.grace) // det.interval)
    # events scattered over a year ahead, one per distant interval: work per interval with data, not per gap
    scored.clear()
    base = WARM_END + 2 * WEEK
    for k in range(50):
        det.observe(usage(base + k * WEEK), 5000)
    tick_all(det, base + 52 * WEEK)
    assert len(scored) == 50 * per_interval
    # a short silence (<= max(horizons) intervals) is learned when the next data comes: at most that many more
    scored.clear()
    end = base + 53 * WEEK
    det.observe(usage(end), 5000)
    det.observe(usage(end + max(det.horizons) * det.interval), 5000)
    tick_all(det, end + WEEK)
    assert len(scored) == (2 + max(det.horizons) - 1) * per_interval


NO_VOLUME = {f: (1e15, 0.1) for f in ("calls", "tokens", "context", "usd")}
HUGE = ("é" * 1_000_000, "y" * 1_000_000)


def _per_event_calls(det: Detector, events: list[Usage | Outcome]) -> list[int]:
    return [calls_during(lambda e=ev: det.observe(e, 5000)) for ev in events]  # type: ignore[misc]


def test_loop_observe_work_is_bounded_whatever_the_fingerprints() -> None:
    patterns = {
        "distinct": lambda k: f"f{k}",
        "alternating": lambda k: "ab"[k % 2],
        "3-cycle": lambda k: "abc"[k % 3],
        "same": lambda k: "x",
        "1 MB": lambda k: HUGE[k % 2],
        "1 MB distinct": lambda k: HUGE[0][:-12] + f"{k:012d}",
        "none": lambda k: None,
    }
    for name, fp in patterns.items():
        det = LoopDetector(priors=NO_VOLUME)  # so that nothing but the fingerprints can flag the run

        def call(k: int) -> Usage:
            return usage(T0 + k, run="r", step=k, fp=fp(k), output_tokens=100 + k % 7)

        early = _per_event_calls(det, [call(k) for k in range(1, 40)])
        for k in range(40, 20_000):
            det.observe(call(k), 5000)
        late = _per_event_calls(det, [call(k) for k in range(20_000, 20_040)])
        assert max(late) <= max(early) <= 200, (name, max(early), max(late))
        run_ = det.workflows["wf"].runs["r"]
        assert len(run_.recent) <= WINDOW and len(orjson.dumps(run_.dump())) < 2_000, name
        for a in det.flagged(T0 + 20_040):
            assert len(a.evidence.get("fingerprint") or "") <= MAX_ID_LEN


@pytest.mark.parametrize("kind", KINDS)
def test_observe_work_does_not_grow_with_runs_or_agents(kind: str) -> None:
    det = MAKERS[kind]()
    def burst(k: int) -> list[Usage | Outcome]:
        return [usage(T0 + k, run=f"r{k}", agent=f"a{k}", step=1, fp="f"), outcome(T0 + k + 0.5, run=f"r{k}", agent=f"a{k}"),
                usage(T0 + k + 1, run=f"r{k}", agent=f"a{k}", step=2, fp="f")]
    early = [c for k in range(10) for c in _per_event_calls(det, burst(k))]
    for k in range(10, 30_000):
        for ev in burst(k):
            det.observe(ev, 5000)
    late = [c for k in range(30_000, 30_010) for c in _per_event_calls(det, burst(k))]
    assert max(late) <= max(early) <= 200, (max(early), max(late))


# -- measured figures -----------------------------------------------------------------------------


def _us(fn: Callable[[], object], repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e6


def _observe_costs(det: Detector, events: list[Usage | Outcome]) -> tuple[float, float, float]:
    times = []
    for ev in events:
        start = time.perf_counter()
        det.observe(ev, 5000)
        times.append(time.perf_counter() - start)
    times.sort()
    return (sum(times) / len(times) * 1e6, times[int(0.999 * len(times))] * 1e6, times[-1] * 1e6)


def _stepwise(det: SpikeDetector, now: float) -> None:
    """The tick before idle intervals were skipped: every interval scored and learned."""
    for name, wf in det.workflows.items():
        while (wf.next + 1) * det.interval + det.grace <= now:
            wf.open.setdefault(wf.next, [0.0] * 6)  # an empty interval closed like one with data
            det._close(name, wf)


def measure() -> None:
    """The worst cases found, in µs on this machine (wall time: for the report, not asserted)."""
    print("observe, µs per event (mean / p99.9 / max) over 100k events (max: the garbage collector's pauses):")
    for name, fp in {"distinct fps": lambda k: f"f{k}", "alternating A/B": lambda k: "ab"[k % 2],
                     "3-cycle": lambda k: "abc"[k % 3], "no fingerprints": lambda k: None,
                     "1 MB fps, alternating": lambda k: HUGE[k % 2],
                     "1 MB fps, distinct": lambda k: HUGE[0][:-12] + f"{k:012d}"}.items():
        n = 2_000 if "MB" in name else 100_000
        for priors, note in ((None, ""), (NO_VOLUME, ", never flagged")):
            if "distinct" not in name and priors is not None:
                continue  # the patterns flag within a few steps anyway: after that observe only counts
            evs = [usage(T0 + k, run="r", step=k, fp=fp(k), output_tokens=100 + k % 7) for k in range(1, n + 1)]
            print(f"  {'loop, a run of ' + str(n) + ' steps, ' + name + note:52s} %.2f / %.2f / %.1f" % _observe_costs(
                LoopDetector(priors=priors), evs))
    for kind in KINDS:
        evs = [usage(T0 + k / 10, run=f"r{k}", agent=f"a{k}", step=1, fp="f") for k in range(100_000)]
        print(f"  {kind + ', 100k runs / agents in one workflow':52s} %.2f / %.2f / %.1f" % _observe_costs(MAKERS[kind](), evs))
    print("tick of one workflow, µs:")
    for kind in KINDS:
        det = warm(kind)
        tick_all(det, WARM_END + 60.0)
        print(f"  {kind:6s} nothing due                      %.2f" % _us(lambda: det.tick("wf", WARM_END + 61.0), 10_000))
    for kind, what in (("loop", "runs"), ("zombie", "agents")):
        det = MAKERS[kind]()
        for k in range(100_000):
            det.observe(usage(T0 + k / 100, run=f"r{k}", agent=f"a{k}", step=1), 5000)
        print(f"  {kind:6s} sweep/check due, 100k {what:6s}         %.0f" % _us(lambda: det.tick("wf", T0 + 1001.0)))
    det = warm("spike")
    tick_all(det, WARM_END + 60.0)
    det.observe(usage(WARM_END + WEEK), 5000)
    print("  spike  one event a week ahead            %.0f (%d intervals skipped)" % (
        _us(lambda: det.tick("wf", WARM_END + WEEK + 70.0)), WEEK // 60))
    det = warm("spike")
    tick_all(det, WARM_END + 60.0)
    det.observe(usage(WARM_END + WEEK), 5000)
    print(f"  spike  the same, one _close per interval (before) {_us(lambda: _stepwise(det, WARM_END + WEEK + 70.0)):.0f}")
    det.observe(usage(WARM_END + WEEK + 61.0), 5000)
    print("  spike  one interval with data due        {:.0f}".format(_us(lambda: det.tick("wf", WARM_END + WEEK + 130.0))))
    for kind in KINDS:
        det = warm(kind)
        print(f"dump + orjson of the warm {kind:6s} workflow: %.0f µs, %d bytes" % (
            _us(lambda: orjson.dumps(det.dump("wf")), 100), len(orjson.dumps(det.dump("wf")))))
    det = LoopDetector()
    for k in range(100_000):
        det.observe(usage(T0 + k / 100, run=f"r{k}", step=1, fp="f"), 5000)
    doc = det.dump("wf")
    print("dump + orjson of a loop workflow with 100k active runs: {:.0f} ms, {:.1f} MB; load {:.0f} ms".format(
        _us(lambda: orjson.dumps(det.dump("wf"))) / 1e3, len(orjson.dumps(doc)) / 1e6,
        _us(lambda: LoopDetector().load("wf", doc)) / 1e3))


if __name__ == "__main__":
    measure()
