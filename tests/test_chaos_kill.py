"""kill -9 of the service in the middle of a workload: every committed change
still arrives, in per-key order, signed; duplicates only with a repeated event id."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2
import pytest
import yaml

from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver

CHANGES = int(os.environ.get("HELIOSDB_CDC_CHAOS_CHANGES", "10000"))
KILLS = int(os.environ.get("HELIOSDB_CDC_CHAOS_KILLS", "3"))


def start_service(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "heliosdb_cdc.cli", "run", "-c", str(config_path)],
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"service exited with {proc.returncode}")
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("service did not become healthy")


def write_workload(dsn: str, changes: int, seed: int) -> int:
    """Mixed inserts/updates/deletes in small transactions; returns rows changed."""
    rnd = random.Random(seed)
    conn = psycopg2.connect(dsn)
    written = 0
    max_id = 0
    with conn.cursor() as cur:
        while written < changes:
            for _ in range(rnd.randint(1, 10)):
                r = rnd.random()
                if r < 0.5 or max_id < 20:
                    cur.execute(
                        "INSERT INTO items (v, note) VALUES (%s, %s) RETURNING id",
                        (rnd.randint(0, 10**6), "n" * rnd.randint(0, 50)),
                    )
                    max_id = max(max_id, cur.fetchone()[0])  # type: ignore[index]
                    written += 1
                elif r < 0.85:
                    cur.execute("UPDATE items SET v = v + 1 WHERE id = %s", (rnd.randint(1, max_id),))
                    written += cur.rowcount
                else:
                    cur.execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, max_id),))
                    written += cur.rowcount
            conn.commit()
    conn.close()
    return written


@pytest.mark.chaos
async def test_kill_9_restarts_lose_nothing(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{port}", "worker_pool_size": 16},
        "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
    }
    config_path = tmp_path / "heliosdb-cdc.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "service.log"
    api = f"http://127.0.0.1:{port}"

    proc = start_service(config_path, log_path)
    await wait_healthy(api, proc)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, CHANGES, 7))
    kills = 0
    try:
        while kills < KILLS:
            await asyncio.sleep(random.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start_service(config_path, log_path)
            await wait_healthy(api, proc)
        written = await writer
        # duplicates count in receiver.events: wait for the distinct ids
        for _ in range(1200):
            if len({e["event_id"] for e in receiver.events}) >= written:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything more would be a duplicate
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    events = receiver.events
    assert receiver.bad_signatures == 0
    unique = {e["event_id"] for e in events}
    print(
        f"\nchaos: written={written} delivered={len(events)} unique={len(unique)} "
        f"duplicates={len(events) - len(unique)} lost={written - len(unique)} kills={kills}"
    )
    check_deliveries(events, written)


def _commit_order(event_id: str) -> tuple[int, int]:
    """(commit LSN, index in the transaction) from ``evt_<lsn:016x>_<index:06d>``."""
    _, lsn, index = event_id.split("_")
    return int(lsn, 16), int(index)


def check_deliveries(events: list[dict[str, Any]], written: int) -> None:
    """What a receiver sees after crashes, in receipt order: every change exactly once
    by event id, sequences 1..written without a gap in commit order, and per row every
    delivery in commit order, where a delivery may only go back as a repeat of an
    event already delivered (same event id, same content)."""
    first: dict[str, dict[str, Any]] = {}
    newest: dict[tuple[str, str], int] = {}  # row -> highest sequence delivered so far
    last: dict[tuple[str, str], int] = {}  # row -> sequence of its latest delivery
    for i, ev in enumerate(events):
        row = (ev["table"], orjson.dumps(ev["key"], option=orjson.OPT_SORT_KEYS).decode())
        seen = first.get(ev["event_id"])
        if seen is not None:
            assert ev == seen, f"delivery {i}: event id {ev['event_id']} repeated with other content"
        else:
            assert ev["sequence"] > newest.get(row, 0), (
                f"delivery {i}: row {row} got sequence {ev['sequence']} (new event "
                f"{ev['event_id']}) after sequence {newest[row]}"
            )
            first[ev["event_id"]] = ev
            newest[row] = ev["sequence"]
        last[row] = ev["sequence"]
    assert len(first) == written, f"{written} changes written, {len(first)} delivered"
    by_sequence = sorted(first.values(), key=lambda e: e["sequence"])
    assert [e["sequence"] for e in by_sequence] == list(range(1, written + 1)), "sequence has gaps"
    assert by_sequence == sorted(first.values(), key=lambda e: _commit_order(e["event_id"])), (
        "sequence order is not commit order"
    )
    # a receiver applying deliveries as they come ends with every row's newest change
    stale = {row: seq for row, seq in last.items() if seq != newest[row]}
    assert not stale, f"rows whose last delivery is not their newest change: {list(stale.items())[:5]}"


def _ev(seq: int, key: int, lsn: int | None = None, index: int = 0, v: int = 0) -> dict[str, Any]:
    return {
        "event_id": f"evt_{lsn if lsn is not None else seq:016x}_{index:06d}",
        "sequence": seq,
        "table": "public.items",
        "key": {"id": key},
        "value": {"id": key, "v": v},
    }


GOOD = [_ev(1, 1), _ev(2, 2), _ev(3, 1), _ev(4, 2)]


@pytest.mark.parametrize(
    ("events", "written", "error"),
    [
        (GOOD, 4, None),
        # a crash resends the window after the checkpoint: repeats, then on in order
        ([*GOOD[:3], GOOD[0], GOOD[2], GOOD[3]], 4, None),
        ([GOOD[0], GOOD[2], GOOD[1], GOOD[3]], 4, None),  # rows interleave freely
        (GOOD[:3], 4, "4 changes written, 3 delivered"),
        ([GOOD[0], GOOD[1], _ev(4, 1), _ev(5, 2)], 4, "sequence has gaps"),
        ([_ev(1, 1, lsn=9), _ev(2, 2, lsn=8)], 2, "sequence order is not commit order"),
        # a row's older change delivered for the first time after a newer one
        ([GOOD[2], GOOD[1], GOOD[0], GOOD[3]], 4, "got sequence 1 .new event"),
        ([*GOOD, {**GOOD[2], "value": {"id": 1, "v": 7}}], 4, "repeated with other content"),
        # a repeat may go back, but the row must end with its newest change
        ([*GOOD, GOOD[0]], 4, "last delivery is not their newest change"),
    ],
)
def test_check_deliveries_catches_what_it_claims(
    events: list[dict[str, Any]], written: int, error: str | None
) -> None:
    if error is None:
        check_deliveries(events, written)
    else:
        with pytest.raises(AssertionError, match=error):
            check_deliveries(events, written)
