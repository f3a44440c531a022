"""Security of the service's own HTTP endpoints, over real sockets: TLS (TLS 1.2+,
wrong CA refused, reload on SIGHUP), the IP allow-list (clients bound to
127.0.0.1 / 127.0.0.2, trusted proxies), bearer tokens with scopes, body limits,
and the refusal to start on a non-loopback address without a token."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from heliosdb_cdc._config import Config, WebhookRegistration, config_from_dict
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._errors import ConfigError, StreamNotFound
from heliosdb_cdc.server import start_http
from heliosdb_cdc.server._security import check_http_security, server_ssl_context

ADMIN = "admin-token-0123456789"
READER = "reader-token-0123456789"


class FakeService:
    """The HTTP layer's protocol (server/_protocol.py), without PostgreSQL."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tls_reloader: Any = None
        self.created: list[Any] = []

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "replication_connected": False, "streams": 0, "source_error": None}

    def overview(self) -> dict[str, Any]:
        return {"streams": []}

    def stream_names(self) -> list[str]:
        return [c.name for c in self.created]

    def has_stream(self, name: str) -> bool:
        return name in self.stream_names()

    def get_stream(self, name: str) -> dict[str, Any]:
        raise StreamNotFound(f"stream {name!r} does not exist")

    def list_stream_rows(self) -> list[dict[str, Any]]:
        return []

    async def create_stream(self, cfg: Any, origin: str = "sql") -> Any:
        self.created.append(cfg)
        return cfg

    def stream_status(self, name: str) -> dict[str, Any]:
        return {"name": name}

    async def drop_stream(self, name: str, if_exists: bool = False) -> None:
        return None

    async def set_paused(self, name: str, paused: bool) -> None:
        return None

    async def start_snapshot(self, name: str, kind: str = "backfill", where: str | None = None) -> None:
        return None

    async def cancel_snapshot(self, name: str) -> None:
        return None

    async def webhooks(self) -> list[dict[str, Any]]:
        return []

    async def register(self, registration: WebhookRegistration) -> str:
        return "hook"

    async def unregister(self, url_or_name: str) -> None:
        return None

    def list_dead_letters(self, stream: str | None, limit: int) -> list[dict[str, Any]]:
        return []

    async def replay_dead_letters(self, ids: list[int] | None = None, stream: str | None = None) -> int:
        return 0

    def purge_dead_letters(self, stream: str | None = None) -> int:
        return 0


def make_config(**security: Any) -> Config:
    return config_from_dict({"webhook": {"bind_address": f"127.0.0.1:{free_port()}"}, "security": security})


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[Any] = []

    async def start(cfg: Config) -> tuple[FakeService, str]:
        svc = FakeService(cfg)
        runners.append(await start_http(svc))
        scheme = "https" if cfg.security.tls.enabled else "http"
        return svc, f"{scheme}://{cfg.webhook.bind_address}"

    yield start
    for r in runners:
        await r.cleanup()


async def request(
    method: str,
    url: str,
    *,
    token: str | None = None,
    local: str | None = None,
    ssl_ctx: Any = None,
    **kw: Any,
) -> tuple[int, str]:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = aiohttp.TCPConnector(local_addr=(local, 0) if local else None, force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.request(method, url, headers=headers, ssl=ssl_ctx if ssl_ctx is not None else True, **kw) as r,
    ):
        return r.status, await r.text()


# -- TLS ------------------------------------------------------------------------------------


def write_server_cert(ca: trustme.CA, d: Path) -> tuple[str, str]:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_tls_endpoint_right_ca_wrong_ca_and_sighup_reload(serve: Any, tmp_path: Path) -> None:
    ca1, ca2 = trustme.CA(), trustme.CA()
    cert, key = write_server_cert(ca1, tmp_path)
    svc, url = await serve(make_config(tls={"enabled": True, "cert_path": cert, "key_path": key}))
    assert url.startswith("https://")
    status, body = await request("GET", url + "/health", ssl_ctx=client_ctx(ca1))
    assert status == 200 and '"status":"ok"' in body
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await request("GET", url + "/health", ssl_ctx=client_ctx(ca2))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await request("GET", url + "/health")  # system CAs do not know a private CA
    # plain HTTP on the TLS port gets nothing useful
    with pytest.raises(aiohttp.ClientError):
        await request("GET", url.replace("https://", "http://") + "/health")

    # rotate the certificate files, then SIGHUP: new connections see the new chain
    write_server_cert(ca2, tmp_path)
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        if svc.tls_reloader.reloads:
            break
        await asyncio.sleep(0.02)
    assert svc.tls_reloader.reloads == 1
    status, _ = await request("GET", url + "/health", ssl_ctx=client_ctx(ca2))
    assert status == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await request("GET", url + "/health", ssl_ctx=client_ctx(ca1))


async def test_tls_refuses_old_protocol_versions(serve: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_server_cert(ca, tmp_path)
    cfg = make_config(tls={"enabled": True, "cert_path": cert, "key_path": key})
    assert server_ssl_context(cfg.security.tls).minimum_version == ssl.TLSVersion.TLSv1_2
    _, url = await serve(cfg)
    old = client_ctx(ca)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(aiohttp.ClientError):
        await request("GET", url + "/health", ssl_ctx=old)
    tls12 = client_ctx(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert (await request("GET", url + "/health", ssl_ctx=tls12))[0] == 200


async def test_tls_client_certificate_authenticates_as_admin(serve: Any, tmp_path: Path) -> None:
    ca, client_ca = trustme.CA(), trustme.CA()
    cert, key = write_server_cert(ca, tmp_path)
    ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_file))
    tls = {"enabled": True, "cert_path": cert, "key_path": key, "client_ca_path": str(ca_file)}
    _, url = await serve(make_config(tls=tls))
    anonymous = client_ctx(ca)
    assert (await request("GET", url + "/health", ssl_ctx=anonymous))[0] == 200
    assert (await request("GET", url + "/api/streams", ssl_ctx=anonymous))[0] == 401
    with_cert = client_ctx(ca)
    client_ca.issue_cert("ops.example.com").configure_cert(with_cert)
    assert (await request("GET", url + "/api/streams", ssl_ctx=with_cert))[0] == 200
    stranger = client_ctx(ca)
    trustme.CA().issue_cert("ops.example.com").configure_cert(stranger)
    with pytest.raises(aiohttp.ClientError):  # an untrusted client certificate fails the handshake
        await request("GET", url + "/api/streams", ssl_ctx=stranger)


def test_tls_enabled_without_files_is_a_clear_error(tmp_path: Path) -> None:
    cfg = make_config(tls={"enabled": True})
    with pytest.raises(ConfigError, match=r"security.tls.cert_path"):
        check_http_security(cfg)
    cfg = make_config(tls={"enabled": True, "cert_path": str(tmp_path / "no.pem"), "key_path": "x"})
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        check_http_security(cfg)


# -- IP allow-list ----------------------------------------------------------------------------


async def test_ip_allowlist_by_source_address(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, url = await serve(make_config(ip_whitelist=["127.0.0.1/32", "::1/128", "10.0.0.0/8"]))
    assert (await request("GET", url + "/health", local="127.0.0.1"))[0] == 200
    with caplog.at_level(logging.WARNING, logger="heliosdb_cdc.security"):
        status, body = await request("GET", url + "/health", local="127.0.0.2")
        assert status == 403 and "not allowed" in body
        assert (await request("POST", url + "/sql", local="127.0.0.2", data="SHOW CDC STREAMS"))[0] == 403
    assert any("127.0.0.2" in r.getMessage() and "ip_whitelist" in r.getMessage() for r in caplog.records)
    # X-Forwarded-For is ignored when no proxy is trusted
    status, _ = await request(
        "GET", url + "/health", local="127.0.0.2", headers={"X-Forwarded-For": "127.0.0.1"}
    )
    assert status == 403


async def test_ipv6_allowlist(serve: Any) -> None:
    cfg = config_from_dict(
        {"webhook": {"bind_address": f"[::1]:{free_port()}"}, "security": {"ip_whitelist": ["::1/128"]}}
    )
    try:
        _, url = await serve(cfg)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    assert (await request("GET", url + "/health"))[0] == 200
    cfg = config_from_dict(
        {"webhook": {"bind_address": f"[::1]:{free_port()}"}, "security": {"ip_whitelist": ["fd00::/8"]}}
    )
    _, url = await serve(cfg)
    assert (await request("GET", url + "/health"))[0] == 403


async def test_trusted_proxy_forwarded_for(serve: Any) -> None:
    _, url = await serve(make_config(ip_whitelist=["10.1.0.0/16"], trusted_proxies=["127.0.0.2/32"]))
    # through the trusted proxy: the forwarded client address is what counts
    ok = await request("GET", url + "/health", local="127.0.0.2", headers={"X-Forwarded-For": "10.1.2.3"})
    assert ok[0] == 200
    # a spoofed left-most entry does not help: the right-most untrusted hop is the client
    spoofed = await request(
        "GET", url + "/health", local="127.0.0.2", headers={"X-Forwarded-For": "10.1.2.3, 192.0.2.9"}
    )
    assert spoofed[0] == 403
    # the header from an untrusted peer is ignored
    direct = await request("GET", url + "/health", local="127.0.0.1", headers={"X-Forwarded-For": "10.1.2.3"})
    assert direct[0] == 403


def test_bad_cidr_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"security.ip_whitelist.*not an IP network"):
        make_config(ip_whitelist=["10.0.0.0/33"])


# -- tokens and scopes ---------------------------------------------------------------------


async def test_admin_and_read_only_tokens(serve: Any) -> None:
    svc, url = await serve(make_config(admin_token=ADMIN, read_only_token=READER))
    # open: health, status page, OpenAPI document
    assert (await request("GET", url + "/health"))[0] == 200
    assert (await request("GET", url + "/openapi.json"))[0] == 200
    # everything else needs a token
    for method, path in (("GET", "/api/streams"), ("GET", "/metrics"), ("POST", "/sql")):
        status, _ = await request(method, url + path, data="SHOW CDC STREAMS")
        assert status == 401, path
    assert (await request("GET", url + "/api/streams", token="wrong"))[0] == 401
    assert (await request("GET", url + "/api/streams", token=ADMIN[:-1]))[0] == 401
    # read-only: GETs and SHOW statements
    assert (await request("GET", url + "/api/streams", token=READER))[0] == 200
    assert (await request("GET", url + "/metrics", token=READER))[0] == 200
    status, body = await request("POST", url + "/sql", token=READER, data="SHOW CDC STREAMS;")
    assert status == 200, body
    create = "CREATE CHANGE DATA CAPTURE ON orders TO WEBHOOK 'http://127.0.0.1:9/h' AS s1"
    for stmt in (create, "SHOW CDC STREAMS; DROP CHANGE DATA CAPTURE s1", "ALTER CDC STREAM s1 PAUSE"):
        status, body = await request("POST", url + "/sql", token=READER, data=stmt)
        assert status == 403 and "read-only" in body, stmt
    assert (await request("POST", url + "/api/streams/s1/pause", token=READER))[0] == 403
    assert svc.created == []
    # admin: everything
    assert (await request("POST", url + "/api/streams/s1/pause", token=ADMIN))[0] == 200
    status, _ = await request("POST", url + "/sql", token=ADMIN, data=create)
    assert status == 200 and [c.name for c in svc.created] == ["s1"]
    # the scheme word is case-insensitive, the token is not
    status, _ = await request("GET", url + "/api/streams", headers={"Authorization": f"bearer {ADMIN}"})
    assert status == 200
    assert (await request("GET", url + "/api/streams", token=ADMIN.upper()))[0] == 401


async def test_metrics_public(serve: Any) -> None:
    _, url = await serve(make_config(admin_token=ADMIN, metrics_public=True))
    assert (await request("GET", url + "/metrics"))[0] == 200
    assert (await request("GET", url + "/api/streams"))[0] == 401


async def test_no_tokens_on_loopback_is_open(serve: Any) -> None:
    _, url = await serve(make_config())
    assert (await request("GET", url + "/api/streams"))[0] == 200
    assert (await request("GET", url + "/metrics"))[0] == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "10.1.2.3", "example.com"])
def test_non_loopback_bind_requires_a_token(host: str) -> None:
    cfg = config_from_dict({"webhook": {"bind_address": f"{host}:8080"}})
    with pytest.raises(ConfigError, match=r"set security.admin_token") as err:
        check_http_security(cfg)
    assert host.strip("[]") in str(err.value) or host in str(err.value)
    check_http_security(
        config_from_dict({"webhook": {"bind_address": f"{host}:8080"}, "security": {"admin_token": ADMIN}})
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "[::1]"])
def test_loopback_bind_needs_no_token(host: str) -> None:
    check_http_security(config_from_dict({"webhook": {"bind_address": f"{host}:8080"}}))


async def test_service_refuses_to_start_without_token(tmp_path: Path) -> None:
    from heliosdb_cdc import WebhookServer

    cfg = config_from_dict({"state_dir": str(tmp_path), "webhook": {"bind_address": "0.0.0.0:0"}})
    with pytest.raises(ConfigError, match=r"security\.admin_token"):
        await WebhookServer(cfg).start()
    assert not (tmp_path / "log").exists()  # refused before anything was opened


def test_tokens_from_files_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "admin").write_text(ADMIN + "\n")
    monkeypatch.setenv("RO_TOKEN", READER)
    cfg = config_from_dict(
        {"security": {"admin_token": f"file:{tmp_path / 'admin'}", "read_only_token": "${RO_TOKEN}"}}
    )
    assert cfg.security.admin_token is not None and cfg.security.admin_token.get_secret_value() == ADMIN
    assert cfg.security.read_only_token is not None
    assert cfg.security.read_only_token.get_secret_value() == READER
    assert ADMIN not in repr(cfg) and READER not in repr(cfg)
    with pytest.raises(ConfigError, match=r"cannot read the secret file") as err:
        config_from_dict({"security": {"admin_token": f"file:{tmp_path / 'missing'}"}})
    assert err.value.context["key_path"] == "security.admin_token"


# -- limits ---------------------------------------------------------------------------------


async def test_body_size_limit(serve: Any) -> None:
    _, url = await serve(make_config(admin_token=ADMIN, max_request_bytes=64 * 1024))
    big = b'{"name": "' + b"x" * (100 * 1024) + b'"}'
    assert (await request("POST", url + "/api/streams", token=ADMIN, data=big))[0] == 413
    padded = b"SHOW CDC STREAMS;" + b" " * 70_000
    assert (await request("POST", url + "/sql", token=ADMIN, data=padded))[0] == 413
    # a read-only caller hits the same limit before its statements are looked at
    _, url2 = await serve(make_config(read_only_token=READER))
    assert (await request("POST", url2 + "/sql", token=READER, data=b" " * (2 * 1024 * 1024)))[0] == 413


async def test_default_body_limit_is_one_mib(serve: Any) -> None:
    cfg = make_config()
    assert cfg.security.max_request_bytes == 1024 * 1024
    _, url = await serve(cfg)
    assert (await request("POST", url + "/api/streams", data=b"x" * (1024 * 1024 + 1)))[0] == 413


async def test_oversized_headers_are_refused(serve: Any) -> None:
    _, url = await serve(make_config())
    status, _ = await request("GET", url + "/health", headers={"X-Big": "a" * 20_000})
    assert status in (400, 431)


async def test_read_only_sql_with_a_bad_body_is_a_4xx(serve: Any) -> None:
    """The read-only check reads /sql bodies too: the same clear 4xx as for the admin."""
    _, url = await serve(make_config(read_only_token=READER))
    status, text = await request("POST", url + "/sql", token=READER, data=b"SHOW CDC STREAMS \xff;")
    assert status == 400 and "not valid 'utf-8' text" in text
    headers = {"Content-Type": "text/plain; charset=no-such-charset"}
    status, text = await request("POST", url + "/sql", token=READER, data=b"SHOW CDC STREAMS;", headers=headers)
    assert status == 415 and "unknown charset 'no-such-charset'" in text


async def test_oversized_headers_log_one_line_rate_limited(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from heliosdb_cdc._logging import install_bad_request_filter

    _, url = await serve(make_config())
    install_bad_request_filter().reset()  # an earlier test's line must not hide this one
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        for _ in range(3):
            status, _ = await request("GET", url + "/health", headers={"X-Big": "a" * 20_000})
            assert status in (400, 431)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    # one line naming the problem, no traceback, not an ERROR; the other two left out
    assert len(records) == 1, [r.getMessage() for r in records]
    (rec,) = records
    assert rec.levelno == logging.WARNING and rec.exc_info is None and rec.exc_text is None
    message = rec.getMessage()
    assert "malformed HTTP request from 127.0.0.1 refused with" in message and "\n" not in message
    assert "Got more than" in message or "too long" in message.lower()


# -- docs/security.md stays honest ---------------------------------------------------------------


def test_docs_security_yaml_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    secret_file = tmp_path / "secret"
    secret_file.write_text(ADMIN)
    for var in ("HELIOSDB_CDC_READ_ONLY_TOKEN", "ORDERS_HOOK_OLD_SECRET", "ORDERS_HOOK_NEW_SECRET",
                "PAYMENTS_HOOK_SECRET"):  # fmt: skip
        monkeypatch.setenv(var, "value-" + var)
    for block in blocks:
        for doc in block.split("# or\n"):
            doc = re.sub(r"file:/\S+", f"file:{secret_file}", doc)
            data = yaml.safe_load(doc)
            cfg = config_from_dict(data)
            if cfg.security.admin_token is not None:
                check_http_security(
                    cfg.model_copy(
                        update={
                            "security": cfg.security.model_copy(
                                update={"tls": cfg.security.tls.model_copy(update={"enabled": False})}
                            )
                        }
                    )
                )
