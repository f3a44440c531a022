"""The state directory fills up: a clear error, no corruption, and every change
arrives once space returns."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (the tests run as root, in CI too)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_then_space_returns(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, small_disk: Path
) -> None:
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    receiver.respond = lambda req: 503  # nothing can be trimmed from the local log
    cfg = make_config(
        pg_db,
        tmp_path,
        state_dir=str(small_disk / "state"),
        cdc={"segment_bytes": 64 * 1024, "memory_queue_events": 100},
        source={"dsn": pg_db.dsn, "reconnect_max_delay_secs": 0.5},
        webhook={
            "bind_address": "127.0.0.1:0",
            "retry": {"max_attempts": 100_000, "initial_delay_ms": 20, "max_delay_ms": 100},
            "circuit_breaker": {"failure_threshold": 3, "timeout_secs": 0.2},
        },
    )
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["t"])
        )
        for start in range(1, 6001, 200):
            pg_db.execute(
                "INSERT INTO t SELECT g, repeat('p', 400) FROM generate_series(%s, %s) g",
                (start, start + 199),
            )
        assert server.capture is not None
        error = None
        for _ in range(300):
            error = server.capture.status.last_error
            if error:
                break
            await asyncio.sleep(0.05)
        assert error is not None and "No space left on device" in error
        # space returns and the endpoint recovers: everything arrives
        subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
        receiver.respond = None
        await receiver.wait_for(6000, timeout=120)
    ids = [e["key"]["id"] for e in receiver.events]
    assert sorted(set(ids)) == list(range(1, 6001))
