"""End to end on the embedded broker: exact totals, dead letters, one Slack message per threshold.

10,000 usage events with known prices, 500 duplicates and 100 malformed
records go through a real worker process. Half-way the worker is killed with
SIGKILL and a new one takes over: totals must still be exact to the micro-dollar.

The workers keep tables on disk (`--data-dir`), as in production, with the
start-up check that tables are not ahead of their changelogs switched on.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from genai_prices import Usage, calc_price

from detectors.engine.counters import CALLS, COST, INPUT, OUTPUT
from detectors.engine.workflow import WorkflowState
from detectors.pricing.money import usd_to_micros
from streams.broker import EmbeddedBroker
from streams.workflow_table import latest_states, state_history
from tests.conftest import ROOT, wait_for
from tests.kafka_io import create_topic, publish, read_all, uncommitted

DAY = 1_768_435_200.0  # 2026-01-15 00:00 UTC
WORKFLOWS = {"support-bot": "cx", "code-review": "eng", "rag-search": "search", "triage": "cx", "batch-etl": "data"}
MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
          ("google", "gemini-2.5-pro")]
BUDGETS = {"support-bot": 30.0, "code-review": 20.0, "triage": 400.0}
TEAM_BUDGET = ("cx", 60.0)


def make_events(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    names = list(WORKFLOWS)
    events = []
    for i in range(n):
        wf = names[i % len(names)]
        provider, model = MODELS[rng.randrange(len(MODELS))]
        inp = rng.randrange(100, 40_000)
        ev = {"type": "usage", "event_id": f"ev-{i}", "ts": DAY + 36_000 + i * 0.3, "workflow": wf,
              "team": WORKFLOWS[wf], "provider": provider, "model": model, "input_tokens": inp,
              "output_tokens": rng.randrange(1, 2_000), "cache_read_tokens": rng.randrange(0, inp // 2),
              "agent_id": f"{wf}-a{i % 7}", "run_id": f"{wf}-r{i // 40}"}
        if i % 97 == 0:
            ev["model"], ev["provider"] = "in-house-llm-7b", "self-hosted"  # unknown: fallback rate
            del ev["cache_read_tokens"]
        if i % 101 == 0:
            ev["cost_usd"] = 0.0123  # the caller knows its price
        if i % 53 == 0:
            ev["status"] = "error"
        events.append(ev)
    return events


def truth_micros(ev: dict) -> int:
    """Independent ground truth: genai-prices' own calculator, fallback $10/$30 per MTok, caller cost wins."""
    if "cost_usd" in ev:
        return usd_to_micros(ev["cost_usd"])
    if ev["model"] == "in-house-llm-7b":
        usd = Decimal(ev["input_tokens"]) * 10 / 10**6 + Decimal(ev["output_tokens"]) * 30 / 10**6
    else:
        usage = Usage(input_tokens=ev["input_tokens"], output_tokens=ev["output_tokens"],
                      cache_read_tokens=ev.get("cache_read_tokens", 0))
        usd = calc_price(usage, ev["model"], provider_id=ev["provider"]).total_price
    return usd_to_micros(usd)


MALFORMED = [
    b"{not json",
    b'{"type":"usage","event_id":"m","ts":1768471200,"workflow":"support-bot","model":"gpt-4o",'
    b'"input_tokens":-5,"output_tokens":1}',
    b'{"type":"usage","event_id":"m","ts":1768471200,"workflow":"support-bot","model":"gpt-4o"}',
    b'{"type":"refund","event_id":"m","ts":1768471200,"workflow":"support-bot"}',
    b'{"type":"usage","event_id":"m","ts":1768471200000,"workflow":"support-bot","model":"gpt-4o",'
    b'"input_tokens":5,"output_tokens":1}',
    b'"just a string"',
    b'{"type":"usage","event_id":"m","ts":1768471200,"workflow":"support-bot","model":"gpt-4o",'
    b'"input_tokens":5,"output_tokens":1,"cache_read_tokens":9}',
    b"\xff\xfe binary garbage",
    b'{"type":"usage","event_id":"' + b"x" * 2_000_000 + b'"}',  # oversize record
    b'{"type":"outcome","event_id":"m","ts":"yesterday","workflow":"support-bot","outcome":"resolved"}',
]


def records_for(events: list[dict], rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Group events by workflow into JSON arrays of 1..50 events, as SDK emitters batch."""
    by_wf: dict[str, list[dict]] = {}
    for ev in events:
        by_wf.setdefault(ev["workflow"], []).append(ev)
    out = []
    for wf, evs in by_wf.items():
        i = 0
        while i < len(evs):
            n = rng.choice([1, 1, 5, 20, 50])
            chunk = evs[i:i + n]
            out.append((wf.encode(), orjson.dumps(chunk[0] if n == 1 else chunk)))
            i += n
    return out


def worker_totals(bootstrap: str) -> dict[str, WorkflowState]:
    return latest_states(read_all(bootstrap, "spendwatch-workflows-changelog"))


def test_exact_totals_dead_letters_and_one_slack_message_per_threshold(fresh_broker, fake_slack, spawn,
                                                                      tmp_path: Path):
    broker = fresh_broker
    rng = random.Random(7)
    events = make_events(10_000)
    config = tmp_path / "spendwatch.toml"
    config.write_text(
        'timezone = "UTC"\n'
        + "".join(f'[budgets.workflows.{wf}]\ndaily_usd = {usd}\n' for wf, usd in BUDGETS.items())
        + f'[budgets.teams.{TEAM_BUDGET[0]}]\ndaily_usd = {TEAM_BUDGET[1]}\n'
        + f'[slack]\nchannel = "#llm-spend"\nbase_url = "{fake_slack.base_url}"\n'
        + "[routing]\ngroup_wait_s = 1\ngroup_interval_s = 2\n"
    )
    for topic in ("spendwatch.usage", "spendwatch.alerts", "spendwatch.deadletter", "spendwatch.rollups"):
        create_topic(broker.bootstrap, topic)
    env = {"SLACK_BOT_TOKEN": fake_slack.token}
    args = ("worker", "--broker", broker.url, "--config", str(config), "--data-dir", str(tmp_path / "tables"))

    # Phase 1: a fifth of the traffic, then the worker dies without warning.
    first = events[:2_000]
    publish(broker.bootstrap, "spendwatch.usage", records_for(first, rng))
    w1 = spawn(*args, env=env, log="worker1.log")
    wait_for(lambda: sum(s.spend.periods.get("2026-01-15", [0] * 6)[CALLS]
                         for s in worker_totals(broker.bootstrap).values()) >= 2_000, 120, "phase 1 totals")
    w1.kill()
    w1.wait()
    assert any((tmp_path / "tables").iterdir())  # on disk, with a sealed id bucket per workflow (400 ids each)

    # Phase 2: the rest, 500 duplicates (some of phase 1, some of phase 2), 100 malformed records.
    rest = events[2_000:]
    dups = rng.sample(events[:9_000], 500)
    records = records_for(rest, rng) + [(ev["workflow"].encode(), orjson.dumps(ev)) for ev in dups]
    malformed = [(b"support-bot", MALFORMED[i % len(MALFORMED)]) for i in range(100)]
    publish(broker.bootstrap, "spendwatch.usage", records + malformed)
    spawn(*args, env=env, log="worker2.log")

    truth: dict[str, list[int]] = {}
    for ev in events:
        t = truth.setdefault(ev["workflow"], [0, 0, 0, 0])
        t[0] += truth_micros(ev)
        t[1] += ev["input_tokens"]
        t[2] += ev["output_tokens"]
        t[3] += 1

    def caught_up() -> dict[str, WorkflowState] | None:
        states = worker_totals(broker.bootstrap)
        calls = {wf: s.spend.periods.get("2026-01-15", [0] * 6)[CALLS] for wf, s in states.items()}
        progress.update(calls)
        return states if sum(calls.values()) >= 10_000 else None

    progress: dict[str, int] = {}
    states = wait_for(caught_up, 180, "all 10,000 events counted", describe=lambda: progress)
    for wf, (cost, inp, out, calls) in truth.items():
        got = states[wf].spend.periods["2026-01-15"]
        assert (got[COST], got[INPUT], got[OUTPUT], got[CALLS]) == (cost, inp, out, calls), wf
        assert got == states[wf].spend.periods["2026-01"]

    deadletters = wait_for(lambda: (r := read_all(broker.bootstrap, "spendwatch.deadletter")) and len(r) >= 100
                           and r, 60, "100 dead letters")
    assert len(deadletters) == 100
    reasons = [orjson.loads(v)["reason"] for _, v in deadletters]
    assert all(reasons)
    assert any("not valid JSON" in r for r in reasons)
    assert any("over the 1000000-byte limit" in r for r in reasons)
    assert any("input_tokens" in r and "greater than or equal to 0" in r for r in reasons)

    # Each threshold crossed reaches Slack exactly once (grouped into digests per workflow and kind),
    # workflow and team budgets alike.
    expected = {f"budget:workflow:{wf}:2026-01-15:{t}" for wf, usd in BUDGETS.items() for t in (50, 75, 90, 100)
                if truth[wf][0] * 100 >= usd_to_micros(usd) * t}
    team_spend = sum(v[0] for wf, v in truth.items() if WORKFLOWS[wf] == TEAM_BUDGET[0])
    expected |= {f"budget:team:cx:2026-01-15:{t}" for t in (50, 75, 90, 100)
                 if team_spend * 100 >= usd_to_micros(TEAM_BUDGET[1]) * t}
    assert len(expected) >= 6  # the scenario must cross several thresholds to mean anything

    wait_for(lambda: set(posted_ids(fake_slack, "budget")) >= expected, 60, "Slack messages")
    time.sleep(3)  # anything extra would arrive now
    assert sorted(posted_ids(fake_slack, "budget")) == sorted(expected)


def posted_ids(slack, kind: str) -> list[str]:
    """Ids of `kind` alerts announced as *New* in the digests (a digest also lists alerts still firing)."""
    ids, new = [], False
    for block in (b for m in slack.messages for b in m["blocks"]):
        text = block.get("text", {}).get("text", "") if block["type"] == "section" else ""
        if text.startswith(":"):  # an alert starts with its severity emoji
            new = "*New*" in text
        elif block["type"] == "context" and new:
            ids += re.findall(rf"`({kind}:[^`]+)`", block["elements"][0]["text"])
    return ids


def test_an_unpriced_model_called_by_many_workflows_is_announced_once(fresh_broker, fake_slack, spawn,
                                                                      tmp_path: Path):
    """Each workflow's state sends its own copy; on partitions of their own they were 8 messages."""
    broker = fresh_broker
    config = tmp_path / "spendwatch.toml"
    config.write_text(f'[slack]\nchannel = "#llm-spend"\nbase_url = "{fake_slack.base_url}"\n'
                      "[routing]\ngroup_wait_s = 1\ngroup_interval_s = 2\n")
    for topic in ("spendwatch.usage", "spendwatch.alerts"):
        create_topic(broker.bootstrap, topic)
    workflows = [f"wf-{i}" for i in range(8)]
    calls = [{"type": "usage", "event_id": f"{wf}-{i}", "ts": DAY + 60 * i, "workflow": wf, "provider": "acme",
              "model": "house-llm", "input_tokens": 1000, "output_tokens": 100} for wf in workflows for i in range(3)]
    publish(broker.bootstrap, "spendwatch.usage", [(ev["workflow"].encode(), orjson.dumps(ev)) for ev in calls])
    spawn("worker", "--broker", broker.url, "--config", str(config), env={"SLACK_BOT_TOKEN": fake_slack.token})
    copies = wait_for(lambda: len(c := [v for _, v in read_all(broker.bootstrap, "spendwatch.alerts")
                                        if b'"unpriced"' in v]) == len(workflows) and c, 120, "a copy per workflow")
    assert {orjson.loads(v)["alert_id"] for v in copies} == {"unpriced:acme/house-llm:2026-01-15"}
    wait_for(lambda: posted_ids(fake_slack, "unpriced"), 60, "the Slack message")
    time.sleep(4)  # a second announcement would arrive within two group intervals
    assert posted_ids(fake_slack, "unpriced") == ["unpriced:acme/house-llm:2026-01-15"]
    [message] = fake_slack.messages
    assert message["text"].startswith("Unpriced model — 1 firing"), message["text"]  # not "in *"


def test_a_digest_left_pending_by_a_killed_worker_is_sent_by_the_next(fresh_broker, fake_slack, spawn,
                                                                      tmp_path: Path):
    """The worker dies while a Slack digest waits out `group_wait`; its alerts are already
    committed, so nothing is redelivered. The next worker reloads the pending digest and sends it."""
    broker = fresh_broker
    config = tmp_path / "spendwatch.toml"
    # group_wait leaves the test 10 s to see the digest pending, the alerts committed, and kill the
    # worker (~2 s with commits every second); the next worker sends it group_wait after it resumes.
    config.write_text(f'commit_interval_s = 1\n[budgets.workflows.support-bot]\ndaily_usd = 1\n'
                      f'[slack]\nchannel = "#llm-spend"\nbase_url = "{fake_slack.base_url}"\n'
                      "[routing]\ngroup_wait_s = 10\ngroup_interval_s = 10\n")
    for topic in ("spendwatch.usage", "spendwatch.alerts", "spendwatch.deadletter", "spendwatch.rollups"):
        create_topic(broker.bootstrap, topic)
    now = time.time()  # live traffic: the next worker, seeing no events, takes event time to be wall time
    events = [{"type": "usage", "event_id": f"d{i}", "ts": now - 10 + i, "workflow": "support-bot",
               "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1, "cost_usd": 0.6} for i in range(2)]
    publish(broker.bootstrap, "spendwatch.usage", [(b"support-bot", orjson.dumps(events))])
    env = {"SLACK_BOT_TOKEN": fake_slack.token}
    args = ("worker", "--broker", broker.url, "--config", str(config), "--data-dir", str(tmp_path / "tables"))

    first = spawn(*args, env=env, log="worker1.log")
    wait_for(lambda: read_all(broker.bootstrap, "spendwatch-alert-routes-changelog"), 120, "a pending digest")
    # the alerts' offsets committed: the next worker will not be handed these alerts again
    lag: dict[int, int] = {}
    wait_for(lambda: lag.update(uncommitted(broker.bootstrap, "spendwatch", "spendwatch.alerts")) or
             (sum(lag.values()) == 0 and read_all(broker.bootstrap, "spendwatch.alerts")), 30,
             "the alerts' offsets to be committed", every=0.3, describe=lambda: lag)
    assert fake_slack.messages == []  # the digest is still waiting out group_wait
    first.kill()
    first.wait()

    spawn(*args, env=env, log="worker2.log")
    wait_for(lambda: fake_slack.messages, 90, "the digest from the next worker")
    text = orjson.dumps(fake_slack.messages).decode()
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 10))
    assert f"budget:workflow:support-bot:{day}:100" in text


def test_tables_on_disk_ahead_of_their_changelog_stop_the_worker_with_what_to_do(fresh_broker, spawn, tmp_path: Path):
    """Faust refuses RocksDB tables newer than their changelog: here the topics really are new (a
    second broker, as after topics were deleted or recreated), so the tables' offsets are ahead."""
    broker = fresh_broker
    for topic in ("spendwatch.usage", "spendwatch.alerts", "spendwatch.deadletter", "spendwatch.rollups"):
        create_topic(broker.bootstrap, topic)
    events = [{"type": "usage", "event_id": f"c{i}", "ts": 1_768_478_400 + i / 100, "workflow": f"w{i % 40}",
               "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1} for i in range(400)]
    publish(broker.bootstrap, "spendwatch.usage", [(e["workflow"].encode(), orjson.dumps(e)) for e in events])
    tables = str(tmp_path / "tables")
    first = spawn("worker", "--broker", broker.url, "--data-dir", tables, log="worker1.log")
    wait_for(lambda: sum(s.spend.periods.get("2026-01-15", [0] * 6)[CALLS]
                         for s in worker_totals(broker.bootstrap).values()) == 400, 120, "all 400 events in the changelog")
    time.sleep(2)  # the tables' offsets reach RocksDB at the next commit
    first.kill()
    first.wait()

    with EmbeddedBroker(log_path=tmp_path / "tansu2.log") as recreated:
        create_topic(recreated.bootstrap, "spendwatch.usage")
        again = subprocess.Popen([sys.executable, "-m", "spendwatch", "worker", "--broker", recreated.url,
                                  "--data-dir", tables], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = again.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            again.kill()
            _, err = again.communicate()
            raise AssertionError("the worker kept running on tables ahead of new topics:\n"
                                 + err.decode(errors="replace")[-3000:]) from None
    assert again.returncode == 2, err.decode(errors="replace")[-3000:]
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("spendwatch: error: the tables in") and "ahead of their changelog topics" in last
    assert "move the directory away" in last and "check_changelog_offsets = false" in last


@pytest.mark.parametrize("tables", ["disk", "memory"])
def test_a_restarted_worker_resumes_every_workflow_where_it_stopped(fresh_broker, spawn, tmp_path: Path, tables: str):
    """disk: Faust's RocksDB store reads a key from the partition of the *current event*. A worker
    that loaded a workflow's state while the current event was another partition's read nothing
    and started that workflow from zero (the chaos run lost 843 calls). Small batches make most
    first loads happen after other partitions' writes.
    memory: tables are rebuilt from their changelogs up to the end offsets the broker reports;
    Tansu reports the first offset of a partition's last record batch + 1, so the rest of that
    batch (here: the other workflows written with it) was never read back."""
    broker = fresh_broker
    for topic in ("spendwatch.usage", "spendwatch.alerts", "spendwatch.deadletter", "spendwatch.rollups"):
        create_topic(broker.bootstrap, topic)
    config = tmp_path / "spendwatch.toml"
    small_batches = "batch_max = 3\nbatch_within_s = 0.05\n" if tables == "disk" else ""
    config.write_text(small_batches + "session_timeout_s = 6\n")
    names = [f"disk-{i}" for i in range(40)]

    def event(wf: str, n: int) -> tuple[bytes, bytes]:
        return wf.encode(), orjson.dumps({"type": "usage", "event_id": f"{wf}-{n}", "ts": 1_768_478_400 + n,
                                          "workflow": wf, "model": "gpt-4o", "input_tokens": 10, "output_tokens": 1})

    def calls() -> dict[str, int]:
        return {wf: s.spend.periods.get("2026-01-15", [0] * 6)[CALLS] for wf, s in worker_totals(broker.bootstrap).items()}

    args = ("worker", "--broker", broker.url, "--config", str(config), "--log-level", "info")
    args += ("--data-dir", str(tmp_path / "tables")) if tables == "disk" else ()
    first = spawn(*args, log="worker1.log")
    publish(broker.bootstrap, "spendwatch.usage", [event(wf, 0) for wf in names])
    wait_for(lambda: all(calls().get(wf) == 1 for wf in names), 120, "one call per workflow")
    time.sleep(3)  # past a commit: the restart starts after these records
    first.kill()
    first.wait()
    spawn(*args, log="worker2.log")
    publish(broker.bootstrap, "spendwatch.usage", [event(wf, 1) for wf in names])
    try:
        wait_for(lambda: all(calls().get(wf) == 2 for wf in names), 90, "two calls per workflow")
    except AssertionError:
        pass
    got = calls()
    wrong = {wf: got.get(wf) for wf in names if got.get(wf) != 2}
    # Each written state of a wrong workflow (calls, last source offset), to tell a worker that lost
    # the state from a reader that missed the newest records.
    changelog = read_all(broker.bootstrap, "spendwatch-workflows-changelog") if wrong else []
    history = {wf: [(s.spend.periods.get("2026-01-15", [0] * 6)[CALLS], s.offset)
                    for s in state_history(changelog, wf)] for wf in wrong}
    assert not wrong, f"{len(wrong)} of {len(names)} workflows restarted from zero (calls): {wrong}; {history}"
