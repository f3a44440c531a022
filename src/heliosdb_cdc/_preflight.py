"""Checks of a loaded configuration that need files but no network.

``heliosdb-cdc check-config`` and ``heliosdb-cdc run`` both call :func:`preflight`
after the file validates, so whatever ``run`` would refuse without talking to
PostgreSQL or a destination is refused by ``check-config`` too, with the same
message and key path:

* the admin API's exposure (a token when ``bind_address`` is not loopback) and
  ``security.tls``: certificate, key and client CA files are read and must load;
* ``security.outbound_ca_path`` and each webhook's TLS options (``ca_path``,
  ``client_cert_path``, ``client_key_path``) load, its ``signature_scheme`` is
  known and its secrets fit the scheme;
* destination options that must be numbers are numbers in range;
* every filter's predicate parses and every transformation compiles;
* ``state_dir`` (and ``cdc.wal_path``) can be a directory.

Secret files (``file:/path``) are read when the configuration is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._config import Config, FilterConfig, StreamConfig
from ._errors import CdcError, ConfigError

# destination options read as numbers by the sinks: (smallest, largest)
_NUMERIC_OPTIONS: dict[str, dict[str, tuple[float, float]]] = {
    "webhook": {"batch_size": (1, 10_000)},
    "kafka": {
        "partitions": (1, 100_000),
        "replication_factor": (1, 1000),
        "max_batch": (1, 1_000_000),
        "timeout_s": (0.001, 3600),
    },
    "kinesis": {"max_batch": (1, 500), "max_attempts": (1, 1000), "timeout_s": (0.001, 3600)},
}


def _check(key_path: str, fn: Callable[[], Any]) -> None:
    """Run ``fn``; any error becomes a ConfigError at ``key_path``."""
    try:
        fn()
    except ConfigError as exc:
        ctx = {k: v for k, v in exc.context.items() if k != "key_path"}
        inner = exc.context.get("key_path")
        where = key_path if not inner or str(inner).startswith(key_path) else f"{key_path}.{inner}"
        raise ConfigError(exc.message, key_path=where, **ctx) from None
    except CdcError as exc:
        raise ConfigError(str(exc), key_path=key_path) from None
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(str(exc), key_path=key_path) from None


def _numeric_options(stream: StreamConfig, key_path: str) -> None:
    for name, (low, high) in _NUMERIC_OPTIONS.get(stream.destination.type, {}).items():
        if name not in stream.destination.options:
            continue
        value = stream.destination.options[name]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not (low <= number <= high):
            raise ConfigError(
                f"must be a number from {_num(low)} to {_num(high)}, not {value!r}",
                key_path=f"{key_path}.destination.options.{name}",
            )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _directory(path: str, key_path: str) -> None:
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{path!r} exists and is not a directory", key_path=key_path)
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"the directory {path!r} is not writable", key_path=key_path)
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create {path!r}: {str(parent)!r} is not writable", key_path=key_path)


def _filter(f: FilterConfig, key_path: str) -> None:
    from .pipeline import compile_filter

    _check(key_path, lambda: compile_filter(f))


def declared_streams(config: Config) -> list[tuple[str, StreamConfig]]:
    """Every stream the file declares, with its key path (webhooks become streams)."""
    from ._catalog import registration_stream

    out = [(f"streams[{i}]", s) for i, s in enumerate(config.streams)]
    out += [(f"webhooks[{i}]", registration_stream(r)) for i, r in enumerate(config.webhooks)]
    return out


def preflight(config: Config, *, serve_http: bool = True) -> None:
    """Refuse what ``run`` would refuse before it reaches the network (ConfigError)."""
    from .server import check_http_security
    from .sinks import webhook_security_kwargs

    _directory(config.state_dir, "state_dir")
    if config.cdc.wal_path:
        _directory(config.cdc.wal_path, "cdc.wal_path")
    if serve_http:
        check_http_security(config)  # tokens off loopback; security.tls files load
    for i, f in enumerate(config.filters):
        _filter(f, f"filters[{i}]")
    for i, t in enumerate(config.transformations):
        from .pipeline import compile_transformation

        _check(f"transformations[{i}]", lambda t=t: compile_transformation(t))  # type: ignore[misc]
    for key_path, stream in declared_streams(config):
        _numeric_options(stream, key_path)
        for j, f in enumerate(stream.filters):
            _filter(f, f"{key_path}.filters[{j}]")
        if stream.destination.type == "webhook":
            _check(key_path, lambda s=stream: webhook_security_kwargs(s, config))  # type: ignore[misc]
