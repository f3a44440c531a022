"""Typed, immutable configuration mirroring the guide's structs.

YAML keys: ``state_dir``, ``state`` (StateConfig), ``source``, ``cdc`` (CdcConfig), ``webhook``
(WebhookConfig), ``webhooks`` (registrations), ``streams``, ``filters``, ``circuit_breaker``,
``transformations``, ``delivery``, ``security``, ``logging``, ``journal`` (JournalConfig). Strings may use
``${ENV_VAR}`` (or ``${ENV_VAR:-default}``); ``HELIOSDB_CDC_DSN`` fills
``source.dsn``. Secrets are :class:`pydantic.SecretStr` and print as ``**********``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._config_errors import AtKey, problems
from ._errors import ConfigError
from ._event import OperationType
from ._format_names import FormatName, format_problem, normalize_format
from ._yaml import load_yaml


def _parse_ops(v: Any) -> Any:
    """Operation names in any case (``insert``, ``INSERT``, ``SchemaChange``)."""
    if isinstance(v, list):
        return [OperationType.parse(x) if isinstance(x, str) else x for x in v]
    return v


OperationList = Annotated[list[OperationType], BeforeValidator(_parse_ops)]

# upper bounds of durations (every numeric setting has one: docs/configuration.md)
DAY_SECS = 86_400
DAY_MS = DAY_SECS * 1000
YEAR_SECS = 365 * DAY_SECS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class RetryConfig(_Model):
    """Exponential backoff: attempt 1 immediate, then initial_delay_ms * multiplier**n (+ jitter)."""

    max_attempts: int = Field(3, ge=1, le=1_000_000)
    initial_delay_ms: int = Field(100, ge=0, le=DAY_MS)
    max_delay_ms: int = Field(30000, ge=0, le=DAY_MS)
    multiplier: float = Field(2.0, ge=1.0, le=100.0)
    jitter: bool = True

    def delay_ms(self, attempt: int) -> float:
        """Delay before ``attempt`` (2, 3, ...), without jitter."""
        if attempt <= 1:
            return 0.0
        return float(min(self.max_delay_ms, self.initial_delay_ms * self.multiplier ** (attempt - 2)))


class CircuitBreakerConfig(_Model):
    failure_threshold: int = Field(5, ge=1, le=1_000_000)
    success_threshold: int = Field(2, ge=1, le=1_000_000)
    timeout_secs: float = Field(60, gt=0, le=DAY_SECS)
    half_open_max_calls: int = Field(3, ge=1, le=10_000)


class ExactlyOnceConfig(_Model):
    enabled: bool = True
    window_secs: int = Field(86400, ge=1, le=YEAR_SECS, description="how long a delivery is remembered")
    retention_secs: int | None = Field(None, ge=1, le=YEAR_SECS, description="defaults to window_secs")


class CdcConfig(_Model):
    """The guide's CdcConfig.

    * ``wal_path``: directory of the local log (default ``<state_dir>/log``);
    * ``checkpoint_interval``: most events between two checkpoints of a stream;
    * ``batch_size``: most changes decoded, logged and fsynced as one batch;
    * ``poll_interval_ms``: longest wait before a partial batch is flushed.
    """

    wal_path: str | None = None
    checkpoint_interval: int = Field(1000, ge=1, le=1_000_000)
    batch_size: int = Field(1000, ge=1, le=100_000)
    poll_interval_ms: int = Field(50, ge=1, le=60_000)
    # decode pgoutput in a worker process (another core, no GIL shared with delivery):
    # faster catch-up for Kafka/batched/memory streams when a core is free; off by default
    # because it costs latency when the CPUs are saturated (docs/architecture.md)
    decode_worker: bool = False
    max_log_bytes: int = Field(10 * 1024**3, ge=1024 * 1024, le=1024**5)
    segment_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024, le=1024**3)
    memory_queue_events: int = Field(10_000, ge=100, le=1_000_000)
    snapshot_chunk_size: int = Field(1000, ge=1, le=100_000)
    # delivery workers split each webhook stream by a hash of (table, key) into this many
    # partitions; one partition belongs to one worker, so a row keeps its order
    partitions: int = Field(16, ge=1, le=4096)


class WebhookConfig(_Model):
    bind_address: str = "127.0.0.1:8080"
    worker_pool_size: int = Field(100, ge=1, le=10_000)
    max_concurrent_requests: int = Field(1000, ge=1, le=100_000)
    timeout_secs: float = Field(30, gt=0, le=3600)
    batch_size: int = Field(1, ge=1, le=10000, description="events per POST; >1 sends a JSON array")
    max_payload_bytes: int = Field(1024 * 1024, ge=1024, le=1024**3)
    # "heliosdb": X-HeliosDB-Signature: sha256=<hex>; "standard": Standard Webhooks (docs/security.md)
    signature_scheme: Literal["heliosdb", "standard"] = "heliosdb"
    retry: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    exactly_once: ExactlyOnceConfig = ExactlyOnceConfig()

    @field_validator("bind_address")
    @classmethod
    def _bind(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        return v


class FilterConfig(_Model):
    name: str = "filter"
    tables: list[str] = Field(default_factory=list)
    operations: OperationList = Field(default_factory=list)
    columns: dict[str, list[str]] = Field(default_factory=dict)
    predicate: str | None = None


class TransformationConfig(_Model):
    name: str = "transformation"
    target: str
    template: str | None = None
    jsonpath: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one(self) -> TransformationConfig:
        if (self.template is None) == (self.jsonpath is None):
            raise ValueError("give exactly one of 'template' or 'jsonpath'")
        return self


def _check_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL with a host")
    return v


class WebhookRegistration(_Model):
    """The guide's WebhookRegistration: an endpoint, its secret, what it receives."""

    url: str
    secret: SecretStr = SecretStr("")
    tables: list[str] = Field(default_factory=list)
    operations: OperationList = Field(default_factory=list)
    filters: list[FilterConfig] = Field(default_factory=list)
    name: str | None = None
    # the event format: heliosdb (= json, the default), debezium, cloudevents, cloudevents-binary
    format: FormatName = "json"

    _url = field_validator("url")(classmethod(lambda cls, v: _check_url(v)))
    _format = field_validator("format", mode="before")(classmethod(lambda cls, v: normalize_format(v)))

    @model_validator(mode="after")
    def _check_format(self) -> WebhookRegistration:
        problem = format_problem(self.format, "webhook")
        if problem:
            raise AtKey(problem, "format")
        return self


#: destination kinds a stream may name; the sink registry (sinks/_registry.py) adds the
#: kinds registered with it
DESTINATION_TYPES: list[str] = ["webhook", "kafka", "kinesis", "memory"]


class Destination(_Model):
    type: str
    address: str
    topic: str | None = None
    region: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in DESTINATION_TYPES:
            *head, last = (repr(t) for t in DESTINATION_TYPES)
            kinds = f"{', '.join(head)} or {last}" if head else last
            raise ValueError(f"Input should be {kinds}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Destination:
        if self.type == "webhook":
            try:
                _check_url(self.address)
            except ValueError as exc:
                raise AtKey(str(exc), "address") from None
        if self.type == "kafka" and not self.topic:
            raise AtKey("a kafka destination needs a topic", "topic")
        if self.type == "kinesis" and not self.region:
            raise AtKey("a kinesis destination needs a region", "region")
        return self


class StreamConfig(_Model):
    name: str
    tables: list[str]
    destination: Destination
    format: FormatName = "json"
    secret: SecretStr | None = None
    operations: OperationList = Field(default_factory=list)
    filters: list[FilterConfig] = Field(default_factory=list)
    snapshot: Literal["initial", "none"] = "none"

    @field_validator("format", mode="before")
    @classmethod
    def _fmt(cls, v: Any) -> Any:
        return normalize_format(v)

    @model_validator(mode="after")
    def _check(self) -> StreamConfig:
        dest = self.destination
        try:
            batch = int(dest.options.get("batch_size", 1) or 1)
        except (TypeError, ValueError):
            return self  # not a number: reported at destination.options.batch_size by the checks
        problem = format_problem(self.format, dest.type, batch)
        if problem:
            raise AtKey(problem, "format")
        return self


class SourceConfig(_Model):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    slot: str = "heliosdb_cdc"
    publication: str = "heliosdb_cdc"
    tables: list[str] = Field(default_factory=list)
    streaming: bool = False
    status_interval_secs: float = Field(10.0, gt=0, le=3600)
    reconnect_max_delay_secs: float = Field(30.0, gt=0, le=3600)

    @field_validator("slot", "publication")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError("must be a lowercase identifier: letters, digits, underscore")
        return v


class DeliveryConfig(_Model):
    """The guide's best-practice shorthand; mapped onto ``webhook.retry``."""

    # fix: mapped as max_attempts = max_retries + 1 with model_copy (no validation),
    # so it must respect RetryConfig.max_attempts <= 1_000_000 here
    max_retries: int | None = Field(None, ge=0, le=999_999)
    initial_retry_delay_ms: int | None = Field(None, ge=0, le=DAY_MS)
    max_retry_delay_ms: int | None = Field(None, ge=0, le=DAY_MS)
    # worker processes that deliver webhook streams (1: in the service's own process)
    workers: int = Field(1, ge=1, le=64)


class TlsConfig(_Model):
    enabled: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    client_ca_path: str | None = None  # verified client certificates authenticate as admin


def _check_cidrs(v: list[str]) -> list[str]:
    import ipaddress

    for item in v:
        try:
            ipaddress.ip_network(str(item).strip(), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network in CIDR form, e.g. 10.0.0.0/8") from None
    return v


class SecurityConfig(_Model):
    """See docs/security.md. Tokens and secret values may be ``file:/path`` (read at load)."""

    tls: TlsConfig = TlsConfig()
    ip_whitelist: list[str] = Field(default_factory=list)
    trusted_proxies: list[str] = Field(default_factory=list)
    admin_token: SecretStr | None = None
    read_only_token: SecretStr | None = None
    metrics_public: bool = False
    max_request_bytes: int = Field(1024 * 1024, ge=1024, le=1024**3)
    block_private_networks: bool = False
    webhook_allowed_cidrs: list[str] = Field(default_factory=list)
    outbound_ca_path: str | None = None

    _cidrs = field_validator("ip_whitelist", "trusted_proxies", "webhook_allowed_cidrs")(
        classmethod(lambda cls, v: _check_cidrs(v))
    )


class StateConfig(_Model):
    """Where the state lives: absent ``url``, SQLite under ``state_dir`` (docs/deployment.md)."""

    url: SecretStr | None = None  # postgresql://user:${PASSWORD}@host/db; printed as **********
    schema_name: str = Field("heliosdb_cdc", alias="schema")

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and urlsplit(v.get_secret_value()).scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL (leave it out for SQLite under state_dir)")
        return v

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError("must be a lowercase identifier: letters, digits, underscore")
        return v


class KafkaJournalConfig(_Model):
    """``journal.kafka``: capture publishes every record to this topic (``--role capture``);
    workers deliver from it (``--role worker``)."""

    bootstrap_servers: str
    topic: str
    partitions: int = Field(6, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=100)
    # a standby takes over this long after the leader last renewed its lease
    lease_secs: float = Field(5.0, ge=1, le=300)
    timeout_s: float = Field(30.0, gt=0, le=3600)
    options: dict[str, str] = Field(default_factory=dict)  # librdkafka settings (security.protocol...)
    # --role worker: the consumer group of the delivery workers (default heliosdb-cdc-delivery-<topic>)
    group_id: str | None = Field(None, min_length=1, max_length=249)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,240}", v) or v in (".", ".."):
            raise ValueError("must be a Kafka topic name: letters, digits, '.', '_', '-' (at most 240)")
        return v

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        for item in v.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{item.strip()!r} is not host:port (give host:port[,host:port...])")
        return v


class JournalConfig(_Model):
    """Where capture writes: absent ``kafka``, the local log under ``state_dir``."""

    kafka: KafkaJournalConfig | None = None


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = Field(False, alias="json")

    @field_validator("level", mode="before")
    @classmethod
    def _lvl(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class Config(_Model):
    state_dir: str = "./.heliosdb-cdc"
    state: StateConfig = StateConfig()
    source: SourceConfig = SourceConfig()
    cdc: CdcConfig = CdcConfig()
    webhook: WebhookConfig = WebhookConfig()
    webhooks: list[WebhookRegistration] = Field(default_factory=list)
    streams: list[StreamConfig] = Field(default_factory=list)
    filters: list[FilterConfig] = Field(default_factory=list)
    transformations: list[TransformationConfig] = Field(default_factory=list)
    delivery: DeliveryConfig = DeliveryConfig()
    security: SecurityConfig = SecurityConfig()
    logging: LoggingConfig = LoggingConfig()
    journal: JournalConfig = JournalConfig()
    # the guide's top-level ``circuit_breaker:`` block, the same as webhook.circuit_breaker
    circuit_breaker: CircuitBreakerConfig | None = None

    @field_validator("streams", "webhooks")
    @classmethod
    def _names(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        from ._names import name_problem  # the one naming rule (docs/api.md, "Names")

        for i, item in enumerate(v):
            if item.name is not None and (problem := name_problem(item.name)):
                raise ValueError(f"{info.field_name}[{i}].name: {problem}")
        return v

    @model_validator(mode="after")
    def _apply_delivery(self) -> Config:
        cb = self.circuit_breaker
        if cb is not None and cb != self.webhook.circuit_breaker:
            if "circuit_breaker" in self.webhook.model_fields_set:
                raise AtKey(
                    "given both at the top level and as webhook.circuit_breaker, with different "
                    "values; keep one",
                    "circuit_breaker",
                )
            object.__setattr__(self, "webhook", self.webhook.model_copy(update={"circuit_breaker": cb}))
        d = self.delivery
        updates: dict[str, Any] = {}
        if d.max_retries is not None:
            updates["max_attempts"] = d.max_retries + 1
        if d.initial_retry_delay_ms is not None:
            updates["initial_delay_ms"] = d.initial_retry_delay_ms
        if d.max_retry_delay_ms is not None:
            updates["max_delay_ms"] = d.max_retry_delay_ms
        if updates:
            retry = self.webhook.retry.model_copy(update=updates)
            object.__setattr__(self, "webhook", self.webhook.model_copy(update={"retry": retry}))
        names = [s.name for s in self.streams]
        for i, name in enumerate(names):
            if name in names[:i]:
                first = names.index(name)
                message = f"duplicate stream names: {name!r} is also streams[{first}]"
                raise AtKey(message, "streams", i, "name")
        return self

    @property
    def log_dir(self) -> Path:
        return Path(self.cdc.wal_path) if self.cdc.wal_path else Path(self.state_dir) / "log"

    @property
    def database(self) -> str:
        from psycopg2.extensions import parse_dsn

        try:
            return str(parse_dsn(self.source.dsn.get_secret_value()).get("dbname", "postgres"))
        except Exception:
            return "postgres"


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(node: Any, path: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            val = os.environ.get(m.group(1), m.group(2))
            if val is None:
                raise ConfigError(f"environment variable {m.group(1)} is not set", key_path=path)
            return val

        return _ENV.sub(sub, node)
    return node


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a config mapping; errors name the key path and what is wrong."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of keys to values")
    data = _expand(data, "")
    from ._secrets import resolve_secret_files  # ``file:/path`` secrets (docs/security.md)

    data = resolve_secret_files(data)
    dsn = os.environ.get("HELIOSDB_CDC_DSN")
    # fix: a non-mapping 'source' raised AttributeError here; let validation report it
    if dsn and isinstance(data.get("source") or {}, dict) and not (data.get("source") or {}).get("dsn"):
        data = {**data, "source": {**(data.get("source") or {}), "dsn": dsn}}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        found = problems(exc, Config, data)
        lines = [f"{path or '(top level)'}: {msg}" for path, msg in found]
        err = ConfigError("invalid configuration:\n  " + "\n  ".join(lines), key_path=found[0][0])
        err.problems = found
        raise err from None


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file: {exc.strerror}", path=str(p)) from None
    try:
        data = load_yaml(text)  # duplicate keys and alias bombs refused (_yaml.py)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=str(p)) from None
    return config_from_dict({} if data is None else data)
