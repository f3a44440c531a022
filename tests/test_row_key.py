"""An event's ``key`` is the row's primary key (or replica identity index) whatever the
table's REPLICA IDENTITY, so per-row order holds through retries under FULL too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_cdc import WebhookRegistration, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Received, Receiver
from tests.test_e2e_webhook import make_config

ROWS = 6


@pytest.mark.parametrize(
    ("identity", "key_col", "decode_worker"),
    [
        ("DEFAULT", "id", False),
        ("FULL", "id", False),
        ("FULL", "id", True),  # the catalog's key reaches the decoder in its worker process too
        ("USING INDEX rk_code", "code", False),
    ],
)
async def test_key_and_per_row_order_under_every_replica_identity(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, identity: str, key_col: str, decode_worker: bool
) -> None:
    pg_db.execute(
        "CREATE TABLE rk (id int PRIMARY KEY, code text NOT NULL, n int);"
        "CREATE UNIQUE INDEX rk_code ON rk (code);"
        f"ALTER TABLE rk REPLICA IDENTITY {identity}"
    )
    failed: set[bytes] = set()

    def fail_first_insert_attempt(item: Received) -> int:
        ev = item.json
        if ev["operation"] == "INSERT" and item.body not in failed:
            failed.add(item.body)
            return 503  # retried after a delay; the row's UPDATE is captured meanwhile
        return 200

    receiver.respond = fail_first_insert_attempt
    webhook: dict[str, Any] = {
        "bind_address": f"127.0.0.1:{free_port()}",
        "retry": {"initial_delay_ms": 300, "jitter": False},
        "circuit_breaker": {"failure_threshold": 1000},
        "worker_pool_size": 16,
        "batch_size": 1,
    }
    cfg = make_config(pg_db, tmp_path, webhook=webhook, cdc={"decode_worker": decode_worker})
    async with WebhookServer(cfg) as server:
        await server.register(WebhookRegistration(url=receiver.url, secret=receiver.secret, tables=["rk"]))
        for i in range(ROWS):
            pg_db.execute("INSERT INTO rk VALUES (%s, %s, 0)", (i, f"c{i}"))
            pg_db.execute("UPDATE rk SET n = 1 WHERE id = %s", (i,))
        events = await receiver.wait_for(2 * ROWS)
    assert len(failed) == ROWS
    per_row: dict[int, list[dict[str, Any]]] = {}
    for ev in events:
        per_row.setdefault(ev["value"]["id"], []).append(ev)
    for i, evs in per_row.items():
        want = {key_col: i if key_col == "id" else f"c{i}"}
        assert [e["key"] for e in evs] == [want, want], identity
        assert [e["operation"] for e in evs] == ["INSERT", "UPDATE"], f"row {i} out of order ({identity})"
    assert len(per_row) == ROWS


async def test_backfill_keys_rows_like_change_events(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    """READ events of a backfill carry the same key as the row's change events."""
    pg_db.execute(
        "CREATE TABLE rk (id int PRIMARY KEY, code text NOT NULL, n int);"
        "CREATE UNIQUE INDEX rk_code ON rk (code);"
        "ALTER TABLE rk REPLICA IDENTITY USING INDEX rk_code;"
        "INSERT INTO rk VALUES (1, 'a', 0)"
    )
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret=receiver.secret, tables=["rk"])
        )
        await server.start_snapshot(name, "backfill", None)
        await receiver.wait_for(1)
        pg_db.execute("UPDATE rk SET n = 1 WHERE id = 1")
        events = await receiver.wait_for(2)
    assert [e["operation"] for e in events] == ["READ", "UPDATE"]
    assert [e["key"] for e in events] == [{"code": "a"}, {"code": "a"}]
