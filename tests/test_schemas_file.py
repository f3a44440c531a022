"""Capture's ``schemas.json`` (the table schemas it last saw, to tell a SCHEMA_CHANGE):
written whole through the log's file layer, so a power cut at any step leaves the old
file or the new one; an empty or torn file on start is learned again from the stream."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest

from heliosdb_cdc import WebhookRegistration, WebhookServer
from heliosdb_cdc.journal import LocalLog
from heliosdb_cdc.postgres._replication import Capture
from tests.crashfs import PowerCut, SimDisk
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config

DIR = Path("/simulated/log")
OLD = {"public.t": [{"name": "id", "type_oid": 23, "key": True}]}
NEW = {**OLD, "public.u": [{"name": "id", "type_oid": 20, "key": True}]}


def capture(disk: SimDisk) -> Capture:
    return Capture("", "slot", "pub", "db", LocalLog(DIR, fs=disk))


def test_power_cut_at_every_step_leaves_old_or_new_schemas() -> None:
    total = None
    k = 0
    while total is None or k <= total:
        disk = SimDisk()
        cap = capture(disk)
        cap._save_schemas(OLD)
        disk.cut_at = disk.steps + k  # the power goes at the k-th step of the next save
        try:
            cap._save_schemas(NEW)
            total = k
            saved = True
        except PowerCut:
            saved = False
        for name, image in disk.images():
            got = capture(image)._load_schemas()
            allowed = [NEW] if saved else [OLD, NEW]
            assert got in allowed, f"cut at step {k} of the save, {name}: {got}"
        k += 1
    assert total is not None and total >= 4  # create+write, fsync, rename, fsync dir


@pytest.mark.parametrize("content", [b"", b'{"public.items": [{"name": "i', b"[1, 2]"])
def test_unreadable_schemas_file_is_learned_again(content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    disk = SimDisk()
    cap = capture(disk)
    with disk.open(DIR / "schemas.json", "wb") as f:
        f.write(content)
    with caplog.at_level(logging.WARNING, "heliosdb_cdc.capture"):
        assert cap._load_schemas() == {}
    assert "schemas.json is unreadable" in caplog.text
    assert "learned again from the stream" in caplog.text


async def test_empty_schemas_file_on_start(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        assert server.log is not None
        path = server.log.dir / "schemas.json"
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["items"], name="h")
        )
        pg_db.execute("INSERT INTO items VALUES (1, 'a')")
        await receiver.wait_for(1)
    assert "items" in orjson.loads(path.read_bytes())
    path.write_bytes(b"")  # as a power cut before this fix could leave it
    async with WebhookServer(cfg) as server:
        pg_db.execute("INSERT INTO items VALUES (2, 'b')")
        events = await receiver.wait_for(2)
        for _ in range(100):  # saved after the batch that learned it
            if path.read_bytes():
                break
            await asyncio.sleep(0.05)
    assert [e["value"] for e in events] == [{"id": 1, "note": "a"}, {"id": 2, "note": "b"}]
    assert "items" in orjson.loads(path.read_bytes())
