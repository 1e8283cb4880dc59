"""`spendwatch report` on recorded traffic (issue 15, item 7): the same engine in virtual time, rows
checked against totals computed from the events themselves; bad arguments exit 2 with one line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.pricing.money import usd_to_micros
from tests.conftest import ROOT

T0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC


def spendwatch(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "spendwatch", *args], cwd=ROOT, capture_output=True, timeout=120)


@pytest.fixture
def traffic(tmp_path: Path) -> tuple[Path, dict[str, int], dict[str, int]]:
    """Three workflows of two teams on one day, priced by the caller, with outcomes."""
    teams = {"support": "cx", "triage": "cx", "review": "eng"}
    spend = {wf: 0 for wf in teams}
    done = {wf: 0 for wf in teams}
    lines = []
    for i in range(300):
        wf = list(teams)[i % 3]
        cost = round(0.001 * (1 + i % 13), 6)
        spend[wf] += usd_to_micros(cost)
        lines.append({"type": "usage", "event_id": f"e{i}", "ts": T0 + 3600 + i * 10, "workflow": wf,
                      "team": teams[wf], "model": "gpt-4o", "input_tokens": 500, "output_tokens": 20,
                      "cost_usd": cost})
        if i % 10 == 0:  # 10 per workflow
            done[wf] += 1
            lines.append({"type": "outcome", "event_id": f"o{i}", "ts": T0 + 3600 + i * 10 + 1, "workflow": wf,
                          "outcome": "done", "value_usd": 2.0})
    path = tmp_path / "traffic.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path, spend, done


def test_json_rows_per_workflow_are_exact(traffic: tuple[Path, dict[str, int], dict[str, int]]) -> None:
    path, spend, done = traffic
    r = spendwatch("report", str(path), "--by", "workflow", "--period", "day", "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    rows = json.loads(r.stdout)
    assert [row["workflow"] for row in rows] == sorted(spend, key=lambda wf: -spend[wf])
    for row in rows:
        wf = row["workflow"]
        assert usd_to_micros(row["cost_usd"]) == spend[wf] and row["calls"] == 100 and row["period"] == "2025-12-01"
        assert row["outcomes"] == done[wf] and row["outcome_value_usd"] == 2.0 * done[wf]
        assert row["usd_per_outcome"] == pytest.approx(spend[wf] / 1e6 / done[wf], abs=1e-6)


def test_csv_per_team_sums_its_workflows(traffic: tuple[Path, dict[str, int], dict[str, int]], tmp_path: Path) -> None:
    path, spend, _ = traffic
    config = tmp_path / "spendwatch.toml"
    config.write_text("[budgets.teams.cx]\nmonthly_usd = 10.0\n")
    r = spendwatch("report", str(path), "--by", "team", "--format", "csv", "--config", str(config))
    assert r.returncode == 0, r.stderr.decode()
    rows = {row["team"]: row for row in csv.DictReader(io.StringIO(r.stdout.decode()))}
    assert usd_to_micros(float(rows["cx"]["cost_usd"])) == spend["support"] + spend["triage"]
    assert usd_to_micros(float(rows["eng"]["cost_usd"])) == spend["review"]
    assert rows["cx"]["workflows"] == "2" and rows["cx"]["period"] == "2025-12" and rows["eng"]["budget_used"] == ""
    assert float(rows["cx"]["budget_used"]) == pytest.approx((spend["support"] + spend["triage"]) / 10e6, abs=1e-4)


def test_the_table_names_the_period_and_the_total(traffic: tuple[Path, dict[str, int], dict[str, int]]) -> None:
    path, spend, _ = traffic
    r = spendwatch("report", str(path))
    out = r.stdout.decode()
    assert r.returncode == 0 and "spend by workflow, 2025-12" in out
    assert f"total ${sum(spend.values()) / 1e6:,.2f} over 3 workflows" in out


@pytest.mark.parametrize(("args", "message"), [
    ((), "give either --broker (a running system) or traffic FILEs (a recording), not neither"),
    (("x.jsonl", "--broker", "kafka://127.0.0.1:9"), "not both"),
    (("/no/such.jsonl",), "/no/such.jsonl: no such traffic file"),
    (("--by", "model", "x.jsonl"), "invalid choice: 'model'"),
])
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    r = spendwatch("report", *args)
    assert r.returncode == 2 and message in r.stderr.decode()
