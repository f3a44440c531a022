"""kill -9 of the service in the middle of a workload: every committed change
still arrives, in per-key order, signed; duplicates only with a repeated event id."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
import yaml

from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver

CHANGES = int(os.environ.get("HELIOSDB_CDC_CHAOS_CHANGES", "10000"))
KILLS = int(os.environ.get("HELIOSDB_CDC_CHAOS_KILLS", "3"))


def start_service(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "heliosdb_cdc.cli", "run", "-c", str(config_path)],
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"service exited with {proc.returncode}")
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("service did not become healthy")


def write_workload(dsn: str, changes: int, seed: int) -> int:
    """Mixed inserts/updates/deletes in small transactions; returns rows changed."""
    rnd = random.Random(seed)
    conn = psycopg2.connect(dsn)
    written = 0
    max_id = 0
    with conn.cursor() as cur:
        while written < changes:
            for _ in range(rnd.randint(1, 10)):
                r = rnd.random()
                if r < 0.5 or max_id < 20:
                    cur.execute(
                        "INSERT INTO items (v, note) VALUES (%s, %s) RETURNING id",
                        (rnd.randint(0, 10**6), "n" * rnd.randint(0, 50)),
                    )
                    max_id = max(max_id, cur.fetchone()[0])  # type: ignore[index]
                    written += 1
                elif r < 0.85:
                    cur.execute("UPDATE items SET v = v + 1 WHERE id = %s", (rnd.randint(1, max_id),))
                    written += cur.rowcount
                else:
                    cur.execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, max_id),))
                    written += cur.rowcount
            conn.commit()
    conn.close()
    return written


@pytest.mark.chaos
async def test_kill_9_restarts_lose_nothing(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{port}", "worker_pool_size": 16},
        "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
    }
    config_path = tmp_path / "heliosdb-cdc.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "service.log"
    api = f"http://127.0.0.1:{port}"

    proc = start_service(config_path, log_path)
    await wait_healthy(api, proc)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, CHANGES, 7))
    kills = 0
    try:
        while kills < KILLS:
            await asyncio.sleep(random.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start_service(config_path, log_path)
            await wait_healthy(api, proc)
        written = await writer
        # duplicates count in receiver.events: wait for the distinct ids
        for _ in range(1200):
            if len({e["event_id"] for e in receiver.events}) >= written:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything more would be a duplicate
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    events = receiver.events
    assert receiver.bad_signatures == 0
    first_seen: dict[str, dict[str, Any]] = {}
    for ev in events:
        first_seen.setdefault(ev["event_id"], ev)
    unique = list(first_seen.values())
    duplicates = len(events) - len(unique)
    print(
        f"\nchaos: written={written} delivered={len(events)} unique={len(unique)} "
        f"duplicates={duplicates} lost={written - len(unique)} kills={kills}"
    )
    assert len(unique) == written, "changes lost"
    # a repeated event id always carries the same content
    for ev in events:
        assert ev == first_seen[ev["event_id"]]
    # per-key order: first deliveries of one row arrive in commit order
    by_key: dict[int, list[int]] = {}
    for ev in unique:
        by_key.setdefault(ev["key"]["id"], []).append(ev["sequence"])
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"row {key} out of order"
    assert (
        sorted(e["sequence"] for e in unique) == list(range(1, written + 1))
        or len({e["sequence"] for e in unique}) == written
    )
