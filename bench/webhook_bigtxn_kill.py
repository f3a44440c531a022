"""Webhook resends after kill -9 half-way through delivering one large transaction.

    python bench/webhook_bigtxn_kill.py [--rows 200000] [--kill-at 0.5] [--no-delivery-records]

Own PostgreSQL (EmbeddedPostgres) and an aiohttp receiver in this process that counts
event ids. Writes one transaction of ``--rows`` inserts while ``heliosdb-cdc run`` streams
to the receiver with the default webhook settings, kills the service with SIGKILL once
``--kill-at`` of the rows were received, reads the saved cursor and the delivery rows from
the state database, restarts, and reports how many events arrived twice and where they
lie relative to the saved cursor (docs/architecture.md, "How large the webhook resend
window is").
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
import psycopg2
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_chaos_kill import start_service, wait_healthy  # noqa: E402

from heliosdb_cdc._embedded import EmbeddedPostgres, free_port  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--kill-at", type=float, default=0.5)
    ap.add_argument("--no-delivery-records", action="store_true", help="webhook.exactly_once.enabled: false")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="heliosdb-bigtxn-"))
    seen: Counter[str] = Counter()
    seqs: dict[str, int] = {}

    async def handle(request: web.Request) -> web.Response:
        ev = orjson.loads(await request.read())
        seen[ev["event_id"]] += 1
        seqs[ev["event_id"]] = ev["sequence"]
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    rport = free_port()
    await web.TCPSite(runner, "127.0.0.1", rport).start()
    pg = EmbeddedPostgres(workdir / "pg").__enter__()
    proc: subprocess.Popen[bytes] | None = None
    try:
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE items (id bigint PRIMARY KEY, v int)")
        port = free_port()
        state = workdir / "state"
        cfg = {
            "state_dir": str(state),
            "source": {"dsn": pg.dsn},
            "webhook": {
                "bind_address": f"127.0.0.1:{port}",
                "exactly_once": {"enabled": not args.no_delivery_records},
            },
            "webhooks": [{"url": f"http://127.0.0.1:{rport}/hook", "tables": ["items"]}],
        }
        path = workdir / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = workdir / "service.log"
        api = f"http://127.0.0.1:{port}"
        proc = start_service(path, log)
        await wait_healthy(api, proc, timeout=60)
        t0 = time.monotonic()
        await asyncio.to_thread(
            conn.cursor().execute,
            f"INSERT INTO items SELECT g, 0 FROM generate_series(1, {args.rows}) g",
        )
        while len(seen) < args.rows * args.kill_at:
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        received = dict(seen)
        db = sqlite3.connect(state / "state.db")
        cursor = db.execute("SELECT seq FROM cursors").fetchone()[0]
        rows = {r[0] for r in db.execute("SELECT event_id FROM deliveries")}
        db.close()
        beyond = [e for e in received if seqs[e] > cursor]
        unrecorded = [e for e in beyond if e not in rows]
        top = max(seqs[e] for e in received)
        print(
            f"at kill: received={len(received)} saved cursor={cursor} highest seq received={top} "
            f"received beyond cursor={len(beyond)} of which delivery rows committed="
            f"{len(beyond) - len(unrecorded)} not committed={len(unrecorded)}",
            flush=True,
        )
        proc = start_service(path, log)
        await wait_healthy(api, proc, timeout=60)
        deadline = time.monotonic() + 900
        while len(seen) < args.rows and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
        dups = sum(n - 1 for n in seen.values())
        print(
            f"rows={args.rows} distinct={len(seen)} duplicates={dups} "
            f"lost={args.rows - len(seen)} {time.monotonic() - t0:.0f}s",
            flush=True,
        )
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.__exit__(None, None, None)
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
