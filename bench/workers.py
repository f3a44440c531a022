"""Delivery throughput of ``--role worker`` with 1, 2 and 3 workers (issue 18).

    python bench/workers.py [--changes 12000] [--lanes 8] [--latency-ms 20]

Starts a private PostgreSQL and Kafka broker (tests/plugins/kafka.py's jars), one
capture instance that publishes ``--changes`` updates over 10 tables to the journal
topic, then for 1, 2 and 3 workers: a new consumer group and a new stream (so nothing
counts as delivered before) reading the whole topic, one event per POST, to a receiver
that answers each POST after ``--latency-ms``; the stream waits paused until the
workers share the partitions, so the group's start is not measured. Each worker sends on ``--lanes`` lanes
(``webhook.worker_pool_size``): a worker's ceiling is lanes / latency, so the slow
receiver, not the 2 cores, is what bounds it. Prints events/s from the first to the
last receipt, and the ratio to one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import requests
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.plugins.kafka import KafkaBroker, kafka_libs  # noqa: E402

from heliosdb_cdc._config import Destination, StreamConfig  # noqa: E402
from heliosdb_cdc._embedded import EmbeddedPostgres, free_port  # noqa: E402
from heliosdb_cdc._service import stream_to_json  # noqa: E402
from heliosdb_cdc.store import PostgresStore  # noqa: E402


class SlowReceiver:
    """Counts POSTs per path; answers each after ``latency`` seconds."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.port = free_port()
        self.times: dict[str, list[float]] = {}
        self.ids: dict[str, set[str]] = {}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            await asyncio.sleep(self.latency)
            self.times.setdefault(request.path, []).append(time.monotonic())
            self.ids.setdefault(request.path, set()).add(request.headers.get("X-HeliosDB-Event-ID", ""))
            return web.json_response({"status": "success"})

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            await asyncio.Event().wait()

        asyncio.run(main())


def _config(tmp: Path, name: str, pg: str, kafka: str, topic: str, extra: dict[str, Any]) -> tuple[Path, str]:
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp / name),
        "state": {"url": pg},
        "source": {"dsn": pg, "tables": ["public.*"]},
        "webhook": {"bind_address": f"127.0.0.1:{port}"},
        "journal": {"kafka": {"bootstrap_servers": kafka, "topic": topic, "partitions": 6}},
        "logging": {"level": "WARNING"},
    }
    for k, v in extra.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) and k in cfg else cfg.__setitem__(k, v)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, f"http://127.0.0.1:{port}"


def _partitions(api: str) -> list[int]:
    try:
        return list(requests.get(api + "/health", timeout=1).json().get("partitions", []))
    except (requests.RequestException, ValueError):
        return []


def _spawn(path: Path, role: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "heliosdb_cdc.cli", "run", "-c", str(path), "--role", role],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def _wait(cond: Any, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=12000)
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    pg = EmbeddedPostgres(tmp / "pg").start()
    broker = KafkaBroker(kafka_libs(), tmp)
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        rows = args.changes // 10
        with conn.cursor() as cur:
            for t in range(10):
                cur.execute(f"CREATE TABLE t{t} (id int PRIMARY KEY, v int)")
                cur.execute(f"INSERT INTO t{t} SELECT g, 0 FROM generate_series(1, {rows}) g")
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        cpath, _api = _config(tmp, "capture", pg.dsn, broker.bootstrap, topic, {})
        capture = _spawn(cpath, "capture", tmp / "c.log")
        procs.append(capture)
        time.sleep(8)  # the leader takes the lease and starts replication
        with conn.cursor() as cur:
            for t in range(10):
                cur.execute(f"UPDATE t{t} SET v = 1")
        from confluent_kafka import Consumer, TopicPartition

        def published() -> int:
            c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-count"})
            try:
                return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(6))
            finally:
                c.close()

        _wait(lambda: published() >= args.changes, 120, f"{args.changes} changes in the topic")
        recv = SlowReceiver(args.latency_ms / 1000)
        store = PostgresStore(pg.dsn, "heliosdb_cdc")
        base = None
        print(f"{args.changes} changes, {args.lanes} lanes per worker, receiver {args.latency_ms} ms/POST")
        for k in (1, 2, 3):
            path = f"/hook{k}"
            extra = {
                "webhook": {"worker_pool_size": args.lanes},
                "journal": {
                    "kafka": {
                        "bootstrap_servers": broker.bootstrap,
                        "topic": topic,
                        "partitions": 6,
                        "group_id": f"bench-{k}-{uuid.uuid4().hex[:6]}",
                    }
                },
            }
            # the stream waits paused until every worker holds its partitions: the group's
            # start (joins, rebalances) is not delivery
            name = f"bench{k}"
            stream = StreamConfig(
                name=name,
                tables=["*"],
                destination=Destination(type="webhook", address=f"http://127.0.0.1:{recv.port}{path}"),
            )
            store.create_stream(name, stream_to_json(stream), "api", "paused")
            cfgs = [_config(tmp, f"w{k}{i}", pg.dsn, broker.bootstrap, topic, extra) for i in range(k)]
            ws = [_spawn(c, "worker", tmp / "w.log") for c, _ in cfgs]
            procs.extend(ws)

            def settled(cfgs: list[tuple[Path, str]] = cfgs) -> bool:
                held = [_partitions(api) for _, api in cfgs]
                return all(held) and sorted(p for h in held for p in h) == list(range(6))

            _wait(settled, 120, f"{k} worker(s) to share the partitions")
            time.sleep(2)  # (no rebalance follows)
            assert settled()
            store.set_state(name, "running")
            t_settled = time.monotonic()
            _wait(
                lambda path=path: len(recv.ids.get(path, ())) >= args.changes,
                600,
                f"{k} worker(s) to deliver",
            )
            ts = [t for t in recv.times[path] if t >= t_settled]
            rate = len(ts) / (ts[-1] - t_settled)
            base = base or rate
            print(
                f"{k} worker(s): {rate:,.0f} events/s ({rate / base:.2f}x one), "
                f"{len(ts)} of {len(recv.times[path])} POSTs measured"
            )
            for w in ws:
                w.terminate()
            for w in ws:
                w.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(60)
        broker.stop()
        pg.stop()


if __name__ == "__main__":
    main()
