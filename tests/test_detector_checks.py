"""Every registered detector passes the check suite (detectors/checks.py); each is configurable from TOML.

A new detector is checked by being registered in detectors/registry.py. The
suite is shown to fail on detectors broken in the ways it guards against, and
the config to change what a detector does and to name a wrong key.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from detectors import checks
from detectors.detector import Detector
from detectors.engine.monitor import Monitor
from detectors.loops import LoopDetector
from detectors.registry import DETECTORS, build
from detectors.spikes import SpikeDetector
from detectors.zombies import ZombieDetector
from replay import driver
from schemas.alerts import Alert
from spendwatch.config import ConfigError, DetectorsConfig, Settings, load_settings

CHECKS = list(checks.yield_checks())


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest.mark.parametrize("kind", DETECTORS)
def test_every_registered_detector_passes_every_check(kind: str, check: Callable[[checks.Make], None]) -> None:
    check(DETECTORS[kind])


@pytest.mark.parametrize("kind", DETECTORS)
def test_the_checks_traffic_gives_every_detector_something_to_find(kind: str) -> None:
    """Else the round trip and determinism checks compare empty lists: a new detector extends `checks.traffic`."""
    assert checks.play(DETECTORS[kind](), checks.plan(checks.traffic()))


def test_the_registry_is_keyed_by_kind_and_is_what_the_monitor_runs() -> None:
    assert all(cls.kind == kind for kind, cls in DETECTORS.items())
    assert [d.kind for d in Monitor().detectors] == [d.kind for d in build()] == list(DETECTORS)
    with pytest.raises(ValueError, match="'loops'"):
        build({"loops": {}})


# -- the suite fails on broken detectors ---------------------------------------------------------------------


class ClockedZombies(ZombieDetector):
    def tick(self, workflow: str, now: float) -> list[Alert]:
        return super().tick(workflow, min(now, time.time()))


class ForgetfulZombies(ZombieDetector):
    """Loses its agents' learned gaps on load."""

    def load(self, workflow: str, doc: dict) -> None:
        super().load(workflow, doc)
        for agent in self.workflows[workflow].agents.values():
            agent.gap = self.prior_gap


class SharedLoops(LoopDetector):
    """Keeps its state in one dict for every instance (the mutable-default bug)."""

    shared: dict = {}

    def __init__(self) -> None:
        super().__init__()
        self.workflows = SharedLoops.shared


class RepeatingLoops(LoopDetector):
    """Tells every alert again whenever asked."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[Alert] = []

    def flagged(self, now: float) -> list[Alert]:
        self.told += super().flagged(now)
        return list(self.told)


class MislabelledLoops(LoopDetector):
    kind = "spike"


class SteppingSpikes(SpikeDetector):
    """Closes every interval of a gap one by one, as spikes did before they skipped idle ones."""

    def tick(self, workflow: str, now: float) -> list[Alert]:
        wf, alerts = self.workflows.get(workflow), []
        while wf is not None and (wf.next + 1) * self.interval + self.grace <= now:
            wf.open.setdefault(wf.next, [0.0] * 6)
            alerts += [a for a in [self._close(workflow, wf)] if a is not None]
        return alerts


@pytest.mark.parametrize(("make", "check", "says"), [
    (ClockedZombies, checks.check_no_clock, "read the clock"),
    (ForgetfulZombies, checks.check_dump_load_mid_stream, "does not give the dumped state back"),
    (SharedLoops, checks.check_deterministic, "gave other alerts"),
    (RepeatingLoops, checks.check_nothing_new_at_the_same_time, "alerted again"),
    (MislabelledLoops, checks.check_alerts_are_of_its_kind, "a 'loop' alert from the 'spike' detector"),
    (SteppingSpikes, checks.check_gap_costs_what_two_days_do, "after ten years"),
], ids=lambda x: getattr(x, "__name__", ""))
def test_the_suite_fails_a_detector_broken_the_way_a_check_guards_against(make: checks.Make, check, says: str) -> None:
    SharedLoops.shared.clear()
    with pytest.raises(AssertionError, match=says):
        check(make)


# -- configuration -----------------------------------------------------------------------------------------


def _settings(tmp_path: Path, toml: str) -> Settings:
    path = tmp_path / "spendwatch.toml"
    path.write_text(toml)
    return load_settings(path)


@pytest.mark.parametrize("kind", DETECTORS)
def test_the_config_sets_every_constructor_parameter_under_its_name(kind: str) -> None:
    params = DetectorsConfig.model_fields[kind].annotation.model_fields  # type: ignore[union-attr]
    assert set(params) == set(inspect.signature(DETECTORS[kind]).parameters)


@pytest.mark.parametrize("kind", DETECTORS)
def test_one_name_for_how_often_a_detector_does_its_interval_work(kind: str) -> None:
    dets: list[Any] = Settings.model_validate({"detectors": {kind: {"interval": 120}}}).build_detectors()
    assert [(d.kind, d.interval) for d in dets] == [(k, 120.0 if k == kind else 60.0) for k in DETECTORS]


def _alerts(kind: str, dets: list[Detector], events: list) -> list[Alert]:
    return [a for a in driver.run(events, Monitor(detectors=dets), flush=3 * 3600.0).alerts if a.kind == kind]


def test_a_loop_section_changes_what_the_loop_detector_finds(tmp_path: Path) -> None:
    e = checks._Events()
    run = e.run("r1", checks.T0, "coder", [f"step-{k}" for k in range(40)], done=False)  # no repeats, 40 calls
    assert _alerts("loop", Settings().build_detectors(), run) == []  # far inside the cold-start limits (~330 calls)
    settings = _settings(tmp_path, "[detectors.loop]\nmin_calls = 10\n[detectors.loop.priors]\n"
                                   "calls = { median = 5, sigma = 0.3 }\n")
    alerts = _alerts("loop", settings.build_detectors(), run)
    assert [(a.kind, a.evidence["feature"], a.evidence["calls"]) for a in alerts] == [("loop", "calls", 17)]


def test_a_zombie_interval_changes_when_a_zombie_is_found(tmp_path: Path) -> None:
    events = [ev for ev in checks.traffic() if ev.workflow == "inbox"]
    every_minute = _alerts("zombie", Settings().build_detectors(), events)
    hourly = _alerts("zombie", _settings(tmp_path, "[detectors.zombie]\ninterval = 3600\n").build_detectors(), events)
    assert len(every_minute) == len(hourly) == 1
    assert every_minute[0].ts < hourly[0].ts <= every_minute[0].ts + 3600


@pytest.mark.parametrize(("toml", "key"), [
    ("[detectors.loop]\nsweep_every = 30\n", "detectors.loop.sweep_every"),
    ("[detectors.loops]\nz = 3\n", "detectors.loops"),
    ("[detectors.loop]\nz = -1\n", "detectors.loop.z"),
    ("[detectors.loop.priors]\ncals = { median = 5, sigma = 0.3 }\n", "detectors.loop.priors"),
    ("[detectors.loop.priors]\ncalls = { median = 5 }\n", "detectors.loop.priors.calls.sigma"),
    ("[detectors.zombie]\ninterval = 0\n", "detectors.zombie.interval"),
    ("[detectors.zombie]\nfactor = \"ten\"\n", "detectors.zombie.factor"),
    ("[detectors.spike]\nhorizons = [5, 0]\n", "detectors.spike.horizons.1"),
    ("[detectors.spike]\nthreshold = nan\n", "detectors.spike.threshold"),
    ("[detectors.spike.scorer]\noffset = 1.0\n", "detectors.spike.scorer.offset"),
])
def test_a_bad_detector_key_or_value_is_a_config_error_that_names_it(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}:"):
        _settings(tmp_path, toml)


EXAMPLE = Path(__file__).parent.parent / "spendwatch.example.toml"


def test_the_example_config_shows_the_detectors_defaults(tmp_path: Path) -> None:
    """Its commented-out detector keys, put in, build detectors equal to the defaults: the example cannot drift."""
    text = EXAMPLE.read_text()
    head, tail = text[:text.index("[detectors.")], text[text.index("[detectors."):]
    tail = re.sub(r"^# (\[detectors\.[a-z.]+\]|[a-z_]+ = )", r"\1", tail, flags=re.M)
    assert re.search(r"^# [a-z_]+ = |^# \[", tail, re.M) is None, "a commented key or table the test did not put in"
    shown = _settings(tmp_path, head + tail).build_detectors()
    assert [vars(d) for d in shown] == [vars(d) for d in build()]
    assert [d.kind for d in load_settings(EXAMPLE).build_detectors()] == list(DETECTORS)
