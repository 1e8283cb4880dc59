"""Pricing against genai-prices' own calculator, overrides, caller cost and unknown models."""

from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from detectors.policy import PolicyConfig, PolicyRule, decide
from detectors.pricing.money import usd_to_micros
from detectors.pricing.prices import PriceBook, Rate, catalog_rate
from schemas.alerts import ANY_WORKFLOW
from schemas.decode import validate_event


def usage(**kw):
    base = {"type": "usage", "event_id": "e", "ts": 1_768_435_200, "workflow": "w", "model": "gpt-4o",
            "input_tokens": 1000, "output_tokens": 100}
    return validate_event({**base, **kw})


@pytest.mark.parametrize("model,provider,tokens", [
    ("gpt-4o", "openai", dict(input_tokens=12_000, output_tokens=800, cache_read_tokens=4_000)),
    ("o3", "openai", dict(input_tokens=5_000, output_tokens=9_000)),
    ("claude-sonnet-4-5", "anthropic", dict(input_tokens=50_000, output_tokens=1_000, cache_read_tokens=20_000,
                                           cache_write_tokens=10_000)),
    # Above 200k prompt tokens every token is billed at the higher tier: the cached rate must keep tiers.
    ("claude-sonnet-4-5", "anthropic", dict(input_tokens=250_000, output_tokens=2_000, cache_read_tokens=100_000)),
    ("gemini-2.5-pro", "google", dict(input_tokens=300_000, output_tokens=4_000)),
])
def test_cached_rate_matches_catalog_calculator(model, provider, tokens):
    rate = catalog_rate(model, provider)
    ours = rate.cost_micros(tokens["input_tokens"], tokens["output_tokens"], tokens.get("cache_read_tokens", 0),
                            tokens.get("cache_write_tokens", 0))
    theirs = calc_price(Usage(**tokens), model, provider_id=provider).total_price
    assert ours == usd_to_micros(theirs)


def test_tier_boundary_changes_the_rate_of_every_token():
    rate = catalog_rate("claude-sonnet-4-5", "anthropic")
    below, above = rate.cost_micros(200_000, 0), rate.cost_micros(200_001, 0)
    assert above > below * 1.5  # the whole prompt moves to the higher tier


def test_reasoning_tokens_are_priced_as_output_and_not_twice():
    book = PriceBook()
    plain = book.price(usage(model="o3", provider="openai", input_tokens=0, output_tokens=1000))
    reasoning = book.price(usage(model="o3", provider="openai", input_tokens=0, output_tokens=1000,
                                 reasoning_tokens=900))
    assert plain.micros == reasoning.micros > 0


def test_caller_cost_wins_over_catalog():
    priced = PriceBook().price(usage(cost_usd=0.1234567))
    assert (priced.micros, priced.source) == (123457, "caller")


def test_overrides_win_over_catalog_and_can_be_provider_scoped():
    book = PriceBook(overrides={"openai/gpt-4o": Rate.flat(1.0, 2.0, source="override")})
    assert book.price(usage(provider="openai")).micros == 1000 * 1 + 100 * 2
    assert book.price(usage(provider="azure")).source.startswith("genai-prices")


def test_unknown_model_is_priced_by_fallback_and_counted_never_zero():
    book = PriceBook(fallback=Rate.flat(10.0, 30.0, source="fallback"))
    priced = book.price(usage(model="in-house-7b"))
    assert priced.micros == 1000 * 10 + 100 * 30
    assert priced.source == "fallback"
    book.price(usage(model="in-house-7b"))
    assert book.unpriced == {"in-house-7b": 2}


def test_rate_is_resolved_once_per_model():
    book = PriceBook()
    book.price(usage())
    first = book._cache[(None, "gpt-4o")]
    book.price(usage(event_id="f"))
    assert book._cache[(None, "gpt-4o")] is first


def test_micro_rounding_is_half_up_and_exact():
    assert usd_to_micros(Decimal("0.0000005")) == 1
    assert usd_to_micros(0.1 + 0.2) == 300000


def test_an_unpriced_model_alerts_once_per_model_and_day_with_the_fix():
    """They were priced at the fallback rate and counted, and nothing ever told anyone."""
    from detectors.engine.monitor import Monitor
    from detectors.engine.workflow import WorkflowState

    def call(i: int, day: int = 0, wf: str = "w") -> object:
        return usage(event_id=f"e{day}-{i}", ts=1_768_435_200 + day * 86_400 + i, workflow=wf, model="house-llm")

    monitor = Monitor()
    first = monitor.process([call(i) for i in range(3)]).alerts
    assert [(a.kind, a.alert_id) for a in first] == [("unpriced", "unpriced:house-llm:2026-01-15")]
    assert (first[0].evidence["calls"], first[0].evidence["fallback_usd"]) == (3, 3 * (1000 * 10 + 100 * 30) / 1e6)
    assert '"house-llm" = { input_per_mtok = 10, output_per_mtok = 30 }' in first[0].evidence["fix"]
    assert not monitor.process([call(i) for i in range(3, 6)]).alerts  # same day: said already
    restored = WorkflowState.load(monitor.workflows["w"].dump())  # a restarted worker remembers it
    assert restored.fired == monitor.workflows["w"].fired
    assert [a.alert_id for a in monitor.process([call(0, day=1)]).alerts] == ["unpriced:house-llm:2026-01-16"]
    # Another workflow sends its copy under the same id, keyed to no one workflow: the notifier tells it once.
    [copy] = monitor.process([call(9, wf="v")]).alerts
    assert (copy.alert_id, copy.workflow, copy.evidence["seen_in"]) == (first[0].alert_id, ANY_WORKFLOW, "v")
    assert not decide(copy, PolicyConfig(rules=[PolicyRule(action="kill", kill_scope="workflow")])).target
    assert not monitor.process([usage(event_id="p", ts=1_768_435_300, model="gpt-4o")]).alerts  # priced
