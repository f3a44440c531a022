"""Duplicates in Kinesis after kill -9 of the service, with and without the restart scan.

    python bench/kinesis_kill.py [--changes 20000] [--kills 2] [--runs 2] [--modes off,on]
                                 [--workload live|backlog]

Starts its own PostgreSQL (EmbeddedPostgres) and moto server, then per run: a fresh
2-shard stream and state directory, ``heliosdb-cdc run`` as a subprocess, a mixed
workload (1-10-row transactions of inserts/updates/deletes, tests/test_chaos_kill.py's
``write_workload``) written while it streams (``--workload backlog``: written while
the service is stopped, so it catches up in batches of up to 5,000), ``--kills`` kill -9
spread evenly over the delivery (each followed by a restart), then reads every shard and counts records,
distinct event ids (lost = written - distinct) and duplicates (records - distinct).
``on`` is the default (``restart_dedupe: true``), ``off`` sets ``restart_dedupe: false``
(the behaviour before the scan).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import orjson
import psycopg2
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.plugins.kinesis import _FAKE_CREDS, _moto_command  # noqa: E402
from tests.test_chaos_kill import start_service, wait_healthy, write_workload  # noqa: E402

from heliosdb_cdc._embedded import EmbeddedPostgres, free_port  # noqa: E402


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    for k, v in _FAKE_CREDS.items():
        os.environ.setdefault(k, v)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        _moto_command(port), stdout=open(workdir / "moto.log", "wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def read_all(client: Any, stream: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10000)
            out.extend(orjson.loads(r["Data"]) for r in resp["Records"])
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
    return out


async def one_run(
    pg: EmbeddedPostgres, moto: str, workdir: Path, mode: str, n: int, args: Any
) -> dict[str, Any]:
    db = f"k{n}_{mode}"
    conn = psycopg2.connect(pg.dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {db}")
    conn.close()
    dsn = pg.dsn_for(db)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    conn.close()
    client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=moto)
    stream = f"bench-{db}"
    client.create_stream(StreamName=stream, ShardCount=2)
    client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    port = free_port()
    run_dir = workdir / db
    run_dir.mkdir()
    cfg = {
        "state_dir": str(run_dir / "state"),
        "source": {"dsn": dsn, "slot": db, "publication": db},
        "webhook": {"bind_address": f"127.0.0.1:{port}"},
        "streams": [
            {
                "name": "items_kinesis",
                "tables": ["items"],
                "destination": {
                    "type": "kinesis",
                    "address": stream,
                    "region": "us-east-1",
                    "options": {"endpoint_url": moto, "restart_dedupe": mode == "on"},
                },
            }
        ],
    }
    path = run_dir / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = run_dir / "service.log"
    api = f"http://127.0.0.1:{port}"
    proc = start_service(path, log)
    await wait_healthy(api, proc, timeout=60)
    t0 = time.monotonic()
    if args.workload == "backlog":  # written while the service is stopped: it catches up
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        written_before = await asyncio.to_thread(write_workload, dsn, args.changes, 1000 + n)
        proc = start_service(path, log)
        await wait_healthy(api, proc, timeout=60)
        writer = asyncio.create_task(asyncio.sleep(0, written_before))
    else:
        writer = asyncio.create_task(asyncio.to_thread(write_workload, dsn, args.changes, 1000 + n))
    # spread the kills over the delivery: each after a share of the changes reached the stream
    for k in range(args.kills):
        want = args.changes * (k + 1) // (args.kills + 1)
        while len(await asyncio.to_thread(read_all, client, stream)) < want:
            await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_service(path, log)
        await wait_healthy(api, proc, timeout=60)
    written = await writer
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        events = await asyncio.to_thread(read_all, client, stream)
        if len({e["event_id"] for e in events}) >= written:
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(2.0)
    events = await asyncio.to_thread(read_all, client, stream)
    elapsed = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    unique = len({e["event_id"] for e in events})
    scans = [int(x) for x in re.findall(r"read (\d+) records from", log.read_text())]
    return {
        "mode": mode,
        "workload": args.workload,
        "written": written,
        "records": len(events),
        "duplicates": len(events) - unique,
        "lost": written - unique,
        "scanned_at_restarts": scans,
        "seconds": round(elapsed, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=20_000)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--modes", default="off,on")
    ap.add_argument("--workload", choices=["live", "backlog"], default="live")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="heliosdb-kinesis-kill-"))
    moto_proc, moto = start_moto(workdir)
    pg = EmbeddedPostgres(workdir / "pg").__enter__()
    try:
        print(f"load: {os.getloadavg()}")
        for n in range(args.runs):
            for mode in args.modes.split(","):
                r = await one_run(pg, moto, workdir, mode, n, args)
                pct = 100.0 * r["duplicates"] / max(1, r["written"])
                print(
                    f"{r['workload']} restart_dedupe={r['mode']:3} written={r['written']} "
                    f"records={r['records']} "
                    f"duplicates={r['duplicates']} ({pct:.1f} %) lost={r['lost']} "
                    f"scanned={r['scanned_at_restarts']} {r['seconds']}s",
                    flush=True,
                )
        print(f"load: {os.getloadavg()}")
    finally:
        pg.stop()
        moto_proc.terminate()
        moto_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
