"""Bad input (issue 15): one naming rule for SQL, REST, YAML and the Python API; log
lines that no user input can forge; malformed request bodies answered with a 4xx that
says what is wrong, and nothing created."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from heliosdb_cdc import WebhookRegistration, WebhookServer
from heliosdb_cdc._config import Destination, StreamConfig, config_from_dict
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._errors import ConfigError, SqlError
from heliosdb_cdc.sql import MemoryStreamManager, execute
from tests.plugins.postgres import PgDatabase
from tests.test_e2e_webhook import make_config

FORGED = "x\n2026-01-01 00:00:00,000 CRITICAL heliosdb_cdc: forged log line"
BAD_NAMES = {
    "": "must not be empty",
    FORGED: "control or invisible characters (U+000A at position 2)",
    "bell\x07": "control or invisible characters (U+0007",
    "rtl\u202eevil": "control or invisible characters (U+202E",
    "   ": "must not be only spaces",
    "n" * 129: "at most 128 characters (this one has 129)",
    " padded": "must not start or end with a space",
}


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_name_rule(name: str) -> None:
    from heliosdb_cdc._errors import InvalidName
    from heliosdb_cdc._names import check_name, name_problem

    problem = name_problem(name)
    assert problem is not None and BAD_NAMES[name] in problem
    with pytest.raises(InvalidName, match="stream name") as err:
        check_name(name)
    assert "\n" not in str(err.value)  # the offending name is shown escaped


@pytest.mark.parametrize("name", ["orders", "My Stream", "commandes_été", "n" * 128, "a.b-c:d"])
def test_good_names(name: str) -> None:
    from heliosdb_cdc._names import check_name

    assert check_name(name) == name


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_yaml_refuses_bad_names(name: str) -> None:
    stream = {"name": name, "tables": ["t"], "destination": {"type": "memory", "address": "m"}}
    with pytest.raises(ConfigError, match=r"streams\[0\]\.name: a stream name"):
        config_from_dict({"streams": [stream]})
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.name: a stream name"):
        config_from_dict({"webhooks": [{"url": "http://h/x", "name": name}]})


async def test_sql_refuses_bad_names_and_generated_names_are_valid() -> None:
    from heliosdb_cdc._names import check_name

    manager = MemoryStreamManager()
    with pytest.raises(SqlError, match="must not contain control"):
        await execute("CREATE CHANGE DATA CAPTURE ON t TO KAFKA 'k:1' TOPIC 't' AS 'a\nb'", manager)
    long_table = '"' + "T" * 300 + '"'
    res = await execute(f"CREATE CHANGE DATA CAPTURE ON {long_table} TO KAFKA 'k:1' TOPIC 't'", manager)
    (name,) = manager.streams
    assert check_name(name) == name and name in res[0].message
    with pytest.raises(ConfigError, match="must not be empty"):  # the in-memory manager too
        await manager.create_stream(_cfg(""))


def _cfg(name: str, **dest: Any) -> StreamConfig:
    destination = Destination(**(dest or {"type": "memory", "address": "m"}))
    return StreamConfig(name=name, tables=["orders"], destination=destination)


def test_log_lines_cannot_be_forged() -> None:
    from heliosdb_cdc._logging import PlainFormatter, escape

    fmt = PlainFormatter("%(levelname)s %(name)s: %(message)s")
    rec = logging.LogRecord("heliosdb_cdc", logging.INFO, __file__, 1, "stream %s created", (FORGED,), None)
    rec.stream = FORGED
    line = fmt.format(rec)
    assert line.count("\n") == 0 and "forged log line" in line and "\\n" in line
    try:
        raise ValueError(FORGED)
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = fmt.format(rec)
    # a traceback keeps its lines, but each is indented: none starts like a record
    assert all(line.startswith("    ") for line in out.split("\n")[1:])
    assert escape("a\x1b[31m\u2028\r") == "a\\x1b[31m\\u2028\\r"


async def test_every_way_in_refuses_bad_names(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        assert server.store is not None
        url = "http://" + server.config.webhook.bind_address
        async with aiohttp.ClientSession(url) as http:
            for name, problem in BAD_NAMES.items():
                body = {"name": name, "tables": ["orders"], "destination": {"type": "memory", "address": "m"}}
                async with http.post("/api/streams", json=body) as r:
                    assert r.status == 422, await r.text()
                    assert problem in (await r.json())["error"]
                async with http.post("/api/webhooks", json={"url": "http://127.0.0.1:1/x", "name": name}) as r:
                    assert r.status == 422 and problem in (await r.json())["error"]
                quoted = name.replace("'", "''")
                sql = f"CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://127.0.0.1:1/' AS '{quoted}'"
                async with http.post("/sql", data=sql.encode()) as r:
                    assert r.status == 400 and problem in (await r.json())["error"]
                with pytest.raises(ConfigError, match=re.escape(problem)):
                    await server.create_stream(_cfg(name))
                with pytest.raises(ConfigError, match="stream name"):
                    await server.register(WebhookRegistration(url="http://127.0.0.1:1/x", name=name))
            # a lookup of such a name is a plain 404 whose message shows the name escaped
            async with http.get("/api/streams/a%0Ab") as r:
                assert r.status == 404 and "'a\\nb'" in (await r.json())["error"]
            async with http.get("/api/streams") as r:
                assert (await r.json())["streams"] == []
            assert server.store.list_streams() == []
            # streams named before the rule (catalog rows) still run and can be dropped
            for legacy in ("a\nb", ""):
                server.store.create_stream(legacy, _cfg("x").model_dump(mode="json") | {"name": legacy}, "api", "running")
        async with WebhookServer(make_config(pg_db, tmp_path)) as server:
            assert server.store is not None and set(server.runners) == {"a\nb", ""}
            url = "http://" + server.config.webhook.bind_address
            async with aiohttp.ClientSession(url) as http, http.delete("/api/streams/a%0Ab") as r:
                assert r.status == 204
            await server.drop_stream("")
            assert server.store.list_streams() == []


async def test_malformed_bodies_get_a_clear_4xx(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        assert server.store is not None
        url = "http://" + server.config.webhook.bind_address
        async with aiohttp.ClientSession(url) as http:
            async with http.post("/sql", data=b"SHOW CDC STREAMS \xff;") as r:
                assert r.status == 400
                assert "not valid 'utf-8' text: invalid start byte at byte 17" in (await r.json())["error"]
            for charset in ("x-no-such-charset", "rot13"):
                headers = {"Content-Type": f"text/plain; charset={charset}"}
                async with http.post("/sql", data=b"SHOW CDC STREAMS;", headers=headers) as r:
                    assert r.status == 415 and "unknown charset" in (await r.json())["error"]
            headers = {"Content-Type": "text/plain; charset=latin-1"}
            async with http.post("/sql", data="SHOW CDC STREAMS; -- é".encode("latin-1"), headers=headers) as r:
                assert r.status == 200
            deep: Any = {}
            for _ in range(300):
                deep = {"k": deep}
            dest = {"type": "webhook", "address": "http://127.0.0.1:1/", "options": deep}
            body = {"name": "deep", "tables": ["orders"], "destination": dest}
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 400 and "nested more than 64 levels" in (await r.json())["error"]
            for _ in range(260):  # a body within the limit, options deeper than a stream takes
                deep = deep["k"]
            dest["options"] = deep
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 422 and "options: nested more than 32" in (await r.json())["error"]
            dest["options"] = {"batch_size": "many"}
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 400, await r.text()
                assert "destination.options: invalid literal for int() with base 10: 'many'" in (
                    await r.json()
                )["error"]
            empty = {"name": "k", "tables": ["orders"], "destination": {"type": "kafka", "address": " ", "topic": "t"}}
            async with http.post("/api/streams", json=empty) as r:
                assert r.status == 422 and "kafka destination needs" in (await r.json())["error"]
            for raw in (b"[1, 2]", b"{", b'"s"'):
                async with http.post("/api/streams", data=raw) as r:
                    assert 400 <= r.status < 500
                async with http.post("/api/dead-letters/replay", data=raw) as r:
                    assert 400 <= r.status < 500
        assert server.store.list_streams() == []


async def test_unreachable_brokers_never_stall_the_api(pg_db: PgDatabase, tmp_path: Path) -> None:
    """Kafka streams to a broker that is not there: each waits for it in the background
    (up to timeout_s per try), and no request waits for them: more such streams than
    the event loop's default thread pool has threads used to stall every later CREATE,
    DROP and status for 30 s and more. The client timeout only guards against a hang."""
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    broker = f"127.0.0.1:{free_port()}"  # nothing listens there
    n = min(32, (os.cpu_count() or 1) + 4) + 1  # asyncio's default executor size, plus one
    guard = aiohttp.ClientTimeout(total=25)
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        url = "http://" + server.config.webhook.bind_address
        async with aiohttp.ClientSession(url, timeout=guard) as http:
            for i in range(n):
                dest = {"type": "kafka", "address": broker, "topic": "orders"}
                async with http.post("/api/streams", json={"name": f"k{i}", "tables": ["orders"], "destination": dest}) as r:
                    assert r.status == 201, await r.text()
            # one that gives up quickly reports the broker in its status
            dest = {"type": "kafka", "address": broker, "topic": "orders", "options": {"timeout_s": 1}}
            async with http.post("/api/streams", json={"name": "quick", "tables": ["orders"], "destination": dest}) as r:
                assert r.status == 201, await r.text()
            body = {"name": "mem", "tables": ["orders"], "destination": {"type": "memory", "address": "m"}}
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 201, await r.text()
            async with http.delete("/api/streams/k0") as r:
                assert r.status == 204
            async with http.post("/sql", data=b"SHOW CDC STREAM STATUS k1;") as r:
                assert r.status == 200
            for _ in range(200):
                async with http.get("/api/streams/quick/status") as r:
                    error = (await r.json())["last_error"]
                if error:
                    break
                await asyncio.sleep(0.1)
            assert error and "cannot start the destination" in error and broker in error


async def test_table_pattern_matching_nothing_is_a_warning(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE orderx (id int PRIMARY KEY)")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        url = "http://" + server.config.webhook.bind_address
        async with aiohttp.ClientSession(url) as http:
            memory = {"type": "memory", "address": "m"}
            body = {"name": "none", "tables": ["nosuch_*"], "destination": memory}
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 201
                warning = (await r.json())["warnings"]
            assert "table pattern 'nosuch_*' matches no table now" in warning
            async with http.get("/api/streams/none/status") as r:
                assert (await r.json())["warnings"] == warning
            sql = b"CREATE CHANGE DATA CAPTURE ON nosuch.* TO WEBHOOK 'http://127.0.0.1:1/' AS sch"
            async with http.post("/sql", data=sql) as r:
                assert r.status == 200, await r.text()
                message = (await r.json())["results"][0]["message"]
            assert "WARNING: table pattern 'nosuch.*' matches no table now" in message
            async with http.post("/sql", data=b"SHOW CDC STREAM STATUS sch") as r:
                rows = dict((await r.json())["results"][0]["rows"])
            assert "nosuch.*" in rows["warnings"]
            # '_' is a literal underscore, not LIKE's any-character: order_* matches no table
            body = {"name": "under", "tables": ["order_*"], "destination": memory}
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 201 and "'order_*' matches no table" in (await r.json())["warnings"]
            body = {"name": "some", "tables": ["order?"], "destination": memory}
            async with http.post("/api/streams", json=body) as r:
                assert r.status == 201 and (await r.json())["warnings"] is None
            # a pattern that can never match is an error, and nothing is created
            for pattern in ("pg_*.t*", "x" * 64 + "*"):
                body = {"name": "never", "tables": [pattern], "destination": memory}
                async with http.post("/api/streams", json=body) as r:
                    assert r.status == 422 and "can never match" in (await r.json())["error"]
            # a table created later joins at the next restart (a stream's CREATE or DROP
            # touches only its own tables), and the warning goes
            pg_db.execute("CREATE TABLE nosuch_t (id int PRIMARY KEY)")
            async with http.delete("/api/streams/some") as r:
                assert r.status == 204
            async with http.get("/api/streams/none/status") as r:
                assert (await r.json())["warnings"] == warning
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        url = "http://" + server.config.webhook.bind_address
        async with aiohttp.ClientSession(url) as http:
            async with http.get("/api/streams/none/status") as r:
                assert (await r.json())["warnings"] is None
        pub = pg_db.execute("SELECT tablename FROM pg_publication_tables WHERE pubname='heliosdb_cdc'")
        assert sorted(t for (t,) in pub) == ["nosuch_t"]  # not orderx through 'order_*'


def test_cli_sql_file_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.sql"
    bad.write_bytes(b"SHOW CDC STREAMS \xff;")
    for path, message in ((bad, "is not UTF-8 text: invalid start byte at byte 17"), (tmp_path / "none.sql", "No such file")):
        res = subprocess.run(
            [sys.executable, "-m", "heliosdb_cdc.cli", "sql", "--server", "http://127.0.0.1:1", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
