"""A stream created at runtime whose table the service may not publish (owned by another
role): a clear 4xx naming the fix, over REST and SQL, and nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._embedded import free_port
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver


@pytest.fixture
def role(pg_db: PgDatabase) -> Iterator[str]:
    name = f"r_{pg_db.name}"
    pg_db.execute(f"CREATE ROLE {name} LOGIN REPLICATION")
    pg_db.execute(f'GRANT CREATE ON DATABASE "{pg_db.name}" TO {name}')
    yield name
    with pg_db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        cur.execute(f"REASSIGN OWNED BY {name} TO postgres")
        cur.execute(f"DROP OWNED BY {name}")
        cur.execute(f"DROP ROLE {name}")


async def test_table_owned_by_another_role_is_a_4xx_with_the_fix(
    pg_db: PgDatabase, role: str, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE mine (id int PRIMARY KEY)")
    pg_db.execute(f"ALTER TABLE mine OWNER TO {role}")
    pg_db.execute("CREATE TABLE theirs (id int PRIMARY KEY)")  # owned by postgres
    pg_db.execute(f"GRANT SELECT ON theirs TO {role}")
    port = free_port()
    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": f"postgresql://{role}@127.0.0.1:{pg_db.server.port}/{pg_db.name}"},
            "webhook": {"bind_address": f"127.0.0.1:{port}"},
            "streams": [
                {"name": "mine_mem", "tables": ["mine"], "destination": {"type": "memory", "address": "m"}}
            ],
        }
    )
    published = "SELECT tablename FROM pg_publication_tables WHERE pubname = 'heliosdb_cdc' ORDER BY 1"
    async with WebhookServer(cfg) as server, aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        assert pg_db.execute(published) == [("mine",)]
        stream = {
            "name": "theirs_mem",
            "tables": ["theirs"],
            "destination": {"type": "memory", "address": "m"},
        }
        async with http.post("/api/streams", json=stream) as r:
            rest = (r.status, await r.json())
        async with http.post(
            "/sql",
            data=f"CREATE CHANGE DATA CAPTURE ON theirs TO WEBHOOK '{receiver.url}' "
            "SECRET 'your-webhook-secret' AS 'theirs_sql';",
        ) as r:
            via_sql = (r.status, await r.json())
        names = sorted(s["name"] for s in server.list_stream_rows())
    for status, body in (rest, via_sql):
        assert status == 400, body
        error = body["error"]
        assert "must be owner of table theirs" in error
        assert "Fix: have the table's owner run ALTER TABLE ... OWNER TO \"" + role + '";' in error
        assert 'ALTER PUBLICATION "heliosdb_cdc" ADD TABLE "public"."theirs";' in error
        assert "Traceback" not in error
    # nothing changed: no stream, the publication as it was
    assert names == ["mine_mem"]
    assert pg_db.execute(published) == [("mine",)]
