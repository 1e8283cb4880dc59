"""Multi-window burn-rate alerts: when each tier fires and resolves, in event time only.

Traffic is one call every 10 s; the clock is the events' own time and `Monitor.tick(now)`,
as the replay driver drives it. A daily budget of $288 allows $12/h, $0.20 a minute.
Expected firing times come from the windows' definition, not from the engine: a window of
12 buckets averages over the last 11 buckets and the current one, so a 1 h rate covers the
last 55–60 min, and the minute a tier fires lies in the band that this leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from detectors.engine.budgets import Budget, BudgetConfig
from detectors.engine.burn import BudgetNow, BurnRateConfig, check_burn, runs_out
from detectors.engine.monitor import Monitor
from detectors.engine.workflow import WorkflowState
from detectors.pricing.money import usd_to_micros
from detectors.pricing.prices import PriceBook, Rate
from schemas.alerts import Alert
from schemas.decode import validate_event
from spendwatch.cli import main
from spendwatch.config import ConfigError, load_settings
from streams.sinks.slack import blocks

MIDNIGHT = datetime(2026, 1, 15, tzinfo=UTC).timestamp()
PER_MIN = 0.20  # $288 a day, in dollars per minute
STEP = 10  # seconds between calls


def monitor(budgets: BudgetConfig | None = None, **kw) -> Monitor:
    budgets = budgets or BudgetConfig(workflows={"bot": Budget(daily_usd=288)})
    return Monitor(budgets, PriceBook(fallback=Rate.flat(0, 0, source="fallback")), detectors=[], **kw)


class Traffic:
    """Drives a Monitor minute by minute: `x(minute)` times the budgeted rate (0: no calls),
    one batch per call and a tick 5 s after it; records (minute, alert)."""

    def __init__(self, m: Monitor, start: float = MIDNIGHT):
        self.m, self.start, self.n = m, start, 0
        self.alerts: list[tuple[float, Alert]] = []

    def run(self, minutes: range, x: Callable[[int], float]) -> list[tuple[float, Alert]]:
        new: list[tuple[float, Alert]] = []
        for minute in minutes:
            for s in range(0, 60, STEP):
                t = self.start + minute * 60 + s
                alerts = []
                if x(minute):
                    self.n += 1
                    alerts += self.m.process([validate_event({
                        "type": "usage", "event_id": f"e{self.n}", "ts": t, "workflow": "bot", "team": "cx",
                        "agent_id": f"agent-{self.n % 3}", "model": "gpt-4o", "input_tokens": 1000,
                        "output_tokens": 100, "cost_usd": PER_MIN * x(minute) * STEP / 60})]).alerts
                alerts += self.m.tick(t + STEP / 2)
                new += [((t - self.start) / 60, a) for a in alerts if a.kind == "burn_rate"]
        self.alerts += new
        return new


def test_a_sudden_20x_burn_pages_when_the_hour_average_reaches_14_4x():
    """From 02:00 the bot burns 20× on top of two hours at 1×. The 5 min window is past 14.4× within
    4 min; the hour's, (20t + C - t) / C ≥ 14.4, at t = 13.4 C / 19 with C in 55..60 min: 38.8..42.3."""
    tr = Traffic(monitor())
    assert tr.run(range(0, 120), lambda m: 1) == []
    [(minute, page)] = tr.run(range(120, 170), lambda m: 20)
    assert 120 + 38.5 <= minute <= 120 + 42.5
    assert page.severity == "critical" and page.status == "firing" and page.team == "cx"
    assert page.alert_id == f"burn_rate:workflow:bot:day:page:{page.ts:.0f}"
    ev = page.evidence
    assert 14.4 <= ev["long_window_x"] < 15.5 and ev["short_window_x"] >= 19
    assert ev["budgeted_usd_per_hour"] == 12.0 and ev["budget_usd"] == 288.0
    call = PER_MIN * 20 * STEP / 60
    assert ev["spent_usd"] == pytest.approx(2 * 12 + (minute - 120) * 4 + call, abs=0.01)  # $4 a minute at 20×


def test_a_sustained_7x_burn_opens_a_ticket_and_never_pages():
    """7× from 06:00 after six hours at 1×: the 6 h average, (7t + C - t) / C ≥ 6, reaches 6× at t = 5C/6
    with C in 330..360 min, so 275..300 min in; 7× never reaches the page's 14.4×."""
    tr = Traffic(monitor())
    tr.run(range(0, 360), lambda m: 1)
    new = tr.run(range(360, 720), lambda m: 7)
    [(minute, ticket)] = new
    assert 360 + 274.5 <= minute <= 360 + 300.5
    assert ticket.severity == "warning" and ticket.evidence["tier"] == "ticket"
    assert ticket.alert_id.startswith("burn_rate:workflow:bot:day:ticket:")
    assert "6 h" in ticket.summary and "30 min" in ticket.summary


def test_a_five_minute_burst_does_not_move_the_hour():
    """20× for 5 min in an hour at 1× averages (100 + 55) / 60 ≈ 2.6×: the short window alone never pages."""
    tr = Traffic(monitor())
    tr.run(range(0, 600), lambda m: 20 if 120 <= m < 125 else 1)
    assert tr.alerts == []


def test_the_page_resolves_under_its_id_when_the_short_window_drops_and_a_new_burn_is_a_new_episode():
    """Back to 1× after the page: the 5 min rate, (20 (C - t) + t) / C, is under 14.4× once t > 5.6 C / 19,
    1.4..1.5 min. A second burn while the hour is still hot pages again as soon as 5 min agree: a new id."""
    tr = Traffic(monitor())
    tr.run(range(0, 60), lambda m: 1)
    [(_, page)] = tr.run(range(60, 110), lambda m: 20)
    [(minute, resolved)] = tr.run(range(110, 120), lambda m: 1)
    assert 111.3 <= minute <= 111.7
    assert resolved.status == "resolved" and resolved.alert_id == page.alert_id
    assert resolved.ts > page.ts and "no longer burns" in resolved.summary
    assert resolved.evidence["short_window_x"] < 14.4
    [(again, second)] = tr.run(range(120, 130), lambda m: 20)
    assert again < 125 and second.status == "firing" and second.alert_id != page.alert_id


def test_a_burn_that_stops_dead_resolves_on_the_tick():
    """No more calls at all: only the tick can see the short window empty out (0.28 C after the stop)."""
    tr = Traffic(monitor())
    tr.run(range(0, 60), lambda m: 20)
    assert [a.status for _, a in tr.alerts] == ["firing"]
    [(minute, resolved)] = tr.run(range(60, 70), lambda m: 0)
    assert resolved.status == "resolved" and 61 <= minute <= 61.6


def test_the_episode_survives_a_restart_and_resolves_under_the_same_id():
    """A worker that reloads the workflow's state from its table neither pages again nor forgets to resolve."""
    tr = Traffic(monitor())
    [(_, page)] = tr.run(range(0, 60), lambda m: 20)
    saved = orjson.dumps(tr.m.workflows["bot"].dump())
    tr.m = monitor(load_workflow=lambda name: WorkflowState.load(orjson.loads(saved)))
    assert tr.run(range(60, 62), lambda m: 20) == []
    [(_, resolved)] = tr.run(range(62, 70), lambda m: 0.5)
    assert resolved.status == "resolved" and resolved.alert_id == page.alert_id


def test_projection_says_when_the_budget_runs_out_at_the_long_window_rate():
    """$300 a day, $100 spent by 10:00, $250/h over the hour: $200 left last 48 min, so 10:48 UTC."""
    ten = MIDNIGHT + 10 * 3600
    b = BudgetNow("workflow", "bot", "bot", "cx", "day", "2026-01-15", MIDNIGHT, MIDNIGHT + 86400,
                  usd_to_micros(300), usd_to_micros(100), ten)
    per_s = {"1h": usd_to_micros(250) / 3600, "300s": usd_to_micros(260) / 3600,
             "21600s": usd_to_micros(50) / 3600, "1800s": usd_to_micros(260) / 3600}  # the ticket's 6 h: 4×
    fired: set[str] = set()
    [page] = check_burn(b, BurnRateConfig(), per_s.__getitem__, fired, "2026-01-15", lambda: {})
    assert page.evidence["runs_out_at"] == "2026-01-15T10:48:00Z" and page.evidence["runs_out_in_min"] == 48.0
    assert page.evidence["long_window_x"] == 20.0 and page.evidence["usd_per_hour"] == 250.0
    assert ("is burning its daily budget 20.0× too fast: $250.00/h over the last 1 h against $12.50/h budgeted, "
            "20.8× over the last 5 min. Spent $100.00 of $300.00 (33%) in 2026-01-15; at this rate it runs out "
            "at 10:48 UTC (in 48 min)") in page.summary
    assert fired == {f"2026-01-15:burn:day:page:{ten:.0f}"}
    late = BudgetNow(*[*vars(b).values()][:-1], MIDNIGHT + 23.5 * 3600)  # 30 min left of the day
    assert runs_out(late, usd_to_micros(250) / 3600) is None
    spent = BudgetNow(*[*vars(b).values()][:-2], usd_to_micros(301), ten)
    assert runs_out(spent, 1.0) == ten


def test_the_slack_message_says_what_burns_how_fast_and_until_when():
    tr = Traffic(monitor())
    [(_, page)] = tr.run(range(0, 60), lambda m: 20)
    text = str(blocks(page))
    for needle in ("Budget burning too fast — critical", "workflow bot is burning its daily budget",
                   "*long window x*", "*budgeted usd per hour*", "*runs out at*", "*top agents last hour*",
                   "agent-"):
        assert needle in text, needle


def test_tiers_windows_and_factors_come_from_the_config(tmp_path: Path):
    path = tmp_path / "ok.toml"
    path.write_text("[budgets.workflows.bot]\ndaily_usd = 288\n"
                    "[budgets.burn_rate.page]\nfactor = 10\n"  # windows left out keep 1 h / 5 min
                    "[budgets.burn_rate.ticket]\nenabled = false\n")
    s = load_settings(path)
    assert (s.budgets.burn_rate.page.long_s, s.budgets.burn_rate.page.short_s) == (3600, 300)

    def tiers(budgets: BudgetConfig) -> list[tuple[str, float]]:
        """12× for 4 h from midnight (nothing before): never 14.4×; over 1 h, 12t / C reaches 10× at
        t = 5C/6 (45.8..50 min), over 6 h 6× at t = C/2 (165..180 min)."""
        tr = Traffic(monitor(budgets))
        tr.run(range(0, 4 * 60), lambda m: 12)
        return [(a.evidence["tier"], minute) for minute, a in tr.alerts]

    [(tier, minute)] = tiers(BudgetConfig(workflows={"bot": Budget(daily_usd=288)}))
    assert tier == "ticket" and 164.5 <= minute <= 180.5
    [(tier, minute)] = tiers(s.budgets)
    assert tier == "page" and 45.5 <= minute <= 50.5


def test_the_example_config_shows_the_burn_rate_defaults():
    example = load_settings(Path(__file__).parent.parent / "spendwatch.example.toml")
    assert example.budgets.burn_rate == BurnRateConfig()


@pytest.mark.parametrize("text, expected", [
    ("[budgets.burn_rate.page]\nshort_s = 3600", "budgets.burn_rate.page: Value error, short_s (3600) must be "
                                                  "shorter than long_s (3600)"),
    ("[budgets.burn_rate.ticket]\nfactor = 0.5", "budgets.burn_rate.ticket.factor: Input should be greater than "
                                                 "or equal to 1"),
    ("[budgets.burn_rate.page]\nshort_s = 10", "budgets.burn_rate.page.short_s: Input should be greater than or "
                                               "equal to 60"),
    ("[budgets.burn_rate.pager]\nfactor = 10", "budgets.burn_rate.pager: Extra inputs are not permitted"),
    ("[budgets.burn_rate.page]\nfactor = inf", "budgets.burn_rate.page.factor: Input should be a finite number"),
])
def test_bad_burn_rate_config_is_refused_with_the_key(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.toml") as err:
        load_settings(path)
    assert expected in str(err.value)


def test_only_budgeted_workflows_keep_burn_windows_and_a_config_change_drops_them():
    m = monitor()
    Traffic(m).run(range(0, 2), lambda m: 1)
    assert set(m.workflows["bot"].spend.windows) == {"1m", "1h", "24h", "300s", "1800s", "21600s"}
    doc = m.workflows["bot"].dump()
    other = monitor(BudgetConfig())  # the budget went from the config
    other._load_workflow = lambda name: WorkflowState.load(doc)
    assert set(other.workflow("bot").spend.windows) == {"1m", "1h", "24h"}


def test_a_backtest_with_a_budget_scores_the_burn_and_reports_its_resolution(tmp_path: Path):
    """`spendwatch replay backtest --config` end to end: a 40 min 20× burn labelled as a burn_rate
    incident is detected once (recall 1, no false alarm) and its resolution is counted apart."""
    events = []
    t = MIDNIGHT + 3600
    for i in range(int(3 * 3600 / STEP)):
        minute = i * STEP // 60
        x = 20 if 60 <= minute < 100 else 1
        events.append({"type": "usage", "event_id": f"e{i}", "ts": t + i * STEP, "workflow": "bot", "model": "gpt-4o",
                       "input_tokens": 1000, "output_tokens": 100, "cost_usd": PER_MIN * x * STEP / 60})
    (tmp_path / "traffic.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    (tmp_path / "labels.json").write_bytes(orjson.dumps([{"kind": "burn_rate", "subject": "workflow", "id": "bot",
                                                          "start": t + 3600, "end": t + 100 * 60}]))
    (tmp_path / "c.toml").write_text("[budgets.workflows.bot]\ndaily_usd = 288\n")
    assert main(["replay", "backtest", str(tmp_path / "traffic.jsonl"), "--config", str(tmp_path / "c.toml"),
                 "--labels", str(tmp_path / "labels.json"), "--out", str(tmp_path / "out")]) == 0
    alerts = [orjson.loads(line) for line in (tmp_path / "out" / "alerts.jsonl").read_bytes().splitlines()]
    burns = [(a["status"], a["alert_id"]) for a in alerts if a["kind"] == "burn_rate"]
    assert [s for s, _ in burns] == ["firing", "resolved"] and burns[0][1] == burns[1][1]
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    row = summary["score"]["per_kind"]["burn_rate"]
    assert (row["recall"], row["false_alarms"], summary["resolved"]) == (1.0, 0, 1)
    assert "burn_rate" in (tmp_path / "out" / "report.html").read_text()
