"""Property-based fuzzing of the engine: random schema-valid traffic through the Monitor and the replay driver.

Properties, on sequences with steps from 0, gaps, repeats, out-of-order and
duplicate timestamps, zero and huge token counts, unknown models, outcomes
before usage, one run id in two workflows, agents without runs, unicode / NUL /
quotes in names, caller-priced calls and long runs:

- nothing raises and nothing is contained (`Monitor.failures == 0`: containment
  must not hide a bug from the fuzzer);
- the month's totals of each workflow equal the sum over the events an
  independent reference accepts (first of each event id, not later than the
  dedup window behind the workflow's newest event), to the micro-dollar;
- replaying the same input twice gives the same alerts.

`make test` runs a bounded number of examples; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) thousands.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.engine.budgets import BudgetConfig
from detectors.engine.counters import CALLS, COST, INPUT, OUTPUT
from detectors.engine.monitor import Monitor
from replay import driver
from schemas.decode import validate_event

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
EXAMPLES = 3000 if FUZZ else 60
T0 = 1_762_128_000.0  # 2025-11-03 00:00 UTC: three weeks of traffic stay inside one month
MONTH = "2025-11"
WORKFLOWS = ["w", "wé", 'q"uote', "nul\x00x", "🚀 rocket", "a" * 128]
MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), (None, "gpt-4o-mini"),
          (None, "in-house-7b"), ("google", "gemini-2.5-pro")]
RUNS = [None, "r1", "r2", "r\x00", "r'3"]
AGENTS = [None, "a1", "a2", "ä3"]
FINGERPRINTS = [None, "ls", "pytest", "cat a.py", "x" * 256]
BUDGETS = BudgetConfig.model_validate({"workflows": {"w": {"daily_usd": 0.05}, "🚀 rocket": {"monthly_usd": 3}},
                                       "teams": {"t": {"daily_usd": 0.2}}})

tokens = st.sampled_from([0, 1, 20, 150, 4000, 200_000, 5_000_000, 100_000_000]) | st.integers(0, 100_000_000)


@st.composite
def usage(draw: st.DrawFn, ts: float, event_id: str) -> dict:
    provider, model = draw(st.sampled_from(MODELS))
    inp = draw(tokens)
    out = draw(tokens)
    ev = {"type": "usage", "event_id": event_id, "ts": ts,
          "workflow": draw(st.sampled_from(WORKFLOWS)), "model": model, "input_tokens": inp,
          "output_tokens": out, "cache_read_tokens": draw(st.integers(0, inp)),
          "status": draw(st.sampled_from(["ok", "ok", "ok", "error"]))}
    ev["reasoning_tokens"] = draw(st.integers(0, out))
    for name, values in (("provider", [provider]), ("run_id", RUNS), ("agent_id", AGENTS),
                         ("fingerprint", FINGERPRINTS), ("team", [None, "t", "ü"])):
        value = draw(st.sampled_from(values))
        if value is not None:
            ev[name] = value
    step = draw(st.none() | st.integers(0, 40))
    if step is not None:
        ev["step"] = step
    if draw(st.integers(0, 9)) == 0:
        ev["cost_usd"] = draw(st.sampled_from([0.0, 1e-7, 0.0123, 99_999.0]))
    return ev


@st.composite
def outcome(draw: st.DrawFn, ts: float, event_id: str) -> dict:
    ev = {"type": "outcome", "event_id": event_id, "ts": ts,
          "workflow": draw(st.sampled_from(WORKFLOWS)), "outcome": "resolved"}
    for name, values in (("run_id", RUNS), ("agent_id", AGENTS)):
        value = draw(st.sampled_from(values))
        if value is not None:
            ev[name] = value
    if draw(st.booleans()):
        ev["value_usd"] = draw(st.sampled_from([0.0, 2.5, 1e5]))
    return ev


@st.composite
def traffic(draw: st.DrawFn) -> list[dict]:
    """Timestamps walk forward with small steps, repeats, jitter back, and the odd gap of hours or days;
    about one event in six is a redelivered copy of one of the ten before it (same id, same body)."""
    n = draw(st.integers(1, 120))
    ts, events = T0, []
    for i in range(n):
        if events and draw(st.integers(0, 5)) == 0:
            events.append(dict(events[-draw(st.integers(1, min(10, len(events))))]))
            continue
        ts += draw(st.sampled_from([0.0, 0.0, 1.0, 5.0, 30.0, -20.0, -4000.0, 600.0, 7200.0, 86_400.0 * 2]))
        ts = min(max(ts, T0), T0 + 25 * 86_400.0)  # November only: the month total is the one to check
        events.append(draw(outcome(ts, f"e{i}") if draw(st.integers(0, 7)) == 0 else usage(ts, f"e{i}")))
    return events


def reference(events: list[dict], monitor: Monitor) -> dict[str, list[int]]:
    """What the month totals must be, computed apart from the engine's aggregation: per workflow,
    each event id once, unless it arrives beyond the dedup window behind the newest event seen
    (a copy then arrives late too: newest only grows)."""
    seen: dict[str, set[str]] = {}
    newest: dict[str, float] = {}
    totals: dict[str, list[int]] = {}
    for doc in events:
        wf = doc["workflow"]
        if doc["ts"] < newest.get(wf, 0.0) - monitor.dedup_window or doc["event_id"] in seen.setdefault(wf, set()):
            continue
        seen[wf].add(doc["event_id"])
        newest[wf] = max(newest.get(wf, 0.0), doc["ts"])
        if doc["type"] == "usage":
            micros = monitor.prices.price(validate_event(doc)).micros
            t = totals.setdefault(wf, [0, 0, 0, 0])
            t[0] += micros
            t[1] += doc["input_tokens"]
            t[2] += doc["output_tokens"]
            t[3] += 1
    return totals


def month_totals(monitor: Monitor) -> dict[str, list[int]]:
    out = {}
    for name, state in monitor.workflows.items():
        vec = state.spend.periods.get(MONTH)
        if vec is not None and vec[CALLS]:
            out[name] = [vec[COST], vec[INPUT], vec[OUTPUT], vec[CALLS]]
    return out


def replay(events: list[dict]) -> tuple[Monitor, list]:
    monitor = Monitor(BUDGETS)
    alerts = driver.run(events, monitor, flush=1800.0).alerts
    return monitor, alerts


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=traffic())
def test_monitor_batches_never_raise_and_totals_are_exact(events: list[dict]) -> None:
    """The worker's path: arbitrary batch boundaries, ticks in between."""
    monitor = Monitor(BUDGETS)
    parsed = [validate_event(doc) for doc in events]
    i = 0
    while i < len(parsed):
        n = 1 + (i * 7919) % 13
        out = monitor.process(parsed[i:i + n])
        monitor.merge_snapshots(out.snapshots)
        monitor.tick(max(ev.ts for ev in parsed[:i + n]) + 1.0)
        assert not out.poisoned, out.poisoned[0].reason
        i += n
    assert monitor.failures == 0, list(monitor.last_failures)
    assert month_totals(monitor) == reference(events, monitor)


def spend_now(monitor: Monitor) -> dict[str, Any]:
    """Per workflow at its event time: the month's counters, each window's total, and each team's,
    model's and agent's month and last hour (figures pruning cannot change, whenever it ran)."""
    out = {}
    for name, wf in monitor.workflows.items():
        now = wf.watermark
        out[name] = (wf.spend.periods.get(MONTH), {w: wf.spend.window(w, now) for w in wf.spend.windows},
                     {dim: {who: (e.period(MONTH), e.last_hour(now)) for who, e in wf.by[dim].items()}
                      for dim in wf.by})
    return out


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=traffic())
def test_spend_by_window_team_model_and_agent_does_not_depend_on_batching(events: list[dict]) -> None:
    """A slice's counters are summed per bucket and per spender before they are added: one batch of
    everything and one event per batch must leave the same figures."""
    parsed = [validate_event(doc) for doc in events]
    whole, alone = Monitor(BUDGETS), Monitor(BUDGETS)
    whole.process(parsed)
    for ev in parsed:
        alone.process([ev])
    assert whole.failures == alone.failures == 0
    assert spend_now(whole) == spend_now(alone)


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=traffic())
def test_replay_is_deterministic_and_exact(events: list[dict]) -> None:
    events = sorted(events, key=lambda d: d["ts"])  # the driver's contract: ts order
    first, alerts1 = replay(events)
    second, alerts2 = replay(events)
    assert first.failures == 0, list(first.last_failures)
    assert [a.model_dump() for a in alerts1] == [a.model_dump() for a in alerts2]
    assert month_totals(first) == reference(events, first)


@pytest.mark.parametrize("fingerprints", [["pytest"], ["a", "b"], ["a", "b", "c"], [f"f{i}" for i in range(5000)]])
def test_a_run_of_5000_steps_alerts_once_and_stays_small(fingerprints: list[str]) -> None:
    """A very long run, from step 0, with each fingerprint pattern: one loop alert at most, bounded state."""
    monitor = Monitor()
    events = [validate_event({"type": "usage", "event_id": f"e{i}", "ts": T0 + i, "workflow": "w", "model": "gpt-4o",
                              "input_tokens": 1000, "output_tokens": 50, "run_id": "r", "step": i,
                              "status": "error" if i % 2 else "ok", "fingerprint": fingerprints[i % len(fingerprints)]})
              for i in range(5000)]
    alerts = []
    for i in range(0, 5000, 100):
        alerts += monitor.process(events[i:i + 100]).alerts
        alerts += monitor.tick(T0 + i + 100)
    assert monitor.failures == 0
    assert [a.kind for a in alerts].count("loop") == 1
    run = monitor.detectors[0].workflows["w"].runs["r"]
    assert len(run.recent) <= 16


NUMBERS = st.sampled_from([0.0, -1.0, 1e-300, 1e-7, 0.004, 0.01, 1.0, 1e9, 1e300, float("inf"), float("nan")]) \
    | st.floats(allow_nan=True, allow_infinity=True)
KNOBS = ["budgets.workflows.w.daily_usd", "budgets.teams.t.monthly_usd", "dedup_window_s", "max_ahead_s",
         "routing.group_wait_s", "routing.repeat_interval_s", "budgets.burn_rate.page.factor",
         "budgets.burn_rate.ticket.short_s"]


@settings(max_examples=EXAMPLES, deadline=None)
@given(values=st.dictionaries(st.sampled_from(KNOBS), NUMBERS, min_size=1))
def test_config_values_are_refused_with_a_reason_or_safe_to_run(tmp_path_factory, values: dict[str, float]) -> None:
    """Every number the config takes either loads and runs an event through the engine, or is a
    ConfigError naming the key (a budget that rounds to 0 micro-USD used to divide by zero)."""
    from spendwatch.config import ConfigError, load_settings

    tables: dict[str, list[str]] = {}
    for knob, value in values.items():
        table, _, key = knob.rpartition(".")
        tables.setdefault(table, []).append(f"{key} = {value!r}")
    text = "\n".join(f"[{t}]\n" * bool(t) + "\n".join(lines) for t, lines in sorted(tables.items()))
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text)
    try:
        s = load_settings(path)
    except ConfigError as err:
        assert any(k.rpartition(".")[2] in str(err) for k in values), str(err)
        return
    m = Monitor(s.budgets, s.price_book(), s.timezone, s.dedup_window_s)
    for i in range(3):
        m.process([validate_event({"type": "usage", "event_id": f"e{i}", "ts": T0 + i, "workflow": "w", "team": "t",
                                   "model": "gpt-4o", "input_tokens": 10**6, "output_tokens": 10**5})])
    assert m.failures == 0, list(m.last_failures)
