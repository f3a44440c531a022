"""Dead-letter replay sends what the stream's format sends: CloudEvents binary headers,
Debezium's record key and tombstone (the dead letter keeps the default event)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import start_receiver, verify_signature

SECRET = "your-webhook-secret"


async def wait_until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def make_config(db: PgDatabase, tmp_path: Path, stream: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": db.dsn},
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "retry": {"initial_delay_ms": 10}},
            "streams": [stream],
        }
    )


async def test_cloudevents_binary_replay_keeps_ce_headers(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2))")
    receiver, runner = await start_receiver(secret=SECRET)
    receiver.respond = lambda req: 422  # refused: to dead letters
    stream = {
        "name": "items_ce",
        "tables": ["items"],
        "destination": {"type": "webhook", "address": receiver.url},
        "format": "cloudevents-binary",
        "secret": SECRET,
    }
    try:
        async with WebhookServer(make_config(pg_db, tmp_path, stream)) as server:
            store = server.store
            assert store is not None
            pg_db.execute("INSERT INTO items VALUES (1, 'widget', 1234567.89)")
            await wait_until(lambda: store.count_dead_letters("items_ce") == 1)
            dead = store.list_dead_letters("items_ce")[0]
            receiver.respond = None
            assert await server.replay_dead_letters() == 1
            assert store.count_dead_letters("items_ce") == 0
    finally:
        await runner.cleanup()
    assert len(receiver.requests) == 1
    replayed = receiver.requests[0]
    # what the stream sends: the default event as the body, CloudEvents attributes in headers
    ce = {k.lower(): v for k, v in replayed.headers.items() if k.lower().startswith("ce-")}
    event = orjson.loads(replayed.body)
    assert ce["ce-specversion"] == "1.0"
    assert ce["ce-id"] == event["event_id"] == dead["event_id"]
    assert ce["ce-source"] == f"/heliosdb-cdc/{pg_db.name}/items"
    assert ce["ce-type"] == "io.heliosdb.cdc.insert"
    assert ce["ce-subject"] == "{%22id%22:1}"  # percent-encoded, as the HTTP binding says
    assert b'"price":1234567.89' in replayed.body
    assert verify_signature(replayed.body, replayed.headers["X-HeliosDB-Signature"], SECRET)
    assert receiver.bad_signatures == 0


async def test_debezium_replay_on_kafka_keeps_the_tombstone(
    kafka_bootstrap: str, pg_db: PgDatabase, tmp_path: Path
) -> None:
    from tests.test_kafka_sink import consume

    pg_db.execute("CREATE TABLE acct (id text PRIMARY KEY, note text)")
    big = "k" * 1200  # in the key: the delete's record is as big as the insert's
    topic = f"dlq-dbz-{os.getpid()}-{time.monotonic_ns()}"

    def stream(**extra: Any) -> dict[str, Any]:
        return {
            "name": "acct_dbz",
            "tables": ["acct"],
            "destination": {
                "type": "kafka",
                "address": kafka_bootstrap,
                "topic": topic,
                "options": {"debezium_tombstones": True, "partitions": 1, **extra},
            },
            "format": "debezium",
        }

    # the producer refuses records over 1000 bytes: both changes are dead letters
    async with WebhookServer(make_config(pg_db, tmp_path, stream(**{"message.max.bytes": 1000}))) as server:
        store = server.store
        assert store is not None
        pg_db.execute("INSERT INTO acct VALUES (%s, 'note')", (big,))
        pg_db.execute("DELETE FROM acct WHERE id = %s", (big,))
        await wait_until(lambda: store.count_dead_letters("acct_dbz") == 2)
    # the limit is lifted; replay sends the envelope, its key and the tombstone after the delete
    async with WebhookServer(make_config(pg_db, tmp_path, stream())) as server:
        assert await server.replay_dead_letters() == 2
        msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, 3, 30.0)
    assert len(msgs) == 3
    assert [orjson.loads(m.key()) for m in msgs] == [{"id": big}] * 3
    created, deleted = (orjson.loads(m.value()) for m in msgs[:2])
    assert created["op"] == "c" and deleted["op"] == "d"
    assert deleted["before"]["id"] == big and created["after"] == {"id": big, "note": "note"}
    assert msgs[2].value() is None  # the tombstone
