"""End to end through the running service (PostgreSQL -> heliosdb-cdc -> receivers):
the docs/security.md setup enabled by configuration alone (HTTPS admin API, token
scopes, allow-list, mTLS webhook with Standard Webhooks signatures, secrets from
files), secrets kept out of SHOW/REST/logs, the SSRF guard at registration, and
oversized events going to dead letters."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from standardwebhooks import Webhook

from heliosdb_cdc import WebhookServer
from heliosdb_cdc._config import load_config
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc.sinks import _standard_webhooks as std
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_e2e_webhook import make_config

ADMIN = "adm-7f3e0c2a9b4d4e1f"
READER = "ro-5d6c7b8a9e0f1a2b"


def write_leaf(leaf: Any, d: Path, stem: str) -> tuple[str, str]:
    cert, key = d / f"{stem}-cert.pem", d / f"{stem}-key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


@pytest.fixture
async def mtls_receiver(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """An HTTPS receiver that requires a client certificate from ``client_ca``."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1").configure_cert(ctx)
    client_ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    got: list[tuple[bytes, dict[str, str]]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    server_ca.cert_pem.write_to_path(str(tmp_path / "receiver-ca.pem"))
    cert, key = write_leaf(client_ca.issue_cert("heliosdb-cdc.internal"), tmp_path, "client")
    yield {
        "url": f"https://127.0.0.1:{port}/hook",
        "ca": str(tmp_path / "receiver-ca.pem"),
        "cert": cert,
        "key": key,
        "got": got,
    }
    await runner.cleanup()


async def wait_until(cond: Any, timeout: float = 30.0) -> None:
    import asyncio

    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_docs_setup_by_config_alone(
    pg_db: PgDatabase,
    mtls_receiver: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pg_db.execute("CREATE TABLE orders (id serial PRIMARY KEY, total numeric(12,2))")
    api_ca = trustme.CA()
    api_cert, api_key = write_leaf(api_ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "api")
    s_old, s_new = std.generate_secret(), std.generate_secret()
    (tmp_path / "orders.secret").write_text(f"{s_old},{s_new}\n")
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    monkeypatch.setenv("HELIOSDB_CDC_READ_ONLY_TOKEN", READER)
    port = free_port()
    r = mtls_receiver
    (tmp_path / "heliosdb-cdc.yaml").write_text(
        f"""
state_dir: {tmp_path / "state"}
source:
  dsn: {pg_db.dsn}
webhook:
  bind_address: 127.0.0.1:{port}
  retry: {{initial_delay_ms: 10}}
security:
  tls:
    enabled: true
    cert_path: {api_cert}
    key_path: {api_key}
  ip_whitelist: [127.0.0.1/32, "::1/128"]
  admin_token: file:{tmp_path / "admin.token"}
  read_only_token: ${{HELIOSDB_CDC_READ_ONLY_TOKEN}}
streams:
  - name: orders_hook
    tables: [orders]
    secret: file:{tmp_path / "orders.secret"}
    destination:
      type: webhook
      address: {r["url"]}
      options:
        signature_scheme: standard
        ca_path: {r["ca"]}
        client_cert_path: {r["cert"]}
        client_key_path: {r["key"]}
"""
    )
    cfg = load_config(tmp_path / "heliosdb-cdc.yaml")
    api_ctx = ssl.create_default_context()
    api_ca.configure_trust(api_ctx)
    base = f"https://127.0.0.1:{port}"

    async def call(
        method: str, path: str, token: str | None = None, local: str = "127.0.0.1", **kw: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn = aiohttp.TCPConnector(local_addr=(local, 0), force_close=True)
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.request(method, base + path, headers=headers, ssl=api_ctx, **kw) as resp,
        ):
            return resp.status, await resp.text()

    with caplog.at_level(logging.DEBUG):
        async with WebhookServer(cfg):
            pg_db.execute("INSERT INTO orders (total) VALUES (10.50), (20.00)")
            await wait_until(lambda: len(r["got"]) >= 2)
            for body, headers in r["got"]:
                for secret in (s_old, s_new):
                    assert Webhook(secret).verify(body, headers)["table"] == "orders"

            assert (await call("GET", "/health"))[0] == 200
            assert (await call("GET", "/health", local="127.0.0.2"))[0] == 403
            assert (await call("GET", "/api/streams"))[0] == 401
            status, show = await call("POST", "/sql", READER, data="SHOW CDC STREAM STATUS orders_hook;")
            assert status == 200 and "orders_hook" in show
            status, _ = await call("POST", "/sql", READER, data="ALTER CDC STREAM orders_hook PAUSE;")
            assert status == 403
            status, detail = await call("GET", "/api/streams/orders_hook", READER)
            assert status == 200 and '"secret":"********"' in detail
            status, hooks = await call("GET", "/api/webhooks", ADMIN)
            assert status == 200 and "orders_hook" in hooks
            status, _ = await call("POST", "/sql", ADMIN, data="ALTER CDC STREAM orders_hook PAUSE;")
            assert status == 200
            for text in (show, detail, hooks):
                assert s_old not in text and s_new not in text and s_old[6:20] not in text
    logged = "\n".join(rec.getMessage() + str(rec.__dict__.get("args")) for rec in caplog.records)
    for secret in (s_old, s_new, ADMIN, READER):
        assert secret not in logged


async def test_registration_refuses_metadata_and_private_when_blocked(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE orders (id serial PRIMARY KEY)")
    cfg = make_config(pg_db, tmp_path, security={"block_private_networks": True})
    async with WebhookServer(cfg) as server:
        base = "http://" + server.config.webhook.bind_address
        async with aiohttp.ClientSession() as s:
            for url, reason in (
                ("http://169.254.169.254/latest/meta-data/", "always refused"),
                ("http://[fd00:ec2::254]/", "always refused"),
                (receiver.url, "block_private_networks"),
            ):
                body = {"url": url, "tables": ["orders"]}
                async with s.post(base + "/api/webhooks", json=body) as resp:
                    assert resp.status == 400
                    assert reason in (await resp.json())["error"]
                stmt = f"CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK '{url}' AS hook_x"
                async with s.post(base + "/sql", data=stmt) as resp:
                    assert resp.status == 400 and reason in (await resp.json())["error"]
        assert server.store is not None and server.store.list_streams() == []


async def test_oversized_event_goes_to_dead_letters(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    cfg = make_config(
        pg_db, tmp_path, webhook={"bind_address": f"127.0.0.1:{free_port()}", "max_payload_bytes": 2048}
    )
    async with WebhookServer(cfg) as server:
        from heliosdb_cdc import WebhookRegistration

        name = await server.register(
            WebhookRegistration(url=receiver.url, secret="your-webhook-secret", tables=["notes"])
        )
        pg_db.execute("INSERT INTO notes VALUES (1, %s)", ("x" * 5000,))
        pg_db.execute("INSERT INTO notes VALUES (2, 'small')")
        events = await receiver.wait_for(1)
        assert [e["key"]["id"] for e in events] == [2]
        assert server.store is not None
        await wait_until(lambda: server.store.count_dead_letters(name) == 1)  # type: ignore[union-attr]
        (dl,) = server.store.list_dead_letters(name)
        assert "over webhook.max_payload_bytes=2048" in dl["error"]
        assert dl["attempts"] <= 1


async def test_injection_attempts_change_nothing(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    """Hostile table names, DDL strings and predicates: refused or inert; the source
    database and the catalog stay as they were."""
    pg_db.execute("CREATE TABLE orders (id serial PRIMARY KEY, total numeric)")
    pg_db.execute("INSERT INTO orders (total) VALUES (1)")
    marker = tmp_path / "pwned"
    cfg = make_config(pg_db, tmp_path)
    async with WebhookServer(cfg) as server:
        base = "http://" + server.config.webhook.bind_address
        hostile_sql = [
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://127.0.0.1:9/x'; DROP TABLE orders; --' AS s1",
            "CREATE CHANGE DATA CAPTURE ON \"orders; DROP TABLE orders\" TO WEBHOOK 'http://127.0.0.1:9/x' AS s2",
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://127.0.0.1:9/x' "
            f'WHERE \'__import__("os").system("touch {marker}")\' AS s3',
            "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://127.0.0.1:9/x' "
            "WHERE 'total > 0; DROP TABLE orders' AS s4",
            "CREATE CHANGE DATA CAPTURE ON pg_catalog.pg_authid TO WEBHOOK 'http://127.0.0.1:9/x' AS s5",
        ]
        async with aiohttp.ClientSession() as s:
            for stmt in hostile_sql:
                async with s.post(base + "/sql", data=stmt) as resp:
                    assert resp.status == 400, (stmt, await resp.text())
            for tables in (["orders; DROP TABLE orders"], ["orders' OR '1'='1"], ["public.orders--"]):
                body = {"name": "x", "tables": tables, "destination": {"type": "memory", "address": "m"}}
                async with s.post(base + "/api/streams", json=body) as resp:
                    assert resp.status in (400, 422), tables
            # a legitimate stream, then a hostile backfill predicate
            ok = "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK '" + receiver.url + "' AS good"
            async with s.post(base + "/sql", data=ok) as resp:
                assert resp.status == 200, await resp.text()
            for where in (
                "1=1; DROP TABLE orders",
                "id > 0) OR (SELECT pg_sleep(5)",
                f'__import__("os").system("touch {marker}")',
            ):
                stmt = f"ALTER CDC STREAM good BACKFILL WHERE '{where}'"
                async with s.post(base + "/sql", data=stmt) as resp:
                    assert resp.status == 400, (where, await resp.text())
        assert server.store is not None
        # the first hostile text is a valid CREATE followed by junk: the CREATE is a real
        # statement (its stream exists), the "DROP TABLE" never reaches PostgreSQL
        assert sorted(r["name"] for r in server.store.list_streams()) == ["good", "orders_webhook"]
    assert pg_db.execute("SELECT count(*) FROM orders") == [(1,)]
    assert not marker.exists()
