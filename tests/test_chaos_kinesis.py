"""kill -9 of the service while it streams into Kinesis (moto): nothing lost, per-key
order, and no event put twice (the restart reads what the last run put)."""

from __future__ import annotations

import asyncio
import os
import random
import re
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
from tests.test_kinesis_sink import _boto, create_stream

CHANGES = int(os.environ.get("HELIOSDB_CDC_CHAOS_CHANGES", "6000"))
KILLS = 2


def read_shards(endpoint: str, stream: str) -> list[list[dict[str, Any]]]:
    """Every shard's events, in shard order."""
    client = _boto(endpoint)
    out = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        events: list[dict[str, Any]] = []
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10000)
            events.extend(orjson.loads(r["Data"]) for r in resp["Records"])
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
        out.append(events)
    return out


async def wait_for_records(endpoint: str, stream: str, want: int, timeout: float = 120) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        shards = await asyncio.to_thread(read_shards, endpoint, stream)
        if len({e["event_id"] for s in shards for e in s}) >= want:
            return
        await asyncio.sleep(0.5)


@pytest.mark.chaos
@pytest.mark.kinesis
async def test_kinesis_kill_9_no_loss_no_duplicates(
    pg_db: PgDatabase, tmp_path: Path, kinesis_endpoint: str
) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    stream = create_stream(kinesis_endpoint, shards=2)
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{port}"},
        "streams": [
            {
                "name": "items_kinesis",
                "tables": ["items"],
                "destination": {
                    "type": "kinesis",
                    "address": stream,
                    "region": "us-east-1",
                    "options": {"endpoint_url": kinesis_endpoint},
                },
            }
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "service.log"
    api = f"http://127.0.0.1:{port}"
    proc = start_service(path, log)
    await wait_healthy(api, proc)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, CHANGES, 13))
    try:
        for _ in range(KILLS):
            # kill while records are being put: wait until some arrived since the last start
            await asyncio.sleep(random.uniform(0.5, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start_service(path, log)
            await wait_healthy(api, proc)
        written = await writer
        await wait_for_records(kinesis_endpoint, stream, written)
        await asyncio.sleep(1.0)  # anything more would be a duplicate
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    shards = read_shards(kinesis_endpoint, stream)
    events = [e for s in shards for e in s]
    ids = [e["event_id"] for e in events]
    scanned = [int(n) for n in re.findall(r"read (\d+) records from", log.read_text())]
    print(
        f"\nkinesis chaos: written={written} records={len(ids)} unique={len(set(ids))} "
        f"duplicates={len(ids) - len(set(ids))} records read at restarts={scanned}"
    )
    assert len(set(ids)) == written, "changes lost"
    assert len(ids) == written, "events put twice"
    for shard in shards:
        by_key: dict[int, list[int]] = {}
        for e in shard:
            by_key.setdefault(e["key"]["id"], []).append(e["sequence"])
        assert all(s == sorted(s) for s in by_key.values()), "a row's events out of order"
