"""The dashboard's read model and HTTP API (issue 15), on snapshots the real engine builds.

The read model gets records as the feed would hand them (bytes); the API runs on a real aiohttp
server on loopback and is queried over HTTP. Wall time (kill expiry) is injected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from detectors.engine.budgets import Budget, BudgetConfig
from detectors.engine.monitor import Monitor
from detectors.pricing.money import micros_to_usd
from schemas.alerts import Alert
from schemas.control import release_command
from schemas.decode import validate_event
from schemas.signing import Keyring, make_command
from streams.dashboard.metrics import METRICS
from streams.dashboard.model import ReadModel, Series
from streams.dashboard.server import make_app

T0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC
TOKEN = "s3cret-token-for-tests-0123456789"


def usage(i: int, wf: str, ts: float, *, team: str = "cx", model: str = "gpt-4o", run: str | None = None,
          status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": "usage", "event_id": f"{wf}-{i}", "ts": ts, "workflow": wf, "team": team, "model": model,
            "input_tokens": 10_000, "output_tokens": 500, "cache_read_tokens": 2_000, "cache_write_tokens": 1_000,
            "reasoning_tokens": 100, "agent_id": f"{wf}-agent", "run_id": run or f"{wf}-run-{i // 10}",
            "status": status, **extra}


def outcome(i: int, wf: str, ts: float, name: str = "ticket_resolved", value: float | None = None) -> dict[str, Any]:
    ev = {"type": "outcome", "event_id": f"{wf}-o{i}", "ts": ts, "workflow": wf, "outcome": name}
    return ev if value is None else {**ev, "value_usd": value}


def run_monitor(events: list[dict[str, Any]], monitor: Monitor | None = None) -> Monitor:
    m = monitor or Monitor(budgets=BudgetConfig(workflows={"support": Budget(daily_usd=5.0, monthly_usd=100.0)}))
    m.process([validate_event(e) for e in sorted(events, key=lambda e: e["ts"])])
    return m


def snap(m: Monitor, wf: str) -> bytes:
    return orjson.dumps(m.snapshot(wf))


@pytest.fixture
def fed() -> tuple[ReadModel, Monitor]:
    """Two workflows over two hours: support (budgeted, outcomes with value), batch (no outcomes)."""
    m = run_monitor([usage(i, "support", T0 + 30 * i) for i in range(240)]
                    + [outcome(i, "support", T0 + 300 * i + 5, value=4.0) for i in range(24)]
                    + [usage(i, "batch", T0 + 3600 + 60 * i, team="data", model="gpt-4o-mini") for i in range(60)])
    model = ReadModel(wall=lambda: T0 + 7200)
    for wf in ("support", "batch"):
        assert model.apply_snapshot(snap(m, wf))
    return model, m


def test_the_summary_adds_up_what_the_engine_counted(fed: tuple[ReadModel, Monitor]) -> None:
    model, m = fed
    s = model.summary()
    day = m.clock.keys(T0)[0]
    expect = sum(m.workflows[wf].totals(day)[0] for wf in ("support", "batch"))
    assert s["today_usd"] == pytest.approx(micros_to_usd(expect), abs=1e-6) and s["today_usd"] > 0
    assert s["calls_today"] == 300 and s["outcomes_today"] == 24 and s["workflows"] == 2
    assert s["tokens_today"] == {"input": 3_000_000, "output": 150_000, "cache_read": 600_000,
                                 "cache_write": 300_000, "reasoning": 30_000}
    support = m.workflows["support"].totals(day)[0]
    assert s["usd_per_outcome_today"] == pytest.approx(micros_to_usd(expect) / 24, abs=1e-6)
    [budget] = s["budgets"]
    assert budget["workflow"] == "support" and budget["day_used"] == pytest.approx(support / 5_000_000, abs=1e-4)


def test_budget_rows_carry_the_spend_and_the_limits_the_burn_bars_show(fed: tuple[ReadModel, Monitor]) -> None:
    model, m = fed
    [row] = model.summary()["budgets"]
    spent = micros_to_usd(m.workflows["support"].totals(m.clock.keys(T0)[0])[0])
    assert (row["day_budget_usd"], row["month_budget_usd"]) == (5.0, 100.0)
    assert row["today_usd"] == pytest.approx(spent, abs=1e-6) and row["month_usd"] == row["today_usd"]
    assert row["day_used"] == pytest.approx(spent / 5.0, abs=1e-4)
    assert model.workflow("support")["budget"] == {"day_budget_usd": 5.0, "month_budget_usd": 100.0}  # type: ignore[index]
    assert model.workflow("batch")["budget"] is None  # type: ignore[index]


def test_cost_per_outcome_and_value_per_dollar_per_workflow_and_outcome(fed: tuple[ReadModel, Monitor]) -> None:
    model, m = fed
    [row] = model.outcome_rows("day")
    cost = micros_to_usd(m.workflows["support"].totals(m.clock.keys(T0)[0])[0])
    assert (row["workflow"], row["outcome"], row["count"]) == ("support", "ticket_resolved", 24)
    assert row["usd_per_outcome"] == pytest.approx(cost / 24, abs=1e-6)
    assert row["value_usd"] == 96.0 and row["value_per_usd"] == pytest.approx(96.0 / cost, rel=1e-3)
    assert model.outcome_rows("day", workflow="batch") == [] and model.outcome_rows("day", workflow="nope") == []


def test_workflows_sort_by_today_hour_and_name(fed: tuple[ReadModel, Monitor]) -> None:
    model, _ = fed
    by_today = [r["workflow"] for r in model.workflow_rows("today")["workflows"]]
    assert by_today == ["support", "batch"]  # gpt-4o for two hours vs gpt-4o-mini for one
    assert [r["workflow"] for r in model.workflow_rows("name")["workflows"]] == ["batch", "support"]
    assert model.workflow_rows("today", limit=1, offset=1)["workflows"][0]["workflow"] == "batch"
    assert [r["workflow"] for r in model.workflow_rows(team="data")["workflows"]] == ["batch"]


def test_a_stale_snapshot_changes_nothing_and_a_bad_one_is_counted() -> None:
    m = run_monitor([usage(i, "wf", T0 + i) for i in range(5)])
    old = snap(m, "wf")
    run_monitor([usage(i, "wf", T0 + i) for i in range(5, 10)], m)
    model = ReadModel()
    assert model.apply_snapshot(snap(m, "wf"))
    assert not model.apply_snapshot(old) and model.counts.stale == 1  # a late copy from a former owner
    assert model.summary()["calls_today"] == 10
    for raw in (b"", b"null", b"{", b'{"workflow": "x"}', orjson.dumps({**m.snapshot("wf"), "ts": "soon"}),
                orjson.dumps({**m.snapshot("wf"), "totals": {"day": {"cost_micros": -1}}})):
        assert not model.apply_snapshot(raw)
    assert model.counts.bad["snapshots"] == 6 and model.summary()["calls_today"] == 10


def test_the_minute_series_is_the_growth_between_snapshots() -> None:
    m = run_monitor([usage(0, "wf", T0 + 10)])
    model = ReadModel()
    model.apply_snapshot(snap(m, "wf"))
    first = m.workflows["wf"].spend.period("2025-12")[0]
    run_monitor([usage(1, "wf", T0 + 200), usage(2, "wf", T0 + 210)], m)
    model.apply_snapshot(snap(m, "wf"))
    points = model.workflow("wf")["series"]  # type: ignore[index]
    assert [t for t, _ in points] == [T0, T0 + 180]  # the hour bucket seeded at first sight, then minute 3
    assert sum(usd for _, usd in points) == pytest.approx(micros_to_usd(m.workflows["wf"].spend.period("2025-12")[0]))
    assert points[0][1] == pytest.approx(micros_to_usd(first))


def test_a_workflow_first_seen_shows_its_last_hour_at_five_minute_resolution() -> None:
    m = run_monitor([usage(0, "wf", T0 + 600), usage(1, "wf", T0 + 3600 + 60), usage(2, "wf", T0 + 3600 + 1900)])
    model = ReadModel()
    model.apply_snapshot(snap(m, "wf"))  # first sight at 01:31:40: the 00:10 call is an hour old
    points = model.workflow("wf")["series"]  # type: ignore[index]
    assert [t for t, _ in points] == [T0, T0 + 3600, T0 + 3600 + 1800]  # 00:00 (hourly), 01:00 and 01:30 (5-min)
    assert sum(usd for _, usd in points) == pytest.approx(micros_to_usd(m.workflows["wf"].spend.period("2025-12")[0]))
    assert model.series(60)["total"][-1][0] == T0 + 3600 + 1800


def test_a_series_ring_forgets_what_is_older_than_a_day() -> None:
    s = Series()
    s.add(T0, 5)
    s.add(T0 + 86_400 * 3, 7)  # three days later: the ring is cleared, not walked day by day
    assert s.points(T0 + 86_400 * 3) == [[T0 + 86_400 * 3, 7]]
    s.add(T0, 9)  # too old to keep
    assert s.total(T0 + 86_400 * 3, 1440) == 7


def test_a_new_month_starts_the_growth_from_zero() -> None:
    m = run_monitor([usage(0, "wf", T0 - 60)])  # 2025-11-30 23:59
    model = ReadModel()
    model.apply_snapshot(snap(m, "wf"))
    run_monitor([usage(1, "wf", T0 + 60)], m)
    model.apply_snapshot(snap(m, "wf"))
    dec = m.workflows["wf"].spend.period("2025-12")[0]
    assert dec > 0 and model.summary()["month_usd"] == pytest.approx(micros_to_usd(dec))
    assert model.summary()["today_usd"] == model.summary()["month_usd"]  # yesterday's spend is not today's


def alert(aid: str, ts: float, status: str = "firing", revision: int = 0, kind: str = "loop") -> bytes:
    return Alert(alert_id=aid, kind=kind, severity="critical", workflow="support", ts=ts,  # type: ignore[arg-type]
                 summary=f"{aid} s", status=status, revision=revision).model_dump_json().encode()  # type: ignore[arg-type]


def test_open_alerts_are_firing_recent_and_at_their_latest_revision() -> None:
    model = ReadModel()
    model.apply_alert(alert("loop:support:r1", T0))
    model.apply_alert(alert("loop:support:r1", T0, revision=1))
    model.apply_alert(alert("loop:support:r1", T0))  # revision 0 redelivered: ignored
    model.apply_alert(alert("spike:support:1", T0 + 10, kind="spike"))
    model.apply_alert(alert("spike:support:1", T0 + 600, status="resolved", kind="spike"))
    assert [(a["alert_id"], a["revision"]) for a in model.alert_rows("open")] == [("loop:support:r1", 1)]
    assert {a["alert_id"] for a in model.alert_rows("all")} == {"loop:support:r1", "spike:support:1"}
    model.apply_alert(alert("budget:support:x", T0 + 86_400 + 1, kind="budget"))  # a day later
    assert [a["alert_id"] for a in model.alert_rows("open")] == ["budget:support:x"]
    assert not model.apply_alert(b'{"alert_id": 5}') and model.counts.bad["alerts"] == 1


def test_active_kills_expire_by_wall_time_and_a_release_lifts_them() -> None:
    wall = [1_000.0]
    model = ReadModel(wall=lambda: wall[0])

    def cmd(action: str, target: str, issued: float, ttl: float = 600.0) -> bytes:
        c = make_command(action, "run_id", target, "loop", ttl, "test", now=issued,  # type: ignore[arg-type]
                         keyring=Keyring({"k1": b"0" * 32}))
        return c.model_dump_json().encode()

    model.apply_command(cmd("kill", "r1", 900.0))
    model.apply_command(cmd("kill", "r2", 950.0))
    [first, second] = model.kill_rows()
    assert (first["target"], second["target"]) == ("r2", "r1")
    assert first["release"] == release_command("run_id", "r2")
    model.apply_command(cmd("release", "r2", 990.0))
    assert [k["target"] for k in model.kill_rows()] == ["r1"]
    wall[0] = 1_501.0  # r1's ten minutes are up
    assert model.kill_rows() == []
    assert not model.apply_command(b"garbage") and model.counts.bad["control"] == 1


# -- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
async def client(fed: tuple[ReadModel, Monitor]) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(fed[0]))) as c:
        yield c


async def test_every_api_route_answers_json(client: TestClient, fed: tuple[ReadModel, Monitor]) -> None:
    for path in ("summary", "series", "workflows", "workflows/support", "teams", "alerts", "kills", "outcomes",
                 "movers"):
        r = await client.get(f"/api/v1/{path}")
        assert r.status == 200, path
        assert r.content_type == "application/json"
        await r.json()
    body = await (await client.get("/api/v1/workflows/support")).json()
    assert body["workflow"] == "support" and body["models"][0]["name"] == "gpt-4o"
    assert body["runs_in_flight"] and body["outcomes"][0]["outcome"] == "ticket_resolved"
    assert len(body["series"]) >= 2  # hourly buckets of the two hours at first sight


@pytest.mark.parametrize(("query", "reason"), [
    ("/api/v1/workflows?sort=cost", "sort must be one of today, hour, month, name, per_outcome, not 'cost'"),
    ("/api/v1/workflows?limit=0", "limit must be from 1 to 1000, not 0"),
    ("/api/v1/workflows?limit=ten", "limit must be an integer from 1 to 1000, not 'ten'"),
    ("/api/v1/workflows?offset=-1", "offset must be from 0"),
    ("/api/v1/workflows?colour=red", "unknown query parameter colour"),
    ("/api/v1/alerts?status=closed", "status must be one of open, all"),
    ("/api/v1/outcomes?period=week", "period must be one of day, month"),
    ("/api/v1/series?minutes=99999", "minutes must be from 5 to 1440"),
    ("/api/v1/workflows?team=" + "x" * 300, "team must be 1 to 256 characters"),
])
async def test_a_bad_query_is_a_400_that_says_why(client: TestClient, query: str, reason: str) -> None:
    r = await client.get(query)
    assert r.status == 400
    assert (await r.json())["error"].startswith(reason)


async def test_an_unknown_workflow_is_a_404_naming_it(client: TestClient) -> None:
    r = await client.get("/api/v1/workflows/nope")
    assert r.status == 404 and "nope" in (await r.json())["error"]
    assert (await client.get("/static/../server.py")).status == 404
    assert (await client.post("/api/v1/summary")).status == 405  # read-only


async def test_metrics_are_prometheus_text_with_bounded_labels(client: TestClient, fed: tuple[ReadModel, Monitor]) -> None:
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(METRICS) <= set(families)
    cost = {s.labels["workflow"]: s.value for s in families["spendwatch_cost_usd"].samples
            if s.name.endswith("_total")}
    month = fed[1].clock.keys(T0)[1]
    assert cost["support"] == pytest.approx(micros_to_usd(fed[1].workflows["support"].spend.period(month)[0]))
    tokens = {(s.labels["workflow"], s.labels["type"]): s.value for s in families["spendwatch_tokens"].samples
              if s.name.endswith("_total")}
    assert tokens[("batch", "reasoning")] == 6_000 and tokens[("support", "cache_write")] == 240_000
    used = [s for s in families["spendwatch_budget_used_ratio"].samples if s.labels["period"] == "day"]
    assert used[0].labels["workflow"] == "support" and 0 < used[0].value
    assert all("run" not in label and "agent" not in label for f in families.values() for s in f.samples
               for label in s.labels)


async def test_a_token_guards_every_route_but_health() -> None:
    app = make_app(ReadModel(), token=TOKEN)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/api/v1/summary")).status == 401
        assert (await c.get("/api/v1/summary", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await c.get("/api/v1/summary", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/metrics")).status == 401
        r = await c.get(f"/?token={TOKEN}", allow_redirects=False)
        assert r.status == 302 and r.cookies["spendwatch_token"]["httponly"]
        assert (await c.get("/api/v1/summary")).status == 200  # the cookie from now on


def test_the_dashboard_refuses_a_public_bind_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from spendwatch.cli.common import CliError
    from spendwatch.cli.dashboard import TOKEN_ENV, token_for

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token_for("127.0.0.1") is None and token_for("::1") is None and token_for("localhost") is None
    with pytest.raises(CliError, match=TOKEN_ENV):
        token_for("0.0.0.0")
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(CliError, match="at least 16"):
        token_for("0.0.0.0")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert token_for("0.0.0.0") == TOKEN


def test_the_token_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from spendwatch.cli.common import CliError
    from spendwatch.cli.dashboard import TOKEN_ENV, TOKEN_FILE_ENV, token_for

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(secret))
    assert token_for("0.0.0.0") == TOKEN
    secret.write_text("")
    with pytest.raises(CliError, match="is empty"):
        token_for("0.0.0.0")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(CliError, match="cannot read the token"):
        token_for("10.0.0.1")


def test_ten_thousand_workflows_stay_within_bounds() -> None:
    """Not a timing test (`spendwatch bench` style figures are in the README): 10k workflows fit and
    every view answers."""
    model = ReadModel()
    m = Monitor()
    events = [usage(0, f"wf-{i:05d}", T0 + i % 3600, team=f"team-{i % 40}") for i in range(10_000)]
    m.process([validate_event(e) for e in events])
    for wf in list(m.workflows):
        model.apply_snapshot(snap(m, wf))
    assert model.summary()["workflows"] == 10_000 and model.summary()["calls_today"] == 10_000
    assert len(model.workflow_rows(limit=1000)["workflows"]) == 1000
    assert len(model.team_rows()) == 40


async def test_an_answer_is_reused_for_a_second_then_recomputed(fed: tuple[ReadModel, Monitor]) -> None:
    """Many open pages cost one computation per route and second (10k workflows: ~0.2 s each)."""
    model, m = fed
    async with TestClient(TestServer(make_app(model, cache_s=3600))) as c:
        before = await (await c.get("/api/v1/summary")).json()
        run_monitor([usage(1000, "support", T0 + 7200)], m)
        model.apply_snapshot(snap(m, "support"))
        assert await (await c.get("/api/v1/summary")).json() == before  # cached
    async with TestClient(TestServer(make_app(model, cache_s=0))) as c:
        assert (await (await c.get("/api/v1/summary")).json())["calls_today"] == before["calls_today"] + 1


async def test_a_client_that_floods_gets_429_with_retry_after() -> None:
    async with TestClient(TestServer(make_app(ReadModel(), rate_per_s=5.0))) as c:
        codes = [(await c.get("/healthz")).status for _ in range(40)]
        assert codes[:15].count(200) == 15 and 429 in codes  # a burst of three seconds' worth, then refused
        r = await c.get("/api/v1/summary")
        assert r.status == 429 and r.headers["Retry-After"] == "1" and "slow down" in (await r.json())["error"]


async def test_insights_route_page_data_and_gauges() -> None:
    """A tagger sending one-line calls to gpt-4o all day: a right-sizing opportunity in its snapshot,
    served by /api/v1/insights (filtered, ranked) and exported as gauges."""
    m = Monitor()
    day = [{"type": "usage", "event_id": f"t{i}", "ts": T0 + 60 * i, "workflow": "tagger", "model": "gpt-4o",
            "input_tokens": 300, "output_tokens": 5} for i in range(1440)]
    run_monitor(day, m)
    model = ReadModel()
    model.apply_snapshot(snap(m, "tagger"))
    expected = m.insights("tagger")
    assert [i["kind"] for i in expected] == ["right_sizing"]
    async with TestClient(TestServer(make_app(model))) as c:
        body = await (await c.get("/api/v1/insights")).json()
        [row] = body["insights"]
        assert (row["workflow"], row["kind"], row["model"]) == ("tagger", "right_sizing", "gpt-4o")
        assert row["usd_per_day"] == pytest.approx(expected[0]["usd_per_day"])
        assert (await (await c.get("/api/v1/insights?kind=caching")).json())["insights"] == []
        r = await c.get("/api/v1/insights?kind=cheap")
        assert r.status == 400 and "kind must be one of right_sizing" in (await r.json())["error"]
        families = {f.name: f for f in text_string_to_metric_families(await (await c.get("/metrics")).text())}
    [saving] = families["spendwatch_savings_usd_per_day"].samples
    assert saving.labels == {"workflow": "tagger", "kind": "right_sizing"}
    assert saving.value == pytest.approx(expected[0]["usd_per_day"])
    [share] = families["spendwatch_cache_read_share"].samples
    assert share.labels == {"workflow": "tagger"} and share.value == 0.0
