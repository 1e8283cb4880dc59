"""What the integrations share: provider names as genai-prices knows them, field clipping, and an
emitter for callers that have no event loop of their own."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from detectors.pricing.prices import LITELLM_PROVIDERS
from schemas import limits
from spendwatch.emitter import UsageEmitter

log = logging.getLogger("spendwatch.integrations")

DEFAULT_BROKER = "kafka://127.0.0.1:9092"
BROKER_ENV = "SPENDWATCH_BROKER"
TOPIC_ENV = "SPENDWATCH_USAGE_TOPIC"

PROVIDERS: dict[str, str] = {
    **LITELLM_PROVIDERS,
    # LiteLLM's other provider names for the same sellers
    "text-completion-openai": "openai", "chatgpt": "openai", "azure_text": "azure", "anthropic_text": "anthropic",
    "vertex_ai_beta": "google", "bedrock_converse": "aws", "sagemaker": "aws", "codestral": "mistral",
    "cohere_chat": "cohere", "moonshot": "moonshotai", "meta_llama": "meta", "voyage": "voyageai",
    "github_copilot": "github-copilot", "databricks": "databricks", "novita": "novita", "minimax": "minimax",
    # OpenTelemetry GenAI `gen_ai.provider.name` / legacy `gen_ai.system` values
    "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google", "vertexai": "google",
    "google": "google", "aws.bedrock": "aws", "azure.ai.openai": "azure", "azure.ai.inference": "azure",
    "az.ai.openai": "azure", "az.ai.inference": "azure", "x_ai": "x-ai", "xai": "x-ai", "mistral_ai": "mistral",
    "mistralai": "mistral", "ibm.watsonx.ai": "ibm", "together": "together", "fireworks": "fireworks",
}
"""A caller's provider name (LiteLLM's `custom_llm_provider`, OTel's `gen_ai.provider.name`) → the
genai-prices provider id that prices it. A name not listed is passed on as it is: genai-prices may know
it under the same id; if not, the worker prices the call at its fallback rate and lists the model in
`unpriced`, which tells the operator what to add to the price overrides."""


def provider_of(name: str | None) -> str | None:
    if not name:
        return None
    key = str(name).strip().lower()
    return PROVIDERS.get(key, key) or None


def split_model(model: str, provider: str | None) -> tuple[str, str | None]:
    """`anthropic/claude-…` → (`claude-…`, `anthropic`) when the prefix names the provider (or no provider
    is given); a router's own names stay whole (OpenRouter's `anthropic/claude-3.5-sonnet`). Vertex AI
    serves Anthropic's models at Anthropic's list prices: priced as Anthropic."""
    prefix, sep, rest = model.partition("/")
    named = PROVIDERS.get(prefix.lower()) if sep and rest else None
    if named and provider in (None, named):
        model, provider = rest, named
    if provider == "google" and model.startswith("claude"):
        model, provider = model.replace("@", "-"), "anthropic"
    return model, provider


def clip(value: Any, limit: int = limits.MAX_ID_LEN) -> str | None:
    """A non-empty string of at most `limit` characters, or None."""
    if value is None or isinstance(value, (dict, list, tuple, set)):
        return None
    text = str(value).strip()
    return text[:limit] or None


def clip_labels(labels: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in labels.items():
        name, text = clip(key, limits.MAX_NAME_LEN), clip(value)
        if name and text and len(out) < limits.MAX_LABELS:
            out[name] = text
    return out


def broker_from_env() -> str:
    broker = os.environ.get(BROKER_ENV)
    if not broker:
        log.warning("spendwatch: %s is not set; sending usage events to %s", BROKER_ENV, DEFAULT_BROKER)
    return broker or DEFAULT_BROKER


class BackgroundEmitter:
    """A `UsageEmitter` running on an event loop of its own in a daemon thread, for callers without
    a loop (LiteLLM's synchronous logging thread, OpenTelemetry's span processor thread). `emit()` is
    thread-safe and never blocks; the thread starts on the first event, and what is buffered is
    flushed at interpreter exit (up to 5 s)."""

    def __init__(self, factory: Callable[[], UsageEmitter]):
        self._factory = factory
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.emitter: UsageEmitter | None = None

    def _ensure(self) -> tuple[asyncio.AbstractEventLoop, UsageEmitter]:
        with self._lock:
            if self._loop is None or self.emitter is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                emitter = self._factory()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                threading.Thread(target=run, name="spendwatch-emitter", daemon=True).start()
                started.wait(5)
                asyncio.run_coroutine_threadsafe(emitter.start(), loop)
                if self._loop is None:
                    atexit.register(self.flush, 5.0)
                self._loop, self.emitter = loop, emitter
            return self._loop, self.emitter

    def emit(self, event: dict[str, Any]) -> None:
        loop, emitter = self._ensure()
        loop.call_soon_threadsafe(emitter.emit, event)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until what was emitted so far is confirmed by Kafka (or `timeout`); True if all was."""
        if self._loop is None or self.emitter is None or self._loop.is_closed():
            return True
        emitter = self.emitter
        fut: Future[None] = asyncio.run_coroutine_threadsafe(emitter.flush(timeout), self._loop)
        try:
            fut.result(timeout + 1)
        except Exception:  # timeout, or the loop went away: say so through the result
            return False
        return emitter.pending == 0

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            loop, emitter, self._loop, self.emitter = self._loop, self.emitter, None, None
        if loop is None or emitter is None or loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(emitter.stop(), loop).result(timeout)
        except Exception:
            log.warning("spendwatch: the background emitter did not stop cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
