"""The TOML config file: budgets, pricing, topics, Slack. Typos are errors, not silence."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from detectors.budgets import BudgetConfig
from detectors.policy import PolicyConfig
from streams.routing import RoutingConfig
from detectors.periods import PeriodClock
from detectors.pricing import PriceBook, Rate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PriceOverride(_Strict):
    """A negotiated price in USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)

    def rate(self, source: str) -> Rate:
        return Rate.flat(self.input_per_mtok, self.output_per_mtok, self.cache_read_per_mtok,
                         self.cache_write_per_mtok, source=source)


class PricingConfig(_Strict):
    fallback: PriceOverride = Field(default_factory=lambda: PriceOverride(input_per_mtok=10, output_per_mtok=30))
    overrides: dict[str, PriceOverride] = Field(default_factory=dict)
    """Keyed by `model` or `provider/model`."""
    overrides_file: Path | None = None
    """A TOML file of more `["model"]` price tables, kept apart for finance."""


class TopicsConfig(_Strict):
    usage: str = "spendwatch.usage"
    alerts: str = "spendwatch.alerts"
    deadletter: str = "spendwatch.deadletter"
    rollups: str = "spendwatch.rollups"
    control: str = "spendwatch.control"
    partitions: int = Field(default=4, ge=1, le=1024)


class SlackConfig(_Strict):
    """Bot token + channel, or an incoming-webhook URL. Secrets come from the environment."""

    channel: str | None = None
    token_env: str = "SLACK_BOT_TOKEN"
    webhook_url_env: str = "SLACK_WEBHOOK_URL"
    base_url: str | None = None
    """Slack API base URL; only for proxies and tests (default https://slack.com/api/)."""

    def token(self) -> str | None:
        return os.environ.get(self.token_env) or None

    def webhook_url(self) -> str | None:
        return os.environ.get(self.webhook_url_env) or None


class SinksConfig(_Strict):
    """Other alert receivers; each is on when its environment variable is set."""

    webhook_url_env: str = "SPENDWATCH_WEBHOOK_URL"
    pagerduty_routing_key_env: str = "PAGERDUTY_ROUTING_KEY"
    pagerduty_base_url: str = "https://events.pagerduty.com"


class Settings(_Strict):
    timezone: str = "UTC"
    dedup_window_s: float = Field(default=3600.0, ge=60, le=7 * 86400)
    batch_max: int = Field(default=5000, ge=1, le=100_000)
    batch_within_s: float = Field(default=0.2, ge=0.001, le=10)
    tick_every_s: float = Field(default=1.0, ge=0.05, le=60)
    commit_interval_s: float = Field(default=2.8, ge=0.1, le=60)
    session_timeout_s: float = Field(default=10.0, ge=6, le=300)
    """How long a silent worker keeps its partitions; a joining worker waits half of it for peers."""
    check_changelog_offsets: bool = True
    """On start, refuse tables on disk that are ahead of their changelog (topics deleted or recreated):
    they would hold spend the changelog no longer has."""
    max_ahead_s: float | None = Field(default=600.0, ge=0)
    """Events stamped further than this ahead of the worker's clock are dead-lettered (a wrong clock
    would otherwise drag every workflow's event time along). Clock skew between hosts stays well inside 10 min."""
    max_behind_s: float | None = Field(default=None, ge=0)
    """Events stamped further than this behind the worker's clock are dead-lettered (e.g. 2592000
    for 30 days); unset accepts history, which still cannot be counted twice (dedup window)."""
    strict_contract: bool = False
    """Dead-letter events with fields this version does not know. Off: such fields (a newer
    publisher's) are ignored and counted by name in the worker's log, and the event's spend counts."""
    evict_idle_s: float = Field(default=3600.0, ge=4, le=30 * 86400)
    """A workflow without events for this long (wall time) leaves the worker's memory; its state
    stays in the tables and is reloaded when it returns. Bounds memory when names are caller input."""
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    control_keys_file: Path | None = None
    """`kid:secret` lines for signing kill commands (default: $SPENDWATCH_CONTROL_KEYS)."""

    def kills(self) -> bool:
        return any(rule.action == "kill" for rule in self.policy.rules)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        PeriodClock(v)
        return v

    def price_book(self) -> PriceBook:
        overrides = {name: o.rate(f"override:{name}") for name, o in self.pricing.overrides.items()}
        return PriceBook(overrides=overrides, fallback=self.pricing.fallback.rate("fallback"))


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


def _explain(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors(include_url=False)
    )


def load_settings(path: Path | None) -> Settings:
    """Read and validate a TOML config file (None → defaults)."""
    if path is None:
        return Settings()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_explain(err)}") from None
    extra = settings.pricing.overrides_file
    if extra is not None:
        extra = extra if extra.is_absolute() else path.parent / extra
        try:
            more = tomllib.loads(extra.read_text())
            for name, doc_o in more.items():
                settings.pricing.overrides.setdefault(name, PriceOverride.model_validate(doc_o))
        except FileNotFoundError:
            raise ConfigError(f"{path}: pricing.overrides_file {extra} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{extra}: not valid TOML: {err}") from None
        except ValidationError as err:
            raise ConfigError(f"{extra}: {_explain(err)}") from None
    return settings
