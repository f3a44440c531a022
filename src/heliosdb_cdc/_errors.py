"""One exception tree; every error carries the context it happened in."""

from __future__ import annotations

from typing import Any


class CdcError(Exception):
    """Base of every error raised by heliosdb-cdc.

    Keyword context (stream, lsn, endpoint, attempt, key_path, ...) is kept in
    ``context`` and shown in ``str()`` so a log line always says where.
    """

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the context across processes (errors from the decode worker are pickled)
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        if not self.context:
            return self.message
        ctx = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({ctx})"


def _rebuild(cls: type[CdcError], message: str, context: dict[str, Any]) -> CdcError:
    return cls(message, **context)


class ConfigError(CdcError):
    """The configuration is invalid; ``key_path`` names the offending key, and
    ``problems`` lists every ``(key_path, message)`` when there are several."""

    problems: list[tuple[str, str]] = []


class SourceError(CdcError):
    """The PostgreSQL source cannot be read (connection, wal_level, slot...)."""


class SourceFatalError(SourceError):
    """The source refuses us for a reason retrying cannot fix (credentials, privileges,
    ``wal_level``, a lost replication slot); the message ends with the one-line fix.
    ``heliosdb-cdc run`` exits with status 2 on it."""


class DecodeError(SourceError):
    """A pgoutput message could not be decoded."""


class DeliveryError(CdcError):
    """An event could not be delivered to a destination."""


class SinkError(DeliveryError):
    """A destination (webhook, Kafka, Kinesis) failed; vendor errors are converted to this."""


class StateError(CdcError):
    """The local state (SQLite store, local log) cannot be read or written."""


class SqlError(CdcError):
    """A SQL command is invalid; ``position`` points at the problem when known."""


class StreamNotFound(SqlError):
    """The named stream does not exist."""


class StreamExists(SqlError):
    """A stream of that name already exists."""


class FilterError(CdcError):
    """A filter, predicate or transformation is invalid or failed."""


class InvalidName(ConfigError, ValueError):
    """A user-given name breaks the naming rule (docs/api.md, "Names"); the message
    says what is wrong. A :class:`ValueError` too, so model validation reports it."""


class LeadershipLost(StateError):
    """A capture leader found that another instance took over (its lease generation is
    no longer the current one, or Kafka fenced its producer): it publishes and confirms
    nothing more and steps down (docs/deployment.md, "Capture HA")."""
