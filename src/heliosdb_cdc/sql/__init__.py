"""The CDC SQL dialect of the user guide: parse, execute, and the terminal client.

    >>> from heliosdb_cdc.sql import parse
    >>> parse("ALTER CDC STREAM users_stream PAUSE;")
    [AlterStream(name='users_stream', action='pause', where=None)]

:func:`execute` runs statements against a :class:`StreamManager` (the service
provides one; :class:`MemoryStreamManager` keeps a catalog in memory);
:func:`run_remote`, :func:`render_table` and :func:`repl` make up ``heliosdb-cdc sql``.
"""

from ._ast import (
    AlterAction,
    AlterStream,
    CreateStream,
    DestinationType,
    DropStream,
    ShowStreams,
    ShowStreamStatus,
    Statement,
)
from ._client import HISTORY_FILE, RemoteSqlError, render_table, repl, run_remote
from ._executor import STREAM_COLUMNS, StreamManager, execute, execute_statement
from ._memory import MemoryStreamManager
from ._parser import grammar_parser, is_complete, parse, parse_one, split_statements
from ._result import SqlResult, result_to_dict, results_from_json, results_to_json

__all__ = [
    "HISTORY_FILE",
    "STREAM_COLUMNS",
    "AlterAction",
    "AlterStream",
    "CreateStream",
    "DestinationType",
    "DropStream",
    "MemoryStreamManager",
    "RemoteSqlError",
    "ShowStreamStatus",
    "ShowStreams",
    "SqlResult",
    "Statement",
    "StreamManager",
    "execute",
    "execute_statement",
    "grammar_parser",
    "is_complete",
    "parse",
    "parse_one",
    "render_table",
    "repl",
    "result_to_dict",
    "results_from_json",
    "results_to_json",
    "run_remote",
    "split_statements",
]
