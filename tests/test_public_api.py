"""The package's public names: what the guide uses is exported and consistent."""

from __future__ import annotations

import enum

import pytest

import heliosdb_cdc

GUIDE_NAMES = [
    "WebhookServer",
    "WebhookRegistration",
    "WebhookConfig",
    "RetryConfig",
    "CircuitBreakerConfig",
    "ExactlyOnceConfig",
    "CdcConfig",
    "CdcEvent",
    "OperationType",
    "CircuitState",
    "CircuitBreaker",
    "EventFilter",
    "create_mtls_client",
    "verify_signature",
]


def test_all_names_exist() -> None:
    missing = [n for n in heliosdb_cdc.__all__ if not hasattr(heliosdb_cdc, n)]
    assert missing == []


def test_all_is_sorted_and_unique() -> None:
    assert heliosdb_cdc.__all__ == sorted(heliosdb_cdc.__all__)
    assert len(set(heliosdb_cdc.__all__)) == len(heliosdb_cdc.__all__)


@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_guide_names_are_exported(name: str) -> None:
    assert name in heliosdb_cdc.__all__
    assert getattr(heliosdb_cdc, name) is not None


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from heliosdb_cdc import *", ns)
    assert {k for k in ns if k != "__builtins__"} == set(heliosdb_cdc.__all__)


def test_operation_type_rust_aliases() -> None:
    op = heliosdb_cdc.OperationType
    assert op.Insert is op.INSERT
    assert op.Update is op.UPDATE
    assert op.Delete is op.DELETE
    assert op.Truncate is op.TRUNCATE
    assert op.SchemaChange is op.SCHEMA_CHANGE
    assert op.INSERT.value == "INSERT"
    assert op.SCHEMA_CHANGE.value == "SCHEMA_CHANGE"
    assert op.parse("schema change") is op.SchemaChange
    with pytest.raises(ValueError, match="unknown operation"):
        op.parse("upsert")


def test_circuit_state_is_an_enum() -> None:
    cs = heliosdb_cdc.CircuitState
    assert issubclass(cs, enum.Enum)
    assert len(list(cs)) >= 3


def test_error_hierarchy() -> None:
    h = heliosdb_cdc
    for err in (h.ConfigError, h.SourceError, h.DeliveryError, h.StateError, h.SqlError, h.FilterError):
        assert issubclass(err, h.CdcError)
    assert issubclass(h.DecodeError, h.SourceError)
    assert issubclass(h.SinkError, h.DeliveryError)
    assert issubclass(h.StreamNotFound, h.SqlError)
    assert issubclass(h.StreamExists, h.SqlError)
    e = h.ConfigError("bad", key_path="webhook.retry.max_attempts")
    assert str(e) == "bad (key_path=webhook.retry.max_attempts)"


def test_config_classes_have_guide_defaults() -> None:
    h = heliosdb_cdc
    assert h.RetryConfig().max_attempts == 3
    assert h.CircuitBreakerConfig().failure_threshold == 5
    assert h.ExactlyOnceConfig().enabled is True
    assert h.CdcConfig().batch_size == 1000
    assert h.WebhookConfig().retry == h.RetryConfig()
    reg = h.WebhookRegistration(url="https://example.com/hook", secret="s")
    assert reg.secret.get_secret_value() == "s"


def test_version() -> None:
    assert isinstance(heliosdb_cdc.__version__, str)
    assert heliosdb_cdc.__version__.count(".") >= 2
