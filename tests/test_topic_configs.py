"""The changelog topics a worker creates take its largest state record, not just Kafka's 1 MB default.

A detectors record of a workflow with thousands of runs in flight passed 1 MB (1.64 MB measured at
`MAX_RUNS` with UUID run ids); the producer allowed 8 MB, but on a Kafka with default topic limits
the broker would have refused that state write. Tansu keeps and describes topic configs as Kafka does.
"""

from __future__ import annotations

from pathlib import Path

from streams.topology import MAX_STATE_RECORD_BYTES
from tests.conftest import start_worker
from tests.kafka_io import topic_configs, topic_names

KNOWN = {"workflows", "teams", "detectors", "alert-ledger", "alert-routes"}
"""The worker's tables today: each changelog the broker has is checked, so a new table is too."""


def test_changelog_topics_take_the_largest_record_the_worker_writes(fresh_broker, spawn, tmp_path: Path):
    start_worker(spawn, fresh_broker, "--data-dir", str(tmp_path / "tables"))
    changelogs = {name for name in topic_names(fresh_broker.bootstrap) if name.endswith("-changelog")}
    assert {f"spendwatch-{table}-changelog" for table in KNOWN} <= changelogs, changelogs
    for table in sorted(changelogs):
        configs = topic_configs(fresh_broker.bootstrap, table)
        assert configs.get("max.message.bytes") == str(MAX_STATE_RECORD_BYTES), (table, configs)
        assert configs.get("cleanup.policy") == "compact", (table, configs)  # Faust's own setting is kept
