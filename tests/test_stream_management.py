"""Stream management the way users do it: `heliosdb-cdc sql`, the REST API and the
Python API, on one catalog that survives restarts."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


async def cli_sql(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "heliosdb_cdc.cli", "sql", "--server", server, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def api_url(server: WebhookServer) -> str:
    return "http://" + server.config.webhook.bind_address


async def test_sql_lifecycle_through_the_cli(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE users (id serial PRIMARY KEY, name text)")
    cfg = make_config(pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{_port()}"})
    async with WebhookServer(cfg) as server:
        url = api_url(server)
        res = await cli_sql(
            url,
            f"CREATE CHANGE DATA CAPTURE ON users TO WEBHOOK '{receiver.url}' "
            "SECRET 'your-webhook-secret' FORMAT JSON AS 'users_stream';",
        )
        assert res.returncode == 0, res.stderr
        assert "users_stream" in res.stdout
        res = await cli_sql(url, "SHOW CDC STREAMS;")
        assert "users_stream" in res.stdout and "running" in res.stdout
        pg_db.execute("INSERT INTO users (name) VALUES ('a')")
        await receiver.wait_for(1)
        res = await cli_sql(url, "ALTER CDC STREAM users_stream PAUSE;")
        assert res.returncode == 0, res.stderr
        pg_db.execute("INSERT INTO users (name) VALUES ('b'), ('c')")
        await asyncio.sleep(0.5)
        assert len(receiver.events) == 1
        res = await cli_sql(url, "SHOW CDC STREAM STATUS users_stream;")
        assert "paused" in res.stdout and "circuit_breaker" in res.stdout
        await cli_sql(url, "ALTER CDC STREAM users_stream RESUME;")
        await receiver.wait_for(3)
        # errors: clear, and nothing changes
        bad = await cli_sql(
            url, "CREATE CHANGE DATA CAPTURE ON no_such_table TO WEBHOOK 'http://127.0.0.1:1/x';"
        )
        assert bad.returncode != 0
        assert "no_such_table" in bad.stderr and "does not exist" in bad.stderr
        dup = await cli_sql(
            url,
            f"CREATE CHANGE DATA CAPTURE ON users TO WEBHOOK '{receiver.url}' AS 'users_stream';",
        )
        assert dup.returncode != 0 and "already exists" in dup.stderr
        syntax = await cli_sql(url, "CREATE CHANGE DATA CAPTURE ON users TO KAFKA 'h:9092';")
        assert syntax.returncode != 0 and "TOPIC" in syntax.stderr
        assert server.store is not None
        assert [r["name"] for r in server.store.list_streams()] == ["users_stream"]
    # the catalog survives a restart
    async with WebhookServer(cfg) as server:
        res = await cli_sql(api_url(server), "SHOW CDC STREAMS;")
        assert "users_stream" in res.stdout
        pg_db.execute("INSERT INTO users (name) VALUES ('d')")
        await receiver.wait_for(4)
        res = await cli_sql(api_url(server), "DROP CHANGE DATA CAPTURE users_stream;")
        assert res.returncode == 0, res.stderr
        pg_db.execute("INSERT INTO users (name) VALUES ('e')")
        await asyncio.sleep(0.5)
        res = await cli_sql(api_url(server), "SHOW CDC STREAMS;")
        assert "users_stream" not in res.stdout
        pub = pg_db.execute("SELECT tablename FROM pg_publication_tables WHERE pubname='heliosdb_cdc'")
        assert pub == []  # the dropped stream released its table
    assert [e["value"]["name"] for e in sorted(receiver.events, key=lambda e: e["sequence"])] == [
        "a",
        "b",
        "c",
        "d",
    ]


async def test_several_statements_and_file(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    cfg = make_config(pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{_port()}"})
    sql_file = tmp_path / "streams.sql"
    sql_file.write_text(
        f"CREATE CHANGE DATA CAPTURE ON a TO WEBHOOK '{receiver.url}';\n"
        f"CREATE CHANGE DATA CAPTURE ON b TO WEBHOOK '{receiver.url}';\nSHOW CDC STREAMS;\n"
    )
    async with WebhookServer(cfg) as server:
        res = await cli_sql(api_url(server), "-f", str(sql_file))
        assert res.returncode == 0, res.stderr
        assert "a_webhook" in res.stdout and "b_webhook" in res.stdout


async def test_rest_api(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    cfg = make_config(pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{_port()}"})
    async with WebhookServer(cfg) as server, aiohttp.ClientSession(api_url(server)) as http:
        async with http.get("/openapi.json") as r:
            doc = await r.json()
            assert "/api/streams" in doc["paths"]
        body: dict[str, Any] = {
            "url": receiver.url,
            "secret": "your-webhook-secret",
            "tables": ["orders"],
            "operations": ["INSERT"],
            "name": "orders_hook",
        }
        async with http.post("/api/webhooks", json=body) as r:
            assert r.status == 201, await r.text()
        async with http.post("/api/webhooks", json=body) as r:
            assert r.status == 409
        async with http.post("/api/webhooks", json={"url": "ftp://x"}) as r:
            assert r.status == 422
            assert "url" in (await r.json())["error"]
        async with http.post("/api/streams", data=b"not json") as r:
            assert r.status == 400
        async with http.get("/api/webhooks") as r:
            hooks = (await r.json())["webhooks"]
            assert hooks[0]["secret"] == "********"  # never returned
        async with http.get("/api/streams/orders_hook") as r:
            assert (await r.json())["config"]["secret"] == "********"
        pg_db.execute("INSERT INTO orders VALUES (1)")
        await receiver.wait_for(1)
        async with http.post("/api/streams/orders_hook/pause") as r:
            assert (await r.json())["state"] == "paused"
        async with http.get("/api/streams/orders_hook/status") as r:
            st = await r.json()
            assert st["state"] == "paused" and st["events_delivered"] == 1
        async with http.post("/api/streams/nope/pause") as r:
            assert r.status == 404
        async with http.post("/sql", data="SHOW CDC STREAMS;") as r:
            rows = (await r.json())["results"][0]["rows"]
            assert rows[0][0] == "orders_hook"
        async with http.post("/sql", data="SHOW CDC STREAM STATUS nope;") as r:
            assert r.status == 400 and "nope" in (await r.json())["error"]
        async with http.delete("/api/webhooks/orders_hook") as r:
            assert r.status == 204
        async with http.get("/api/streams") as r:
            assert (await r.json())["streams"] == []


async def test_python_api_register_unregister(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    from heliosdb_cdc import OperationType

    pg_db.execute("CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE orders (id int PRIMARY KEY)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        name = await server.register(
            WebhookRegistration(
                url=receiver.url,
                secret="your-webhook-secret",
                tables=["users", "orders"],
                operations=[OperationType.Insert, OperationType.Update],
            )
        )
        pg_db.execute("INSERT INTO users VALUES (1); INSERT INTO orders VALUES (1); DELETE FROM users")
        events = await receiver.wait_for(2)
        assert {e["table"] for e in events} == {"users", "orders"}
        assert name in [h["name"] for h in await server.webhooks()]
        await server.unregister(receiver.url)
        assert await server.webhooks() == []
    assert {e["operation"] for e in receiver.events} == {"INSERT"}


def _port() -> int:
    from heliosdb_cdc._embedded import free_port

    return free_port()
