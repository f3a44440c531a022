"""``heliosdb-cdc demo``: everything on this machine, nothing to set up.

Starts an embedded PostgreSQL (wal_level=logical), creates a sample ``orders``
table, starts a local receiver that verifies every signature, runs the service
with a webhook on ``orders``, writes a stream of inserts, updates and deletes,
and shows deliveries live until Ctrl-C (or ``--duration``): counts, and the
commit -> receipt latency (p50/p99 over the last 10 seconds) of the deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson
import psycopg2
from aiohttp import web

from ._config import Config
from ._embedded import EmbeddedPostgres, free_port
from ._service import WebhookServer

SECRET = "demo-secret"


LATENCY_WINDOW_S = 10.0


class DemoReceiver:
    """Verifies, counts and times the demo's deliveries.

    Latency is commit -> receipt: from the transaction's commit time in PostgreSQL
    (the event's ``timestamp``) to the moment this receiver has the request, so it
    includes decoding, queueing, retries and the HTTP round trip. Percentiles are
    over the deliveries received in the last ``window`` seconds, so they follow the
    current state of the pipeline rather than the whole run."""

    def __init__(
        self,
        window: float = LATENCY_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.received = 0
        self.bad_signatures = 0
        self.window = window
        self._clock = clock
        self._wall = wall
        self._samples: deque[tuple[float, float]] = deque()  # (received at, latency s)
        self.ids: set[str] = set()
        self.duplicates = 0

    def record(self, commit_ts: float) -> None:
        """One delivery of a change committed at ``commit_ts`` (Unix time) arrived now."""
        now = self._clock()
        self._samples.append((now, self._wall() - commit_ts))
        self._expire(now)

    def _expire(self, now: float) -> None:
        samples = self._samples
        while samples and samples[0][0] < now - self.window:
            samples.popleft()

    async def handle(self, request: web.Request) -> web.Response:
        from .receiver import verify_signature

        body = await request.read()
        if not verify_signature(body, request.headers.get("X-HeliosDB-Signature", ""), SECRET):
            self.bad_signatures += 1
            return web.Response(status=401)
        event = orjson.loads(body)
        if event["event_id"] in self.ids:
            self.duplicates += 1
        self.ids.add(event["event_id"])
        self.received += 1
        self.record(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp())
        return web.json_response({"status": "success", "event_id": event["event_id"]})

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile of the last ``window`` seconds' latencies in ms (None: none)."""
        self._expire(self._clock())
        recent = sorted(lat for _, lat in self._samples)
        if not recent:
            return None
        return recent[min(len(recent) - 1, int(len(recent) * q))] * 1000


def _writer(dsn: str, n: int, stats: dict[str, int]) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = False
    with conn.cursor() as cur:
        for _ in range(max(1, n // 5)):
            for _ in range(5):
                r = random.random()
                if r < 0.6 or stats["max_id"] < 10:
                    cur.execute(
                        "INSERT INTO orders (customer_id, total, status) VALUES (%s, %s, 'pending') "
                        "RETURNING id",
                        (random.randint(1, 1000), round(random.uniform(5, 2000), 2)),
                    )
                    stats["max_id"] = max(stats["max_id"], cur.fetchone()[0])
                    stats["written"] += 1
                elif r < 0.9:
                    cur.execute(
                        "UPDATE orders SET status = %s WHERE id = %s",
                        (
                            random.choice(["paid", "shipped", "cancelled"]),
                            random.randint(1, stats["max_id"]),
                        ),
                    )
                    stats["written"] += cur.rowcount
                else:
                    cur.execute("DELETE FROM orders WHERE id = %s", (random.randint(1, stats["max_id"]),))
                    stats["written"] += cur.rowcount
            conn.commit()
    conn.close()


async def run_demo(directory: str, rate: float, duration: float) -> int:
    from ._logging import setup_logging

    setup_logging("WARNING")
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True)
    print(f"heliosdb-cdc demo: starting an embedded PostgreSQL in {base / 'pg'} ...", flush=True)
    pg = EmbeddedPostgres(base / "pg")
    await asyncio.to_thread(pg.start)
    server: WebhookServer | None = None
    runner: web.AppRunner | None = None
    try:
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, customer_id int NOT NULL, "
                "total numeric(12,2), status text, created_at timestamptz DEFAULT now())"
            )
            cur.execute("SELECT coalesce(max(id), 0) FROM orders")
            max_id = cur.fetchone()[0]
        conn.close()

        rec = DemoReceiver()
        app = web.Application()
        app.router.add_post("/webhooks/db-changes", rec.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        rport = free_port()
        await web.TCPSite(runner, "127.0.0.1", rport).start()
        url = f"http://127.0.0.1:{rport}/webhooks/db-changes"

        api_port = 8080 if _port_free(8080) else free_port()
        cfg = Config.model_validate(
            {
                "state_dir": str(base / "state"),
                "source": {
                    "dsn": pg.dsn,
                    "slot": "heliosdb_cdc_demo",
                    "publication": "heliosdb_cdc_demo",
                },
                "webhook": {"bind_address": f"127.0.0.1:{api_port}"},
                "webhooks": [
                    {"name": "demo", "url": url, "secret": SECRET, "tables": ["orders"]},
                ],
            }
        )
        server = WebhookServer(cfg)
        await server.start()
        print(f"receiver:    {url} (verifies every X-HeliosDB-Signature)")
        print(f"service:     http://127.0.0.1:{api_port}/  (status page, /metrics, /sql)")
        print(f"writing ~{rate:.0f} changes/s to table orders; Ctrl-C to stop\n", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        stats = {"written": 0, "max_id": int(max_id)}
        started = time.monotonic()
        last_print = 0.0
        while not stop.is_set():
            tick = time.monotonic()
            if duration and tick - started >= duration:
                break
            await asyncio.to_thread(_writer, pg.dsn, max(5, int(rate / 5)), stats)
            if tick - last_print >= 1.0:
                _line(stats["written"], rec)
                last_print = tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 0.2 - (time.monotonic() - tick)))
        # let in-flight changes arrive
        deadline = time.monotonic() + 15
        while rec.received < stats["written"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        _line(stats["written"], rec)
        ok = rec.received >= stats["written"] and rec.bad_signatures == 0
        print(
            f"\n{'OK' if ok else 'INCOMPLETE'}: {stats['written']} changes written, "
            f"{rec.received} delivered, "
            f"{rec.bad_signatures} bad signatures, {rec.duplicates} duplicates"
        )
        return 0 if ok else 1
    finally:
        if server is not None:
            await server.stop()
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(pg.stop)


def _ms(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.1f}"


def status_line(written: int, rec: DemoReceiver) -> str:
    return (
        f"written {written:>7}  delivered {rec.received:>7}  bad signatures {rec.bad_signatures}  "
        f"commit->receipt latency (last {rec.window:g} s) "
        f"p50 {_ms(rec.percentile(0.5))} ms  p99 {_ms(rec.percentile(0.99))} ms"
    )


def _line(written: int, rec: DemoReceiver) -> None:
    sys.stdout.write(status_line(written, rec) + "\n")
    sys.stdout.flush()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
