"""Parse results: one frozen dataclass per statement kind."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr, ValidationError

from .._config import Destination, FilterConfig, StreamConfig
from .._errors import SqlError
from .._event import OperationType

DestinationType = Literal["kafka", "kinesis", "webhook"]
AlterAction = Literal["pause", "resume", "backfill", "cancel_backfill"]


@dataclass(frozen=True)
class CreateStream:
    """``CREATE CHANGE DATA CAPTURE ON ... TO ... [options] [AS name]``.

    ``tables`` are ``table`` or ``schema.table`` (``*`` allowed as a pattern);
    ``name`` is ``None`` when the statement has no ``AS``: the executor then picks
    a readable unique name (see :meth:`base_name`).
    """

    tables: tuple[str, ...]
    destination: DestinationType
    address: str
    topic: str | None = None
    region: str | None = None
    format: Literal["json", "avro"] = "json"
    secret: str | None = field(default=None, repr=False)
    snapshot: Literal["initial", "none"] = "none"
    operations: tuple[str, ...] = ()
    where: str | None = None
    name: str | None = None

    def base_name(self) -> str:
        """``<table>_<desttype>`` from the first table, e.g. ``orders_kafka``."""
        table = self.tables[0].rpartition(".")[2] if self.tables else "stream"
        slug = re.sub(r"[^a-z0-9_]+", "_", table.lower()).strip("_")[:100] or "all"
        return f"{slug}_{self.destination}"

    def to_config(self, name: str | None = None) -> StreamConfig:
        """The :class:`StreamConfig` this statement creates, named ``name``, else the
        ``AS`` name, else :meth:`base_name` (the executor makes it unique)."""
        stream = name or self.name or self.base_name()
        filters = []
        if self.where is not None:
            filters.append(FilterConfig(name=f"{stream}_where", predicate=self.where))
        try:
            return StreamConfig(
                name=stream,
                tables=list(self.tables),
                destination=Destination(
                    type=self.destination,
                    address=self.address,
                    topic=self.topic,
                    region=self.region,
                ),
                format=self.format,
                secret=SecretStr(self.secret) if self.secret is not None else None,
                operations=[OperationType.parse(op) for op in self.operations],
                filters=filters,
                snapshot=self.snapshot,
            )
        except ValidationError as exc:
            msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise SqlError(f"invalid stream: {msg}", stream=stream) from None


@dataclass(frozen=True)
class ShowStreams:
    """``SHOW CDC STREAMS``."""


@dataclass(frozen=True)
class ShowStreamStatus:
    """``SHOW CDC STREAM STATUS name``."""

    name: str


@dataclass(frozen=True)
class AlterStream:
    """``ALTER CDC STREAM name PAUSE|RESUME|BACKFILL [WHERE 'p']|CANCEL BACKFILL``."""

    name: str
    action: AlterAction
    where: str | None = None


@dataclass(frozen=True)
class DropStream:
    """``DROP CHANGE DATA CAPTURE [IF EXISTS] name``."""

    name: str
    if_exists: bool = False


Statement = CreateStream | ShowStreams | ShowStreamStatus | AlterStream | DropStream
