"""kill -9 of the service while it streams into Kafka: a read_committed consumer
sees every change exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.test_chaos_kill import start_service, wait_healthy, write_workload
from tests.test_kafka_sink import consume

CHANGES = 10_000


@pytest.mark.chaos
async def test_kafka_exactly_once_across_kill_9(
    pg_db: PgDatabase, tmp_path: Path, kafka_bootstrap: str
) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    port = free_port()
    topic = f"items-{pg_db.name}"
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{port}"},
        "streams": [
            {
                "name": "items_kafka",
                "tables": ["items"],
                "destination": {"type": "kafka", "address": kafka_bootstrap, "topic": topic},
            }
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "service.log"
    api = f"http://127.0.0.1:{port}"
    proc = start_service(path, log)
    await wait_healthy(api, proc)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, CHANGES, 11))
    try:
        for _ in range(3):
            await asyncio.sleep(random.uniform(0.5, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start_service(path, log)
            await wait_healthy(api, proc)
        written = await writer
        msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, written, 120.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    events = [orjson.loads(m.value()) for m in msgs]
    ids = [e["event_id"] for e in events]
    print(f"\nkafka chaos: written={written} consumed={len(events)} unique={len(set(ids))}")
    assert len(set(ids)) == written, "changes lost"
    assert len(ids) == written, "duplicates for a read_committed consumer"
    by_part: dict[int, list[dict[str, Any]]] = {}
    for m, e in zip(msgs, events, strict=True):
        by_part.setdefault(m.partition(), []).append(e)
    for part in by_part.values():
        by_key: dict[int, list[int]] = {}
        for e in part:
            by_key.setdefault(e["key"]["id"], []).append(e["sequence"])
        assert all(s == sorted(s) for s in by_key.values())
