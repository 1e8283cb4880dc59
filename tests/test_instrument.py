"""`spendwatch.instrument()` end to end: the real `openai` and `anthropic` packages call a fake provider over
HTTP (tests/fakellm.py: JSON, SSE streams, errors), and the events a real `UsageEmitter` delivered to the
embedded broker must carry exactly the tokens the provider reported, in the contract's semantics
(DESIGN.md): `input_tokens` includes cache reads and writes (Anthropic's are added), `output_tokens`
includes reasoning; a streamed call is one event; a failed call is `status: "error"` with its error type;
a tool call is a fingerprint that does not depend on the provider, the stream or the JSON's spelling."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import spendwatch
from schemas.decode import validate_event
from schemas.signing import Keyring, make_command
from spendwatch import KillSwitch, SpendKilled, UsageEmitter, attribute, digest, instrument
from spendwatch.control import publish_command
from tests.fakellm import FakeLLM, Reply
from tests.kafka_io import create_topic, read_all

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

GREP = {"pattern": "TODO", "path": "src"}
GREP_FP = digest([{"name": "grep", "arguments": GREP}])
CHAT_USAGE = {"prompt_tokens": 1_200, "completion_tokens": 300, "total_tokens": 1_500,
              "prompt_tokens_details": {"cached_tokens": 1_000},
              "completion_tokens_details": {"reasoning_tokens": 200}}
RESPONSES_USAGE = {"input_tokens": 5_000, "input_tokens_details": {"cached_tokens": 4_096}, "output_tokens": 900,
                   "output_tokens_details": {"reasoning_tokens": 700}, "total_tokens": 5_900}
CLAUDE_USAGE = {"input_tokens": 50, "output_tokens": 400, "cache_read_input_tokens": 9_000,
                "cache_creation_input_tokens": 1_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 600, "ephemeral_1h_input_tokens": 400}}
MSGS = [{"role": "user", "content": "find the TODOs"}]


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    llm = FakeLLM().start()
    yield llm
    llm.stop()


def new_topic(broker: Any) -> str:
    topic = f"instrument-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    return topic


def delivered(broker: Any, topic: str) -> list[dict[str, Any]]:
    """Every event on the topic, in the order emitted, each checked against the wire contract."""
    events = [ev for _, value in read_all(broker.bootstrap, topic) for ev in orjson.loads(value)]
    for ev in events:
        validate_event(ev)
    return events


def tokens(ev: dict[str, Any]) -> tuple[int, ...]:
    return (ev["input_tokens"], ev.get("cache_read_tokens", 0), ev.get("cache_write_tokens", 0),
            ev.get("cache_write_1h_tokens", 0), ev["output_tokens"], ev.get("reasoning_tokens", 0))


def test_sync_openai_client_emits_one_exact_event_per_call(broker, fake: FakeLLM):
    topic = new_topic(broker)
    fake.reply(
        Reply(usage=CHAT_USAGE, tools=[("grep", '{"pattern": "TODO", "path": "src"}')], model="gpt-4o-2024-08-06"),
        Reply(usage={**CHAT_USAGE, "prompt_tokens": 2_000}, tools=[("grep", '{"path":"src","pattern":"TODO"}')]),
        Reply(usage=RESPONSES_USAGE, tools=[("grep", '{"path": "src", "pattern": "TODO"}')]),
        Reply(usage={**RESPONSES_USAGE, "output_tokens": 1_000}, text="all done"),
        Reply(status=429),
        Reply(usage=RESPONSES_USAGE, failed="server_error"),
        Reply(usage=CHAT_USAGE),
    )
    client = openai.OpenAI(api_key="sk-test", base_url=f"{fake.url}/v1", max_retries=0)
    with UsageEmitter(broker.url, topic) as emitter:  # a background thread sends: this test is synchronous
        assert instrument(client, workflow="support-bot", team="cx", agent_id="a-1", emitter=emitter) is client
        instrument(client, workflow="ignored", emitter=emitter)  # twice is once
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert resp.choices[0].message.tool_calls[0].function.name == "grep"  # the caller's result, untouched
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
        assert chunks[-1].usage.prompt_tokens == 2_000 and chunks[-1].choices == []
        client.responses.create(model="o3", input="find the TODOs")
        with client.responses.create(model="o3", input="find the TODOs", stream=True) as stream:
            kinds = [event.type for event in stream]
        assert kinds[-1] == "response.completed"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o", messages=MSGS)
        client.responses.create(model="o3", input="again")
        with attribute(run_id="r-7", step=2, labels={"ticket": "T-1"}):
            client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert fake.requests[1][1]["stream_options"] == {"include_usage": True}  # added by the wrapper

    chat, chat_stream, resp_, resp_stream, failed, resp_failed, attributed = delivered(broker, topic)
    for ev in (chat, chat_stream, resp_, resp_stream, failed, resp_failed, attributed):
        assert (ev["workflow"], ev["team"], ev["agent_id"], ev["provider"]) == ("support-bot", "cx", "a-1", "openai")
        assert ev["latency_ms"] >= 0
    # OpenAI counts cache inside the prompt and reasoning inside the completion, as the contract does
    assert tokens(chat) == (1_200, 1_000, 0, 0, 300, 200) and chat["model"] == "gpt-4o-2024-08-06"
    assert tokens(chat_stream) == (2_000, 1_000, 0, 0, 300, 200) and chat_stream["model"] == "gpt-4o"
    assert tokens(resp_) == (5_000, 4_096, 0, 0, 900, 700) and resp_["model"] == "o3"
    assert tokens(resp_stream) == (5_000, 4_096, 0, 0, 1_000, 700)
    # the same tool call, whatever its JSON spelling, streamed or not, chat or Responses API
    assert chat["fingerprint"] == chat_stream["fingerprint"] == resp_["fingerprint"] == GREP_FP
    assert "fingerprint" not in resp_stream and "fingerprint" not in attributed
    assert all(ev.get("status", "ok") == "ok" for ev in (chat, chat_stream, resp_, resp_stream, attributed))
    assert failed["status"] == "error" and tokens(failed) == (0, 0, 0, 0, 0, 0) and failed["model"] == "gpt-4o"
    assert failed["labels"] == {"error_type": "RateLimitError", "http_status": "429",
                                "error_code": "rate_limit_exceeded"}
    assert resp_failed["status"] == "error" and resp_failed["labels"] == {"error_type": "server_error"}
    assert tokens(resp_failed) == (5_000, 4_096, 0, 0, 900, 700)  # what a failed response used is still spent
    assert (attributed["run_id"], attributed["step"], attributed["labels"]) == ("r-7", 2, {"ticket": "T-1"})


async def test_async_anthropic_and_openai_clients_count_streams_exactly(broker, fake: FakeLLM):
    topic = await asyncio.to_thread(new_topic, broker)
    fake.reply(
        Reply(usage=CLAUDE_USAGE, tools=[("grep", '{"pattern": "TODO", "path": "src"}')]),
        Reply(usage=CLAUDE_USAGE, tools=[("grep", '{"path":"src",  "pattern":"TODO"}')], text="looking"),
        Reply(usage=CLAUDE_USAGE, stream_error="overloaded_error"),
        Reply(status=529),
        Reply(usage=CHAT_USAGE, text="streamed answer"),
    )
    emitter = UsageEmitter(broker.url, topic)
    claude = instrument(anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=fake.url, max_retries=0),
                        workflow="coder", run_id="run-1", emitter=emitter)
    gpt = instrument(openai.AsyncOpenAI(api_key="sk-test", base_url=f"{fake.url}/v1", max_retries=0),
                     workflow="coder", run_id="run-1", emitter=emitter)
    msg = await claude.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=MSGS)
    assert msg.content[-1].type == "tool_use"
    seen = [event.type async for event in await claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=MSGS, stream=True)]
    assert seen.count("message_delta") == 2 and seen[-1] == "message_stop"
    with pytest.raises(anthropic.APIStatusError):
        async for _ in await claude.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=MSGS,
                                                    stream=True):
            pass
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await claude.messages.create(model="claude-haiku-4-5", max_tokens=1024, messages=MSGS)
    stream = await gpt.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True,
                                               stream_options={"include_usage": True})
    async with stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.split() == ["streamed", "answer"]
    await emitter.stop()

    plain, streamed, broken, refused, gpt_stream = await asyncio.to_thread(delivered, broker, topic)
    assert all(ev["workflow"] == "coder" and ev["run_id"] == "run-1" for ev in (plain, streamed, broken, refused))
    # Anthropic reports cache beside input_tokens: input = 50 + 9,000 read + 1,000 written (400 of them 1 h)
    assert tokens(plain) == tokens(streamed) == (10_050, 9_000, 1_000, 400, 400, 0)
    assert plain["provider"] == "anthropic" and plain["model"] == "claude-sonnet-4-5"
    # the stream's usage: message_start's prompt, the last cumulative message_delta's output (not 1 + 200 + 400)
    assert streamed["fingerprint"] == plain["fingerprint"] == GREP_FP  # and the same as OpenAI's for this call
    assert broken["status"] == "error" and broken["labels"]["error_code"] == "overloaded_error"
    assert broken["input_tokens"] == 10_050  # the prompt was read before the stream broke
    assert refused["status"] == "error" and tokens(refused) == (0, 0, 0, 0, 0, 0)
    assert refused["model"] == "claude-haiku-4-5"
    assert refused["labels"] == {"error_type": type(overloaded.value).__name__, "http_status": "529",
                                 "error_code": "overloaded_error"}
    assert tokens(gpt_stream) == (1_200, 1_000, 0, 0, 300, 200) and gpt_stream["provider"] == "openai"


def test_a_killed_run_is_refused_before_the_call_and_costs_nothing(broker, fake: FakeLLM):
    keys = Keyring({"k1": b"secret"})
    control, topic = f"control-{uuid.uuid4().hex[:8]}", new_topic(broker)
    cmd = make_command("kill", "run_id", "r-loop", "looping on grep", 600, "test", keyring=keys, alert_id="al-1")
    asyncio.run(publish_command(broker.url, control, cmd))
    switch = KillSwitch(broker.url, control, keyring=keys, poll_s=0.2)
    assert switch.start_thread(wait=15)  # a synchronous program's guard: a thread of its own
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=fake.url, max_retries=0)
    try:
        with UsageEmitter(broker.url, topic) as emitter:
            instrument(client, workflow="coder", emitter=emitter, switch=switch)
            with attribute(run_id="r-ok"):
                client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSGS)
            with attribute(run_id="r-loop"), pytest.raises(SpendKilled, match="looping on grep") as err:
                client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSGS)
            assert err.value.alert_id == "al-1"
    finally:
        switch.close()
    assert len(fake.requests) == 1  # the killed call never reached the provider
    assert [ev["run_id"] for ev in delivered(broker, topic)] == ["r-ok"]  # and emitted nothing


def test_instrument_refuses_what_it_does_not_know():
    with pytest.raises(TypeError, match="knows openai"):
        spendwatch.instrument(object(), workflow="w", emitter=UsageEmitter("kafka://127.0.0.1:9"))


def test_the_openai_stream_helpers_are_counted_through_create(broker, fake: FakeLLM):
    """`chat.completions.stream()` and `responses.stream()` call `create(stream=True)`: counted once each, and
    the chat helper gets its usage although it passes the SDK's `omit` for `stream_options`."""
    topic = new_topic(broker)
    fake.reply(Reply(usage=CHAT_USAGE, tools=[("grep", '{"pattern":"TODO","path":"src"}')]),
               Reply(usage=RESPONSES_USAGE, text="all done"))
    client = openai.OpenAI(api_key="sk-test", base_url=f"{fake.url}/v1", max_retries=0)
    with UsageEmitter(broker.url, topic) as emitter:
        instrument(client, workflow="helpers", emitter=emitter)
        with client.chat.completions.stream(model="gpt-4o", messages=MSGS) as stream:
            for _ in stream:
                pass
            assert stream.get_final_completion().usage.prompt_tokens == 1_200
        with client.responses.stream(model="o3", input="hi") as rstream:
            for _ in rstream:
                pass
            assert rstream.get_final_response().output_text == "all done"
    chat, resp = delivered(broker, topic)
    assert tokens(chat) == (1_200, 1_000, 0, 0, 300, 200) and chat["fingerprint"] == GREP_FP
    assert tokens(resp) == (5_000, 4_096, 0, 0, 900, 700)
