"""`spendwatch replay nab`: an anomaly model on a Numenta Anomaly Benchmark corpus, scored by NAB's rules.

The rules follow numenta/NAB's `nab/sweeper.py` (`calcSweepScore`, `calcScoreByThreshold`) and the
normalisation of `nab/runner.py`, so figures compare with NAB's scoreboard:

- each row outside probation (the first min(floor(15 % of rows), 750)) gets a sweep weight: inside a
  labelled window A_TP·S(p)/S(-1) with p = -(right - i + 1)/width (1 at the window's first row); after a
  window A_FP·S(d) with d = (i - right)/(width - 1) of the preceding window; before any window -A_FP;
  S(x) = 2/(1 + exp(5x)) - 1, and -1 from x = 3 on;
- a row is a detection when its score ≥ the threshold; a window scores its best (earliest) detection,
  or -A_FN when it has none; every detection outside a window adds its (negative) weight;
- the threshold is the one that maximises the corpus raw score (ties: the highest), per profile;
- normalised = 100·(raw - null)/(perfect - null): null never fires (-A_FN per scored window), perfect
  is A_TP per labelled window.

Rows whose timestamps go back in time are scored in file order, as NAB does. NAB enters a window at
the row equal to its start and leaves it at the first row equal to its end; here a window runs from
the first row (in file order) at or after its start to the first row at its end after that (or the
row before the first one past it), which is the same on NAB's own files and copes with labels that
fall between rows.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from river import base

from detectors.models import Sample
from replay.readers import ReplayInputError
from schemas.events import parse_ts

DETECTOR = "spendwatch"
Weights = list[tuple[int | None, float] | None]  # per row: None in probation, else (window or None, weight)


@dataclass(frozen=True)
class Profile:
    """NAB's cost matrix."""

    tp: float
    fn: float
    fp: float


PROFILES = {
    "standard": Profile(1.0, 1.0, 0.11),
    "reward_low_FP": Profile(1.0, 1.0, 0.22),
    "reward_low_FN": Profile(1.0, 2.0, 0.11),
}


class NabCorpusError(ValueError):
    """A corpus that does not have NAB's layout, saying what is wrong where."""


@dataclass
class NabFile:
    """One series: `name` is `category/file.csv`, `windows` are (first, last) row indices."""

    name: str
    raw_ts: list[str]
    ts: list[float]
    values: list[float]
    windows: list[tuple[int, int]]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]


def scaled_sigmoid(x: float) -> float:
    """NAB's reward curve: ≈ 1 at x = -1 (a window's start), 0 at its end, → -1 after it."""
    return -1.0 if x >= 3.0 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def probation_length(rows: int, percent: float = 0.15) -> float:
    """Rows not scored at a file's start; NAB caps it at 15 % of 5000 rows."""
    return min(math.floor(percent * rows), percent * 5000)


def sweep_weights(rows: int, windows: Sequence[tuple[int, int]], profile: Profile) -> Weights:
    """Per row: None in probation, else (window index or None outside, its weight if it is a detection)."""
    max_tp = scaled_sigmoid(-1.0)
    probation = probation_length(rows)
    out: Weights = []
    k, prev_right, prev_width = 0, 0, 0.0
    for i in range(rows):
        cur = k if k < len(windows) and windows[k][0] <= i <= windows[k][1] else None
        if cur is not None:
            left, right = windows[cur]
            width = float(right - left + 1)
            weight = scaled_sigmoid(-(right - i + 1) / width) * profile.tp / max_tp
        else:
            # no preceding window: -A_FP; NAB divides by zero after a one-row window, here it is -A_FP too
            past = abs(prev_right - i) / (prev_width - 1) if prev_width > 1 else 3.0
            weight = scaled_sigmoid(past) * profile.fp
        out.append(None if i < probation else (cur, weight))
        if cur is not None and i == windows[cur][1]:
            prev_right, prev_width, k = i, float(windows[cur][1] - windows[cur][0] + 1), k + 1
    return out


@dataclass
class FileScore:
    """One file's raw score at a threshold, with NAB's window and row counts."""

    raw: float
    windows: int
    tp: int
    fn: int
    fp: int


def _scorable(weights: Weights) -> set[int]:
    return {w[0] for w in weights if w is not None and w[0] is not None}


def score_file(scores: Sequence[float], weights: Weights, profile: Profile,
               threshold: float) -> FileScore:
    """The raw score when every row with score ≥ threshold is a detection."""
    windows = _scorable(weights)
    best = {w: -profile.fn for w in windows}
    fp_sum, fp = 0.0, 0
    for s, w in zip(scores, weights, strict=True):
        if w is None or s < threshold:
            continue
        if w[0] is None:
            fp_sum, fp = fp_sum + w[1], fp + 1
        else:
            best[w[0]] = max(best[w[0]], w[1])
    tp = sum(1 for w in windows if best[w] > -profile.fn)
    return FileScore(sum(best.values()) + fp_sum, len(windows), tp, len(windows) - tp, fp)


def best_threshold(files: Iterable[tuple[Sequence[float], Weights]],
                   profile: Profile) -> tuple[float, float]:
    """(threshold, corpus raw score) maximising the raw score: an exact sweep over the distinct scores."""
    points: list[tuple[float, tuple[int, int] | None, float]] = []
    total = 0.0
    for f, (scores, weights) in enumerate(files):
        total -= profile.fn * len(_scorable(weights))
        for s, w in zip(scores, weights, strict=True):
            if w is not None:
                points.append((s, None if w[0] is None else (f, w[0]), w[1]))
    points.sort(key=lambda p: -p[0])
    best_at, best_raw = 1.1, total  # above every score: nothing detected
    found: dict[tuple[int, int], float] = {}
    for i, (s, key, weight) in enumerate(points):
        if key is None:
            total += weight
        elif key not in found:
            found[key] = weight
            total += profile.fn + weight
        elif weight > found[key]:
            total += weight - found[key]
            found[key] = weight
        if (i + 1 == len(points) or points[i + 1][0] != s) and total > best_raw:
            best_at, best_raw = s, total
    return best_at, best_raw


def normalised(raw: float, null: float, perfect: float) -> float | None:
    """NAB's 0 (never fires) .. 100 (every window at its start) scale; None without windows."""
    return None if perfect == null else 100.0 * (raw - null) / (perfect - null)


DEFAULT_MODEL = "detectors.novelty.NoveltyScorer"
"""What `spendwatch replay nab` scores unless told `--model`."""


def detect(series: NabFile, model: base.AnomalyDetector) -> list[float]:
    """A fresh `model` over one series, causal: each row is scored before it is learned. Scores
    outside [0, 1] (River's detectors are not all bounded) are clipped, as NAB reads them."""
    out = []
    for ts, value in zip(series.ts, series.values, strict=True):
        x: Sample = {"ts": ts, "value": value}
        out.append(round(min(max(model.score_one(x), 0.0), 1.0), 6))  # as written: results files rescore the same
        model.learn_one(x)
    return out


def evaluate(files: Sequence[NabFile], scores: Sequence[Sequence[float]], profiles: Iterable[str]) -> dict[str, Any]:
    """Per profile: the optimised threshold, and raw and normalised scores overall and per category."""
    report: dict[str, Any] = {}
    for name in profiles:
        profile = PROFILES[name]
        weights = [sweep_weights(len(f.ts), f.windows, profile) for f in files]
        threshold, _ = best_threshold(zip(scores, weights, strict=True), profile)
        groups: dict[str, list[tuple[NabFile, FileScore]]] = {}
        for f, s, w in zip(files, scores, weights, strict=True):
            groups.setdefault(f.category, []).append((f, score_file(s, w, profile, threshold)))
        groups = dict(sorted(groups.items()))
        groups["overall"] = [x for g in groups.values() for x in g]
        cats = {}
        for cat, rows in groups.items():
            raw = sum(r.raw for _, r in rows)
            null = 0.0 - profile.fn * sum(r.windows for _, r in rows)
            perfect = profile.tp * sum(len(f.windows) for f, _ in rows)
            cats[cat] = {"score": normalised(raw, null, perfect), "raw": raw, "null": null, "perfect": perfect,
                         "files": len(rows), "windows": sum(len(f.windows) for f, _ in rows),
                         "tp": sum(r.tp for _, r in rows), "fn": sum(r.fn for _, r in rows),
                         "fp_rows": sum(r.fp for _, r in rows)}
        report[name] = {"threshold": threshold, **cats.pop("overall"), "categories": cats}
    return report


def _window_rows(path: Path, ts: list[float], start: float, end: float) -> tuple[int, int]:
    first = next((i for i, t in enumerate(ts) if t >= start), None)
    if first is None or ts[first] > end:
        raise NabCorpusError(f"{path}: the labelled window [{start}, {end}] holds no row of the file")
    last = next((i for i in range(first, len(ts)) if ts[i] >= end), len(ts))
    return first, last if last < len(ts) and ts[last] == end else last - 1


def read_series(path: Path) -> tuple[list[str], list[float], list[float]]:
    """(raw timestamps, epoch seconds, values) in file order; NAB's timestamps are naive UTC."""
    raw_ts: list[str] = []
    ts: list[float] = []
    values: list[float] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "timestamp" not in cols or "value" not in cols:
            raise ReplayInputError(path, 1, f"header {reader.fieldnames} lacks timestamp and value columns",
                                   "a NAB data file starts with the line 'timestamp,value'")
        for row in reader:
            try:
                raw = row[cols["timestamp"]]
                t, v = parse_ts(raw, "timestamp", naive_utc=True), float(row[cols["value"]])
            except (ValueError, TypeError) as err:
                raise ReplayInputError(path, reader.line_num, str(err), "fix or remove the row") from None
            raw_ts.append(raw)
            ts.append(t)
            values.append(v)
    if not ts:
        raise ReplayInputError(path, None, "no rows", "a NAB data file has one row per interval")
    return raw_ts, ts, values


def read_corpus(root: Path) -> list[NabFile]:
    """Every `data/<category>/<file>.csv` with its windows from `labels/combined_windows.json`."""
    labels_path = root / "labels" / "combined_windows.json"
    if not labels_path.is_file():
        raise NabCorpusError(f"{root} is not a NAB corpus: {labels_path} is missing "
                             "(NAB's layout: data/<category>/<file>.csv and labels/combined_windows.json)")
    try:
        labels = json.loads(labels_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise NabCorpusError(f"{labels_path}: not JSON ({err})") from None
    if not isinstance(labels, dict):
        raise NabCorpusError(f"{labels_path}: expected an object mapping 'category/file.csv' to windows")
    data = root / "data"
    found = {p.relative_to(data).as_posix() for p in data.glob("*/*.csv")} if data.is_dir() else set()
    if missing := sorted(set(labels) - found):
        raise NabCorpusError(f"{labels_path} labels {len(missing)} file(s) not under {data}, e.g. {missing[0]}")
    if unlabelled := sorted(found - set(labels)):
        raise NabCorpusError(f"{data / unlabelled[0]} has no entry in {labels_path} (give it [] if it has no anomaly)")
    files = []
    for name in sorted(labels):
        path = data / name
        raw_ts, ts, values = read_series(path)
        windows: list[tuple[int, int]] = []
        try:
            bounds = sorted((parse_ts(a, "window start", naive_utc=True), parse_ts(b, "window end", naive_utc=True))
                            for a, b in labels[name])
        except (ValueError, TypeError) as err:
            raise NabCorpusError(f"{labels_path}: {name}: windows must be [start, end] timestamps ({err})") from None
        for start, end in bounds:
            window = _window_rows(path, ts, start, end)
            if windows and window[0] <= windows[-1][1]:
                raise NabCorpusError(f"{labels_path}: {name} has overlapping windows")
            windows.append(window)
        files.append(NabFile(name, raw_ts, ts, values, windows))
    if not files:
        raise NabCorpusError(f"{labels_path} names no file")
    return files


def write_results(out: Path, series: NabFile, scores: Sequence[float], detector: str = DETECTOR) -> Path:
    """NAB's results layout: OUT/<detector>/<category>/<detector>_<file>.csv."""
    category, file = series.name.split("/", 1)
    path = out / detector / category / f"{detector}_{file}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score"])
        w.writerows([t, f"{v:g}", f"{s:.6f}"] for t, v, s in zip(series.raw_ts, series.values, scores, strict=True))
    return path
