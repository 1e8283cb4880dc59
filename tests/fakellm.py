"""A fake OpenAI and Anthropic API over real HTTP (aiohttp on 127.0.0.1, in a thread of its own so sync and
async clients alike can call it), speaking their wire formats: JSON answers, SSE streams and errors.

Each request takes the next `Reply` queued with `reply()` (or a plain one), so a test says exactly which
usage, tool calls and failures the provider reports, then checks what the real `openai` and `anthropic`
packages made of them.

- `POST /v1/chat/completions`: a chat completion, or with `stream: true` chunks (content deltas, tool
  call deltas with the arguments cut into fragments, a finish chunk and, only when
  `stream_options.include_usage` is true, a last chunk with empty `choices` and the usage; every other
  chunk has `"usage": null`), then `data: [DONE]`.
- `POST /v1/responses`: a Responses API response (`output` items: a message, function calls), or with
  `stream: true` the `response.created` … `response.completed` events (`response.failed` for a reply
  with `failed=` set).
- `POST /v1/messages`: an Anthropic message (text and `tool_use` blocks), or with `stream: true` the
  `message_start` (prompt usage, `output_tokens` 1) … `message_delta` (cumulative usage) … `message_stop`
  events; a reply with `stream_error=` ends the stream with an `error` event instead.
- A reply with `status=` (e.g. 429, 529) answers with that status and the provider's error body.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    usage: dict[str, Any] = field(default_factory=dict)
    """In the provider's own shape: OpenAI chat (`prompt_tokens`, ...), Responses (`input_tokens`, ...) or
    Anthropic (`input_tokens`, `cache_read_input_tokens`, ...)."""
    text: str = "done"
    tools: list[tuple[str, str]] = field(default_factory=list)
    """(name, arguments as the JSON text the model wrote)."""
    model: str | None = None
    """The model the provider says served the call (default: the one asked for)."""
    status: int = 200
    error_type: str = ""
    failed: str = ""
    """Responses API: a `failed` response with this error code (HTTP 200)."""
    stream_error: str = ""
    """Anthropic stream: an `error` event of this type after `message_start`."""


def _cut(text: str, n: int = 3) -> list[str]:
    """A JSON text in `n` fragments, as streams deliver tool arguments."""
    step = max(1, len(text) // n)
    return [text[i:i + step] for i in range(0, len(text), step)] or [""]


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


class FakeLLM:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def reply(self, *replies: Reply) -> FakeLLM:
        self.replies.extend(replies)
        return self

    def start(self) -> FakeLLM:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/messages", self.messages)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _next(self, request: web.Request) -> tuple[dict[str, Any], Reply]:
        body = await request.json()
        self.requests.append((request.path, body))
        return body, (self.replies.pop(0) if self.replies else Reply())

    @staticmethod
    async def _stream(request: web.Request, frames: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        await resp.write_eof()
        return resp

    # --- OpenAI chat completions ---------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, r = await self._next(request)
        if r.status != 200:
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                "param": None, "code": r.error_type or "rate_limit_exceeded"}},
                                     status=r.status)
        model = r.model or body["model"]
        calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                 for i, (n, a) in enumerate(r.tools)]
        finish = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if calls else r.text, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "created": 1_768_435_200,
                                      "model": model, "choices": [{"index": 0, "message": message,
                                                                   "finish_reason": finish, "logprobs": None}],
                                      "usage": r.usage, "system_fingerprint": "fp_1"})

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_768_435_200,
                        "model": model, "system_fingerprint": "fp_1", "usage": None,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

        frames = [chunk({"role": "assistant", "content": ""})]
        if calls:
            for i, call in enumerate(calls):
                frames.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                     "function": {"name": call["function"]["name"],
                                                                  "arguments": ""}}]}))
                for part in _cut(call["function"]["arguments"]):
                    frames.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
        else:
            frames += [chunk({"content": word + " "}) for word in r.text.split()]
        frames.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append(sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_768_435_200,
                               "model": model, "system_fingerprint": "fp_1", "choices": [], "usage": r.usage}))
        frames.append(sse(b"[DONE]"))
        return await self._stream(request, frames)

    # --- OpenAI Responses API ------------------------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body, r = await self._next(request)
        if r.status != 200:
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests",
                                                "param": None, "code": r.error_type or "rate_limit_exceeded"}},
                                     status=r.status)
        model = r.model or body["model"]
        output: list[dict[str, Any]] = [{"type": "reasoning", "id": "rs_1", "summary": []}]
        if r.text:
            output.append({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": r.text, "annotations": []}]})
        output += [{"type": "function_call", "id": f"fc_{i}", "call_id": f"call_{i}", "name": n, "arguments": a,
                    "status": "completed"} for i, (n, a) in enumerate(r.tools)]
        final = {"id": "resp_1", "object": "response", "created_at": 1_768_435_200, "model": model,
                 "status": "failed" if r.failed else "completed", "output": output, "usage": r.usage,
                 "error": {"code": r.failed, "message": "the model failed"} if r.failed else None,
                 "incomplete_details": None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
                 "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0}
        if not body.get("stream"):
            return web.json_response(final)
        started = {**final, "status": "in_progress", "output": [], "usage": None, "error": None}
        frames = [sse({"type": "response.created", "sequence_number": 0, "response": started}, "response.created"),
                  sse({"type": "response.in_progress", "sequence_number": 1, "response": started},
                      "response.in_progress")]
        seq = 2

        def event(kind: str, **data: Any) -> None:
            nonlocal seq
            frames.append(sse({"type": kind, "sequence_number": seq, **data}, kind))
            seq += 1

        for index, item in enumerate(output):  # each item announced before its content, as the API does
            if item["type"] == "message":
                event("response.output_item.added", output_index=index,
                      item={**item, "status": "in_progress", "content": []})
                event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                      part={"type": "output_text", "text": "", "annotations": []})
                for word in r.text.split():
                    event("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                          delta=word + " ", logprobs=[])
            elif item["type"] == "function_call":
                event("response.output_item.added", output_index=index, item={**item, "arguments": ""})
                for part in _cut(item["arguments"]):
                    event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                          delta=part)
            else:
                event("response.output_item.added", output_index=index, item=item)
            event("response.output_item.done", output_index=index, item=item)
        kind = "response.failed" if r.failed else "response.completed"
        frames.append(sse({"type": kind, "sequence_number": seq, "response": final}, kind))
        return await self._stream(request, frames)

    # --- Anthropic Messages --------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body, r = await self._next(request)
        if r.status != 200:
            return web.json_response({"type": "error", "error": {"type": r.error_type or "overloaded_error",
                                                                 "message": "Overloaded"}}, status=r.status)
        model = r.model or body["model"]
        content: list[dict[str, Any]] = [{"type": "text", "text": r.text}] if r.text else []
        content += [{"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": orjson.loads(a)}
                    for i, (n, a) in enumerate(r.tools)]
        stop = "tool_use" if r.tools else "end_turn"
        if not body.get("stream"):
            return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                                      "content": content, "stop_reason": stop, "stop_sequence": None,
                                      "usage": r.usage})
        prompt_usage = {**{k: v for k, v in r.usage.items() if k != "output_tokens"}, "output_tokens": 1}
        frames = [sse({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": prompt_usage}}, "message_start"),
            sse({"type": "ping"}, "ping")]
        if r.stream_error:
            frames.append(sse({"type": "error", "error": {"type": r.stream_error, "message": "Overloaded"}}, "error"))
            return await self._stream(request, frames)
        index = 0
        if r.text:
            frames.append(sse({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}}, "content_block_start"))
            for word in r.text.split():
                frames.append(sse({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": word + " "}}, "content_block_delta"))
            frames.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
            index = 1
        for i, (name, arguments) in enumerate(r.tools, start=index):
            frames.append(sse({"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}}}, "content_block_start"))
            for part in _cut(arguments):
                frames.append(sse({"type": "content_block_delta", "index": i,
                                   "delta": {"type": "input_json_delta", "partial_json": part}},
                                  "content_block_delta"))
            frames.append(sse({"type": "content_block_stop", "index": i}, "content_block_stop"))
        out = r.usage.get("output_tokens", 0)
        # cumulative: a first delta with part of the output, the last with all of it
        frames.append(sse({"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None},
                           "usage": {"output_tokens": max(1, out // 2)}}, "message_delta"))
        frames.append(sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": out}}, "message_delta"))
        frames.append(sse({"type": "message_stop"}, "message_stop"))
        return await self._stream(request, frames)
