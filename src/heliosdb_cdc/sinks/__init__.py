"""Destinations: one :class:`Sink` interface for webhook, Kafka, Kinesis and memory."""

from ._avro import (
    AvroEncoder,
    AvroSchema,
    AvroSchemaRegistry,
    ConfluentSchemaRegistry,
    avro_schema_for,
    decode_confluent,
    decode_single_object,
    decode_with_schema,
)
from ._base import DELIVERED, OutboundEvent, Outcome, Sink, SinkResult
from ._kafka import KafkaSink
from ._kinesis import KinesisSink
from ._memory import MemorySink
from ._webhook import WebhookSink, sign

__all__ = [
    "DELIVERED",
    "AvroEncoder",
    "AvroSchema",
    "AvroSchemaRegistry",
    "ConfluentSchemaRegistry",
    "KafkaSink",
    "KinesisSink",
    "MemorySink",
    "OutboundEvent",
    "Outcome",
    "Sink",
    "SinkResult",
    "WebhookSink",
    "avro_schema_for",
    "decode_confluent",
    "decode_single_object",
    "decode_with_schema",
    "sign",
]
