"""One stream walked through the source's lifecycle faults, with the real
``heliosdb-cdc run``: PostgreSQL down at start, wrong credentials, drop and re-create,
rename (and back), a dropped slot, a poison row. Every committed change is delivered
or visibly reported (an event, an exit with the fix), never silently gone."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
import yaml

from heliosdb_cdc._embedded import EmbeddedPostgres, free_port
from tests.plugins.receiver import Receiver
from tests.test_chaos_kill import wait_healthy
from tests.test_slot_lost import drop_slot, fatal_line, service
from tests.test_source_errors import health
from tests.test_table_lifecycle import table_changes, until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, v int, doc jsonb)"


def delivered(receiver: Receiver) -> dict[int, dict[str, Any]]:
    """Last value per id of the rows the receiver got (INSERT, UPDATE, READ)."""
    out: dict[int, dict[str, Any]] = {}
    for e in sorted(receiver.events, key=lambda e: e["sequence"]):
        if e["table"] == "items" and e["operation"] in ("INSERT", "UPDATE", "READ"):
            out[e["key"]["id"]] = e["value"]
    return out


async def dead_letter_ids(api: str) -> set[int]:
    async with aiohttp.ClientSession() as s, s.get(api + "/api/dead-letters?limit=1000") as r:
        data = await r.json()
    return {int(d["key"]["id"]) for d in data.get("dead_letters", []) if isinstance(d.get("key"), dict)}


@pytest.mark.chaos
async def test_lifecycle_faults_lose_nothing_silently(receiver: Receiver, tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.init()  # not started yet: PostgreSQL is down when the service starts
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "svc.log"

    def config(dsn: str) -> Path:
        cfg: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": dsn, "reconnect_max_delay_secs": 1},
            "webhook": {"bind_address": f"127.0.0.1:{port}"},
            "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
        }
        path = tmp_path / "heliosdb-cdc.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    committed: dict[int, int] = {}  # id -> v, every row committed to items

    def write(sql: str, *rows: tuple[int, int]) -> None:
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            if sql:
                cur.execute(sql)
            for i, v in rows:
                table = "items_old" if "RENAME TO items_old" in sql else "items"
                cur.execute(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", (i, v))
                committed[i] = v
        conn.close()

    proc: subprocess.Popen[bytes] | None = None
    try:
        # 1. PostgreSQL down at start: retried, /health says why, SIGTERM stops it
        proc = service(config(pg.dsn), log_path)
        got = None
        for _ in range(150):
            assert proc.poll() is None, log_path.read_text()
            got = await health(api)
            if got is not None and got[1].get("source_error"):
                break
            await asyncio.sleep(0.1)
        assert got is not None and got[0] == 503 and "cannot connect" in got[1]["source_error"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0

        pg.start()
        write(TABLE)

        # 2. wrong credentials: exit 2, the fix in one line
        wrong = f"postgresql://no_such_role@127.0.0.1:{pg.port}/postgres"
        proc = service(config(wrong), log_path)
        assert await asyncio.to_thread(proc.wait, 30) == 2
        line = fatal_line(log_path)
        assert 'role "no_such_role" does not exist' in line and "Fix: " in line

        # 3. running; rows flow
        proc = service(config(pg.dsn), log_path)
        await wait_healthy(api, proc)
        write("", *[(i, i) for i in range(1, 6)])
        await until(lambda: set(delivered(receiver)) >= set(range(1, 6)), "rows 1-5")

        # 4. drop and re-create, written at once: rows of the new table all arrive
        write(f"DROP TABLE items; {TABLE}", *[(i, i) for i in range(6, 11)])
        await until(lambda: "recreated" in table_changes(receiver, "items"), "the re-created event")
        await until(lambda: set(delivered(receiver)) >= set(range(6, 11)), "rows 6-10")

        # 5. renamed: reported; renamed back: what it missed is re-read
        write("ALTER TABLE items RENAME TO items_old", (11, 11))
        await until(lambda: "renamed" in table_changes(receiver, "items"), "the renamed event")
        write("ALTER TABLE items_old RENAME TO items")
        await until(lambda: 11 in delivered(receiver), "row 11, written while renamed")

        # 6. the slot dropped under it: exit 2 with the fix, then --resnapshot re-reads
        drop_slot(pg.dsn, "heliosdb_cdc")
        write("", (12, 12))
        assert await asyncio.to_thread(proc.wait, 30) == 2
        assert "--resnapshot" in fatal_line(log_path)
        proc = service(config(pg.dsn), log_path, "--resnapshot")
        await wait_healthy(api, proc)
        await until(lambda: 12 in delivered(receiver), "row 12, committed while the slot was gone")

        # everything committed so far arrived with its committed value
        got_rows = delivered(receiver)
        assert {i: got_rows[i]["v"] for i in committed} == committed

        # 7. a poison row (jsonb nested 1,500 deep), then a plain one: the first is delivered
        # or dead-lettered (visible), and the stream is not wedged by it
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (13, 13, %s::jsonb)", ("[" * 1500 + "]" * 1500,))
            cur.execute("INSERT INTO items VALUES (14, 14, NULL)")
        conn.close()
        await until(lambda: 14 in delivered(receiver), "row 14, after the poison row", 60)
        assert 13 in delivered(receiver) or 13 in await dead_letter_ids(api), "poison row gone silently"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pg.stop("immediate")
