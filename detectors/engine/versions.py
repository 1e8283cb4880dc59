"""Format versions of stored state: every dump carries `v`, every load upgrades or refuses.

State outlives the code that wrote it (changelog topics, RocksDB tables), so a
reader must know which layout it holds: it upgrades older layouts step by step
through `migrations` and refuses a newer or unknown one with a clear error
instead of misreading it.

>>> upgrade({"v": 0, "n": 1}, "counter", 1, {0: lambda d: {"count": d["n"]}})
{'count': 1, 'v': 1}
>>> upgrade({"v": 7}, "counter", 1, {})  # doctest: +ELLIPSIS
Traceback (most recent call last):
detectors.engine.versions.StateError: counter state has format v7; this spendwatch reads v1 (upgrade spendwatch, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Migration = Callable[[dict[str, Any]], dict[str, Any]]


class StateError(ValueError):
    """Stored state this code cannot read; the message says which and what to do."""


def upgrade(doc: Any, kind: str, current: int, migrations: Mapping[int, Migration],
            default: int | None = None) -> dict[str, Any]:
    """`doc` in format `current`. `migrations[n]` turns format n into n + 1; `default` is the
    version of docs written before versions existed (None: such docs are refused)."""
    if not isinstance(doc, dict):
        raise StateError(f"{kind} state is a {type(doc).__name__}, not an object")
    v = doc.get("v", default)
    oldest = min(migrations, default=current)
    span = f"v{oldest}" if oldest == current else f"v{oldest}..v{current}"
    if not isinstance(v, int) or isinstance(v, bool) or not oldest <= v <= current:
        raise StateError(f"{kind} state has format v{v}; this spendwatch reads {span} "
                         "(upgrade spendwatch, or move the old state away)")
    while v < current:
        doc = migrations[v](doc)
        v += 1
    return {**doc, "v": current}
