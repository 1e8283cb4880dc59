"""Readers of recorded traffic: trace files in, time-ordered validated events out.

Replay drives the detectors with real traffic shapes, so every event a reader
yields is checked against the wire contract (`schemas.decode.validate_event`),
once: the replay driver takes the readers' events as they are,
and carries a deterministic `event_id` (`<file name>:<line>`): replaying a file
twice gives identical events. `read_traffic` is the one entry point; the
formats it reads (`FORMATS`) are:

- `jsonl`: wire events, one JSON object or array of objects per line.
- `azure`: Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`).
- `mooncake`: Mooncake JSONL trace (`timestamp` in ms from the trace start).
- `agent-csv`: per-call agent CSV (mini-swe-agent's `per_call_usage.csv`).
- `csv`: any CSV, with a `ColumnMap` naming which column holds which wire field.

Any of them may be gzip-compressed (known by its magic bytes, not its name).
"""

from __future__ import annotations

import csv
import gzip
import heapq
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, TextIO

import orjson

from schemas.decode import parse_record, validate_event
from schemas.events import OutcomeEvent, UsageEvent, parse_ts
from schemas.structs import Event

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
"""Where relative traces (Mooncake) start, unless the caller picks `start`."""
TS_TOLERANCE_S = 1.0
"""How far a timestamp may go back and still count as sorted: concurrent
writers of one log interleave slightly out of order; more than this is an
unsorted file, which replay would otherwise silently reorder."""
MAX_REASONS = 5
SKIP_HINT = "fix the input, or use --skip-bad to skip and count bad lines"
FORMATS = ("jsonl", "azure", "mooncake", "agent-csv", "csv")

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
AGENT_COLUMNS = (
    "instance_id", "step", "created", "model", "provider", "prompt_tokens",
    "completion_tokens", "cached_tokens", "reasoning_tokens", "cost", "resolved",
)
THOUGHTS_APART_PROVIDERS = frozenset({"google"})
"""Agent-CSV providers whose `completion_tokens` leave out thinking tokens.
The direct Gemini API reports `candidatesTokenCount` without
`thoughtsTokenCount`: in the mini-swe-agent data 20 of its 21 rows with
reasoning have `reasoning_tokens` > `completion_tokens`. OpenRouter rows
(`Google`, `Google AI Studio`) include them: their `cost` equals completion ×
$12/M with reasoning inside, on every row."""

MAPPABLE_FIELDS = (frozenset(UsageEvent.model_fields) | frozenset(OutcomeEvent.model_fields)) - {"labels"}
_INT_FIELDS = frozenset(
    {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
     "reasoning_tokens", "step"}
)
_FLOAT_FIELDS = frozenset({"cost_usd", "latency_ms", "value_usd"})


class ReplayInputError(ValueError):
    """Bad input, located by file and line, saying how to get past it."""

    def __init__(self, path: Path, line: int | None, reason: str, hint: str = SKIP_HINT):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason} ({hint})")
        self.path, self.line, self.reason = path, line, reason


@dataclass
class ReadStats:
    """What a read yielded and skipped; complete once its iterator is exhausted."""

    read: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    """The first `MAX_REASONS` skipped lines, as `file:line: reason`."""

    def skip(self, path: Path, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"{path}:{line}: {reason}")


@dataclass(frozen=True)
class Attribution:
    """Who the calls of a trace are charged to, where the trace does not say.

    Applies to every format but `jsonl` (wire events attribute themselves) and
    never overrides a field the trace has.

    - `workflow`: workflow of every event (none of the shared traces has one).
    - `model`: model of traces without one (Azure, Mooncake); the catalog prices it.
    - `provider`, `team`: added to usage events when set.
    - `runs`: spread calls round-robin over this many runs, `run_id`
      `<file>:run<k>` with k = line % runs and `step` = line // runs, so run-level
      detectors (loops, zombies) have runs to watch; None leaves calls without a run.
    """

    workflow: str = "replay"
    model: str = "gpt-4o-mini"
    provider: str | None = None
    team: str | None = None
    runs: int | None = None

    def __post_init__(self) -> None:
        if self.runs is not None and self.runs < 1:
            raise ValueError(f"runs must be at least 1, got {self.runs}")

    def fill(self, event: dict[str, Any], source: str, line: int) -> dict[str, Any]:
        """`event` (changed in place) with what it lacks of this attribution."""
        event.setdefault("workflow", self.workflow)
        if event["type"] != "usage":
            return event
        event.setdefault("model", self.model)
        for key, value in (("provider", self.provider), ("team", self.team)):
            if value is not None:
                event.setdefault(key, value)
        if self.runs and "run_id" not in event:
            event["run_id"] = f"{source}:run{line % self.runs}"
            event.setdefault("step", line // self.runs)
        return event


@dataclass(frozen=True)
class ColumnMap:
    """Which CSV column holds which wire field (`columns`: field → column),
    plus fields that are the same on every row (`constants`: field → value)."""

    columns: dict[str, str]
    constants: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> ColumnMap:
        """Parse `ts=created,input_tokens=prompt,service='search'`: `field=column`,
        or `field='value'` (quoted) for a constant. `ts` must be mapped."""
        columns, constants = {}, {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, source = (s.strip() for s in item.partition("="))
            if not sep or not source:
                raise ValueError(f"mapping item {item!r} is not field=column or field='value'")
            if name not in MAPPABLE_FIELDS:
                raise ValueError(f"mapping names {name!r}, not a wire field ({', '.join(sorted(MAPPABLE_FIELDS))})")
            if len(source) >= 2 and source[0] == source[-1] and source[0] in "'\"":
                constants[name] = _convert(name, source[1:-1])
            else:
                columns[name] = source
        if "ts" not in columns and "ts" not in constants:
            raise ValueError("mapping must say which column holds ts, e.g. ts=created")
        return cls(columns, constants)


# -- values ---------------------------------------------------------------------------------


def _int(value: Any, name: str) -> int:
    """A count from a CSV cell or JSON value; anything else is a bad line naming field and value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{name} {value!r} is not an integer")


def _float(value: Any, name: str) -> float:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{name} {value!r} is not a number")


def cell_ts(text: str, name: str = "ts", naive_utc: bool = False) -> float:
    """A timestamp from a CSV cell by the wire's rule (`parse_ts`), save that a cell is text: one that
    holds a number is epoch seconds (the wire refuses a number in a string)."""
    try:
        value: float | str = float(text)
    except ValueError:
        value = text
    return parse_ts(value, name, naive_utc)


def _convert(name: str, value: str) -> Any:
    """A mapped CSV cell as the type its wire field has."""
    if name == "ts":
        return cell_ts(value)
    if name in _INT_FIELDS:
        return _int(value, name)
    if name in _FLOAT_FIELDS:
        return _float(value, name)
    return value


def _json(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None


def _key(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if name not in obj:
        raise ValueError(f"missing key {name!r}")
    return obj[name]


def _valid(event: Any) -> Event:
    """The engine event of a wire object, if the contract accepts it (ValueError says why not)."""
    return validate_event(event)


# -- files ----------------------------------------------------------------------------------

Parsed = Iterator[tuple[int, "list[Event] | ValueError"]]
"""A file's lines, each as its events or as the reason it is bad."""


@dataclass(frozen=True)
class _Source:
    """One input file and the options its events are built with."""

    path: Path
    attribution: Attribution
    start: float
    mapping: ColumnMap | None

    def event(self, line: int, fields: dict[str, Any], suffix: str = "") -> Event:
        """The valid wire event of `line`, with its deterministic id and attribution."""
        source = self.path.name
        event = {"type": "usage", "event_id": f"{source}:{line}{suffix}", **fields}
        return _valid(self.attribution.fill(event, source, line))


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn failures of the file itself (truncated gzip, not UTF-8) into a ReplayInputError naming it."""
    try:
        yield
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        hint = "is it a complete UTF-8 text or gzip file?"
        raise ReplayInputError(path, None, f"cannot be read: {err}", hint) from None


def _open(path: Path) -> TextIO:
    """Text of a plain or gzip file: gzip is known by its magic bytes, not its name."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _parsed(lines: Iterable[tuple[int, Any]], parse: Callable[[int, Any], list[Event]]) -> Parsed:
    """Parse line by line; a bad line becomes its error, so the caller decides to stop or skip."""
    for line, raw in lines:
        try:
            yield line, parse(line, raw)
        except ValueError as err:
            yield line, err


def _json_lines(f: TextIO) -> Iterator[tuple[int, str]]:
    return ((n, text) for n, text in enumerate(f, 1) if text.strip())


def _csv(
    src: _Source, f: TextIO, required: Iterable[str], parse: Callable[[int, dict[str, str]], list[Event]]
) -> Parsed:
    """CSV plumbing the CSV readers share: check the header once, then hand each row
    to `parse` as a column → cell dict, with its line number in the file."""
    reader = csv.reader(f)
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise ReplayInputError(
            src.path, 1, f"missing column(s) {', '.join(missing)} (header: {','.join(header) or 'none'})",
            "a header cannot be skipped: check --format, or name the columns with --map",
        )

    def record(line: int, row: list[str]) -> list[Event]:
        if len(row) != len(header):
            raise ValueError(f"{len(row)} fields where the header has {len(header)}")
        return parse(line, dict(zip(header, row)))

    return _parsed(((reader.line_num, row) for row in reader if row), record)


# -- formats --------------------------------------------------------------------------------


def _read_jsonl(src: _Source, f: TextIO) -> Parsed:
    """Wire events; one bad object in an array makes its whole line bad (a line is the unit skipped)."""

    def parse(line: int, raw: str) -> list[Event]:
        events, errors = parse_record(raw.encode())  # a line is a Kafka record's value: same decoder
        if errors:
            raise ValueError(errors[0].reason)
        return events

    return _parsed(_json_lines(f), parse)


def _read_azure(src: _Source, f: TextIO) -> Parsed:
    """Azure's trace: one request per row, absolute naive-UTC times, no model or workflow."""

    def parse(line: int, row: dict[str, str]) -> list[Event]:
        fields = {
            "ts": cell_ts(row["TIMESTAMP"], "TIMESTAMP", naive_utc=True),  # UTC without an offset
            "input_tokens": _int(row["ContextTokens"], "ContextTokens"),
            "output_tokens": _int(row["GeneratedTokens"], "GeneratedTokens"),
        }
        return [src.event(line, fields)]

    return _csv(src, f, AZURE_COLUMNS, parse)


def _read_mooncake(src: _Source, f: TextIO) -> Parsed:
    """Mooncake's trace: ms offsets anchored at `start`; `hash_ids` (prefix-cache block ids) are not usage."""

    def parse(line: int, raw: str) -> list[Event]:
        obj = _json(raw)
        fields = {
            "ts": src.start + _float(_key(obj, "timestamp"), "timestamp") / 1000,
            "input_tokens": _int(_key(obj, "input_length"), "input_length"),
            "output_tokens": _int(_key(obj, "output_length"), "output_length"),
        }
        return [src.event(line, fields)]

    return _parsed(_json_lines(f), parse)


def _read_agent(src: _Source, f: TextIO) -> Parsed:
    """Per-call agent CSV: a run is an `instance_id`. `prompt_tokens` already includes
    `cached_tokens` (the cost column matches (prompt − cached) × $2/M + cached ×
    $0.20/M on every priced row), so it is the wire `input_tokens` as is. A resolved
    run yields an `outcome` after its latest call; an empty `cost` leaves pricing
    to the catalog."""
    resolved: dict[str, tuple[int, float]] = {}  # run -> (line, ts) of its latest call

    def parse(line: int, row: dict[str, str]) -> list[Event]:
        output = _int(row["completion_tokens"], "completion_tokens")
        reasoning = _int(row["reasoning_tokens"], "reasoning_tokens")
        if row["provider"] in THOUGHTS_APART_PROVIDERS:
            output += reasoning
        fields = {
            "ts": _float(row["created"], "created"),
            "model": row["model"],
            "provider": row["provider"],
            "run_id": row["instance_id"],
            "step": _int(row["step"], "step"),
            "input_tokens": _int(row["prompt_tokens"], "prompt_tokens"),
            "output_tokens": output,
            "cache_read_tokens": _int(row["cached_tokens"], "cached_tokens"),
            "reasoning_tokens": reasoning,
        }
        if row["cost"]:
            fields["cost_usd"] = _float(row["cost"], "cost")
        if row["resolved"] not in ("True", "False"):
            raise ValueError(f"resolved {row['resolved']!r} is not True or False")
        event = src.event(line, fields)
        run, ts = row["instance_id"], event.ts
        if row["resolved"] == "True" and ts >= resolved.get(run, (0, -math.inf))[1]:
            resolved[run] = (line, ts)
        return [event]

    yield from _csv(src, f, AGENT_COLUMNS, parse)
    for run, (line, ts) in resolved.items():
        outcome = {"type": "outcome", "ts": ts, "run_id": run, "outcome": "resolved"}
        yield line, [src.event(line, outcome, suffix=":outcome")]


def _read_mapped(src: _Source, f: TextIO) -> Parsed:
    """Any CSV, through the caller's ColumnMap; empty cells count as absent."""
    mapping = src.mapping
    assert mapping is not None, "read_traffic checks csv has a mapping"

    def parse(line: int, row: dict[str, str]) -> list[Event]:
        fields = dict(mapping.constants)
        for name, column in mapping.columns.items():
            if row[column]:
                fields[name] = _convert(name, row[column])
        return [src.event(line, fields)]

    return _csv(src, f, mapping.columns.values(), parse)


@dataclass(frozen=True)
class _Format:
    read: Callable[[_Source, TextIO], Parsed]
    by_run: bool = False
    """Sorted only within each run (runs interleave in time): held whole, then sorted."""


_FORMATS = {
    "jsonl": _Format(_read_jsonl),
    "azure": _Format(_read_azure),
    "mooncake": _Format(_read_mooncake),
    "agent-csv": _Format(_read_agent, by_run=True),
    "csv": _Format(_read_mapped),
}


def detect_format(path: str | os.PathLike[str]) -> str:
    """Name a file's format from its first non-empty line; `csv` means a CSV header
    no reader knows, which needs a ColumnMap."""
    path = Path(path)
    with _reading(path), _open(path) as f:
        line, text = next(_json_lines(f), (1, ""))
    head = text.strip()
    if head.startswith(("{", "[")):
        try:
            doc = orjson.loads(head)
        except orjson.JSONDecodeError:
            raise ReplayInputError(path, line, "not valid JSON, so its format is unknown", "pass --format") from None
        first = doc[0] if isinstance(doc, list) and doc else doc
        if isinstance(first, dict) and "type" in first:
            return "jsonl"
        if isinstance(first, dict) and all(key in first for key in MOONCAKE_KEYS):
            return "mooncake"
        raise ReplayInputError(path, line, "JSON that is neither wire events nor a Mooncake trace", "pass --format")
    header = [name.strip() for name in next(csv.reader([head]), [])]
    if header == list(AZURE_COLUMNS):
        return "azure"
    if all(name in header for name in AGENT_COLUMNS):
        return "agent-csv"
    return "csv"


# -- order ----------------------------------------------------------------------------------


def _behind(events: list[Event], latest: dict[Any, tuple[float, int]], by_run: bool) -> str | None:
    """Why `events` break time order (beyond the tolerance), if they do."""
    for event in events:
        ts, group = event.ts, event.run_id if by_run else None
        if group in latest and ts < latest[group][0] - TS_TOLERANCE_S:
            prev_ts, prev_line = latest[group]
            scope = f"run {group}" if by_run else "the file"
            return (
                f"ts {ts:.3f} goes back {prev_ts - ts:.3f} s from line {prev_line} "
                f"(tolerance {TS_TOLERANCE_S:g} s): {scope} must be sorted by time"
            )
    return None


def _in_time_order(src: _Source, parsed: Parsed, by_run: bool, skip_bad: bool, stats: ReadStats) -> Iterator[Event]:
    """Events by (ts, position in file), stopping at or skipping bad lines. Events are
    held TS_TOLERANCE_S behind the newest ts, so in-tolerance jitter comes out
    sorted; `by_run` formats are held whole, since only their runs are sorted."""
    hold = math.inf if by_run else TS_TOLERANCE_S
    held: list[tuple[float, int, Event]] = []
    latest: dict[Any, tuple[float, int]] = {}
    newest, seq = -math.inf, itertools.count()
    for line, result in parsed:
        if isinstance(result, ValueError):
            reason: str | None = str(result)
            events: list[Event] = []
        else:
            events, reason = result, _behind(result, latest, by_run)
        if reason is not None:
            if not skip_bad:
                raise ReplayInputError(src.path, line, reason)
            stats.skip(src.path, line, reason)
            continue
        for event in events:
            ts, group = event.ts, event.run_id if by_run else None
            if ts >= latest.get(group, (-math.inf, 0))[0]:
                latest[group] = (ts, line)
            if ts > newest:
                newest = ts
            heapq.heappush(held, (ts, next(seq), event))
        while held and held[0][0] <= newest - hold:
            stats.read += 1
            yield heapq.heappop(held)[2]
    while held:
        stats.read += 1
        yield heapq.heappop(held)[2]


def _read_file(src: _Source, fmt: str, skip_bad: bool, stats: ReadStats) -> Iterator[Event]:
    spec = _FORMATS[fmt]
    with _reading(src.path), _open(src.path) as f:
        yield from _in_time_order(src, spec.read(src, f), spec.by_run, skip_bad, stats)


def read_traffic(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    fmt: str = "auto",
    attribution: Attribution = Attribution(),
    mapping: ColumnMap | str | None = None,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    start: float = DEFAULT_START,
) -> Iterator[Event]:
    """Validated events (`schemas.structs`) from recorded traffic files, in time order.

    `fmt` is one of FORMATS or `auto` (each file's first line decides; with a
    `mapping`, any CSV is read through it). `start` anchors relative traces
    (epoch seconds). A bad line raises ReplayInputError naming file and line,
    or with `skip_bad` is skipped and counted in `stats`. Each file is sorted
    by ts; several files are merged by ts (ties keep the order of `paths`).
    Formats, paths and the mapping are checked before the first event.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use auto or one of {', '.join(FORMATS)}")
    if isinstance(mapping, str):
        mapping = ColumnMap.parse(mapping)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stats = stats if stats is not None else ReadStats()
    streams = []
    for path in map(Path, paths):
        file_fmt = fmt if fmt != "auto" else detect_format(path)
        if mapping is not None and file_fmt in ("azure", "agent-csv"):
            file_fmt = "csv"
        if file_fmt == "csv" and mapping is None:
            raise ReplayInputError(path, 1, "CSV header of no known trace", "name its columns with --map")
        src = _Source(path, attribution, start, mapping)
        streams.append(_read_file(src, file_fmt, skip_bad, stats))
    return heapq.merge(*streams, key=attrgetter("ts"))
