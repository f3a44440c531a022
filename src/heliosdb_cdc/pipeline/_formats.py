"""Event formats: what a destination receives for one change (``format:``).

* ``json`` (also spelled ``heliosdb``): the default event, as stored (no re-encoding);
* ``avro``: the default event in Avro (Kafka and Kinesis, sinks/_avro.py);
* ``debezium``: Debezium's JSON envelope (pipeline/_debezium.py);
* ``cloudevents``: a CloudEvents 1.0 structured-mode event (``application/cloudevents+json``)
  whose ``data`` is the default event;
* ``cloudevents-binary``: the default event as the body, CloudEvents attributes in
  ``ce-*`` headers (``ce_*`` on Kafka, the Kafka protocol binding).

A :class:`Formatter` maps a decoded default event to :class:`Formatted` (body, extra
headers, optional record key, tombstone flag): pure functions, no I/O except the
Debezium format's column catalog (one query per table).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from .._event import dumps
from .._format_names import FORMATS, format_problem, normalize_format
from ._debezium import Column, ColumnCatalog, envelope

if TYPE_CHECKING:
    from .._config import StreamConfig

__all__ = [
    "FORMATS",
    "CloudEventsFormat",
    "DebeziumFormat",
    "Formatted",
    "Formatter",
    "build_formatter",
    "format_problem",
    "normalize_format",
]

CE_TYPE_PREFIX = "io.heliosdb.cdc."
CE_CONTENT_TYPE = "application/cloudevents+json"
CE_BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


@dataclass(frozen=True, slots=True)
class Formatted:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    key: bytes | None = None  # the record key, when the format has its own (Debezium on Kafka)
    tombstone: bool = False  # follow the record with a null-valued one (Kafka, after deletes)


class Formatter(Protocol):
    name: str
    content_type: str  # of one event's body over HTTP
    batch_content_type: str  # of a JSON array of bodies

    def __call__(self, event: Mapping[str, Any], key: bytes, lsn: int) -> Formatted | None: ...


# -- CloudEvents ---------------------------------------------------------------------------
def _ce_header_value(value: str) -> str:
    """HTTP binding 3.1.3.2: percent-encode space, '"', '%' and anything outside printable ASCII."""
    return urllib.parse.quote(value, safe="!#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def cloudevent_attributes(event: Mapping[str, Any], key: bytes) -> dict[str, str]:
    """The CloudEvents context attributes of one default event."""
    database = str(event.get("database") or "")
    table = str(event["table"])
    attrs = {
        "specversion": "1.0",
        "id": str(event["event_id"]),
        "source": f"/heliosdb-cdc/{quote(database, safe='')}/{quote(table, safe='.')}",
        "type": CE_TYPE_PREFIX + str(event["operation"]).lower(),
        "subject": key.decode() if key else dumps(event.get("key") or {}).decode(),
        "time": str(event["timestamp"]),
        "datacontenttype": "application/json",
        "sequence": str(event["sequence"]),
    }
    return attrs


class CloudEventsFormat:
    """Structured (``binary=False``) or binary content mode."""

    def __init__(self, *, binary: bool, header_prefix: str = "ce-") -> None:
        self.binary = binary
        self.header_prefix = header_prefix
        self.name = "cloudevents-binary" if binary else "cloudevents"
        self.content_type = "application/json" if binary else CE_CONTENT_TYPE
        self.batch_content_type = CE_BATCH_CONTENT_TYPE

    def __call__(self, event: Mapping[str, Any], key: bytes, lsn: int) -> Formatted:
        attrs = cloudevent_attributes(event, key)
        if self.binary:
            attrs.pop("datacontenttype")
            headers = {self.header_prefix + k: _ce_header_value(v) for k, v in attrs.items()}
            if self.header_prefix != "ce-":  # Kafka: content-type is a header of its own
                headers["content-type"] = "application/json"
            return Formatted(dumps(dict(event)), headers)
        return Formatted(dumps({**attrs, "data": dict(event)}))


# -- Debezium --------------------------------------------------------------------------------
class DebeziumFormat:
    """Debezium's envelope; ``schemas`` adds the ``schema``/``payload`` wrapping of Kafka
    Connect's JsonConverter (``schemas.enable=true``) to value and key."""

    name = "debezium"
    content_type = "application/json"
    batch_content_type = "application/json"

    def __init__(
        self,
        catalog: ColumnCatalog,
        *,
        schemas: bool = False,
        tombstones: bool = False,
        topic_prefix: str = "heliosdb",
        record_key: bool = False,
    ) -> None:
        from .. import __version__

        self.catalog = catalog
        self.schemas = schemas
        self.tombstones = tombstones
        self.topic_prefix = topic_prefix
        self.record_key = record_key
        self.version = f"heliosdb-cdc-{__version__}"

    def columns(self, event: Mapping[str, Any]) -> list[Column]:
        names: set[str] = set()
        for part in ("value", "old_value", "key"):
            row = event.get(part)
            if row:
                names.update(row)
        return self.catalog.lookup(str(event["table"]), frozenset(names))

    def __call__(self, event: Mapping[str, Any], key: bytes, lsn: int) -> Formatted | None:
        op = str(event["operation"])
        if op not in ("INSERT", "UPDATE", "DELETE", "READ"):
            # TRUNCATE: skipped, as Debezium's default skipped.operations=t does
            return None
        rec = envelope(event, self.columns(event), lsn=lsn, prefix=self.topic_prefix, version=self.version)
        value: Any = rec.value
        key_obj: Any = rec.key
        if self.schemas:
            value = {"schema": rec.value_schema, "payload": rec.value}
            key_obj = {"schema": rec.key_schema, "payload": rec.key}
        return Formatted(
            dumps(value),
            key=dumps(key_obj) if self.record_key else None,
            tombstone=self.tombstones and op == "DELETE",
        )


def _bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    v = options.get(name, default)
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def build_formatter(
    fmt: str,
    destination: str,
    options: Mapping[str, Any],
    read_columns: Callable[[str], list[tuple[Any, ...]]],
    database: str,
) -> Formatter | None:
    """The formatter of a stream, or None for the stored event as is (``json``, ``avro``).
    ``read_columns(table)`` reads a table's column types (Debezium's schemas need them)."""
    if fmt == "cloudevents":
        return CloudEventsFormat(binary=False)
    if fmt == "cloudevents-binary":
        return CloudEventsFormat(binary=True, header_prefix="ce_" if destination == "kafka" else "ce-")
    if fmt == "debezium":
        return DebeziumFormat(
            ColumnCatalog(read_columns),
            schemas=_bool(options, "debezium_schemas", False),
            tombstones=_bool(options, "debezium_tombstones", False) and destination == "kafka",
            topic_prefix=str(options.get("debezium_topic_prefix") or database or "heliosdb"),
            record_key=destination == "kafka",
        )
    return None


def content_types(fmt: str) -> dict[str, Any]:
    """``WebhookSink`` keyword arguments: the Content-Type of one event and of a batch."""
    if fmt == "cloudevents":
        return {"content_type": CE_CONTENT_TYPE, "batch_content_type": CE_BATCH_CONTENT_TYPE}
    return {}


def check_stream_format(cfg: StreamConfig, default_batch_size: int, transformed: bool) -> None:
    """Refuse what a format cannot do with the rest of the stream's settings."""
    from .._errors import ConfigError

    if cfg.format in ("json", "avro"):
        return
    if transformed:
        raise ConfigError(
            f"stream {cfg.name!r} has format {cfg.format} and a transformation; a transformation "
            "shapes the default (json) event: drop one of them",
            stream=cfg.name,
        )
    dest = cfg.destination
    if dest.type == "webhook":
        try:
            batch = int(dest.options.get("batch_size", default_batch_size))
        except (TypeError, ValueError):
            return  # not a number: refused with its key path where the options are read
        problem = format_problem(cfg.format, dest.type, batch)
        if problem:
            raise ConfigError(f"stream {cfg.name!r}: {problem}", stream=cfg.name, key_path="format")
