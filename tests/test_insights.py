"""Savings insights with known answers: generated traffic where each lever has one workflow behind
it, and dollars computed here independently from the genai-prices catalog (`calc_price`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from genai_prices import Usage, calc_price

from detectors.engine.monitor import Monitor
from detectors.insights import DEFAULT_TIERS, InsightsEngine
from detectors.insights.tiers import TierMap
from detectors.pricing.prices import PriceBook
from schemas.decode import validate_event
from schemas.snapshots import WorkflowSnapshot
from spendwatch.cli import main
from spendwatch.config import ConfigError, InsightsConfig, load_settings
from streams.dashboard.model import ReadModel

DAY = 86_400
T0 = 1_772_409_600.0  # 2026-03-02 00:00 UTC
DAYS = 14
EVERY = 300.0  # one call every 5 minutes per workflow
EXAMPLE = Path(__file__).parent.parent / "spendwatch.example.toml"


def usd(model: str, provider: str, inp: int, out: int, cached: int = 0) -> float:
    """One call's price straight from the catalog, not through spendwatch's cached rates."""
    return float(calc_price(Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached), model,
                            provider_id=provider).total_price)


def call(wf: str, ts: float, model: str, provider: str, inp: int, out: int, cached: int = 0,
         run: str | None = None) -> dict[str, Any]:
    ev = {"type": "usage", "event_id": f"{wf}-{ts}-{run}", "ts": ts, "workflow": wf, "model": model,
          "provider": provider, "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cached}
    return {**ev, "run_id": run} if run else ev


def traffic() -> list[dict[str, Any]]:
    """Two weeks: a classifier on a frontier model, a 20k prompt resent uncached, a context that doubles
    week over week, agent runs half of which never reach an outcome, and a clean workflow."""
    evs: list[dict[str, Any]] = []
    n = int(DAYS * DAY / EVERY)
    for i in range(n):
        ts = T0 + i * EVERY
        evs.append(call("classify", ts + 1, "gpt-4o", "openai", 1_800, 5))  # instructions, a line, a label
        evs.append(call("classify", ts + 151, "gpt-4o", "openai", 1_800, 5))
        evs.append(call("resend", ts + 2, "gpt-4o", "openai", 20_000, 200))
        big = ts >= T0 + 7 * DAY
        evs.append(call("growing", ts + 3, "claude-sonnet-4-5", "anthropic", 16_000 if big else 8_000, 300,
                        8_000 if big else 4_000))
        evs.append(call("clean", ts + 4, "gpt-4o-mini", "openai", 3_000, 500, 2_100))
    for r in range(int((DAYS * DAY - 2 * 3600) / 600)):  # a run every 10 min, none in the last 2 h
        start, rid = T0 + r * 600 + 5, f"run-{r}"
        for step in range(10):
            evs.append(call("agents", start + 30 * step, "gpt-4.1", "openai", 5_000, 400 + step, 3_000, rid))
        if r % 2 == 0:
            evs.append({"type": "outcome", "event_id": f"o-{rid}", "ts": start + 300, "workflow": "agents",
                        "outcome": "done", "run_id": rid})
    return sorted(evs, key=lambda e: e["ts"])


def feed(monitor: Monitor, events: list[dict[str, Any]]) -> None:
    """Hour by hour of event time, with a tick after each hour (as a worker's timer would)."""
    batch: list[Any] = []
    hour = None
    for doc in events:
        ev = validate_event(doc)
        h = int(ev.ts // 3600)
        if hour is not None and h != hour and batch:
            monitor.process(batch)
            batch = []
            monitor.tick(h * 3600.0)
        hour = h
        batch.append(ev)
    if batch:
        monitor.process(batch)
        monitor.tick(batch[-1].ts + 1)


def span_days(events: list[dict[str, Any]], wf: str) -> float:
    """What the window of an insight spans, as the README defines it: from the start of the 7-day window
    (or the workflow's first call) to its last event."""
    ts = [e["ts"] for e in events if e["workflow"] == wf]
    now = max(ts)
    start = (int(now // DAY) - 6) * DAY
    return (now - max(min(ts), start)) / DAY


@pytest.fixture(scope="module")
def replayed() -> tuple[Monitor, list[dict[str, Any]]]:
    events = traffic()
    monitor = Monitor()
    feed(monitor, events)
    return monitor, events


def only(monitor: Monitor, wf: str) -> dict[str, Any]:
    found = monitor.insights(wf, fresh=True)
    assert len(found) == 1, found
    return found[0]


def in_window(events: list[dict[str, Any]], wf: str) -> list[dict[str, Any]]:
    now = max(e["ts"] for e in events if e["workflow"] == wf)
    start = (int(now // DAY) - 6) * DAY
    return [e for e in events if e["workflow"] == wf and e["type"] == "usage" and e["ts"] >= start]


def test_right_sizing_finds_the_classifier_on_a_frontier_model(replayed):
    monitor, events = replayed
    got = only(monitor, "classify")
    calls = len(in_window(events, "classify"))
    expected = calls * (usd("gpt-4o", "openai", 1_800, 5) - usd("gpt-4o-mini", "openai", 1_800, 5)) / span_days(
        events, "classify")
    assert got["kind"] == "right_sizing" and got["model"] == "gpt-4o"
    assert got["evidence"]["target_model"] == "gpt-4o-mini" and got["evidence"]["routine_share"] == 1.0
    assert got["usd_per_day"] == pytest.approx(expected, rel=0.01)
    assert got["usd_per_month"] == pytest.approx(30 * expected, rel=0.01)
    assert "candidates for gpt-4o-mini" in got["summary"]


def test_caching_finds_the_resent_uncached_prompt(replayed):
    monitor, events = replayed
    got = only(monitor, "resend")
    calls = len(in_window(events, "resend"))
    per_call = usd("gpt-4o", "openai", 20_000, 200) - usd("gpt-4o", "openai", 20_000, 200, cached=6_000)
    expected = calls * per_call / span_days(events, "resend")  # 30 % of each prompt read from cache
    assert got["kind"] == "caching" and got["model"] == "gpt-4o"
    assert got["evidence"]["cache_share"] == 0.0 and got["evidence"]["assumed_hit_rate"] == 0.3
    assert 18_000 <= got["evidence"]["prompt_p50"] <= 22_000
    assert got["usd_per_day"] == pytest.approx(expected, rel=0.01)


def test_context_bloat_finds_the_context_that_doubled(replayed):
    monitor, events = replayed
    got = only(monitor, "growing")
    calls = len(in_window(events, "growing"))
    per_call = usd("claude-sonnet-4-5", "anthropic", 16_000, 300, 8_000) - usd("claude-sonnet-4-5", "anthropic",
                                                                              8_000, 300, 4_000)
    expected = calls * per_call / span_days(events, "growing")
    assert got["kind"] == "context_bloat" and got["model"] == "claude-sonnet-4-5"
    assert got["evidence"]["growth"] == pytest.approx(1.0)
    assert got["evidence"]["prompt_p50"]["this_week"] > 1.8 * got["evidence"]["prompt_p50"]["last_week"]
    assert got["usd_per_day"] == pytest.approx(expected, rel=0.01)


def test_token_waste_finds_the_runs_without_outcomes(replayed):
    monitor, events = replayed
    got = only(monitor, "agents")
    ended = {e["run_id"] for e in events if e["type"] == "outcome"}
    window = in_window(events, "agents")
    first_in_window = {e["run_id"] for e in window if e["run_id"] not in ended}
    # a run counts on the day of its last call: those in the window, whole
    wasted = [e for e in events if e.get("run_id") in first_in_window and e["type"] == "usage"]
    expected = sum(usd("gpt-4.1", "openai", e["input_tokens"], e["output_tokens"], e["cache_read_tokens"])
                   for e in wasted) / span_days(events, "agents")
    assert got["kind"] == "token_waste"
    assert got["evidence"]["runs"] == {"no_outcome": len(first_in_window), "loop": 0, "zombie": 0}
    assert got["evidence"]["waste_ratio"] == pytest.approx(0.5, abs=0.01)
    assert got["usd_per_day"] == pytest.approx(expected, rel=0.01)


def test_a_clean_workflow_gets_no_insight(replayed):
    monitor, _ = replayed
    assert monitor.insights("clean", fresh=True) == []


def test_insights_reach_the_snapshot_and_the_read_model(replayed):
    monitor, _ = replayed
    model = ReadModel()
    for wf in sorted(monitor.workflows):
        snap = WorkflowSnapshot.model_validate(monitor.snapshot(wf))
        assert [i.model_dump() for i in snap.insights] == monitor.insights(wf)
        model.apply_snapshot(orjson.dumps(monitor.snapshot(wf)))
    rows = model.insights()
    assert {(r["workflow"], r["kind"]) for r in rows} == {
        ("classify", "right_sizing"), ("resend", "caching"), ("growing", "context_bloat"), ("agents", "token_waste")}
    assert [r["usd_per_day"] for r in rows] == sorted((r["usd_per_day"] for r in rows), reverse=True)
    assert model.insights(kind="caching")[0]["workflow"] == "resend"


def test_state_survives_a_restart_mid_stream(replayed):
    whole, events = replayed
    half = [e for e in events if e["ts"] < T0 + 9.5 * DAY]
    rest = events[len(half):]
    before = Monitor()
    feed(before, half)
    after = Monitor()
    for wf in before.workflows:
        blob = before.dump_detectors(wf)
        after.workflows[wf] = before.workflows[wf]  # the totals come back from their own table
        after.restore_detectors(wf, blob)
        assert after.insight_engine.dump(wf) == before.insight_engine.dump(wf)
    feed(after, rest)
    for wf in whole.workflows:
        assert after.insights(wf, fresh=True) == whole.insights(wf, fresh=True)
    assert whole.insights("agents", fresh=True)


def test_memory_is_bounded_per_workflow():
    eng = InsightsEngine()
    evs = [validate_event(call("w", T0 + d * DAY + i, f"model-{i}", "openai", 100, 10, run=f"r{d}-{i}"))
           for d in range(30) for i in range(40)]
    for d in range(30):
        day = evs[d * 40:(d + 1) * 40]
        eng.observe("w", day, [1] * len(day))
        eng.tick("w", T0 + d * DAY + 3600)
    wf = eng.workflows["w"]
    assert len(wf.days) <= 14 and all(len(models) <= 20 for models in wf.days.values())
    assert wf.dropped == 30 * 20 and len(orjson.dumps(wf.dump())) < 200_000


def test_every_default_tier_target_is_in_the_catalog():
    book = PriceBook()
    tiers = TierMap(DEFAULT_TIERS)
    for source, provider in [("gpt-4o", "openai"), ("gpt-4.1", "openai"), ("gpt-5", "openai"),
                             ("claude-sonnet-4-5", "anthropic"), ("claude-opus-4-1", "anthropic"),
                             ("claude-3-5-sonnet-latest", "anthropic"), ("gemini-2.5-pro", "google"),
                             ("gemini-3-pro-preview", "google")]:
        target = tiers.target(source)
        assert target is not None and book.rate(target, provider) is not book.fallback, (source, target)
        assert book.rate(source, provider).input.base > book.rate(target, provider).input.base


@pytest.mark.parametrize(("toml", "key"), [
    ("[insights]\nhit_rate = 1.5\n", "insights.hit_rate"),
    ("[insights]\nhit_rate = \"high\"\n", "insights.hit_rate"),
    ("[insights]\nwindow_days = 10\n", "insights.window_days"),
    ("[insights]\nhitrate = 0.3\n", "insights.hitrate"),
    ("[insights.routine]\nmax_prompt_tokens = 0\n", "insights.routine.max_prompt_tokens"),
    ("[insights.routine]\nmin_success = 2\n", "insights.routine.min_success"),
    ("[insights.tiers]\n\"gpt-4o\" = \"gpt-*-mini\"\n", "insights.tiers"),
    ("[insights.tiers]\n\"gpt-4o\" = 3\n", "insights.tiers.gpt-4o"),
])
def test_a_bad_insights_value_is_refused_with_its_key(tmp_path: Path, toml: str, key: str):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(path)


def test_the_example_config_shows_the_insights_defaults(tmp_path: Path):
    text = EXAMPLE.read_text()
    section = text[text.index("[insights]"):text.index("[detectors.")]  # the detectors' test reads from there on
    uncommented = re.sub(r"^# (\[insights[a-z.]*\]|[a-z_]+ = )", r"\1", section, flags=re.M)
    path = tmp_path / "c.toml"
    path.write_text(uncommented)
    assert load_settings(path).insights == InsightsConfig()
    assert load_settings(EXAMPLE).insights == InsightsConfig()


def test_the_config_builds_the_engine_it_describes(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[insights]\nhit_rate = 0.5\nmin_usd_per_day = 0\n[insights.tiers]\n"my-big-*" = "my-small-*"\n')
    monitor = load_settings(path).build_monitor()
    eng = monitor.insight_engine
    assert eng.params.hit_rate == 0.5 and eng.params.tier_map.target("my-big-7b") == "my-small-7b"
    assert eng.params.tier_map.target("gpt-4o") == "gpt-4o-mini" and eng.idle == 900.0


def test_cli_ranks_opportunities_from_a_recording(tmp_path: Path, capsys):
    events = [e for e in traffic() if e["ts"] >= T0 + 12 * DAY and e["workflow"] in ("classify", "resend", "clean")]
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert main(["insights", str(path), "--format", "json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [(r["workflow"], r["kind"]) for r in rows] == [("classify", "right_sizing"), ("resend", "caching")] or \
        [(r["workflow"], r["kind"]) for r in rows] == [("resend", "caching"), ("classify", "right_sizing")]
    assert all({"kind", "workflow", "model", "usd_per_day", "evidence"} <= set(r) for r in rows)
    assert rows[0]["usd_per_day"] >= rows[1]["usd_per_day"]
    assert main(["insights", str(path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "kind,workflow,model,usd_per_day,usd_per_month,summary,evidence"
    assert main(["insights", str(path)]) == 0
    assert "savings opportunities" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["insights"],
    ["insights", "nope.jsonl"],
    ["insights", "t.jsonl", "--broker", "kafka://127.0.0.1:9"],
    ["insights", "t.jsonl", "--config", "missing.toml"],
    ["insights", "bad.jsonl"],
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_bytes(orjson.dumps(call("w", T0, "gpt-4o", "openai", 10, 1)) + b"\n")
    (tmp_path / "bad.jsonl").write_text('{"type":"usage","ts":"yesterday"}\n')
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spendwatch: error:") and "\n" not in err


def test_the_backtest_report_has_an_insights_section(tmp_path: Path):
    from replay.backtest import backtest

    events = [e for e in traffic() if e["ts"] >= T0 + 13 * DAY and e["workflow"] == "resend"]
    summary = backtest(events, tmp_path)
    assert [(i["workflow"], i["kind"]) for i in summary["insights"]] == [("resend", "caching")]
    page = (tmp_path / "report.html").read_text()
    assert "Savings insights: 1" in page and "resend" in page


# -- the weekly digest (issue 16, item 4) ---------------------------------------------------------


def test_the_weekly_digest_fires_once_on_its_day_for_workflows_with_opportunities() -> None:
    from detectors.engine.monitor import Monitor
    from detectors.insights import InsightsEngine
    from schemas.alerts import ANY_WORKFLOW
    from schemas.decode import validate_event

    sunday = 1_764_460_800.0  # 2025-11-30 00:00 UTC, a Sunday
    m = Monitor(insights=InsightsEngine(digest=(0, 9)))  # Mondays from 09:00 UTC
    tagger = [{"type": "usage", "event_id": f"t{i}", "ts": sunday + 60 * i, "workflow": "tagger", "model": "gpt-4o",
               "input_tokens": 300, "output_tokens": 5} for i in range(1440 + 9 * 60)]
    clean = [{"type": "usage", "event_id": f"c{i}", "ts": sunday + 600 * i, "workflow": "clean",
              "model": "gpt-4o-mini", "input_tokens": 900, "output_tokens": 400} for i in range(200)]
    m.process([validate_event(e) for e in sorted(tagger + clean, key=lambda e: e["ts"])])
    assert [a.kind for a in m.tick(sunday + 86_400 + 8 * 3600)] == []  # Monday 08:00: not yet
    digest = [a for a in m.tick(sunday + 86_400 + 9 * 3600) if a.kind == "insights"]
    assert [(a.alert_id, a.workflow, a.severity) for a in digest] == [
        ("insights:tagger:2025-12-01", ANY_WORKFLOW, "info")]
    [opportunity] = digest[0].evidence["opportunities"]
    expected = m.insights("tagger", fresh=True)[0]
    assert opportunity["kind"] == "right_sizing" and opportunity["usd_per_day"] == expected["usd_per_day"]
    assert digest[0].summary.startswith(f"tagger: ${expected['usd_per_day']:,.2f}/day in savings opportunities")
    assert [a for a in m.tick(sunday + 86_400 + 10 * 3600) if a.kind == "insights"] == []  # once a week


def test_the_router_tells_a_digest_once_and_forgets_it_without_a_resolved_message() -> None:
    from schemas.alerts import Alert
    from streams.routing import Router, RoutingConfig

    r = Router(RoutingConfig(group_wait_s=30, repeat_interval_s=3600, resolve_timeout_s=86_400))
    for wf, usd in (("a", 5.0), ("b", 50.0)):
        r.add(Alert(alert_id=f"insights:{wf}:2025-12-01", kind="insights", severity="info", workflow="*", ts=0.0,
                    summary=f"{wf}: ${usd}/day", evidence={"workflow": wf, "usd_per_day": usd}), now=0.0)
    [n] = r.due(30.0)
    assert len(n.new) == 2
    r.sent(n)
    assert r.due(3600 * 5) == []  # no reminder: a report is not an alarm
    assert r.due(86_400 + 60) == [] and r.groups == {}  # and no "resolved" edit a day later

    from streams.sinks.slack import digest_blocks

    texts = [b["text"]["text"] for b in digest_blocks(n) if b["type"] == "section" and "text" in b]
    assert texts[0].endswith("b: $50.0/day") and texts[2].endswith("a: $5.0/day")  # biggest first


def test_a_digest_day_that_is_not_a_weekday_is_refused(tmp_path) -> None:
    import pytest

    from spendwatch.config import ConfigError, load_settings

    path = tmp_path / "spendwatch.toml"
    path.write_text('[insights.digest]\nenabled = true\nday = "someday"\n')
    with pytest.raises(ConfigError, match="insights.digest.day"):
        load_settings(path)
    path.write_text('[insights.digest]\nenabled = true\nday = "friday"\nhour = 17\n')
    assert load_settings(path).build_monitor().insight_engine.digest == (4, 17)
