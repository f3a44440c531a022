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
from ._registry import SinkContext, SinkFactory, build_sink, register_sink, sink_kinds, unregister_sink
from ._tls import create_mtls_client
from ._webhook import WebhookSink, sign
from ._webhook_security import validate_webhook_stream, webhook_security_kwargs

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
    "SinkContext",
    "SinkFactory",
    "SinkResult",
    "WebhookSink",
    "avro_schema_for",
    "build_sink",
    "create_mtls_client",
    "decode_confluent",
    "decode_single_object",
    "decode_with_schema",
    "register_sink",
    "sign",
    "sink_kinds",
    "unregister_sink",
    "validate_webhook_stream",
    "webhook_security_kwargs",
]
