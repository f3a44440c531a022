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
PG_NAME_BYTES = 63


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
    for table in cfg.tables:
        problem = pattern_problem(table)
        if problem is not None:
            raise ConfigError(f"tables: {problem}", stream=cfg.name, table=table)
    if json_depth(dest.options, MAX_OPTION_DEPTH) > MAX_OPTION_DEPTH:
        raise ConfigError(
            f"destination.options: nested more than {MAX_OPTION_DEPTH} levels deep", stream=cfg.name
        )
    return cfg


def is_pattern(table: str) -> bool:
    return "*" in table or "?" in table


def pattern_problem(table: str) -> str | None:
    """Why the table pattern ``table`` can never match a table, or ``None``.

    PostgreSQL names are at most 63 bytes, and schemas named ``pg_...`` are the
    system's (never captured)."""
    if not is_pattern(table):
        return None
    schema, _, name = table.rpartition(".")
    for part in (schema, name):
        fixed = part.replace("*", "").replace("?", "")
        if len(fixed.encode()) + part.count("?") > PG_NAME_BYTES:
            limit = PG_NAME_BYTES
            return f"the pattern {table!r} can never match: PostgreSQL names are at most {limit} bytes"
    if schema.startswith("pg_"):
        return f"the pattern {table!r} can never match: schemas pg_* are PostgreSQL's own"
    return None


def pattern_warnings(tables: list[str], resolved: dict[str, list[str]]) -> list[str]:
    """A warning for each pattern of ``tables`` that ``resolved`` (pattern -> tables it
    matches now) says matches no table."""
    return [
        f"table pattern {t!r} matches no table now; a matching table created later is "
        "captured from the next restart"
        for t in tables
        if is_pattern(t) and resolved.get(t) == []
    ]
