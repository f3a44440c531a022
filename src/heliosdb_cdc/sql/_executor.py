"""Run parsed statements against a :class:`StreamManager`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .._config import StreamConfig
from .._errors import CdcError, SqlError, StreamExists, StreamNotFound
from .._input import check_stream
from ._ast import AlterStream, CreateStream, DropStream, ShowStreams, ShowStreamStatus, Statement
from ._parser import parse_one, split_statements
from ._result import SqlResult

#: columns of ``SHOW CDC STREAMS`` when the manager has no row to take them from
STREAM_COLUMNS = [
    "name",
    "tables",
    "destination",
    "address",
    "format",
    "state",
    "delivered",
    "lag_bytes",
]
MAX_GENERATED = 1000


@runtime_checkable
class StreamManager(Protocol):
    """What the SQL layer needs from the service. Unknown names raise
    :class:`StreamNotFound`; other refusals raise :class:`SqlError`."""

    async def create_stream(self, cfg: StreamConfig) -> StreamConfig:
        """Create and start ``cfg``; :class:`StreamExists` if the name is taken (atomically),
        :class:`SqlError` if it cannot be created (e.g. a table does not exist)."""
        ...

    async def stream_names(self) -> list[str]: ...

    # optional: ``async def has_stream(self, name: str) -> bool`` (one lookup instead of
    # listing every name; the executor uses it when present)

    async def list_streams(self) -> list[dict[str, Any]]:
        """Rows of ``SHOW CDC STREAMS``: name, tables, destination, address, format,
        state, delivered, lag_bytes."""
        ...

    async def stream_status(self, name: str) -> dict[str, Any]:
        """``SHOW CDC STREAM STATUS``: property -> value."""
        ...

    async def pause(self, name: str) -> None: ...

    async def resume(self, name: str) -> None: ...

    async def drop(self, name: str, if_exists: bool = False) -> None: ...

    async def backfill(self, name: str, where: str | None) -> None: ...

    async def cancel_backfill(self, name: str) -> None: ...


def _not_found(name: str) -> StreamNotFound:
    return StreamNotFound(f"stream {name!r} does not exist; SHOW CDC STREAMS lists the streams", stream=name)


async def _exists(manager: StreamManager, name: str) -> bool:
    """One lookup when the manager has ``has_stream(name)`` (optional), else a scan of
    ``stream_names()``."""
    has = getattr(manager, "has_stream", None)
    if has is not None:
        return bool(await has(name))
    return name in await manager.stream_names()


async def _require(manager: StreamManager, name: str) -> None:
    if not await _exists(manager, name):
        raise _not_found(name)


async def _create(stmt: CreateStream, manager: StreamManager) -> SqlResult:
    if stmt.name is not None:
        cfg = check_stream(stmt.to_config())
        if await _exists(manager, cfg.name):
            raise StreamExists(f"stream {cfg.name!r} already exists", stream=cfg.name)
        created = await manager.create_stream(cfg)
    else:
        # a readable unique name: orders_kafka, orders_kafka_2, ...; a concurrent
        # CREATE may take the one picked, then the next free one is tried
        base = stmt.base_name()
        n = 1
        while True:
            taken = set(await manager.stream_names())
            while (base if n == 1 else f"{base}_{n}") in taken:
                n += 1
            if n > MAX_GENERATED:
                raise SqlError(f"too many streams named {base}_<n>; give one with AS 'name'")
            cfg = check_stream(stmt.to_config(base if n == 1 else f"{base}_{n}"))
            try:
                created = await manager.create_stream(cfg)
                break
            except StreamExists:
                n += 1
    dest = created.destination
    where = (
        dest.address
        + (f" topic {dest.topic}" if dest.topic else "")
        + (f" region {dest.region}" if dest.region else "")
    )
    warnings = (await manager.stream_status(created.name)).get("warnings")
    return SqlResult(
        message=f"stream {created.name} created: {', '.join(created.tables)} -> "
        f"{dest.type.upper()} {where}, format {created.format.upper()}"
        + (f" (WARNING: {warnings})" if warnings else "")
    )


async def _show_streams(manager: StreamManager) -> SqlResult:
    rows = await manager.list_streams()
    columns = list(rows[0]) if rows else list(STREAM_COLUMNS)
    for r in rows[1:]:
        columns += [k for k in r if k not in columns]
    return SqlResult(columns=columns, rows=[[r.get(c) for c in columns] for r in rows])


async def execute_statement(stmt: Statement, manager: StreamManager) -> SqlResult:
    """Run one parsed statement."""
    if isinstance(stmt, CreateStream):
        return await _create(stmt, manager)
    if isinstance(stmt, ShowStreams):
        return await _show_streams(manager)
    if isinstance(stmt, ShowStreamStatus):
        await _require(manager, stmt.name)
        status = await manager.stream_status(stmt.name)
        return SqlResult(columns=["property", "value"], rows=[[k, v] for k, v in status.items()])
    if isinstance(stmt, AlterStream):
        await _require(manager, stmt.name)
        if stmt.action == "pause":
            await manager.pause(stmt.name)
            return SqlResult(message=f"stream {stmt.name} paused")
        if stmt.action == "resume":
            await manager.resume(stmt.name)
            return SqlResult(message=f"stream {stmt.name} resumed")
        if stmt.action == "backfill":
            await manager.backfill(stmt.name, stmt.where)
            rows = f"rows where {stmt.where}" if stmt.where else "all rows"
            return SqlResult(message=f"backfill of stream {stmt.name} started ({rows})")
        await manager.cancel_backfill(stmt.name)
        return SqlResult(message=f"backfill of stream {stmt.name} cancelled")
    if isinstance(stmt, DropStream):
        if not await _exists(manager, stmt.name):
            if stmt.if_exists:
                return SqlResult(message=f"stream {stmt.name} does not exist, skipping")
            raise _not_found(stmt.name)
        await manager.drop(stmt.name, if_exists=stmt.if_exists)
        return SqlResult(message=f"stream {stmt.name} dropped")
    raise SqlError(f"unsupported statement {type(stmt).__name__}")  # pragma: no cover


def _progress(index: int, total: int) -> str:
    """'(statement 1 ran, statements 3-4 were not run)' for a failure of statement ``index``."""
    ran = (
        "nothing ran" if index == 1 else "statement 1 ran" if index == 2 else f"statements 1-{index - 1} ran"
    )
    if index == total:
        return f"({ran})"
    rest = f"statement {total}" if index + 1 == total else f"statements {index + 1}-{total}"
    return f"({ran}, {rest} {'was' if index + 1 == total else 'were'} not run)"


async def execute(text: str, manager: StreamManager) -> list[SqlResult]:
    """Parse and run the statements of ``text`` in order, one result each.

    Each statement is parsed just before it runs; at the first error this raises
    :class:`SqlError` (or its subclass :class:`StreamNotFound` / :class:`StreamExists`)
    with ``statement`` = its 1-based number in context. Statements before it have run;
    with several statements the message says which failed and what ran.
    """
    spans = split_statements(text)
    if not spans:
        raise SqlError("empty statement")
    results: list[SqlResult] = []
    for i, (start, end) in enumerate(spans, 1):
        try:
            stmt = parse_one(text, start, end)
            results.append(await execute_statement(stmt, manager))
        except CdcError as exc:
            message = exc.message
            if len(spans) > 1:
                message = f"statement {i} of {len(spans)} failed: {message} {_progress(i, len(spans))}"
            cls = type(exc) if isinstance(exc, SqlError) else SqlError
            raise cls(message, **{**exc.context, "statement": i}) from exc
    return results
