"""The live page in a real browser (issue 15): broker, worker and dashboard as real processes, Chromium
driven by playwright.

Known usage events (each with `cost_usd`, so the truth is exact integer micro-USD) go to a fresh
embedded broker after the page has loaded: the page must pick them up without a reload and show
each workflow's spend as the ground truth says, the looping run as an open alert and a kill with
its release command, the workflow view with its models and runs, and hostile workflow names as
literal text (no dialog ever opens). A full-page screenshot is saved for a human to look at:
`tmp_path/dashboard.png` (and `$SPENDWATCH_ARTIFACTS/` when set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.pricing.money import fmt_usd, micros_to_usd, usd_to_micros
from schemas.control import release_command
from streams.broker import EmbeddedBroker, free_port
from tests.conftest import start_worker, wait_for
from tests.kafka_io import publish

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(`apt-get install -y chromium`; CI installs it)"),
    pytest.mark.timeout(180),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
expect = sync_api.expect

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
KEYS = "kid:0123456789abcdef0123456789abcdef"
CONFIG = """\
snapshot_every_s = 1

[[policy.rules]]
kind = "loop"
action = "kill"
kill_scope = "run_id"
ttl_s = 600

[budgets.workflows.support]
daily_usd = 20.0
"""
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
LOOP_RUN = "run-loop-1"
# workflow -> (team, model, calls, dollars a call)
PLAN: dict[str, tuple[str, str, int, str]] = {
    "support": ("cx", "gpt-4o", 12, "0.37"),
    "code-review": ("eng", "claude-sonnet-4-5", 8, "1.25"),
    "nightly-batch": ("data", "gpt-4o-mini", 30, "0.0125"),
    SCRIPT: ("red", "gpt-4o", 3, "0.5"),
    IMG: ("red", "gpt-4o", 2, "0.75"),
}
LOOP_COST = "0.05"
OUTCOMES = {"support": ("ticket_resolved", 6, 2.0), "code-review": ("pr_merged", 2, 15.0)}




def usage(wf: str, i: int, ts: float, cost: str, *, team: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"type": "usage", "event_id": f"{uuid.uuid4().hex}", "ts": ts, "workflow": wf, "team": team,
            "model": model, "input_tokens": 4_000 + 100 * i, "output_tokens": 300, "cache_read_tokens": 1_000,
            "agent_id": f"{wf[:12]}-agent-{i % 2}", "run_id": f"{wf[:12]}-run-{i // 4}", "step": i % 4 + 1,
            "cost_usd": float(cost), **extra}


def traffic(now: float) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The events to publish (oldest first, all within the last 30 s) and each workflow's spend in micro-USD."""
    events: list[dict[str, Any]] = []
    truth: dict[str, int] = {}
    for wf, (team, model, calls, cost) in PLAN.items():
        for i in range(calls):
            events.append(usage(wf, i, now - 30 + 20 * i / calls, cost, team=team, model=model))
        truth[wf] = calls * usd_to_micros(cost)
    for wf, (name, count, value) in OUTCOMES.items():
        events += [{"type": "outcome", "event_id": uuid.uuid4().hex, "ts": now - 5 + i * 0.1, "workflow": wf,
                    "outcome": name, "value_usd": value} for i in range(count)]
    # a stuck agent: three distinct steps, then the same failing action with the same result ten times
    plan = ["ls", "cat app.py", "edit app.py"] + ["pytest -x"] * 10
    for step, fp in enumerate(plan, 1):
        events.append(usage("agents", step, now - 20 + step, LOOP_COST, team="eng", model="gpt-4o",
                            run_id=LOOP_RUN, agent_id="agent-7", step=step, fingerprint=fp,
                            observation="exit 1: test_app.py::test_login FAILED" if fp == "pytest -x" else f"ok-{step}",
                            status="error" if fp == "pytest -x" else "ok"))
    truth["agents"] = len(plan) * usd_to_micros(LOOP_COST)
    return sorted(events, key=lambda e: e["ts"]), truth


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def css(value: str) -> str:
    """A CSS attribute-selector string for `value` (which is caller input here)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium under playwright. Started after the helpers that run their own asyncio loop:
    playwright's sync API keeps one running on this thread from here on."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def save_screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    if out := os.environ.get("SPENDWATCH_ARTIFACTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def test_the_live_page_shows_true_spend_the_loop_and_its_kill_and_hostile_names_as_text(
        fresh_broker: EmbeddedBroker, spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    cfg = tmp_path / "spendwatch.toml"
    cfg.write_text(CONFIG)
    start_worker(spawn, fresh_broker, "--config", str(cfg), env={"SPENDWATCH_CONTROL_KEYS": KEYS})
    port = free_port()
    dash = spawn("dashboard", "--broker", fresh_broker.url, "--port", str(port), log="dashboard.log")
    base = f"http://127.0.0.1:{port}"

    def dashboard_ready() -> bool:
        assert dash.poll() is None, (tmp_path / "dashboard.log").read_text()
        try:
            return bool(get_json(f"{base}/healthz")["ready"])
        except OSError:
            return False

    wait_for(dashboard_ready, 30, "the dashboard to serve and catch up with Kafka", every=0.2)
    with chromium() as browser:
        drive(browser.new_page(viewport={"width": 1440, "height": 1000}), base, fresh_broker, dash, tmp_path)


def drive(page: Any, base: str, broker: EmbeddedBroker, dash: subprocess.Popen[bytes], tmp_path: Path) -> None:
    # -- the page first, then the traffic: numbers must arrive without a reload -----------------------
    dialogs: list[str] = []
    problems: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.goto(base + "/")
    expect(page.locator("body[data-loaded]")).to_have_count(1, timeout=10_000)
    expect(page.get_by_test_id("last-updated")).to_contain_text("updated")
    page.evaluate("window.__sameDocument = 'no reload'")

    now = time.time()
    events, truth = traffic(now)
    sender = threading.Thread(target=publish, args=(broker.bootstrap, "spendwatch.usage",
                                                    [(e["workflow"].encode(), orjson.dumps(e)) for e in events]))
    sender.start()  # playwright's sync API owns this thread's event loop; tests.kafka_io runs its own
    sender.join(30)

    # -- every workflow's spend today equals the truth, as text and as the exact number ---------------
    rows = page.get_by_test_id("workflow-row")
    for wf, micros in truth.items():
        row = page.locator(f'[data-testid="workflow-row"][data-workflow={css(wf)}]')
        expect(row.locator("td").nth(2)).to_have_text(fmt_usd(micros), timeout=30_000)
        assert float(row.locator("td").nth(2).get_attribute("data-usd") or "nan") == micros_to_usd(micros)
        expect(row.get_by_test_id("workflow-link")).to_have_text(wf)  # hostile names too: literal text
    assert page.evaluate("window.__sameDocument") == "no reload"
    day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    probe = [r for r in get_json(f"{base}/api/v1/workflows?sort=name")["workflows"] if r["workflow"].startswith("probe-")]
    total = sum(truth.values()) + sum(usd_to_micros(str(r["today_usd"])) for r in probe)
    if all(datetime.fromtimestamp(e["ts"], UTC).strftime("%Y-%m-%d") == day for e in events):  # not across midnight
        expect(page.get_by_test_id("today-usd")).to_have_text(fmt_usd(total))
    support = page.locator('[data-testid="outcome-row"][data-workflow="support"]')
    expect(support.locator("td").nth(2)).to_have_text("6")
    expect(support.locator("td").nth(4)).to_have_text(fmt_usd(truth["support"] // 6))
    expect(page.locator('[data-testid="budget-row"][data-workflow="support"]')).to_contain_text(
        f"{fmt_usd(truth['support'])} of $20.00")

    # -- the loop: an open alert, the kill in force, its release command ready to copy ----------------
    alert = page.locator('[data-testid="alert-row"][data-kind="loop"][data-workflow="agents"]')
    expect(alert).to_have_count(1, timeout=20_000)
    expect(alert).to_contain_text(LOOP_RUN)
    kill = page.locator(f'[data-testid="kill-row"][data-target={css(LOOP_RUN)}]')
    expect(kill).to_have_count(1, timeout=20_000)
    expect(kill.get_by_test_id("release-cmd")).to_have_text(release_command("run_id", LOOP_RUN))
    expect(page.get_by_test_id("active-kills")).to_have_text("1")
    expect(page.locator('[data-testid="workflow-row"][data-workflow="agents"]').get_by_test_id("killed-badge")
           ).to_be_visible()

    # -- sorting asks the API and reorders the same rows ----------------------------------------------
    page.locator('th[data-sort="name"]').click()
    names = sorted(w for w in [*truth, *(r["workflow"] for r in probe)])
    expect(rows).to_have_count(len(names))
    wait_for(lambda: [rows.nth(i).get_attribute("data-workflow") for i in range(len(names))] == names, 10,
             "the table to sort by name")
    page.locator('th[data-sort="today"]').click()
    by_today = sorted(truth, key=lambda wf: (-truth[wf], wf))
    wait_for(lambda: rows.first.get_attribute("data-workflow") == by_today[0], 10, "the table to sort by today")
    expect(page.locator('th[data-sort="today"]')).to_have_attribute("aria-sort", "descending")

    # -- the chart follows, and breaks down by team on request ----------------------------------------
    legend = page.get_by_test_id("chart-legend")
    expect(legend).to_contain_text("code-review")
    page.get_by_test_id("chart-mode-teams").click()
    expect(legend).to_contain_text("data")
    expect(legend).not_to_contain_text("nightly-batch")
    page.get_by_test_id("chart-mode-workflows").click()
    expect(legend).to_contain_text("nightly-batch")

    # hostile names never ran: no dialog, no injected element, only the page's own script
    assert page.locator("img[src='x']").count() == 0 and page.locator("script").count() == 1
    page.wait_for_timeout(2_500)  # one more poll, so the screenshot shows a settled page
    save_screenshot(page, tmp_path / "dashboard.png")

    # -- the workflow view: totals, models, the killed run with its release command -------------------
    page.locator('[data-testid="workflow-row"][data-workflow="agents"]').get_by_test_id("workflow-link").click()
    expect(page).to_have_url(f"{base}/workflow/agents")
    view = page.get_by_test_id("workflow-view")
    expect(view).to_be_visible()
    expect(page.get_by_test_id("workflow-title")).to_have_text("agents")
    expect(page.get_by_test_id("wf-today-usd")).to_have_text(fmt_usd(truth["agents"]))
    expect(page.locator('[data-testid="model-row"][data-model="gpt-4o"]')).to_have_count(1)
    run = page.locator(f'[data-testid="run-row"][data-run={css(LOOP_RUN)}]')
    expect(run).to_contain_text("agent-7")
    expect(run.get_by_test_id("run-killed")).to_be_visible()
    expect(run.get_by_test_id("release-cmd")).to_have_text(release_command("run_id", LOOP_RUN))
    expect(page.locator('[data-testid="wf-alert-row"][data-kind="loop"]')).to_have_count(1)
    expect(page.locator('[data-testid="token-row"][data-type="calls"] td').nth(1)).to_have_text("13")
    save_screenshot(page, tmp_path / "workflow.png")

    page.get_by_test_id("back-link").click()
    page.locator(f'[data-testid="workflow-row"][data-workflow={css(SCRIPT)}]').get_by_test_id("workflow-link").click()
    expect(page.get_by_test_id("workflow-title")).to_have_text(SCRIPT)
    expect(page.locator('[data-testid="model-row"][data-model="gpt-4o"]')).to_have_count(1)
    expect(page.get_by_test_id("wf-today-usd")).to_have_text(fmt_usd(truth[SCRIPT]))
    assert page.title() == f"{SCRIPT} · spendwatch"

    # -- the server goes away: the last data stays, under a stale banner ------------------------------
    page.get_by_test_id("back-link").click()
    expect(page.get_by_test_id("today-usd")).not_to_have_text("—")
    shown = page.get_by_test_id("today-usd").text_content()
    dash.kill()
    dash.wait()
    expect(page.get_by_test_id("stale-banner")).to_be_visible(timeout=15_000)
    expect(page.get_by_test_id("stale-banner")).to_contain_text("showing data from")
    expect(page.get_by_test_id("today-usd")).to_have_text(shown or "")
    save_screenshot(page, tmp_path / "stale.png")

    assert dialogs == [], f"a hostile name ran as code: {dialogs}"
    assert [p for p in problems if "Failed to load resource" not in p] == [], problems
    print(f"screenshots: {tmp_path / 'dashboard.png'}, {tmp_path / 'workflow.png'}, {tmp_path / 'stale.png'}")
