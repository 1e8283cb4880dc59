"""Cost per usage event from the genai-prices offline catalog, cached per model.

`calc_price` costs ~130 µs a call; a `Rate` resolved once per (provider, model)
prices an event in well under a microsecond with the same result, tiers
included. All arithmetic is integer: rates in pico-USD per token, costs rounded
half up to micro-USD once per event.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
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
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _levels: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    """Set by `__post_init__`: every tier start of any part, ascending, and the five prices
    (input, output, cache read, cache write, 1-hour cache write) between each two: a prompt of
    `p` tokens pays `_levels[bisect_left(_starts, p)]`, one lookup instead of five tier scans."""

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
        starts = tuple(sorted({start for p in parts for start, _ in p.tiers}))
        # `at` depends only on which starts a prompt exceeds: sample each interval at its top end.
        samples = (*starts, starts[-1] + 1) if starts else (0,)
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_levels", tuple(tuple(p.at(n) for p in parts) for n in samples))

    def cost_pico(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
                  cache_write_1h: int = 0) -> int:
        """`cache_write` counts every cache write; `cache_write_1h` the part of it kept for an hour.
        Every part is priced at the tier the prompt size (`input_tokens`) sets."""
        starts = self._starts
        inp, out, read, write, write_1h = self._levels[bisect_left(starts, input_tokens) if starts else 0]
        return ((input_tokens - cache_read - cache_write) * inp + output_tokens * out + cache_read * read
                + (cache_write - cache_write_1h) * write + cache_write_1h * write_1h)

    def cost_micros(self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0,
                    cache_write_1h: int = 0) -> int:
        """`cost_pico` rounded half up to whole micro-USD."""
        return (self.cost_pico(input_tokens, output_tokens, cache_read, cache_write, cache_write_1h)
                + PICO_PER_MICRO // 2) // PICO_PER_MICRO


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
            self._count_unpriced(event.model)
        return Priced(
            rate.cost_micros(event.input_tokens, event.output_tokens, event.cache_read_tokens, event.cache_write_tokens,
                             event.cache_write_1h_tokens),
            rate.source,
        )

    def costs(self, events: Sequence[Any]) -> tuple[list[int], list[int]]:
        """`price(e).micros` of each event of a batch (0 for an outcome), and the positions of those
        priced at a rate whose source is "fallback", with the same effect on `unpriced`.

        The worker's hot path: one loop with the rate of each (provider, model) looked up once
        per batch and `Rate.cost_micros` inlined, no `Priced` per event."""
        costs: list[int] = []
        fallbacks: list[int] = []
        rates: dict[tuple[str | None, str], Rate] = {}
        half = PICO_PER_MICRO // 2
        for i, ev in enumerate(events):
            if ev.type == "outcome":
                costs.append(0)
                continue
            if ev.cost_usd is not None:
                costs.append(usd_to_micros(ev.cost_usd))
                continue
            key = (ev.provider, ev.model)
            rate = rates.get(key)
            if rate is None:
                rate = rates[key] = self._cache.get(key) or self.rate(ev.model, ev.provider)
            if rate is self.fallback:
                self._count_unpriced(ev.model)
            if rate.source == "fallback":
                fallbacks.append(i)
            inp, read, write, write_1h = ev.input_tokens, ev.cache_read_tokens, ev.cache_write_tokens, \
                ev.cache_write_1h_tokens
            starts = rate._starts
            p_in, p_out, p_read, p_write, p_1h = rate._levels[bisect_left(starts, inp) if starts else 0]
            costs.append(((inp - read - write) * p_in + ev.output_tokens * p_out + read * p_read
                          + (write - write_1h) * p_write + write_1h * p_1h + half) // PICO_PER_MICRO)
        return costs, fallbacks

    def _count_unpriced(self, model: str) -> None:
        name = model if model in self.unpriced or len(self.unpriced) < MAX_UNPRICED else OTHER_MODELS
        self.unpriced[name] = self.unpriced.get(name, 0) + 1


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
