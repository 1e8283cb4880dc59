"""The anomaly models: River's own estimator checks, the novelty scorer's behaviours, models by
import path (`detectors/models.py`) and a spike detector running a configured model."""

from __future__ import annotations

import base64
import functools
import math
import pickle
import random
from typing import Any

import orjson
import pytest
from river import anomaly, base, checks

from detectors.models import FeatureModel, ModelError, OnValue, build
from detectors.novelty import NoveltyScorer
from detectors.spikes import RateScorer, SeriesScorer, SpikeDetector
from schemas.events import UsageEvent

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def river_checks(model: base.Estimator) -> list[Any]:
    """River's shared checks that do not need a dataset (ours score named features, its datasets have others)."""
    skips, out = model._unit_test_skips(), []
    try:
        for check in checks.yield_checks(model):
            if isinstance(check, functools.partial):  # the first dataset check: the general ones are done
                break
            if check.__name__ not in skips:
                out.append(check)
    except ModuleNotFoundError:  # building River's datasets needs scikit-learn, not installed here
        pass
    return out


@pytest.mark.parametrize("model", [NoveltyScorer(), SeriesScorer(), RateScorer(), OnValue(anomaly.GaussianScorer())],
                         ids=lambda m: type(m).__name__)
def test_river_estimator_checks_pass(model: base.Estimator) -> None:
    assert isinstance(model, base.AnomalyDetector)
    ran = 0
    for check in river_checks(model):
        check(model.clone())
        ran += 1
    assert ran >= 10  # repr, clone, pickling, params...


def feed(model: NoveltyScorer, values: list[float]) -> list[float]:
    out = []
    for v in values:
        out.append(model.score_one({"value": v}))
        model.learn_one({"value": v})
    return out


def square_day(day: int, rng: random.Random) -> list[float]:
    """A nightly batch: 10× the daytime rate for two hours of every day, in 5-minute rows."""
    return [(100.0 if 24 <= i < 48 else 10.0) + rng.gauss(0, 0.5) for i in range(288)]


def test_a_nightly_batch_is_normal_once_seen() -> None:
    rng = random.Random(1)
    m = NoveltyScorer()
    scores = feed(m, [v for d in range(6) for v in square_day(d, rng)])
    assert max(scores[3 * 288:]) < 0.45  # days 4-6: the batch level and the edges are known, far from a page
    # (the 32-row mean's ramps over the edges are its rarest values, 0.41 on day 4, 0.39 on day 6)
    assert max(scores[5 * 288:]) < 0.4


def test_a_level_shift_scores_once_at_its_onset_then_is_learned() -> None:
    rng = random.Random(2)
    values = [50 + rng.gauss(0, 2) for _ in range(1000)] + [90 + rng.gauss(0, 2) for _ in range(1000)]
    scores = feed(NoveltyScorer(rest=100), values)
    assert scores[1000] > 0.5  # the first row at the new level
    assert sum(s > 0.5 for s in scores[1001:]) <= 5  # not every row after it (a worse onset may show)
    assert sum(s > 0.5 for s in scores[1500:]) <= 3  # the new level has been learned: only its rare tails score
    assert max(scores[400:1000]) < 0.5  # quiet on noise before it


def test_a_spike_beyond_everything_seen_scores_high_and_noise_low() -> None:
    rng = random.Random(3)
    m = NoveltyScorer()
    feed(m, [20 + rng.gauss(0, 1) for _ in range(600)])
    assert m.score_one({"value": 20.0}) < 0.3 and m.score_one({"value": 80.0}) > 0.5


def test_scores_before_the_warmup_are_zero_and_scoring_does_not_learn() -> None:
    m = NoveltyScorer(warmup=50)
    assert set(feed(m, [float(i % 5) for i in range(50)])) == {0.0}
    before = m.dump()
    m.score_one({"value": 1e9})
    assert m.dump() == before


def test_dump_and_load_continue_exactly() -> None:
    rng = random.Random(4)
    values = [rng.lognormvariate(3, 1) for _ in range(900)]
    a, b = NoveltyScorer(), NoveltyScorer()
    feed(a, values[:600])
    b.load(a.dump())
    assert feed(a, values[600:]) == feed(b, values[600:])


def test_denser_spikes_no_higher_than_usual_score_by_their_mean() -> None:
    spikes = [20.0 if i % 50 == 0 else 1.0 + (i % 3) * 0.1 for i in range(1500)]
    dense = [20.0 if i % 5 == 0 else 1.0 + (i % 3) * 0.1 for i in range(100)]
    m = NoveltyScorer()
    feed(m, spikes)
    assert max(m.score_one({"value": v}) for v in (20.0, 1.1)) < 0.5  # each value is common
    assert max(feed(m, dense)) > 0.5  # but 1 spike in 5 rows, not 1 in 50, is a new 32-row mean


def daily(days: int, rng: random.Random, rises: bool = True) -> list[float]:
    """5-minute rows of a day that rises from 20 to 80 for rows 100-199 of its 288."""
    return [(80.0 if rises and 100 <= i % 288 < 200 else 20.0) + rng.gauss(0, 1) for i in range(288 * days)]


def feed_at(model: NoveltyScorer, values: list[float], start: int = 0) -> list[float]:
    out = []
    for i, v in enumerate(values, start):
        x = {"ts": T0 + 300.0 * i, "value": v}
        out.append(model.score_one(x))
        model.learn_one(x)
    return out


def test_a_day_that_does_not_rise_scores_by_the_time_of_day_profile() -> None:
    rng = random.Random(7)
    m = NoveltyScorer()
    usual = feed_at(m, daily(6, rng))
    assert max(usual[4 * 288:]) < 0.45  # days 5-6: the rise is known
    flat = feed_at(m, daily(1, rng, rises=False), 6 * 288)
    assert max(flat) > 0.5 and flat.index(max(flat)) in range(100, 110)  # every value is common, not at 9:00
    flat_again = feed_at(NoveltyScorer(days=0), daily(6, random.Random(7)) + daily(1, random.Random(0), False))
    assert max(flat_again[6 * 288:]) < 0.3  # without the profile it goes unseen


def test_bins_widen_with_the_noise_so_a_noisier_series_does_not_page_on_every_tail() -> None:
    def pages(widen: float) -> int:
        rng = random.Random(8)
        values = [50 + rng.gauss(0, 0.2) for _ in range(600)] + [50 + rng.gauss(0, 0.5) for _ in range(3000)]
        return sum(s > 0.5 for s in feed(NoveltyScorer(widen=widen), values)[600:])
    assert pages(0.5) <= 2 < 6 <= pages(0.0)  # 2.5× the warm-up's noise: its tails are new bins until widened


def test_dump_and_load_continue_exactly_with_the_profile() -> None:
    rng = random.Random(9)
    values = daily(5, rng)
    a, b = NoveltyScorer(), NoveltyScorer()
    feed_at(a, values[:1000])
    b.load(orjson.loads(orjson.dumps(a.dump())))
    assert a._profile and a._season.buffer
    assert feed_at(a, values[1000:], 1000) == feed_at(b, values[1000:], 1000)
    assert len(a._profile) == 288 and max(len(k) for k in a._profile.values()) == 4  # days + 1, however long


def test_a_format_1_doc_loads_and_the_mean_warms_up_again() -> None:
    rng = random.Random(5)
    values = [rng.gauss(10, 1) for _ in range(900)]
    a = NoveltyScorer()
    feed(a, values[:500])
    doc = a.dump()
    old = {k: doc[k] for k in ("buffer", "lo", "width", "total", "counts", "left", "last")}
    b = NoveltyScorer()
    b.load(old)
    assert b._value.dump() == a._value.dump() and not b._mean.ready
    assert b.score_one({"value": 10.0}) == a._value.raw(10.0)
    a.learn_one({"value": math.inf})
    c = NoveltyScorer()
    c.load(orjson.loads(orjson.dumps(a.dump())))  # an infinite value in the window survives JSON
    assert c.dump() == a.dump()
    d = NoveltyScorer()
    feed(d, [1.0, math.inf, 1.7e308, -1.7e308, 2.0])  # in the warm-up, and changes beyond the float range
    e = NoveltyScorer()
    e.load(orjson.loads(orjson.dumps(d.dump())))
    assert e.dump() == d.dump()


@pytest.mark.parametrize("doc", [{}, {"buffer": None, "lo": 0.0, "width": 0.0, "total": 1.0, "counts": [],
                                      "left": 0, "last": 0.0},
                                 {"buffer": None, "lo": "x", "width": 1.0, "total": 1.0, "counts": [], "left": 0,
                                  "last": 0.0}])
def test_damaged_state_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        NoveltyScorer().load(doc)


def test_a_runaway_series_holds_bounded_state() -> None:
    m = NoveltyScorer(warmup=20, bins=10)
    feed(m, [float(i) for i in range(20)] + [1.01 ** i for i in range(5000)] + [math.inf, -math.inf, math.nan])
    assert len(m._value.counts) <= NoveltyScorer.max_bins(10) and len(m._mean.counts) <= NoveltyScorer.max_bins(10)


def test_models_outside_spendwatch_do_not_see_the_timestamp() -> None:
    m = build("river.anomaly.HalfSpaceTrees", {"seed": 7, "n_trees": 5}, scale="minmax")
    for i in range(200):
        m.learn_one({"ts": T0 + 60 * i, "value": float(i % 10)})
    assert m.score_one({"ts": T0, "value": 3.0}) == m.score_one({"ts": T0 + 1e7, "value": 3.0})


def test_a_supervised_river_detector_scores_the_value_as_its_target() -> None:
    m = build("river.anomaly.GaussianScorer", {"grace_period": 10})
    for i in range(100):
        m.learn_one({"ts": T0 + i, "value": 10.0 + i % 3})
    assert m.score_one({"ts": T0, "value": 11.0}) < m.score_one({"ts": T0, "value": 40.0})


@pytest.mark.parametrize(("path", "args", "says"), [
    ("river.anomaly", None, "not a class or factory"),
    ("river.anomaly.NoSuch", None, "has no 'NoSuch'"),
    ("nosuch.thing", None, "cannot import 'nosuch'"),
    ("detectors.novelty.NoveltyScorer", {"nope": 1}, "does not take these arguments"),
    ("collections:OrderedDict", None, "not a River anomaly detector"),
    ("NoveltyScorer", None, "not an import path"),
])
def test_bad_models_are_named_with_what_to_do(path: str, args: dict[str, Any] | None, says: str) -> None:
    with pytest.raises(ModelError, match=says):
        build(path, args)


def test_a_feature_model_round_trips_its_state() -> None:
    a = FeatureModel(build("detectors.novelty.NoveltyScorer"))
    for i in range(500):
        a.learn(T0 + 60 * i, 5.0 + math.sin(i / 10))
    b = FeatureModel(build("detectors.novelty.NoveltyScorer"))
    b.load(orjson.loads(orjson.dumps(a.dump())))
    assert a.score(T0 + 60 * 500, 9.0) == b.score(T0 + 60 * 500, 9.0)
    assert b.score(T0, 5.0)[1] == pytest.approx(a.baseline.get())


def test_a_river_model_is_stored_as_plain_data_and_learns_again() -> None:
    """River's models have no plain-data form, and a changelog record must not be able to run code:
    the state is JSON (no pickle), the baseline survives, the model starts afresh."""
    a = FeatureModel(build("river.anomaly.HalfSpaceTrees", {"seed": 7}, scale="minmax"))
    for i in range(500):
        a.learn(T0 + 60 * i, 5.0 + math.sin(i / 10))
    doc = orjson.loads(orjson.dumps(a.dump()))
    assert set(doc) == {"baseline", "seen"}
    b = FeatureModel(build("river.anomaly.HalfSpaceTrees", {"seed": 7}, scale="minmax"))
    b.load(doc)
    fresh = FeatureModel(build("river.anomaly.HalfSpaceTrees", {"seed": 7}, scale="minmax"))
    assert b.score(T0, 9.0)[0] == fresh.score(T0, 9.0)[0]
    assert b.score(T0, 5.0)[1] == pytest.approx(a.baseline.get())


def test_a_pickle_an_older_version_stored_is_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, ("raise SystemExit('unpickled')",))

    m = FeatureModel(build("river.anomaly.GaussianScorer"))
    m.load({"pickle": base64.b64encode(pickle.dumps(Boom())).decode(), "baseline": 3.0, "seen": True})
    assert m.score(T0, 3.0)[1] == 3.0


def test_a_spike_detector_runs_the_configured_model_and_keeps_its_state() -> None:
    det = SpikeDetector(threshold=0.5, model="detectors.novelty.NoveltyScorer", model_args={"warmup": 60, "rest": 30})
    rng = random.Random(5)
    alerts = []
    for minute in range(600):
        calls = 200 if minute == 500 else 20 + rng.randint(-2, 2)
        for i in range(calls):
            det.observe(UsageEvent(type="usage", event_id=f"{minute}-{i}", ts=T0 + 60 * minute + i * 50 / calls, workflow="wf",
                                   provider="openai", model="gpt-4o", input_tokens=3000, output_tokens=200), 9500)
        alerts += det.tick("wf", T0 + 60 * (minute + 1) + 10)
        if minute == 300:
            again = SpikeDetector(threshold=0.5, model="detectors.novelty.NoveltyScorer", model_args={"warmup": 60, "rest": 30})
            doc = det.dump("wf")
            assert doc is not None
            again.load("wf", doc)
            assert again.dump("wf") == doc
    assert [a.workflow for a in alerts] == ["wf"] and alerts[0].kind == "spike"
    assert T0 + 60 * 500 <= alerts[0].ts <= T0 + 60 * 506
