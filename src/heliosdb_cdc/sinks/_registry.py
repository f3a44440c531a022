"""Destination kind -> the factory that builds its :class:`Sink`: the one place that maps them.

Each factory lives in its sink's module (``webhook_sink_for`` in ``_webhook.py``...)
and takes the stream's :class:`StreamConfig` and a :class:`SinkContext` (what the
service shares with every sink). It returns the sink and its endpoint: the name the
circuit breaker, the delivery records and the metrics know the destination by.

A new destination is one module with its Sink and factory, and one entry here (or a
call to :func:`register_sink`, which also makes the configuration accept the kind).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._config import DESTINATION_TYPES, Config, StreamConfig
from .._errors import ConfigError
from ._base import Sink
from ._kafka import kafka_sink_for
from ._kinesis import kinesis_sink_for
from ._memory import memory_sink_for
from ._webhook import webhook_sink_for


def _no_content_types(fmt: str) -> dict[str, Any]:
    return {}


def _no_instance() -> str:
    raise ConfigError("this destination needs the state directory's instance id, and none was given")


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the service gives every sink factory."""

    config: Config
    #: the state directory's id (read on first use): Kafka names its transactions with it
    instance_id: Callable[[], str] = _no_instance
    #: webhooks: one limit on the requests in flight, shared by every stream
    semaphore: asyncio.Semaphore | None = None
    #: format -> WebhookSink content-type keyword arguments (CloudEvents has its own)
    content_types: Callable[[str], dict[str, Any]] = field(default=_no_content_types)


SinkFactory = Callable[[StreamConfig, SinkContext], tuple[Sink, str]]

_FACTORIES: dict[str, SinkFactory] = {
    "webhook": webhook_sink_for,
    "kafka": kafka_sink_for,
    "kinesis": kinesis_sink_for,
    "memory": memory_sink_for,
}


def register_sink(kind: str, factory: SinkFactory) -> None:
    """Add (or replace) the factory of destination ``kind``; streams may then name it in
    ``destination.type``."""
    _FACTORIES[kind] = factory
    if kind not in DESTINATION_TYPES:
        DESTINATION_TYPES.append(kind)


def unregister_sink(kind: str) -> None:
    """Forget a kind :func:`register_sink` added; streams can no longer name it."""
    _FACTORIES.pop(kind, None)
    if kind in DESTINATION_TYPES:
        DESTINATION_TYPES.remove(kind)


def sink_kinds() -> list[str]:
    """The destination kinds a stream may name."""
    return list(_FACTORIES)


def build_sink(cfg: StreamConfig, ctx: SinkContext) -> tuple[Sink, str]:
    """The stream's sink and endpoint, from the factory of its destination kind."""
    factory = _FACTORIES.get(cfg.destination.type)
    if factory is None:
        raise ConfigError(
            f"destination.type: no sink for {cfg.destination.type!r}; known: {', '.join(_FACTORIES)}",
            stream=cfg.name,
        )
    return factory(cfg, ctx)
