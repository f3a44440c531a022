"""webhook.batch_size > 1: batches go out full, not spread thin over the lanes, and one
row's changes still arrive in commit order."""

from __future__ import annotations

from pathlib import Path

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver


async def test_batches_are_filled_across_lanes_and_rows_stay_in_order(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": pg_db.dsn},
            # 100 lanes (the default) and batches of 100
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "batch_size": 100},
            "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["t"]}],
        }
    )
    async with WebhookServer(cfg):
        pg_db.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 2000) g")
        await receiver.wait_for(2000)
        inserts = len(receiver.requests)
        for _ in range(3):
            pg_db.execute("UPDATE t SET v = v + 1 WHERE id <= 300")
        events = await receiver.wait_for(2900)
    assert receiver.bad_signatures == 0
    # 2,000 changes in batches of up to 100: ~20 requests when batches are filled; spread
    # by key hash over 100 lanes they went out ~10 per request (~200 requests)
    assert inserts <= 40, f"{inserts} requests for 2000 events: {[len(r.json) for r in receiver.requests]}"
    sizes = [len(r.json) for r in receiver.requests]
    assert max(sizes) == 100
    assert sorted(e["sequence"] for e in events) == list(range(1, 2901))
    # one row's changes in commit order, across requests and lanes
    seen: dict[int, list[int]] = {}
    for e in events:
        seen.setdefault(e["key"]["id"], []).append(e["value"]["v"])
    assert all(vs == sorted(vs) for vs in seen.values())
    assert [len(seen[i]) for i in (1, 300, 301, 2000)] == [4, 4, 1, 1]
