"""pytest plugin: a real HTTP receiver that records requests and checks signatures."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from heliosdb_cdc._embedded import free_port


def verify_signature(payload: bytes, signature: str, secret: str) -> bool:
    """The guide's receiver-side check, verbatim."""
    expected = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, expected)


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    path: str

    @property
    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            # nested deeper than orjson's 1,024 levels (a test's deeply nested value): the
            # stdlib parser, with room for the nesting
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(limit, 20_000))
            try:
                return json.loads(self.body)
            finally:
                sys.setrecursionlimit(limit)


@dataclass
class Receiver:
    url: str
    secret: str | None = None
    requests: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    respond: Callable[[Received], int | tuple[int, dict[str, str]]] | None = None
    # fault injection: return "reset" (drop the connection) or a number of seconds to stall
    fault: Callable[[Received], str | float | None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in self.requests:
            data = r.json
            out.extend(data if isinstance(data, list) else [data])
        return out

    async def wait_for(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        async def cond() -> None:
            while len(self.events) < n:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(cond(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"receiver got {len(self.events)} events, expected {n} within {timeout}s"
            ) from None
        return self.events


async def start_receiver(
    secret: str | None = None, host: str = "127.0.0.1"
) -> tuple[Receiver, web.AppRunner]:
    port = free_port()
    rec = Receiver(url=f"http://{host}:{port}/hook", secret=secret)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        item = Received(body, dict(request.headers), request.path)
        if rec.fault is not None:
            what = rec.fault(item)
            if what == "reset":
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
            if isinstance(what, (int, float)) and what:
                await asyncio.sleep(what)
        if rec.respond is not None:
            outcome = rec.respond(item)
            status, headers = outcome if isinstance(outcome, tuple) else (outcome, {})
            if not 200 <= status < 300:
                return web.Response(status=status, headers=headers)
        if rec.secret is not None:
            sig = request.headers.get("X-HeliosDB-Signature", "")
            if not verify_signature(body, sig, rec.secret):
                rec.bad_signatures += 1
                return web.Response(status=401)
        rec.requests.append(item)
        rec._changed.set()
        return web.json_response({"status": "success"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return rec, runner


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec, runner = await start_receiver(secret="your-webhook-secret")
    yield rec
    await runner.cleanup()
