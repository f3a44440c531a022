"""Source errors as a user meets them, with the real ``heliosdb-cdc run``: errors retrying
cannot fix end it with exit 2 and one line naming the fix; transient ones are retried
with ``/health`` answering why, and SIGTERM / Ctrl-C stop it within 10 s in every state."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest
import yaml

from heliosdb_cdc._embedded import EmbeddedPostgres, free_port
from tests.plugins.postgres import PgDatabase
from tests.test_chaos_kill import start_service


def write_config(tmp_path: Path, dsn: str, port: int | None = None, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": dsn, "reconnect_max_delay_secs": 1},
        "webhook": {"bind_address": f"127.0.0.1:{port or free_port()}"},
        "streams": [
            {"name": "items_mem", "tables": ["items"], "destination": {"type": "memory", "address": "m"}}
        ],
        **extra,
    }
    path = tmp_path / "heliosdb-cdc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_until_exit(config: Path, log_path: Path, timeout: float = 60) -> tuple[int, str]:
    proc = start_service(config, log_path)
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log_path.read_text()


def assert_fatal(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, output  # one line, no traceback
    assert "Traceback" not in output
    assert "Fix: " in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def role(pg_db: PgDatabase) -> Iterator[str]:
    """A login role of this test (roles are cluster-wide: dropped afterwards)."""
    name = f"r_{pg_db.name}"
    yield name
    with pg_db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        cur.execute(f"REASSIGN OWNED BY {name} TO postgres")
        cur.execute(f"DROP OWNED BY {name}")
        cur.execute(f"DROP ROLE {name}")


def role_dsn(pg_db: PgDatabase, role: str, password: str | None = None) -> str:
    auth = f"{role}:{password}" if password else role
    return f"postgresql://{auth}@127.0.0.1:{pg_db.server.port}/{pg_db.name}"


def items(pg_db: PgDatabase) -> None:
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")


def test_wrong_password_exits_2_with_fix(pg_db: PgDatabase, role: str, tmp_path: Path) -> None:
    # the test cluster trusts local users: ask this role for a password (first matching line)
    server: EmbeddedPostgres = pg_db.server
    hba = server.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    try:
        pg_db.execute("SELECT pg_reload_conf()")
        items(pg_db)
        pg_db.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'right-one'")
        code, out = run_until_exit(
            write_config(tmp_path, role_dsn(pg_db, role, "wrong-one")), tmp_path / "svc.log"
        )
    finally:
        hba.write_text(original)
        pg_db.execute("SELECT pg_reload_conf()")
    assert_fatal(code, out, "password authentication failed", "source.dsn")


def test_missing_database_exits_2_with_fix(pg_db: PgDatabase, tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{pg_db.server.port}/{pg_db.name}_nope"
    code, out = run_until_exit(write_config(tmp_path, dsn), tmp_path / "svc.log")
    assert_fatal(code, out, f'database "{pg_db.name}_nope" does not exist', "source.dsn")


def test_role_without_replication_exits_2_with_fix(pg_db: PgDatabase, role: str, tmp_path: Path) -> None:
    items(pg_db)
    pg_db.execute(f"CREATE ROLE {role} LOGIN")
    code, out = run_until_exit(write_config(tmp_path, role_dsn(pg_db, role)), tmp_path / "svc.log")
    assert_fatal(code, out, "REPLICATION", f'ALTER ROLE "{role}" REPLICATION;')


def test_role_without_create_privilege_exits_2_with_fix(pg_db: PgDatabase, role: str, tmp_path: Path) -> None:
    items(pg_db)
    pg_db.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    code, out = run_until_exit(write_config(tmp_path, role_dsn(pg_db, role)), tmp_path / "svc.log")
    assert_fatal(
        code, out, "permission denied for database", f'GRANT CREATE ON DATABASE "{pg_db.name}" TO "{role}";'
    )


def test_publication_owned_by_another_role_exits_2_with_fix(
    pg_db: PgDatabase, role: str, tmp_path: Path
) -> None:
    items(pg_db)
    pg_db.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    pg_db.execute(f'GRANT CREATE ON DATABASE "{pg_db.name}" TO {role}')
    pg_db.execute(f"ALTER TABLE items OWNER TO {role}")
    pg_db.execute("CREATE PUBLICATION heliosdb_cdc")  # owned by postgres
    code, out = run_until_exit(write_config(tmp_path, role_dsn(pg_db, role)), tmp_path / "svc.log")
    assert_fatal(
        code, out, "must be owner of publication", f'ALTER PUBLICATION "heliosdb_cdc" OWNER TO "{role}";'
    )
    # nothing else changed: the publication is still empty and still postgres's
    rows = pg_db.execute(
        "SELECT pg_get_userbyid(pubowner), (SELECT count(*) FROM pg_publication_tables "
        "WHERE pubname = 'heliosdb_cdc') FROM pg_publication WHERE pubname = 'heliosdb_cdc'"
    )
    assert rows == [("postgres", 0)]


async def health(url: str) -> tuple[int, dict[str, Any]] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            return r.status, await r.json()
    except aiohttp.ClientError:
        return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_unreachable_database_retried_with_health_and_signal_stops_it(
    tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    proc = start_service(write_config(tmp_path, dsn, port), tmp_path / "svc.log")
    try:
        answer = None
        for _ in range(300):
            assert proc.poll() is None, (tmp_path / "svc.log").read_text()
            answer = await health(f"http://127.0.0.1:{port}")
            if answer is not None and answer[1].get("source_error"):
                break
            await asyncio.sleep(0.1)
        assert answer is not None
        status, body = answer
        assert status == 503
        assert body["status"] == "starting"
        assert "cannot connect to PostgreSQL" in body["source_error"]
        await asyncio.sleep(1.5)  # well inside the retry loop
        sent = time.monotonic()
        proc.send_signal(sig)
        code = await asyncio.to_thread(proc.wait, 10)
        assert time.monotonic() - sent < 10
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_postgres_down_at_start_then_up_starts(tmp_path: Path) -> None:
    """Down at start is transient: the service waits, then runs when PostgreSQL comes."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.init()
    port = free_port()
    cfg = write_config(tmp_path, pg.dsn, port)
    proc = start_service(cfg, tmp_path / "svc.log")
    try:
        time.sleep(2.0)
        assert proc.poll() is None
        pg.start()
        conn = psycopg2.connect(pg.dsn)
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        conn.close()
        for _ in range(200):
            got = asyncio.run(health(f"http://127.0.0.1:{port}"))
            if got is not None and got[0] == 200:
                break
            time.sleep(0.1)
        assert got is not None and got[0] == 200, (tmp_path / "svc.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pg.stop("immediate")
