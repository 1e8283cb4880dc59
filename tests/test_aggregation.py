"""Windows, budget periods across midnight and month end, thresholds, dedup and team roll-ups."""

from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest

from detectors.engine.budgets import Budget, BudgetConfig
from detectors.engine.monitor import Monitor
from detectors.engine.periods import PeriodClock
from detectors.pricing.prices import PriceBook, Rate
from schemas.decode import validate_event

PARIS = ZoneInfo("Europe/Paris")


def ts(*args) -> float:
    return datetime(*args, tzinfo=PARIS).timestamp()


def ev(i, at, wf="w", cost=1.0, **kw):
    return validate_event({"type": "usage", "event_id": f"e{i}", "ts": at, "workflow": wf, "model": "m",
                           "input_tokens": 10, "output_tokens": 1, "cost_usd": cost, **kw})


def thresholds(out):
    """The threshold alerts of a batch (these budgets are small: they burn too fast as well)."""
    return [a for a in out.alerts if a.kind == "budget"]


def monitor(**budgets):
    cfg = BudgetConfig(workflows={k: Budget(**v) for k, v in budgets.items()})
    return Monitor(cfg, PriceBook(fallback=Rate.flat(0, 0, source="fallback")), timezone="Europe/Paris")


def test_day_rolls_over_at_local_midnight_not_utc():
    m = monitor()
    m.process([ev(1, ts(2026, 3, 31, 23, 59, 59)), ev(2, ts(2026, 4, 1, 0, 0, 1))])
    st = m.workflows["w"]
    assert st.period_cost("2026-03-31") == 1_000_000
    assert st.period_cost("2026-04-01") == 1_000_000
    assert st.period_cost("2026-03") == 1_000_000  # month end too
    assert st.period_cost("2026-04") == 1_000_000


def test_dst_day_is_23_hours_long():
    clock = PeriodClock("Europe/Paris")
    start, end = clock.bounds("2026-03-29")
    assert end - start == 23 * 3600
    assert clock.keys(end - 1)[0] == "2026-03-29" and clock.keys(end)[0] == "2026-03-30"


def test_unknown_timezone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        PeriodClock("Mars/Olympus")


def test_rolling_windows_forget_old_spend():
    m = monitor()
    t0 = ts(2026, 5, 1, 12)
    m.process([ev(1, t0), ev(2, t0 + 30), ev(3, t0 + 3000)])
    st = m.workflows["w"]
    assert st.spend.window("1m", t0 + 3000) == 1_000_000
    assert st.spend.window("1h", t0 + 3000) == 3_000_000
    assert st.spend.window("24h", t0 + 3000) == 3_000_000


def test_a_spender_across_window_buckets_of_one_batch_counts_every_call():
    """A batch's counters are summed per 5 s bucket for the workflow and per 5 min bucket for each
    team, model and agent: six calls 10 s apart, in one batch or one each, count $6 everywhere."""
    t0 = ts(2026, 5, 1, 12)
    calls = [ev(i, t0 + 10 * i, team="t", agent_id="a") for i in range(6)]
    whole, alone = monitor(), monitor()
    whole.process(calls)
    for call in calls:
        alone.process([call])
    for m in (whole, alone):
        st = m.workflows["w"]
        now = st.watermark
        assert [st.spend.window(w, now) for w in ("1m", "1h", "24h")] == [6_000_000] * 3
        assert {(dim, who): (e.period("2026-05"), e.last_hour(now)) for dim in st.by for who, e in st.by[dim].items()} \
            == {(dim, who): (6_000_000, 6_000_000) for dim, who in (("team", "t"), ("model", "m"), ("agent", "a"))}


def test_each_threshold_fires_once_per_period_and_again_next_period():
    m = monitor(w={"daily_usd": 10})
    day1 = ts(2026, 5, 1, 9)
    alerts = thresholds(m.process([ev(i, day1 + i, cost=1.0) for i in range(6)]))
    assert [a.evidence["threshold_pct"] for a in alerts] == [50]
    alerts = thresholds(m.process([ev(i, day1 + i, cost=1.0) for i in range(6, 12)]))
    assert [a.evidence["threshold_pct"] for a in alerts] == [75, 90, 100]
    assert thresholds(m.process([ev(99, day1 + 99)])) == []  # nothing fires twice
    day2 = ts(2026, 5, 2, 9)
    alerts = thresholds(m.process([ev(i, day2 + i, cost=2.0) for i in range(100, 103)]))
    assert [a.alert_id for a in alerts] == ["budget:workflow:w:2026-05-02:50"]
    a = alerts[0]
    assert a.evidence["spent_usd"] == 6.0 and a.evidence["budget_usd"] == 10.0 and a.severity == "info"
    assert a.evidence["top_models"] == [["m", 6.0]] and "burn_usd_per_hour" in a.evidence


def test_monthly_budget_and_critical_severity():
    m = monitor(w={"monthly_usd": 3})
    alerts = thresholds(m.process([ev(i, ts(2026, 5, 1 + i, 9), cost=1.0) for i in range(3)]))
    assert alerts[-1].alert_id == "budget:workflow:w:2026-05:100" and alerts[-1].severity == "critical"


def test_duplicates_never_count_twice_and_late_events_are_rejected_with_reason():
    m = monitor()
    t0 = ts(2026, 5, 1, 9)
    out = m.process([ev(1, t0), ev(1, t0), ev(2, t0 + 1)])
    assert (out.accepted, out.duplicates) == (2, 1)
    out = m.process([ev(3, t0 + 7200), ev(4, t0 + 10)])  # e4 is 2 h behind: beyond the dedup window
    assert out.accepted == 1 and len(out.late) == 1 and "dedup window" in out.late[0][1]
    assert m.workflows["w"].period_cost("2026-05-01") == 3_000_000


def test_team_budget_sums_workflows_and_ignores_redelivered_snapshots():
    cfg = BudgetConfig(teams={"cx": Budget(daily_usd=4)})
    m = Monitor(cfg, PriceBook(), timezone="Europe/Paris")
    t0 = ts(2026, 5, 1, 9)
    out = m.process([ev(1, t0, wf="a", team="cx"), ev(2, t0, wf="b", team="cx")])
    assert [a.alert_id for a in m.merge_snapshots(out.snapshots)] == ["budget:team:cx:2026-05-01:50"]
    assert m.merge_snapshots(out.snapshots) == []  # redelivered: no change, no alert
    out = m.process([ev(3, t0 + 1, wf="a", team="cx", cost=2.0)])
    alerts = m.merge_snapshots(out.snapshots + out.snapshots)
    assert [a.alert_id for a in alerts] == ["budget:team:cx:2026-05-01:75", "budget:team:cx:2026-05-01:90",
                                            "budget:team:cx:2026-05-01:100"]
    assert m.teams["cx"].total("2026-05-01") == 4_000_000


def test_state_survives_a_dump_load_round_trip():
    from detectors.engine.workflow import WorkflowState

    m = monitor(w={"daily_usd": 10})
    m.process([ev(i, ts(2026, 5, 1, 9) + i, agent_id=f"a{i % 2}", team="t") for i in range(6)])
    st = m.workflows["w"]
    again = WorkflowState.load(st.dump())
    assert again.dump() == st.dump()


def test_event_ids_are_sealed_into_buckets_written_once_and_reloaded_after_a_restart():
    from detectors.engine.workflow import SEAL_IDS
    from streams import workflow_table

    writes: list[bytes] = []

    class Table(dict):  # records the order of writes, as the changelog would
        def __setitem__(self, key, value):
            writes.append(key)
            super().__setitem__(key, value)

    table = Table()
    t0 = ts(2026, 5, 1, 9)
    events = [ev(i, t0 + i) for i in range(1000)]
    m = monitor()
    for i in range(0, 1000, 100):
        m.process(events[i:i + 100])
        workflow_table.save(table, m.workflows["w"])
    buckets = sorted(k for k in table if k.startswith(workflow_table.BUCKET))
    assert len(buckets) == 1000 // SEAL_IDS
    assert len(orjson.loads(table[workflow_table.state_key("w")])["dedup"]) < SEAL_IDS  # the value stays small
    first = writes.index(workflow_table.bucket_key("w", 0))
    assert writes[first + 1] == workflow_table.state_key("w")  # the bucket lands before the state naming it
    assert writes.count(workflow_table.bucket_key("w", 0)) == 1  # a sealed bucket is written once

    # A new worker reloads state and ids from the table: every replayed event is a duplicate.
    again = Monitor(prices=PriceBook(fallback=Rate.flat(0, 0, source="fallback")), timezone="Europe/Paris",
                    load_workflow=lambda name: workflow_table.load(table.get, name))
    out = again.process(events)
    assert (out.duplicates, out.accepted) == (1000, 0)
    assert list(again.workflows["w"].dedup.items()) == list(m.workflows["w"].dedup.items())  # order kept

    # As the window moves on, ids leave it; a bucket whose ids all left is deleted from the table.
    m.process([ev(1500, t0 + 4000)])  # the window now starts at t0 + 400: bucket 0 (ids 0-255) is out
    workflow_table.save(table, m.workflows["w"])
    assert workflow_table.bucket_key("w", 0) not in table and workflow_table.bucket_key("w", 1) in table
    assert set(workflow_table.load(table.get, "w").dedup) >= set(m.workflows["w"].dedup)
    later = [ev(2000 + i, t0 + 5000 + i) for i in range(10)]
    m.process(later)
    workflow_table.save(table, m.workflows["w"])
    assert not any(k.startswith(workflow_table.BUCKET) for k in table)
    assert set(m.workflows["w"].dedup) == {"e1500"} | {e.event_id for e in later}
    assert workflow_table.load(table.get, "w").dedup == m.workflows["w"].dedup


def test_a_workflow_named_like_a_bucket_key_does_not_collide():
    from streams import workflow_table

    assert workflow_table.state_key("i:0:w") != workflow_table.bucket_key("w", 0)
    assert workflow_table.bucket_key("w:1", 0) != workflow_table.bucket_key("w", 10)


def test_budget_and_zombie_alerts_say_what_the_spend_buys_per_outcome():
    """'$x per ticket_resolved today (n) vs $y yesterday (m)' on the alert, numbers in its evidence."""
    from detectors.engine.budgets import Budget, BudgetConfig
    from detectors.engine.monitor import Monitor
    from schemas.decode import validate_event

    day = 1_764_547_200.0  # 2025-12-01 00:00 UTC
    m = Monitor(budgets=BudgetConfig(workflows={"support": Budget(daily_usd=1.0)}))

    def usage(i: int, ts: float) -> dict:
        return {"type": "usage", "event_id": f"u{i}", "ts": ts, "workflow": "support", "model": "gpt-4o",
                "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.1}

    def done(i: int, ts: float) -> dict:
        return {"type": "outcome", "event_id": f"o{i}", "ts": ts, "workflow": "support", "outcome": "ticket_resolved"}

    yesterday = [usage(i, day - 3000 + i) for i in range(6)] + [done(i, day - 2000 + i) for i in range(3)]
    m.process([validate_event(e) for e in yesterday])  # $0.60 for 3 tickets: $0.20 each, under $1
    today = [usage(100 + i, day + 60 + i) for i in range(6)] + [done(100, day + 30)]
    alerts = m.process([validate_event(e) for e in sorted(today, key=lambda e: e["ts"])]).alerts
    budget = [a for a in alerts if a.kind == "budget"]
    assert budget and all(a.summary.endswith("; $0.6000 per ticket_resolved today (1) vs $0.2000 yesterday (3)")
                          for a in budget)
    assert budget[0].evidence["per_outcome"] == {
        "outcome": "ticket_resolved", "outcomes_today": 1, "outcomes_yesterday": 3,
        "usd_per_outcome_today": 0.6, "usd_per_outcome_yesterday": 0.2}
    quiet = Monitor(budgets=BudgetConfig(workflows={"support": Budget(daily_usd=1.0)}))
    plain = quiet.process([validate_event(usage(i, day + i)) for i in range(6)]).alerts
    assert plain and all("per_outcome" not in a.evidence and " per " not in a.summary for a in plain)
