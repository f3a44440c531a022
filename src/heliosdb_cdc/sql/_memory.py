"""An in-memory :class:`StreamManager`: the catalog only, nothing is captured or sent.

For tests and for trying the SQL dialect without PostgreSQL; the service provides
the real manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .._config import StreamConfig
from .._errors import SqlError, StreamExists, StreamNotFound
from .._input import check_stream


class MemoryStreamManager:
    """Streams in a dict. ``known_tables`` (``table`` or ``schema.table``), when given,
    is the set of tables that exist; creating a stream on another one fails like the
    service does. Every change happens under one :class:`asyncio.Lock`, so of several
    concurrent CREATEs of one name exactly one wins."""

    def __init__(self, known_tables: Iterable[str] | None = None) -> None:
        self.streams: dict[str, StreamConfig] = {}
        self.states: dict[str, str] = {}
        self.backfills: dict[str, str | None] = {}
        self.delivered: dict[str, int] = {}
        self.known_tables = None if known_tables is None else {_norm(t) for t in known_tables}
        self._lock = asyncio.Lock()

    def _get(self, name: str) -> StreamConfig:
        try:
            return self.streams[name]
        except KeyError:
            raise StreamNotFound(f"stream {name!r} does not exist", stream=name) from None

    async def create_stream(self, cfg: StreamConfig) -> StreamConfig:
        check_stream(cfg)
        async with self._lock:
            if cfg.name in self.streams:
                raise StreamExists(f"stream {cfg.name!r} already exists", stream=cfg.name)
            if self.known_tables is not None:
                for t in cfg.tables:
                    if "*" not in t and _norm(t) not in self.known_tables:
                        raise SqlError(
                            f"table {t!r} does not exist in the source database",
                            stream=cfg.name,
                            table=t,
                        )
            await asyncio.sleep(0)  # let concurrent callers interleave here
            self.streams[cfg.name] = cfg
            self.states[cfg.name] = "running"
            self.delivered[cfg.name] = 0
            if cfg.snapshot == "initial":
                self.backfills[cfg.name] = None
            return cfg

    async def stream_names(self) -> list[str]:
        return list(self.streams)

    async def has_stream(self, name: str) -> bool:
        return name in self.streams

    async def list_streams(self) -> list[dict[str, Any]]:
        rows = []
        for name, cfg in self.streams.items():
            d = cfg.destination
            rows.append(
                {
                    "name": name,
                    "tables": ",".join(cfg.tables),
                    "destination": d.type,
                    "address": d.address
                    + (f" topic={d.topic}" if d.topic else "")
                    + (f" region={d.region}" if d.region else ""),
                    "format": cfg.format.upper(),
                    "state": self.states[name],
                    "delivered": self.delivered[name],
                    "lag_bytes": 0,
                }
            )
        return rows

    async def stream_status(self, name: str) -> dict[str, Any]:
        cfg = self._get(name)
        d = cfg.destination
        return {
            "name": name,
            "state": self.states[name],
            "tables": ",".join(cfg.tables),
            "destination": f"{d.type} {d.address}",
            "topic": d.topic,
            "region": d.region,
            "format": cfg.format.upper(),
            "operations": ",".join(op.value for op in cfg.operations) or "all",
            "filters": "; ".join(f.predicate or "" for f in cfg.filters) or None,
            "backfill": "running" if name in self.backfills else "none",
            "delivered": self.delivered[name],
            "lag_bytes": 0,
        }

    async def pause(self, name: str) -> None:
        async with self._lock:
            self._get(name)
            self.states[name] = "paused"

    async def resume(self, name: str) -> None:
        async with self._lock:
            self._get(name)
            self.states[name] = "running"

    async def drop(self, name: str, if_exists: bool = False) -> None:
        async with self._lock:
            if name not in self.streams:
                if if_exists:
                    return
                self._get(name)
            for d in (self.streams, self.states, self.delivered, self.backfills):
                d.pop(name, None)

    async def backfill(self, name: str, where: str | None) -> None:
        async with self._lock:
            self._get(name)
            if self.states[name] != "running":
                raise SqlError(f"stream {name!r} is not running", stream=name)
            if name in self.backfills:
                raise SqlError(
                    f"stream {name!r} already has a backfill in progress; "
                    f"ALTER CDC STREAM {name} CANCEL BACKFILL first",
                    stream=name,
                )
            self.backfills[name] = where

    async def cancel_backfill(self, name: str) -> None:
        async with self._lock:
            self._get(name)
            if name not in self.backfills:
                raise SqlError(f"stream {name!r} has no backfill in progress", stream=name)
            del self.backfills[name]


def _norm(table: str) -> str:
    return table if "." in table else f"public.{table}"
