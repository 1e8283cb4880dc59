"""The observation hash, from the SDK through the wire to the loop detector.

An agent step says what it did (`fingerprint`) and what came back (`observation`);
the loop detector tells a stuck agent (the same action, the same answer) from one
that polls (the same action, a changing answer). No broker: records are encoded
and decoded as the worker does, events go through the same Monitor as a replay.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors.engine.monitor import Monitor
from detectors.loops import REPEAT_OK, LoopDetector
from replay import driver
from schemas import limits
from schemas.decode import RecordError, parse_record, validate_event
from spendwatch.usage import digest, usage_event, usage_from_openai

T0 = 1_768_471_200.0
RESPONSE = {"model": "gpt-4o", "usage": {"prompt_tokens": 4000, "completion_tokens": 120}}


def step(run: str, k: int, action: Any, result: Any, **fields: Any) -> dict[str, Any]:
    """What an agent emits after step k's tool ran: the call's usage, its action and the tool's result."""
    return usage_from_openai({**RESPONSE, "usage": {**RESPONSE["usage"], "prompt_tokens": 4000 + 600 * k}},
                             workflow="coder", run_id=run, step=k, ts=T0 + 5 * k, event_id=f"{run}-{k}",
                             action=action, tool_result=result, **fields)


def loop_alerts(docs: list[dict[str, Any]]) -> list[Any]:
    """The docs as one wire record, decoded as the worker does, through the Monitor in virtual time."""
    events, errors = parse_record(orjson.dumps(docs))
    assert errors == []
    return [a for a in driver.run(events, Monitor(detectors=[LoopDetector()])).alerts if a.kind == "loop"]


def test_the_sdk_fills_fingerprint_and_observation_from_the_action_and_the_tool_result():
    call = {"name": "bash", "arguments": {"command": "gh run view 42", "timeout": 30}}
    ev = step("r1", 1, call, {"status": "in_progress", "jobs": 3})
    assert ev["fingerprint"] == digest({"arguments": {"timeout": 30, "command": "gh run view 42"}, "name": "bash"})
    assert ev["observation"] == digest({"jobs": 3, "status": "in_progress"}) != digest({"status": "completed"})
    assert len(ev["observation"]) == 16 and "tool_result" not in ev and "action" not in ev
    decoded = validate_event(ev)
    assert (decoded.fingerprint, decoded.observation) == (ev["fingerprint"], ev["observation"])
    plain = usage_event(workflow="w", model="m", input_tokens=1, output_tokens=1, tool_result=b"\x00raw bytes")
    assert plain["observation"] == digest(b"\x00raw bytes") and "fingerprint" not in plain
    own = usage_event(workflow="w", model="m", input_tokens=1, output_tokens=1, action="ls", fingerprint="mine",
                      tool_result="x", observation="theirs")
    assert (own["fingerprint"], own["observation"]) == ("mine", "theirs")  # an explicit hash wins
    with pytest.raises(TypeError, match="cannot hash 'object'"):
        usage_event(workflow="w", model="m", input_tokens=1, output_tokens=1, tool_result=object())


def test_the_observation_is_optional_and_bounded_on_the_wire():
    base = {"type": "usage", "event_id": "e1", "ts": T0, "workflow": "w", "model": "gpt-4o", "input_tokens": 10,
            "output_tokens": 2, "fingerprint": "ls"}
    assert validate_event(base).observation is None  # an older publisher's event: as before
    [ev], [] = parse_record(orjson.dumps([{**base, "observation": "ab12"}]))
    assert ev.observation == "ab12"
    for bad, why in (("", "at least 1"), ("x" * (limits.MAX_ID_LEN + 1), "at most 256"), (7, "string")):
        events, errors = parse_record(orjson.dumps({**base, "observation": bad}))
        assert events == [] and "observation" in errors[0].reason and why in errors[0].reason, errors[0].reason
    with pytest.raises(RecordError, match="observation"):
        validate_event({**base, "observation": 5})


def test_a_stuck_agent_alerts_and_one_that_polls_does_not():
    work = [step("stuck", k, f"edit-{k}", f"ok-{k}") for k in range(1, 5)]
    stuck = work + [step("stuck", k, "python reproduce.py", "AssertionError: 3 != 4") for k in range(5, 60)]
    [alert] = loop_alerts(stuck)
    assert alert.evidence["rule"] == "repeated action and observation"
    assert (alert.evidence["loop_start_step"], alert.evidence["repeats"]) == (5, REPEAT_OK)
    assert alert.evidence["fingerprint"] == digest("python reproduce.py")
    # The same action as often, but CI answers with progress, then the agent moves on.
    polls = [step("polls", k, f"edit-{k}", f"ok-{k}") for k in range(1, 5)]
    polls += [step("polls", k, "gh run view 42", {"status": "in_progress", "done": k}) for k in range(5, 11)]
    polls += [step("polls", k, "gh run view 42", {"status": "queued"}) for k in range(11, 18)]  # 7× the same answer
    polls += [step("polls", 18, "gh run view 42", {"status": "completed"}), step("polls", 19, "merge", "merged")]
    assert loop_alerts(polls) == []
    blind = [{k: v for k, v in ev.items() if k != "observation"} for ev in polls]  # an older SDK: no observations
    assert [a.evidence["rule"] for a in loop_alerts(blind)] == ["repeated action"]  # 14 repeats: cannot tell
