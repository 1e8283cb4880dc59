"""The LiteLLM callback with the real `litellm` package (`mock_response`: no network) on the embedded broker:
events as the worker reads them, prices equal to LiteLLM's own, failures, the kill switch, event loops."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import litellm
import orjson
import pytest
from litellm.llms.anthropic.chat.transformation import AnthropicConfig
from litellm.proxy._types import UserAPIKeyAuth
from litellm.types.utils import ModelResponse, Usage

from detectors.pricing.money import usd_to_micros
from detectors.pricing.prices import PriceBook
from schemas.signing import Keyring, make_command
from spendwatch.control import publish_command
from spendwatch.guard import SpendKilled
from spendwatch.integrations.litellm import SpendKilledRequest, SpendwatchLogger
from tests.kafka_io import events_on, topic_of

KEYS = "k1:0123456789abcdef0123456789abcdef"
MSG = [{"role": "user", "content": "hi"}]
TOLERANCE_MICROS = 1
"""Per call: spendwatch's price (integer micro-USD, rounded half up) against LiteLLM's float `response_cost`."""


def response(model: str, usage: Usage, tool_calls: list[dict[str, Any]] | None = None) -> ModelResponse:
    message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else "done"}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return ModelResponse(model=model, choices=[{"message": message, "finish_reason": "stop"}], usage=usage)


def openai_usage(prompt: int, cached: int, completion: int, reasoning: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details={"cached_tokens": cached},
                 completion_tokens_details={"reasoning_tokens": reasoning})


def anthropic_usage(raw: dict[str, Any]) -> Usage:
    """LiteLLM's own translation of an Anthropic Messages `usage` block (cache tokens beside the input)."""
    return AnthropicConfig().calculate_usage(raw, None)


CALLS: list[tuple[str, ModelResponse, dict[str, Any]]] = [
    ("gpt-4o", response("gpt-4o", openai_usage(12_000, 10_000, 300)),
     {"spendwatch_workflow": "support-bot", "spendwatch_run_id": "ticket-1", "spendwatch_agent_id": "bot-7",
      "tags": ["team:cx"], "spendwatch_labels": {"ticket": "T-1"}}),
    ("o3-mini", response("o3-mini", openai_usage(2_000, 0, 900, reasoning=700)),
     {"spendwatch_workflow": "support-bot", "spendwatch_run_id": "ticket-1"}),
    ("anthropic/claude-sonnet-4-5", response("claude-sonnet-4-5", anthropic_usage(
        {"input_tokens": 120, "output_tokens": 450, "cache_read_input_tokens": 8_000,
         "cache_creation_input_tokens": 2_000})),
     {"spendwatch_workflow": "coder", "spendwatch_run_id": "pr-9"}),
    ("anthropic/claude-sonnet-4-5", response("claude-sonnet-4-5", anthropic_usage(
        {"input_tokens": 50, "output_tokens": 80, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}),
        tool_calls=[{"id": "t1", "type": "function",
                     "function": {"name": "run_tests", "arguments": '{"path": "tests/"}'}}]),
     {"spendwatch_workflow": "coder", "spendwatch_run_id": "pr-9"}),
]


def test_calls_become_usage_events_priced_as_litellm_prices_them(broker):
    topic = topic_of(broker, "litellm-usage")
    handler = SpendwatchLogger(broker.url, topic, guard=False)
    litellm.callbacks = [handler]
    costs: list[float] = []

    async def scenario() -> None:
        for model, mock, metadata in CALLS:
            resp = await litellm.acompletion(model=model, messages=MSG, mock_response=mock, metadata=metadata)
            costs.append(resp._hidden_params["response_cost"])
        await asyncio.sleep(0.2)  # LiteLLM logs success in a task of its own
        await handler.flush()
        await handler.aclose()

    try:
        asyncio.run(scenario())
    finally:
        litellm.callbacks = []
    events = events_on(broker, topic, len(CALLS))
    assert len(events) == len(CALLS)
    by_model = {}
    for ev in events:
        by_model.setdefault(ev.model, []).append(ev)
    gpt, o3, claude = by_model["gpt-4o"][0], by_model["o3-mini"][0], by_model["claude-sonnet-4-5"]
    assert (gpt.provider, gpt.workflow, gpt.team, gpt.agent_id, gpt.run_id) == ("openai", "support-bot", "cx", "bot-7",
                                                                             "ticket-1")
    assert (gpt.input_tokens, gpt.cache_read_tokens, gpt.output_tokens) == (12_000, 10_000, 300)
    assert gpt.labels["ticket"] == "T-1" and gpt.status == "ok" and gpt.latency_ms is not None
    assert (o3.output_tokens, o3.reasoning_tokens) == (900, 700)
    first, tool = sorted(claude, key=lambda e: e.input_tokens, reverse=True)
    assert first.provider == "anthropic" and first.workflow == "coder"
    # Anthropic's cache tokens are inside input_tokens, as the contract says
    assert (first.input_tokens, first.cache_read_tokens, first.cache_write_tokens) == (10_120, 8_000, 2_000)
    assert tool.fingerprint is not None and first.fingerprint is None

    book = PriceBook()
    ours = sorted(book.price(ev).micros for ev in events)
    theirs = sorted(usd_to_micros(c) for c in costs)
    print("spendwatch µUSD:", ours, "LiteLLM µUSD:", theirs)
    assert all(book.price(ev).source.startswith("genai-prices:") for ev in events)
    assert all(abs(a - b) <= TOLERANCE_MICROS for a, b in zip(ours, theirs)), (ours, theirs)
    assert abs(sum(ours) - sum(theirs)) <= TOLERANCE_MICROS * len(CALLS)


def test_litellm_cost_sent_on_request_and_failures_as_errors(broker):
    topic = topic_of(broker, "litellm-fail")
    handler = SpendwatchLogger(broker.url, topic, guard=False, use_litellm_cost=True)
    litellm.callbacks = [handler]
    cost: list[float] = []

    async def scenario() -> None:
        resp = await litellm.acompletion(model="gpt-4o", messages=MSG, mock_response=CALLS[0][1],
                                         metadata={"spendwatch_workflow": "support-bot"})
        cost.append(resp._hidden_params["response_cost"])
        with pytest.raises(litellm.RateLimitError):
            await litellm.acompletion(model="gpt-4o", messages=MSG, mock_response="litellm.RateLimitError",
                                      metadata={"spendwatch_workflow": "support-bot", "spendwatch_run_id": "r-err"})
        await asyncio.sleep(0.2)
        await handler.flush()
        await handler.aclose()

    try:
        asyncio.run(scenario())
    finally:
        litellm.callbacks = []
    events = events_on(broker, topic, 2)
    ok = [e for e in events if e.status == "ok"]
    err = [e for e in events if e.status == "error"]
    assert len(ok) == 1 and ok[0].cost_usd == pytest.approx(cost[0])
    assert len(err) == 1 and err[0].run_id == "r-err" and err[0].labels["error"] == "RateLimitError"
    assert (err[0].input_tokens, err[0].output_tokens, err[0].model) == (0, 0, "gpt-4o")


def test_emitter_follows_litellm_loop_and_sync_calls(broker):
    """The trial's bug: an emitter bound to another event loop held every event. Here the handler is made
    outside any loop, its emitter is even started in a loop that then ends, and LiteLLM runs the calls in two
    further loops and in plain synchronous code: every event arrives."""
    topic = topic_of(broker, "litellm-loops")
    handler = SpendwatchLogger(broker.url, topic, guard=False)
    asyncio.run(handler.emitter.start())  # bound to a loop that is gone when LiteLLM calls
    litellm.callbacks = [handler]

    async def one_call(run: str) -> None:
        await litellm.acompletion(model="gpt-4o", messages=MSG, mock_response="ok",
                                  metadata={"spendwatch_workflow": "loops", "spendwatch_run_id": run})
        await asyncio.sleep(0.2)
        await handler.emitter.flush()

    try:
        asyncio.run(one_call("loop-1"))
        asyncio.run(one_call("loop-2"))
        litellm.completion(model="gpt-4o", messages=MSG, mock_response="ok",
                           metadata={"spendwatch_workflow": "loops", "spendwatch_run_id": "sync"})
        deadline = time.monotonic() + 10
        while handler.background.emitter is None and time.monotonic() < deadline:
            time.sleep(0.05)  # LiteLLM logs synchronous calls from a thread of its own
        assert handler.background.flush(10)
    finally:
        litellm.callbacks = []
        handler.background.stop()
    runs = sorted(e.run_id for e in events_on(broker, topic, 3))
    assert runs == ["loop-1", "loop-2", "sync"]


def test_a_kill_blocks_the_next_call_in_the_sdk_and_the_proxy(broker, monkeypatch):
    monkeypatch.setenv("SPENDWATCH_CONTROL_KEYS", KEYS)
    topic, control = topic_of(broker, "litellm-kill"), f"litellm-control-{uuid.uuid4().hex[:8]}"
    handler = SpendwatchLogger(broker.url, topic, control_topic=control)
    keyring = Keyring.load()
    litellm.callbacks = [handler]
    run = f"run-{uuid.uuid4().hex[:6]}"
    meta = {"spendwatch_workflow": "coder", "spendwatch_run_id": run}

    async def scenario() -> tuple[int, float]:
        await litellm.acompletion(model="gpt-4o", messages=MSG, mock_response="ok", metadata=meta)
        await publish_command(broker.url, control, make_command(
            "kill", "run_id", run, "loop: the same failing action 5x", 600, "test", keyring=keyring,
            alert_id=f"loop:coder:{run}"))
        published, allowed = time.monotonic(), 0
        while True:  # the guard follows the control topic about once a second
            try:
                await litellm.acompletion(model="gpt-4o", messages=MSG, mock_response="ok", metadata=meta)
                allowed += 1
                await asyncio.sleep(0.1)
            except SpendKilled as err:
                assert isinstance(err, SpendKilledRequest) and err.target == run
                assert err.alert_id == f"loop:coder:{run}" and "same failing action" in str(err)
                break
            assert time.monotonic() - published < 10, "the kill was never obeyed"
        latency = time.monotonic() - published
        # other runs go on; the proxy's hook refuses the killed run, found by key metadata or by request
        await litellm.acompletion(model="gpt-4o", messages=MSG, mock_response="ok",
                                  metadata={"spendwatch_workflow": "coder", "spendwatch_run_id": "other"})
        key = UserAPIKeyAuth(key_alias="coder-key", team_alias="platform")
        data = {"model": "gpt-4o", "messages": MSG, "metadata": {"requester_metadata": {"spendwatch_run_id": run}}}
        with pytest.raises(SpendKilled):
            await handler.async_pre_call_hook(key, None, data, "completion")
        ok = {"model": "gpt-4o", "messages": MSG, "metadata": {}}
        assert await handler.async_pre_call_hook(key, None, ok, "completion") is ok
        await publish_command(broker.url, control, make_command("kill", "workflow", "coder-key", "budget", 600,
                                                                "test", keyring=keyring))
        deadline = time.monotonic() + 10
        while True:  # no metadata: the key alias is the workflow (default mapping)
            try:
                await handler.async_pre_call_hook(key, None, ok, "completion")
            except SpendKilled as err:
                assert err.scope == "workflow"
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.2)
        await handler.flush()
        await handler.aclose()
        return allowed, latency

    try:
        allowed, latency = asyncio.run(scenario())
    finally:
        litellm.callbacks = []
    print(f"kill obeyed {latency:.2f}s after it was published ({allowed} calls got through meanwhile)")
    events = events_on(broker, topic, 2 + allowed)
    assert sorted(e.run_id for e in events) == sorted([run] * (1 + allowed) + ["other"])
    assert all(e.status == "ok" for e in events)  # the refused calls are not reported as failures
    assert handler.refused >= 3 and handler.skipped["refused by the kill switch"] == 1


def test_proxy_style_attribution_from_key_team_tags_and_headers():
    """The mapping on a logged proxy call, as LiteLLM's proxy fills `standard_logging_object`."""
    handler = SpendwatchLogger("kafka://127.0.0.1:1", guard=False,
                               mapping={"workflow": ["header.x-app", "tag.app", "key_alias"]},
                               labels={"user": "user_id", "org": "org_alias"})
    slo = {
        "litellm_call_id": "c-1", "id": "chatcmpl-1", "model": "my-deploy", "custom_llm_provider": "azure",
        "model_map_information": {"model_map_key": "azure/gpt-4o"}, "prompt_tokens": 10, "completion_tokens": 5,
        "startTime": 1_800_000_000.0, "endTime": 1_800_000_000.5, "response_cost": 0.0001,
        "request_tags": ["app:search", "env:prod"], "session_id": "sess-9", "end_user": "customer-1",
        "metadata": {"user_api_key_alias": "search-key", "user_api_key_team_alias": "discovery",
                     "user_api_key_user_id": "alice", "user_api_key_org_alias": "acme",
                     "requester_custom_headers": {}, "usage_object": {"prompt_tokens": 10, "completion_tokens": 5}},
    }
    ev = handler.event({"standard_logging_object": slo, "litellm_params": {"metadata": {}}}, None)
    assert ev is not None
    assert (ev["workflow"], ev["team"], ev["run_id"], ev["model"], ev["provider"]) == (
        "search", "discovery", "sess-9", "gpt-4o", "azure")
    assert ev["labels"] == {"user": "alice", "org": "acme"} and ev["latency_ms"] == 500.0
    assert "cost_usd" not in ev and orjson.dumps(ev)
    slo["metadata"]["requester_custom_headers"] = {"X-App": "search-v2"}
    slo["cache_hit"] = True
    ev = handler.event({"standard_logging_object": slo}, None)
    assert ev is not None and ev["workflow"] == "search-v2" and (ev["status"], ev["cost_usd"]) == ("cache_hit", 0.0)
    with pytest.raises(ValueError, match="unknown fields"):
        SpendwatchLogger("kafka://127.0.0.1:1", guard=False, mapping={"wokflow": ["=x"]})


def test_the_proxy_loads_the_handler_from_its_config_path(monkeypatch):
    """`callbacks: spendwatch.integrations.litellm.handler`, resolved by the proxy's own loader, configured by
    the environment alone."""
    from litellm.proxy.types_utils.utils import get_instance_fn

    import spendwatch.integrations.litellm as module

    monkeypatch.setenv("SPENDWATCH_BROKER", "kafka://127.0.0.1:1")
    monkeypatch.setenv("SPENDWATCH_USAGE_TOPIC", "usage-x")
    monkeypatch.setenv("SPENDWATCH_LITELLM_MAPPING", '{"workflow": "tag.app", "labels": {"who": "user_id"}}')
    monkeypatch.setenv("SPENDWATCH_LITELLM_USE_COST", "true")
    monkeypatch.delenv("SPENDWATCH_CONTROL_KEYS", raising=False)
    try:
        handler = get_instance_fn("spendwatch.integrations.litellm.handler")
        assert isinstance(handler, SpendwatchLogger) and handler is module.handler
        assert (handler.broker, handler.topic, handler.use_litellm_cost) == ("kafka://127.0.0.1:1", "usage-x", True)
        assert handler.mapping["workflow"] == ("tag.app",) and handler.labels == {"who": "user_id"}
        assert handler._guard is None  # no keys: usage is reported, kills are not enforced (and it says so)
    finally:
        module.__dict__.pop("handler", None)
