"""Anomaly models by import path: the project's scorers or any River anomaly detector, from config.

A spike detector's series features and `spendwatch replay nab` score with a River
`base.AnomalyDetector` (`learn_one(x)` / `score_one(x)` on dicts). `x` holds the sample's `value`
and its `ts` in seconds; models from outside this package see only `value` (River's detectors
would take the timestamp for a feature), optionally scaled first (`HalfSpaceTrees` expects
features in [0, 1]).

>>> m = build("river.anomaly.HalfSpaceTrees", {"seed": 1}, scale="minmax")
>>> for i in range(100):
...     m.learn_one({"ts": 60.0 * i, "value": float(i % 5)})
>>> 0.0 <= m.score_one({"ts": 6000.0, "value": 50.0}) <= 1.0
True
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from river import base, compose, preprocessing, stats

from detectors import state

Sample = dict[Hashable, Any]
"""What River's detectors score and learn: feature name -> value (here `ts` and `value`)."""
Scale = Literal["none", "minmax", "standard"]
SCALERS = {"minmax": preprocessing.MinMaxScaler, "standard": preprocessing.StandardScaler}
NATIVE = "detectors."
"""Models under this package read `ts` themselves (a seasonal profile needs it)."""


class ModelError(ValueError):
    """A model path or its arguments that do not build a River anomaly detector."""


def resolve(path: str) -> Any:
    """The object at `module.attr` or `module:attr`."""
    module, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not sep or not module or not attr:
        raise ModelError(f"model {path!r} is not an import path like 'river.anomaly.HalfSpaceTrees'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ModelError(f"model {path!r}: cannot import {module!r} ({e}); is the package installed?") from e
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ModelError(f"model {path!r}: {module!r} has no {attr!r}") from e
    return obj


def build(path: str, args: dict[str, Any] | None = None, scale: Scale = "none") -> base.AnomalyDetector:
    """A fresh model: `path` is a class or a factory, called with `args`."""
    factory = resolve(path)
    if not callable(factory):
        raise ModelError(f"model {path!r} is a {type(factory).__name__}, not a class or factory")
    try:
        model = factory(**(args or {}))
    except TypeError as e:
        raise ModelError(f"model {path!r} does not take these arguments: {e}") from e
    if isinstance(model, base.SupervisedAnomalyDetector):
        return OnValue(model)
    if not isinstance(model, base.AnomalyDetector | compose.Pipeline):
        raise ModelError(f"model {path!r} built a {type(model).__name__}, not a River anomaly detector")
    if scale != "none":
        model = SCALERS[scale]() | model
    if not path.startswith(NATIVE):
        model = compose.Discard("ts") | model
    return model


class OnValue(base.AnomalyDetector):
    """A River detector of a target's distribution (`GaussianScorer`, `StandardAbsoluteDeviation`:
    `score_one(x, y)`) scoring the series' value as its target."""

    def __init__(self, model: base.SupervisedAnomalyDetector):
        self.model = model

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        from river import anomaly

        yield {"model": anomaly.GaussianScorer()}

    def learn_one(self, x: Sample) -> None:
        self.model.learn_one({}, x["value"])

    def score_one(self, x: Sample) -> float:
        return self.model.score_one({}, x["value"])


@dataclass(frozen=True)
class ModelSpec:
    """What `build` is given: a config's `model`, `model_args` and `scale`."""

    path: str
    args: dict[str, Any] = field(default_factory=dict)
    scale: Scale = "none"

    def build(self) -> base.AnomalyDetector:
        return build(self.path, self.args, self.scale)


class FeatureModel:
    """One spike feature's model, and the baseline its alerts quote: the model's own `expected(ts)`
    when it has one, else an exponentially weighted mean of the values learned. A model with both
    `expected` and `dump` (`SeriesScorer`) dumps as itself, so the default state format is its own."""

    def __init__(self, model: base.AnomalyDetector):
        self.model = model
        self.baseline = stats.EWMean(fading_factor=0.05)
        self.seen = False

    def score(self, ts: float, value: float) -> tuple[float, float]:
        """(score, the value expected now)."""
        x: Sample = {"ts": ts, "value": value}
        expected = getattr(self.model, "expected", None)
        return self.model.score_one(x), expected(ts) if expected else self.baseline.get()

    def learn(self, ts: float, value: float) -> None:
        self.model.learn_one({"ts": ts, "value": value})
        self.baseline.update(value)
        self.seen = True

    @property
    def _bare(self) -> bool:
        return hasattr(self.model, "expected") and hasattr(self.model, "dump")

    def dump(self) -> Any:
        """The project's models dump JSON. A River model from elsewhere has no plain-data form and is
        never pickled (a changelog record must not be able to run code): only its baseline is kept,
        and the model learns again after a restart or a reload."""
        if self._bare:
            return self.model.dump()  # type: ignore[attr-defined]  # checked by _bare
        own = getattr(self.model, "dump", None)
        return {**({"doc": own()} if own else {}), "baseline": self.baseline.get(), "seen": self.seen}

    def load(self, doc: Any) -> None:
        """A model without a stored doc (one from elsewhere, or a pickle an older version wrote, which
        is never read) starts afresh; the baseline its alerts quote is kept."""
        if self._bare:
            self.model.load(doc)  # type: ignore[attr-defined]  # checked by _bare
            return
        d = state.obj(doc)
        if "doc" in d:
            self.model.load(d["doc"])  # type: ignore[attr-defined]  # it dumped, so it loads
        self.baseline, self.seen = stats.EWMean(fading_factor=0.05), state.flag(d["seen"])
        if self.seen:
            self.baseline.update(state.num(d["baseline"]))  # the first update sets the mean
