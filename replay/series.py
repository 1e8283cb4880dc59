"""`spendwatch replay score-series`: the spike scorer over one recorded series.

Input CSV: a header with `timestamp,value` (other columns are ignored), one row
per interval (e.g. an hourly billing export). `timestamp` is epoch seconds,
RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` (read as UTC), in 2000..2100. Output: the same rows with
`anomaly_score` in [0, 1], causal — each row is scored before it is learned.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from detectors.models import Sample
from detectors.spikes import SeriesScorer
from replay.readers import ReplayInputError, cell_ts


def read_series(path: Path, skip_bad: bool = False) -> Iterator[tuple[int, str, float, float]]:
    """(line, original timestamp, epoch seconds, value) per row, checked and in order."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "timestamp" not in cols or "value" not in cols:
            raise ReplayInputError(path, 1, f"header {reader.fieldnames} lacks timestamp and value columns",
                                   "the file needs a header line 'timestamp,value'")
        last = float("-inf")
        for row in reader:
            line = reader.line_num
            try:
                raw = row[cols["timestamp"]]
                ts, value = cell_ts(raw, "timestamp", naive_utc=True), float(row[cols["value"]])
                if ts < last:
                    raise ValueError(f"timestamp {raw} is earlier than the row before; sort the file by time")
            except (ValueError, TypeError, AttributeError) as err:
                if skip_bad:
                    continue
                raise ReplayInputError(path, line, str(err), "fix it, or use --skip-bad to skip and count bad rows") \
                    from None
            last = ts
            yield line, raw, ts, value


def score_series(path: Path, out: Path, skip_bad: bool = False) -> tuple[int, float, str]:
    """Write `timestamp,value,anomaly_score`; return (rows, max score, its timestamp)."""
    scorer = SeriesScorer()
    rows, best, best_ts = 0, -1.0, ""
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score"])
        for _, raw, ts, value in read_series(path, skip_bad):
            x: Sample = {"ts": ts, "value": value}
            s = scorer.score_one(x)
            scorer.learn_one(x)
            w.writerow([raw, value, f"{s:.4f}"])
            rows += 1
            if s > best:
                best, best_ts = s, raw
    return rows, best, best_ts
