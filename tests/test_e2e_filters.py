"""The guide's filtering and transformation examples, as written, against PostgreSQL
and real receivers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from heliosdb_cdc import OperationType, WebhookRegistration, WebhookServer
from heliosdb_cdc.pipeline import EventFilter
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver, start_receiver
from tests.test_e2e_webhook import make_config

GUIDE_FILTERS = """
filters:
  - name: price_changes
    tables:
      - products
    columns:
      products:
        - price
        - discount
  - name: high_value_orders
    tables:
      - orders
    operations:
      - INSERT
    predicate: "total > 1000"
"""

TABLES = """
CREATE TABLE products (id int PRIMARY KEY, name text, price numeric(10,2), discount numeric(5,2), stock int);
ALTER TABLE products REPLICA IDENTITY FULL;
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric(12,2), status text);
"""


async def settle(server: WebhookServer, name: str, processed: int) -> None:
    for _ in range(200):
        st = server.stream_status(name)
        if st["events_processed"] >= processed and st["queue_memory"] == 0:
            return
        await asyncio.sleep(0.05)


async def test_guide_yaml_filters(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute(TABLES)
    cfg = make_config(pg_db, tmp_path, **yaml.safe_load(GUIDE_FILTERS))
    async with WebhookServer(cfg) as server:
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["products", "orders"])
        )
        pg_db.execute("INSERT INTO products VALUES (1, 'pen', 2.50, 0, 10)")  # passes (INSERT)
        pg_db.execute("UPDATE products SET stock = 9 WHERE id = 1")  # filtered: price/discount unchanged
        pg_db.execute("UPDATE products SET price = 3.00 WHERE id = 1")  # passes
        pg_db.execute("INSERT INTO orders VALUES (1, 7, 999.99, 'new')")  # filtered: total <= 1000
        pg_db.execute("INSERT INTO orders VALUES (2, 7, 1000.01, 'new')")  # passes
        pg_db.execute("UPDATE orders SET total = 5000 WHERE id = 1")  # filtered: not INSERT
        await receiver.wait_for(3)
        await settle(server, name, 6)
        status = server.stream_status(name)
    got = sorted((e["table"], e["operation"], e["key"]["id"]) for e in receiver.events)
    assert got == [("orders", "INSERT", 2), ("products", "INSERT", 1), ("products", "UPDATE", 1)]
    assert status["events_filtered"] == 3
    upd = next(e for e in receiver.events if e["operation"] == "UPDATE")
    assert upd["value"]["price"] == 3.0


async def test_guide_transformations(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute(TABLES)
    analytics, runner = await start_receiver(secret="s2")
    try:
        transformations: dict[str, Any] = {
            "transformations": [
                {
                    "name": "slack_format",
                    "target": receiver.url,
                    "template": (
                        "{\n"
                        '  "text": "New {{ operation }} on {{ table }}",\n'
                        '  "blocks": [\n'
                        "    {\n"
                        '      "type": "section",\n'
                        '      "text": {\n'
                        '        "type": "mrkdwn",\n'
                        '        "text": "*{{ operation }}* on `{{ table }}`\\nKey: {{ key }}"\n'
                        "      }\n"
                        "    }\n"
                        "  ]\n"
                        "}\n"
                    ),
                },
                {
                    "name": "extract_fields",
                    "target": analytics.url,
                    "jsonpath": {
                        "order_id": "$.key.id",
                        "customer": "$.value.customer_id",
                        "amount": "$.value.total",
                        "operation": "$.operation",
                    },
                },
            ]
        }
        cfg = make_config(pg_db, tmp_path, **transformations)
        async with WebhookServer(cfg) as server:
            await server.register(
                WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["orders"])
            )
            await server.register(WebhookRegistration(url=analytics.url, secret="s2", tables=["orders"]))
            pg_db.execute("INSERT INTO orders VALUES (123, 456, 99.99, 'pending')")
            slack = (await receiver.wait_for(1))[0]
            data = (await analytics.wait_for(1))[0]
    finally:
        await runner.cleanup()
    assert slack["text"] == "New INSERT on orders"
    assert slack["blocks"][0]["text"]["text"] == '*INSERT* on `orders`\nKey: {"id":123}'
    assert data == {"order_id": 123, "customer": 456, "amount": 99.99, "operation": "INSERT"}
    # the signature covers the transformed body actually sent
    assert receiver.bad_signatures == 0 and analytics.bad_signatures == 0
    assert b"New INSERT" in receiver.requests[0].body


async def test_guide_python_event_filter(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute(TABLES)
    # "status changed" can only be proven with the old row (docs/filtering.md)
    pg_db.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    cfg = make_config(pg_db, tmp_path)
    flt = (
        EventFilter()
        .tables(["orders"])
        .operations([OperationType.Insert, OperationType.Update])
        .columns("orders", ["status"])
        .predicate("total > 100")
    )
    async with WebhookServer(cfg) as server:
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["orders"])
        )
        await server.add_filter(flt, stream=name)
        pg_db.execute("INSERT INTO orders VALUES (1, 1, 50, 'new')")  # total too small
        pg_db.execute("INSERT INTO orders VALUES (2, 1, 500, 'new')")  # passes
        pg_db.execute("UPDATE orders SET total = 600 WHERE id = 2")  # status unchanged
        pg_db.execute("UPDATE orders SET status = 'paid' WHERE id = 2")  # passes
        pg_db.execute("DELETE FROM orders WHERE id = 2")  # operation filtered
        await receiver.wait_for(2)
        await settle(server, name, 5)
    got = [
        (e["operation"], e["value"]["status"]) for e in sorted(receiver.events, key=lambda e: e["sequence"])
    ]
    assert got == [("INSERT", "new"), ("UPDATE", "paid")]


async def test_sql_where_clause_and_bad_predicate(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    from heliosdb_cdc.server._app import ServiceStreamManager
    from heliosdb_cdc.sql import execute

    pg_db.execute(TABLES)
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        manager = ServiceStreamManager(server)
        await execute(
            f"CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK '{receiver.url}' SECRET 'your-webhook-secret' "
            "WHERE 'total > 1000 AND status IN (''new'', ''paid'')' AS 'big_orders';",
            manager,
        )
        try:
            await execute(
                f"CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK '{receiver.url}' WHERE 'total >>> 3' AS 'bad';",
                manager,
            )
            raise AssertionError("a bad predicate was accepted")
        except Exception as exc:
            assert "total >>> 3" in str(exc) or "predicate" in str(exc).lower()
        assert server.store is not None
        assert [r["name"] for r in server.store.list_streams()] == ["big_orders"]
        pg_db.execute(
            "INSERT INTO orders VALUES (1, 1, 5000, 'new'), (2, 1, 5000, 'void'), (3, 1, 10, 'new')"
        )
        await receiver.wait_for(1)
        await settle(server, "big_orders", 3)
    assert [e["key"]["id"] for e in receiver.events] == [1]
