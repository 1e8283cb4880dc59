"""Rollups records: what a batch writes (`snapshot_records`) reads back whole, and any JSON is either
refused with a ValueError or split into the snapshots that pass and the reasons the others did not."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from detectors.engine.rollup import parse_snapshots, snapshot_records

names = st.text(min_size=1, max_size=8)
snapshot = st.fixed_dictionaries({
    "team": st.sampled_from(["cx", "ops", "growth"]), "workflow": names,
    "ts": st.floats(0, 2e9), "periods": st.dictionaries(names, st.integers(0, 2**53), max_size=3)})
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
                           max_leaves=12)


@given(st.lists(snapshot, max_size=40), st.integers(1, 7))
def test_every_snapshot_of_a_batch_reads_back_once_from_its_team_record(snaps: list[dict], per_record: int) -> None:
    read = []
    for team, part in snapshot_records(snaps, per_record):
        assert 1 <= len(part) <= per_record and {s["team"] for s in part} == {team}
        good, bad = parse_snapshots(orjson.dumps(part))
        assert bad == []
        read.extend(good)
    key = lambda s: orjson.dumps(s, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert sorted(map(key, read)) == sorted(map(key, snaps))


@given(json_values)
def test_any_json_is_refused_or_split_into_good_and_bad(doc: object) -> None:
    good, bad = parse_snapshots(orjson.dumps(doc))
    items = doc if isinstance(doc, list) else [doc]
    assert len(good) + len(bad) == len(items)
    assert all(isinstance(reason, str) and reason for reason in bad)


@given(st.binary(max_size=200) | st.none())
def test_any_bytes_are_refused_with_a_value_error_or_read(raw: bytes | None) -> None:
    try:
        parse_snapshots(raw)
    except ValueError as err:
        assert str(err).startswith("not valid JSON")
