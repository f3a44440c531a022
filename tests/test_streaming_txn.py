"""Large transactions with protocol v2 streaming: spooled to disk until commit,
dropped on abort, subtransaction rollbacks respected."""

from __future__ import annotations

from pathlib import Path

from heliosdb_cdc import WebhookRegistration, WebhookServer
from heliosdb_cdc._embedded import EmbeddedPostgres
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


async def test_streamed_large_transactions(receiver: Receiver, tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", extra_settings={"logical_decoding_work_mem": "64kB"})
    pg.start()
    try:
        db = PgDatabase.__new__(PgDatabase)
        db.server, db.name, db.dsn = pg, "postgres", pg.dsn  # type: ignore[attr-defined]
        db.execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        cfg = make_config(db, tmp_path, source={"dsn": pg.dsn, "streaming": True})
        async with WebhookServer(cfg) as server:
            await server.register(
                WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["big"])
            )
            conn = db.connect()
            conn.autocommit = False
            with conn.cursor() as cur:
                # aborted large transaction: nothing of it arrives
                cur.execute(
                    "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(100001, 105000) g"
                )
                conn.rollback()
                # committed large transaction with a rolled-back subtransaction inside
                cur.execute("INSERT INTO big SELECT g, repeat('y', 200) FROM generate_series(1, 3000) g")
                cur.execute("SAVEPOINT s1")
                cur.execute(
                    "INSERT INTO big SELECT g, repeat('z', 200) FROM generate_series(200001, 202000) g"
                )
                cur.execute("ROLLBACK TO SAVEPOINT s1")
                cur.execute("INSERT INTO big SELECT g, repeat('y', 200) FROM generate_series(3001, 5000) g")
                conn.commit()
            conn.close()
            db.execute("INSERT INTO big VALUES (9999999, 'after')")
            await receiver.wait_for(5001, timeout=90)
            streamed = server.capture is not None
        ids = sorted(e["key"]["id"] for e in receiver.events)
        assert ids == [*range(1, 5001), 9999999]
        txns = {e["transaction_id"] for e in receiver.events if e["key"]["id"] <= 5000}
        assert len(txns) == 1
        seqs = [e["sequence"] for e in sorted(receiver.events, key=lambda e: e["key"]["id"])]
        assert seqs == sorted(seqs)
        assert streamed
        stats = db.execute("SELECT stream_txns FROM pg_stat_replication_slots")
        assert stats and stats[0][0] >= 2  # the server really streamed them
    finally:
        pg.stop("immediate")
