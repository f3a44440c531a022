"""kill -9 with the smallest log segments: the log rolls to new segments and deletes
old ones many times during the run, and kills land among those steps. Every committed
change still arrives, in per-key order."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_chaos_kill import start_service, wait_healthy, write_workload

CHANGES = int(os.environ.get("HELIOSDB_CDC_CHAOS_CHANGES", "6000"))
KILLS = int(os.environ.get("HELIOSDB_CDC_CHAOS_KILLS", "4"))
SEGMENT = 64 * 1024  # the smallest cdc.segment_bytes


@pytest.mark.chaos
async def test_kill_9_with_small_segments_loses_nothing(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "cdc": {"segment_bytes": SEGMENT},
        "webhook": {"bind_address": f"127.0.0.1:{port}", "worker_pool_size": 16},
        "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
    }
    config_path = tmp_path / "heliosdb-cdc.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "service.log"
    log_dir = tmp_path / "state" / "log"
    api = f"http://127.0.0.1:{port}"

    proc = start_service(config_path, log_path)
    await wait_healthy(api, proc)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, CHANGES, 11))
    kills = 0
    segment_names: set[str] = set()
    try:
        while kills < KILLS:
            await asyncio.sleep(random.uniform(0.3, 1.5))
            segment_names.update(p.name for p in log_dir.glob("*.log"))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start_service(config_path, log_path)
            await wait_healthy(api, proc)
        written = await writer
        for _ in range(1200):
            segment_names.update(p.name for p in log_dir.glob("*.log"))
            if len({e["event_id"] for e in receiver.events}) >= written:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # housekeeping (every 2 s) deletes what all streams passed
        remaining = sorted(p.name for p in log_dir.glob("*.log"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    events = receiver.events
    first_seen: dict[str, dict[str, Any]] = {}
    for ev in events:
        first_seen.setdefault(ev["event_id"], ev)
    unique = list(first_seen.values())
    print(
        f"\nsmall segments: written={written} delivered={len(events)} unique={len(unique)} "
        f"lost={written - len(unique)} kills={kills} segments seen={len(segment_names)} "
        f"left={len(remaining)}"
    )
    # the log rolled many times, and old segments were deleted during the run
    assert len(segment_names) >= 10
    assert set(segment_names) - set(remaining)
    assert receiver.bad_signatures == 0
    assert len(unique) == written, "changes lost"
    for ev in events:
        assert ev == first_seen[ev["event_id"]]
    by_key: dict[int, list[int]] = {}
    for ev in unique:
        by_key.setdefault(ev["key"]["id"], []).append(ev["sequence"])
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"row {key} out of order"
