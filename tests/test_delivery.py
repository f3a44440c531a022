"""Delivery against real receivers: retries, 4xx dead letters, isolation, circuit, pause/resume."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from heliosdb_cdc import CircuitState, WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver, start_receiver
from tests.test_e2e_webhook import make_config

SECRET = "your-webhook-secret"


async def wait_until(cond: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def setup_table(db: PgDatabase) -> None:
    db.execute("CREATE TABLE orders (id serial PRIMARY KEY, total numeric, status text)")


async def test_5xx_is_retried_then_delivered(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    setup_table(pg_db)
    calls = {"n": 0}

    def flaky(_: Any) -> int:
        calls["n"] += 1
        return 503 if calls["n"] <= 2 else 200

    receiver.respond = flaky
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        name = await server.register(WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"]))
        pg_db.execute("INSERT INTO orders (total) VALUES (10)")
        events = await receiver.wait_for(1)
        await wait_until(lambda: server.stream_status(name)["events_delivered"] == 1)
        status = server.stream_status(name)
    assert calls["n"] == 3
    assert events[0]["value"]["total"] == 10
    assert status["events_retried"] == 2
    assert status["events_delivered"] == 1


async def test_4xx_goes_to_dead_letters_and_replays(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    setup_table(pg_db)
    receiver.respond = lambda req: 422 if req.json["value"]["status"] == "bad" else 200
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        name = await server.register(WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"]))
        pg_db.execute("INSERT INTO orders (status) VALUES ('bad'), ('good')")
        await receiver.wait_for(1)
        for _ in range(50):
            if server.store and server.store.count_dead_letters(name):
                break
            await asyncio.sleep(0.05)
        assert server.store is not None
        dead = server.store.list_dead_letters(name)
        assert len(dead) == 1
        assert dead[0]["error"] == "HTTP 422"
        assert dead[0]["attempts"] == 1
        # the receiver is fixed; replay delivers it and empties the dead letters
        receiver.respond = None
        assert await server.replay_dead_letters() == 1
        assert server.store.count_dead_letters(name) == 0
        assert await server.exactly_once.was_delivered(dead[0]["event_id"], receiver.url)  # type: ignore[union-attr]
    assert sorted(e["value"]["status"] for e in receiver.events) == ["bad", "good"]


async def test_dead_endpoint_does_not_block_a_healthy_one(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    setup_table(pg_db)
    sick, sick_runner = await start_receiver(secret=SECRET)
    sick.respond = lambda req: 500
    cfg = make_config(
        pg_db,
        tmp_path,
        webhook={
            "bind_address": "127.0.0.1:0",
            "retry": {"max_attempts": 1000, "initial_delay_ms": 10, "max_delay_ms": 50},
            "circuit_breaker": {
                "failure_threshold": 3,
                "timeout_secs": 0.3,
                "success_threshold": 1,
            },
        },
    )
    try:
        async with WebhookServer(
            cfg,
        ) as server:
            await server.register(
                WebhookRegistration(url=sick.url, secret=SECRET, tables=["orders"], name="sick")
            )
            await server.register(
                WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"], name="ok")
            )
            pg_db.execute("INSERT INTO orders (total) SELECT g FROM generate_series(1, 20) g")
            await receiver.wait_for(20)
            await asyncio.sleep(0.3)
            assert await server.circuit_breaker.get_state(sick.url) in (
                CircuitState.OPEN,
                CircuitState.HALF_OPEN,
            )
            assert server.stream_status("sick")["events_delivered"] == 0
            # the endpoint recovers: the waiting events arrive, nothing was dropped
            sick.respond = None
            await sick.wait_for(20, timeout=20)
            assert await server.circuit_breaker.get_state(sick.url) is CircuitState.CLOSED
            assert server.stream_status("sick")["dead_letters"] == 0
    finally:
        await sick_runner.cleanup()
    assert sorted(e["value"]["total"] for e in sick.events) == list(range(1, 21))


async def test_pause_resume_keeps_changes(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    setup_table(pg_db)
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        name = await server.register(WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"]))
        pg_db.execute("INSERT INTO orders (total) VALUES (1)")
        await receiver.wait_for(1)
        await server.set_paused(name, True)
        pg_db.execute("INSERT INTO orders (total) VALUES (2), (3)")
        await asyncio.sleep(0.5)
        assert len(receiver.events) == 1
        assert server.stream_status(name)["state"] == "paused"
        await server.set_paused(name, False)
        await receiver.wait_for(3)
    # paused state survives a restart
    async with WebhookServer(cfg) as server:
        await server.set_paused(name, True)
    async with WebhookServer(cfg) as server:
        assert server.stream_status(name)["state"] == "paused"
        pg_db.execute("INSERT INTO orders (total) VALUES (4)")
        await asyncio.sleep(0.5)
        assert len(receiver.events) == 3
        await server.set_paused(name, False)
        await receiver.wait_for(4)
    assert sorted(e["value"]["total"] for e in receiver.events) == [1, 2, 3, 4]


async def test_per_key_order_under_concurrency_and_retries(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    setup_table(pg_db)
    import random

    rnd = random.Random(3)
    receiver.respond = lambda req: 503 if rnd.random() < 0.2 else 200
    cfg = make_config(
        pg_db,
        tmp_path,
        webhook={
            "bind_address": "127.0.0.1:0",
            "worker_pool_size": 8,
            "retry": {"max_attempts": 100, "initial_delay_ms": 1, "max_delay_ms": 5},
            "circuit_breaker": {"failure_threshold": 1000},
        },
    )
    async with WebhookServer(cfg) as server:
        await server.register(WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"]))
        pg_db.execute("INSERT INTO orders (total) SELECT 0 FROM generate_series(1, 10)")
        for i in range(1, 21):
            pg_db.execute("UPDATE orders SET total = %s", (i,))
        await receiver.wait_for(10 + 200, timeout=60)
    by_key: dict[int, list[int]] = {}
    for e in receiver.events:
        by_key.setdefault(e["key"]["id"], []).append(e["sequence"])
    for seqs in by_key.values():
        assert seqs == sorted(seqs)
    final = {k: [e for e in receiver.events if e["key"]["id"] == k][-1]["value"]["total"] for k in by_key}
    assert set(final.values()) == {20}


async def test_unreachable_database_retries_without_crashing(tmp_path: Path) -> None:
    from heliosdb_cdc import Config
    from heliosdb_cdc._embedded import free_port

    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "s"),
            "source": {
                "dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                "reconnect_max_delay_secs": 0.2,
            },
        }
    )
    server = WebhookServer(cfg)
    task = asyncio.create_task(server.start(serve_http=False))
    await asyncio.sleep(1.0)
    assert not task.done()  # still retrying, not crashed
    assert server.source_error is not None and "cannot connect to PostgreSQL" in server.source_error
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    if server.store is not None:
        server.store.close()


async def test_dlq_cli_list_replay_purge(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    import subprocess
    import sys

    from heliosdb_cdc._embedded import free_port

    setup_table(pg_db)
    receiver.respond = lambda req: 410
    port = free_port()
    cfg = make_config(pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{port}"})
    server_url = f"http://127.0.0.1:{port}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "heliosdb_cdc.cli", "dlq", "--server", server_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    async with WebhookServer(cfg) as server:
        name = await server.register(WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"]))
        pg_db.execute("INSERT INTO orders (total) VALUES (1), (2), (3)")
        assert server.store is not None
        await wait_until(lambda: server.store.count_dead_letters(name) == 3)  # type: ignore[union-attr]
        out = await asyncio.to_thread(cli, "list")
        assert out.returncode == 0 and "HTTP 410" in out.stdout and "(3 rows)" in out.stdout
        first = server.store.list_dead_letters(name)[0]["id"]
        out = await asyncio.to_thread(cli, "show", str(first))
        assert "event_id" in out.stdout
        receiver.respond = None
        out = await asyncio.to_thread(cli, "replay", "--id", str(first))
        assert "replayed 1" in out.stdout
        out = await asyncio.to_thread(cli, "purge")
        assert "purged 2" in out.stdout
        assert server.store.count_dead_letters() == 0
    assert [e["value"]["total"] for e in receiver.events] == [1]


async def test_resets_stalls_and_flapping_lose_nothing(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    """Connection resets, stalls past timeout_secs and a flapping endpoint: every change
    arrives, in per-key order, and the circuit opens and closes as configured."""
    import itertools
    import random

    setup_table(pg_db)
    rnd = random.Random(9)
    phase = itertools.cycle(["ok"] * 30 + ["down"] * 30)

    def fault(_: Any) -> str | float | None:
        if next(phase) == "down":  # flapping: bursts of failures
            return "reset" if rnd.random() < 0.5 else 1.0
        return "reset" if rnd.random() < 0.05 else None

    receiver.fault = fault
    cfg = make_config(
        pg_db,
        tmp_path,
        webhook={
            "bind_address": "127.0.0.1:0",
            "timeout_secs": 0.3,
            "worker_pool_size": 8,
            "retry": {"max_attempts": 1000, "initial_delay_ms": 5, "max_delay_ms": 50},
            "circuit_breaker": {"failure_threshold": 5, "timeout_secs": 0.2, "success_threshold": 1},
        },
    )
    async with WebhookServer(cfg) as server:
        await server.register(WebhookRegistration(url=receiver.url, secret=SECRET, tables=["orders"]))
        pg_db.execute("INSERT INTO orders (total) SELECT g % 20 FROM generate_series(1, 300) g")
        for i in range(1, 21):
            pg_db.execute("UPDATE orders SET status = %s WHERE id = %s", (f"s{i}", i))
        # stalled requests may be recorded after their retry: count distinct events
        await wait_until(lambda: len({e["event_id"] for e in receiver.events}) >= 320, timeout=120)
        breaker = server.circuit_breaker.breaker(receiver.url)
        states = {s for _, s in breaker.transitions}
    assert {CircuitState.OPEN, CircuitState.CLOSED} <= states
    first: dict[str, dict[str, Any]] = {}
    for e in receiver.events:
        first.setdefault(e["event_id"], e)
    assert len(first) == 320
    by_key: dict[int, list[int]] = {}
    for e in first.values():
        by_key.setdefault(e["key"]["id"], []).append(e["sequence"])
    assert all(s == sorted(s) for s in by_key.values())
