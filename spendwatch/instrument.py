"""`instrument(client, workflow=..., emitter=...)`: every call of an OpenAI or Anthropic client emits
its usage event, without touching a call site.

    client = spendwatch.instrument(openai.OpenAI(), workflow="support-bot", team="cx", emitter=emitter)
    client.chat.completions.create(...)          # one event per call: tokens, cache, reasoning,
    client.responses.create(..., stream=True)    # latency, tool-call fingerprint; failures as
    anthropic_client.messages.create(...)        # status="error" with the error type in labels

What is wrapped, on the client instance given (other clients are left alone):
`chat.completions.create` and `responses.create` of `openai.OpenAI` / `AsyncOpenAI`
(and Azure's, priced as `azure`), `messages.create` of `anthropic.Anthropic` /
`AsyncAnthropic`, streaming included: a streamed call is counted when the
stream ends, is closed or is dropped. OpenAI chat streams report usage only
when asked: the wrapper adds `stream_options={"include_usage": True}` unless
the call says otherwise (the final chunk then has empty `choices`). The SDKs'
helpers that go through `create` (`chat.completions.stream`, `responses.stream`)
are counted too; `with_raw_response` is counted, `with_streaming_response` and
Anthropic's `messages.stream()` helper are not (use `create(stream=True)`).

Attribution: `workflow`, `team`, `agent_id`, `run_id`, `service` and `labels`
given here hold for every call; `with spendwatch.attribute(run_id=..., step=...)`
overrides them for the calls made inside the block (this thread or asyncio task).
With `switch=` (a started `KillSwitch`), each call is checked first and raises
`SpendKilled` instead of spending when its workflow, agent or run is killed.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from spendwatch.emitter import UsageEmitter
from spendwatch.guard import KillSwitch, SpendKilled
from spendwatch.usage import (
    AnthropicStreamUsage,
    OpenAIStreamUsage,
    usage_from_anthropic,
    usage_from_error,
    usage_from_openai,
)

log = logging.getLogger("spendwatch.instrument")

C = TypeVar("C")
MARK = "_spendwatch_instrumented"
_ATTRIBUTION: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("spendwatch_attribution",
                                                                                      default=None)


@contextmanager
def attribute(**fields: Any) -> Iterator[None]:
    """Attribute the instrumented calls made inside this block (in this thread or asyncio task) to a
    run, agent, step, ...: any usage event field (`run_id`, `agent_id`, `team`, `step`, `labels`,
    `workflow`). Nested blocks add to (and override) the outer ones; `labels` are merged.

    >>> with attribute(run_id="r-1", step=3):                     # doctest: +SKIP
    ...     client.chat.completions.create(...)
    """
    outer = _ATTRIBUTION.get() or {}
    merged = {**outer, **fields}
    if "labels" in fields and "labels" in outer:
        merged["labels"] = {**outer["labels"], **fields["labels"]}
    token = _ATTRIBUTION.set(merged)
    try:
        yield
    finally:
        _ATTRIBUTION.reset(token)


def _is_async(client: Any) -> bool:
    return any(c.__name__ == "AsyncAPIClient" for c in type(client).__mro__)


class _Calls:
    """What the wrappers of one client share: attribution, the emitter and the kill switch."""

    def __init__(self, emitter: UsageEmitter, switch: KillSwitch | None, provider: str,
                 static: dict[str, Any]):
        self.emitter, self.switch, self.provider, self.static = emitter, switch, provider, static

    def fields(self) -> dict[str, Any]:
        context = _ATTRIBUTION.get() or {}
        out = {**self.static, **context}
        if self.static.get("labels") and context.get("labels"):
            out["labels"] = {**self.static["labels"], **context["labels"]}
        return {k: v for k, v in out.items() if v is not None}

    def check(self, fields: dict[str, Any]) -> None:
        if self.switch is not None:
            self.switch.check(workflow=fields.get("workflow"), agent_id=fields.get("agent_id"),
                              run_id=fields.get("run_id"))

    def emit(self, make: Callable[[], dict[str, Any]]) -> None:
        """Build and queue one event; a bug here costs the event, never the caller's call."""
        try:
            self.emitter.emit(make())
        except Exception:
            log.exception("spendwatch instrument: could not build a usage event; call not counted")


class _Call:
    """One call in flight: its fields, start time and how its result becomes an event."""

    def __init__(self, calls: _Calls, family: str, kwargs: dict[str, Any]):
        self.calls, self.family = calls, family
        self.fields = calls.fields()
        self.model = str(kwargs.get("model") or "unknown")
        self.started = time.monotonic()
        self.done = False

    def latency(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)

    def of_result(self, result: Any) -> None:
        if type(result).__name__ == "LegacyAPIResponse":  # with_raw_response: its parse() is cached
            result = result.parse()
        usage_from = usage_from_anthropic if self.family == "anthropic" else usage_from_openai
        self._emit(lambda f: usage_from(result, provider=self.calls.provider, **f))

    def of_error(self, error: BaseException) -> None:
        self._emit(lambda f: usage_from_error(error, model=f.pop("model", self.model), provider=self.calls.provider,
                                              **f))

    def of_stream(self, acc: OpenAIStreamUsage | AnthropicStreamUsage, error: BaseException | None) -> None:
        def make(f: dict[str, Any]) -> dict[str, Any]:
            if acc.model is None and getattr(acc, "response", None) is None:
                f.setdefault("model", self.model)
            event = acc.event(provider=self.calls.provider, **f)
            if error is not None:
                failed = usage_from_error(error, model=event["model"], provider=self.calls.provider,
                                          workflow=event["workflow"])
                event["status"] = "error"
                event["labels"] = {**event.get("labels", {}), **failed["labels"]}
            return event
        self._emit(make)

    def _emit(self, make: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        if self.done:
            return
        self.done = True
        fields = {**self.fields, "latency_ms": self.latency()}
        self.calls.emit(lambda: make(dict(fields)))


class _Stream:
    """A sync stream, passed through chunk by chunk; the event leaves when it ends, is closed or dropped."""

    def __init__(self, stream: Any, call: _Call, acc: OpenAIStreamUsage | AnthropicStreamUsage):
        self._stream, self._call, self._acc = stream, call, acc
        self._it = iter(stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._it)
        except StopIteration:
            self._call.of_stream(self._acc, None)
            raise
        except Exception as err:
            self._call.of_stream(self._acc, err)
            raise
        self._acc.add(chunk)
        return chunk

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._call.of_stream(self._acc, None)

    def __del__(self) -> None:
        call = self.__dict__.get("_call")
        if call is not None and not call.done:
            call.of_stream(self._acc, None)


class _AsyncStream:
    """The asyncio twin of `_Stream`."""

    def __init__(self, stream: Any, call: _Call, acc: OpenAIStreamUsage | AnthropicStreamUsage):
        self._stream, self._call, self._acc = stream, call, acc
        self._it = stream.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            self._call.of_stream(self._acc, None)
            raise
        except Exception as err:
            self._call.of_stream(self._acc, err)
            raise
        self._acc.add(chunk)
        return chunk

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._call.of_stream(self._acc, None)

    def __del__(self) -> None:
        call = self.__dict__.get("_call")
        if call is not None and not call.done:
            call.of_stream(self._acc, None)


def _prepare(calls: _Calls, family: str, chat: bool, kwargs: dict[str, Any]) -> _Call:
    call = _Call(calls, family, kwargs)
    calls.check(call.fields)
    # absent, None, or the SDKs' falsy NOT_GIVEN / omit sentinels (what the `.stream()` helpers pass)
    if chat and kwargs.get("stream") is True and not kwargs.get("stream_options"):
        kwargs["stream_options"] = {"include_usage": True}
    return call


def _new_acc(family: str) -> OpenAIStreamUsage | AnthropicStreamUsage:
    return AnthropicStreamUsage() if family == "anthropic" else OpenAIStreamUsage()


def _wrap(create: Callable[..., Any], calls: _Calls, family: str, chat: bool, is_async: bool) -> Callable[..., Any]:
    if is_async:
        @functools.wraps(create)
        async def create_async(*args: Any, **kwargs: Any) -> Any:
            call = _prepare(calls, family, chat, kwargs)
            try:
                result = await create(*args, **kwargs)
            except SpendKilled:
                raise
            except Exception as err:
                call.of_error(err)
                raise
            if kwargs.get("stream") is True and hasattr(result, "__aiter__"):
                return _AsyncStream(result, call, _new_acc(family))
            call.of_result(result)
            return result
        return create_async

    @functools.wraps(create)
    def create_sync(*args: Any, **kwargs: Any) -> Any:
        call = _prepare(calls, family, chat, kwargs)
        try:
            result = create(*args, **kwargs)
        except SpendKilled:
            raise
        except Exception as err:
            call.of_error(err)
            raise
        if kwargs.get("stream") is True and hasattr(result, "__iter__") and not isinstance(result, (dict, str)):
            return _Stream(result, call, _new_acc(family))
        call.of_result(result)
        return result
    return create_sync


def instrument(client: C, *, workflow: str, emitter: UsageEmitter, team: str | None = None,
               agent_id: str | None = None, run_id: str | None = None, service: str | None = None,
               labels: dict[str, str] | None = None, provider: str | None = None,
               switch: KillSwitch | None = None) -> C:
    """Make every call of an `openai.OpenAI` / `AsyncOpenAI` (Azure too) or `anthropic.Anthropic` /
    `AsyncAnthropic` client emit its usage event to `emitter`, attributed as given here (and by
    `attribute()` blocks around calls), and, with `switch`, refuse calls whose workflow, agent or run
    is killed (`SpendKilled`). Returns the same client, changed in place; instrumenting twice is a
    no-op. `provider` names who serves an OpenAI-compatible endpoint (`openrouter`, `google`, ...),
    which prices it; by default `openai`, `azure` or `anthropic` from the client's class.

    A synchronous program starts the emitter with `emitter.start_thread()`; an asyncio one on its
    loop (`await emitter.start()`, or simply the first call)."""
    if getattr(client, MARK, False):
        return client
    name = type(client).__name__
    is_async = _is_async(client)
    static = {"workflow": workflow, "team": team, "agent_id": agent_id, "run_id": run_id, "service": service,
              "labels": dict(labels) if labels else None}
    targets: list[tuple[Any, str, bool]] = []
    if hasattr(client, "messages") and "anthropic" in type(client).__module__:
        family = "anthropic"
        targets.append((client.messages, family, False))
    elif hasattr(client, "chat") and hasattr(client, "responses"):
        family = "openai"
        targets.append((client.chat.completions, family, True))
        targets.append((client.responses, family, False))
    else:
        raise TypeError(f"spendwatch.instrument() knows openai.OpenAI/AsyncOpenAI and anthropic.Anthropic/"
                        f"AsyncAnthropic clients, not {name}")
    calls = _Calls(emitter, switch, provider or ("azure" if "Azure" in name else family), static)
    for resource, fam, chat in targets:
        resource.create = _wrap(resource.create, calls, fam, chat, is_async)
    setattr(client, MARK, True)
    return client
