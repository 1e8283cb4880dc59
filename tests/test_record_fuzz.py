"""Record fuzzing through the real worker on the embedded broker: bad input never stops the stream.

One worker, one run. A fixed corpus of bad records by category (invalid JSON, wrong types, NaN
and Infinity, negative and huge tokens, records over the size limit, non-UTF-8 bytes, empty
arrays, arrays mixing good and bad events, null keys, tombstones, keys that differ from the
workflow, far-past and far-future timestamps, 2 MB strings) and a hypothesis-generated set
(garbage bytes, events with one field made invalid, arrays mixing those with good events and
junk) are generated once and published together, then checked:

- the worker process stays up;
- every bad record, or bad array element, is in the dead-letter topic at its source partition
  and offset, with a reason (counted per category; nothing else is dead-lettered);
- valid events' totals (micro-USD, tokens, calls) are exact, events of bad records count nowhere.

`HYPOTHESIS_PROFILE=fuzz` (`make fuzz`) generates 3,000 records instead of 150
(tests/recfuzz_profiles.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors.engine.counters import CALLS, COST, INPUT, OUTPUT
from schemas import limits
from streams.broker import EmbeddedBroker
from streams.workflow_table import latest_states
from tests.conftest import ROOT, start_worker
from tests.kafka_io import create_topic, read_all
from tests.recfuzz_profiles import profile

NOW = time.time()
MODEL = "fuzz-llm-unpriced"  # the fallback rate: 10 µUSD per input token, 30 per output token
TOPIC = "spendwatch.usage"
CONFIG = "max_behind_s = 604800\n"  # a week: older events are history, dead-lettered (max_ahead_s stays 600)
DAY = 86_400


@dataclass
class Rec:
    category: str
    key: bytes | None
    value: bytes | None
    bad: int  # dead letters it must produce (one per bad event, or one for the whole record)
    goods: list[dict[str, Any]] = field(default_factory=list)  # valid usage events in it
    allowed: frozenset[int] | None = None  # dead-letter counts accepted, when more than one is fine
    note: str = ""
    bad_ids: frozenset[str] = frozenset()  # event ids of its bad events (re-routed ones are dead-lettered later)

    def ok_counts(self) -> frozenset[int]:
        return self.allowed if self.allowed is not None else frozenset({self.bad})


_ids = itertools.count()


def good(wf: str, inp: int = 1_000, out: int = 100, **extra: Any) -> dict[str, Any]:
    n = next(_ids)
    return {"type": "usage", "event_id": f"ok-{n}", "ts": round(NOW - 300 + n * 0.001, 3), "workflow": wf,
            "model": MODEL, "input_tokens": inp, "output_tokens": out, **extra}


def bad(wf: str, **changes: Any) -> dict[str, Any]:
    """A usage event with `changes` applied (a value of ... deletes the field)."""
    ev = good(wf)
    ev["event_id"] = ev["event_id"].replace("ok-", "bad-")
    for k, v in changes.items():
        if v is ...:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


def js(doc: Any) -> bytes:
    """JSON the way a careless publisher writes it: big ints kept, NaN/Infinity as literals."""
    return json.dumps(doc, allow_nan=True).encode()


def one(category: str, doc: dict[str, Any], note: str = "") -> Rec:
    return Rec(category, str(doc.get("workflow", "bad")).encode()[:200], js(doc), 1, note=note)


def fixed_corpus() -> list[Rec]:
    R: list[Rec] = []
    add = R.append

    # invalid JSON
    for raw in (b"{not json", b"", b'[{"type":"usage"', b'{"type":"usage"}}', b"\x00\x01\x02", b"{'single': 'quotes'}",
                b'{"type":"usage","event_id":"a",}'):
        add(Rec("invalid_json", b"bad-json", raw, 1))

    # wrong types
    for i, changes in enumerate([
        {"input_tokens": "many"}, {"input_tokens": 1.5}, {"input_tokens": [1]}, {"input_tokens": None},
        {"input_tokens": True},  # a boolean is not a token count (pydantic's lax mode reads it as 1)
        {"cost_usd": True},  # ...nor a price (read as $1.00)
        {"cost_usd": "cheap"}, {"workflow": 5}, {"ts": "yesterday"}, {"ts": True}, {"ts": "2026-01-15T10:00:00"},
        {"event_id": None}, {"labels": ["a"]}, {"labels": {"k": 5}}, {"type": "refund"}, {"type": None},
        {"model": ...}, {"model": ""}, {"step": -1}, {"status": None},
    ]):
        add(one("wrong_types", bad(f"bad-types-{i}", **changes), note=str(changes)))
    for raw in (b'"just a string"', b"42", b"null", b"true", b"3.5"):
        add(Rec("wrong_types", b"bad-types", raw, 1))
    add(Rec("wrong_types", b"bad-types-outcome", js({"type": "outcome", "event_id": "o1", "ts": NOW, "workflow":
                                                     "bad-types-outcome", "outcome": "ok", "value_usd": "lots"}), 1))

    # NaN and Infinity (not JSON at all, or out of a double's range)
    for i, (k, lit) in enumerate([("input_tokens", "NaN"), ("ts", "Infinity"), ("cost_usd", "-Infinity"),
                                  ("latency_ms", "NaN"), ("cost_usd", "1e999"), ("ts", "1e400"),
                                  ("output_tokens", "-1e999")]):
        doc = bad(f"bad-nan-{i}")
        doc[k] = "@@"
        add(Rec("nan_infinity", doc["workflow"].encode(), js(doc).replace(b'"@@"', lit.encode()), 1, note=f"{k}={lit}"))

    # negative and huge token counts
    for i, changes in enumerate([
        {"input_tokens": -5}, {"output_tokens": -1}, {"input_tokens": limits.MAX_TOKENS + 1}, {"input_tokens": 2**63},
        {"output_tokens": 2**64 + 5}, {"input_tokens": 10**30}, {"cache_read_tokens": -3},
        {"cache_read_tokens": 2_000},  # more than input_tokens (1,000)
        {"reasoning_tokens": 101},  # more than output_tokens (100)
        {"step": 10**12}, {"cost_usd": -0.5}, {"cost_usd": limits.MAX_COST_USD * 10},
    ]):
        add(one("bad_numbers", bad(f"bad-num-{i}", **changes), note=str(changes)))

    # over the size limit, and exactly at it
    events = [good("fz-at-limit") for _ in range(100)]
    raw = orjson.dumps(events)
    add(Rec("size_limit", b"fz-at-limit", raw + b" " * (limits.MAX_RECORD_BYTES - len(raw)), 0, events,
            note="exactly MAX_RECORD_BYTES: counted"))
    over = [bad("bad-over-limit") for _ in range(100)]
    raw = orjson.dumps(over)
    add(Rec("size_limit", b"bad-over-limit", raw + b" " * (limits.MAX_RECORD_BYTES + 1 - len(raw)), 1,
            note="one byte over: dead-lettered whole"))
    add(Rec("size_limit", b"bad-too-many", orjson.dumps([{}] * (limits.MAX_EVENTS_PER_RECORD + 1)), 1,
            note="more events than an array may hold"))

    # 2 MB strings (over the record limit), and long strings under it
    add(one("huge_strings", bad("bad-huge-id", event_id="x" * 2_000_000)))
    add(one("huge_strings", bad("bad-huge-label", labels={"k": "y" * 2_000_000})))
    add(Rec("huge_strings", b"w", js(bad("w" * 900_000)), 1, note="900 KB workflow name, under the record limit"))
    add(one("huge_strings", bad("bad-long-model", model="m" * 600_000)))
    add(one("huge_strings", bad("bad-long-label", labels={"k": "v" * (limits.MAX_ID_LEN + 1)})))
    add(one("huge_strings", bad("bad-many-labels", labels={f"k{i}": "v" for i in range(limits.MAX_LABELS + 1)})))
    ev = good("fz-huge-key")
    add(Rec("huge_strings", b"k" * 2_000_000, js(ev), 0, [ev], note="2 MB key: re-routed by workflow, counted"))

    # non-UTF-8 bytes
    add(Rec("non_utf8", b"bad-bytes", b"\xff\xfe binary garbage", 1))
    add(Rec("non_utf8", b"bad-bytes", js(bad("bad-bytes")).replace(b'"bad-', b'"\xc3\x28bad-', 1), 1,
            note="invalid UTF-8 inside a string"))
    add(Rec("non_utf8", b"bad-latin1", json.dumps(bad("bad-caf\u00e9"), ensure_ascii=False).encode("latin-1"), 1))
    add(Rec("non_utf8", b"bad-utf16", json.dumps(bad("bad-utf16")).encode("utf-16"), 1))
    add(Rec("non_utf8", b"bad-bom", b"\xef\xbb\xbf" + js(bad("bad-bom")), 1, note="UTF-8 BOM"))
    ev = good("fz-binary-key")
    add(Rec("non_utf8", b"\xff\xfe\x00", js(ev), 0, [ev], note="non-UTF-8 key, valid event: re-routed, counted"))

    # empty arrays: no events, nothing to count (dead-lettering them is accepted too)
    for raw in (b"[]", b"  [ ]  ", b"[\n]"):
        add(Rec("empty_arrays", b"fz-empty", raw, 0, allowed=frozenset({0, 1})))
    add(Rec("empty_arrays", None, b"[]", 0, allowed=frozenset({0, 1})))

    # arrays mixing good and bad events
    g = [good("fz-mixed") for _ in range(4)]
    other = good("fz-mixed-other")
    outcome = {"type": "outcome", "event_id": "fz-outcome-1", "ts": NOW - 200, "workflow": "fz-mixed",
               "outcome": "resolved"}
    add(Rec("mixed_arrays", b"fz-mixed", js([g[0], bad("fz-mixed", input_tokens="x"), g[1], 5, "x", None, [], {},
                                             other, outcome, bad("fz-mixed", ts=1), g[2]]),
            7, [g[0], g[1], other, g[2]]))
    add(Rec("mixed_arrays", b"fz-mixed", js([g[3], bad("fz-mixed", input_tokens=10**30), g[3]]), 1, [g[3]],
            note="a 10^30 neighbour; the same good event twice in one array counts once"))
    add(Rec("mixed_arrays", b"fz-mixed", js([bad("fz-mixed", model=...), bad("fz-mixed", type="x")]), 2))

    # null keys
    ev = good("fz-null-key")
    add(Rec("null_keys", None, js(ev), 0, [ev], note="valid event without a key: re-routed, counted"))
    evs = [good("fz-null-key") for _ in range(3)]
    add(Rec("null_keys", None, js(evs), 0, evs))
    add(Rec("null_keys", None, b"{not json", 1))
    ev = good("fz-empty-key")
    add(Rec("null_keys", b"", js(ev), 0, [ev], note="empty key"))

    # tombstones (null values)
    for key in (b"fz-tomb", b"fz-tomb", b""):  # (aiokafka will not send a record with neither key nor value)
        add(Rec("tombstones", key, None, 1))

    # keys that differ from the workflow
    evs = [good("fz-rekeyed") for _ in range(3)]
    add(Rec("other_keys", b"someone-else", js(evs), 0, evs))
    a, b_ = good("fz-key-a"), good("fz-key-b")
    add(Rec("other_keys", b"fz-key-a", js([a, b_]), 0, [a, b_]))
    ev = good("fz-case")
    add(Rec("other_keys", b"FZ-CASE", js(ev), 0, [ev]))

    # far-past and far-future timestamps, on a workflow with an event time of its own
    first = good("fz-time", ts=NOW - 100)
    add(Rec("timestamps", b"fz-time", js(first), 0, [first]))
    soon = good("fz-time", ts=NOW + 60)
    add(Rec("timestamps", b"fz-time", js(soon), 0, [soon], note="a minute ahead: within max_ahead_s"))
    rfc = good("fz-time", ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 50)))
    add(Rec("timestamps", b"fz-time", js(rfc), 0, [rfc], note="RFC 3339"))
    for ts, note in [(NOW - 7_200, "two hours behind the workflow: beyond the dedup window, late"),
                     (NOW - 30 * DAY, "a month ago: beyond max_behind_s"), (NOW + DAY, "a day ahead"),
                     (NOW + 20 * 365 * DAY, "20 years ahead"), (1, "1970"), (limits.TS_MAX + 1, "after 2100"),
                     (NOW * 1000, "milliseconds"), (-1e9, "negative")]:
        add(Rec("timestamps", b"fz-time", js(bad("fz-time", ts=ts)), 1, note=note))
    return R


# --- hypothesis: records whose fate is known by construction ---------------------------------

HYP_WORKFLOWS = [f"hz-{i}" for i in range(6)]
SAFE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # no lone surrogates
NON_NUMERIC = SAFE.map(lambda s: "x" + s)


def bad_str(max_len: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.none(), st.booleans(),
                     st.lists(SAFE, max_size=2), st.just(""), st.text("abc", min_size=max_len + 1, max_size=max_len + 20))


BAD_INT = st.one_of(st.integers(max_value=-1), st.integers(min_value=limits.MAX_TOKENS + 1, max_value=10**40),
                    NON_NUMERIC, st.lists(st.integers(), max_size=2), st.none(),
                    st.dictionaries(SAFE, st.integers(), max_size=2))
BAD_TS = st.one_of(NON_NUMERIC, st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
                   st.floats(max_value=limits.TS_MIN - 1, allow_infinity=False),
                   st.floats(min_value=limits.TS_MAX + 1, allow_infinity=False),
                   st.floats(min_value=NOW + 3_600, max_value=limits.TS_MAX),  # ahead of the wall clock
                   st.floats(min_value=limits.TS_MIN, max_value=NOW - 8 * DAY),  # behind max_behind_s
                   st.sampled_from([math.nan, math.inf, -math.inf]),  # NaN/Infinity literals: not JSON
                   st.just("2026-01-15T10:00:00"))  # RFC 3339 without an offset
MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "input_tokens": BAD_INT, "output_tokens": BAD_INT, "cache_read_tokens": BAD_INT, "reasoning_tokens": BAD_INT,
    "workflow": bad_str(limits.MAX_NAME_LEN), "model": bad_str(limits.MAX_NAME_LEN),
    "event_id": bad_str(limits.MAX_ID_LEN), "status": bad_str(limits.MAX_NAME_LEN), "ts": BAD_TS,
    "type": st.one_of(SAFE.filter(lambda s: s not in ("usage", "outcome")), st.integers(), st.none()),
    "labels": st.one_of(st.lists(SAFE, min_size=1, max_size=3), SAFE, st.integers(),
                        st.dictionaries(SAFE.filter(bool), st.integers(), min_size=1, max_size=3),
                        st.dictionaries(st.text("abcdefgh", min_size=1, max_size=6), SAFE, min_size=33, max_size=40)),
    "cost_usd": st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), NON_NUMERIC,
                          st.floats(min_value=limits.MAX_COST_USD * 1.01, allow_infinity=False)),
}
REQUIRED = ["type", "event_id", "ts", "workflow", "model", "input_tokens", "output_tokens"]

GOOD = st.fixed_dictionaries(
    {"workflow": st.sampled_from(HYP_WORKFLOWS), "input_tokens": st.integers(0, 10**6),
     "output_tokens": st.integers(0, 10**5)},
    optional={"team": st.sampled_from(["t-a", "t-b"]), "agent_id": st.sampled_from(["ag-1", "ag-2"]),
              "run_id": st.sampled_from(["r-1", "r-2", "r-3"]), "step": st.integers(0, 1000),
              "status": st.sampled_from(["ok", "error", "timeout"]), "provider": st.just("self-hosted"),
              "labels": st.dictionaries(st.sampled_from(["env", "region", "tier"]), SAFE, max_size=3),
              "latency_ms": st.floats(0, 1e6),
              "x-newer-field": st.integers()})  # a field a newer publisher added: ignored, the event counts
MUTATION = st.one_of(
    st.sampled_from(sorted(MUTATIONS)).flatmap(lambda f: st.tuples(st.just("set"), st.just(f), MUTATIONS[f])),
    st.tuples(st.just("drop"), st.sampled_from(REQUIRED), st.none()),
    st.tuples(st.just("parts"), st.sampled_from(["cache_read_tokens", "reasoning_tokens"]), st.integers(1, 1000)),
)
JUNK = st.one_of(st.integers(-10, 10), SAFE, st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
                 st.just({}))
ITEM = st.one_of(GOOD.map(lambda e: ("good", e)), st.tuples(GOOD, MUTATION).map(lambda x: ("bad", x)),
                 JUNK.map(lambda j: ("junk", j)))
PLAN = st.one_of(
    st.binary(max_size=300).map(lambda b: ("garbage", b)),
    st.tuples(GOOD, MUTATION).map(lambda x: ("one-bad", x)),
    GOOD.map(lambda e: ("one-good", e)),
    st.lists(ITEM, max_size=8).map(lambda items: ("array", items)),
)
KEYING = st.sampled_from(["workflow"] * 8 + ["null", "other"])


def generated_plans(n: int | None = None) -> list[tuple[Any, str]]:
    plans: list[tuple[Any, str]] = []
    conf = profile()

    @conf if n is None else type(conf)(conf, max_examples=n)
    @given(st.tuples(PLAN, KEYING))
    def gather(plan: tuple[Any, str]) -> None:
        plans.append(plan)

    gather()
    return plans


def _complete(base: dict[str, Any], ts: float) -> dict[str, Any]:
    n = next(_ids)
    return {"type": "usage", "event_id": f"hz-{n}", "ts": round(ts, 3), "model": MODEL, **base}


def _mutate(ev: dict[str, Any], mutation: tuple[str, str, Any]) -> dict[str, Any]:
    how, name, value = mutation
    ev = dict(ev, event_id=ev["event_id"].replace("hz-", "hzbad-"))
    if how == "set":
        ev[name] = value
    elif how == "drop":
        ev.pop(name, None)
    else:  # a token part larger than its total
        ev[name] = (ev["input_tokens"] if name == "cache_read_tokens" else ev["output_tokens"]) + value
    return ev


def hypothesis_corpus(plans: list[tuple[Any, str]]) -> list[Rec]:
    """Serialize the plans with ids and times (in order, so each workflow's time moves forward) and
    work out each record's dead letters and valid events."""
    out = []
    ts = itertools.count()

    def clock() -> float:
        return NOW - 600 + next(ts) * 0.01

    for (kind, body), keying in plans:
        if kind == "garbage":
            try:
                doc = orjson.loads(body)
                n_bad = len(doc) if isinstance(doc, list) and len(doc) <= limits.MAX_EVENTS_PER_RECORD else 1
            except orjson.JSONDecodeError:
                n_bad = 1
            out.append(Rec("hypothesis:garbage", b"hz-garbage", body, n_bad,
                           allowed=frozenset({0, 1}) if n_bad == 0 else None))
            continue
        if kind == "one-good":
            items = [("good", body)]
        elif kind == "one-bad":
            items = [("bad", body)]
        else:
            items = body
        docs, goods, n_bad, what, bad_ids = [], [], 0, set(), set()
        for tag, item in items:
            if tag == "good":
                ev = _complete(item, clock())
                goods.append(ev)
                docs.append(ev)
            elif tag == "bad":
                base, mutation = item
                docs.append(_mutate(_complete(base, clock()), mutation))
                n_bad += 1
                if isinstance(docs[-1].get("event_id"), str):
                    bad_ids.add(docs[-1]["event_id"])
                what.add(f"{mutation[0]}:{mutation[1]}")
            else:
                docs.append(item)
                n_bad += 1
                what.add("junk")
        raw = js(docs if kind == "array" else docs[0])
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:  # NaN or Infinity somewhere: the record is not JSON, none of it counts
            n_bad, goods = 1, []
        first = next((d for d in docs if isinstance(d, dict) and isinstance(d.get("workflow"), str)), None)
        key = {"workflow": (first or {}).get("workflow", "hz-0")[:200].encode(), "null": None,
               "other": b"someone-else"}[keying]
        category = ("hypothesis:array" if kind == "array" else "hypothesis:" + (sorted(what)[0] if what else "good"))
        out.append(Rec(category, key, raw, n_bad, goods, allowed=frozenset({0, 1}) if not docs else None,
                       bad_ids=frozenset(bad_ids)))
    return out


# --- one worker run over everything ------------------------------------------------------------

@dataclass
class Outcome:
    records: list[Rec]
    where: dict[tuple[int, int], int]  # (partition, offset) -> index in records
    deadletters: list[dict[str, Any]]
    states: dict[str, Any]
    worker: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


async def _publish(bootstrap: str, recs: list[Rec]) -> list[tuple[int, int]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=8_000_000)
    await producer.start()
    try:
        futures = [await producer.send(TOPIC, r.value, key=r.key) for r in recs]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


def truth(records: list[Rec]) -> dict[str, list[int]]:
    seen: set[str] = set()
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        for ev in r.goods:
            if ev["event_id"] in seen:
                continue
            seen.add(ev["event_id"])
            t = out[ev["workflow"]]
            t[0] += 10 * ev["input_tokens"] + 30 * ev["output_tokens"]
            t[1] += ev["input_tokens"]
            t[2] += ev["output_tokens"]
            t[3] += 1
    return dict(out)


def totals(states: dict[str, Any]) -> dict[str, list[int]]:
    out = {}
    for wf, st_ in states.items():
        days = [v for k, v in st_.spend.periods.items() if len(k) == 10]
        out[wf] = [sum(v[i] for v in days) for i in (COST, INPUT, OUTPUT, CALLS)]
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    tmp = tmp_path_factory.mktemp("recfuzz")
    records = fixed_corpus() + hypothesis_corpus(generated_plans())
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, env: dict[str, str] | None = None, log: str = "proc.log") -> subprocess.Popen[bytes]:
        out = open(tmp / log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "spendwatch", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc

    config = tmp / "spendwatch.toml"
    config.write_text(CONFIG)
    with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
        try:
            for topic in ("spendwatch.deadletter", "spendwatch.rollups"):
                create_topic(broker.bootstrap, topic)
            worker = start_worker(spawn, broker, "--config", str(config))
            offsets = asyncio.run(_publish(broker.bootstrap, records))
            where = {po: i for i, po in enumerate(offsets)}
            expected_dead = sum(min(r.ok_counts()) for r in records)
            want = truth(records)
            deadline = time.monotonic() + 120
            seen, still = None, time.monotonic()
            while True:  # until everything is in, or nothing moved for 10 s: the tests then say what is missing
                dead = [orjson.loads(v) for _, v in read_all(broker.bootstrap, "spendwatch.deadletter") if v]
                got = totals(latest_states(read_all(broker.bootstrap, "spendwatch-workflows-changelog")))
                if (len(dead) >= expected_dead and all(got.get(wf) == t for wf, t in want.items())) \
                        or time.monotonic() > deadline or worker.poll() is not None:
                    break
                if (len(dead), got) != seen:
                    seen, still = (len(dead), got), time.monotonic()
                elif time.monotonic() - still > 10:
                    break
                time.sleep(1.0)
            time.sleep(2.0)  # anything extra would arrive now
            dead = [orjson.loads(v) for _, v in read_all(broker.bootstrap, "spendwatch.deadletter") if v]
            states = latest_states(read_all(broker.bootstrap, "spendwatch-workflows-changelog"))
            yield Outcome(records, where, dead, states, worker, tmp / "worker.log")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _dead_by_record(o: Outcome) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Dead letters per published record, by source partition and offset. An event re-routed
    (its key was not its workflow) and dead-lettered after is attributed by its event id."""
    per: dict[int, list[dict[str, Any]]] = defaultdict(list)
    by_id = {eid: i for i, r in enumerate(o.records) for eid in r.bad_ids}
    stray = []
    for d in o.deadletters:
        i = o.where.get((d.get("partition"), d.get("offset"))) if d.get("topic") == TOPIC else None
        if i is None and isinstance(d.get("event"), dict):
            i = by_id.get(d["event"].get("event_id"))
        (per[i].append(d) if i is not None else stray.append(d))
    return per, stray


def _check(o: Outcome, indices: list[int]) -> list[str]:
    per, _ = _dead_by_record(o)
    problems = []
    for i in indices:
        r, dead = o.records[i], per.get(i, [])
        if len(dead) not in r.ok_counts():
            shown = (r.value or b"<tombstone>")[:120]
            problems.append(f"{r.category} #{i} {r.note or ''}: {len(dead)} dead letters, want "
                            f"{sorted(r.ok_counts())} — key {(r.key or b'<null>')[:40]!r} value {shown!r}"
                            + (f" — reasons {[d.get('reason', '')[:100] for d in dead]}" if dead else ""))
        problems += [f"{r.category} #{i}: a dead letter without a reason" for d in dead
                     if not isinstance(d.get("reason"), str) or not d["reason"].strip()]
    return problems


def test_the_worker_stays_up(outcome: Outcome):
    assert outcome.worker.poll() is None, f"worker exited with {outcome.worker.returncode}:\n{outcome.log_tail()}"


FIXED = sorted({r.category for r in fixed_corpus()})


@pytest.mark.parametrize("category", FIXED)
def test_every_bad_record_is_dead_lettered_at_its_offset_with_a_reason(outcome: Outcome, category: str):
    indices = [i for i, r in enumerate(outcome.records) if r.category == category]
    problems = _check(outcome, indices)
    assert not problems, f"{len(problems)} of {len(indices)} {category} records:\n" + "\n".join(problems[:20])


def test_generated_records_are_dead_lettered_exactly(outcome: Outcome):
    indices = [i for i, r in enumerate(outcome.records) if r.category.startswith("hypothesis:")]
    problems = _check(outcome, indices)
    kinds = Counter(outcome.records[i].category for i in indices)
    assert not problems, (f"{len(problems)} of {len(indices)} generated records ({dict(kinds)}):\n"
                          + "\n".join(problems[:25]))


def test_nothing_else_is_dead_lettered(outcome: Outcome):
    _, stray = _dead_by_record(outcome)
    assert not stray, [(d.get("topic"), d.get("partition"), d.get("offset"), d.get("reason", "")[:120])
                       for d in stray[:10]]


def test_valid_events_are_counted_exactly_and_bad_ones_nowhere(outcome: Outcome):
    want, got = truth(outcome.records), totals(outcome.states)
    wrong = {wf: (got.get(wf), t) for wf, t in want.items() if got.get(wf) != t}
    assert not wrong, f"{len(wrong)} of {len(want)} workflows off (got, truth as [µUSD, in, out, calls]): {wrong}"
    extra = {wf: v for wf, v in got.items() if wf not in want and v[3] and not wf.startswith("probe-")}
    assert not extra, f"events of bad records were counted: {extra}"
