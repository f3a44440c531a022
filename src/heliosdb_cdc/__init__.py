"""heliosdb-cdc: every committed row change of PostgreSQL, in order per row and
exactly once, to webhooks, Kafka and Kinesis.

The public API mirrors the user guide's Rust API with Python conventions.
"""

from ._config import (
    CdcConfig,
    CircuitBreakerConfig,
    Config,
    Destination,
    ExactlyOnceConfig,
    FilterConfig,
    RetryConfig,
    StreamConfig,
    TransformationConfig,
    WebhookConfig,
    WebhookRegistration,
    config_from_dict,
    load_config,
)
from ._errors import (
    CdcError,
    ConfigError,
    DecodeError,
    DeliveryError,
    FilterError,
    SinkError,
    SourceError,
    SqlError,
    StateError,
    StreamExists,
    StreamNotFound,
)
from ._event import CdcEvent, OperationType
from ._service import ExactlyOnce, WebhookServer
from .delivery._circuit import CircuitBreaker, CircuitBreakerRegistry, CircuitState

__version__ = "0.1.0"

__all__ = [
    "CdcConfig",
    "CdcError",
    "CdcEvent",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerRegistry",
    "CircuitState",
    "Config",
    "ConfigError",
    "DecodeError",
    "DeliveryError",
    "Destination",
    "ExactlyOnce",
    "ExactlyOnceConfig",
    "FilterConfig",
    "FilterError",
    "OperationType",
    "RetryConfig",
    "SinkError",
    "SourceError",
    "SqlError",
    "StateError",
    "StreamConfig",
    "StreamExists",
    "StreamNotFound",
    "TransformationConfig",
    "WebhookConfig",
    "WebhookRegistration",
    "WebhookServer",
    "__version__",
    "config_from_dict",
    "load_config",
]
