"""The chaos harness (tests/chaos.py), short: 20k events, 10 workflows, 4 partitions, two SIGKILLs.

`make chaos` runs the full one (200k events, 60 workflows, 8 partitions, five kills).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import chaos


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_a_worker_killed_twice_keeps_exact_totals_and_announces_each_threshold_once(tmp_path: Path):
    report = chaos(events=20_000, workflows=10, partitions=4, kills=(0.3, 0.7), seed=11, workdir=tmp_path,
                   step_timeout=120)
    print(report.table())
    assert [r.exit_code for r in report.runs[:-1]] == [-9, -9], report.table()  # both died by SIGKILL, mid-backlog
    assert all(report.recovery(i) is not None for i in (1, 2)), report.table()
    assert len(report.traffic.expected_alerts) >= 8  # the scenario crosses enough thresholds to mean something
    assert not report.failures, report.table()
