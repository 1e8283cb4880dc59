"""LiteLLM → spendwatch: one usage event per call, and the kill switch in front of every call.

For the proxy, configuration only (the module-level `handler` reads its settings from the
environment; see the README's "Integrations" section)::

    litellm_settings:
      callbacks: spendwatch.integrations.litellm.handler

For the SDK: ``litellm.callbacks = [SpendwatchLogger(broker=..., mapping=...)]``.

What it does:

- **Success** (`async_log_success_event`, and `log_success_event` for synchronous calls): LiteLLM's
  `standard_logging_object` becomes a usage event. Tokens follow the wire contract: `input_tokens` is
  LiteLLM's `prompt_tokens`, which already counts cache reads and writes (LiteLLM adds Anthropic's
  beside-the-prompt cache tokens itself); `cache_read_tokens`, `cache_write_tokens` (and the 1-hour
  part) and `reasoning_tokens` come from its usage details. The model is the one LiteLLM priced
  (`model_map_information.model_map_key`, e.g. an Azure deployment's base model), the provider is
  LiteLLM's `custom_llm_provider` named as genai-prices names it (`vertex_ai` → `google`,
  `bedrock` → `aws`, ...). A cache hit is `status="cache_hit"` at `cost_usd=0`.
- **Failure** (`async_log_failure_event`): `status="error"`, 0 tokens, the error class in
  `labels.error`. Calls this integration refused (killed) are not reported as failures.
- **Kill switch**: `async_pre_call_hook` (proxy) and `async_pre_call_deployment_hook` (SDK async
  calls and the router) check the call's workflow, agent and run against the signed kill commands
  on the control topic and refuse a killed one with `SpendKilledRequest` — a `SpendKilled` that is
  also FastAPI's `HTTPException` (403, type `spend_killed`) when FastAPI is installed, as in the proxy.
- **Attribution** follows `mapping`: for each event field an ordered list of sources, the first that
  has a value wins (`DEFAULT_MAPPING`, documented in the README). Sources: `metadata.KEY` (the
  request's metadata, then the key's), `header.NAME` (a request header the proxy logged),
  `tag.NAME` (a request tag `NAME:value` or `NAME=value`), `=TEXT` (a constant), and the call's
  `key_alias`, `team_alias`, `team_id`, `user_id`, `user_email`, `end_user`, `org_alias`,
  `project_alias`, `model_group`, `session_id`, `trace_id`.

The emitter starts lazily, on the first event, in the event loop LiteLLM runs the callback on (an
emitter started in another loop would hold its events forever); synchronous calls, which LiteLLM logs
from a thread without a loop, go through an emitter on a loop of its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from litellm.integrations.custom_logger import CustomLogger

from schemas import limits
from schemas.signing import Keyring, KeyringError
from spendwatch.emitter import UsageEmitter
from spendwatch.guard import KillSwitch, SpendKilled
from spendwatch.integrations._common import (
    TOPIC_ENV,
    BackgroundEmitter,
    broker_from_env,
    clip,
    clip_labels,
    provider_of,
    split_model,
)
from spendwatch.usage import digest

log = logging.getLogger("spendwatch.integrations.litellm")

DEFAULT_MAPPING: dict[str, tuple[str, ...]] = {
    "workflow": ("metadata.spendwatch_workflow", "header.x-spendwatch-workflow", "tag.workflow", "key_alias",
                 "=litellm"),
    "team": ("metadata.spendwatch_team", "header.x-spendwatch-team", "tag.team", "team_alias", "team_id"),
    "agent_id": ("metadata.spendwatch_agent_id", "header.x-spendwatch-agent-id", "tag.agent"),
    "run_id": ("metadata.spendwatch_run_id", "header.x-spendwatch-run-id", "tag.run", "session_id"),
    "service": ("metadata.spendwatch_service", "header.x-spendwatch-service"),
    "fingerprint": ("metadata.spendwatch_fingerprint",),
    "observation": ("metadata.spendwatch_observation",),
}
"""Event field → sources tried in order. `workflow` always gets a value (the constant last)."""
DEFAULT_LABELS: dict[str, str] = {
    "key_alias": "key_alias", "user": "user_id", "end_user": "end_user", "model_group": "model_group",
}
"""Label name → source; `metadata.spendwatch_labels` (a string map) adds more."""
MAPPED = ("workflow", "team", "agent_id", "run_id", "service", "fingerprint", "observation")
KILL_TARGETS = ("workflow", "agent_id", "run_id")


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


class CallContext:
    """What a call says about who made it, from a logged call or a request, for `mapping` sources."""

    def __init__(self, fields: Mapping[str, Any], metadata: Iterable[Any], headers: Iterable[Any],
                 tags: Iterable[Any]):
        self.fields = {k: v for k, v in fields.items() if clip(v)}
        self.metadata = [m for m in metadata if isinstance(m, Mapping)]
        self.headers: dict[str, Any] = {}
        for h in headers:
            if isinstance(h, Mapping):
                self.headers.update({str(k).lower(): v for k, v in h.items()})
        self.tags = [str(t) for tag_list in tags if isinstance(tag_list, (list, tuple)) for t in tag_list]

    def lookup(self, source: str) -> str | None:
        if source.startswith("="):
            return source[1:] or None
        kind, dot, name = source.partition(".")
        if dot and kind == "metadata":
            for meta in self.metadata:
                if (value := clip(meta.get(name))) is not None:
                    return value
            return None
        if dot and kind == "header":
            return clip(self.headers.get(name.lower()))
        if dot and kind == "tag":
            for tag in self.tags:
                for sep in (":", "="):
                    if tag.startswith(name + sep):
                        return clip(tag[len(name) + 1:])
            return None
        return clip(self.fields.get(source))

    def resolve(self, sources: Iterable[str]) -> str | None:
        for source in sources:
            if (value := self.lookup(source)) is not None:
                return value
        return None

    def extra_labels(self) -> dict[str, Any]:
        for meta in self.metadata:
            labels = meta.get("spendwatch_labels")
            if isinstance(labels, Mapping):
                return dict(labels)
        return {}


def context_of_log(kwargs: Mapping[str, Any], slo: Mapping[str, Any]) -> CallContext:
    """From a logged call: the standard logging object plus the call's `litellm_params.metadata`
    (the SDK's `metadata=`; on the proxy the request's metadata merged with the key's)."""
    lp = kwargs.get("litellm_params") or {}
    lp_meta = lp.get("metadata") or {}
    meta = slo.get("metadata") or {}

    def pick(*names: str) -> Any:
        for name in names:
            for source in (meta, lp_meta):
                if source.get(name):
                    return source[name]
        return None

    fields = {
        "key_alias": pick("user_api_key_alias"), "team_alias": pick("user_api_key_team_alias", "team_alias"),
        "team_id": pick("user_api_key_team_id", "team_id"), "user_id": pick("user_api_key_user_id"),
        "user_email": pick("user_api_key_user_email"), "org_alias": pick("user_api_key_org_alias"),
        "project_alias": pick("user_api_key_project_alias"),
        "end_user": slo.get("end_user") or pick("user_api_key_end_user_id"),
        "model_group": slo.get("model_group"), "trace_id": slo.get("trace_id"),
        "session_id": slo.get("session_id") or lp.get("litellm_session_id"),
    }
    metadata = [meta.get("requester_metadata"), lp_meta, meta.get("spend_logs_metadata"),
                meta.get("user_api_key_auth_metadata"), lp_meta.get("user_api_key_metadata")]
    headers = [lp_meta.get("headers"), meta.get("requester_custom_headers")]
    return CallContext(fields, metadata, headers, [slo.get("request_tags"), lp_meta.get("tags")])


def context_of_request(data: Mapping[str, Any], user_api_key_dict: Any = None) -> CallContext:
    """From a request about to be made: the proxy's `data` and key (`async_pre_call_hook`), or the
    SDK's call kwargs (`async_pre_call_deployment_hook`)."""
    meta: dict[str, Any] = {**(data.get("litellm_metadata") or {}), **(data.get("metadata") or {})}
    lp_meta = _get(data, "litellm_params", "metadata") or {}
    key = user_api_key_dict

    def pick(attr: str, *names: str) -> Any:
        value = _get(key, attr) if key is not None else None
        for name in names:
            value = value or meta.get(name) or lp_meta.get(name)
        return value

    fields = {
        "key_alias": pick("key_alias", "user_api_key_alias"),
        "team_alias": pick("team_alias", "user_api_key_team_alias", "team_alias"),
        "team_id": pick("team_id", "user_api_key_team_id", "team_id"),
        "user_id": pick("user_id", "user_api_key_user_id"), "user_email": pick("user_email", "user_api_key_user_email"),
        "org_alias": pick("organization_alias", "user_api_key_org_alias"),
        "project_alias": pick("project_alias", "user_api_key_project_alias"),
        "end_user": pick("end_user_id", "user_api_key_end_user_id") or data.get("user"),
        "model_group": data.get("model"), "trace_id": data.get("litellm_trace_id"),
        "session_id": data.get("litellm_session_id") or _get(data, "litellm_params", "litellm_session_id"),
    }
    metadata = [meta.get("requester_metadata"), meta, lp_meta, _get(key, "metadata") if key is not None else None]
    headers = [meta.get("headers"), _get(data, "proxy_server_request", "headers")]
    return CallContext(fields, metadata, headers, [meta.get("tags"), data.get("tags"), lp_meta.get("tags")])


def _usage_of(slo: Mapping[str, Any], response_obj: Any) -> Any:
    for usage in (_get(slo, "metadata", "usage_object"), _get(slo, "hidden_params", "usage_object")):
        if usage:
            return usage
    return _get(response_obj, "usage")


def tokens_of(slo: Mapping[str, Any], response_obj: Any) -> dict[str, int]:
    """The call's tokens in the wire contract's terms (cache and reasoning inside their totals)."""
    u = _usage_of(slo, response_obj)
    prompt = _int(slo.get("prompt_tokens")) or _int(_get(u, "prompt_tokens"))
    completion = _int(slo.get("completion_tokens")) or _int(_get(u, "completion_tokens"))
    details = _get(u, "prompt_tokens_details")
    read = max(_int(_get(details, "cached_tokens")), _int(_get(u, "cache_read_input_tokens")))
    write = max(_int(_get(u, "cache_creation_input_tokens")), _int(_get(details, "cache_creation_tokens")),
                _int(_get(details, "cache_write_tokens")))
    write_1h = min(write, _int(_get(details, "cache_creation_token_details", "ephemeral_1h_input_tokens"))
                   or _int(_get(u, "cache_creation", "ephemeral_1h_input_tokens")))
    reasoning = _int(_get(u, "completion_tokens_details", "reasoning_tokens"))
    if read + write > prompt:  # a provider LiteLLM passed through with cache counted beside the prompt
        prompt += read + write
    completion = max(completion, reasoning)
    cap = limits.MAX_TOKENS
    return {"input_tokens": min(prompt, cap), "output_tokens": min(completion, cap),
            "cache_read_tokens": min(read, cap), "cache_write_tokens": min(write, cap),
            "cache_write_1h_tokens": min(write_1h, cap), "reasoning_tokens": min(reasoning, cap)}


def priced_model(slo: Mapping[str, Any]) -> tuple[str, str | None]:
    """(model, provider) as genai-prices knows them: the name LiteLLM priced, its provider renamed."""
    provider = provider_of(slo.get("custom_llm_provider"))
    name = (_get(slo, "model_map_information", "model_map_key") or slo.get("model")
            or _get(slo, "hidden_params", "litellm_model_name") or "unknown")
    model, provider = split_model(str(name), provider)
    return clip(model, limits.MAX_NAME_LEN) or "unknown", clip(provider, limits.MAX_NAME_LEN)


def tool_fingerprint(slo: Mapping[str, Any], response_obj: Any) -> str | None:
    """`digest` of the tool calls the model asked for (name + arguments), when it asked for any."""
    message = _get(response_obj, "choices")
    calls = None
    if isinstance(message, list) and message:
        calls = _get(message[0], "message", "tool_calls")
    if not calls:
        resp = slo.get("response")
        choices = _get(resp, "choices") if isinstance(resp, Mapping) else None
        if isinstance(choices, list) and choices:
            calls = _get(choices[0], "message", "tool_calls")
    if not calls or not isinstance(calls, list):
        return None
    try:
        return digest([{"name": _get(c, "function", "name"), "arguments": _get(c, "function", "arguments")}
                       for c in calls])
    except TypeError:
        return None


class SpendKilledRequest(SpendKilled):
    """A refused call: `SpendKilled` for SDK callers (and `HTTPException` 403 where FastAPI is)."""


@functools.cache
def _http_killed() -> Callable[[SpendKilled], SpendKilledRequest] | None:
    """`SpendKilledRequest` that is also FastAPI's `HTTPException` (the proxy turns that into its
    HTTP status), or None without FastAPI."""
    try:
        from fastapi import HTTPException
    except ImportError:
        return None

    class SpendKilledHTTP(SpendKilledRequest, HTTPException):
        def __init__(self, err: SpendKilled):
            HTTPException.__init__(self, status_code=403, detail={
                "error": str(err), "type": "spend_killed", "scope": err.scope, "target": err.target,
                "alert_id": err.alert_id, "command_id": err.command_id})
            self.message = str(err)

        def __str__(self) -> str:
            return self.message

    return SpendKilledHTTP


def _rejection(err: SpendKilled) -> SpendKilledRequest:
    http = _http_killed()
    exc = http(err) if http is not None else SpendKilledRequest(err.reason)
    exc.args = err.args
    exc.reason, exc.scope, exc.target = err.reason, err.scope, err.target
    exc.alert_id, exc.command_id = err.alert_id, err.command_id
    return exc


class _LoopGuard:
    """A `KillSwitch` per event loop, started on the first check in that loop: a switch's follower task
    belongs to the loop it was started on and stops with it."""

    def __init__(self, broker: str, topic: str, keyring: Keyring, fail_closed: bool, wait: float):
        self.broker, self.topic, self.keyring = broker, topic, keyring
        self.fail_closed, self.wait = fail_closed, wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._switch: KillSwitch | None = None
        self._starting: asyncio.Task[bool] | None = None

    async def switch(self) -> KillSwitch:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._switch is None:
            self._loop = loop
            self._switch = KillSwitch(self.broker, self.topic, keyring=self.keyring, fail_closed=self.fail_closed)
            self._starting = loop.create_task(self._switch.start(wait=self.wait))
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)  # the first calls wait (≤ `wait` s) for the kills known
        return self._switch

    async def stop(self) -> None:
        if self._switch is not None and self._loop is asyncio.get_running_loop():
            await self._switch.stop()
        self._switch = self._loop = self._starting = None


class SpendwatchLogger(CustomLogger):
    """LiteLLM callback: usage events to `topic`, kill commands obeyed from `control_topic`.

    `mapping` overrides `DEFAULT_MAPPING` per field (sources in order), `labels` replaces
    `DEFAULT_LABELS`. `use_litellm_cost=True` sends LiteLLM's `response_cost` as `cost_usd` (it then
    wins over spendwatch's price catalog: use it for deployments with custom prices). `keyring` enables
    the kill switch (default: `SPENDWATCH_CONTROL_KEYS` when set, else no kill switch, logged once);
    `fail_closed` refuses every call while the control topic cannot be read.
    """

    def __init__(self, broker: str | None = None, topic: str = "spendwatch.usage", *,
                 control_topic: str = "spendwatch.control", mapping: Mapping[str, Iterable[str]] | None = None,
                 labels: Mapping[str, str] | None = None, use_litellm_cost: bool = False,
                 keyring: Keyring | None = None, guard: bool = True, fail_closed: bool = False,
                 guard_wait: float = 2.0, **emitter_kwargs: Any):
        super().__init__()
        self.broker = broker or broker_from_env()
        self.topic = topic
        self.mapping = {**DEFAULT_MAPPING, **{k: tuple(v) for k, v in (mapping or {}).items()}}
        unknown = set(self.mapping) - set(MAPPED)
        if unknown:
            raise ValueError(f"mapping names unknown fields {sorted(unknown)}; known: {', '.join(MAPPED)}")
        self.labels = dict(DEFAULT_LABELS if labels is None else labels)
        self.use_litellm_cost = use_litellm_cost
        self.emitter = UsageEmitter(self.broker, topic, **emitter_kwargs)
        """Sends the events of async calls, from the loop LiteLLM runs (bound on the first event)."""
        self.background = BackgroundEmitter(lambda: UsageEmitter(self.broker, topic, **emitter_kwargs))
        """Sends the events of synchronous calls, logged from LiteLLM's thread without a loop."""
        self.skipped: Counter[str] = Counter()
        """Calls not reported, by reason (no logging object, a call this logger refused, a bug)."""
        self.refused = 0
        self._guard: _LoopGuard | None = None
        if guard:
            try:
                keyring = keyring or Keyring.load()
            except KeyringError:
                log.warning("spendwatch LiteLLM callback: no control keys (SPENDWATCH_CONTROL_KEYS); "
                            "kill commands are not enforced, usage is still reported")
            else:
                self._guard = _LoopGuard(self.broker, control_topic, keyring, fail_closed, guard_wait)

    # ---- events ---------------------------------------------------------------------------------

    def event(self, kwargs: Mapping[str, Any], response_obj: Any, *, failed: bool = False) -> dict[str, Any] | None:
        """The usage event of one logged call, or None when it is not one to report."""
        slo = kwargs.get("standard_logging_object")
        if not isinstance(slo, Mapping):
            self.skipped["no standard_logging_object"] += 1
            return None
        if failed and isinstance(kwargs.get("exception"), SpendKilled):
            self.skipped["refused by the kill switch"] += 1
            return None
        ctx = context_of_log(kwargs, slo)
        model, provider = priced_model(slo)
        event: dict[str, Any] = {"type": "usage", "model": model, "provider": provider}
        for field, sources in self.mapping.items():
            event[field] = ctx.resolve(sources)
        event["workflow"] = clip(event["workflow"], limits.MAX_NAME_LEN) or "litellm"
        for field in ("team", "service"):
            event[field] = clip(event[field], limits.MAX_NAME_LEN)
        event["event_id"] = clip(slo.get("litellm_call_id") or kwargs.get("litellm_call_id") or slo.get("id"))
        end, start = slo.get("endTime"), slo.get("startTime")
        event["ts"] = end if isinstance(end, (int, float)) and end > 0 else time.time()
        if isinstance(start, (int, float)) and isinstance(end, (int, float)) and 0 <= end - start < 86_400:
            event["latency_ms"] = round((end - start) * 1000, 3)
        labels = {name: ctx.lookup(source) for name, source in self.labels.items()}
        labels.update(ctx.extra_labels())
        if failed:
            event.update(input_tokens=0, output_tokens=0, status="error")
            err = slo.get("error_information") or {}
            labels["error"] = err.get("error_class") or type(kwargs.get("exception")).__name__
            labels["error_code"] = err.get("error_code")
        else:
            event.update({k: v for k, v in tokens_of(slo, response_obj).items() if v or k.endswith("put_tokens")})
            event["status"] = "cache_hit" if slo.get("cache_hit") else "ok"
            cost = slo.get("response_cost")
            if slo.get("cache_hit"):
                event["cost_usd"] = 0.0
            elif self.use_litellm_cost and isinstance(cost, (int, float)) and 0 <= cost <= limits.MAX_COST_USD:
                event["cost_usd"] = float(cost)
            if event.get("fingerprint") is None:
                event["fingerprint"] = tool_fingerprint(slo, response_obj)
        event["labels"] = clip_labels(labels)
        return {k: v for k, v in event.items() if v is not None and v != {}}

    def _report(self, kwargs: Any, response_obj: Any, failed: bool, background: bool) -> None:
        try:
            event = self.event(kwargs, response_obj, failed=failed)
            if event is None:
                return
            if background:
                self.background.emit(event)
            else:
                self.emitter.emit(event)  # binds to this (LiteLLM's) running loop on first use
        except Exception:  # reporting must never break a call
            self.skipped["error"] += 1
            log.exception("spendwatch LiteLLM callback: could not report a call")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._report(kwargs, response_obj, failed=False, background=False)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._report(kwargs, response_obj, failed=True, background=False)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._report(kwargs, response_obj, failed=False, background=True)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._report(kwargs, response_obj, failed=True, background=True)

    # ---- kill switch ----------------------------------------------------------------------------

    def targets(self, ctx: CallContext) -> dict[str, str | None]:
        return {field: ctx.resolve(self.mapping[field]) for field in KILL_TARGETS}

    async def check(self, ctx: CallContext) -> None:
        """Raise `SpendKilledRequest` if the call's workflow, agent or run is killed."""
        if self._guard is None:
            return
        switch = await self._guard.switch()
        try:
            switch.check(**self.targets(ctx))
        except SpendKilled as err:
            self.refused += 1
            raise _rejection(err) from None

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        """Proxy: refuse a killed call before it is routed (HTTP 403, `type: spend_killed`)."""
        await self.check(context_of_request(data, user_api_key_dict))
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> None:
        """SDK async calls (and the router): refuse a killed call before it is sent."""
        await self.check(context_of_request(kwargs))
        return None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the events of this loop's calls (and the synchronous ones) are sent."""
        await self.emitter.flush(timeout)
        await asyncio.get_running_loop().run_in_executor(None, self.background.flush, timeout)

    async def aclose(self) -> None:
        await self.emitter.stop()
        if self._guard is not None:
            await self._guard.stop()
        self.background.stop()


def _env_mapping() -> tuple[dict[str, list[str]] | None, dict[str, str] | None]:
    """`SPENDWATCH_LITELLM_MAPPING`: JSON `{"workflow": ["tag.app", ...], ..., "labels": {...}}`."""
    raw = os.environ.get("SPENDWATCH_LITELLM_MAPPING")
    if not raw:
        return None, None
    try:
        spec = orjson.loads(raw)
        labels = spec.pop("labels", None)
        return {k: [v] if isinstance(v, str) else list(v) for k, v in spec.items()}, labels
    except (orjson.JSONDecodeError, AttributeError, TypeError) as err:
        raise ValueError(f"SPENDWATCH_LITELLM_MAPPING is not a JSON object of field → sources: {err}") from None


def from_env() -> SpendwatchLogger:
    """The proxy's handler, configured by environment variables (README, "Integrations")."""
    mapping, labels = _env_mapping()
    return SpendwatchLogger(
        topic=os.environ.get(TOPIC_ENV, "spendwatch.usage"),
        control_topic=os.environ.get("SPENDWATCH_CONTROL_TOPIC", "spendwatch.control"),
        mapping=mapping, labels=labels,
        use_litellm_cost=os.environ.get("SPENDWATCH_LITELLM_USE_COST", "").lower() in ("1", "true", "yes"),
        fail_closed=os.environ.get("SPENDWATCH_FAIL_CLOSED", "").lower() in ("1", "true", "yes"),
    )


handler: SpendwatchLogger
"""The proxy's callback (`callbacks: spendwatch.integrations.litellm.handler`), built by `from_env()` on
first access: importing this module sets nothing up."""


def __getattr__(name: str) -> Any:
    if name == "handler":
        global handler
        handler = from_env()
        return handler
    raise AttributeError(name)
