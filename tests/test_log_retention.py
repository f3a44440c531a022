"""Log retention: segments are deleted by the stream cursors persisted in the state
database, never by cursors that are only in memory (after a crash, streams restart
from the persisted ones and must find every event after them in the log)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config

ROWS = 1500


async def test_segments_after_the_persisted_cursor_are_kept(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, note text)")
    cfg = make_config(pg_db, tmp_path, cdc={"segment_bytes": 64 * 1024})
    async with WebhookServer(cfg) as server:
        assert server.store is not None and server.log is not None
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["items"])
        )
        persisted = server.store.get_cursor(name)
        assert persisted is not None
        # another process holds the state database: checkpoints fail (and retry), so the
        # stream's cursor moves on in memory only
        locker = sqlite3.connect(server.store.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for i in range(0, ROWS, 100):
                pg_db.execute(
                    "INSERT INTO items (note) SELECT repeat('x', 200) FROM generate_series(1, %s)",
                    (min(100, ROWS - i),),
                )
            await receiver.wait_for(ROWS)
            runner = server.runners[name]
            for _ in range(500):
                if runner.cursor >= persisted + ROWS:
                    break
                await asyncio.sleep(0.02)
            assert runner.cursor >= persisted + ROWS
            assert len(server.log._segments) > 3  # the events span several segments
            await server.trim_log()
            # a crash now restarts the stream from the persisted cursor: all still there
            assert server.store.get_cursor(name) == persisted
            recs = server.log.read_disk(persisted + 1, 10 * ROWS)
            assert [r.seq for r in recs] == list(range(persisted + 1, server.log.last_seq + 1))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # once the cursor is persisted, the segments it has passed go
        for _ in range(500):
            if server.store.get_cursor(name) == runner.cursor:
                break
            await asyncio.sleep(0.02)
        before = len(server.log._segments)
        assert await server.trim_log() > 0
        assert len(server.log._segments) < before
