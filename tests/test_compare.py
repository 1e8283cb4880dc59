"""`spendwatch replay compare`: pairing alerts of two configs, the score deltas, and the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from replay.compare import Side, check_spans, compare, diff_alerts, summary_line
from replay.driver import Replayed
from schemas.alerts import Alert
from spendwatch.cli import main

T0 = 1_768_435_200.0


def alert(alert_id: str, ts: float, kind: Any = "spike", workflow: str = "w", run_id: str | None = None) -> Alert:
    return Alert(alert_id=alert_id, kind=kind, severity="warning", workflow=workflow, ts=T0 + ts, summary=alert_id,
                 run_id=run_id)


def ids(alerts: list[Alert]) -> list[str]:
    return [a.alert_id for a in alerts]


def pairs(ps: list[tuple[Alert, Alert]]) -> list[tuple[str, str]]:
    return [(a.alert_id, b.alert_id) for a, b in ps]


# -- pairing ----------------------------------------------------------------------------------


def test_added_removed_moved_and_unchanged_alerts_are_told_apart():
    a = [alert("loop:w:r1", 100, "loop", run_id="r1"), alert("loop:w:r2", 200, "loop", run_id="r2"),
         alert("spike:w:workflow:1000", 1000), alert("zombie:w:ag", 5000, "zombie")]
    b = [alert("loop:w:r1", 160, "loop", run_id="r1"),  # 60 s later: unchanged
         alert("loop:w:r2", 200 + 7200, "loop", run_id="r2"),  # same id two hours later: the same loop, moved
         alert("spike:w:workflow:400", 400),  # another episode id, same workflow, 600 s earlier: moved
         alert("loop:w:r3", 300, "loop", run_id="r3")]  # new
    d = diff_alerts(a, b, tolerance=300, window=3600)
    assert pairs(d.unchanged) == [("loop:w:r1", "loop:w:r1")]
    assert pairs(d.moved) == [("loop:w:r2", "loop:w:r2"), ("spike:w:workflow:1000", "spike:w:workflow:400")]
    assert [y.ts - x.ts for x, y in d.moved] == [7200, -600]
    assert ids(d.added) == ["loop:w:r3"] and ids(d.removed) == ["zombie:w:ag"]


@pytest.mark.parametrize(("shift", "moved"), [(300.0, False), (-300.0, False), (300.5, True), (-300.5, True)])
def test_a_shift_of_exactly_the_tolerance_is_unchanged_and_just_past_it_moved(shift, moved):
    d = diff_alerts([alert("loop:w:r", 1000, "loop", run_id="r")],
                    [alert("loop:w:r", 1000 + shift, "loop", run_id="r")], tolerance=300)
    assert (len(d.moved), len(d.unchanged)) == ((1, 0) if moved else (0, 1))


def test_alerts_of_one_subject_with_other_ids_pair_only_within_the_window():
    a, b = [alert("spike:w:workflow:0", 0)], [alert("spike:w:workflow:3601", 3601)]
    d = diff_alerts(a, b, tolerance=300, window=3600)
    assert (ids(d.added), ids(d.removed), d.moved) == (["spike:w:workflow:3601"], ["spike:w:workflow:0"], [])
    assert pairs(diff_alerts(a, b, tolerance=300, window=3601).moved) == [("spike:w:workflow:0",
                                                                          "spike:w:workflow:3601")]


def test_subjects_must_agree_and_the_nearest_alerts_pair_first():
    a = [alert("spike:w:workflow:0", 0), alert("spike:w:workflow:1000", 1000)]
    b = [alert("spike:w:workflow:900", 900), alert("spike:other:workflow:0", 0, workflow="other")]
    d = diff_alerts(a, b)
    assert pairs(d.unchanged) == [("spike:w:workflow:1000", "spike:w:workflow:900")]
    assert ids(d.removed) == ["spike:w:workflow:0"] and ids(d.added) == ["spike:other:workflow:0"]


def test_identical_alert_lists_have_no_difference():
    a = [alert(f"loop:w:r{i}", 60 * i, "loop", run_id=f"r{i}") for i in range(5)]
    d = diff_alerts(a, list(reversed(a)))
    assert (d.added, d.removed, d.moved, len(d.unchanged)) == ([], [], [], 5)


@pytest.mark.parametrize(("tolerance", "window"), [(-1.0, 3600.0), (600.0, 300.0)])
def test_nonsense_spans_are_refused(tolerance, window):
    with pytest.raises(ValueError, match="tolerance"):
        check_spans(tolerance, window)


# -- scores -----------------------------------------------------------------------------------


def test_score_deltas_and_incident_changes_as_computed_by_hand():
    """Two loop incidents over two days. A finds r1 after 60 s, misses r2 and raises one false alarm;
    B finds r1 after 600 s (later by more than the tolerance) and r2 after 120 s, with no false alarm."""
    labels = [{"kind": "loop", "type": "loop", "subject": "run_id", "id": "r1", "workflow": "w", "start": T0 + 1000,
               "end": T0 + 2000},
              {"kind": "loop", "type": "loop", "subject": "run_id", "id": "r2", "workflow": "w", "start": T0 + 90_000,
               "end": T0 + 91_000}]
    a = Replayed(alerts=[alert("loop:w:r1", 1060, "loop", run_id="r1"), alert("loop:x:r9", 50_000, "loop",
                                                                               workflow="x", run_id="r9")],
                 events=10, first_ts=T0, last_ts=T0 + 2 * 86_400)
    b = Replayed(alerts=[alert("loop:w:r1", 1600, "loop", run_id="r1"), alert("loop:w:r2", 90_120, "loop",
                                                                               run_id="r2")],
                 events=10, first_ts=T0, last_ts=T0 + 2 * 86_400)
    doc = compare(Side("a.toml", a), Side("b.toml", b), labels=labels, tolerance=300)
    sa, sb = doc["a"]["score"]["all"], doc["b"]["score"]["all"]
    assert (sa["recall"], sb["recall"], doc["delta"]["recall"]) == (0.5, 1.0, 0.5)
    assert (sa["precision"], sb["precision"]) == (0.5, 1.0)
    assert (sa["false_alarms_per_day"], sb["false_alarms_per_day"], doc["delta"]["false_alarms_per_day"]) == (
        0.5, 0.0, -0.5)
    assert (sa["mean_ttd_s"], sb["mean_ttd_s"], sb["median_ttd_s"]) == (60.0, 360.0, 360.0)
    assert [(c["change"], c["id"]) for c in doc["incident_changes"]] == [("later", "r1"), ("detected", "r2")]
    assert (len(doc["added"]), len(doc["removed"]), len(doc["moved"]), doc["unchanged"]) == (1, 1, 1, 0)
    assert summary_line(doc).startswith("B: +1 alerts, −1 alerts, 1 moved, 0 unchanged (2→2); recall 0.50→1.00")


def test_no_detection_is_null_not_nan():
    empty = Replayed(events=1, first_ts=T0, last_ts=T0)
    doc = compare(Side("a", empty), Side("b", empty), labels=[])
    assert doc["a"]["score"]["all"]["recall"] is None and doc["delta"]["median_ttd_s"] is None
    assert doc["days"] is None and doc["a"]["score"]["all"]["false_alarms_per_day"] is None
    json.loads(orjson.dumps(doc), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


# -- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> dict[str, Path]:
    """A third of a day of generated traffic with its labels, and two configs that differ in two knobs."""
    root = tmp_path_factory.mktemp("compare")
    paths = {"traffic": root / "traffic.jsonl", "labels": root / "labels.json", "a": root / "a.toml",
             "b": root / "b.toml"}
    assert main(["replay", "generate", "--seed", "1", "--days", "0.3", "--workflows", "4",
                 "--out", str(paths["traffic"]), "--labels-out", str(paths["labels"])]) == 0
    paths["a"].write_text("[detectors.spike]\nthreshold = 0.55\n")
    paths["b"].write_text("[detectors.spike]\nthreshold = 0.3\n\n[detectors.loop]\nz = 3.0\n")
    return paths


def test_cli_json_shows_the_knobs_difference(traffic, tmp_path, capsys):
    report = tmp_path / "compare.html"
    assert main(["replay", "compare", str(traffic["a"]), str(traffic["b"]), str(traffic["traffic"]),
                 "--labels", str(traffic["labels"]), "--json", "--out", str(report)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    a, b = doc["a"]["alerts"], doc["b"]["alerts"]
    assert doc["added"] and b > a  # a lower spike threshold and loop z raise more alerts
    assert {x["kind"] for x in doc["added"] + doc["removed"]} <= {"spike", "loop"}
    assert doc["unchanged"] + len(doc["moved"]) + len(doc["removed"]) == a
    assert doc["unchanged"] + len(doc["moved"]) + len(doc["added"]) == b
    assert all(abs(m["shift_s"]) > doc["tolerance_s"] for m in doc["moved"])
    sa, sb = doc["a"]["score"]["all"], doc["b"]["score"]["all"]
    assert doc["delta"]["recall"] == pytest.approx(sb["recall"] - sa["recall"])
    assert sa["incidents"] == len(orjson.loads(traffic["labels"].read_bytes())) >= 5
    page = report.read_text()
    assert "spendwatch compare" in page and f"Added (B only): {len(doc['added'])}" in page


def test_cli_table_leads_with_the_summary_and_same_configs_differ_in_nothing(traffic, capsys):
    assert main(["replay", "compare", str(traffic["a"]), str(traffic["a"]), str(traffic["traffic"]),
                 "--labels", str(traffic["labels"]), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("B:"))
    assert first.startswith("B: +0 alerts, −0 alerts, 0 moved,") and "recall" in out
    assert not any(line.startswith(("added", "removed", "moved")) for line in out.splitlines())


@pytest.mark.parametrize(("which", "content", "said"), [
    ("b", None, "no such config file"),
    ("b", "[detectors.spike\n", "not valid TOML"),
    ("b", "[detectors.spike]\nthreshhold = 0.3\n", "threshhold"),
    ("labels", "{not json", "not valid JSON"),
    ("labels", '[{"kind": "loop"}]', "incident 0"),
    ("traffic", None, "cannot be read"),
])
def test_cli_bad_inputs_name_the_file_and_exit_2(traffic, tmp_path, capsys, which, content, said):
    paths = dict(traffic)
    paths[which] = tmp_path / f"bad-{which}"
    if content is not None:
        paths[which].write_text(content)
    assert main(["replay", "compare", str(paths["a"]), str(paths["b"]), str(paths["traffic"]),
                 "--labels", str(paths["labels"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spendwatch: error:") and str(paths[which]) in err and said in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_window_narrower_than_the_tolerance(traffic, capsys):
    assert main(["replay", "compare", str(traffic["a"]), str(traffic["b"]), str(traffic["traffic"]),
                 "--tolerance", "900", "--window", "60"]) == 2
    assert "--window" in capsys.readouterr().err

