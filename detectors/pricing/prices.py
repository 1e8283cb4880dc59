"""Cost per usage event from the genai-prices offline catalog, cached per model.

`calc_price` costs ~130 µs a call; a `Rate` resolved once per (provider, model)
prices an event in well under a microsecond with the same result, tiers
included. All arithmetic is integer: rates in pico-USD per token, costs rounded
half up to micro-USD once per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import TieredPrices

from detectors.pricing.money import fmt_usd, micros_to_usd, usd_to_micros
from schemas.alerts import ANY_WORKFLOW, Alert

PICO_PER_MICRO = 1_000_000


def _pico(per_mtok: Decimal | float | str) -> int:
    """$/MTok equals µUSD/token, so pico-USD per token is $/MTok × 10^6."""
    return int(Decimal(str(per_mtok)) * PICO_PER_MICRO)


@dataclass(frozen=True)
class TieredRate:
    """A per-token price whose level is set by the prompt size (cliff tiers)."""

    base: int
    tiers: tuple[tuple[int, int], ...] = ()  # (prompt tokens above which, pico/token)

    def at(self, prompt_tokens: int) -> int:
        for start, price in reversed(self.tiers):
            if prompt_tokens > start:
                return price
        return self.base

    @classmethod
    def from_catalog(cls, value: Decimal | TieredPrices | None) -> TieredRate | None:
        if value is None:
            return None
        if isinstance(value, TieredPrices):
            return cls(_pico(value.base), tuple((t.start, _pico(t.price)) for t in value.tiers))
        return cls(_pico(value))


@dataclass(frozen=True)
class Rate:
    """Prices of one model: input, output, cache read, cache write (5-minute), and cache
    write with a 1-hour lifetime (Anthropic bills it higher; default: the 5-minute price)."""

    input: TieredRate
    output: TieredRate
    cache_read: TieredRate
    cache_write: TieredRate
    source: str = "catalog"
    cache_write_1h: TieredRate | None = None
    _flat: tuple[int, ...] | None = field(init=False, repr=False, compare=False)
    """Set by `__post_init__`: the five base prices when no part has tiers, else None."""

    @classmethod
    def flat(cls, input_per_mtok: float, output_per_mtok: float, cache_read_per_mtok: float | None = None,
             cache_write_per_mtok: float | None = None, source: str = "override") -> Rate:
        inp = TieredRate(_pico(input_per_mtok))
        return cls(
            input=inp,
            output=TieredRate(_pico(output_per_mtok)),
            cache_read=TieredRate(_pico(cache_read_per_mtok)) if cache_read_per_mtok is not None else inp,
            cache_write=TieredRate(_pico(cache_write_per_mtok)) if cache_write_per_mtok is not None else inp,
            source=source,
        )

    def __post_init__(self) -> None:
        write_1h = self.cache_write_1h or self.cache_write
        object.__setattr__(self, "cache_write_1h", write_1h)
        parts = (self.input, self.output, self.cache_read, self.cache_write, write_1h)
        # Most models have no tiers: keep plain ints for the per-event fast path.
        object.__setattr__(self, "_flat", None if any(p.tiers for p in parts) else tuple(p.base for p in parts))

    def cost_pico(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
                  cache_write_1h: int = 0) -> int:
        """`cache_write` counts every cache write; `cache_write_1h` the part of it kept for an hour."""
        uncached = input_tokens - cache_read - cache_write
        flat = self._flat
        if flat is not None:
            return (uncached * flat[0] + output_tokens * flat[1] + cache_read * flat[2]
                    + (cache_write - cache_write_1h) * flat[3] + cache_write_1h * flat[4])
        assert self.cache_write_1h is not None, "__post_init__ defaults it to cache_write"
        return (
            uncached * self.input.at(input_tokens)
            + cache_read * self.cache_read.at(input_tokens)
            + (cache_write - cache_write_1h) * self.cache_write.at(input_tokens)
            + cache_write_1h * self.cache_write_1h.at(input_tokens)
            + output_tokens * self.output.at(input_tokens)
        )

    def cost_micros(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
                    cache_write_1h: int = 0) -> int:
        flat = self._flat
        if flat is not None:  # cost_pico inlined: this runs once per event
            pico = ((input_tokens - cache_read - cache_write) * flat[0] + output_tokens * flat[1]
                    + cache_read * flat[2] + (cache_write - cache_write_1h) * flat[3] + cache_write_1h * flat[4])
        else:
            pico = self.cost_pico(input_tokens, output_tokens, cache_read, cache_write, cache_write_1h)
        return (pico + PICO_PER_MICRO // 2) // PICO_PER_MICRO


def catalog_rate(model: str, provider: str | None, at: datetime | None = None) -> Rate | None:
    """Resolve a model in the bundled genai-prices snapshot (never fetched at run time)."""
    try:
        prov, info = get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    prices = info.get_prices(at or datetime.now(UTC))
    inp = TieredRate.from_catalog(prices.input_mtok)
    out = TieredRate.from_catalog(prices.output_mtok)
    if inp is None or out is None:
        return None
    return Rate(
        input=inp,
        output=out,
        cache_read=TieredRate.from_catalog(prices.cache_read_mtok) or inp,
        cache_write=(write := TieredRate.from_catalog(prices.cache_write_mtok) or inp),
        cache_write_1h=TieredRate.from_catalog(getattr(prices, "cache_write_1h_mtok", None)) or write,
        source=f"genai-prices:{prov.id}/{info.id}",
    )


LITELLM_PROVIDERS = {
    "openai": "openai", "azure": "azure", "azure_ai": "azure", "anthropic": "anthropic", "vertex_ai": "google",
    "gemini": "google", "bedrock": "aws", "openrouter": "openrouter", "groq": "groq", "mistral": "mistral",
    "deepseek": "deepseek", "together_ai": "together", "xai": "x-ai", "fireworks_ai": "fireworks",
    "cohere": "cohere", "perplexity": "perplexity", "cerebras": "cerebras",
}
"""LiteLLM's model-name prefixes (`azure/gpt-4o`) and the genai-prices provider each one names."""


def split_provider(model: str, provider: str | None) -> tuple[str, str | None]:
    """`anthropic/claude-…` as LiteLLM writes it → (`claude-…`, `anthropic`); other names unchanged.
    A provider given with the event wins over the prefix."""
    prefix, sep, rest = model.partition("/")
    if sep and rest and prefix in LITELLM_PROVIDERS:
        return rest, provider or LITELLM_PROVIDERS[prefix]
    return model, provider


MAX_RATES = 10_000
"""Resolved (provider, model) rates kept; beyond, the oldest is resolved again when next seen."""
MAX_UNPRICED = 1_000
"""Unknown model names counted one by one; the rest are counted together (names are caller input)."""
OTHER_MODELS = "(other unknown models)"


class Priced(NamedTuple):
    micros: int
    source: str  # "caller", "override", "genai-prices:...", "fallback"


@dataclass
class PriceBook:
    """Prices usage events: caller's `cost_usd` > overrides > catalog > fallback rate.

    Unknown models are priced at the fallback rate, never at $0, and counted in
    `unpriced` so the operator sees which names to add to the overrides.
    """

    overrides: dict[str, Rate] = field(default_factory=dict)
    fallback: Rate = field(default_factory=lambda: Rate.flat(10.0, 30.0, source="fallback"))
    unpriced: dict[str, int] = field(default_factory=dict)
    _cache: dict[tuple[str | None, str], Rate] = field(default_factory=dict, repr=False)

    def rate(self, model: str, provider: str | None = None) -> Rate:
        key = (provider, model)
        rate = self._cache.get(key)
        if rate is None:
            rate = (
                self.overrides.get(f"{provider}/{model}")
                or self.overrides.get(model)
                or catalog_rate(model, provider)
                or ((split := split_provider(model, provider)) != (model, provider) and catalog_rate(*split))
                or self.fallback
            )
            if len(self._cache) >= MAX_RATES:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = rate
        return rate

    def price(self, event: Any) -> Priced:
        """Cost of one usage event in micro-USD, and where the price came from."""
        if event.cost_usd is not None:
            return Priced(usd_to_micros(event.cost_usd), "caller")
        rate = self._cache.get((event.provider, event.model)) or self.rate(event.model, event.provider)
        if rate is self.fallback:
            name = event.model if event.model in self.unpriced or len(self.unpriced) < MAX_UNPRICED else OTHER_MODELS
            self.unpriced[name] = self.unpriced.get(name, 0) + 1
        return Priced(
            rate.cost_micros(event.input_tokens, event.output_tokens, event.cache_read_tokens, event.cache_write_tokens,
                             event.cache_write_1h_tokens),
            rate.source,
        )


def unpriced_alert(workflow: str, model: str, provider: str | None, day: str, calls: int, micros: int,
                   fallback: Rate, ts: float) -> Alert:
    """A model the catalog does not know, once per model and day fleet-wide: every workflow that
    calls it sends a copy (remembered in its fired set), and the copies share one id and the
    workflow `ANY_WORKFLOW`, so they meet on one alerts partition and the notifier tells it once.
    Says what it cost at the fallback rate where it was seen, and the config line that prices it."""
    name = f"{provider}/{model}" if provider else model
    rates = f"input_per_mtok = {fallback.input.base / PICO_PER_MICRO:g}, output_per_mtok = " \
            f"{fallback.output.base / PICO_PER_MICRO:g}"
    return Alert(
        alert_id=f"unpriced:{name}:{day}", kind="unpriced", severity="warning", workflow=ANY_WORKFLOW, ts=ts,
        summary=(f"model {name!r} is not in the price catalog: priced at the fallback rate, which may be far "
                 f"from its real price (reported first by workflow {workflow!r} on {day}: {calls} calls, "
                 f"{fmt_usd(micros)})"),
        evidence={"model": model, "provider": provider, "day": day, "seen_in": workflow, "calls": calls,
                  "fallback_usd": micros_to_usd(micros),
                  "fix": f'[pricing.overrides]\n"{name}" = {{ {rates} }}  # replace with its real $/MTok'},
    )
