"""Reading detector state back from plain data: versions, migrations, and type checks.

A detector's `dump` writes dicts, lists, str, int, float, bool and None only, so
orjson round-trips it exactly and a changelog record can never run code. A
stored doc outlives the code that wrote it, so `load` must never misread one:
`upgrade` applies the detector's migrations to an older doc and refuses an
unknown version; `loading` turns any malformed field into a StateError naming
the detector and workflow; the `num` / `count` / ... checks below keep wrong
types (a float written as null because it was inf, a string for a number) from
being read as state that fails later, far from the cause.

>>> with loading("loop", "coder"):  # doctest: +ELLIPSIS
...     num(None)
Traceback (most recent call last):
detectors.engine.versions.StateError: loop detector state of workflow 'coder' is malformed (TypeError: ...)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from detectors.engine.versions import Migration, StateError
from detectors.engine.versions import upgrade as _upgrade

V = 1
"""The format a detector writes until its own layout changes; then it names its own (the loop
detector's `VERSION`) and adds the migration to it."""


def upgrade(doc: Any, kind: str, workflow: str, migrations: Mapping[int, Migration],
            current: int = V) -> dict[str, Any]:
    """`doc` migrated to format `current` (V, or later for a detector whose layout moved on since);
    StateError naming the detector, workflow and version if it has an unknown, missing or
    non-integer `"v"`. Call it inside `loading`: a migration may meet a malformed doc too."""
    whose = f"{kind} detector of workflow {workflow!r}"
    if isinstance(doc, dict) and "v" not in doc:
        raise StateError(f"{whose} state has no format version \"v\"; refusing to guess its layout")
    if isinstance(doc, dict) and (isinstance(doc["v"], bool) or not isinstance(doc["v"], int)):
        raise StateError(f"{whose} state has format version {doc['v']!r}, not an integer")
    return _upgrade(doc, whose, current, migrations)


@contextmanager
def loading(kind: str, workflow: str) -> Iterator[None]:
    """Any error reading a doc's fields becomes a StateError that says whose state it was."""
    try:
        yield
    except StateError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise StateError(f"{kind} detector state of workflow {workflow!r} is malformed "
                         f"({type(exc).__name__}: {exc})") from exc


def num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise TypeError(f"expected a finite number, got {x!r}")
    return float(x)


def opt_num(x: Any) -> float | None:
    return None if x is None else num(x)


def integer(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"expected an integer, got {x!r}")
    return x


def count(x: Any) -> int:
    """A non-negative integer: a counter, or a divisor's n."""
    if integer(x) < 0:
        raise ValueError(f"expected a count, got {x!r}")
    return x


def flag(x: Any) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"expected a boolean, got {x!r}")
    return x


def text(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, got {x!r}")
    return x


def opt_text(x: Any) -> str | None:
    return None if x is None else text(x)


def nums(xs: Any, n: int | None = None) -> list[float]:
    """A list of finite numbers, of length `n` if given."""
    return [num(x) for x in seq(xs, n)]


def seq(x: Any, n: int | None = None) -> list[Any]:
    """A list (of length `n` if given): a string or an object where a list belongs is refused,
    not iterated."""
    if not isinstance(x, list) or (n is not None and len(x) != n):
        raise TypeError(f"expected a list{f' of {n}' if n is not None else ''}, got {str(x)[:80]}")
    return x


def obj(x: Any) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise TypeError(f"expected an object, got {type(x).__name__}")
    return x
