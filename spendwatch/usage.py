"""Build wire-contract usage events from provider SDK responses.

OpenAI counts cached tokens inside `prompt_tokens` and reasoning inside
`completion_tokens` (as the contract does). Anthropic reports cache tokens
*beside* `input_tokens`, so they are added here.

An agent step can also say what it did and what came back: `action=` (the tool
call) and `tool_result=` (its result) are hashed into the event's `fingerprint`
and `observation`, which is how the loop detector tells a stuck agent (the same
action getting the same answer) from one that polls (the same action, a changing
answer). Emit such an event after the tool ran, so that its result is known.
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


def usage_from_openai(response: Any, *, workflow: str, model: str | None = None, provider: str = "openai",
                      **fields: Any) -> dict[str, Any]:
    """From an OpenAI chat/responses result (object or dict) or its `usage`. `provider` names who
    served it when the endpoint only speaks OpenAI's API (`azure`, `openrouter`, `google`, ...),
    which prices it. A result without usage (a stream without `include_usage`) gives an event
    of 0 tokens with `status="no_usage"`, which the worker counts as a call and reports."""
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
    input, and 1-hour cache writes (`usage.cache_creation.ephemeral_1h_input_tokens`) told apart."""
    u = _usage_of(response)
    read = _get(u, "cache_read_input_tokens") or 0
    write = _get(u, "cache_creation_input_tokens") or 0
    write_1h = _get(u, "cache_creation", "ephemeral_1h_input_tokens") or 0
    return usage_event(workflow=workflow, model=model or _get(response, "model") or "unknown", provider=provider,
                       input_tokens=(_get(u, "input_tokens") or 0) + read + write,
                       output_tokens=_get(u, "output_tokens") or 0, cache_read_tokens=read or None,
                       cache_write_tokens=write or None, cache_write_1h_tokens=write_1h or None, **fields)
