"""A dead endpoint costs disk, not RAM; when the local log is full, capture waits
(and says why) instead of dropping anything."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


@pytest.mark.parametrize("decode_worker", [True, False], ids=["worker", "in-thread"])
async def test_full_local_log_pauses_capture_then_recovers(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, decode_worker: bool
) -> None:
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    receiver.respond = lambda req: 503
    cfg = make_config(
        pg_db,
        tmp_path,
        cdc={
            "max_log_bytes": 1024 * 1024,
            "segment_bytes": 64 * 1024,
            "memory_queue_events": 100,
            "decode_worker": decode_worker,
        },
        webhook={
            "bind_address": "127.0.0.1:0",
            "retry": {"max_attempts": 10_000, "initial_delay_ms": 20, "max_delay_ms": 100},
            "circuit_breaker": {"failure_threshold": 3, "timeout_secs": 0.2},
        },
    )
    async with WebhookServer(cfg) as server:
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["t"])
        )
        for start in range(1, 4001, 100):  # 40 transactions
            pg_db.execute(
                "INSERT INTO t SELECT g, repeat('p', 500) FROM generate_series(%s, %s) g", (start, start + 99)
            )
        reason = None
        for _ in range(200):
            reason = server.stream_status(name)["capture_paused"]
            if reason:
                break
            await asyncio.sleep(0.05)
        assert reason is not None and "cdc.max_log_bytes" in reason
        status = server.stream_status(name)
        # everything captured is waiting (in flight in memory, up to the runner's bound, or
        # still only in the local log): nothing was dropped to make room
        assert status["queue_memory"] + status["queue_overflow"] == server.capture.status.events
        assert server.capture is not None and server.capture.status.events < 4000
        # the endpoint recovers: everything arrives, capture resumes
        receiver.respond = None
        await receiver.wait_for(4000, timeout=90)
        for _ in range(100):
            if not server.stream_status(name)["capture_paused"]:
                break
            await asyncio.sleep(0.1)
        assert server.stream_status(name)["capture_paused"] is None
    assert sorted({e["key"]["id"] for e in receiver.events}) == list(range(1, 4001))
