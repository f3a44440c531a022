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
from heliosdb_cdc._config import Destination, StreamConfig
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._errors import SqlError
from heliosdb_cdc._metrics import REGISTRY
from heliosdb_cdc.delivery import RemoteStream, fold_cursors, partition_of, stream_floor
from heliosdb_cdc.journal import LocalLog, LogFollower, Record
from heliosdb_cdc.store import SQLiteStore
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


async def test_log_follower_sees_only_what_is_announced(tmp_path: Path) -> None:
    """A worker's read-only view of the local log: records up to the announced durable
    position, across a segment roll and after old segments are deleted."""
    owner = LocalLog(tmp_path / "log", segment_bytes=64 * 1024)
    owner.open()
    follower = LogFollower(tmp_path / "log")
    follower.open()
    follower.bind_loop(asyncio.get_running_loop())

    def append(first: int, n: int) -> None:
        recs = [
            Record(s, s, 0, 1, "public.items", b'{"id":%d}' % s, b"x" * 200, 0)
            for s in range(first, first + n)
        ]
        owner.append(recs, [(first + n - 1, first, first + 1, 0)], [0] * n + [1])

    append(1, 100)
    assert await follower.read(1, 10) == []  # written, not announced: not there yet
    owner.sync_to_disk()
    waiter = asyncio.create_task(follower.wait_beyond(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    follower.advance(owner.durable.seq)
    await asyncio.wait_for(waiter, 1)
    assert [r.seq for r in await follower.read(1, 1000)] == list(range(1, 101))
    for i in range(10):  # several segments
        append(101 + i * 100, 100)
        owner.sync_to_disk()
    follower.advance(owner.durable.seq)
    got = await follower.read(950, 100)
    assert [r.seq for r in got] == list(range(950, 1050)) and got[0].key == b'{"id":950}'
    assert owner.truncate_before(900) > 0
    follower.advance(owner.durable.seq)
    assert [r.seq for r in await follower.read(1001, 5)] == [1001, 1002, 1003, 1004, 1005]
    owner.close()


def test_partition_cursors_fold_when_the_partitioning_changes(tmp_path: Path) -> None:
    """workers: 2 -> 1 (or another cdc.partitions): the stream resumes from its lowest
    partition cursor, never past an event some partition has not delivered."""
    store = SQLiteStore(tmp_path)
    store.create_stream("s", {}, "sql", "running")
    store.checkpoint("s", 10)
    fold_cursors(store, ["s"], 4)  # first run with workers: nothing to fold
    assert store.get_meta("delivery:partitions") == "4"
    store.checkpoint("s", 50, partitions=[0, 2])
    store.checkpoint("s", 30, partitions=[1])
    fold_cursors(store, ["s"], 4)  # same partitioning: kept as they are
    assert store.partition_cursors("s") == {0: 50, 1: 30, 2: 50}
    assert stream_floor(10, store.partition_cursors("s"), 4) == 10  # partition 3: the stream's
    store.checkpoint("s", 40, partitions=[3])
    fold_cursors(store, ["s"], None)  # back to one process
    assert store.get_cursor("s") == 30 and store.partition_cursors("s") == {}
    assert store.get_meta("delivery:partitions") is None
    store.close()


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
        # a snapshot is refused (workers do not run them), and nothing is created
        with pytest.raises(SqlError, match=r"SNAPSHOT INITIAL needs delivery\.workers: 1"):
            await server.create_stream(
                StreamConfig(
                    name="with_snapshot",
                    tables=["items"],
                    destination=Destination(type="webhook", address=receiver.url),
                    snapshot="initial",
                )
            )
        assert server.store is not None and not server.store.has_stream("with_snapshot")
        with pytest.raises(SqlError, match=r"need delivery\.workers: 1"):
            await server.start_snapshot(name, "backfill")
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


async def test_kill_9_of_a_worker_loses_nothing(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute(ITEMS)
    receiver.fault = lambda _: 0.002  # a receiver slow enough that the kill lands mid-run
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["items"])
        )
        sup = server.supervisor
        assert sup is not None
        writer = asyncio.create_task(asyncio.to_thread(write_rows, pg_db.dsn, 60, 25))
        while len(receiver.events) < 200:
            await asyncio.sleep(0.02)
        victim = sup.pids[0]
        restarts_before = metric("heliosdb_cdc_delivery_worker_restarts_total")
        os.kill(victim, signal.SIGKILL)
        written = await writer
        await wait_unique(receiver, written, timeout=90)
        assert victim not in sup.pids and len(sup.pids) == 2  # restarted
        assert sup.status()["restarts"] == 1
        assert metric("heliosdb_cdc_delivery_worker_restarts_total") == restarts_before + 1
    assert receiver.bad_signatures == 0
    check_deliveries(receiver.events, written)


# -- the service as users run it (the CLI), killed with SIGKILL -------------------------
def children(pid: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is ``pid``."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


def worker_pids(service_pid: int) -> list[int]:
    return sorted(p for p, cmd in children(service_pid).items() if "spawn_main" in cmd)


async def wait_workers(service_pid: int, n: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := worker_pids(service_pid)) < n:
        assert time.monotonic() < deadline, f"{len(pids)} of {n} workers running"
        await asyncio.sleep(0.05)
    return pids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def cli_config(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> tuple[Path, str]:
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{port}", "worker_pool_size": 16},
        "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
        "delivery": {"workers": 2},
    }
    path = tmp_path / "heliosdb-cdc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_kill_9_of_the_service_leaves_no_worker(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute(ITEMS)
    config_path, api = cli_config(pg_db, receiver, tmp_path)
    proc = start_service(config_path, tmp_path / "service.log")
    try:
        await wait_healthy(api, proc)
        workers = await wait_workers(proc.pid, 2)
        everything = list(children(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in everything) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not [p for p in everything if alive(p)], f"left behind: {everything} (workers {workers})"
        # a new service starts its own workers and delivers from the checkpoints
        proc = start_service(config_path, tmp_path / "service.log")
        await wait_healthy(api, proc)
        await wait_workers(proc.pid, 2)
        written = await asyncio.to_thread(write_rows, pg_db.dsn, 10, 2)
        await wait_unique(receiver, written)
    finally:
        stop(proc)
    check_deliveries(receiver.events, written)


@pytest.mark.chaos
async def test_chaos_kill_9_workers_and_service(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    """The chaos suite with ``delivery: {workers: 2}``: 3x kill -9 of a worker and 3x of the
    service during HELIOSDB_CDC_CHAOS_CHANGES (default 10,000; the issue's run: 50,000)
    mixed changes -> 0 lost, per-key order kept, duplicates only with a repeated event_id."""
    pg_db.execute(ITEMS)
    config_path, api = cli_config(pg_db, receiver, tmp_path)
    log_path = tmp_path / "service.log"
    proc = start_service(config_path, log_path)
    await wait_healthy(api, proc)
    await wait_workers(proc.pid, 2)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, CHANGES, 11))
    plan = ["worker", "service"] * 3
    random.Random(5).shuffle(plan)
    try:
        for what in plan:
            await asyncio.sleep(random.uniform(0.3, 1.2))
            if what == "worker":
                victim = random.choice(await wait_workers(proc.pid, 2))
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while victim in worker_pids(proc.pid) or len(worker_pids(proc.pid)) < 2:
                    assert time.monotonic() < deadline, "the worker was not restarted"
                    await asyncio.sleep(0.05)
            else:
                everything = list(children(proc.pid))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                deadline = time.monotonic() + 10
                while any(alive(p) for p in everything):
                    assert time.monotonic() < deadline, "a worker outlived the service"
                    await asyncio.sleep(0.05)
                proc = start_service(config_path, log_path)
                await wait_healthy(api, proc)
        written = await writer
        await wait_unique(receiver, written, timeout=180)
        await asyncio.sleep(1.0)  # anything more would be a duplicate
    finally:
        stop(proc)
    events = receiver.events
    assert receiver.bad_signatures == 0
    unique = {e["event_id"] for e in events}
    print(
        f"\nchaos workers=2: written={written} delivered={len(events)} duplicates={len(events) - len(unique)}"
    )
    check_deliveries(events, written)
