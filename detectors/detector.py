"""What every detector is, and the small pieces they share.

A detector is a plain object in event time, no Kafka and no clock:
`observe(event, cost_micros)` folds one priced event into per-workflow state in
O(1); `tick(workflow, now)` does one workflow's interval work (scoring,
timeouts, alerting) and returns new alerts; `flagged(now)` returns those due
without waiting for a tick. Each keeps its state in `workflows`, one value per
workflow, so the Monitor can own one instance per kind, route events by
workflow, contain a failure to one workflow, and save or restore a workflow's
state with its partition as plain JSON data (`dump` / `load`, versioned), never
pickle: a changelog record must not be able to run code, and renaming a class
must not break stored state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from detectors import state
from detectors.engine.versions import StateError
from schemas.alerts import Alert
from schemas.structs import Event

__all__ = ["Alert", "Detector", "Event", "LogBaseline", "StateError", "alert_id", "observe_slice"]


@runtime_checkable
class Detector(Protocol):
    kind: str
    workflows: dict[str, Any]
    """Per-workflow state objects; the Monitor may drop an entry (a workflow whose tick raised)."""

    def observe(self, event: Event, cost_micros: int) -> None: ...

    def flagged(self, now: float) -> list[Alert]:
        """Alerts `observe` already knows are due; the Monitor asks after every batch,
        so an evident case is not held until the next tick."""
        ...

    def tick(self, workflow: str, now: float) -> list[Alert]:
        """Interval work for one workflow at event time `now`: O(1) when nothing is due, and
        never proportional to a gap in event time. [] for a workflow the detector does not
        hold; may forget the workflow (delete it from `workflows`) when nothing is left."""
        ...

    def dump(self, workflow: str) -> dict[str, Any] | None:
        """One workflow's state as JSON-able plain data with a format version `"v"`;
        None if the detector holds nothing for it."""
        ...

    def load(self, workflow: str, doc: dict[str, Any]) -> None:
        """The inverse of `dump`: the detector then behaves exactly as before. Raises
        StateError for a doc it cannot read (unknown version, malformed)."""
        ...


def observe_slice(det: Any, workflow: str, events: Sequence[Event], costs: Sequence[int]) -> None:
    """Fold one workflow's slice of a batch (events of `workflow` only, with their micro-USD) into
    `det`: through its `observe_many(workflow, events, costs)` when it has one, which hoists the
    per-workflow lookups out of the per-event loop, else event by event through `observe`."""
    many = getattr(det, "observe_many", None)
    if many is not None:
        many(workflow, events, costs)
    else:
        for ev, cost in zip(events, costs):
            det.observe(ev, cost)


def alert_id(kind: str, workflow: str, subject: str, episode: float | None = None) -> str:
    """Stable per condition: the same loop, zombie episode or spike never gets two ids,
    so sinks update one message instead of posting again."""
    tail = "" if episode is None else f":{int(episode)}"
    return f"{kind}:{workflow}:{subject}{tail}"


class LogBaseline:
    """Typical size and spread of a positive quantity in log space, learned online.

    Run lengths, token totals and gaps between outcomes are roughly log-normal,
    so "far beyond normal" is a ratio: `limit(z)` is the value `z` log-sigmas
    above the typical one. The prior counts as `prior_n` observations, so a new
    workflow or agent starts from sane, generous limits; `window` bounds the
    memory so the baseline follows drift.

    >>> b = LogBaseline(median=10, sigma=0.5, prior_n=5)
    >>> round(b.limit(2.0))
    27
    >>> for x in [40, 50, 45, 60, 40, 55, 50, 45] * 5:
    ...     b.learn_one(x)
    >>> round(b.typical()), b.limit(4.0) > 100  # 40 samples near 48 outweigh the prior of 10
    (40, True)
    """

    __slots__ = ("mean", "var", "n", "prior_n", "window", "min_sigma")

    def __init__(self, median: float, sigma: float, prior_n: float = 10.0, window: float = 500.0,
                 min_sigma: float = 0.25):
        self.mean = math.log(median)
        self.var = sigma * sigma
        self.n = 0
        self.prior_n, self.window, self.min_sigma = prior_n, window, min_sigma

    def dump(self) -> list[float]:
        """What was learned, as [mean, var, n]; the prior and window are configuration."""
        return [self.mean, self.var, self.n]

    def load(self, doc: list[Any]) -> None:
        mean, var, n = state.seq(doc, 3)
        self.mean, self.var, self.n = state.num(mean), state.num(var), state.count(n)

    def learn_one(self, x: float) -> None:
        self.n += 1
        a = 1.0 / min(self.n + self.prior_n, self.window)
        d = math.log(max(x, 1e-9)) - self.mean
        self.mean += a * d
        self.var = (1.0 - a) * (self.var + a * d * d)

    def sigma(self) -> float:
        return max(math.sqrt(self.var), self.min_sigma)

    def typical(self) -> float:
        """The geometric mean: the median, for a log-normal."""
        return math.exp(self.mean)

    def limit(self, z: float) -> float:
        return math.exp(self.mean + z * self.sigma())
