"""Recorded-traffic readers on real trace slices (tests/data) and on broken input."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from replay.readers import (
    DEFAULT_START,
    Attribution,
    ColumnMap,
    ReadStats,
    ReplayInputError,
    cell_ts,
    detect_format,
    read_traffic,
)
from schemas.decode import validate_event
from schemas.events import parse_ts
from schemas.structs import to_wire

DATA = Path(__file__).parent / "data"
AZURE = DATA / "azure_code_slice.csv"
MOONCAKE = DATA / "mooncake_slice.jsonl"
AGENT = DATA / "mini_swe_agent_slice.csv"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def read(*args, **kwargs) -> list[dict]:
    """Events of `read_traffic` as wire objects (defaults left out)."""
    return [to_wire(e) for e in read_traffic(*args, **kwargs)]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_sorted_and_valid(events: list[dict]) -> None:
    assert all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
    for event in events:
        validate_event(event)
    assert len({e["event_id"] for e in events}) == len(events)


@pytest.mark.parametrize("path", [AZURE, MOONCAKE, AGENT])
def test_slices_read_sorted_valid_and_deterministic(path: Path) -> None:
    first = read(path)
    assert first == read(path)
    assert_sorted_and_valid(first)


def test_azure_slice() -> None:
    stats = ReadStats()
    events = read(AZURE, stats=stats)
    assert (len(events), stats.read, stats.skipped) == (150, 150, 0)
    # row 2: 2023-11-16 18:17:03.9799600,4808,10 (naive, UTC)
    assert events[0] == {
        "type": "usage",
        "event_id": "azure_code_slice.csv:2",
        "ts": pytest.approx(1700158623.97996),
        "input_tokens": 4808,
        "output_tokens": 10,
        "workflow": "replay",
        "model": "gpt-4o-mini",
    }


def test_mooncake_slice_is_anchored_at_start() -> None:
    events = read(MOONCAKE)
    assert len(events) == 120
    assert events[0]["ts"] == DEFAULT_START == 1735689600.0
    last = events[-1]  # line 120: timestamp 41999 ms, 87172 in, 7 out
    assert last["event_id"] == "mooncake_slice.jsonl:120"
    assert (last["ts"], last["input_tokens"], last["output_tokens"]) == (DEFAULT_START + 41.999, 87172, 7)
    shifted = read(MOONCAKE, start=1_700_000_000.0)
    assert shifted[-1]["ts"] == pytest.approx(1_700_000_041.999)


def test_agent_slice_runs_costs_and_outcomes() -> None:
    events = read(AGENT, attribution=Attribution(workflow="swe-bench", team="agents"))
    usage = [e for e in events if e["type"] == "usage"]
    outcomes = [e for e in events if e["type"] == "outcome"]
    assert len(usage) == 75
    assert {e["run_id"] for e in outcomes} == {"django__django-11163", "scikit-learn__scikit-learn-13135"}
    # line 2: django__django-10999,1,1763509894,google/gemini-3-pro-preview,Google,1524,296,0,242,0.0066,False,...
    first_row = next(e for e in usage if e["event_id"] == "mini_swe_agent_slice.csv:2")
    assert first_row == {
        "type": "usage",
        "event_id": "mini_swe_agent_slice.csv:2",
        "ts": 1763509894.0,
        "model": "google/gemini-3-pro-preview",
        "provider": "Google",
        "run_id": "django__django-10999",
        "step": 1,
        "input_tokens": 1524,
        "output_tokens": 296,  # OpenRouter: reasoning already inside
                "reasoning_tokens": 242,
        "cost_usd": 0.0066,
        "workflow": "swe-bench",
        "team": "agents",
    }
    # direct Gemini API row: completion 73 excludes its 195 thinking tokens; no cost given
    gemini = next(e for e in usage if e["event_id"] == "mini_swe_agent_slice.csv:33")
    assert (gemini["output_tokens"], gemini["reasoning_tokens"], "cost_usd" in gemini) == (268, 195, False)
    # an outcome comes after every call of its run, at the time of the last one
    for outcome in outcomes:
        calls = [i for i, e in enumerate(events) if e.get("run_id") == outcome["run_id"] and e["type"] == "usage"]
        assert events.index(outcome) > max(calls)
        assert outcome["ts"] == events[max(calls)]["ts"]
        assert outcome["outcome"] == "resolved" and outcome["workflow"] == "swe-bench"
    for run in {e["run_id"] for e in usage}:
        steps = [e["step"] for e in usage if e["run_id"] == run]
        assert steps == list(range(1, len(steps) + 1))


def test_detect_format(tmp_path: Path) -> None:
    wire = write(tmp_path / "wire.log", '{"type":"usage"}\n')
    other = write(tmp_path / "other.csv", "a,b\n1,2\n")
    assert [detect_format(p) for p in (AZURE, MOONCAKE, AGENT, wire, other)] == [
        "azure", "mooncake", "agent-csv", "jsonl", "csv",
    ]
    with pytest.raises(ReplayInputError, match="--map"):
        read_traffic(other)
    with pytest.raises(ReplayInputError, match="pass --format"):
        read_traffic(write(tmp_path / "x.json", '{"foo": 1}\n'))


def wire_event(i: int, ts: float | str, **extra: object) -> dict:
    base = {"type": "usage", "event_id": f"e{i}", "ts": ts, "workflow": "w", "model": "m"}
    return base | {"input_tokens": 10, "output_tokens": 5} | extra


def test_gzip_jsonl_by_magic_bytes_with_arrays(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(wire_event(1, "2025-01-01T00:00:00Z")),
        orjson.dumps([wire_event(2, 1735689601.5), wire_event(3, 1735689602, team="t")]),
        b"",
        orjson.dumps({"type": "outcome", "event_id": "o", "ts": 1735689603, "workflow": "w", "outcome": "done"}),
    ]
    path = tmp_path / "events.jsonl"  # gzip inside, despite the name
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    assert detect_format(path) == "jsonl"
    events = read(path, attribution=Attribution(team="ignored"))
    assert [e["event_id"] for e in events] == ["e1", "e2", "e3", "o"]
    assert events[0]["ts"] == 1735689600.0  # RFC 3339 in, epoch seconds out
    assert events[2]["team"] == "t" and "team" not in events[1]  # wire events attribute themselves


def test_mapped_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "calls.csv",
        "created,prompt,completion,model_name,cost\n"
        "2025-01-01T00:00:01Z,100,20,gpt-4o,0.5\n"
        "1735689602,200,30,claude-x,\n",
    )
    mapping = "ts=created, input_tokens=prompt, output_tokens=completion, model=model_name, cost_usd=cost, service='search'"
    events = read(path, mapping=mapping, attribution=Attribution(workflow="search", runs=2))
    assert events[0] == {
        "type": "usage",
        "event_id": "calls.csv:2",
        "ts": 1735689601.0,
        "service": "search",
        "input_tokens": 100,
        "output_tokens": 20,
        "model": "gpt-4o",
        "cost_usd": 0.5,
        "workflow": "search",
        "run_id": "calls.csv:run0",
        "step": 1,
    }
    assert "cost_usd" not in events[1] and events[1]["run_id"] == "calls.csv:run1"
    assert ColumnMap.parse("ts=a, team='x', step='3'") == ColumnMap({"ts": "a"}, {"team": "x", "step": 3})
    # a mapping is checked before any line is read
    with pytest.raises(ValueError, match="not a wire field"):
        read_traffic(path, mapping="ts=created,tokens=prompt")
    with pytest.raises(ReplayInputError, match=r"calls\.csv:1: missing column\(s\) nope"):
        read(path, mapping="ts=created,input_tokens=nope")


def test_one_timestamp_rule_with_the_replay_exceptions() -> None:
    """The wire's rule everywhere; a CSV cell may hold a number, a trace may write UTC without an offset."""
    assert parse_ts(1735689600) == parse_ts("2025-01-01T00:00:00Z") == cell_ts("1735689600") == 1735689600.0
    with pytest.raises(ValueError, match="neither epoch seconds nor RFC 3339"):
        parse_ts("1735689600")  # the wire: a number in a string is refused
    with pytest.raises(ValueError, match="no timezone offset"):
        cell_ts("2025-01-01 00:00:00")  # a mapped CSV column holds wire timestamps
    assert cell_ts(" 2025-01-01 00:00:00.5000000 ", "TIMESTAMP", naive_utc=True) == 1735689600.5  # Azure, NAB: UTC
    assert cell_ts("2025-01-01 01:00:00+01:00", naive_utc=True) == 1735689600.0  # an offset, where given, counts
    with pytest.raises(ValueError, match="TIMESTAMP 1735689600000.0 is outside 2000..2100"):
        cell_ts("1735689600000", "TIMESTAMP", naive_utc=True)  # milliseconds
    with pytest.raises(ValueError, match="timestamp 'yesterday' is neither"):
        cell_ts("yesterday", "timestamp", naive_utc=True)


def test_missing_column_names_the_header_line(tmp_path: Path) -> None:
    path = write(tmp_path / "az.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n")
    with pytest.raises(ReplayInputError, match=r"az\.csv:1: missing column\(s\) GeneratedTokens"):
        read(path, fmt="azure", skip_bad=True)


def test_broken_json_line(tmp_path: Path) -> None:
    good = MOONCAKE.read_text().splitlines()[:4]
    path = write(tmp_path / "mc.jsonl", "\n".join(good[:2] + ['{"timestamp": 0, "input_len'] + good[2:]) + "\n")
    with pytest.raises(ReplayInputError, match=r"mc\.jsonl:3: not valid JSON .*--skip-bad"):
        read(path)
    stats = ReadStats()
    assert len(read(path, skip_bad=True, stats=stats)) == 4
    assert (stats.read, stats.skipped) == (4, 1) and stats.reasons[0].startswith(f"{path}:3: not valid JSON")


def test_bad_values_are_bad_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "az.csv",
        AZURE_HEADER + "2023-11-16 18:17:03.9,48,10\n"
        "2023-11-16 18:17:04.0,abc,8\n"  # non-numeric tokens
        "2023-11-16 18:17:04.1,110\n"  # a field short
        "yesterday,110,27\n"  # not a time
        "2023-11-16 18:17:04.2,-5,27\n"  # fails the wire contract
        "2023-11-16 18:17:04.3,7,14\n",
    )
    with pytest.raises(ReplayInputError, match=r"az\.csv:3: ContextTokens 'abc' is not an integer"):
        read(path)
    stats = ReadStats()
    events = read(path, skip_bad=True, stats=stats)
    assert [e["event_id"] for e in events] == ["az.csv:2", "az.csv:7"]
    assert stats.skipped == 4
    assert [r.split(": ", 1)[0] for r in stats.reasons] == [f"{path}:{n}" for n in (3, 4, 5, 6)]
    assert "2 fields where the header has 3" in stats.reasons[1]
    assert "input_tokens" in stats.reasons[3]


def test_wire_contract_errors_name_array_item(tmp_path: Path) -> None:
    bad = wire_event(2, 1735689601, cache_read_tokens=50)  # cache beyond input_tokens
    path = write(tmp_path / "w.jsonl", orjson.dumps([wire_event(1, 1735689600), bad]).decode() + "\n")
    with pytest.raises(ReplayInputError, match=r"w\.jsonl:1: \[1\] .*cache_read_tokens \+ cache_write_tokens exceed"):
        read(path)


def test_unsorted_timestamps(tmp_path: Path) -> None:
    path = write(
        tmp_path / "az.csv",
        AZURE_HEADER + "2023-11-16 18:17:10.0,1,1\n"
        "2023-11-16 18:17:09.5,2,2\n"  # 0.5 s back: within tolerance, reordered
        "2023-11-16 18:17:05.0,3,3\n"  # 5 s back: unsorted
        "2023-11-16 18:17:11.0,4,4\n",
    )
    with pytest.raises(ReplayInputError, match=r"az\.csv:4: ts .* goes back 5\.000 s from line 2"):
        read(path)
    stats = ReadStats()
    events = read(path, skip_bad=True, stats=stats)
    assert [e["input_tokens"] for e in events] == [2, 1, 4]
    assert stats.skipped == 1


def test_agent_csv_is_sorted_per_run(tmp_path: Path) -> None:
    rows = AGENT.read_text().splitlines()
    header, run = rows[0], [r for r in rows[1:] if r.startswith("django__django-11163,")]
    swapped = run[:3] + [run[4], run[3]] + run[5:]  # step 5 (t+15 s) before step 4
    path = write(tmp_path / "agent.csv", "\n".join([header, *swapped]) + "\n")
    with pytest.raises(ReplayInputError, match=r"agent\.csv:6: .* run django__django-11163 must be sorted"):
        read(path)


def test_several_files_merge_by_ts() -> None:
    azure_start = next(read_traffic(AZURE)).ts
    stats = ReadStats()
    events = read([AZURE, MOONCAKE], start=azure_start, stats=stats)
    assert len(events) == stats.read == 270
    assert_sorted_and_valid(events)
    assert {e["event_id"].split(":")[0] for e in events[:20]} == {"azure_code_slice.csv", "mooncake_slice.jsonl"}


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(AZURE_HEADER.encode() + b"2023-11-16 18:17:03.9,4\xe9,1\n")
    truncated = tmp_path / "cut.jsonl"
    truncated.write_bytes(gzip.compress(MOONCAKE.read_bytes())[:500])
    for path in (latin1, truncated):
        with pytest.raises(ReplayInputError, match=rf"{path.name}: cannot be read"):
            read(path)
