"""The event-time detectors: loops, zombies, spikes, and the scenario generator that scores them.

No mocks, no broker: events go in, alerts come out, time moves only when a
test says so.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterable

import orjson
import pytest

from detectors.detector import Detector, LogBaseline
from detectors.loops import LoopDetector
from detectors.registry import build
from detectors.spikes import RateScorer, SeriesScorer, SpikeDetector
from detectors.zombies import ZombieDetector
from replay.scenarios import generate
from replay.scorecard import detector_alerts, match, run_scorecard
from schemas.alerts import Alert
from schemas.decode import validate_event
from schemas.events import OutcomeEvent, UsageEvent

T0 = 1_740_960_000.0  # 2025-03-03 00:00 UTC
_ids = iter(range(10**9))


def usage(ts: float, workflow: str = "wf", *, run: str | None = None, step: int | None = None,
          fp: str | None = None, status: str = "ok", agent: str | None = None, input_tokens: int = 3000,
          output_tokens: int = 200, obs: str | None = None) -> UsageEvent:
    return UsageEvent(type="usage", event_id=f"u{next(_ids)}", ts=ts, workflow=workflow, model="gpt-4o-mini",
                      run_id=run, step=step, fingerprint=fp, observation=obs, status=status, agent_id=agent,
                      input_tokens=input_tokens, output_tokens=output_tokens)


def outcome(ts: float, workflow: str = "wf", *, run: str | None = None, agent: str | None = None) -> OutcomeEvent:
    return OutcomeEvent(type="outcome", event_id=f"o{next(_ids)}", ts=ts, workflow=workflow, outcome="done",
                        run_id=run, agent_id=agent)


def tick_all(det: Detector, now: float) -> list[Alert]:
    """What the Monitor does every tick: each workflow the detector holds, over a copy of the keys."""
    return [a for name in list(det.workflows) for a in det.tick(name, now)]


def drive(det: Detector, events: Iterable[UsageEvent | OutcomeEvent], cost: int = 5000,
          tick: float = 10.0, flush: float = 3600.0) -> list[Alert]:
    """Feed events in order and tick every `tick` s of event time, like the replay does."""
    alerts: list[Alert] = []
    next_tick = None
    for ev in events:
        next_tick = ev.ts + tick if next_tick is None else next_tick
        while ev.ts >= next_tick:
            alerts += tick_all(det, next_tick)
            next_tick += tick
        det.observe(ev, cost if ev.type == "usage" else 0)
    if next_tick is not None:
        alerts += tick_all(det, next_tick + flush)
    return alerts


def agent_run(run: str, fps: list[str | None], start: float, *, workflow: str = "wf", errors: Iterable[int] = (),
              done: bool = True, gap: float = 5.0, outputs: list[int] | None = None,
              agent: str | None = None, observations: list[str | None] | None = None) -> list[UsageEvent | OutcomeEvent]:
    """One run: a call per fingerprint (and observation, if given), context growing, an outcome at
    the end if `done`."""
    errs = set(errors)
    evs: list[UsageEvent | OutcomeEvent] = [
        usage(start + gap * k, workflow, run=run, step=k, fp=fp, status="error" if k in errs else "ok", agent=agent,
              input_tokens=2000 + 700 * k, output_tokens=outputs[k - 1] if outputs else 150 + 37 * (k % 11),
              obs=observations[k - 1] if observations else None)
        for k, fp in enumerate(fps, 1)
    ]
    if done:
        evs.append(outcome(start + gap * len(fps) + 1, workflow, run=run, agent=agent))
    return evs


def fresh(n: int, prefix: str = "a") -> list[str | None]:
    return [f"{prefix}{k:04d}" for k in range(n)]


# -- loops --------------------------------------------------------------------------------------


def test_loop_same_successful_action_nine_times_fires_within_the_loop_and_names_it():
    fps = fresh(5) + ["pytest"] * 10
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0, done=False))
    assert [(a.kind, a.run_id) for a in alerts] == [("loop", "r1")]
    ev = alerts[0].evidence
    assert ev["fingerprint"] == "pytest" and ev["loop_start_step"] == 6
    assert ev["steps"] - ev["loop_start_step"] + 1 <= 10  # within 10 steps of the loop's start
    assert {"steps", "repeats", "tokens", "usd", "usd_per_min", "fingerprint"} <= ev.keys()
    assert alerts[0].severity == "critical" and alerts[0].alert_id == "loop:wf:r1"
    assert (ev["rule"], ev["repeats"], ev["steps"]) == ("repeated action", 9, 14)


def test_loop_polls_of_up_to_eight_successful_repeats_are_normal():
    """Without observations: polling CI, a deploy, a queue (before: 4 repeats alerted)."""
    fps = fresh(4) + ["status"] * 3 + fresh(4, "b") + ["poll"] * 2 + fresh(5, "c") + ["gh run view"] * 8 + fresh(3, "d")
    assert drive(LoopDetector(), agent_run("r1", fps, T0)) == []


def test_loop_poll_of_six_ok_actions_with_changing_observations_is_not_a_loop():
    fps = fresh(4) + ["kubectl rollout status"] * 6 + fresh(3, "b")
    obs = fresh(4, "o") + [f"{k} of 6 replicas updated" for k in range(1, 7)] + fresh(3, "p")
    assert drive(LoopDetector(), agent_run("r1", fps, T0, observations=obs)) == []
    waiting = fresh(4, "o") + ["pending"] * 7 + ["done"] + fresh(3, "p")  # the same answer until the wait is over
    fps = fresh(4) + ["curl /jobs/7"] * 8 + fresh(3, "b")
    assert drive(LoopDetector(), agent_run("r2", fps, T0, observations=waiting)) == []


def test_loop_a_poll_whose_answer_keeps_changing_is_flagged_only_when_it_fills_the_window():
    """A repeat with a new observation is progress; 16 steps of one action are a loop whatever they see."""
    fps = fresh(4) + ["gh run view"] * 30
    obs = fresh(4, "o") + [f"running, {k} min" for k in range(30)]
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0, done=False, observations=obs))
    assert [(a.evidence["rule"], a.evidence["steps"]) for a in alerts] == [("1 distinct actions in 16 steps", 20)]


def test_loop_six_identical_failing_actions_are_a_loop_whatever_they_observe():
    fps = fresh(4) + ["apply_patch"] * 6 + fresh(3, "b")
    obs = fresh(4, "o") + [f"error at line {k}" for k in range(6)] + fresh(3, "p")
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0, errors=range(5, 11), observations=obs))
    assert [(a.evidence["rule"], a.evidence["loop_start_step"], a.evidence["repeats"]) for a in alerts] == [
        ("repeated failing action", 5, 3)]


def test_loop_fifty_identical_actions_with_identical_observations_are_caught_within_a_few_steps():
    """The real SWE-agent loop: one command, one answer, 50+ times until a cost cap."""
    fps = fresh(6) + ["python reproduce.py"] * 50
    obs = fresh(6, "o") + ["Traceback ... AssertionError"] * 50
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0, done=False, observations=obs))
    assert len(alerts) == 1
    ev = alerts[0].evidence
    assert (ev["rule"], ev["loop_start_step"], ev["repeats"]) == ("repeated action and observation", 7, 9)
    assert ev["steps"] - ev["loop_start_step"] + 1 <= 10  # flagged on the 9th, alerted at the next tick


def test_loop_a_changed_observation_restarts_the_count_and_the_same_again_counts_on():
    fps = fresh(12) + ["make test"] * 20
    obs = fresh(12, "o") + ["fail"] * 5 + ["pass"] + ["fail"] * 14  # steps 13-17, 18, 19-32
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0, done=False, observations=obs))
    assert [(a.evidence["loop_start_step"], a.evidence["repeats"]) for a in alerts] == [(19, 9)]


def test_loop_same_failing_action_three_times_fires():
    fps = fresh(4) + ["apply_patch"] * 3 + fresh(3, "b")
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0, errors=[5, 6, 7]))
    assert [a.evidence["rule"] for a in alerts] == ["repeated failing action"]
    assert alerts[0].evidence["repeats"] == 3


def test_loop_ab_alternation_over_six_steps_fires():
    fps = fresh(3) + ["open a.py", "open b.py"] * 3 + fresh(2, "b")
    alerts = drive(LoopDetector(), agent_run("r1", fps, T0))
    assert [a.evidence["rule"] for a in alerts] == ["A/B alternation"]
    assert alerts[0].evidence["loop_start_step"] == 4
    obs = fresh(3, "o") + ["a.py: 40 lines", "b.py: 12 lines"] * 3 + fresh(2, "p")  # and with observations
    assert [a.evidence["rule"] for a in drive(LoopDetector(), agent_run("r2", fps, T0, observations=obs))] == [
        "A/B alternation"]


def test_loop_three_step_cycle_and_few_distinct_tail_fire():
    cycle = drive(LoopDetector(), agent_run("r1", fresh(2) + ["a", "b", "c"] * 3, T0, done=False))
    assert [a.evidence["rule"] for a in cycle] == ["3-step cycle"]
    mixed = ["a", "b", "a", "c", "b", "a", "c", "c", "b", "a", "b", "c", "a", "c", "b", "a"]
    tail = drive(LoopDetector(), agent_run("r2", fresh(4) + mixed, T0, done=False))
    assert len(tail) == 1 and "distinct actions" in tail[0].evidence["rule"]


def test_loop_alerts_once_per_run_and_keeps_counting_spend():
    det = LoopDetector()
    alerts = drive(det, agent_run("r1", fresh(3) + ["x"] * 60, T0, done=False), flush=0.0)
    assert len(alerts) == 1
    assert det.workflows["wf"].runs["r1"].calls == 63


def test_loop_long_productive_run_with_an_outcome_is_normal():
    det = LoopDetector()
    evs = []
    for i in range(40):  # a workflow whose runs take 10–20 steps
        evs += agent_run(f"n{i}", fresh(10 + i % 11, f"n{i}-"), T0 + 300 * i)
    evs += agent_run("long", fresh(60, "long-"), T0 + 300 * 40)  # 4× a typical run, new actions throughout
    assert drive(det, evs) == []


def test_loop_silent_run_far_beyond_the_workflows_runs_fires():
    det = LoopDetector()
    evs = []
    for i in range(40):
        evs += agent_run(f"n{i}", [None] * (10 + i % 11), T0 + 300 * i)
    rng = random.Random(1)
    evs += agent_run("loop", [None] * 400, T0 + 300 * 40, done=False,
                     outputs=[rng.randint(80, 400) for _ in range(400)])
    alerts = drive(det, evs)
    assert [(a.run_id, a.severity) for a in alerts] == [("loop", "warning")]
    ev = alerts[0].evidence
    assert ev["ratio_to_typical"] > 3 and ev["steps"] < 200  # fires well before a 15× cost cap


def test_loop_identical_outputs_without_fingerprints_fire():
    alerts = drive(LoopDetector(), agent_run("r1", [None] * 12, T0, done=False, outputs=[90, 311, 54] + [222] * 9))
    assert [a.evidence["rule"] for a in alerts] == ["identical 222-token outputs"]


def test_loop_ignores_spend_after_the_runs_outcome():
    det = LoopDetector()
    evs = agent_run("r1", fresh(5), T0) + [usage(T0 + 100 + k, run="r1", step=6 + k, fp="poll") for k in range(10)]
    assert drive(det, evs) == []  # that is a zombie, not a loop


# Provenance: per-call (prompt, completion) tokens of sympy__sympy-19040, the longest
# resolved run (132 calls) of mini-swe-agent + Gemini 3 Pro on SWE-bench Verified, and the
# totals (calls, max prompt, tokens, USD) of the first 40 resolved runs of the same data
# set without it; from ../shared/data/mini_swe_agent_gemini3_pro (MIT, © 2025 Kilian A.
# Lieret and Carlos E. Jimenez).
REAL_LONGEST = [
    (1752, 104), (1914, 294), (2120, 27), (2217, 94), (3091, 56), (3513, 60), (5157, 50), (5266, 60), (6099, 51),
    (6205, 60), (6556, 67), (7481, 316), (7834, 50), (8142, 391), (8550, 23), (8659, 615), (9291, 27), (9440, 315),
    (9772, 27), (9906, 169), (10141, 57), (10496, 104), (10645, 51), (10960, 51), (11133, 54), (11588, 136),
    (11761, 49), (12284, 508), (13056, 496), (13569, 58), (13697, 217), (13929, 30), (14364, 125), (14592, 54),
    (15010, 308), (15343, 677), (16123, 179), (16408, 30), (16710, 898), (18036, 46), (18121, 50), (18536, 84),
    (19096, 445), (19558, 42), (19645, 49), (20082, 78), (20199, 51), (20632, 1340), (22039, 49), (22337, 38),
    (22411, 47), (22745, 3340), (26102, 29), (26672, 299), (27074, 52), (27497, 213), (27735, 589), (28580, 127),
    (28570, 29), (28960, 788), (29817, 49), (30233, 138), (30408, 51), (30765, 47), (31084, 1283), (32486, 51),
    (32907, 39), (33002, 51), (33593, 879), (34729, 35), (35150, 208), (35385, 850), (36341, 125), (36485, 799),
    (37150, 442), (37609, 63), (37709, 53), (38416, 103), (38536, 30), (38619, 136), (38810, 509), (39336, 29),
    (39420, 51), (39997, 213), (40246, 51), (40632, 208), (40878, 52), (41382, 51), (41758, 920), (42646, 995),
    (44039, 70), (44138, 48), (44317, 110), (44444, 1945), (46492, 505), (47014, 65), (47663, 90), (47770, 27),
    (48316, 68), (48437, 107), (48645, 45), (48833, 39), (49040, 75), (49130, 33), (49681, 31), (49859, 1024),
    (50566, 50), (51303, 960), (52219, 969), (53223, 50), (53525, 426), (53968, 823), (54894, 201), (55110, 508),
    (55635, 61), (55733, 55), (56361, 146), (56796, 90), (56903, 25), (57066, 354), (57523, 57), (57624, 34),
    (57729, 132), (58310, 82), (58425, 50), (58635, 48), (58880, 362), (59261, 22), (59391, 100), (59510, 236),
    (59398, 77), (59876, 42),
]
REAL_RUNS = [
    (30, 23942, 435472, 0.3013), (14, 12277, 108480, 0.1613), (31, 13719, 265888, 0.2336), (61, 19053, 673020, 0.4597),
    (23, 13913, 211873, 0.2189), (24, 10251, 152534, 0.1623), (24, 14952, 250064, 0.2199), (24, 10009, 155309, 0.1849),
    (37, 16234, 376552, 0.2902), (36, 16775, 427088, 0.2819), (46, 25526, 690477, 0.4143), (28, 26425, 394176, 0.3458),
    (46, 83319, 1478068, 1.6707), (64, 32222, 1046232, 0.6424), (36, 16035, 349945, 0.2667), (25, 16099, 277384, 0.2684),
    (19, 14340, 169388, 0.2123), (28, 25526, 379150, 0.3826), (69, 63896, 2616769, 1.3604), (38, 26665, 666660, 0.4287),
    (42, 19090, 509158, 0.3423), (38, 26055, 603981, 0.4509), (38, 30764, 761081, 0.4709), (41, 24556, 714804, 0.4805),
    (38, 17501, 377466, 0.3436), (33, 17775, 395268, 0.3044), (16, 14214, 152143, 0.1758), (19, 17465, 200300, 0.2133),
    (13, 7776, 73939, 0.1066), (26, 21850, 354367, 0.2672), (40, 33234, 803284, 0.6366), (18, 12355, 163401, 0.1535),
    (25, 21963, 312553, 0.2298), (69, 40534, 1118163, 0.6924), (44, 26449, 582357, 0.5277), (29, 14915, 305252, 0.2487),
    (26, 19038, 359106, 0.3358), (61, 39292, 1312985, 0.792), (27, 14061, 281041, 0.2255),
]


def _real_like_run(run: str, start: float, calls: int, context: int, tokens: int, usd: float) -> list[UsageEvent | OutcomeEvent]:
    """A run with a real run's totals: `calls` calls, the largest prompt last."""
    rest = min((tokens - context) // max(calls - 1, 1), context)
    evs: list[UsageEvent | OutcomeEvent] = [
        usage(start + 5 * k, "swe", run=run, step=k, input_tokens=context if k == calls else rest, output_tokens=0)
        for k in range(1, calls + 1)
    ]
    return evs + [outcome(start + 5 * calls + 1, "swe", run=run)]


def test_loop_longest_real_resolved_run_is_not_a_loop():
    cold = LoopDetector()
    run = [usage(T0 + 5 * k, "swe", run="sympy-19040", step=k, input_tokens=p, output_tokens=c)
           for k, (p, c) in enumerate(REAL_LONGEST, 1)]
    assert drive(cold, run, cost=13_100) == []
    learned = LoopDetector()
    costs = {}
    evs: list[UsageEvent | OutcomeEvent] = []
    for i, (calls, context, tokens, usd) in enumerate(REAL_RUNS):
        evs += _real_like_run(f"real{i}", T0 + 1000 * i, calls, context, tokens, usd)
        costs[f"real{i}"] = round(usd * 1e6 / calls)
    for ev in evs:
        learned.observe(ev, costs[ev.run_id] if ev.type == "usage" else 0)  # type: ignore[index]
    assert drive(learned, [e.model_copy(update={"ts": e.ts + 50_000}) for e in run], cost=13_100) == []


def test_loop_run_state_stays_small_however_long_the_run():
    det = LoopDetector()
    for k in range(1, 10_001):
        det.observe(usage(T0 + k, run="r", step=k, fp=f"{k * 2654435761 % 2**32:08x}", agent="agent-7"), 1234)
    run = det.workflows["wf"].runs["r"]
    assert len(orjson.dumps(run.dump())) < 1024
    assert _deep_size(run) <= 2048


def _deep_size(obj: object, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if hasattr(obj, "__slots__"):
        size += sum(_deep_size(getattr(obj, s), seen) for s in obj.__slots__ if hasattr(obj, s))  # type: ignore[attr-defined]
    elif isinstance(obj, (list, tuple)):
        size += sum(_deep_size(x, seen) for x in obj)
    return size


# -- zombies ------------------------------------------------------------------------------------


def always_on(agent: str, start: float, hours: float, outcome_every: float | None, stop_outcomes_at: float = math.inf,
              call_every: float = 60.0) -> list[UsageEvent | OutcomeEvent]:
    evs: list[UsageEvent | OutcomeEvent] = []
    t = start
    while t < start + hours * 3600:
        evs.append(usage(t, "inbox", agent=agent))
        if outcome_every and (t - start) % outcome_every == outcome_every / 2 and t < stop_outcomes_at:
            evs.append(outcome(t + 1, "inbox", agent=agent))
        t += call_every
    return evs


def test_zombie_agent_that_stops_producing_outcomes_fires_once():
    stop = T0 + 6 * 3600
    alerts = drive(ZombieDetector(), always_on("w1", T0, 14, outcome_every=600, stop_outcomes_at=stop))
    assert [(a.kind, a.agent_id) for a in alerts] == [("zombie", "w1")]
    assert stop < alerts[0].ts < stop + 3 * 3600
    assert alerts[0].evidence["usd"] > 0 and alerts[0].evidence["typical_gap_min"] == pytest.approx(10, rel=0.3)


def test_zombie_healthy_agent_and_agent_without_outcomes_are_quiet():
    assert drive(ZombieDetector(), always_on("w1", T0, 24, outcome_every=600)) == []
    assert drive(ZombieDetector(), always_on("w2", T0, 24, outcome_every=None)) == []


def test_zombie_idle_overnight_is_not_a_zombie():
    day = always_on("w1", T0, 8, outcome_every=600)
    morning = always_on("w1", T0 + 20 * 3600, 2, outcome_every=600)  # 12 h without calls, then back to work
    assert drive(ZombieDetector(), day + morning) == []


def test_zombie_spending_after_the_runs_outcome_fires_but_one_straggler_does_not():
    run = agent_run("r1", fresh(6), T0, workflow="inbox", agent="worker-3")
    straggler = [usage(T0 + 32, "inbox", run="r1", agent="worker-3")]
    assert drive(ZombieDetector(), run + straggler) == []
    polling = [usage(T0 + 40 + 30 * k, "inbox", run="r2", agent="worker-4") for k in range(6)]
    ended = [outcome(T0 + 35, "inbox", run="r2", agent="worker-4")]
    alerts = drive(ZombieDetector(), ended + polling)
    assert [(a.agent_id, a.run_id, a.evidence["calls_after_end"]) for a in alerts] == [("worker-4", "r2", 3)]


# -- spikes -------------------------------------------------------------------------------------


def diurnal(minute: int, growth: float = 0.0) -> float:
    hour = (minute / 60) % 24
    return (0.2 + 0.8 * math.exp(-0.5 * ((hour - 13) / 3) ** 2)) * (1 + growth * minute / 1440)


def test_series_scorer_ranks_an_obvious_spike_highest():
    rng = random.Random(7)
    scorer = SeriesScorer(warmup=60)
    scores = []
    for m in range(3 * 1440):
        value = 100 * diurnal(m) * math.exp(0.1 * rng.gauss(0, 1)) * (6 if m == 2500 else 1)
        scores.append(scorer.score_one({"ts": T0 + 60 * m, "value": value}))
        scorer.learn_one({"ts": T0 + 60 * m, "value": value})
    assert max(range(len(scores)), key=scores.__getitem__) == 2500
    assert scores[2500] > 0.8 and sorted(scores)[-2] < 0.5
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_series_scorer_is_causal_and_deterministic():
    a, b = SeriesScorer(), SeriesScorer()
    for m in range(200):
        a.learn_one({"ts": T0 + 60 * m, "value": 50 + m % 9})
        b.learn_one({"ts": T0 + 60 * m, "value": 50 + m % 9})
    before = a.dump()
    s = a.score_one({"ts": T0 + 12_000, "value": 400})
    assert a.dump() == before  # scoring does not learn
    assert s == b.score_one({"ts": T0 + 12_000, "value": 400})


def test_series_scorer_does_not_learn_a_spike_as_the_new_normal():
    s = SeriesScorer(warmup=30)
    for m in range(300):
        s.learn_one({"ts": T0 + 60 * m, "value": 100})
    for m in range(300, 320):
        s.learn_one({"ts": T0 + 60 * m, "value": 800})
    assert s.expected(T0 + 60 * 320) == pytest.approx(100, rel=0.05)


def test_rate_scorer_counts_are_judged_by_their_exposure():
    s = RateScorer()
    for k in [0, 1, 0, 2, 1] * 20:
        s.learn_one({"count": k, "exposure": 5})  # ~1 run per 5 minutes
    assert s.score_one({"count": 2, "exposure": 5}) < 0.1 and s.score_one({"count": 25, "exposure": 5}) > 0.9


def workflow_minutes(minutes: range, calls_per_min: float, rng: random.Random, *, calls_x=lambda m: 1.0,
                     tokens_x=lambda m: 1.0, error_p=lambda m: 0.01, growth: float = 0.0):
    for m in minutes:
        n = _poisson(rng, calls_per_min * diurnal(m, growth) * calls_x(m))
        for i in range(n):
            err = rng.random() < error_p(m)
            yield usage(T0 + 60 * m + 60 * i / max(n, 1), "search",
                        input_tokens=int(3000 * tokens_x(m) * math.exp(0.5 * rng.gauss(0, 1))),
                        output_tokens=0 if err else 200, status="error" if err else "ok")


def _poisson(rng: random.Random, lam: float) -> int:
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p < limit:
            return k
        k += 1


def _spike_alerts(**kwargs) -> list[Alert]:
    """Two days of a chat workflow at up to 30 calls/min, with whatever `kwargs` change."""
    return drive(SpikeDetector(), workflow_minutes(range(2 * 1440), 30, random.Random(3), **kwargs), 9000)


def test_spikes_daily_peaks_and_gradual_growth_are_normal():
    assert _spike_alerts(growth=0.5) == []


@pytest.mark.parametrize(("kwargs", "cause"), [
    ({"calls_x": lambda m: 5.0 if 1900 <= m < 1930 else 1.0}, "traffic surge"),
    ({"tokens_x": lambda m: 4.0 if 1900 <= m < 1940 else 1.0}, "context bloat"),
    ({"calls_x": lambda m: 3.0 if 1900 <= m < 1920 else 1.0,
      "error_p": lambda m: 0.6 if 1900 <= m < 1920 else 0.01}, ("retry storm", "error spike")),
])
def test_spikes_name_what_moved(kwargs, cause):
    alerts = _spike_alerts(**kwargs)
    assert len(alerts) == 1 and alerts[0].evidence["cause"] in cause
    assert T0 + 1900 * 60 < alerts[0].ts < T0 + 1915 * 60
    assert alerts[0].alert_id.startswith("spike:search:workflow:")


class StepwiseSpikes(SpikeDetector):
    """The tick before idle intervals were skipped: every interval closed, scored and learned."""

    def tick(self, workflow: str, now: float) -> list[Alert]:
        wf, alerts = self.workflows.get(workflow), []
        while wf is not None and (wf.next + 1) * self.interval + self.grace <= now:
            wf.open.setdefault(wf.next, [0.0] * 6)  # an empty interval closed like one with data
            alert = self._close(workflow, wf)
            if alert is not None:
                alerts.append(alert)
        return alerts


def _with_silences(longest: int, rng: random.Random, surge: bool = False) -> list[UsageEvent | OutcomeEvent]:
    """Two days of a chat workflow that pauses for 1 to `longest` minutes at a time."""
    minutes, m = [], 0
    while m < 2 * 1440:
        busy = rng.randint(5, 60)
        minutes += range(m, m + busy)
        m += busy + rng.randint(1, longest)
    if surge:
        minutes = sorted({*minutes, *range(1980, 2040)})
    return list(workflow_minutes(minutes, 30, rng, calls_x=lambda m: 6.0 if surge and 2000 <= m < 2030 else 1.0))


def test_spikes_silences_up_to_the_longest_horizon_are_learned_as_before():
    evs = _with_silences(20, random.Random(5), surge=True)  # 20 = max(horizons): every empty interval is learned
    new, old = SpikeDetector(), StepwiseSpikes()
    alerts = drive(new, evs, 9000, flush=0.0)
    assert alerts and [a.model_dump() for a in alerts] == [a.model_dump() for a in drive(old, evs, 9000, flush=0.0)]
    assert new.dump("search") == old.dump("search")


def test_spikes_a_workflow_that_pauses_for_hours_does_not_alarm_when_it_resumes():
    evs = _with_silences(600, random.Random(6))
    every_10s, every_hour, stepwise = SpikeDetector(), SpikeDetector(), StepwiseSpikes()
    end = evs[-1].ts + 86_400.0
    assert drive(every_10s, evs, 9000) + tick_all(every_10s, end) == []
    assert drive(every_hour, evs, 9000, tick=3600.0) + tick_all(every_hour, end) == []
    assert every_10s.dump("search") == every_hour.dump("search")  # the same whatever the tick cadence
    # learning every minute of every pause, as before, taught the scorers that "off" is the level
    assert len(drive(stepwise, evs, 9000)) >= 5


def _business_hours(days: int, rng: random.Random, incident: tuple[int, float, float] | None = None):
    """A workflow busy 08:00–20:00 and silent at night; `incident` = (day, hour, ×calls) for 30 min."""
    minutes = [m for m in range(days * 1440) if 8 <= (m / 60) % 24 < 20]
    if incident:
        day, hour, _ = incident
        minutes = sorted({*minutes, *range(int((day * 24 + hour) * 60), int((day * 24 + hour) * 60) + 30)})

    def calls_x(m: int) -> float:
        if incident and 0 <= m - (incident[0] * 24 + incident[1]) * 60 < 30:
            return incident[2]
        return 1.0

    return list(workflow_minutes(minutes, 20, rng, calls_x=calls_x))


@pytest.mark.parametrize(("incident", "at"), [(None, None), ((3, 14.0, 5.0), 3 * 24 + 14), ((3, 3.0, 10.0), 3 * 24 + 3)])
def test_spikes_business_hours_mornings_are_normal_and_afternoon_and_night_surges_are_not(incident, at):
    alerts = drive(SpikeDetector(), _business_hours(5, random.Random(1), incident), 9000)
    assert [round((a.ts - T0) / 3600) for a in alerts] == ([] if at is None else [at])
    if incident is None:
        assert len(drive(StepwiseSpikes(), _business_hours(5, random.Random(1)), 9000)) >= 3  # before: every morning


# -- shared: baselines, determinism, snapshots, scenarios (all checks: test_detector_checks.py) ---


def test_log_baseline_moves_from_its_prior_to_the_data():
    b = LogBaseline(median=10, sigma=1.0, prior_n=5)
    for _ in range(200):
        b.learn_one(100)
    assert b.typical() == pytest.approx(100, rel=0.1)
    assert b.limit(4) < 5 * b.typical()  # the prior's spread (e^4 = 55×) has mostly given way to the data's


@pytest.fixture(scope="module")
def scenario():
    return generate(seed=11, days=0.5, workflows=6, warmup=2 * 3600)


def test_same_input_gives_the_same_alerts(scenario):
    events, _ = scenario
    first = [a.model_dump() for a in detector_alerts(events, build())]
    second = [a.model_dump() for a in detector_alerts(events, build())]
    assert first and first == second


def test_saved_detectors_carry_on_exactly(scenario):
    events, _ = scenario
    half = len(events) // 2
    whole = detector_alerts(events, build())
    dets = build()
    alerts = detector_alerts(events[:half], dets, flush=0.0)
    restored = build()
    for det, new in zip(dets, restored):
        for name in det.workflows:
            new.load(name, orjson.loads(orjson.dumps(det.dump(name))))
    rest = detector_alerts(events[half:], restored)
    assert {a.alert_id for a in alerts + rest} == {a.alert_id for a in whole}


def test_scenario_events_follow_the_wire_contract_and_seeds_differ(scenario):
    events, labels = scenario
    for doc in events:
        validate_event(doc)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    assert {lab["kind"] for lab in labels} == {"loop", "spike", "zombie"}
    for lab in labels:
        assert {"kind", "subject", "id", "start", "end"} <= lab.keys() and lab["start"] <= lab["end"]
    other, _ = generate(seed=12, days=0.5, workflows=6, warmup=2 * 3600)
    assert len(other) != len(events)


def test_a_days_scenario_has_realistic_volume():
    events, _ = generate(seed=5, days=1, workflows=10)
    assert len(events) > 50_000


def test_detectors_find_the_scenarios_incidents(scenario):
    events, labels = scenario
    rows, _, false = match(detector_alerts(events, build()), labels)
    assert sum(r["alert"] is not None for r in rows) >= 0.8 * len(rows)
    assert len(false) <= 1


def test_scorecard_reports_every_kind():
    result = run_scorecard(seeds=[3], shared_data=None, days=0.5, workflows=6)
    rows = result["scenarios"]["rows"]
    assert {"loop", "spike", "zombie", "fingerprint_loop", "silent_loop"} <= rows.keys()
    assert rows["fingerprint_loop"]["within_steps"] == 1.0
    assert "ms_cloud" not in result
