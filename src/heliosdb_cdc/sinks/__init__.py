"""Destinations: one :class:`Sink` interface for webhook, Kafka, Kinesis and memory."""

from ._base import DELIVERED, OutboundEvent, Outcome, Sink, SinkResult
from ._memory import MemorySink

__all__ = ["DELIVERED", "MemorySink", "OutboundEvent", "Outcome", "Sink", "SinkResult"]
