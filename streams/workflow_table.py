"""Layout of the workflows table: each workflow's state, and its sealed event-id buckets.

Both live in one table, so they share a changelog partition and Kafka keeps
their order: a recovered state never names a bucket that was not written
before it. The key prefixes keep the two apart whatever a workflow is called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import orjson

from detectors.engine.workflow import WorkflowState

STATE, BUCKET = b"w:", b"i:"


def state_key(workflow: str) -> bytes:
    return STATE + workflow.encode()


def bucket_key(workflow: str, seq: int) -> bytes:
    return BUCKET + b"%d:" % seq + workflow.encode()


def save(table: MutableMapping[bytes, Any], st: WorkflowState) -> None:
    """Write a workflow's checkpoint: new buckets, then deletions, then the state that names them."""
    cp = st.checkpoint()
    for seq, ids in cp.sealed:
        table[bucket_key(st.name, seq)] = orjson.dumps(ids)
    for seq in cp.expired:
        table.pop(bucket_key(st.name, seq), None)
    table[state_key(st.name)] = orjson.dumps(cp.state)


def load(get: Callable[[bytes], bytes | None], workflow: str) -> WorkflowState | None:
    raw = get(state_key(workflow))
    if not raw:
        return None

    def bucket(seq: int) -> dict[str, float] | None:
        ids = get(bucket_key(workflow, seq))
        return orjson.loads(ids) if ids else None

    return WorkflowState.load(orjson.loads(raw), bucket)


def latest_states(changelog: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, WorkflowState]:
    """Each workflow's last state in a changelog read from the start (totals; ids left out)."""
    latest = {k: v for k, v in changelog if k is not None and k.startswith(STATE)}
    return {k[len(STATE):].decode(): WorkflowState.load(orjson.loads(v)) for k, v in latest.items() if v}


def state_history(changelog: Iterable[tuple[bytes | None, bytes | None]], workflow: str) -> list[WorkflowState]:
    """Every state of `workflow` in a changelog read from the start, in write order (ids left out)."""
    key = state_key(workflow)
    return [WorkflowState.load(orjson.loads(v)) for k, v in changelog if k == key and v]
