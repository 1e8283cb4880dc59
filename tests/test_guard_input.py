"""Malformed control records: each one a counted rejection, never a dead follower (issue 11).

One record with a non-ASCII signature used to make `hmac.compare_digest` raise
TypeError inside the follower task; the guard then obeyed nothing more, and
since the topic is compacted, every guard started later died on the same record.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.control import ControlCommand
from schemas.signing import MAX_COMMAND_BYTES, CommandRejected, Keyring, Verifier, make_command, parse_command
from spendwatch.control import publish_command
from spendwatch.guard import KillSet, KillSwitch, SpendKilled
from tests.kafka_io import publish

KEYS = Keyring({"k1": b"secret-one"})
FIELDS = list(ControlCommand.model_fields)


def genuine(action: str = "kill", target: str = "r-1", **kw: Any) -> ControlCommand:
    return make_command(action, "run_id", target, "looping", 600, "test", keyring=KEYS, **kw)  # type: ignore[arg-type]


def as_json(cmd: ControlCommand, **changes: Any) -> bytes:
    """A genuine command's JSON with some fields replaced (or removed, with `...`), signature untouched."""
    d = {**cmd.model_dump(), **changes}
    return json.dumps({k: v for k, v in d.items() if v is not ...}, ensure_ascii=False).encode()


def malformed_records() -> tuple[list[tuple[bytes | None, bytes | None]], Counter[str]]:
    """Every kind of bad record, each with what the guard should count it as."""
    base = genuine(target="r-bad")
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"run_id:r-bad", as_json(base, signature="é" * 64)),           # the TypeError of issue 11
        (b"run_id:r-bad", as_json(base, signature="\u0663" * 64)),      # Arabic-Indic digits: str.isdigit
        (b"run_id:r-bad", as_json(base, signature="zz" * 32)),          # ASCII, not hex
        (b"run_id:r-bad", as_json(base, signature=base.signature[:-1])),  # short
        (b"run_id:r-bad", as_json(base, issued_at="soon")),
        (b"run_id:r-bad", as_json(base, command_id=5)),
        (b"run_id:r-bad", as_json(base, target=...)),
        (b"run_id:r-bad", as_json(base, extra="field")),
        (b"run_id:r-bad", b"{not json"),
        (b"run_id:r-bad", b"\xff\xfe\x00garbage"),
        (b"run_id:r-bad", b"null"),
        (b"run_id:r-bad", b"[1, 2, 3]"),
        (b"run_id:r-bad", b'"a string"'),
        (b"run_id:r-bad", b"[" * 50_000),                               # deeper than the parser goes
        (b"run_id:r-bad", None),                                          # tombstone: unsigned, obeys nothing
        (b"run_id:r-bad", as_json(base, reason="x" * 2_000_000)),       # over the consumer's fetch size too
        (None, as_json(KEYS.sign(base.model_copy(update={"expires_at": float("inf")})))),
    ]
    expected = Counter({"bad signature": 4, "malformed": 11, "tombstone": 1, "oversize": 1})
    return records, expected


async def test_malformed_control_records_are_rejections_and_genuine_commands_still_work(broker):
    topic = f"control-{uuid.uuid4().hex[:8]}"
    bad, expected = malformed_records()
    first_genuine = genuine(target="r-first")
    await publish_command(broker.url, topic, first_genuine)  # creates the topic, compacted
    await asyncio.to_thread(publish, broker.bootstrap, topic, bad)  # type: ignore[arg-type]
    # started after the bad records: the compacted topic hands them to every new guard
    fail_open = KillSwitch(broker.url, topic, keyring=KEYS, poll_s=0.2)
    fail_closed = KillSwitch(broker.url, topic, keyring=KEYS, poll_s=0.2, fail_closed=True)
    try:
        assert await fail_open.start(wait=15) and await fail_closed.start(wait=15)
        for switch in (fail_open, fail_closed):
            assert switch.rejected == expected
            switch.check(run_id="r-bad")  # nothing bad was obeyed, and fail-closed is not blind
            assert killed(switch, run_id="r-first")  # nor was the genuine kill before them lost
        # the same garbage again while following, then a genuine kill: obeyed
        await asyncio.to_thread(publish, broker.bootstrap, topic, bad)  # type: ignore[arg-type]
        kill = genuine(target="r-1")
        await publish_command(broker.url, topic, kill)
        for switch in (fail_open, fail_closed):
            err = await wait_until(lambda s=switch: killed(s, run_id="r-1"))
            assert err.command_id == kill.command_id
            assert switch.rejected == expected + expected
        await asyncio.to_thread(publish, broker.bootstrap, topic, bad)  # type: ignore[arg-type]
        await publish_command(broker.url, topic, genuine("release", target="r-1"))
        for switch in (fail_open, fail_closed):
            await wait_until(lambda s=switch: not killed(s, run_id="r-1"))
            assert switch.healthy and switch.rejected == expected + expected + expected
            switch.check(run_id="r-1")
    finally:
        await fail_open.stop()
        await fail_closed.stop()


def test_upper_case_hex_of_the_right_digest_is_accepted():
    """Signers in other languages may print the digest in upper case: same bytes, same signature."""
    cmd = genuine()
    Verifier(KEYS).verify(cmd.model_copy(update={"signature": cmd.signature.upper()}), time.time())


async def wait_until(probe, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s")


def killed(switch: KillSwitch, **targets: str) -> SpendKilled | None:
    try:
        switch.check(**targets)
    except SpendKilled as err:
        return err
    return None


# --- properties: parse_command and Verifier.verify raise CommandRejected and nothing else -------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
field_names = st.sampled_from(FIELDS) | st.text(max_size=10)
command_dicts = st.dictionaries(field_names, json_values, max_size=len(FIELDS) + 2)


def near_genuine(draw_from: st.DrawFn) -> dict[str, Any]:
    """A genuine command's fields with some replaced by arbitrary values (or dropped)."""
    d = genuine().model_dump()
    for name in draw_from(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if draw_from(st.booleans()):
            d.pop(name)
        else:
            d[name] = draw_from(json_values | st.text(alphabet=st.characters(), min_size=64, max_size=64))
    return d


@st.composite
def near_genuine_dicts(draw: st.DrawFn) -> dict[str, Any]:
    return near_genuine(draw)


def only_rejections(fn: Any, *args: Any) -> ControlCommand | None:
    try:
        return fn(*args)
    except CommandRejected as err:
        assert err.reason
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_parse_command_of_any_bytes_is_a_command_or_a_rejection(raw: bytes):
    only_rejections(parse_command, raw)


@settings(max_examples=400, deadline=None)
@given(command_dicts | near_genuine_dicts())
def test_any_json_object_is_parsed_and_verified_with_rejections_only(d: dict[str, Any]):
    raw = json.dumps(d, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    cmd = only_rejections(parse_command, raw)
    if cmd is not None:
        only_rejections(Verifier(KEYS).verify, cmd, time.time())
    KillSet(Verifier(KEYS)).apply(raw, time.time())  # and the follower's own entry point never raises


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic warns when dumping wrong types
@settings(max_examples=400, deadline=None)
@given(command_dicts | near_genuine_dicts())
def test_verify_of_an_unvalidated_command_raises_rejections_only(d: dict[str, Any]):
    """`model_construct` skips validation: fields of any type, as a caller's own object could have."""
    cmd = ControlCommand.model_construct(**{k: v for k, v in d.items() if k.isidentifier()})
    only_rejections(Verifier(KEYS).verify, cmd, time.time())


@pytest.mark.parametrize("raw,reason", [(None, "tombstone"), (b"x" * (MAX_COMMAND_BYTES + 1), "oversize"),
                                        (b"{}", "malformed"), (12, "malformed")])
def test_parse_command_reasons(raw: Any, reason: str):
    with pytest.raises(CommandRejected, match=reason):
        parse_command(raw)
