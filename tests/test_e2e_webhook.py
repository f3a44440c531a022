"""End to end: PostgreSQL -> heliosdb-cdc -> a real, signature-checking HTTP receiver."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from heliosdb_cdc import Config, WebhookRegistration, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver


def make_config(db: PgDatabase, tmp_path: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": db.dsn, "slot": "heliosdb_cdc", "publication": "heliosdb_cdc"},
        "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "retry": {"initial_delay_ms": 10}},
    }
    data.update(extra)
    return Config.model_validate(data)


ORDERS = """
CREATE TABLE orders (
    id serial PRIMARY KEY, customer_id int NOT NULL, total numeric(12,2),
    status text, created_at timestamptz DEFAULT now()
)
"""


async def test_insert_update_delete_delivered_signed(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute(ORDERS)
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(
                url=receiver.url,
                secret="your-webhook-secret",
                tables=["orders"],
                operations=["INSERT", "UPDATE"],
            )
        )
        pg_db.execute("INSERT INTO orders (customer_id, total, status) VALUES (456, 99.99, 'pending')")
        pg_db.execute("UPDATE orders SET status='paid' WHERE id=1")
        pg_db.execute("DELETE FROM orders WHERE id=1")
        pg_db.execute("INSERT INTO orders (customer_id, total, status) VALUES (7, 1.5, 'new')")
        events = sorted(await receiver.wait_for(3), key=lambda e: e["sequence"])
    assert receiver.bad_signatures == 0
    assert [e["operation"] for e in events] == ["INSERT", "UPDATE", "INSERT"]
    first = events[0]
    assert set(first) == {
        "event_id", "timestamp", "sequence", "operation", "database", "table",
        "key", "value", "old_value", "transaction_id",
    }  # fmt: skip
    assert first["table"] == "orders"
    assert first["database"] == pg_db.name
    assert first["key"] == {"id": 1}
    assert first["value"]["total"] == 99.99
    assert first["value"]["status"] == "pending"
    assert first["old_value"] is None
    assert first["transaction_id"].startswith("txn_")
    assert first["timestamp"].endswith("Z")
    assert events[1]["value"]["status"] == "paid"
    seqs = [e["sequence"] for e in events]
    assert seqs == sorted(seqs)
    req = next(r for r in receiver.requests if r.json["event_id"] == first["event_id"])
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-HeliosDB-Event-ID"] == first["event_id"]
    assert "X-HeliosDB-Timestamp" in req.headers


async def test_numeric_digits_and_types(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute(
        """CREATE TYPE mood AS ENUM ('happy', 'sad');
        CREATE TABLE t (
          id bigint PRIMARY KEY, n numeric, f float8, b bool, d date, ts timestamptz,
          iv interval, j jsonb, arr int[], u uuid, by bytea, m mood, tx text)"""
    )
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["t"])
        )
        pg_db.execute(
            """INSERT INTO t VALUES (1, 12345678901234567890.123456789012345678, 'NaN', true,
            '2026-01-04', '2026-01-04 12:00:00+00', '1 day 2 hours', '{"a": [1, 2], "b": null}',
            '{1,2,NULL}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102', 'happy', 'hé "q"')"""
        )
        await receiver.wait_for(1)
    raw = receiver.requests[0].body
    assert b'"n":12345678901234567890.123456789012345678' in raw
    v = receiver.events[0]["value"]
    assert v["f"] == "NaN"
    assert v["b"] is True
    assert v["d"] == "2026-01-04"
    assert v["ts"] == "2026-01-04T12:00:00Z"
    assert v["iv"] == "P1DT2H"
    assert v["j"] == {"a": [1, 2], "b": None}
    assert v["arr"] == [1, 2, None]
    assert v["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert v["by"] == "AQI="
    assert v["m"] == "happy"
    assert v["tx"] == 'hé "q"'


async def test_unchanged_toast_is_not_a_fake_null(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    pg_db.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    cfg = make_config(pg_db, tmp_path)
    big = "x" * 100_000
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["docs"])
        )
        pg_db.execute("INSERT INTO docs VALUES (1, %s, 1)", (big,))
        pg_db.execute("UPDATE docs SET n = 2 WHERE id = 1")
        events = await receiver.wait_for(2)
    assert events[0]["value"]["body"] == big
    assert "body" not in events[1]["value"]  # absent, never null
    assert events[1]["value"]["n"] == 2


@pytest.mark.parametrize("decode_worker", [True, False], ids=["worker", "in-thread"])
async def test_restart_resumes_without_loss(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, decode_worker: bool
) -> None:
    pg_db.execute(ORDERS)
    cfg = make_config(pg_db, tmp_path, cdc={"decode_worker": decode_worker})
    reg = WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["orders"])
    async with WebhookServer(cfg) as server:
        await server.register(reg)
        pg_db.execute("INSERT INTO orders (customer_id) SELECT g FROM generate_series(1, 50) g")
        await receiver.wait_for(50)
    # changes while the service is down
    pg_db.execute("INSERT INTO orders (customer_id) SELECT g FROM generate_series(51, 80) g")
    async with WebhookServer(cfg):
        await receiver.wait_for(80)
        await asyncio.sleep(0.5)
    ids = [e["key"]["id"] for e in receiver.events]
    assert sorted(set(ids)) == list(range(1, 81))
    assert len(ids) == 80  # nothing twice after a clean stop


async def test_wal_level_not_logical_is_one_clear_error(tmp_path: Path) -> None:
    from heliosdb_cdc import SourceError
    from heliosdb_cdc._embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path / "replica", extra_settings={"wal_level": "replica"})
    pg.start()
    try:
        cfg = Config.model_validate(
            {
                "state_dir": str(tmp_path / "state"),
                "source": {"dsn": pg.dsn},
                "webhook": {"bind_address": f"127.0.0.1:{free_port()}"},
            }
        )
        with pytest.raises(SourceError, match=r"wal_level=replica.*ALTER SYSTEM SET wal_level = logical"):
            await WebhookServer(cfg).start()
    finally:
        pg.stop("immediate")
    _ = Decimal
