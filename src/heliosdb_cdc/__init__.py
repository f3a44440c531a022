"""heliosdb-cdc: every committed row change of PostgreSQL, in order per row and
exactly once, to webhooks, Kafka and Kinesis.

The public API mirrors the user guide's Rust API with Python conventions.
"""

from typing import TYPE_CHECKING, Any

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
from .delivery import CircuitBreaker, CircuitBreakerRegistry, CircuitState
from .receiver import verify_signature
from .sinks import create_mtls_client

if TYPE_CHECKING:
    from .pipeline import EventFilter


def __getattr__(name: str) -> Any:
    # the pipeline (SQL predicates, Jinja2 templates) is imported on first use
    if name == "EventFilter":
        from .pipeline import EventFilter

        return EventFilter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "EventFilter",
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
    "create_mtls_client",
    "load_config",
    "verify_signature",
]
