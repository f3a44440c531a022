"""Schemathesis against the running service's own /openapi.json: no request, however
odd, gets a 5xx or hangs (Kafka and Kinesis destinations, to brokers that are not
there, included). The service runs with an admin token (sent with every case), so the
authentication layer is exercised too. Every route of the app is in the document, so
every route is fuzzed. With ``CI=true`` a missing schemathesis is a failure, not a skip."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, settings

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import schemathesis  # in CI a missing test dependency fails the run (pip install -e '.[test]')
else:
    schemathesis = pytest.importorskip("schemathesis")

from heliosdb_cdc import WebhookServer
from heliosdb_cdc._config import config_from_dict
from heliosdb_cdc._embedded import EmbeddedPostgres, free_port
from heliosdb_cdc.server._openapi import OPENAPI

TOKEN = "fuzz-admin-token-123456"
EXAMPLES = int(os.environ.get("HELIOSDB_CDC_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def live_base_url(pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"fuzz{os.getpid()}"
    admin = psycopg2.connect(pg_server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    dsn = pg_server.dsn_for(name)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id serial PRIMARY KEY, total numeric)")
    state = Path(tmp_path_factory.mktemp("fuzz"))
    port = free_port()
    cfg = config_from_dict(
        {
            "state_dir": str(state),
            "source": {"dsn": dsn, "slot": "fuzz", "publication": "fuzz"},
            "webhook": {"bind_address": f"127.0.0.1:{port}", "timeout_secs": 2},
            "security": {"admin_token": TOKEN},
        }
    )
    loop = asyncio.new_event_loop()
    server = WebhookServer(cfg)
    ready = threading.Event()
    stop: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            await server.start()
            stop["event"] = asyncio.Event()
            ready.set()
            await stop["event"].wait()
            await server.stop()

        loop.run_until_complete(main())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(60), "service did not start"
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(stop["event"].set)
    t.join(30)
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pg_drop_replication_slot('fuzz') FROM pg_replication_slots WHERE slot_name='fuzz'"
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


schema = schemathesis.openapi.from_dict(OPENAPI)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_5xx(case: Any, live_base_url: str) -> None:
    # a request that blocks (e.g. on a broker that is not there) fails with a timeout:
    # every answer is computed without waiting for a destination
    resp = case.call(base_url=live_base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code < 500, (
        f"{case.method} {case.formatted_path}: {resp.status_code} {resp.text[:500]}"
    )


def test_every_route_is_in_the_openapi_document() -> None:
    """What is not in the document is not fuzzed."""
    from heliosdb_cdc.server._app import build_app

    class Service:
        config = config_from_dict({})

    app = build_app(Service())  # type: ignore[arg-type]
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert routes - documented == set()
