"""Real SDK responses → events → prices, checked against genai-prices reading the same JSON.

The response objects are the `openai` and `anthropic` packages' own types, built from the JSON
their APIs return; the oracle is genai-prices' `extract_usage(...).calc_price()` on that JSON.
Before: 1-hour cache writes were priced at the 5-minute rate (12 % low on the first case),
OpenAI's `cache_write_tokens` was dropped, and `provider=` raised TypeError.
"""

from __future__ import annotations

from typing import Any

import genai_prices
import pytest

from detectors.pricing.money import usd_to_micros
from detectors.pricing.prices import PriceBook
from schemas.decode import validate_event
from spendwatch.usage import usage_from_anthropic, usage_from_openai

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")


def message(model: str, **usage: Any) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": model, "stop_reason": "end_turn",
            "stop_sequence": None, "content": [{"type": "text", "text": "done"}], "usage": usage}


def completion(model: str, **usage: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1_764_000_000, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "done"}}],
            "usage": usage}


ANTHROPIC = [
    message("claude-sonnet-4-5", input_tokens=1_200, output_tokens=700, cache_read_input_tokens=30_000,
            cache_creation_input_tokens=9_000,
            cache_creation={"ephemeral_5m_input_tokens": 4_000, "ephemeral_1h_input_tokens": 5_000}),
    message("claude-sonnet-4-5", input_tokens=210_000, output_tokens=3_000, cache_read_input_tokens=20_000,
            cache_creation_input_tokens=6_000,
            cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 6_000}),  # > 200k tier
    message("claude-haiku-4-5", input_tokens=900, output_tokens=120),
    message("claude-opus-4-1", input_tokens=50, output_tokens=2_000, cache_read_input_tokens=12_000,
            cache_creation_input_tokens=3_000,
            cache_creation={"ephemeral_5m_input_tokens": 3_000, "ephemeral_1h_input_tokens": 0}),
]
OPENAI = [
    completion("gpt-4o-2024-08-06", prompt_tokens=12_000, completion_tokens=800, total_tokens=12_800,
               prompt_tokens_details={"cached_tokens": 4_000}),
    completion("o3", prompt_tokens=5_000, completion_tokens=9_000, total_tokens=14_000,
               completion_tokens_details={"reasoning_tokens": 8_200}),
    completion("gpt-4.1-mini", prompt_tokens=100_000, completion_tokens=1_000, total_tokens=101_000,
               prompt_tokens_details={"cached_tokens": 60_000, "cache_write_tokens": 20_000}),
]


def priced(event: dict[str, Any]) -> int:
    return PriceBook().price(validate_event(event)).micros


@pytest.mark.parametrize("raw", ANTHROPIC, ids=lambda r: f"{r['model']}-{r['usage']['input_tokens']}")
def test_anthropic_messages_cost_what_genai_prices_says(raw):
    event = usage_from_anthropic(anthropic.types.Message.model_validate(raw), workflow="w")
    oracle = genai_prices.extract_usage(raw, provider_id="anthropic").calc_price().total_price
    assert priced(event) == usd_to_micros(oracle), event


@pytest.mark.parametrize("raw", OPENAI, ids=lambda r: r["model"])
def test_openai_completions_cost_what_genai_prices_says(raw):
    event = usage_from_openai(openai.types.chat.ChatCompletion.model_validate(raw), workflow="w")
    oracle = genai_prices.extract_usage(raw, provider_id="openai", api_flavor="chat").calc_price().total_price
    assert priced(event) == usd_to_micros(oracle), event


@pytest.mark.parametrize("provider", ["azure", "openrouter"])
def test_an_openai_compatible_endpoint_is_priced_as_its_provider(provider):
    raw = completion("gpt-4o", prompt_tokens=12_000, completion_tokens=800, total_tokens=12_800)
    event = usage_from_openai(openai.types.chat.ChatCompletion.model_validate(raw), workflow="w", provider=provider)
    model = "openai/gpt-4o" if provider == "openrouter" else "gpt-4o"
    oracle = genai_prices.calc_price(genai_prices.Usage(input_tokens=12_000, output_tokens=800), model,
                                     provider_id=provider).total_price
    assert event["provider"] == provider and priced({**event, "model": model}) == usd_to_micros(oracle)


@pytest.mark.parametrize("model,provider,ref", [
    ("anthropic/claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
    ("azure/gpt-4o", "azure", "gpt-4o"),
    ("vertex_ai/gemini-2.5-pro", "google", "gemini-2.5-pro"),
    ("gemini/gemini-2.5-flash", "google", "gemini-2.5-flash"),
])
def test_litellm_provider_prefixes_are_priced_as_that_provider(model, provider, ref):
    base = {"type": "usage", "event_id": "e", "ts": 1_768_435_200, "workflow": "w", "input_tokens": 30_000,
            "output_tokens": 900}
    oracle = genai_prices.calc_price(genai_prices.Usage(input_tokens=30_000, output_tokens=900), ref,
                                     provider_id=provider).total_price
    assert priced({**base, "model": model}) == usd_to_micros(oracle)


def test_a_stream_without_usage_is_marked_not_priced_at_zero_silently():
    chunk = openai.types.chat.ChatCompletionChunk.model_validate(
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": []})
    event = usage_from_openai(chunk, workflow="w")
    assert (event["status"], event["input_tokens"], event["output_tokens"]) == ("no_usage", 0, 0)
