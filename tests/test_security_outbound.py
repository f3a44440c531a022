"""Outbound security over real sockets: TLS and mTLS receivers (certificates made by
trustme), the SSRF guard at registration and at connect time, redirects."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from heliosdb_cdc._config import Config, StreamConfig, config_from_dict
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._errors import ConfigError
from heliosdb_cdc.sinks._base import OutboundEvent, Outcome
from heliosdb_cdc.sinks._ssrf import SsrfGuard, SsrfRefused
from heliosdb_cdc.sinks._tls import client_context, create_mtls_client
from heliosdb_cdc.sinks._webhook import WebhookSink
from heliosdb_cdc.sinks._webhook_security import validate_webhook_stream, webhook_security_kwargs

Server = Callable[..., Awaitable[tuple[str, list[bytes]]]]


def event(n: int = 1) -> OutboundEvent:
    body = b'{"event_id":"evt_%d","table":"orders"}' % n
    return OutboundEvent(f"evt_{n}", n, "orders", "INSERT", b"{}", body, "2026-01-04T12:00:00Z")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """Start an aiohttp receiver on 127.0.0.1 (optionally TLS); returns (url, bodies)."""
    runners: list[web.AppRunner] = []

    async def start(
        ssl_ctx: ssl.SSLContext | None = None,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
        host: str = "127.0.0.1",
    ) -> tuple[str, list[bytes]]:
        got: list[bytes] = []

        async def default(request: web.Request) -> web.StreamResponse:
            got.append(await request.read())
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler or default)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx).start()
        runners.append(runner)
        scheme = "https" if ssl_ctx else "http"
        return f"{scheme}://{host}:{port}/hook", got

    yield start
    for r in runners:
        await r.cleanup()


def server_ctx(ca: trustme.CA, **issue: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost", **issue).configure_cert(ctx)
    return ctx


async def send_one(sink: WebhookSink, n: int = 1) -> Any:
    try:
        return (await sink.send([event(n)]))[0]
    finally:
        await sink.close()


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_receiver_right_ca_wrong_ca_and_system_cas(server: Server, tmp_path: Path) -> None:
    ca = trustme.CA()
    url, got = await server(server_ctx(ca))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    ok = await send_one(WebhookSink(url, ["s"], ssl_context=client_context({"ca_path": str(ca_file)})))
    assert ok.ok and len(got) == 1

    wrong = tmp_path / "wrong.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong))
    res = await send_one(WebhookSink(url, ["s"], ssl_context=client_context({"ca_path": str(wrong)})))
    assert res.outcome is Outcome.RETRY and res.error.startswith("TLS error")
    assert "certificate verify failed" in res.error
    # verification is on by default: the system CAs do not know this CA
    res = await send_one(WebhookSink(url, ["s"]))
    assert res.outcome is Outcome.RETRY and res.error.startswith("TLS error")
    assert len(got) == 1


async def test_outbound_ca_from_security_config(server: Server, tmp_path: Path) -> None:
    ca = trustme.CA()
    url, got = await server(server_ctx(ca))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = config_from_dict({"security": {"outbound_ca_path": str(tmp_path / "ca.pem")}})
    cfg = StreamConfig.model_validate(
        {"name": "s", "tables": ["orders"], "destination": {"type": "webhook", "address": url}}
    )
    sink = WebhookSink(url, [], **webhook_security_kwargs(cfg, config))
    assert (await send_one(sink)).ok and len(got) == 1


async def test_expired_certificate_fails(server: Server, tmp_path: Path) -> None:
    ca = trustme.CA()
    now = dt.datetime.now(dt.UTC)
    url, got = await server(
        server_ctx(ca, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    res = await send_one(
        WebhookSink(url, ["s"], ssl_context=client_context({"ca_path": str(tmp_path / "ca.pem")}))
    )
    assert res.outcome is Outcome.RETRY and "TLS error" in res.error and "expired" in res.error
    assert got == []


async def test_hostname_mismatch_fails(server: Server, tmp_path: Path) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example.com").configure_cert(ctx)
    url, _ = await server(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    res = await send_one(
        WebhookSink(url, ["s"], ssl_context=client_context({"ca_path": str(tmp_path / "ca.pem")}))
    )
    assert res.outcome is Outcome.RETRY and "TLS error" in res.error


def write_client_cert(client_ca: trustme.CA, d: Path) -> tuple[str, str]:
    leaf = client_ca.issue_cert("heliosdb-cdc.example.com")
    cert, key = d / "client-cert.pem", d / "client-key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


async def test_mtls_receiver_requires_client_certificate(server: Server, tmp_path: Path) -> None:
    ca, client_ca = trustme.CA(), trustme.CA()
    ctx = server_ctx(ca)
    client_ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    url, got = await server(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert, key = write_client_cert(client_ca, tmp_path)

    # the guide's create_mtls_client(ca, cert, key)
    mtls = create_mtls_client(str(tmp_path / "ca.pem"), cert, key)
    assert mtls.verify_mode == ssl.CERT_REQUIRED and mtls.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert (await send_one(WebhookSink(url, ["s"], ssl_context=mtls))).ok
    # the same through destination options (YAML / REST)
    opts = {"ca_path": str(tmp_path / "ca.pem"), "client_cert_path": cert, "client_key_path": key}
    assert (await send_one(WebhookSink(url, ["s"], ssl_context=client_context(opts)), 2)).ok
    assert len(got) == 2
    # without a client certificate the receiver refuses the handshake
    res = await send_one(WebhookSink(url, ["s"], ssl_context=client_context({"ca_path": opts["ca_path"]})))
    assert res.outcome is Outcome.RETRY and res.error is not None
    # a certificate from a CA the receiver does not trust is refused too
    other_cert, other_key = write_client_cert(trustme.CA(), tmp_path / ".." / tmp_path.name)
    res = await send_one(
        WebhookSink(url, ["s"], ssl_context=create_mtls_client(opts["ca_path"], other_cert, other_key))
    )
    assert res.outcome is Outcome.RETRY
    assert len(got) == 2


def test_tls_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        client_context({"ca_path": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="client_cert_path is not"):
        client_context({"client_key_path": str(tmp_path / "k.pem")})
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the client certificate"):
        client_context({"client_cert_path": str(tmp_path / "junk.pem")})


# -- SSRF guard -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr",
    ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "100.100.100.200", "0.0.0.0",
     "::ffff:169.254.169.254", "224.0.0.1"],
)  # fmt: skip
def test_metadata_and_link_local_always_refused(addr: str) -> None:
    for guard in (SsrfGuard(), SsrfGuard(allowed_cidrs=["0.0.0.0/0", "::/0"])):
        with pytest.raises(SsrfRefused, match="always refused"):
            guard.check_address(addr)


def test_private_ranges_policy() -> None:
    default = SsrfGuard()
    for a in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "::1", "fd12::1", "8.8.8.8"):
        assert default.reason(a) is None, a
    blocking = SsrfGuard(block_private=True)
    for a in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.31.255.255", "::1", "fd12::1", "100.64.0.1"):
        assert "block_private_networks" in (blocking.reason(a) or ""), a
    assert blocking.reason("8.8.8.8") is None
    listed = SsrfGuard(allowed_cidrs=["10.20.0.0/16"])
    assert listed.reason("10.20.1.1") is None
    assert "webhook_allowed_cidrs" in (listed.reason("127.0.0.1") or "")
    assert "webhook_allowed_cidrs" in (listed.reason("8.8.8.8") or "")


@pytest.mark.parametrize(
    "addr",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052 well-known prefix) of 169.254.169.254
        "64:ff9b::169.254.169.254",
        "::a9fe:a9fe",  # IPv4-compatible
        "::169.254.169.254",
        "::ffff:0:a9fe:a9fe",  # IPv4-translated
        "2002:a9fe:a9fe::1",  # 6to4
        "2001:0:a9fe:a9fe::1",  # Teredo, server field
        "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client field (obfuscated)
        "64:ff9b:1::a9fe:a9fe",  # local-use NAT64, /96 layout
        "64:ff9b:1:a9fe:a9:fe00::",  # local-use NAT64, /48 layout
        "64:ff9b:1:0:a9:fea9:fe00:0",  # local-use NAT64, /64 layout
        "64:ff9b::6464:64c8",  # Alibaba metadata 100.100.100.200 through NAT64
    ],
)
def test_ipv6_forms_embedding_a_metadata_address_are_refused(addr: str) -> None:
    for guard in (SsrfGuard(), SsrfGuard(allowed_cidrs=["0.0.0.0/0", "::/0"])):
        with pytest.raises(SsrfRefused, match=r"embeds 169\.254\.169\.254|embeds 100\.100\.100\.200"):
            guard.check_address(addr)


@pytest.mark.parametrize(
    "addr",
    ["64:ff9b::a00:1", "2002:a00:1::1", "::127.0.0.1", "::ffff:127.0.0.1", "::ffff:0:a00:1",
     "2001:0:a00:1::f7f7:f7f7", "64:ff9b::c0a8:101", "64:ff9b:1::808:808"],
)  # fmt: skip
def test_ipv6_forms_embedding_a_private_address_follow_block_private(addr: str) -> None:
    assert SsrfGuard().reason(addr) is None
    assert "block_private_networks" in (SsrfGuard(block_private=True).reason(addr) or "")


def test_ipv6_forms_embedding_public_addresses_pass() -> None:
    blocking = SsrfGuard(block_private=True)
    for a in ("64:ff9b::808:808", "2002:808:808::1", "2606:4700:4700::1111", "::1.1.1.1"):
        assert blocking.reason(a) is None, a
    # the allow-list takes an IPv4 range for the IPv4 address a NAT64 name resolves to
    listed = SsrfGuard(allowed_cidrs=["203.0.113.0/24"])
    assert listed.reason("64:ff9b::cb00:7105") is None
    assert "webhook_allowed_cidrs" in (listed.reason("64:ff9b::cb00:8105") or "")


async def test_registration_refuses_an_embedded_metadata_literal() -> None:
    with pytest.raises(ConfigError, match=r"embeds 169\.254\.169\.254"):
        await validate_webhook_stream(stream("http://[64:ff9b::a9fe:a9fe]/h"), Config())


def stream(url: str, **options: Any) -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "name": "s",
            "tables": ["orders"],
            "destination": {"type": "webhook", "address": url, "options": options},
        }
    )


async def test_registration_resolves_and_checks(tmp_path: Path) -> None:
    default = Config()
    await validate_webhook_stream(stream("http://127.0.0.1:9/h"), default)
    await validate_webhook_stream(stream("http://localhost:9/h"), default)
    with pytest.raises(ConfigError, match=r"169\.254\.169\.254.*always refused"):
        await validate_webhook_stream(stream("http://169.254.169.254/latest/meta-data/"), default)
    with pytest.raises(ConfigError, match="always refused"):
        await validate_webhook_stream(stream("http://[fd00:ec2::254]/"), default)
    blocking = config_from_dict({"security": {"block_private_networks": True}})
    with pytest.raises(ConfigError, match=r"localhost -> .*block_private_networks"):
        await validate_webhook_stream(stream("http://localhost:9/h"), blocking)
    with pytest.raises(ConfigError, match="block_private_networks"):
        await validate_webhook_stream(stream("http://10.0.0.5/h"), blocking)
    listed = config_from_dict({"security": {"webhook_allowed_cidrs": ["192.0.2.0/24"]}})
    with pytest.raises(ConfigError, match="webhook_allowed_cidrs"):
        await validate_webhook_stream(stream("http://127.0.0.1:9/h"), listed)
    with pytest.raises(ConfigError, match="does not resolve"):
        await validate_webhook_stream(stream("http://no-such-host.invalid/h"), default)


class FlippingResolver:
    """DNS rebinding: the first answer is harmless, later answers point elsewhere."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        addr = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [addr]


async def test_connect_time_check_defeats_dns_rebinding(server: Server) -> None:
    url, got = await server()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    flipping = FlippingResolver(["127.0.0.1", "169.254.169.254"])
    sink = WebhookSink(f"http://hooks.example.test:{port}/hook", ["s"], ssrf_guard=SsrfGuard())
    await sink.start()
    assert sink._pool is not None
    sink._pool.resolver = flipping
    try:
        first = (await sink.send([event(1)]))[0]
        assert first.ok, first.error
        sink._pool.close()  # drop the kept-alive connection: the next send connects anew
        second = (await sink.send([event(2)]))[0]
    finally:
        await sink.close()
    assert second.outcome is Outcome.RETRY
    assert "refused by the SSRF guard" in (second.error or "")
    assert "169.254.169.254" in (second.error or "")
    assert len(got) == 1 and flipping.calls == 2


async def test_connect_time_check_of_literal_and_blocked_private(server: Server) -> None:
    url, got = await server()
    res = await send_one(WebhookSink(url, ["s"], ssrf_guard=SsrfGuard(block_private=True)))
    assert res.outcome is Outcome.FAILED and "block_private_networks" in (res.error or "")
    localhost = url.replace("127.0.0.1", "localhost")
    res = await send_one(WebhookSink(localhost, ["s"], ssrf_guard=SsrfGuard(block_private=True)))
    assert res.outcome is Outcome.RETRY and "refused by the SSRF guard" in (res.error or "")
    assert got == []
    assert (await send_one(WebhookSink(localhost, ["s"], ssrf_guard=SsrfGuard()))).ok


async def test_redirects_are_not_followed(server: Server) -> None:
    target_url, target_got = await server()

    async def redirect(request: web.Request) -> web.StreamResponse:
        await request.read()
        raise web.HTTPTemporaryRedirect(location="http://169.254.169.254/latest/meta-data/")

    async def redirect_internal(request: web.Request) -> web.StreamResponse:
        await request.read()
        raise web.HTTPFound(location=target_url)

    url, _ = await server(handler=redirect)
    res = await send_one(WebhookSink(url, ["s"], ssrf_guard=SsrfGuard()))
    assert res.outcome is Outcome.FAILED and res.status == 307 and "redirects are not followed" in res.error
    url2, _ = await server(handler=redirect_internal)
    res = await send_one(WebhookSink(url2, ["s"]))
    assert res.outcome is Outcome.FAILED and res.status == 302
    assert target_got == []
