"""Delivery workers (``run --role worker``) on the Kafka journal: real PostgreSQL, the
real Kafka broker, capture and workers as real processes, a real webhook receiver.

Every committed change arrives, per row in commit order; a change arrives twice only
with the same event id; a worker's kill -9 moves its partitions to the others."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import pytest
import requests
import yaml
from confluent_kafka import Consumer, TopicPartition

from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver

LEASE_SECS = 2.0
PARTITIONS = 6


class Proc:
    """One heliosdb-cdc process: ``--role capture`` or ``--role worker``."""

    def __init__(
        self, tmp: Path, name: str, role: str, pg: PgDatabase, kafka: str, topic: str, hook: str
    ) -> None:
        port = free_port()
        self.name = name
        self.api = f"http://127.0.0.1:{port}"
        cfg: dict[str, Any] = {
            "state_dir": str(tmp / name),
            "state": {"url": pg.dsn},
            "source": {"dsn": pg.dsn, "tables": ["public.*"], "status_interval_secs": 1},
            "webhook": {"bind_address": f"127.0.0.1:{port}", "retry": {"initial_delay_ms": 50}},
            "cdc": {"poll_interval_ms": 20},
            "logging": {"level": os.environ.get("KW_LEVEL", "INFO")},
            "journal": {
                "kafka": {
                    "bootstrap_servers": kafka,
                    "topic": topic,
                    "partitions": PARTITIONS,
                    "lease_secs": LEASE_SECS,
                }
            },
            "streams": [
                {
                    "name": "hook",
                    "tables": ["*"],
                    "destination": {"type": "webhook", "address": hook},
                    "secret": "your-webhook-secret",
                }
            ],
        }
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heliosdb_cdc.cli", "run", "-c", str(path), "--role", role],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )

    def health(self) -> dict[str, Any] | None:
        try:
            r = requests.get(self.api + "/health", timeout=1)
            return dict(r.json())
        except (requests.RequestException, ValueError):
            return None

    def is_leader(self) -> bool:
        h = self.health()
        return bool(h and h.get("leader") and h.get("replication_connected"))

    def partitions(self) -> list[int]:
        h = self.health() or {}
        return list(h.get("partitions", []))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await asyncio.to_thread(cond):
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _unique(rec: Receiver) -> int:
    return len({r.headers["X-HeliosDB-Event-ID"] for r in rec.requests})


async def _wait_unique(rec: Receiver, n: int, timeout: float) -> None:
    await _wait(lambda: _unique(rec) >= n, timeout, f"{n} distinct events (got {_unique(rec)})")


def _all_partitions(workers: list[Proc]) -> bool:
    held = [p for w in workers for p in w.partitions()]
    return sorted(held) == list(range(PARTITIONS))


def _write(pg: PgDatabase, tables: int, rows: int, rounds: range, pause: float = 0.0) -> None:
    """Rounds of updates: in each, every row of every table gets v = round + 1."""
    conn = psycopg2.connect(pg.dsn)
    with conn.cursor() as cur:
        for r in rounds:
            for t in range(tables):
                cur.execute(f"UPDATE t{t} SET v = %s", (r + 1,))
            conn.commit()
            time.sleep(pause)
    conn.close()


def _check(rec: Receiver, tables: int, rows: int, rounds: int) -> int:
    """Every update arrived, per row in commit order; a repeat carries a seen event id.
    Returns the number of repeats."""
    seen: set[str] = set()
    last: dict[tuple[str, int], int] = {}
    got: dict[tuple[str, int], list[int]] = {}
    repeats = 0
    for r in rec.requests:
        ev = r.json
        assert r.headers["X-HeliosDB-Event-ID"] == ev["event_id"]
        assert int(r.headers["X-HeliosDB-Sequence"]) == ev["sequence"]  # the journal's sequence
        if ev["event_id"] in seen:
            repeats += 1
            continue
        seen.add(ev["event_id"])
        row = (ev["table"], ev["key"]["id"])
        v = ev["value"]["v"]
        assert v > last.get(row, 0), f"{row}: {v} after {last.get(row)} (a new change out of order)"
        last[row] = v
        got.setdefault(row, []).append(v)
    want = list(range(1, rounds + 1))
    missing = [(row, vs) for row, vs in got.items() if vs != want]
    assert not missing, missing[:3]
    assert len(got) == tables * rows, (len(got), tables * rows)
    return repeats


def _lag(kafka: str, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition of the journal: (committed offset of the workers' group, end offset)."""
    c = Consumer({"bootstrap.servers": kafka, "group.id": f"heliosdb-cdc-delivery-{topic}"})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        out = {}
        for tp in c.committed(tps, timeout=10):
            _low, high = c.get_watermark_offsets(tp, timeout=10)
            out[tp.partition] = (tp.offset, high)
        return out
    finally:
        c.close()


def _caught_up(kafka: str, topic: str) -> bool:
    # the end offset is past the last transaction's commit marker (one offset)
    return all(high - committed <= 1 for committed, high in _lag(kafka, topic).values())


def _tables(pg: PgDatabase, tables: int, rows: int) -> None:
    for t in range(tables):
        pg.execute(f"CREATE TABLE t{t} (id int PRIMARY KEY, v int)")
        pg.execute(f"INSERT INTO t{t} SELECT g, 0 FROM generate_series(1, {rows}) g")


@pytest.fixture
def topic() -> str:
    return f"wk-{uuid.uuid4().hex[:8]}"


async def test_one_worker_delivers_every_change(
    pg_db: PgDatabase, kafka_bootstrap: str, receiver: Receiver, tmp_path: Path, topic: str
) -> None:
    _tables(pg_db, 2, 10)
    procs = [
        Proc(tmp_path, "cap", "capture", pg_db, kafka_bootstrap, topic, receiver.url),
        Proc(tmp_path, "w1", "worker", pg_db, kafka_bootstrap, topic, receiver.url),
    ]
    cap, w1 = procs
    try:
        await _wait(cap.is_leader, 60, "the capture leader")
        await _wait(lambda: _all_partitions([w1]), 60, "the worker to hold every partition")
        h = w1.health() or {}
        assert (h["role"], h["streams"]) == ("worker", 1), h
        await asyncio.to_thread(_write, pg_db, 2, 10, range(20))
        await receiver.wait_for(400, 60)
        assert _check(receiver, 2, 10, 20) == 0  # no failure: nothing twice
        # offsets are committed once the deliveries are recorded
        await _wait(lambda: _caught_up(kafka_bootstrap, topic), 20, f"offsets {_lag(kafka_bootstrap, topic)}")
        # the shared state answers on the worker's API too
        r = requests.post(w1.api + "/sql", data="SHOW CDC STREAMS", timeout=5)
        assert r.status_code == 200 and "hook" in r.text, r.text
    finally:
        for p in procs:
            p.stop()


async def test_kill_9_worker_others_take_its_partitions(
    pg_db: PgDatabase, kafka_bootstrap: str, receiver: Receiver, tmp_path: Path, topic: str
) -> None:
    _tables(pg_db, 3, 10)
    cap = Proc(tmp_path, "cap", "capture", pg_db, kafka_bootstrap, topic, receiver.url)
    workers = [Proc(tmp_path, f"w{i}", "worker", pg_db, kafka_bootstrap, topic, receiver.url) for i in (1, 2)]
    try:
        await _wait(cap.is_leader, 60, "the capture leader")
        await _wait(
            lambda: _all_partitions(workers) and all(w.partitions() for w in workers), 60, "2 workers"
        )
        writer = asyncio.create_task(asyncio.to_thread(_write, pg_db, 3, 10, range(60), 0.05))
        await _wait_unique(receiver, 600, 60)  # both workers delivering, offsets committed
        workers[0].kill()
        killed = time.monotonic()
        await _wait(lambda: workers[1].partitions() == list(range(PARTITIONS)), 30, "the partitions to move")
        print(f"\npartitions moved {time.monotonic() - killed:.1f}s after kill -9")
        await writer
        await _wait_unique(receiver, 1800, 60)
        await asyncio.sleep(1.0)  # a late repeat would arrive now
        print(f"repeats (same event id): {_check(receiver, 3, 10, 60)}")
    finally:
        for p in [cap, *workers]:
            p.stop()


SCALE_CHANGES = int(os.environ.get("HELIOSDB_CDC_SCALE_CHANGES", "10000"))
SCALE_TABLES = int(os.environ.get("HELIOSDB_CDC_SCALE_TABLES", "10"))
SCALE_WRITE_SECS = float(os.environ.get("HELIOSDB_CDC_SCALE_WRITE_SECS", "15"))


def _write_mixed(pg: PgDatabase, tables: int, changes: int, secs: float) -> int:
    """Transactions of an INSERT, an UPDATE and a DELETE (on a row inserted earlier) on
    one table each, spread over about ``secs``; returns the changes made (rows)."""
    conn = psycopg2.connect(pg.dsn)
    made = 0
    i = 0
    t0 = time.monotonic()
    with conn.cursor() as cur:
        while made < changes:
            t = i % tables
            cur.execute(f"INSERT INTO t{t} (id, v) VALUES (%s, 1)", (1000 + i,))
            made += cur.rowcount
            if made < changes:
                cur.execute(f"UPDATE t{t} SET v = v + 1 WHERE id = %s", (1000 + i - tables * 2,))
                made += cur.rowcount
            if made < changes:
                cur.execute(f"DELETE FROM t{t} WHERE id = %s", (1000 + i - tables * 5,))
                made += cur.rowcount
            conn.commit()
            i += 1
            ahead = t0 + secs * made / changes - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    conn.close()
    return made


def _check_mixed(rec: Receiver) -> tuple[int, int]:
    """Per row, new changes arrive in commit (journal sequence) order; a repeat carries
    an event id seen before with the same content. Returns (distinct events, repeats)."""
    seen: dict[str, bytes] = {}
    last: dict[tuple[str, bytes], int] = {}
    repeats = 0
    for r in rec.requests:
        ev = r.json
        assert r.headers["X-HeliosDB-Event-ID"] == ev["event_id"]
        if ev["event_id"] in seen:
            assert seen[ev["event_id"]] == r.body, ev["event_id"]
            repeats += 1
            continue
        seen[ev["event_id"]] = r.body
        row = (ev["table"], orjson.dumps(ev["key"]))
        assert ev["sequence"] > last.get(row, 0), f"{row}: {ev['sequence']} after {last.get(row)}"
        last[row] = ev["sequence"]
    return len(seen), repeats


async def test_scale_out_capture_ha_and_workers_under_faults(
    pg_db: PgDatabase, kafka_bootstrap: str, receiver: Receiver, tmp_path: Path, topic: str
) -> None:
    """The issue's scenario at a CI size (HELIOSDB_CDC_SCALE_CHANGES / _TABLES for the
    full 100,000 / 50): 2 capture instances and 3 workers; kill -9 of the capture leader
    twice and of a worker three times, a worker added and one removed mid-run."""
    for t in range(SCALE_TABLES):
        pg_db.execute(f"CREATE TABLE t{t} (id int PRIMARY KEY, v int)")
    n = iter(range(100))

    def start(role: str) -> Proc:
        return Proc(tmp_path, f"{role}{next(n)}", role, pg_db, kafka_bootstrap, topic, receiver.url)

    caps = [start("capture") for _ in range(2)]
    workers = [start("worker") for _ in range(3)]
    procs = [*caps, *workers]

    def live(ps: list[Proc]) -> list[Proc]:
        return [p for p in ps if p.proc.poll() is None]

    async def settled() -> float:
        return await _wait(lambda: _all_partitions(live(workers)), 60, "the partitions to settle")

    async def kill_worker(i: int) -> None:
        w = live(workers)[i]
        w.kill()
        t = time.monotonic()
        workers.remove(w)
        workers.append(start("worker"))  # a restarted worker rejoins
        procs.append(workers[-1])
        await _wait(
            lambda: _all_partitions(live(workers)) and all(x.partitions() for x in live(workers)),
            60,
            "rebalance",
        )
        print(f"worker kill -9: partitions held again after {time.monotonic() - t:.1f}s")

    async def kill_leader() -> None:
        leader = next(c for c in caps if c.is_leader())
        leader.kill()
        caps.remove(leader)
        took = await _wait(lambda: any(c.is_leader() for c in caps), 60, "a new capture leader")
        print(f"capture leader kill -9: takeover after {took:.1f}s")
        caps.append(start("capture"))  # back as a standby
        procs.append(caps[-1])

    try:
        await _wait(lambda: any(c.is_leader() for c in caps), 60, "a capture leader")
        await settled()
        writer = asyncio.create_task(
            asyncio.to_thread(_write_mixed, pg_db, SCALE_TABLES, SCALE_CHANGES, SCALE_WRITE_SECS)
        )
        await asyncio.sleep(2)
        await kill_worker(0)
        await kill_leader()
        await kill_worker(1)
        added = start("worker")
        workers.append(added)
        procs.append(added)
        took = await _wait(added.partitions, 60, "the added worker to take partitions")
        print(f"worker added: holds {added.partitions()} after {took:.1f}s")
        await kill_leader()
        await kill_worker(0)
        removed = live(workers)[1]
        removed.stop()  # a clean stop gives its partitions back
        await _wait(lambda: _all_partitions(live(workers)), 60, "the removed worker's partitions")
        made = await writer
        await _wait_unique(receiver, made, 120)
        await asyncio.sleep(1.0)  # a late repeat would arrive now
        distinct, repeats = _check_mixed(receiver)
        print(f"changes {made}, delivered {distinct} distinct, {repeats} repeats (same event id)")
        assert distinct == made
    finally:
        for p in procs:
            p.stop()


def test_role_worker_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from heliosdb_cdc.cli import main as cli_main

    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path)}))
    assert cli_main(["run", "-c", str(path), "--role", "worker"]) == 2
    assert "--role worker needs the state in PostgreSQL (state.url" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "state": {"url": "postgresql://h/db"}}))
    assert cli_main(["run", "-c", str(path), "--role", "worker"]) == 2
    assert "--role worker needs journal.kafka" in capsys.readouterr().err
    journal = {"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "t", "group_id": ""}}
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "journal": journal}))
    assert cli_main(["run", "-c", str(path), "--role", "worker"]) == 2
    assert "journal.kafka.group_id" in capsys.readouterr().err


async def test_instances_starting_together_reconcile_the_same_config(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    """Two instances on one state database start at once with the same declared stream:
    the one that finds it created between its catalog read and its insert goes on (it
    failed with "stream 'hook' already exists" before)."""
    from heliosdb_cdc import WebhookServer
    from heliosdb_cdc._config import Config
    from heliosdb_cdc.store import PostgresStore

    cfg = {
        "state_dir": str(tmp_path),
        "state": {"url": pg_db.dsn},
        "source": {"dsn": pg_db.dsn},
        "streams": [{"name": "hook", "tables": ["*"], "destination": {"type": "memory", "address": "m"}}],
    }
    a = WebhookServer(Config.model_validate(cfg))
    b = WebhookServer(Config.model_validate(cfg))
    a.store = PostgresStore(pg_db.dsn, "heliosdb_cdc")
    b.store = PostgresStore(pg_db.dsn, "heliosdb_cdc")
    try:
        stale = b.store.list_streams()  # b read the catalog before a created the stream
        b.store.list_streams = lambda: stale  # type: ignore[method-assign]
        a.catalog.open(a.store)
        b.catalog.open(b.store)
        await a.catalog.reconcile_config(0)
        await b.catalog.reconcile_config(0)
        assert [r["name"] for r in a.store.list_streams()] == ["hook"]
    finally:
        a.store.close()
        b.store.close()
