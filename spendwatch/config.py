"""The TOML config file: budgets, pricing, topics, Slack, detectors. Typos are errors, not silence."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from detectors import models, registry
from detectors.detector import Detector
from detectors.engine.budgets import BudgetConfig
from detectors.engine.monitor import Monitor
from detectors.engine.periods import PeriodClock
from detectors.insights import InsightsEngine
from detectors.insights.digest import WEEKDAYS
from detectors.loops import FEATURES as RUN_FEATURES
from detectors.policy import PolicyConfig
from detectors.pricing.prices import PriceBook, Rate
from schemas.errors import explain
from streams.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol
from streams.routing import RoutingConfig
from streams.secrets import secret


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
    snapshots: str = "spendwatch.snapshots"
    partitions: int = Field(default=4, ge=1, le=1024)


class SlackConfig(_Strict):
    """Bot token + channel, or an incoming-webhook URL. Secrets come from the environment."""

    channel: str | None = None
    token_env: str = "SLACK_BOT_TOKEN"
    webhook_url_env: str = "SLACK_WEBHOOK_URL"
    base_url: str | None = None
    """Slack API base URL; only for proxies and tests (default https://slack.com/api/)."""

    def token(self) -> SecretStr | None:
        return secret(os.environ.get(self.token_env) or None)

    def webhook_url(self) -> SecretStr | None:
        return secret(os.environ.get(self.webhook_url_env) or None)


class SinksConfig(_Strict):
    """Other alert receivers; each is on when its environment variable is set."""

    webhook_url_env: str = "SPENDWATCH_WEBHOOK_URL"
    pagerduty_routing_key_env: str = "PAGERDUTY_ROUTING_KEY"
    pagerduty_base_url: str = "https://events.pagerduty.com"

    def webhook_url(self) -> SecretStr | None:
        return secret(os.environ.get(self.webhook_url_env) or None)

    def pagerduty_routing_key(self) -> SecretStr | None:
        return secret(os.environ.get(self.pagerduty_routing_key_env) or None)


class KafkaConfig(_Strict):
    """`[kafka]`: how every client (worker, emitter, guard, CLI, dashboard) authenticates to Kafka.
    Each key can be overridden by SPENDWATCH_KAFKA_<KEY> (e.g. SPENDWATCH_KAFKA_SECURITY_PROTOCOL).
    The password is never in this file: `password_env` names the variable that holds it."""

    security_protocol: SecurityProtocol | None = None
    sasl_mechanism: SaslMechanism | None = None
    username: str | None = None
    password_env: str = "SPENDWATCH_KAFKA_PASSWORD"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("the password is never in the config file: set password_env to the name of "
                             "the environment variable that holds it")
        return data

    def security(self, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """These settings with the SPENDWATCH_KAFKA_* variables over them; raises KafkaSecurityError."""
        return KafkaSecurity.from_sources(self.model_dump(), environ)


class WorkerConfig(_Strict):
    """The worker process itself."""

    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Serve Prometheus metrics at http://metrics_host:metrics_port/metrics; 0 (the default): off."""
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    """Address the metrics endpoint listens on; 0.0.0.0 in a container that Prometheus scrapes from outside."""


Seconds = Annotated[float, Field(gt=0, le=30 * 86400)]
Interval = Annotated[float, Field(ge=1, le=86400)]
"""Seconds of event time between a detector's interval work (sweeps, checks, scoring) for one workflow."""


class _DetectorParams(_Strict):
    """A detector's constructor parameters, under the same names. A key left out keeps the
    detector's default (its constructor is the one place defaults live), so None means unset."""

    def kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class RunPrior(_Strict):
    """What a finished run reaches before a workflow has any: its median and log-space sigma."""

    median: float = Field(gt=0)
    sigma: float = Field(gt=0, le=5)


class LoopParams(_DetectorParams):
    """`detectors.loops.LoopDetector`."""

    z: float | None = Field(default=None, gt=0, le=20)
    idle: Seconds | None = None
    min_calls: int | None = Field(default=None, ge=1)
    interval: Interval | None = None
    priors: dict[str, RunPrior] | None = None
    """Keyed by calls, tokens, context, usd; features left out keep their prior."""

    @field_validator("priors")
    @classmethod
    def _features(cls, v: dict[str, RunPrior] | None) -> dict[str, RunPrior] | None:
        unknown = sorted(set(v or ()) - set(RUN_FEATURES))
        if unknown:
            raise ValueError(f"no run feature {', '.join(map(repr, unknown))}; there are {', '.join(RUN_FEATURES)}")
        return v

    def kwargs(self) -> dict[str, Any]:
        kw = super().kwargs()
        if self.priors is not None:
            kw["priors"] = {f: (p.median, p.sigma) for f, p in self.priors.items()}
        return kw


class ZombieParams(_DetectorParams):
    """`detectors.zombies.ZombieDetector`."""

    factor: float | None = Field(default=None, gt=1)
    min_gap: float | None = Field(default=None, ge=0, le=30 * 86400)
    prior_gap: Seconds | None = None
    prior_n: float | None = Field(default=None, ge=0)
    window: float | None = Field(default=None, ge=1)
    active_cap: Seconds | None = None
    still: Seconds | None = None
    min_calls: int | None = Field(default=None, ge=1)
    post_calls: int | None = Field(default=None, ge=1)
    post_seconds: float | None = Field(default=None, ge=0, le=30 * 86400)
    forget: Seconds | None = None
    interval: Interval | None = None


class ScorerParams(_DetectorParams):
    """`detectors.spikes.SeriesScorer`, as every feature of a spike detector uses it (the noise
    floor `offset` is per feature, and a spike detector looks up only)."""

    period: Seconds | None = None
    slots: int | None = Field(default=None, ge=1, le=1440)
    alpha: float | None = Field(default=None, gt=0, le=1)
    gamma: float | None = Field(default=None, ge=0, le=1)
    beta: float | None = Field(default=None, gt=0, le=1)
    warmup: int | None = Field(default=None, ge=1)
    clip: float | None = Field(default=None, gt=0)
    protect: float | None = Field(default=None, gt=0)
    adapt_after: int | None = Field(default=None, ge=0)
    min_scale: float | None = Field(default=None, gt=0)
    z_half: float | None = Field(default=None, gt=0)
    tail_rate: float | None = Field(default=None, gt=0, le=1)


class SpikeParams(_DetectorParams):
    """`detectors.spikes.SpikeDetector`."""

    interval: Interval | None = None
    horizons: tuple[Annotated[int, Field(ge=1, le=1440)], ...] | None = Field(default=None, min_length=1)
    threshold: float | None = Field(default=None, gt=0, lt=1)
    grace: float | None = Field(default=None, ge=0, le=3600)
    cooldown: int | None = Field(default=None, ge=1)
    min_excess_usd_per_min: float | None = Field(default=None, ge=0)
    scorer: ScorerParams | None = None
    fold_share: float | None = Field(default=None, gt=0, le=1)
    """A spike whose excess spend is at least this share spent by runs or agents with an open loop or
    zombie alert is no new page: it folds into those alerts (default 0.6)."""
    model: str | None = Field(default=None, min_length=3, max_length=200)
    """Import path of the series features' anomaly model instead of SeriesScorer, e.g.
    "detectors.novelty.NoveltyScorer" or "river.anomaly.HalfSpaceTrees" (`detectors/models.py`)."""
    model_args: dict[str, Any] | None = None
    scale: Literal["none", "minmax", "standard"] | None = None
    """Scale the value before a model from outside spendwatch (HalfSpaceTrees wants [0, 1]: minmax)."""

    model_config = ConfigDict(protected_namespaces=())

    @model_validator(mode="after")
    def _model_builds(self) -> SpikeParams:
        if self.model is None and (self.model_args or self.scale):
            raise ValueError("model_args and scale configure a model: set model too")
        if self.model is not None:
            try:
                models.build(self.model, self.model_args, self.scale or "none")
            except models.ModelError as e:
                raise ValueError(str(e)) from e
        return self


class DetectorsConfig(_Strict):
    """One table per registered detector kind (`detectors/registry.py`)."""

    loop: LoopParams = Field(default_factory=LoopParams)
    zombie: ZombieParams = Field(default_factory=ZombieParams)
    spike: SpikeParams = Field(default_factory=SpikeParams)

    def params(self) -> dict[str, dict[str, Any]]:
        return {kind: getattr(self, kind).kwargs() for kind in registry.DETECTORS}


class RoutineShape(_Strict):
    """What a call that a cheaper model could serve looks like (right-sizing)."""

    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_output_tokens: int = Field(default=256, ge=1)
    min_success: float = Field(default=0.95, ge=0, le=1)
    """Share of the model's calls in the workflow that succeed (status ok)."""
    min_share: float = Field(default=0.05, ge=0, le=1)
    """Share of the model's calls that must look routine for the insight to be reported."""


class DigestConfig(_Strict):
    """`[insights.digest]`: the weekly savings digest (Slack and the other remote sinks, via routing)."""

    enabled: bool = False
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "monday"
    hour: int = Field(default=9, ge=0, le=23)
    """Local hour (the config's `timezone`) on `day` from which it is sent, once."""


class InsightsConfig(_Strict):
    """`detectors.insights.InsightsEngine`: savings levers per workflow (README "Insights")."""

    hit_rate: float = Field(default=0.30, gt=0, le=1)
    """Cache-read share of prompt tokens assumed reachable by caching."""
    window_days: int = Field(default=7, ge=1, le=7)
    """Days an insight looks at; trends compare them with the same many days before."""
    min_usd_per_day: float = Field(default=1.0, ge=0)
    """Smaller opportunities are not reported."""
    min_calls: int = Field(default=20, ge=1)
    """Calls a model needs in the window to be judged."""
    cache_min_prompt_tokens: int = Field(default=4096, ge=1)
    """Caching is judged for models whose median prompt is at least this long..."""
    low_cache_share: float = Field(default=0.10, ge=0, le=1)
    """...and whose cache-read share of prompt tokens is below this."""
    min_growth: float = Field(default=0.25, gt=0)
    """Context bloat: prompt tokens per call up by at least this share week over week."""
    routine: RoutineShape = Field(default_factory=RoutineShape)
    digest: DigestConfig = Field(default_factory=DigestConfig)
    tiers: dict[Annotated[str, Field(min_length=1, max_length=200)], Annotated[str, Field(max_length=200)]] = Field(
        default_factory=dict)
    """Frontier model (name or `*` pattern) → cheaper model, tried before the built-in map
    (`detectors/insights/tiers.py`); "" turns a built-in entry off."""

    @field_validator("tiers")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for key, target in v.items():
            if key.count("*") > 1 or target.count("*") > 1 or (target.count("*") and not key.count("*")):
                raise ValueError(f"{key!r} = {target!r}: one * at most, and a * in the target needs one in the model")
        return v

    def build(self) -> InsightsEngine:
        return InsightsEngine(tiers=self.tiers, hit_rate=self.hit_rate, window_days=self.window_days,
                              min_usd_per_day=self.min_usd_per_day, min_calls=self.min_calls,
                              max_prompt_tokens=self.routine.max_prompt_tokens,
                              max_output_tokens=self.routine.max_output_tokens, min_success=self.routine.min_success,
                              min_share=self.routine.min_share, cache_min_prompt_tokens=self.cache_min_prompt_tokens,
                              low_cache_share=self.low_cache_share, min_growth=self.min_growth,
                              digest=(WEEKDAYS.index(self.digest.day), self.digest.hour) if self.digest.enabled
                              else None)


class Settings(_Strict):
    timezone: str = "UTC"
    dedup_window_s: float = Field(default=3600.0, ge=60, le=7 * 86400)
    batch_max: int = Field(default=20_000, ge=1, le=100_000)
    """Most usage records per fetch and per ingest batch: larger batches write each busy workflow's state
    less often (single-event records: 16.5k events/s at 20,000 vs 13k at 5,000), smaller ones bound a
    backlog batch's time (~1 s at 20,000 single-event records on 2 cores)."""
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
    snapshot_every_s: float = Field(default=5.0, ge=0.5, le=3600)
    """How often a worker publishes the snapshots of the workflows it changed (what the dashboard shows)."""
    evict_idle_s: float = Field(default=3600.0, ge=4, le=30 * 86400)
    """A workflow without events for this long (wall time) leaves the worker's memory; its state
    stays in the tables and is reloaded when it returns. Bounds memory when names are caller input."""
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    insights: InsightsConfig = Field(default_factory=InsightsConfig)
    control_keys_file: Path | None = None
    """Keys for signing kill commands: `kid:secret` lines, or the private key file of `spendwatch keys generate`
    (default: $SPENDWATCH_CONTROL_KEYS_FILE, else $SPENDWATCH_CONTROL_KEYS)."""

    def kills(self) -> bool:
        return any(rule.action == "kill" for rule in self.policy.rules)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        PeriodClock(v)
        return v

    def build_detectors(self) -> list[Detector]:
        """The configured detectors, one of each registered kind in registry order: what the
        Monitor of a worker or a backtest run with this config runs."""
        return registry.build(self.detectors.params())

    def build_monitor(self, **stores: Any) -> Monitor:
        """The engine this config runs: budgets, prices, timezone, dedup window and a fresh set of
        detectors (each call builds its own), over `stores` when a worker gives it tables."""
        return Monitor(self.budgets, self.price_book(), self.timezone, self.dedup_window_s,
                       detectors=self.build_detectors(), insights=self.insights.build(), **stores)

    def price_book(self) -> PriceBook:
        overrides = {name: o.rate(f"override:{name}") for name, o in self.pricing.overrides.items()}
        return PriceBook(overrides=overrides, fallback=self.pricing.fallback.rate("fallback"))


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


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
        raise ConfigError(f"{path}: {explain(err, 'config')}") from None
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
            raise ConfigError(f"{extra}: {explain(err, 'config')}") from None
    return settings
