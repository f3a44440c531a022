"""Delivery in worker processes (``delivery: {workers: N}``): every change arrives, one
row's changes in commit order, through retries, a worker killed with SIGKILL, and the
service killed with SIGKILL (which leaves no worker behind); metrics sum over workers."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from heliosdb_cdc import Config, WebhookRegistration, WebhookServer
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._metrics import REGISTRY
from heliosdb_cdc.delivery import RemoteStream, partition_of
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Received, Receiver
from tests.test_chaos_kill import CHANGES, check_deliveries, start_service, wait_healthy, write_workload

ITEMS = "CREATE TABLE items (id serial PRIMARY KEY, v int, note text)"


def make_config(db: PgDatabase, tmp_path: Path, workers: int = 2, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": db.dsn},
        "webhook": {
            "bind_address": f"127.0.0.1:{free_port()}",
            "worker_pool_size": 8,
            "retry": {"initial_delay_ms": 5, "max_delay_ms": 50, "max_attempts": 100},
            "circuit_breaker": {"failure_threshold": 1000},  # retries, not a paused endpoint
        },
        "cdc": {"partitions": 8},
        "delivery": {"workers": workers},
    }
    data.update(extra)
    return Config.model_validate(data)


def write_rows(dsn: str, keys: int, rounds: int) -> int:
    """``keys`` rows inserted, then each updated ``rounds`` times, a few rows a transaction."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        for _ in range(keys):
            cur.execute("INSERT INTO items (v) VALUES (0)")
        conn.commit()
        for r in range(rounds):
            for k in range(1, keys + 1):
                cur.execute("UPDATE items SET v = %s WHERE id = %s", (r + 1, k))
                if k % 7 == 0:
                    conn.commit()
            conn.commit()
    conn.close()
    return keys * (rounds + 1)


def metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def wait_unique(receiver: Receiver, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len({e["event_id"] for e in receiver.events}) < n:
        assert time.monotonic() < deadline, f"{len({e['event_id'] for e in receiver.events})} of {n} arrived"
        await asyncio.sleep(0.1)


def test_partitions_are_stable_and_spread() -> None:
    # the same (table, key) -> the same partition in every process (not hash())
    assert partition_of("public.items", b'{"id":1}', 16) == partition_of("public.items", b'{"id":1}', 16)
    seen = {partition_of("public.items", f'{{"id":{i}}}'.encode(), 16) for i in range(200)}
    assert seen == set(range(16))


async def test_workers_deliver_all_in_key_order_under_retries(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute(ITEMS)
    rnd = random.Random(3)

    def flaky(_: Received) -> int:
        return 503 if rnd.random() < 0.2 else 200

    receiver.respond = flaky
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["items"])
        )
        assert server.supervisor is not None and len(server.supervisor.pids) == 2
        stream = server.runners[name]
        assert isinstance(stream, RemoteStream)
        written = await asyncio.to_thread(write_rows, pg_db.dsn, 40, 20)
        await wait_unique(receiver, written)
        await asyncio.sleep(1.2)  # the workers' next reports
        accepted = len(receiver.requests)
        # each worker delivered its share; the service's counters are their sum
        shares = [r.delivered for r in stream._reports.values()]
        assert len(shares) == 2 and all(s > 0 for s in shares), shares
        assert stream.stats.delivered == sum(shares) == accepted
        labels = {"stream": name, "endpoint": receiver.url}
        assert metric("heliosdb_webhook_delivery_total", status="success", **labels) == accepted
        assert metric("heliosdb_webhook_delivery_total", status="failure", **labels) > 0
        assert metric("heliosdb_webhook_retry_total", **labels) > 0
        assert metric("heliosdb_webhook_delivery_duration_seconds_count", **labels) > 0
        status = server.stream_status(name)
        assert status["events_delivered"] == accepted and status["lag_events"] == 0
    assert receiver.bad_signatures == 0
    check_deliveries(receiver.events, written)


async def test_kill_9_of_a_worker_loses_nothing(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute(ITEMS)
    receiver.fault = lambda _: 0.002  # a receiver slow enough that the kill lands mid-run
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        await server.register(WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["items"]))
        sup = server.supervisor
        assert sup is not None
        writer = asyncio.create_task(asyncio.to_thread(write_rows, pg_db.dsn, 60, 25))
        while len(receiver.events) < 200:
            await asyncio.sleep(0.02)
        victim = sup.pids[0]
        os.kill(victim, signal.SIGKILL)
        written = await writer
        await wait_unique(receiver, written, timeout=90)
        assert victim not in sup.pids and len(sup.pids) == 2  # restarted
        assert sup.status()["restarts"] == 1
    assert receiver.bad_signatures == 0
    check_deliveries(receiver.events, written)
