"""NAB scoring (`replay/nab.py`) against hand-computed values, and `spendwatch replay nab` on tiny corpora."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest

from replay import nab
from replay.nab import PROFILES, NabFile, Profile
from spendwatch.cli import main

STANDARD, LOW_FN = PROFILES["standard"], PROFILES["reward_low_FN"]
MAX_TP = 2 / (1 + math.exp(-5)) - 1  # S(-1) = 0.98661: a window's first row


def series(rows: int = 20, windows: tuple[tuple[int, int], ...] = ((10, 13),)) -> NabFile:
    """Minute rows; probation is floor(0.15 · 20) = 3 rows, the window 10..13 is 4 rows wide."""
    return NabFile("cat/a.csv", [str(i) for i in range(rows)], [1.7e9 + 60.0 * i for i in range(rows)],
                   [1.0] * rows, list(windows))


def raw(detections: set[int], profile: Profile = STANDARD, f: NabFile | None = None) -> float:
    f = f or series()
    scores = [1.0 if i in detections else 0.0 for i in range(len(f.ts))]
    return nab.score_file(scores, nab.sweep_weights(len(f.ts), f.windows, profile), profile, 0.5).raw


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert nab.probation_length(20) == 3
    assert nab.probation_length(4000) == 600
    assert nab.probation_length(100_000) == 750


def test_detections_inside_a_window_by_hand() -> None:
    assert raw({10}) == pytest.approx(1.0)  # the first row: S(-4/4)/S(-1) · A_TP, exactly A_TP
    half = (2 / (1 + math.exp(-2.5)) - 1) / MAX_TP  # row 12: p = -(13 - 12 + 1)/4 = -0.5
    assert half == pytest.approx(0.8598, abs=1e-4)
    assert raw({12}) == pytest.approx(half)
    assert raw({13}) == pytest.approx((2 / (1 + math.exp(-1.25)) - 1) / MAX_TP)  # the last row: p = -1/4
    assert raw({12, 10, 11}) == pytest.approx(1.0)  # only the first detection counts
    assert raw(set()) == -1.0 and raw(set(), LOW_FN) == -2.0  # a miss costs A_FN


def test_false_positives_by_hand() -> None:
    near = 0.11 * (2 / (1 + math.exp(5 / 3)) - 1)  # row 14: d = (14 - 13)/(4 - 1) = 1/3
    assert near == pytest.approx(-0.0751, abs=1e-4)
    assert raw({10, 14}) == pytest.approx(1.0 + near)
    far = raw({10, 19}) - 1.0  # d = 6/3 = 2: S(2) ≈ -0.9999
    assert far == pytest.approx(0.11 * (2 / (1 + math.exp(10)) - 1))
    assert far < near < 0
    assert raw({5, 10}) == pytest.approx(1.0 - 0.11)  # before any window: -A_FP
    assert raw({5, 10}, PROFILES["reward_low_FP"]) == pytest.approx(1.0 - 0.22)
    assert raw({5, 6, 10}) == pytest.approx(1.0 - 0.22)  # every false-positive row counts


def test_probation_rows_are_not_scored() -> None:
    assert raw({0, 1, 2, 10}) == pytest.approx(1.0)
    assert raw({3, 10}) == pytest.approx(1.0 - 0.11)
    assert raw(set(), f=series(windows=((1, 2), (10, 13)))) == -1.0  # a window inside probation is not scored


def test_threshold_is_optimised_over_the_corpus() -> None:
    f = series()
    scores = [0.0] * 20
    scores[10], scores[5], scores[16] = 0.9, 0.95, 0.3
    # 1.1: -1 · miss; 0.95: -1.11; 0.9: 1 - 0.11; 0.3: also the FP at 16; 0.0: every row
    th, total = nab.best_threshold([(scores, nab.sweep_weights(20, f.windows, STANDARD))], STANDARD)
    assert th == 0.9 and total == pytest.approx(0.89)


def test_null_normalises_to_0_and_perfect_to_100() -> None:
    files = [series(), series(200, ((100, 109), (150, 159)))]  # long enough that firing on every row loses
    null = [[0.0] * len(f.ts) for f in files]
    perfect = [[1.0 if any(i == w[0] for w in f.windows) else 0.0 for i in range(len(f.ts))] for f in files]
    for name in PROFILES:
        assert nab.evaluate(files, null, [name])[name]["score"] == 0.0
        assert nab.evaluate(files, perfect, [name])[name]["score"] == pytest.approx(100.0)
    report = nab.evaluate(files, perfect, ["standard"])["standard"]
    assert (report["tp"], report["fn"], report["fp_rows"], report["threshold"]) == (3, 0, 0, 1.0)


def write_corpus(root: Path, labels: dict[str, list[list[str]]] | None = None) -> Path:
    """Two categories, one file each: 900 minutes of a flat noisy series, one with a spike at row 600
    (past the novelty scorer's 400-row warm-up)."""
    for name, spike in (("catA/flat.csv", None), ("catB/spike.csv", 600)):
        path = root / "data" / name
        path.parent.mkdir(parents=True)
        rows = [f"2020-01-01 {i // 60:02d}:{i % 60:02d}:00,{500 if i == spike else 10 + i % 3}" for i in range(900)]
        path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    (root / "labels").mkdir()
    labels = labels if labels is not None else {"catA/flat.csv": [],
                                                 "catB/spike.csv": [["2020-01-01 09:55:00.000000",
                                                                     "2020-01-01 10:10:00.000000"]]}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return root


def test_cli_scores_a_tiny_corpus_and_writes_nab_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "out"
    assert main(["replay", "nab", str(corpus), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert all(p in text for p in ("standard:", "reward_low_FP:", "reward_low_FN:", "catA", "catB", "overall"))
    for name in ("catA/spendwatch_flat.csv", "catB/spendwatch_spike.csv"):
        lines = (out / "spendwatch" / name).read_text().splitlines()
        assert lines[0] == "timestamp,value,anomaly_score" and len(lines) == 901
    assert main(["replay", "nab", str(corpus), "--out", str(out), "--json", "--profile", "standard"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert list(doc["profiles"]) == ["standard"] and doc["rows"] == 1800
    assert doc["model"] == "detectors.novelty.NoveltyScorer"
    std = doc["profiles"]["standard"]
    assert std["windows"] == 1 and std["tp"] == 1 and std["score"] > 50  # the spike is evident
    assert std["categories"]["catA"]["score"] is None


def test_cli_scores_any_river_detector_by_import_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "out"
    argv = ["replay", "nab", str(corpus), "--out", str(out), "--json", "--model", "river.anomaly.HalfSpaceTrees",
            "--model-arg", "seed=42", "--model-arg", "n_trees=5", "--scale", "minmax"]
    assert main(argv) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert (doc["model"], doc["model_args"], doc["scale"]) == ("river.anomaly.HalfSpaceTrees",
                                                             {"seed": 42, "n_trees": 5}, "minmax")
    scores = [float(line.split(",")[2]) for line in
              (out / "HalfSpaceTrees" / "catB" / "HalfSpaceTrees_spike.csv").read_text().splitlines()[1:]]
    assert len(scores) == 900 and len(set(scores)) > 10 and all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize(("args", "says"), [
    (["--model", "river.anomaly.NoSuchModel"], "has no 'NoSuchModel'"),
    (["--model", "nosuchpackage.Model"], "cannot import 'nosuchpackage'"),
    (["--model", "river.anomaly.HalfSpaceTrees", "--model-arg", "bogus=1"], "does not take these arguments"),
    (["--model", "collections.OrderedDict"], "not a River anomaly detector"),
    (["--model", "Model"], "not an import path"),
])
def test_cli_bad_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                        says: str) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    assert main(["replay", "nab", str(corpus), "--out", str(tmp_path / "out"), *args]) == 2
    assert says in capsys.readouterr().err


def test_reader_keeps_file_order_when_time_goes_back(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    path = corpus / "data" / "catA" / "flat.csv"
    lines = path.read_text().splitlines()
    lines[50], lines[51] = lines[51], lines[50]
    path.write_text("\n".join(lines) + "\n")
    files = nab.read_corpus(corpus)
    assert [f.name for f in files] == ["catA/flat.csv", "catB/spike.csv"]
    assert files[0].ts[49] > files[0].ts[50] and files[1].windows == [(595, 610)]


@pytest.mark.parametrize("damage, message", [
    ("no labels", "combined_windows.json is missing"),
    ("no value column", "lacks timestamp and value columns"),
    ("label for a missing file", "catC/gone.csv"),
    ("window outside the file", "holds no row"),
])
def test_malformed_corpus_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str,
                                           message: str) -> None:
    corpus = write_corpus(tmp_path / "c")
    labels = corpus / "labels" / "combined_windows.json"
    if damage == "no labels":
        labels.unlink()
    elif damage == "no value column":
        (corpus / "data" / "catA" / "flat.csv").write_text("timestamp,count\n2020-01-01 00:00:00,1\n")
    elif damage == "label for a missing file":
        labels.write_text(json.dumps({**json.loads(labels.read_text()), "catC/gone.csv": []}))
    else:
        labels.write_text(json.dumps({"catA/flat.csv": [["2021-01-01 00:00:00", "2021-01-02 00:00:00"]],
                                      "catB/spike.csv": []}))
    assert main(["replay", "nab", str(corpus), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
