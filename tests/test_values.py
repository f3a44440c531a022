"""Values arrive as PostgreSQL stored them, checked against PostgreSQL's own rendering;
a row that cannot become an event is dead-lettered and capture goes on."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from heliosdb_cdc import FilterConfig, WebhookRegistration, WebhookServer
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._metrics import CAPTURE_UNDECODABLE
from heliosdb_cdc.postgres import _types
from heliosdb_cdc.store._sqlite import CAPTURE_STREAM
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


async def _bodies(receiver: Receiver, n: int, timeout: float = 30.0) -> list[bytes]:
    """The raw bodies of the first ``n`` events (one event per request)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(receiver.requests) < n:
        assert asyncio.get_running_loop().time() < deadline, f"{len(receiver.requests)} of {n} events"
        await asyncio.sleep(0.05)
    return [r.body for r in receiver.requests]


def _event(body: bytes) -> dict[str, Any]:
    return json.loads(body, parse_float=Decimal)  # type: ignore[no-any-return]


async def _serve(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, tables: list[str]) -> WebhookServer:
    server = WebhookServer(make_config(pg_db, tmp_path, webhook=_webhook()))
    await server.start()
    await server.register(WebhookRegistration(url=receiver.url, secret=receiver.secret, tables=tables))
    return server


def _webhook() -> dict[str, Any]:
    return {"bind_address": f"127.0.0.1:{free_port()}", "retry": {"initial_delay_ms": 10}, "batch_size": 1}


JSON_DOCS = [
    # duplicate keys, key order and every digit of json; numbers jsonb would round as floats
    ('{"b": 1, "a": 3.14159265358979323846264338327950288, "b": 2}', '{"x": 1e-400, "y": 1.5}'),
    ("[1e-400, 123456789012345678901234567890.000000000000000001]", '"text"'),
]


async def test_json_and_jsonb_arrive_as_postgres_wrote_them(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE docs (id int PRIMARY KEY, j json, b jsonb, ja json[])")
    server = await _serve(pg_db, receiver, tmp_path, ["docs"])
    try:
        for i, (j, jb) in enumerate(JSON_DOCS):
            pg_db.execute(
                "INSERT INTO docs VALUES (%s, %s, %s, ARRAY[%s::json, %s::json])", (i, j, jb, j, jb)
            )
        pg_db.execute("UPDATE docs SET b = b WHERE id = 0")  # the general (non-INSERT) path
        bodies = await _bodies(receiver, 3)
    finally:
        await server.stop()
    rows: dict[Any, Any] = {
        r[0]: r[1:] for r in pg_db.execute("SELECT id, j::text, b::text, ja::text[] FROM docs")
    }
    for body in bodies:
        ev = _event(body)
        j, jb, ja = rows[ev["key"]["id"]]
        assert b'"j":' + j.encode() + b"," in body  # verbatim: PostgreSQL's own text
        assert b'"b":' + jb.encode() + b"," in body
        assert b'"ja":[' + ",".join(ja).encode() + b"]" in body
    assert "0." + "0" * 399 + "1" in str(rows[0][1])  # jsonb keeps 1e-400 exactly, positional
    assert _event(bodies[0])["value"]["j"]["a"] == Decimal("3.14159265358979323846264338327950288")


async def test_arrays_domains_money_and_bc_dates(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute(
        """
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE DOMAIN intlist AS int[];
        CREATE DOMAIN moods AS mood[];
        CREATE TYPE pair AS (a int, b text);
        CREATE TABLE vals (
            id int PRIMARY KEY, moods mood[], cash money[], n posint, nums intlist, posints posint[],
            dmoods moods, pairs pair[], r int4range, mr int4multirange,
            tz timestamptz, ts timestamp, d date
        )
        """
    )
    server = await _serve(pg_db, receiver, tmp_path, ["vals"])
    try:
        pg_db.execute(
            "INSERT INTO vals VALUES (1, '{sad,happy,NULL}', '{1.50,-2}', 7, '{{1,2},{3,4}}', '{5,6}', "
            "'{ok}', ARRAY[(1,'x')::pair, (2,'y,z')::pair], '[1,5)', '{[1,3),[7,9)}', "
            "'0044-03-15 12:00:00.5+00 BC', '0001-01-01 00:00:00 BC', '0044-03-15 BC')"
        )
        (body,) = await _bodies(receiver, 1)
    finally:
        await server.stop()
    value = _event(body)["value"]
    # arrays and domains: what PostgreSQL's to_jsonb makes of them
    cols = ["moods", "cash", "n", "nums", "posints", "dmoods"]
    (row,) = pg_db.execute("SELECT " + ", ".join(f"to_jsonb({c})::text" for c in cols) + " FROM vals")
    for col, pg_json in zip(cols, row, strict=True):
        assert value[col] == json.loads(str(pg_json), parse_float=Decimal), col
    # composites, ranges, multiranges: PostgreSQL's text form (of each element for arrays)
    (pairs, r, mr) = pg_db.execute("SELECT pairs::text[], r::text, mr::text FROM vals")[0]
    assert value["pairs"] == pairs == ["(1,x)", '(2,"y,z")']
    assert (value["r"], value["mr"]) == (r, mr) == ("[1,5)", "{[1,3),[7,9)}")
    # BC: ISO 8601 astronomical years (1 BC is 0000, 44 BC is -0043), as documented
    assert value["tz"] == "-0043-03-15T12:00:00.5Z"
    assert value["ts"] == "0000-01-01T00:00:00"
    assert value["d"] == "-0043-03-15"


async def test_generated_columns_are_reported_in_status(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE g (id int PRIMARY KEY, x int, twice int GENERATED ALWAYS AS (x * 2) STORED)")
    server = await _serve(pg_db, receiver, tmp_path, ["g"])
    try:
        pg_db.execute("INSERT INTO g (id, x) VALUES (1, 21)")
        (body,) = await _bodies(receiver, 1)
        name = server.list_stream_rows()[0]["name"]
        status = server.stream_status(name)
    finally:
        await server.stop()
    if int(pg_db.execute("SHOW server_version_num")[0][0]) >= 180000:  # type: ignore[call-overload]
        assert _event(body)["value"] == {"id": 1, "x": 21, "twice": 42}
        assert status["unpublished_columns"] == {}
    else:
        assert _event(body)["value"] == {"id": 1, "x": 21}  # PostgreSQL does not publish it
        assert status["unpublished_columns"] == {"g": ["twice"]}


async def test_deeply_nested_jsonb_does_not_stop_capture(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    deep = "[" * 1500 + "]" * 1500
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, doc jsonb)")
    server = await _serve(pg_db, receiver, tmp_path, ["t"])
    try:
        pg_db.execute("INSERT INTO t VALUES (1, %s)", (deep,))
        pg_db.execute("UPDATE t SET doc = %s WHERE id = 1", ("[" + deep + "]",))
        for i in range(2, 5):
            pg_db.execute("INSERT INTO t VALUES (%s, '{\"ok\": true}')", (i,))
        bodies = await _bodies(receiver, 5)
    finally:
        await server.stop()
    bodies.sort(key=lambda body: int(re.search(rb'"sequence":(\d+)', body)[1]))  # type: ignore[index]
    assert b'"doc":' + deep.encode() + b"}" in bodies[0]  # the poison row, intact
    assert b'"doc":[' + deep.encode() + b"]}" in bodies[1]
    assert [b'"id":%d' % i in body for i, body in zip([1, 1, 2, 3, 4], bodies, strict=True)] == [True] * 5


async def test_a_filtered_stream_dead_letters_what_it_cannot_read(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    """A stream whose predicate needs the event parsed cannot read a value nested deeper than
    the parser goes: that event is a dead letter of the stream, the next ones arrive."""
    deep = "[" * 1500 + "]" * 1500
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, doc jsonb)")
    server = WebhookServer(make_config(pg_db, tmp_path, webhook=_webhook()))
    await server.start()
    try:
        name = await server.register(
            WebhookRegistration(
                url=receiver.url,
                secret=receiver.secret,
                tables=["t"],
                filters=[FilterConfig(predicate="id > 0")],
            )
        )
        pg_db.execute("INSERT INTO t VALUES (1, %s)", (deep,))
        pg_db.execute("INSERT INTO t VALUES (2, '[]')")
        bodies = await _bodies(receiver, 1)
        assert server.store is not None
        dead = server.store.list_dead_letters(name)
    finally:
        await server.stop()
    assert [_event(b)["key"] for b in bodies] == [{"id": 2}]
    assert [d["table"] for d in dead] == ["t"]
    assert dead[0]["error"].startswith("event cannot be read for filters/transforms: maximum recursion")


async def test_a_row_that_cannot_become_an_event_is_dead_lettered(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails while a row becomes an event (here: the converter of ``point``), the row
    goes to dead letters with its raw message, is counted, and the rows after it arrive."""

    def broken(_: Any) -> Any:
        raise ValueError("no converter for this value")

    monkeypatch.setitem(_types._SCALAR, 600, broken)
    monkeypatch.setattr(_types, "_CACHE", {})
    monkeypatch.setattr(_types, "_ENC_CACHE", {})
    before = CAPTURE_UNDECODABLE.labels("pts")._value.get()
    pg_db.execute("CREATE TABLE pts (id int PRIMARY KEY, p point)")
    server = await _serve(pg_db, receiver, tmp_path, ["pts"])
    try:
        pg_db.execute("INSERT INTO pts VALUES (1, NULL)")
        pg_db.execute("INSERT INTO pts VALUES (2, '(1,2)')")  # INSERT: the fast path
        pg_db.execute("UPDATE pts SET p = '(3,4)' WHERE id = 1")  # UPDATE: the general path
        pg_db.execute("INSERT INTO pts VALUES (3, NULL)")
        bodies = await _bodies(receiver, 2)
        await asyncio.sleep(0.3)  # nothing more may come
        assert server.store is not None
        dead = server.store.list_dead_letters(CAPTURE_STREAM)
        full = [server.store.get_dead_letter(d["id"]) for d in dead]
        captured = server.capture.describe() if server.capture else {}
    finally:
        await server.stop()
    assert [_event(b)["key"] for b in bodies] == [{"id": 1}, {"id": 3}]
    assert len(receiver.requests) == 2
    assert [(d["table"], d["operation"]) for d in dead] == [("pts", "INSERT"), ("pts", "UPDATE")]
    assert all("no converter for this value" in d["error"] for d in dead)
    assert [f["body"][:1] for f in full if f] == [b"I", b"U"]  # the raw pgoutput messages
    assert all(d["event_id"].endswith("_000001") for d in dead)
    assert CAPTURE_UNDECODABLE.labels("pts")._value.get() - before == 2
    assert captured["undecodable"] == 2
