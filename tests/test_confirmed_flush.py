"""What capture confirms to PostgreSQL never runs ahead of what the local log holds
durably: ``confirmed_flush_lsn`` of the slot, polled while capture runs many batches,
is at most the end LSN of the last fsynced transaction in the log, or a keepalive's
WAL end that no captured transaction lies before (psycopg2 moves the flush position
there by itself once everything received is confirmed)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import psycopg2

from heliosdb_cdc.delivery._locallog import _U64, KIND_COMMIT, LocalLog, _iter_frames, _parse_payload
from heliosdb_cdc.postgres import Capture
from heliosdb_cdc.postgres._protocol import parse_lsn
from heliosdb_cdc.postgres._setup import ensure_publication, ensure_slot
from tests.plugins.postgres import PgDatabase

TXNS = 400


def commit_end_lsns(directory: Path) -> list[int]:
    """The end LSN of every transaction the log holds, read from its files."""
    out = []
    for path in sorted(directory.glob("*.log")):
        with open(path, "rb") as f:
            frames, _ = _iter_frames(f)
        for _off, payload in frames:
            _seq, lsn, _ts, kind, _t, key, _b, _i = _parse_payload(payload)
            if kind == KIND_COMMIT:
                assert _U64.unpack(key)[0] < lsn
                out.append(lsn)
    return out


def write(dsn: str, stop: threading.Event) -> int:
    """Small transactions on a published table, some WAL on an unpublished one."""
    rnd = random.Random(3)
    rows = 0
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        for i in range(TXNS):
            n = rnd.randint(1, 20)
            cur.execute("INSERT INTO items (v) SELECT g FROM generate_series(1, %s) g", (n,))
            rows += n
            if i % 7 == 0:  # WAL no transaction of ours is in: keepalives move past it
                cur.execute("INSERT INTO other (v) VALUES (1)")
            conn.commit()
            if i % 50 == 0:
                time.sleep(0.05)
    conn.close()
    stop.set()
    return rows


def test_confirmed_flush_lsn_never_passes_the_durable_log(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int)")
    pg_db.execute("CREATE TABLE other (id serial PRIMARY KEY, v int)")
    slot = f"cf_{pg_db.name}"
    conn = pg_db.connect()
    ensure_publication(conn, "cf_pub", ["public.items"])
    ensure_slot(conn, slot)
    log = LocalLog(tmp_path / "log", segment_bytes=64 * 1024)  # real fsyncs; rolls too
    log.open()
    capture = Capture(
        pg_db.dsn, slot, "cf_pub", pg_db.name, log, batch_size=40, poll_interval_ms=5, status_interval=1.0
    )
    capture.start()
    stop = threading.Event()
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(write(pg_db.dsn, stop)))
    writer.start()
    seen: list[tuple[int, int]] = []  # (confirmed_flush_lsn, durable end LSN read just after)
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                cur.execute(
                    "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                )
                confirmed = parse_lsn(cur.fetchone()[0])
                seen.append((confirmed, log.durable.end_lsn))
                if stop.is_set() and result and capture.status.events >= result[0]:
                    break
                time.sleep(0.002)
        writer.join()
        assert capture.status.events == result[0], "capture did not catch up"
    finally:
        capture.stop()
        log.close()
        conn.close()

    commits = sorted(commit_end_lsns(tmp_path / "log"))
    assert len(commits) >= TXNS  # every transaction is in the log (plus empty ones)
    assert len(list((tmp_path / "log").glob("*.log"))) > 1  # and segments rolled
    advanced = [c for c, d in seen if c > d]
    ahead = [(c, d) for c, d in seen if c > d and any(d < e <= c for e in commits)]
    print(f"\n{len(seen)} polls, {len(advanced)} past the log's end by a keepalive")
    assert len({c for c, _ in seen}) > 20  # it was confirmed batch after batch
    assert not ahead, f"confirmed ahead of the durable log: {ahead[:5]}"
