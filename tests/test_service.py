"""The service as a user runs it: CLI, config errors, health, SIGTERM, PostgreSQL restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from heliosdb_cdc import WebhookRegistration, WebhookServer
from heliosdb_cdc._embedded import EmbeddedPostgres, free_port
from heliosdb_cdc.postgres._codec import codec_name
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_chaos_kill import start_service, wait_healthy
from tests.test_e2e_webhook import make_config

CLI = [sys.executable, "-m", "heliosdb_cdc.cli"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "webhook: {retry: {max_attempts: -1}}",
            "webhook.retry.max_attempts: Input should be greater than or equal to 1",
        ),
        ("webhooks: [{url: 'not a url'}]", "webhooks[0].url"),
        ("sorce: {dsn: x}", "sorce: unknown key"),
        ("webhook: {timeout_secs: -5}", "webhook.timeout_secs"),
        ("webhook: [1, 2", "invalid YAML at line"),
        (
            "source: {dsn: '${NO_SUCH_VAR_HELIOS}'}",
            "environment variable NO_SUCH_VAR_HELIOS is not set",
        ),
        (
            "streams: [{name: a, tables: [t], destination: {type: kinesis, address: s}}]",
            "needs a region",
        ),
    ],
)
def test_bad_config_refused_with_key_path(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    for cmd in ("check-config", "run"):
        res = run_cli(cmd, "-c", str(path))
        assert res.returncode == 2
        assert expected in res.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    res = run_cli("run", "-c", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "cannot read configuration file" in res.stderr


async def test_health_and_sigterm_drains(pg_db: PgDatabase, receiver: Receiver, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    port = free_port()
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": pg_db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{port}"},
        "webhooks": [
            {
                "url": receiver.url,
                "secret": "your-webhook-secret",
                "tables": ["t"],
                "name": "t_hook",
            }
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = start_service(path, tmp_path / "log")
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/health") as r:
            health = await r.json()
        assert health["status"] == "ok"
        assert health["codec"] == codec_name()  # native where it is built (scripts/test.sh checks that)
        pg_db.execute("INSERT INTO t SELECT g FROM generate_series(1, 100) g")
        await receiver.wait_for(100)
        status = run_cli("status", "--server", f"http://127.0.0.1:{port}")
        assert status.returncode == 0, status.stderr
        assert f"codec {codec_name()}" in status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # the clean stop checkpointed: a restart sends nothing again
    proc = start_service(path, tmp_path / "log")
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc)
        await asyncio.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert len(receiver.events) == 100
    assert "configuration reconciled" in (tmp_path / "log").read_text()
    assert f"codec: {codec_name()}" in (tmp_path / "log").read_text()


async def test_postgres_restart_mid_stream_loses_nothing(receiver: Receiver, tmp_path: Path) -> None:
    base = tmp_path / "own"
    pg = EmbeddedPostgres(base / "data")
    pg.start()
    try:
        db = PgDatabase.__new__(PgDatabase)
        db.server, db.name, db.dsn = pg, "postgres", pg.dsn  # type: ignore[attr-defined]
        db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        cfg = make_config(db, tmp_path, source={"dsn": pg.dsn, "reconnect_max_delay_secs": 0.5})
        async with WebhookServer(cfg) as server:
            await server.register(
                WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["t"])
            )
            db.execute("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 500) g")
            await asyncio.to_thread(pg.restart)
            db.execute("INSERT INTO t SELECT g, 'b' FROM generate_series(501, 1000) g")
            await receiver.wait_for(1000, timeout=60)
            assert server.capture is not None and server.capture.status.connected
    finally:
        pg.stop("immediate")
    assert sorted({e["key"]["id"] for e in receiver.events}) == list(range(1, 1001))


async def test_table_without_primary_key_still_flows(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pg_db.execute("CREATE TABLE logs (msg text, n int)")
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["logs"])
        )
        pg_db.execute("INSERT INTO logs VALUES ('hello', 1), ('world', 2)")
        events = await receiver.wait_for(2)
    assert {e["value"]["msg"] for e in events} == {"hello", "world"}
    assert all(e["key"] == {} for e in events)
    assert "has no primary key" in caplog.text


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ)
    res = subprocess.run(
        [*CLI, "demo", "--duration", "3", "--rate", "100", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK:" in res.stdout
    assert "0 bad signatures" in res.stdout


def test_embedded_postgres_from_the_pgserver_wheel(tmp_path: Path) -> None:
    """`heliosdb-cdc demo` needs nothing but the package: without a system PostgreSQL the
    server binaries come from the pgserver wheel."""
    import psycopg2

    from heliosdb_cdc import _embedded

    bindir = _embedded._pgserver_bindir()
    assert bindir is not None and (bindir / "postgres").exists()
    pg = EmbeddedPostgres(tmp_path / "wheel-pg")
    pg.bindir = bindir
    pg.start()
    try:
        conn = psycopg2.connect(pg.dsn)
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            assert cur.fetchone() == ("logical",)
        conn.close()
    finally:
        pg.stop("immediate")
