"""A checkpoint that fails (state database locked by another process) keeps the
exactly-once delivery records it took: the next checkpoint saves them all."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


async def wait_until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_failed_checkpoint_keeps_the_delivery_records(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, note text)")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        store, once = server.store, server.exactly_once
        assert store is not None and once is not None
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["items"])
        )
        runner = server.runners[name]
        store._db.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]  # fail fast
        locker = sqlite3.connect(store.path, isolation_level=None)  # type: ignore[attr-defined]
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the state database
        try:
            pg_db.execute("INSERT INTO items (note) SELECT 'n' || g FROM generate_series(1, 20) g")
            events = await receiver.wait_for(20)
            await wait_until(lambda: "checkpoint failed" in (runner.stats.last_error or ""))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await wait_until(lambda: store.get_cursor(name) == runner.cursor)
        url = receiver.url
        missing = [e["event_id"] for e in events if not await once.was_delivered(e["event_id"], url)]
    assert len(events) == 20
    assert missing == []
