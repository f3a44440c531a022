"""Webhook signatures over real sockets: the guide's ``X-HeliosDB-Signature: sha256=``
(default) with secret rotation, and opt-in Standard Webhooks verified with the
``standardwebhooks`` package."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from heliosdb_cdc._config import Config, StreamConfig, config_from_dict
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._errors import ConfigError
from heliosdb_cdc.sinks import _standard_webhooks as std
from heliosdb_cdc.sinks._base import OutboundEvent
from heliosdb_cdc.sinks._webhook import WebhookSink
from heliosdb_cdc.sinks._webhook_security import webhook_security_kwargs
from tests.plugins.receiver import verify_signature

OLD = "old-secret"
NEW = "new-secret"


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    got: list[tuple[bytes, dict[str, str]]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


def ev(n: int) -> OutboundEvent:
    body = b'{"event_id":"evt_%d","value":{"note":"caf\xc3\xa9"}}' % n
    return OutboundEvent(f"evt_{n}", n, "orders", "INSERT", b"{}", body, "2026-01-04T12:00:00Z")


async def deliver(sink: WebhookSink, *events: OutboundEvent) -> None:
    try:
        for e in events:
            assert (await sink.send([e]))[0].ok
    finally:
        await sink.close()


async def test_default_scheme_and_rotation(capture: Any) -> None:
    url, got = capture
    await deliver(WebhookSink(url, [OLD]), ev(1))
    await deliver(WebhookSink(url, [OLD, NEW]), ev(2))  # rotation: both secrets active
    await deliver(WebhookSink(url, [NEW]), ev(3))  # the old secret retired
    (b1, h1), (b2, h2), (b3, h3) = got
    assert verify_signature(b1, h1["X-HeliosDB-Signature"], OLD)
    parts = h2["X-HeliosDB-Signature"].split(",")
    assert len(parts) == 2 and all(p.startswith("sha256=") for p in parts)
    # a receiver holding either secret accepts the request during the rotation window
    assert any(verify_signature(b2, p, OLD) for p in parts)
    assert any(verify_signature(b2, p, NEW) for p in parts)
    assert verify_signature(b3, h3["X-HeliosDB-Signature"], NEW)
    assert not verify_signature(b3, h3["X-HeliosDB-Signature"], OLD)
    assert "webhook-signature" not in {k.lower() for k in h1}


async def test_standard_webhooks_verified_by_reference_library(capture: Any) -> None:
    url, got = capture
    s1, s2 = std.generate_secret(), std.generate_secret()
    sink = WebhookSink(url, [s1, s2], signature_scheme="standard")
    await deliver(sink, ev(1), ev(1))  # the same event sent twice (a retry)
    (body, headers), (_, again) = got
    for secret in (s1, s2):
        assert Webhook(secret).verify(body, headers) == {"event_id": "evt_1", "value": {"note": "café"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(std.generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(s1).verify(body + b" ", headers)
    assert headers["webhook-id"] == "evt_1" == again["webhook-id"]  # stable across retries
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert "X-HeliosDB-Signature" not in headers


def stream(options: dict[str, Any] | None = None, secret: str | None = None) -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "name": "s",
            "tables": ["orders"],
            "secret": secret,
            "destination": {"type": "webhook", "address": "http://127.0.0.1:9/h", "options": options or {}},
        }
    )


def test_scheme_selection_per_stream_and_global() -> None:
    secret = std.generate_secret()
    default = Config()
    assert webhook_security_kwargs(stream(secret="x"), default)["signature_scheme"] == "heliosdb"
    per_stream = stream({"signature_scheme": "standard"}, secret)
    assert webhook_security_kwargs(per_stream, default)["signature_scheme"] == "standard"
    global_std = config_from_dict({"webhook": {"signature_scheme": "standard"}})
    assert webhook_security_kwargs(stream(secret=secret), global_std)["signature_scheme"] == "standard"
    # a stream may opt back out of the global choice
    out = stream({"signature_scheme": "heliosdb"}, "plain")
    assert webhook_security_kwargs(out, global_std)["signature_scheme"] == "heliosdb"


def test_bad_standard_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="whsec_") as err:
        webhook_security_kwargs(stream({"signature_scheme": "standard"}, "hunter2-plain"), Config())
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="16 bytes"):
        webhook_security_kwargs(stream({"signature_scheme": "standard"}, "whsec_c2hvcnQ="), Config())
    with pytest.raises(ConfigError, match="signature_scheme"):
        webhook_security_kwargs(stream({"signature_scheme": "md5"}, "x"), Config())


def test_secret_from_file(tmp_path: Any) -> None:
    (tmp_path / "hook.secret").write_text(f"{OLD},{NEW}\n")
    cfg = config_from_dict(
        {
            "streams": [
                {
                    "name": "s",
                    "tables": ["orders"],
                    "secret": f"file:{tmp_path / 'hook.secret'}",
                    "destination": {"type": "webhook", "address": "http://127.0.0.1:9/h"},
                }
            ],
            "webhooks": [{"url": "http://127.0.0.1:9/w", "secret": f"file:{tmp_path / 'hook.secret'}"}],
        }
    )
    assert cfg.streams[0].secret is not None
    assert cfg.streams[0].secret.get_secret_value() == f"{OLD},{NEW}"
    assert cfg.webhooks[0].secret.get_secret_value() == f"{OLD},{NEW}"
    assert OLD not in repr(cfg) and OLD not in str(cfg.model_dump())
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty") as err:
        config_from_dict(
            {"webhooks": [{"url": "http://127.0.0.1:9/w", "secret": f"file:{tmp_path / 'empty'}"}]}
        )
    assert err.value.context["key_path"] == "webhooks[0].secret"
