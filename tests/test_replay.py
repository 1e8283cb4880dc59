"""Replay: deterministic backtests, scoring against labels, series scoring, live replay into the broker."""

from __future__ import annotations

import asyncio
import csv
import math
from pathlib import Path

import orjson
import pytest

from replay import driver
from replay.backtest import backtest
from replay.labels import LabelError, load_labels
from replay.readers import ReplayInputError, read_traffic
from replay.scenarios import generate
from replay.series import score_series
from spendwatch.cli import main
from spendwatch.cli.live import replay_live
from tests.kafka_io import create_topic, read_all

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def scenario():
    return generate(seed=11, days=0.5, workflows=6, warmup=3 * 3600)


def test_backtest_is_deterministic(scenario, tmp_path):
    events, labels = scenario
    a = backtest(events, tmp_path / "a", labels=labels)
    b = backtest(events, tmp_path / "b", labels=labels)
    assert (tmp_path / "a" / "alerts.jsonl").read_bytes() == (tmp_path / "b" / "alerts.jsonl").read_bytes()
    assert a["alerts"] > 0 and a["score"] == b["score"]
    assert (tmp_path / "a" / "report.html").read_text().count("<img") == 2
    assert (tmp_path / "a" / "spend.png").stat().st_size > 10_000


def _call(run: str, workflow: str, step: int, fingerprint: str, ts: float, usd: float) -> dict:
    return {"type": "usage", "event_id": f"{run}-{step}", "ts": ts, "workflow": workflow, "agent_id": f"{run}-agent",
            "run_id": run, "step": step, "fingerprint": fingerprint, "model": "gpt-4o", "input_tokens": 1000 * step,
            "output_tokens": 50, "cost_usd": usd}


def test_backtest_scores_a_hand_built_loop_as_computed_by_hand(tmp_path):
    """Expectations from the events alone, not from the engine: run r-loop repeats one action from step 4,
    so the loop rule (the same successful action 9× in a row) fires on step 12; a kill then would have saved
    steps 13..15.
    r-ok is labelled a loop too but never repeats: a miss, saving nothing."""
    t0 = 1_768_471_200.0  # a tick boundary: each 10 s batch holds one call of each run
    looping = [_call("r-loop", "coder", s, f"f{s}" if s <= 3 else "same", t0 + 10 * s + 1, s / 1000)
               for s in range(1, 16)]
    fine = [_call("r-ok", "chat", s, f"g{s}", t0 + 10 * s + 5, 0.002) for s in range(1, 16)]
    labels = [{"kind": "loop", "type": "fingerprint_loop", "subject": "run_id", "id": run, "workflow": wf,
               "start": calls[3]["ts"], "end": calls[-1]["ts"]} for run, wf, calls in
              (("r-loop", "coder", looping), ("r-ok", "chat", fine))]
    summary = backtest(sorted(looping + fine, key=lambda e: e["ts"]), tmp_path, labels=labels)

    ninth_repeat, after = looping[11], looping[12:]
    assert summary["alerts_by_kind"] == {"loop": 1}
    assert summary["spend_usd_by_workflow"] == pytest.approx({"chat": 15 * 0.002, "coder": sum(range(1, 16)) / 1000})
    hit, miss = summary["score"]["incidents"]
    assert (hit["id"], hit["alert_id"], hit["detected_at"]) == ("r-loop", "loop:coder:r-loop", ninth_repeat["ts"])
    assert hit["ttd_s"] == ninth_repeat["ts"] - looping[3]["ts"] == 80.0
    assert hit["saved_usd"] == pytest.approx(sum(c["cost_usd"] for c in after)) and hit["saved_usd"] > 0
    assert hit["saved_tokens"] == sum(c["input_tokens"] + c["output_tokens"] for c in after) == 42_150
    assert (miss["id"], miss["detected_at"], miss["saved_usd"], miss["saved_tokens"]) == ("r-ok", None, 0.0, 0)
    loop = summary["score"]["per_kind"]["loop"]
    assert (loop["incidents"], loop["detected"], loop["recall"], loop["false_alarms"], loop["precision"]) == \
        (2, 1, 0.5, 0, 1.0)
    assert loop["median_ttd_s"] == 80.0 and loop["saved_usd"] == round(sum(c["cost_usd"] for c in after), 2)


def test_alerts_carry_event_time_not_wall_time(scenario, tmp_path):
    events, _ = scenario
    backtest(events, tmp_path)
    alerts = [orjson.loads(line) for line in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    assert all(events[0]["ts"] - 60 <= a["ts"] <= events[-1]["ts"] + driver.FLUSH for a in alerts)


def test_score_series_scores_the_obvious_spike_highest(tmp_path):
    path = tmp_path / "billing.csv"
    rows = [("timestamp", "value")]
    for h in range(24 * 14):
        value = 100 + 40 * math.sin(2 * math.pi * (h % 24) / 24) + (h % 5)
        rows.append((f"{1_767_225_600 + h * 3600}", f"{value * (6 if h == 300 else 1):.2f}"))
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    n, best, at = score_series(path, tmp_path / "scored.csv")
    assert n == 24 * 14 and at == rows[301][0] and best > 0.5  # 0.5: the spike detector's alert threshold
    out = list(csv.DictReader(open(tmp_path / "scored.csv")))
    assert all(0.0 <= float(r["anomaly_score"]) < 0.5 for r in out if r["timestamp"] != at)


def test_score_series_bad_rows(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2026-01-01T00:00:00Z,5\n2026-01-01T01:00:00Z,lots\n2025-12-31T00:00:00Z,4\n")
    with pytest.raises(ReplayInputError, match=r"bad.csv:3: could not convert .*lots"):
        score_series(bad, tmp_path / "o.csv")
    n, _, _ = score_series(bad, tmp_path / "o.csv", skip_bad=True)
    assert n == 1
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,amount\n1,2\n")
    with pytest.raises(ReplayInputError, match="timestamp,value"):
        score_series(wrong, tmp_path / "o.csv")


def test_labels_file_errors_name_the_incident(tmp_path):
    p = tmp_path / "labels.json"
    p.write_text('[{"kind": "loop", "subject": "run_id", "id": "r", "start": 1700000100, "end": 1700000000}]')
    with pytest.raises(LabelError, match="incident 0: .*end is before start"):
        load_labels(p)
    p.write_text('[{"kind": "meltdown", "subject": "run_id", "id": "r", "start": 1700000000, "end": 1700000100}]')
    with pytest.raises(LabelError, match="incident 0: kind"):
        load_labels(p)


def test_cli_backtest_on_the_real_agent_slice(tmp_path, capsys):
    assert main(["replay", "backtest", str(DATA / "mini_swe_agent_slice.csv"), "--out", str(tmp_path)]) == 0
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["events"] == sum(1 for _ in read_traffic(DATA / "mini_swe_agent_slice.csv"))
    assert summary["alerts_by_kind"].get("loop", 0) == 0  # resolved real runs are no loops
    assert "events replayed" in capsys.readouterr().out


def test_cli_backtest_bad_file_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"usage","event_id":"a","ts":1768435200,"workflow":"w","model":"m",'
                   '"input_tokens":1,"output_tokens":1}\n{broken\n')
    assert main(["replay", "backtest", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "--skip-bad" in err
    assert main(["replay", "backtest", str(bad), "--out", str(tmp_path / "o"), "--skip-bad"]) == 0


def test_live_replay_delivers_every_event(broker):
    create_topic(broker.bootstrap, "replay-live-test")
    events = list(read_traffic(DATA / "mooncake_slice.jsonl"))
    res = asyncio.run(replay_live(events, broker.url, "replay-live-test", speed=None))
    assert res["events"] == len(events) and res["dropped"] == 0
    got = [ev for _, v in read_all(broker.bootstrap, "replay-live-test") for ev in orjson.loads(v)]
    assert sorted(e["event_id"].split(":", 1)[1] for e in got) == sorted(e.event_id for e in events)
