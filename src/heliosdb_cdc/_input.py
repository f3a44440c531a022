"""Checks of a stream definition that every way in (SQL, REST, YAML, the Python API)
shares, before anything is stored: the name (:func:`check_name`), a destination
address that is not empty, and options that can be stored (JSON, bounded nesting)."""

from __future__ import annotations

from typing import Any

from ._config import StreamConfig
from ._errors import ConfigError
from ._names import check_name

#: deepest nesting of a destination's options (a dict or list inside another counts one)
MAX_OPTION_DEPTH = 32


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON-like value, counted up to ``limit + 1`` (no recursion)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            todo.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_stream(cfg: StreamConfig) -> StreamConfig:
    """``cfg`` if it can be created; else :class:`ConfigError` (:class:`InvalidName` for
    the name) saying what is wrong."""
    check_name(cfg.name)
    dest = cfg.destination
    if dest.type in ("kafka", "kinesis") and not dest.address.strip():
        what = "broker list host:port" if dest.type == "kafka" else "stream name"
        raise ConfigError(f"destination.address: a {dest.type} destination needs its {what}", stream=cfg.name)
    if json_depth(dest.options, MAX_OPTION_DEPTH) > MAX_OPTION_DEPTH:
        raise ConfigError(
            f"destination.options: nested more than {MAX_OPTION_DEPTH} levels deep", stream=cfg.name
        )
    return cfg
