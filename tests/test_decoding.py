"""Decoding batches in the capture thread and in the worker process give the same records."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from heliosdb_cdc import DecodeError
from heliosdb_cdc._record import Record
from heliosdb_cdc.postgres._decoder import ChangeDecoder
from heliosdb_cdc.postgres._decoding import InThread, InWorker
from tests import pgoutput_builders as b

TS = int(datetime(2026, 1, 4, 12, 0, 0, tzinfo=UTC).timestamp() * 1_000_000)
COLS = [("id", 23, -1, True), ("note", 25, -1, False)]


def payloads() -> list[list[bytes]]:
    """Three batches; the second transaction spans the first two batches."""
    rel = b.relation(16384, "public", "t", COLS, "d")
    return [
        [rel, b.begin(0x10, TS, 7), b.insert(16384, ["1", "a"]), b.commit(0x10, 0x18, TS),
         b.begin(0x20, TS, 8), b.insert(16384, ["2", "b"])],
        [b.update(16384, ["2", "c"]), b.commit(0x20, 0x28, TS)],
        [b.begin(0x30, TS, 9), b.delete(16384, ["1", None]), b.commit(0x30, 0x38, TS)],
    ]  # fmt: skip


def test_worker_and_thread_give_the_same_batches() -> None:
    thread = InThread(ChangeDecoder("db", 5, 0))
    worker = InWorker("db", 5, 0, {})
    try:
        futures = [(thread.submit(p), worker.submit(p)) for p in payloads()]
        got = [(thread.collect(a), worker.collect(b_)) for a, b_ in futures]
    finally:
        thread.close()
        worker.close()
    for here, there in got:
        assert here.events == there.events and all(type(r) is Record for r in there.events)
        assert (here.commits, here.order, here.in_transaction) == (
            there.commits,
            there.order,
            there.in_transaction,
        )
    first, second, third = (g[1] for g in got)
    assert [r.seq for r in first.events] == [5, 6] and first.in_transaction
    assert first.commits == [(5, 0x10, 0x18, TS)] and first.order == [0, 1, 0]
    assert second.commits == [(7, 0x20, 0x28, TS)] and not second.in_transaction
    assert [r.operation for r in third.events] == ["DELETE"]
    assert first.schemas == {"t": [{"name": "id", "type_oid": 23, "typmod": -1, "key": True},
                                   {"name": "note", "type_oid": 25, "typmod": -1, "key": False}]}  # fmt: skip


def test_worker_skips_what_the_log_holds_and_reports_errors() -> None:
    worker = InWorker("db", 1, 0x20, {})  # transactions committed at or before 0x20 are logged
    try:
        batches = [worker.collect(worker.submit(p)) for p in payloads()]
        assert [r.lsn for batch in batches for r in batch.events] == [0x30]
        # a row that cannot become an event comes back for dead letters, raw
        batch = worker.collect(worker.submit([b.begin(0x40, TS, 10), b.insert(999, ["1"])]))
        (bad,) = batch.undecodable
        assert "never described" in bad.error and bad.payload == b.insert(999, ["1"])
        assert batch.events == [] and batch.notices
        # a broken protocol message (not a row) is still an error of the session
        with pytest.raises(DecodeError, match="truncated"):
            worker.collect(worker.submit([b.begin(0x50, TS, 11)[:5]]))
    finally:
        worker.close()


SCRIPT = """
import sys, time
from heliosdb_cdc.postgres._decoding import InWorker
if __name__ == "__main__":
    w = InWorker("db", 1, 0, {})
    print("ready", flush=True)
    time.sleep(120)
"""


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return out


def test_worker_exits_when_the_service_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        children = _children(proc.pid)
        assert children, "the worker process was not started"
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the parent
        proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{c}") for c in children):
        time.sleep(0.1)
    alive = [c for c in children if os.path.exists(f"/proc/{c}")]
    assert not alive, f"worker processes {alive} outlived the killed service"
