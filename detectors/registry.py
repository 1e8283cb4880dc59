"""Every detector the engine runs, by kind: the one list of them.

To add a detector, register its class here. The `Monitor` then runs it, the
config reads its constructor's parameters from `[detectors.<kind>]`
(`spendwatch/config.py`), the replay tools score it, and the check suite every
detector must pass (`detectors/checks.py`, run by tests/test_detector_checks.py)
checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detectors.detector import Detector
from detectors.loops import LoopDetector
from detectors.spikes import SpikeDetector
from detectors.zombies import ZombieDetector

DETECTORS: dict[str, type[Detector]] = {cls.kind: cls for cls in (LoopDetector, ZombieDetector, SpikeDetector)}
"""Kind → class, in the order the Monitor runs them (and alerts of one batch come out)."""


def build(params: Mapping[str, Mapping[str, Any]] | None = None) -> list[Detector]:
    """One of each registered detector, in registry order; `params[kind]` are its constructor's
    keyword arguments (the rest keep their defaults).

    >>> [(d.kind, d.interval) for d in build({"zombie": {"interval": 30.0}})]
    [('loop', 60.0), ('zombie', 30.0), ('spike', 60.0)]
    """
    params = params or {}
    unknown = sorted(set(params) - set(DETECTORS))
    if unknown:
        raise ValueError(f"no detector of kind {', '.join(map(repr, unknown))}; registered: {', '.join(DETECTORS)}")
    return [cls(**params.get(kind, {})) for kind, cls in DETECTORS.items()]
