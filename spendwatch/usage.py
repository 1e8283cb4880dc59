"""Build wire-contract usage events from provider SDK responses.

OpenAI counts cached tokens inside `prompt_tokens` and reasoning inside
`completion_tokens` (as the contract does). Anthropic reports cache tokens
*beside* `input_tokens`, so they are added here.

An agent step can also say what it did and what came back: `action=` (the tool
call) and `tool_result=` (its result) are hashed into the event's `fingerprint`
and `observation`, which is how the loop detector tells a stuck agent (the same
action getting the same answer) from one that polls (the same action, a changing
answer). Emit such an event after the tool ran, so that its result is known.

Without `action=`, a response that asks for tool calls (OpenAI `tool_calls`,
Responses API `function_call` items, Anthropic `tool_use` blocks) is
fingerprinted by those calls: `tool_fingerprint()`, a `digest` of
`[{"name": ..., "arguments": ...}, ...]` in call order with the arguments as
parsed JSON, so the same call hashes alike from every provider and stream.

Streams: `OpenAIStreamUsage` and `AnthropicStreamUsage` fold the chunks or
events of a streamed call into one event (OpenAI needs
`stream_options={"include_usage": True}`; Anthropic counts from `message_start`
and the cumulative `message_delta` usage). `usage_from_error()` makes the event
of a failed call (`status: "error"`, the error type in `labels`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import orjson

DIGEST_BYTES = 8
"""16 hex characters: collisions between two of a run's actions are ~1 in 10^19."""


def digest(value: Any) -> str:
    """A short stable hash of an action or a tool result: text and bytes as they are, anything else
    (a tool call's name and arguments, a JSON result) as JSON with sorted keys, so equal values hash
    alike in every process and language that does the same.

    >>> digest({"cmd": "pytest", "args": ["-x"]}) == digest({"args": ["-x"], "cmd": "pytest"})
    True
    >>> len(digest("ok")), digest("ok") == digest(b"ok"), digest("ok") == digest("ok ")
    (16, True, False)
    """
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        try:
            data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise TypeError(f"cannot hash {type(value).__name__!r} as an action or tool result: give text, "
                            "bytes or JSON-encodable data") from exc
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


def _usage_of(response: Any) -> Any:
    usage = _get(response, "usage")
    return usage if usage is not None else response


def usage_event(*, workflow: str, model: str, input_tokens: int, output_tokens: int, action: Any = None,
                tool_result: Any = None, **fields: Any) -> dict[str, Any]:
    """A usage event dict with a fresh `event_id` and `ts` = now unless given; None fields are left out.
    `action` and `tool_result`, when given, fill `fingerprint` and `observation` with their `digest`
    (an explicit `fingerprint` or `observation` wins)."""
    if action is not None and fields.get("fingerprint") is None:
        fields["fingerprint"] = digest(action)
    if tool_result is not None and fields.get("observation") is None:
        fields["observation"] = digest(tool_result)
    event = {"type": "usage", "event_id": fields.pop("event_id", None) or uuid.uuid4().hex,
             "ts": fields.pop("ts", None) or time.time(), "workflow": workflow, "model": model,
             "input_tokens": int(input_tokens), "output_tokens": int(output_tokens)}
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


def _plain(value: Any) -> Any:
    """A pydantic object (the SDKs' types) as a dict; anything else as it is."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _arguments(value: Any) -> Any:
    """Tool arguments as data: a JSON string is parsed (so whitespace and key order do not matter)."""
    if isinstance(value, (str, bytes)):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return _plain(value)


OPENAI_RESPONSES_TOOL_ITEMS = {"function_call": "arguments", "custom_tool_call": "input", "mcp_call": "arguments"}
"""Responses API output items that call a named tool, and the field holding their input. Built-in tools
(`web_search_call`, `code_interpreter_call`, `local_shell_call`, ...) are named by their type."""
ANTHROPIC_TOOL_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")


def tool_calls(response: Any) -> list[dict[str, Any]]:
    """The tool calls a response asks for, as `[{"name": ..., "arguments": ...}]` in order, from an
    OpenAI chat completion (first choice), a Responses API response or an Anthropic message (objects
    or dicts); [] when there are none."""
    calls: list[dict[str, Any]] = []
    choices = _get(response, "choices")
    if choices:
        message = _get(choices[0], "message")
        for tc in _get(message, "tool_calls") or []:
            fn = _get(tc, "function")
            if fn is not None:
                calls.append({"name": _get(fn, "name"), "arguments": _arguments(_get(fn, "arguments"))})
            else:  # a custom tool call
                calls.append({"name": _get(tc, "custom", "name"), "arguments": _arguments(_get(tc, "custom", "input"))})
        legacy = _get(message, "function_call")
        if legacy is not None and not calls:
            calls.append({"name": _get(legacy, "name"), "arguments": _arguments(_get(legacy, "arguments"))})
        return calls
    output = _get(response, "output")
    if isinstance(output, list):
        for item in output:
            kind = _get(item, "type")
            if kind in OPENAI_RESPONSES_TOOL_ITEMS:
                calls.append({"name": _get(item, "name"),
                              "arguments": _arguments(_get(item, OPENAI_RESPONSES_TOOL_ITEMS[kind]))})
            elif isinstance(kind, str) and kind.endswith("_call"):
                what = {k: v for k, v in (_plain(item) if not isinstance(item, dict) else item).items()
                        if k in ("action", "code", "queries", "input")}
                calls.append({"name": kind, "arguments": _plain(what)})
        return calls
    for block in _get(response, "content") or []:
        if _get(block, "type") in ANTHROPIC_TOOL_BLOCKS:
            calls.append({"name": _get(block, "name"), "arguments": _arguments(_get(block, "input"))})
    return calls


def tool_fingerprint(response: Any) -> str | None:
    """`digest` of the response's `tool_calls()`, or None when it calls no tool.

    >>> chat = {"choices": [{"message": {"tool_calls": [{"function": {"name": "grep",
    ...         "arguments": '{"pattern": "TODO", "path": "src"}'}}]}}]}
    >>> claude = {"content": [{"type": "tool_use", "name": "grep", "input": {"path": "src", "pattern": "TODO"}}]}
    >>> tool_fingerprint(chat) == tool_fingerprint(claude) == digest([{"name": "grep",
    ...     "arguments": {"pattern": "TODO", "path": "src"}}])
    True
    """
    calls = tool_calls(response)
    return digest(calls) if calls else None


def _fingerprinted(response: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with the response's tool-call fingerprint, unless the caller gave one or an `action`."""
    if fields.get("fingerprint") is None and fields.get("action") is None:
        try:
            fields["fingerprint"] = tool_fingerprint(response)
        except TypeError:  # arguments JSON cannot carry: no fingerprint, never a lost event
            pass
    return fields


def _with_labels(fields: dict[str, Any], extra: dict[str, str]) -> dict[str, Any]:
    labels = dict(fields.get("labels") or {})
    labels.update({k: v for k, v in extra.items() if v})
    if labels:
        fields["labels"] = labels
    return fields


def usage_from_openai(response: Any, *, workflow: str, model: str | None = None, provider: str = "openai",
                      **fields: Any) -> dict[str, Any]:
    """From an OpenAI chat/responses result (object or dict) or its `usage`. `provider` names who
    served it when the endpoint only speaks OpenAI's API (`azure`, `openrouter`, `google`, ...),
    which prices it. A result without usage (a stream without `include_usage`) gives an event
    of 0 tokens with `status="no_usage"`, which the worker counts as a call and reports.

    Chat completions count cache inside `prompt_tokens` and reasoning inside `completion_tokens`;
    the Responses API does the same with `input_tokens` / `input_tokens_details.cached_tokens` and
    `output_tokens` / `output_tokens_details.reasoning_tokens`. A Responses API result whose
    `status` is `failed` gets `status="error"` and its error code in `labels["error_type"]`.
    Tool calls in the response fill `fingerprint` (see `tool_fingerprint`)."""
    fields = _fingerprinted(response, fields)
    if _get(response, "object") == "response" and _get(response, "status") == "failed":
        fields.setdefault("status", "error")
        _with_labels(fields, {"error_type": str(_get(response, "error", "code") or "failed")})
    u = _usage_of(response)
    model = model or _get(response, "model") or "unknown"
    if _get(u, "prompt_tokens") is None and _get(u, "input_tokens") is None:
        fields.setdefault("status", "no_usage")
        return usage_event(workflow=workflow, model=model, provider=provider, input_tokens=0, output_tokens=0,
                           **fields)
    inp = _get(u, "prompt_tokens") or _get(u, "input_tokens") or 0
    out = _get(u, "completion_tokens") or _get(u, "output_tokens") or 0
    details = _get(u, "prompt_tokens_details") or _get(u, "input_tokens_details")
    cached = _get(details, "cached_tokens") or 0
    written = _get(details, "cache_write_tokens") or 0
    reasoning = (_get(u, "completion_tokens_details", "reasoning_tokens")
                 or _get(u, "output_tokens_details", "reasoning_tokens") or 0)
    return usage_event(workflow=workflow, model=model, provider=provider,
                       input_tokens=inp, output_tokens=out, cache_read_tokens=cached or None,
                       cache_write_tokens=written or None, reasoning_tokens=reasoning or None, **fields)


def usage_from_anthropic(response: Any, *, workflow: str, model: str | None = None, provider: str = "anthropic",
                         **fields: Any) -> dict[str, Any]:
    """From an Anthropic Messages result (object or dict) or its `usage`; cache tokens added to
    input, and 1-hour cache writes (`usage.cache_creation.ephemeral_1h_input_tokens`) told apart.
    `tool_use` blocks in the message fill `fingerprint` (see `tool_fingerprint`)."""
    fields = _fingerprinted(response, fields)
    u = _usage_of(response)
    read = _get(u, "cache_read_input_tokens") or 0
    write = _get(u, "cache_creation_input_tokens") or 0
    write_1h = _get(u, "cache_creation", "ephemeral_1h_input_tokens") or 0
    return usage_event(workflow=workflow, model=model or _get(response, "model") or "unknown", provider=provider,
                       input_tokens=(_get(u, "input_tokens") or 0) + read + write,
                       output_tokens=_get(u, "output_tokens") or 0, cache_read_tokens=read or None,
                       cache_write_tokens=write or None, cache_write_1h_tokens=write_1h or None, **fields)


def usage_from_error(error: BaseException, *, workflow: str, model: str, provider: str | None = None,
                     **fields: Any) -> dict[str, Any]:
    """The event of a call that failed (rate limited, overloaded, refused, timed out): 0 tokens,
    `status="error"`, and in `labels` the exception's type (`error_type`, e.g. `RateLimitError`), the
    HTTP status (`http_status`) and the provider's error code (`error_code`, e.g.
    `rate_limit_exceeded`, `overloaded_error`) when it has them. The worker counts it as a call, and
    errors feed the retry-storm and failing-loop detectors."""
    body = getattr(error, "body", None)
    code = getattr(error, "code", None) or _get(body, "error", "type") or _get(body, "type")
    status = getattr(error, "status_code", None)
    fields.setdefault("status", "error")
    _with_labels(fields, {"error_type": type(error).__name__, "http_status": str(status) if status else "",
                          "error_code": code if isinstance(code, str) else ""})
    return usage_event(workflow=workflow, model=model, provider=provider, input_tokens=0, output_tokens=0,
                       **fields)


class OpenAIStreamUsage:
    """Folds a streamed OpenAI call into one usage event: chat completion chunks (the usage comes on the
    last chunk when the call asked for `stream_options={"include_usage": True}`; without it the event
    says `status="no_usage"`) or Responses API events (`response.completed`, `.failed` or `.incomplete`
    carry the whole response). Tool calls streamed as deltas are joined and fingerprinted.

    >>> acc = OpenAIStreamUsage()
    >>> for chunk in client.chat.completions.create(..., stream=True,   # doctest: +SKIP
    ...                                             stream_options={"include_usage": True}):
    ...     acc.add(chunk)
    >>> emitter.emit(acc.event(workflow="support-bot"))                 # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.model: str | None = None
        self.usage: Any = None
        self.response: Any = None
        self._tools: dict[int, dict[str, str]] = {}

    def add(self, chunk: Any) -> None:
        kind = _get(chunk, "type")
        if isinstance(kind, str) and kind.startswith("response."):  # a Responses API event
            response = _get(chunk, "response")
            if response is not None:
                self.response = response
            return
        self.model = self.model or _get(chunk, "model")
        usage = _get(chunk, "usage")
        if usage is not None:
            self.usage = usage
        for choice in _get(chunk, "choices") or []:
            if (_get(choice, "index") or 0) != 0:
                continue
            for tc in _get(choice, "delta", "tool_calls") or []:
                slot = self._tools.setdefault(_get(tc, "index") or 0, {"name": "", "arguments": ""})
                slot["name"] += _get(tc, "function", "name") or ""
                slot["arguments"] += _get(tc, "function", "arguments") or ""

    def event(self, *, workflow: str, **fields: Any) -> dict[str, Any]:
        if self.response is not None:
            return usage_from_openai(self.response, workflow=workflow, **fields)
        message = {"tool_calls": [{"function": self._tools[i]} for i in sorted(self._tools)]}
        fields = _fingerprinted({"choices": [{"message": message}]}, fields)
        fields.setdefault("model", self.model)
        return usage_from_openai({"usage": self.usage}, workflow=workflow, **fields)


class AnthropicStreamUsage:
    """Folds a streamed Anthropic Messages call into one usage event: `message_start` holds the model and
    the prompt's usage (input and cache tokens), each `message_delta` the usage so far (cumulative:
    the last one wins, field by field), and `tool_use` blocks stream their input as JSON fragments,
    joined and fingerprinted here."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.usage: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}

    def add(self, event: Any) -> None:
        kind = _get(event, "type")
        if kind == "message_start":
            message = _get(event, "message")
            self.model = _get(message, "model") or self.model
            self.usage.update({k: v for k, v in (_plain(_get(message, "usage")) or {}).items() if v is not None})
        elif kind == "message_delta":
            self.usage.update({k: v for k, v in (_plain(_get(event, "usage")) or {}).items() if v is not None})
        elif kind == "content_block_start":
            block = _get(event, "content_block")
            if _get(block, "type") in ANTHROPIC_TOOL_BLOCKS:
                self._blocks[_get(event, "index") or 0] = {"type": "tool_use", "name": _get(block, "name"),
                                                           "input": _plain(_get(block, "input")), "json": ""}
        elif kind == "content_block_delta":
            delta = _get(event, "delta")
            block = self._blocks.get(_get(event, "index") or 0)
            if block is not None and _get(delta, "type") == "input_json_delta":
                block["json"] += _get(delta, "partial_json") or ""

    def event(self, *, workflow: str, **fields: Any) -> dict[str, Any]:
        content = [{"type": "tool_use", "name": b["name"], "input": b["json"] or b["input"]}
                   for _, b in sorted(self._blocks.items())]
        fields = _fingerprinted({"content": content}, fields)
        if not self.usage:
            fields.setdefault("status", "no_usage")
        return usage_from_anthropic({"model": self.model, "usage": self.usage}, workflow=workflow,
                                    model=fields.pop("model", None) or self.model, **fields)
