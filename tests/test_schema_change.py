"""Schema changes become one SCHEMA_CHANGE event; following events carry the new shape."""

from __future__ import annotations

from pathlib import Path

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


async def test_add_column_mid_stream(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["orders"])
        )
        pg_db.execute("INSERT INTO orders VALUES (1, 10)")
        await receiver.wait_for(1)
        pg_db.execute("ALTER TABLE orders ADD COLUMN note text")
        pg_db.execute("INSERT INTO orders VALUES (2, 20, 'hi')")
        pg_db.execute("INSERT INTO orders VALUES (3, 30, 'yo')")
        events = sorted(await receiver.wait_for(4), key=lambda e: e["sequence"])
    ops = [e["operation"] for e in events]
    assert ops == ["INSERT", "SCHEMA_CHANGE", "INSERT", "INSERT"]
    sc = events[1]
    assert sc["value"]["added"] == ["note"]
    assert [c["name"] for c in sc["value"]["columns"]] == ["id", "total", "note"]
    assert [c["name"] for c in sc["old_value"]["columns"]] == ["id", "total"]
    assert events[2]["value"] == {"id": 2, "total": 20, "note": "hi"}


async def test_schema_change_while_stopped_is_reported_on_restart(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b int)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["t"])
        )
        pg_db.execute("INSERT INTO t VALUES (1, 1, 1)")
        await receiver.wait_for(1)
    pg_db.execute("ALTER TABLE t DROP COLUMN b")
    pg_db.execute("ALTER TABLE t ALTER COLUMN a TYPE bigint")
    pg_db.execute("INSERT INTO t VALUES (2, 2)")
    async with WebhookServer(cfg):
        events = sorted(await receiver.wait_for(3), key=lambda e: e["sequence"])
    assert [e["operation"] for e in events] == ["INSERT", "SCHEMA_CHANGE", "INSERT"]
    assert events[1]["value"]["dropped"] == ["b"]
    assert events[1]["value"]["type_changed"] == ["a"]
    assert events[2]["value"] == {"id": 2, "a": 2}
