"""A dropped replication slot is data loss, never a silent gap: ``run`` refuses to go on
(exit 2, the fix in one line) until ``run --resnapshot`` re-reads the captured tables."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_chaos_kill import wait_healthy


def service(config: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "heliosdb_cdc.cli", "run", "-c", str(config), *extra],
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


def drop_slot(dsn: str, slot: str) -> None:
    """Drop the slot under the running service: end its walsender, drop before it is back."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for _ in range(200):
                cur.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (slot,),
                )
                try:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    return
                except psycopg2.errors.ObjectInUse:
                    time.sleep(0.02)
        raise AssertionError("could not drop the slot")
    finally:
        conn.close()


def fatal_line(log_path: Path) -> str:
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("error: ")]
    assert lines, log_path.read_text()
    return lines[-1]


async def test_dropped_slot_stops_service_and_resnapshot_recovers(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn, "slot": "heliosdb_cdc"},
        "webhook": {"bind_address": f"127.0.0.1:{port}"},
        "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
    }
    config = tmp_path / "heliosdb-cdc.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "svc.log"
    api = f"http://127.0.0.1:{port}"

    proc = service(config, log_path)
    try:
        await wait_healthy(api, proc)
        pg_db.execute("INSERT INTO items VALUES (1, 1)")
        await receiver.wait_for(1)
        drop_slot(pg_db.dsn, "heliosdb_cdc")
        pg_db.execute("INSERT INTO items VALUES (2, 2)")  # committed while the slot is gone
        pg_db.execute("UPDATE items SET v = 10 WHERE id = 1")
        # running: the service refuses to go on, with the way on in one line
        assert proc.wait(30) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = fatal_line(log_path)
    assert "replication slot 'heliosdb_cdc' does not exist" in line
    assert "Fix: run heliosdb-cdc run --resnapshot" in line

    # restarting does not paper over it: same refusal, no new slot
    proc = service(config, log_path)
    assert proc.wait(30) == 2
    assert "--resnapshot" in fatal_line(log_path)
    assert pg_db.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'heliosdb_cdc'") == [
        (0,)
    ]

    # the way on: a new slot, and every captured row re-read
    proc = service(config, log_path, "--resnapshot")
    try:
        await wait_healthy(api, proc)
        events = await receiver.wait_for(3)
        reads = {e["key"]["id"]: e["value"] for e in events if e["operation"] == "READ"}
        assert reads == {1: {"id": 1, "v": 10}, 2: {"id": 2, "v": 2}}
        pg_db.execute("INSERT INTO items VALUES (3, 3)")  # and the live stream goes on
        events = await receiver.wait_for(4)
        assert events[-1]["operation"] == "INSERT" and events[-1]["key"] == {"id": 3}
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
