"""The SQL executor against MemoryStreamManager, results, rendering and the client."""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from heliosdb_cdc._errors import CdcError, SqlError, StreamExists, StreamNotFound
from heliosdb_cdc.server._app import ServiceStreamManager
from heliosdb_cdc.sql import (
    STREAM_COLUMNS,
    MemoryStreamManager,
    RemoteSqlError,
    SqlResult,
    StreamManager,
    execute,
    render_table,
    repl,
    result_to_dict,
    results_from_json,
    results_to_json,
    run_remote,
)

from .test_sql_parser import GUIDE_KAFKA, GUIDE_KINESIS, GUIDE_MANAGING, GUIDE_QUICK_START


def catalog(m: MemoryStreamManager) -> dict[str, Any]:
    return copy.deepcopy({"streams": m.streams, "states": m.states, "backfills": m.backfills})


@pytest.fixture
def manager() -> MemoryStreamManager:
    return MemoryStreamManager()


def _protocol_methods() -> list[str]:
    return sorted(name for name, value in vars(StreamManager).items() if inspect.iscoroutinefunction(value))


@pytest.mark.parametrize("impl", [MemoryStreamManager, ServiceStreamManager])
def test_managers_implement_the_protocol_signatures(impl: type) -> None:
    """Each StreamManager is called by the executor with the protocol's parameters: every
    method exists, is a coroutine function, and takes the same parameters (names, kinds,
    defaults) as the protocol; ``isinstance`` alone only checks that the names exist."""
    methods = _protocol_methods()
    assert len(methods) == 9, methods  # the protocol itself was read
    for name in methods:
        method = getattr(impl, name, None)
        assert method is not None, f"{impl.__name__} has no {name}"
        assert inspect.iscoroutinefunction(method), f"{impl.__name__}.{name} is not async"
        want = [
            (p.name, p.kind, p.default)
            for p in inspect.signature(getattr(StreamManager, name)).parameters.values()
        ]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]
        assert got == want, f"{impl.__name__}.{name}{inspect.signature(method)}"


# -- the guide, end to end ------------------------------------------------------------------


async def test_guide_statements_run_in_order(manager: MemoryStreamManager) -> None:
    created, shown = await execute(GUIDE_QUICK_START, manager)
    assert created.message == (
        "stream orders_kafka created: orders -> KAFKA localhost:9092 topic orders-events, format JSON"
    )
    assert created.columns == [] and created.rows == []
    assert shown.columns == STREAM_COLUMNS
    assert shown.rows == [
        [
            "orders_kafka",
            "orders",
            "kafka",
            "localhost:9092 topic=orders-events",
            "JSON",
            "running",
            0,
            0,
        ]
    ]

    (users,) = await execute(GUIDE_KAFKA, manager)
    assert users.message.startswith("stream users_stream created: users -> KAFKA")
    (tx,) = await execute(GUIDE_KINESIS, manager)
    assert tx.message == (
        "stream transactions_kinesis created: transactions -> KINESIS transactions-stream "
        "region us-east-1, format AVRO"
    )
    assert manager.streams["transactions_kinesis"].format == "avro"

    results = await execute(GUIDE_MANAGING, manager)
    assert [r.message for r in results] == [
        "",
        "",
        "stream users_stream paused",
        "stream users_stream resumed",
        "stream users_stream dropped",
    ]
    listing, status = results[0], results[1]
    assert [row[0] for row in listing.rows] == [
        "orders_kafka",
        "users_stream",
        "transactions_kinesis",
    ]
    assert status.columns == ["property", "value"]
    props = dict((k, v) for k, v in status.rows)
    assert props["name"] == "users_stream"
    assert props["state"] == "running"
    assert props["topic"] == "user-events"
    assert list(manager.streams) == ["orders_kafka", "transactions_kinesis"]


async def test_pause_resume_changes_state(manager: MemoryStreamManager) -> None:
    await execute(GUIDE_KAFKA, manager)
    await execute("ALTER CDC STREAM users_stream PAUSE", manager)
    assert manager.states["users_stream"] == "paused"
    (r,) = await execute("SHOW CDC STREAMS", manager)
    assert r.rows[0][r.columns.index("state")] == "paused"
    await execute("alter cdc stream USERS_STREAM resume", manager)
    assert manager.states["users_stream"] == "running"


async def test_generated_names_are_readable_and_unique(manager: MemoryStreamManager) -> None:
    stmt = "CREATE CHANGE DATA CAPTURE ON public.orders TO KAFKA 'k:9092' TOPIC 't'"
    results = await execute(f"{stmt}; {stmt}; {stmt} AS orders_kafka_4; {stmt}", manager)
    assert [r.message.split()[1] for r in results] == [
        "orders_kafka",
        "orders_kafka_2",
        "orders_kafka_4",
        "orders_kafka_3",
    ]
    await execute(
        "CREATE CHANGE DATA CAPTURE ON \"My Table\" TO WEBHOOK 'http://h/x';"
        "CREATE CHANGE DATA CAPTURE ON s.* TO KINESIS 'k' REGION 'r'",
        manager,
    )
    assert {"my_table_webhook", "all_kinesis"} <= set(manager.streams)


async def test_create_maps_options_into_the_config(manager: MemoryStreamManager) -> None:
    await execute(
        "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'https://api.example.com/h' "
        "SECRET 'whsec' OPERATIONS (INSERT) WHERE 'total > 1000' SNAPSHOT INITIAL AS hooks",
        manager,
    )
    cfg = manager.streams["hooks"]
    assert cfg.secret is not None and cfg.secret.get_secret_value() == "whsec"
    assert [f.predicate for f in cfg.filters] == ["total > 1000"]
    assert cfg.snapshot == "initial"


async def test_backfill_and_cancel(manager: MemoryStreamManager) -> None:
    await execute(GUIDE_KAFKA, manager)
    (r,) = await execute("ALTER CDC STREAM users_stream BACKFILL WHERE 'id > 10'", manager)
    assert r.message == "backfill of stream users_stream started (rows where id > 10)"
    assert manager.backfills == {"users_stream": "id > 10"}
    with pytest.raises(SqlError, match="already has a backfill in progress"):
        await execute("ALTER CDC STREAM users_stream BACKFILL", manager)
    (r,) = await execute("ALTER CDC STREAM users_stream CANCEL BACKFILL", manager)
    assert r.message == "backfill of stream users_stream cancelled"
    with pytest.raises(SqlError, match="has no backfill in progress"):
        await execute("ALTER CDC STREAM users_stream CANCEL BACKFILL", manager)
    (r,) = await execute("ALTER CDC STREAM users_stream BACKFILL", manager)
    assert r.message == "backfill of stream users_stream started (all rows)"


async def test_drop_if_exists(manager: MemoryStreamManager) -> None:
    (r,) = await execute("DROP CHANGE DATA CAPTURE IF EXISTS nope", manager)
    assert r.message == "stream nope does not exist, skipping"
    await execute(GUIDE_KAFKA, manager)
    (r,) = await execute("DROP CHANGE DATA CAPTURE IF EXISTS users_stream", manager)
    assert r.message == "stream users_stream dropped"
    assert manager.streams == {}


async def test_show_streams_when_empty(manager: MemoryStreamManager) -> None:
    (r,) = await execute("SHOW CDC STREAMS", manager)
    assert (r.columns, r.rows) == (STREAM_COLUMNS, [])


# -- errors leave the catalog unchanged -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPC 'x'",
            SqlError,
            "expected TOPIC, FORMAT, SECRET, SNAPSHOT, OPERATIONS, WHERE, AS, ';' or end of input "
            "after the Kafka address at line 1, column 53, found 'TOPC'",
        ),
        ("  -- nothing\n;", SqlError, "empty statement"),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO REDIS 'r:6379'",
            SqlError,
            "unknown destination type REDIS at line 1, column 41: expected KAFKA, KINESIS or WEBHOOK",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON t TO KINESIS 's' FORMAT AVRO",
            SqlError,
            "expected REGION after the Kinesis stream name at line 1, column 48: "
            "a Kinesis stream needs REGION 'aws-region'",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON t TO KAFKA 'k:1' FORMAT JSON",
            SqlError,
            "expected TOPIC after the Kafka address at line 1, column 48: "
            "a Kafka stream needs TOPIC 'topic-name'",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON t TO WEBHOOK 'https://h/' FORMAT AVRO",
            SqlError,
            "FORMAT AVRO is for Kafka and Kinesis; webhooks receive JSON at line 1, column 57",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON t TO WEBHOOK 'https://h/' SECRET 'a' SECRET 'b'",
            SqlError,
            "duplicate option SECRET at line 1, column 68 (already given at line 1, column 57); "
            "give each option at most once",
        ),
        (
            "ALTER CDC STREAM nope PAUSE",
            StreamNotFound,
            "stream 'nope' does not exist; SHOW CDC STREAMS lists the streams",
        ),
        (
            "ALTER CDC STREAM nope BACKFILL",
            StreamNotFound,
            "stream 'nope' does not exist; SHOW CDC STREAMS lists the streams",
        ),
        (
            "DROP CHANGE DATA CAPTURE nope",
            StreamNotFound,
            "stream 'nope' does not exist; SHOW CDC STREAMS lists the streams",
        ),
        (
            "SHOW CDC STREAM STATUS nope",
            StreamNotFound,
            "stream 'nope' does not exist; SHOW CDC STREAMS lists the streams",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 't' AS 'users_stream'",
            StreamExists,
            "stream 'users_stream' already exists",
        ),
        (
            "CREATE CHANGE DATA CAPTURE ON missing TO KAFKA 'k:1' TOPIC 't'",
            SqlError,
            "table 'missing' does not exist in the source database",
        ),
    ],
)
async def test_errors_leave_the_catalog_unchanged(text: str, error: type[SqlError], message: str) -> None:
    manager = MemoryStreamManager(known_tables=["users", "public.orders"])
    await execute(GUIDE_KAFKA, manager)
    await execute("ALTER CDC STREAM users_stream PAUSE", manager)
    before = catalog(manager)
    with pytest.raises(error) as info:
        await execute(text, manager)
    assert type(info.value) is error
    assert info.value.message == message
    assert info.value.context.get("statement", 1) == 1
    assert catalog(manager) == before


async def test_failure_names_the_statement_and_what_ran(manager: MemoryStreamManager) -> None:
    text = (
        "CREATE CHANGE DATA CAPTURE ON a TO KAFKA 'k:1' TOPIC 't' AS s1;\n"
        "ALTER CDC STREAM s1 PAUSE;\n"
        "ALTER CDC STREAM s2 PAUSE;\n"
        "DROP CHANGE DATA CAPTURE s1;\n"
        "SHOW CDC STREAMS"
    )
    with pytest.raises(StreamNotFound) as info:
        await execute(text, manager)
    assert info.value.message == (
        "statement 3 of 5 failed: stream 's2' does not exist; SHOW CDC STREAMS lists the "
        "streams (statements 1-2 ran, statements 4-5 were not run)"
    )
    assert info.value.context == {"stream": "s2", "statement": 3}
    assert manager.states == {"s1": "paused"}  # 1 and 2 ran, 4 did not


async def test_syntax_error_in_a_later_statement(manager: MemoryStreamManager) -> None:
    text = "CREATE CHANGE DATA CAPTURE ON a TO KAFKA 'k:1' TOPIC 't' AS s1;\nSHOW CDC STREAMZ;"
    with pytest.raises(SqlError) as info:
        await execute(text, manager)
    assert info.value.message == (
        "statement 2 of 2 failed: expected STREAMS or STREAM after CDC at line 2, column 10, "
        "found 'STREAMZ' (statement 1 ran)"
    )
    assert info.value.context == {"position": 73, "line": 2, "column": 10, "statement": 2}
    assert list(manager.streams) == ["s1"]


async def test_concurrent_creates_of_one_name_exactly_one_wins(
    manager: MemoryStreamManager,
) -> None:
    stmt = "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 't{}' AS 'same'"
    outcomes = await asyncio.gather(
        *(execute(stmt.format(i), manager) for i in range(20)), return_exceptions=True
    )
    wins = [o for o in outcomes if isinstance(o, list)]
    losses = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(wins) == 1
    assert len(losses) == 19
    assert all(isinstance(e, StreamExists) for e in losses)
    assert all(e.message == "stream 'same' already exists" for e in losses if isinstance(e, SqlError))
    assert list(manager.streams) == ["same"]
    winner_topic = wins[0][0].message.split("topic ")[1].split(",")[0]
    assert manager.streams["same"].destination.topic == winner_topic


async def test_concurrent_creates_without_a_name_all_get_one(
    manager: MemoryStreamManager,
) -> None:
    stmt = "CREATE CHANGE DATA CAPTURE ON orders TO KAFKA 'k:1' TOPIC 't'"
    await asyncio.gather(*(execute(stmt, manager) for _ in range(5)))
    assert sorted(manager.streams) == [
        "orders_kafka",
        "orders_kafka_2",
        "orders_kafka_3",
        "orders_kafka_4",
        "orders_kafka_5",
    ]


# -- results and rendering ------------------------------------------------------------------


def test_result_json_round_trip() -> None:
    r = SqlResult(["a", "b"], [[1, None], ["x", Path("/p")]], "msg")
    d = result_to_dict(r)
    assert d == {"columns": ["a", "b"], "rows": [[1, None], ["x", "/p"]], "message": "msg"}
    assert orjson.loads(r.to_json()) == d
    body = results_to_json([r, SqlResult(message="ok")])
    back = results_from_json(body)
    assert back == [SqlResult(["a", "b"], [[1, None], ["x", "/p"]], "msg"), SqlResult(message="ok")]
    assert results_from_json(orjson.loads(body)) == back
    with pytest.raises(SqlError, match="no 'results' list"):
        results_from_json(b'{"error": "x"}')
    with pytest.raises(SqlError, match="not JSON"):
        results_from_json(b"<html>")


def test_render_table_psql_like() -> None:
    r = SqlResult(
        ["name", "state", "delivered", "lag_bytes"],
        [["orders_kafka", "running", 1200, None], ["users_stream", "paused", 7, 0]],
    )
    assert render_table(r) == (
        "     name     |  state  | delivered | lag_bytes\n"
        "--------------+---------+-----------+-----------\n"
        " orders_kafka | running |      1200 |\n"
        " users_stream | paused  |         7 |         0\n"
        "(2 rows)"
    )


def test_render_table_edge_cases() -> None:
    assert render_table(SqlResult(message="stream s paused")) == "stream s paused"
    assert render_table(SqlResult(["property", "value"], [])) == (
        " property | value\n----------+-------\n(0 rows)"
    )
    one = render_table(SqlResult(["k", "v"], [["ok", True], ["wide", "日本"], ["nl", "a\nb"]]))
    assert one.splitlines() == [
        "  k   |  v",
        "------+------",
        " ok   | true",
        " wide | 日本",
        " nl   | a\\nb",
        "(3 rows)",
    ]
    assert render_table(SqlResult(["n"], [[1]])).endswith("(1 row)")


# -- the client against an HTTP server ----------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, MemoryStreamManager, list[dict[str, Any]]]]:
    """A /sql endpoint shaped like the service's: text in, results or a 400 error out."""
    manager = MemoryStreamManager()
    seen: list[dict[str, Any]] = []

    async def sql(request: web.Request) -> web.Response:
        seen.append({"content_type": request.content_type, "auth": request.headers.get("Authorization")})
        if request.headers.get("Authorization") != "Bearer t0k":
            return web.json_response({"error": "unauthorized"}, status=401)
        text = await request.text()
        try:
            results = await execute(text, manager)
        except SqlError as exc:
            return web.json_response({"error": exc.message, **exc.context}, status=400)
        return web.Response(body=results_to_json(results), content_type="application/json")

    app = web.Application()
    app.router.add_post("/sql", sql)
    srv = TestServer(app)
    await srv.start_server()
    try:
        yield str(srv.make_url("")).rstrip("/"), manager, seen
    finally:
        await srv.close()


async def test_run_remote_round_trip(
    server: tuple[str, MemoryStreamManager, list[dict[str, Any]]],
) -> None:
    url, manager, seen = server
    results = await run_remote(url + "/", GUIDE_QUICK_START, "t0k")
    assert results[0].message.startswith("stream orders_kafka created")
    assert results[1].columns == STREAM_COLUMNS
    assert results[1].rows[0][0] == "orders_kafka"
    assert seen[0] == {"content_type": "text/plain", "auth": "Bearer t0k"}
    assert "orders_kafka" in manager.streams


async def test_run_remote_error_carries_the_server_context(
    server: tuple[str, MemoryStreamManager, list[dict[str, Any]]],
) -> None:
    url, _, _ = server
    with pytest.raises(SqlError) as info:
        await run_remote(url, "SHOW CDC STREAMS;\nALTER CDC STREAM x STOP", "t0k")
    assert info.value.message == (
        "statement 2 of 2 failed: expected PAUSE, RESUME, BACKFILL or CANCEL after x at line 2, "
        "column 20, found 'STOP' (statement 1 ran)"
    )
    assert info.value.context == {"position": 37, "line": 2, "column": 20, "statement": 2}
    assert isinstance(info.value, RemoteSqlError)
    assert str(info.value) == info.value.message  # the CLI prints it as is


async def test_run_remote_auth_and_connection_errors(
    server: tuple[str, MemoryStreamManager, list[dict[str, Any]]],
) -> None:
    url, _, _ = server
    with pytest.raises(CdcError) as info:
        await run_remote(url, "SHOW CDC STREAMS", None)
    assert not isinstance(info.value, SqlError)
    assert info.value.message == "unauthorized (pass --token or set HELIOSDB_CDC_TOKEN)"
    with pytest.raises(CdcError, match=r"cannot reach the service at http://127\.0\.0\.1:9"):
        await run_remote("http://127.0.0.1:9", "SHOW CDC STREAMS", None)


async def test_repl_runs_multiline_statements_and_quits(
    server: tuple[str, MemoryStreamManager, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, manager, _ = server
    lines = iter(
        [
            "CREATE CHANGE DATA CAPTURE ON orders",
            "  TO KAFKA 'localhost:9092' TOPIC 'orders-events'   -- the topic",
            "  FORMAT JSON;",
            "",
            "SHOW CDC STREAM STATUS nope;",
            "SHOW CDC",
            "\\r",
            "show cdc streams",
            ";",
            "\\q",
            "SHOW CDC STREAMS;",  # never read
        ]
    )
    out: list[str] = []

    def typed(prompt: str) -> str:
        out.append(prompt)
        return next(lines)

    await repl(
        url,
        "t0k",
        input_fn=typed,
        output=out.append,
        history_file=tmp_path / "hist",
    )
    assert out[0].startswith(f"heliosdb-cdc sql on {url}")
    assert out[1:5] == [
        "heliosdb-cdc=> ",
        "heliosdb-cdc-> ",
        "heliosdb-cdc-> ",
        ("stream orders_kafka created: orders -> KAFKA localhost:9092 topic orders-events, format JSON"),
    ]
    assert "ERROR: stream 'nope' does not exist; SHOW CDC STREAMS lists the streams" in out
    assert "statement cleared" in out
    table = next(o for o in out if o.endswith("(1 row)"))
    assert "orders_kafka" in table
    assert next(lines) == "SHOW CDC STREAMS;"
    assert list(manager.streams) == ["orders_kafka"]


async def test_repl_ends_on_eof() -> None:
    out: list[str] = []

    def eof(prompt: str) -> str:
        raise EOFError

    async def never(url: str, text: str, token: str | None) -> list[SqlResult]:
        raise AssertionError("nothing to run")

    await repl("http://x", None, input_fn=eof, output=out.append, runner=never)
    assert out[-1] == ""


# -- docs/sql.md runs as written ------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sql.md"


async def test_docs_examples_run_as_written() -> None:
    import re

    doc = DOCS.read_text()
    commands = re.findall(r'^heliosdb-cdc sql "(.*?)"$', doc, re.S | re.M)
    assert len(commands) >= 12
    manager = MemoryStreamManager()
    *ok, failing = commands
    for text in ok:
        for r in await execute(text, manager):
            if r.message:
                assert r.message in doc
    with pytest.raises(StreamNotFound) as info:
        await execute(failing, manager)
    assert f"error: {info.value.message}" in doc


async def test_docs_error_table_is_accurate() -> None:
    import re

    rows = re.findall(r"^\| `([^`]*)`[^|]*\| `([^`]*)` \|$", DOCS.read_text(), re.M)
    checked = 0
    for text, message in rows:
        if "..." in text or "..." in message:
            continue
        manager = MemoryStreamManager(known_tables=["orders", "t"])
        with pytest.raises(SqlError) as info:
            await execute(text, manager)
        assert info.value.message == message, text
        checked += 1
    assert checked >= 8
