"""`python -m spendwatch.bench.core`: the core's and the decoder's cost per event, and the floor they set."""

import math

from spendwatch.bench import core


def test_floor_is_decode_plus_process() -> None:
    r = core.run(2_000, repeat=1)
    assert r["events"] == 2_000
    for per_record in ("", "single_"):
        decode, process = r[f"{per_record}decode_us"], r[f"{per_record}us" if per_record else "process_us"]
        assert decode > 0 and process > 0
        assert math.isclose(r[f"{per_record}floor_eps"], 1e6 / (decode + process), rel_tol=1e-9)


def test_decode_batches_hold_as_many_events_as_process_batches() -> None:
    raw = core.batches(core.values(40_000), core.BATCH // 500)
    assert [sum(v.count(b'"event_id"') for v in chunk) for chunk in raw] == [core.BATCH, core.BATCH]
