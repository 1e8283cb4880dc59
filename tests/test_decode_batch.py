"""Records decoded together (`schemas.decode.parse_records`) give exactly what each decoded alone gives.

The batch path joins single-object records as JSON lines; a record crafted to splice
into its neighbour (an object left open, a second object after the first, a line break
inside) must not make events out of two invalid records, nor shift events between records.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import limits
from schemas.decode import parse_record, parse_records


def usage(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"type": "usage", "event_id": f"e{i}", "ts": 1.8e9 + i, "workflow": "w", "model": "gpt-4o",
                         "input_tokens": i, "output_tokens": 1, **extra})


def outcome(i: int) -> bytes:
    return orjson.dumps({"type": "outcome", "event_id": f"o{i}", "ts": 1.8e9 + i, "workflow": "w",
                         "outcome": "ticket_resolved"})


def spliced(a: bytes, b: bytes, cut: int) -> tuple[bytes, bytes]:
    """Two valid records, joined by a comma as an array would, then cut somewhere else."""
    both = a + b"," + b
    cut = max(1, min(cut, len(both) - 1))
    return both[:cut], both[cut:]


def outcome_of(raws: list[bytes | None], batch: bool, max_bytes: int = limits.MAX_RECORD_BYTES,
               ) -> list[tuple[list[Any], list[str]]]:
    unknown: Counter[str] = Counter()
    got = (parse_records(raws, max_bytes, unknown=unknown) if batch
           else [parse_record(r, max_bytes, unknown=unknown) for r in raws])
    return [(evs, [e.reason for e in errs]) for evs, errs in got] + [([], sorted(unknown.items()))]


records = st.one_of(
    st.integers(0, 10_000).map(usage),
    st.integers(0, 10_000).map(outcome),
    st.integers(0, 100).map(lambda i: usage(i, region="eu")),  # an unknown field: counted, event kept
    st.integers(0, 100).map(lambda i: usage(i, input_tokens=-1)),  # invalid value
    st.integers(0, 100).map(lambda i: usage(i).replace(b",", b",\n", 1)),  # pretty-printed: a line break inside
    st.integers(0, 100).map(lambda i: b"[" + usage(i) + b"," + outcome(i) + b"]"),
    st.integers(0, 100).map(lambda i: usage(i) + b"," + usage(i + 1)),  # two objects, no array
    st.integers(0, 100).map(lambda i: b"  " + usage(i) + b"  "),
    st.binary(max_size=40),
    st.none(),
)


@st.composite
def batches(draw: st.DrawFn) -> list[bytes | None]:
    raws: list[bytes | None] = draw(st.lists(records, min_size=0, max_size=12))
    if draw(st.booleans()):  # a pair of records that only make sense read together
        a, b = spliced(usage(draw(st.integers(0, 99))), usage(draw(st.integers(0, 99))), draw(st.integers(1, 400)))
        at = draw(st.integers(0, len(raws)))
        raws[at:at] = [a, b]
    return raws


@settings(max_examples=300, deadline=None)
@given(batches())
def test_a_batch_decodes_exactly_as_its_records_one_by_one(raws: list[bytes | None]) -> None:
    assert outcome_of(raws, batch=True) == outcome_of(raws, batch=False)


braced = st.one_of(  # records that open with `{`, as single-event records do: the batch's fast gate's input
    st.integers(0, 10_000).map(usage),
    st.integers(0, 10_000).map(outcome),
    st.integers(0, 100).map(lambda i: usage(i, region="eu")),
    st.integers(0, 100).map(lambda i: usage(i, input_tokens=-1)),
    st.integers(0, 100).map(lambda i: usage(i).replace(b",", b",\n{", 1)),  # a line break that looks like the next line
    st.integers(0, 100).map(lambda i: usage(i) + b"," + usage(i + 1)),
    st.integers(0, 100).map(lambda i: usage(i) + b"\n"),
    st.binary(max_size=20).map(lambda b: b"{" + b),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(braced, min_size=2, max_size=12), st.sampled_from([limits.MAX_RECORD_BYTES, 120, 100]))
def test_a_batch_of_braced_records_decodes_exactly_as_its_records_one_by_one(raws: list[bytes | None],
                                                                             max_bytes: int) -> None:
    assert outcome_of(raws, True, max_bytes) == outcome_of(raws, False, max_bytes)


def test_valid_single_event_records_map_to_their_own_events() -> None:
    raws: list[bytes | None] = [usage(i) if i % 2 else outcome(i) for i in range(50)]
    got = parse_records(raws)
    assert [evs[0].event_id for evs, _ in got] == [f"e{i}" if i % 2 else f"o{i}" for i in range(50)]


def test_two_invalid_halves_of_a_spliced_pair_stay_invalid() -> None:
    """`{v1},{"k":"ab` + `{cd"}` read as JSON text would be two events; each record alone is not JSON."""
    first = usage(1) + b',{"type":"usage","event_id":"x","ts":1.8e9,"workflow":"w","model":"m","labels":{"k":"ab'
    second = b'{cd"},"input_tokens":1,"output_tokens":1}'
    got = parse_records([first, second])
    assert [evs for evs, _ in got] == [[], []]
    assert all(errs for _, errs in got)
