"""The names of the event formats (``format:``), shared by configuration and SQL.

The formats themselves are in pipeline/_formats.py (docs/configuration.md, "format").
"""

from __future__ import annotations

from typing import Any, Literal

FormatName = Literal["json", "avro", "debezium", "cloudevents", "cloudevents-binary"]
DEFAULT = "json"
FORMATS = ("json", "avro", "debezium", "cloudevents", "cloudevents-binary")
_ALIASES = {
    "heliosdb": "json",
    "cloudevents binary": "cloudevents-binary",
    "cloudevents_binary": "cloudevents-binary",
    "cloudevents-structured": "cloudevents",
}


def normalize_format(value: Any) -> Any:
    """Lower case and aliases folded (``heliosdb`` -> ``json``); other values pass to validation."""
    if not isinstance(value, str):
        return value
    v = " ".join(value.strip().lower().split())
    return _ALIASES.get(v, v)


def format_problem(fmt: str, destination: str, batch_size: int = 1) -> str | None:
    """Why ``fmt`` cannot serve this destination type, or None."""
    if fmt == "avro" and destination == "webhook":
        return "FORMAT AVRO is for Kafka and Kinesis; webhooks receive JSON"
    if fmt == "cloudevents-binary" and destination == "kinesis":
        return "FORMAT CLOUDEVENTS BINARY needs headers, which Kinesis records do not have; use CLOUDEVENTS"
    if fmt == "cloudevents-binary" and destination == "webhook" and batch_size > 1:
        return "FORMAT CLOUDEVENTS BINARY sends one event per request; set batch_size to 1 or use CLOUDEVENTS"
    return None
