"""Configuration: one YAML file (`rlhf.yaml`, everything under an `rlhf:` key) loaded into frozen
pydantic-settings models, overridable by environment variables.

Precedence, highest first: environment (`RLHF_POLICY__TRAINING__BATCH_SIZE=16`), the YAML file
(`$RLHF_CONFIG` or `./rlhf.yaml`), the defaults below. `rlhf config show` prints the result
(`--describe`: with each setting's default and description).

Each setting is declared once, here, with its bounds and a one-sentence description (what it does,
its unit); the trainers take these models themselves (`policy.training` is PPO's and the TRL
algorithms' config). docs/configuration.md is generated from them (`core.config_reference`); the
measurements behind the defaults are in docs/settings-history.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from core.config_file import read_config_file
from core.errors import ConfigError
from core.learning_settings import (
    SAMPLING_TEMPERATURE,
    SAMPLING_TOP_P,
    ABTestingSettings,
    ContinuousLearningSettings,
    FeedbackTrustSettings,
    PolicySettings,
    RewardModelSettings,
)
from core.sections import Section
from core.serving_settings import EngineSettings, GatewaySettings

DEFAULT_CONFIG_FILE = "rlhf.yaml"


def data_home() -> Path:
    """Where persistent state lives (broker data, registry, ClickHouse) unless configured."""
    return Path(os.environ.get("RLHF_HOME", Path.home() / ".local" / "share" / "rlhf-stream"))


def cache_home() -> Path:
    """Where downloaded artefacts (the Kafka jars) are cached."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlhf-stream"


class KafkaSettings(Section):
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers the clients connect to (comma-separated host:port list)."
    )
    topic_prefix: str = Field(
        "rlhf.", description="Prefix of every topic name, so that several deployments can share a cluster (string)."
    )
    version: str = Field("4.1.1", description="Apache Kafka version the local broker (`rlhf kafka up`) runs (version string).")
    port: int = Field(9092, ge=1, le=65535, description="Client port of the local broker, on 127.0.0.1 only (TCP port).")
    controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port of the local broker (TCP port).")
    data_dir: Path | None = Field(None, description="Data directory of the local broker, unset: `<home>/kafka` (path).")
    partitions: int = Field(3, ge=1, description="Partitions of each keyed event topic the project creates (partitions).")
    replication_factor: int = Field(
        1, ge=1, description="Replicas of every topic the project creates, 3 on a production cluster (replicas)."
    )
    min_insync_replicas: int = Field(
        1,
        ge=1,
        description="Replicas that must have a write before an acks=all send succeeds, 2 with replication 3; a topic in "
        "schemas/topics.py may ask for more (replicas).",
    )
    # Security, one section for every client (core/kafka_clients.py maps it for confluent-kafka and Faust).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Security protocol every client connects with."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism of the SASL_* protocols."
    )
    sasl_username: str | None = Field(None, description="SASL user name of the SASL_* protocols.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password, a secret best set as RLHF_KAFKA__SASL_PASSWORD, never printed."
    )
    ssl_ca_location: Path | None = Field(
        None,
        description="CA certificate of the brokers' certificates under SSL and SASL_SSL, unset: the system's CAs (PEM file).",
    )
    ssl_certificate_location: Path | None = Field(
        None, description="Client certificate for brokers that authenticate clients by TLS (PEM file)."
    )
    ssl_key_location: Path | None = Field(None, description="Private key of the client certificate (PEM file).")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of the client certificate's private key when it is encrypted (secret)."
    )

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and (self.sasl_username is None or self.sasl_password is None):
            missing = [n for n in ("sasl_username", "sasl_password") if getattr(self, n) is None]
            raise ValueError(f"kafka.{missing[0]}: required with security_protocol {self.security_protocol}")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("kafka.ssl_key_location: a client certificate and its key go together; set both or neither")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"kafka.min_insync_replicas: {self.min_insync_replicas} is more than replication_factor {self.replication_factor}"
            )
        return self


class FeedbackSettings(Section):
    collection_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of answers that are logged and offered feedback (a token, the page's buttons), decided when the "
        "answer is served and stable per interaction, by default every answer because explicit verdicts are scarce "
        "(docs/decisions/0003-feedback-collection-rate.md) (fraction).",
    )
    min_rating: int = Field(4, ge=1, le=5, description="Lowest rating that counts as positive feedback (stars, 1-5).")


class ProducerSettings(Section):
    """The producer SDK (sdk/client.py): a send never waits on Kafka; what Kafka cannot take goes to a local spool."""

    max_block_ms: float = Field(
        1.0,
        gt=0,
        description="Longest a send waits for the client's lock before handing the event over without it (milliseconds).",
    )
    queue_max_events: int = Field(
        100_000, ge=100, description="Size of librdkafka's in-memory queue, past which an event is spooled instead (events)."
    )
    inbox_max_events: int = Field(
        200_000,
        ge=1,
        description="Events accepted while spooling that may wait in memory for the pump to write them, past which "
        "`spool_on_full` applies (events).",
    )
    spool_dir: Path | None = Field(
        None, description="Spool directory, one `p<N>` slot per live process, unset: `<home>/spool` (path)."
    )
    spool_max_bytes: int = Field(1 << 30, ge=1 << 16, description="Size cap of one process's spool on disk (bytes).")
    spool_segment_bytes: int = Field(
        16 << 20, ge=1 << 12, description="Size of one spool segment file, at most half the cap (bytes)."
    )
    spool_on_full: Literal["drop_oldest", "drop_newest", "raise"] = Field(
        "drop_oldest",
        description="What a full spool does: delete its oldest segment, refuse the new event, or raise SpoolFullError to the "
        "caller, each loss counted and logged.",
    )
    spool_fsync: Literal["always", "interval", "never"] = Field(
        "interval",
        description="When spooled bytes are forced to disk, which matters for machine crashes only: a killed process loses none.",
    )
    spool_fsync_interval_s: float = Field(1.0, gt=0, description="Period of the fsync under `spool_fsync: interval` (seconds).")
    drain_window: int = Field(
        20_000,
        ge=1,
        description="Spooled events re-sent before waiting for their acknowledgement and committing the spool's cursor (events).",
    )
    probe_interval_s: float = Field(
        0.5, gt=0, description="Interval at which an unreachable broker is asked for metadata while events are spooled (seconds)."
    )
    gil_switch_interval_ms: float | None = Field(
        0.5,
        gt=0,
        description="CPython's GIL switch interval is lowered from 5 ms to this, so a send waits less behind busy threads, "
        "None: left as it is (milliseconds; why: docs/settings-history.md#gil_switch_interval_ms).",
    )


class StreamBatchingSettings(Section):
    max_events: int = Field(
        1000,
        ge=1,
        description="Most records a stage of the stream worker (validation, per-policy ledger) takes in one batch (records).",
    )
    max_wait_s: float = Field(
        0.01,
        gt=0,
        description="Longest a batch waits to fill, so the most a quiet stream's records are held back per stage (seconds).",
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        description="Longest the broker may hold a fetch that finds no new records (milliseconds; why: "
        "docs/settings-history.md#fetch_max_wait_ms).",
    )


class ClickHouseSettings(Section):
    url: SecretStr | None = Field(
        None, description="ClickHouse server URL such as http://user:pass@host:8123/db, unset: embedded chdb (secret URL)."
    )
    path: Path | None = Field(None, description="Data directory of the embedded chdb, unset: `<home>/clickhouse` (path).")
    database: str = Field("rlhf", description="ClickHouse database holding the tables (name).")
    batch_rows: int = Field(5000, ge=1, description="Events after which the sink inserts its batch, whatever its age (events).")
    batch_seconds: float = Field(
        1.0, gt=0, description="Age of the oldest event after which the sink inserts its batch, however small (seconds)."
    )
    dashboard_host: str = Field(
        "127.0.0.1", description="Interface the sink serves the dashboard and /sql endpoint on (host or IP)."
    )
    dashboard_port: int = Field(8321, ge=1, le=65535, description="Port of the dashboard and /sql endpoint (TCP port).")
    dashboard_keys: tuple[SecretStr, ...] = Field(
        (),
        description="Bearer keys of the dashboard and /sql, `?key=` for a browser, required when dashboard_host is beyond "
        "loopback (secrets).",
    )


class RegistrySettings(Section):
    path: Path | None = Field(
        None, description="Model registry directory, or with `url` its local cache, unset: `<home>/registry` (path)."
    )
    url: str | None = Field(
        None,
        description="Registry every host shares, as an s3:// URL (credentials and endpoint from the AWS_* variables), "
        "unset: the local directory `path` (URL; docs/decisions/0009-shared-registry.md).",
    )
    promotion_margin: float = Field(
        -0.02,
        description="Held-out gate-reward gain over the parent a candidate needs to reach users, negative: a tolerance "
        "(fraction of the parent's; why: docs/settings-history.md#promotion_margin).",
    )


class AssistantSettings(Section):
    api_keys: tuple[SecretStr, ...] = Field(
        (),
        description="Bearer keys of /v1/chat/completions and /v1/models, none: open to anyone who reaches it (secrets).",
    )
    feedback_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key of the per-interaction feedback tokens, unset: a random one per start, so tokens die "
        "with the process (secret).",
    )
    feedback_token_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="Lifetime of a feedback token and of the served interaction it names (seconds)."
    )
    recent_interactions: int = Field(
        100_000, ge=1, description="Served interactions kept in memory for feedback, the oldest forgotten first (interactions)."
    )
    replicas: int = Field(
        1,
        ge=1,
        description="Assistant processes behind one load balancer; above 1 each reads what the others served from Kafka "
        "(assistant/peers.py) and feedback_secret is required (processes).",
    )
    cors_origins: tuple[str, ...] = Field(
        (), description="Browser origins allowed to call the API, such as https://chat.example.com, none: same origin only."
    )
    max_tokens: int = Field(256, ge=1, description="Largest `max_tokens` a completion request may ask for (tokens).")
    temperature: float = Field(
        SAMPLING_TEMPERATURE,
        ge=0,
        le=2,
        description="Sampling temperature of answers whose request sets none, 0: greedy, by default the policy's evaluation one.",
    )
    top_p: float = Field(
        SAMPLING_TOP_P,
        gt=0,
        le=1,
        description="Nucleus sampling mass of answers whose request sets none, by default the policy's evaluation one (mass).",
    )
    max_batch: int = Field(
        32,
        ge=1,
        description="Most queued queries answered together, one generate call per version and sampling setting, taken in "
        "turn from each client's queue, 1: one at a time (queries).",
    )
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        description="Longest a batch waits for more requests to join it, from its first queued request or the end of the "
        "previous batch, whichever is later (milliseconds).",
    )
    shared_batch_slowdown: float = Field(
        0.25, ge=0, description="While several clients are active, how much longer than one query a batch may take (fraction)."
    )
    queue_size: int = Field(
        256,
        ge=1,
        description="Queries waiting for generation beyond which new requests are refused with 503, one client holding at "
        "most half of them (queries).",
    )
    max_batch_items: int = Field(
        32, ge=1, description="Most items one POST /chat/batch may carry, more are refused with 400 (items)."
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body the assistant reads, a larger one is refused with 413 (bytes)."
    )
    max_turns: int = Field(
        64, ge=1, description="Most messages one completion request may carry, more are refused with 400 (messages)."
    )
    max_turn_chars: int = Field(
        16_000,
        ge=1,
        description="Most characters one message of a completion request may hold, more are refused with 400 (characters).",
    )
    max_concurrent_per_key: int = Field(
        8,
        ge=1,
        description="Requests one API key, or a client address presenting none, may have in progress at once where keys are "
        "configured, more are refused with 429 (requests).",
    )

    @model_validator(mode="after")
    def _replicas_share_a_secret(self) -> AssistantSettings:
        if self.replicas > 1 and self.feedback_secret is None:
            raise ValueError(
                f"assistant.feedback_secret: required with replicas {self.replicas}: each replica must accept the feedback "
                "tokens the others sign, so all share one secret (set RLHF_ASSISTANT__FEEDBACK_SECRET on every replica)"
            )
        return self


PrivacyMode = Literal["off", "redact", "drop"]
PiiType = Literal["email", "phone", "card", "iban", "ip"]
PII_TYPES: tuple[PiiType, ...] = get_args(PiiType)


class PrivacySettings(Section):
    """PII in the free text of feedback and interactions, where they enter the stream app and the sink."""

    mode: PrivacyMode = Field(
        "redact",
        description="What happens to PII in feedback and interactions: `redact` replaces it with typed placeholders such as "
        "<EMAIL>, `drop` sends the event to the DLQ, `off` stores it as sent.",
    )
    detectors: tuple[PiiType, ...] = Field(
        PII_TYPES, description="PII types looked for, names not among them (no maintained offline detector)."
    )
    phone_region: str = Field(
        "US",
        pattern=r"^[A-Z]{2}$",
        description="Region whose national phone formats are recognised, numbers with + and a country code found whatever it "
        "is (ISO 3166 alpha-2 code).",
    )


class Settings(BaseSettings):
    """Everything configurable, one frozen object."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="RLHF_", env_nested_delimiter="__", nested_model_default_partial_update=True
    )

    home: Path = Field(
        default_factory=data_home, description="Root of persistent state: $RLHF_HOME, else ~/.local/share/rlhf-stream (path)."
    )
    kafka: KafkaSettings = KafkaSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    producer: ProducerSettings = ProducerSettings()
    reward_model: RewardModelSettings = RewardModelSettings()
    policy: PolicySettings = PolicySettings()
    continuous_learning: ContinuousLearningSettings = ContinuousLearningSettings()
    trust: FeedbackTrustSettings = FeedbackTrustSettings()
    stream_batching: StreamBatchingSettings = StreamBatchingSettings()
    ab_testing: ABTestingSettings = ABTestingSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    registry: RegistrySettings = RegistrySettings()
    assistant: AssistantSettings = AssistantSettings()
    privacy: PrivacySettings = PrivacySettings()
    engine: EngineSettings = EngineSettings()
    gateway: GatewaySettings = GatewaySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment over the YAML file (passed as init values); pydantic-settings deep-merges them.
        return (env_settings, init_settings)

    @property
    def kafka_data_dir(self) -> Path:
        return self.kafka.data_dir or self.home / "kafka"

    @property
    def registry_path(self) -> Path:
        return self.registry.path or self.home / "registry"

    @property
    def clickhouse_path(self) -> Path:
        return self.clickhouse.path or self.home / "clickhouse"

    @property
    def engine_data_dir(self) -> Path:
        return self.home / "engine"


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: dotted.key: reason (got value)`."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        shown = "input" in err and not isinstance(err["input"], dict)  # a section's rule: its message names the values
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") and shown else ""
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {key}: {reason}{got}")
    return "\n".join(lines)


def load_settings(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Load the YAML file (explicit path, $RLHF_CONFIG, or ./rlhf.yaml if present) under env overrides.
    `environ` stands in for os.environ when given: the settings a process started with it loads."""
    chosen = path or (os.environ if environ is None else environ).get("RLHF_CONFIG")
    file = Path(chosen) if chosen else Path(DEFAULT_CONFIG_FILE)
    if chosen and not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    values = read_config_file(file) if file.is_file() else {}
    values.update(overrides)
    try:
        return Settings(**values) if environ is None else _settings_under(environ, values)
    except ValidationError as exc:
        source = f"{file} or RLHF_* environment" if file.is_file() else "RLHF_* environment"
        raise ConfigError(describe_validation_error(exc, source)) from None


class _Variables(EnvSettingsSource):
    """The RLHF_* variables of a given environment instead of this process's."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self.environ.items()}  # Settings' names are case-insensitive


def _settings_under(environ: Mapping[str, str], values: dict[str, Any]) -> Settings:
    """`Settings(**values)` with `environ`'s variables over the values, as os.environ's are."""

    class Under(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (_Variables(settings_cls, environ), init_settings)

    return Settings.model_construct(**dict(Under(**values)))  # validated by Under; a plain Settings
