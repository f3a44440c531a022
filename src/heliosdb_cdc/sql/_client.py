"""The ``heliosdb-cdc sql`` client: send statements to ``POST /sql``, print tables,
and an interactive prompt."""

from __future__ import annotations

import contextlib
import os
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from .._errors import CdcError, SqlError
from ._parser import is_complete
from ._result import SqlResult, results_from_json

HISTORY_FILE = "~/.heliosdb_cdc_history"
PROMPT = "heliosdb-cdc=> "
PROMPT_MORE = "heliosdb-cdc-> "
HELP = """\
Statements end with ';' and may span several lines:
  CREATE CHANGE DATA CAPTURE ON table TO KAFKA|KINESIS|WEBHOOK 'address' ... [AS 'name'];
  SHOW CDC STREAMS;
  SHOW CDC STREAM STATUS name;
  ALTER CDC STREAM name PAUSE | RESUME | BACKFILL [WHERE 'predicate'] | CANCEL BACKFILL;
  DROP CHANGE DATA CAPTURE [IF EXISTS] name;
\\q quits, \\r clears the statement being typed, \\? shows this help."""


# -- rendering ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return str(value).replace("\r\n", "\\n").replace("\n", "\\n").replace("\t", " ")


def _width(s: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s
    )


def _pad(s: str, width: int, align: str) -> str:
    gap = width - _width(s)
    if align == "right":
        return " " * gap + s
    if align == "center":
        return " " * (gap // 2) + s + " " * (gap - gap // 2)
    return s + " " * gap


def render_table(result: SqlResult) -> str:
    """psql-like text: an aligned table and ``(N rows)``, or the result's message.

    Numbers are right-aligned, NULL is empty, headers are centred::

         name     | tables | state
        ----------+--------+---------
         orders_k | orders | running
        (1 row)
    """
    if not result.columns:
        return result.message
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [
        max([_width(c)] + [_width(r[i]) for r in cells if i < len(r)]) for i, c in enumerate(result.columns)
    ]
    numeric = [
        bool(result.rows)
        and all(
            isinstance(r[i], int | float) and not isinstance(r[i], bool)
            for r in result.rows
            if i < len(r) and r[i] is not None
        )
        and any(i < len(r) and r[i] is not None for r in result.rows)
        for i in range(len(result.columns))
    ]
    lines = [
        " " + " | ".join(_pad(c, w, "center") for c, w in zip(result.columns, widths, strict=True)),
        "-" + "-+-".join("-" * w for w in widths) + "-",
    ]
    for row in cells:
        row = row + [""] * (len(widths) - len(row))
        lines.append(
            " "
            + " | ".join(
                _pad(v, w, "right" if num else "left")
                for v, w, num in zip(row, widths, numeric, strict=False)
            )
        )
    n = len(result.rows)
    lines.append(f"({n} row{'' if n == 1 else 's'})")
    return "\n".join(line.rstrip() for line in lines)


# -- remote execution ---------------------------------------------------------------------


class RemoteSqlError(SqlError):
    """A statement the server refused. The server's message is complete (it says where
    and which statement), so ``str()`` is the message alone; ``context`` keeps
    ``position``, ``line``, ``column``, ``statement``... as the server sent them."""

    def __str__(self) -> str:
        return self.message


async def run_remote(
    server_url: str, text: str, token: str | None = None, *, timeout: float = 120.0
) -> list[SqlResult]:
    """POST ``text`` to ``{server_url}/sql`` and return the results.

    A refused statement (HTTP 400 ``{"error": ..., "position": ..., ...}``) raises
    :class:`RemoteSqlError` (a :class:`SqlError`) with the server's message and context;
    other failures (unreachable, HTTP 401/403/5xx, a reply that is not JSON) raise
    :class:`CdcError`.
    """
    import aiohttp

    url = server_url.rstrip("/") + "/sql"
    headers = {"Content-Type": "text/plain; charset=utf-8", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, data=text.encode("utf-8"), headers=headers) as resp,
        ):
            status = resp.status
            body = await resp.read()
    except aiohttp.ClientConnectionError as exc:
        raise CdcError(f"cannot reach the service at {server_url}: {exc}") from None
    except TimeoutError:
        raise CdcError(f"the service at {server_url} did not answer within {timeout:g} s") from None
    if status == 200:
        return results_from_json(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "error" in data:
        context = {k: v for k, v in data.items() if k not in ("error", "message")}
        if status == 400:
            raise RemoteSqlError(str(data["error"]), **context)
        hint = " (pass --token or set HELIOSDB_CDC_TOKEN)" if status in (401, 403) else ""
        raise CdcError(f"{data['error']}{hint}", status=status)
    snippet = body[:200].decode("utf-8", "replace").strip()
    raise CdcError(f"HTTP {status} from {url}: {snippet or 'no body'}", status=status)


# -- interactive prompt -------------------------------------------------------------------


def _setup_readline(history: Path) -> Any:
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return None
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(1000)
    return readline


async def repl(
    server_url: str,
    token: str | None = None,
    *,
    input_fn: Callable[[str], str] = input,
    output: Callable[[str], None] = print,
    history_file: str | os.PathLike[str] | None = None,
    runner: Callable[[str, str, str | None], Awaitable[list[SqlResult]]] | None = None,
) -> None:
    """An interactive prompt: statements may span lines and run at ``;``; ``\\q`` or
    Ctrl-D quits, Ctrl-C clears the statement being typed. History (with the stdlib
    ``readline``) is kept in ``~/.heliosdb_cdc_history``; a statement typed on several
    lines is recalled as one line."""
    run = runner or run_remote
    history = Path(history_file or HISTORY_FILE).expanduser()
    rl = _setup_readline(history) if input_fn is input else None
    output(f"heliosdb-cdc sql on {server_url}; end statements with ';', \\? for help, \\q quits")
    buf: list[str] = []
    try:
        while True:
            try:
                line = input_fn(PROMPT_MORE if buf else PROMPT)
            except EOFError:
                output("")
                return
            except KeyboardInterrupt:
                output("")
                buf = []
                continue
            cmd = line.strip()
            if cmd in ("\\q", "quit", "exit") and (cmd == "\\q" or not buf):
                return
            if cmd in ("\\?", "help") and (cmd == "\\?" or not buf):
                output(HELP)
                continue
            if cmd == "\\r":
                buf = []
                output("statement cleared")
                continue
            if not cmd and not buf:
                continue
            buf.append(line)
            text = "\n".join(buf)
            if not is_complete(text):
                continue
            if rl is not None and len(buf) > 1:
                n = rl.get_current_history_length()
                for i in range(min(len(buf), n)):
                    rl.remove_history_item(n - 1 - i)
                rl.add_history(" ".join(part.strip() for part in buf))
            buf = []
            try:
                results = await run(server_url, text, token)
            except SqlError as exc:
                output(f"ERROR: {exc.message}")
                continue
            except CdcError as exc:
                output(f"ERROR: {exc}")
                continue
            for r in results:
                output(render_table(r))
    finally:
        if rl is not None:
            with contextlib.suppress(OSError):
                history.parent.mkdir(parents=True, exist_ok=True)
                rl.write_history_file(history)


__all__ = ["HISTORY_FILE", "RemoteSqlError", "render_table", "repl", "run_remote"]
