"""Benchmark webhook receiver, run as its own process (its own GIL, its own core).

    python bench/receiver.py --port 8123 [--status 200] [--latency] [--impl raw|aiohttp]

Two interchangeable servers: ``raw`` (default), a minimal asyncio HTTP/1.1 server,
and ``aiohttp`` (aiohttp.web). On a 2-core machine aiohttp's server tops out near
2,000 one-event POSTs/s, below what the senders under test reach, so the default is
the cheaper one; ``python bench/run.py --receiver aiohttp`` uses aiohttp.

``POST /hook`` (any path not starting with ``/_``) records the receipt time and
the number of events in the request: the ``X-HeliosDB-Event-Count`` header when
present, else 1 for a JSON object or the length of a JSON array. With
``--latency`` (or ``POST /_mode?latency=1``) every event is parsed and the
commit->receipt latency is taken from its commit time: heliosdb-cdc's
``timestamp`` field (ISO 8601, microseconds), Debezium's ``source.ts_ms``,
pgstream's ``Data.timestamp`` (wal2json's commit time, microseconds).

Control (JSON): ``GET /_stats``, ``POST /_reset``, ``POST /_mode?status=503``
(answer every delivery with that status: a dead endpoint), ``POST
/_mode?status=200`` (recover). Signatures are not verified here: the tests do
that; the benchmark measures the service, not the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web


class State:
    def __init__(self, status: int, latency: bool) -> None:
        self.status = status
        self.latency = latency
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.requests = 0
        self.refused = 0
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.latencies: list[float] = []
        self.min_commit = 0.0
        self.bytes = 0


def _commit_time(ev: Any) -> float | None:
    if not isinstance(ev, dict):
        return None
    ts = ev.get("timestamp")  # heliosdb-cdc: ISO 8601; pgstream (wal2json): "2025-03-13 09:52:47.5793+00"
    if isinstance(ts, str) and ("T" in ts or " " in ts):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    src = ev.get("source")
    if isinstance(src, dict) and isinstance(src.get("ts_ms"), (int, float)):
        # Debezium: ts_us when present (2.x adds it), else milliseconds
        if isinstance(src.get("ts_us"), int):
            return float(src["ts_us"]) / 1e6
        return float(src["ts_ms"]) / 1000.0
    for wrapper in ("payload", "Data"):  # Debezium with schemas; pgstream's webhook body
        inner = ev.get(wrapper)
        if isinstance(inner, dict):
            return _commit_time(inner)
    for k in ("commit_timestamp", "commit_time"):
        v = ev.get(k)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None


def build_app(state: State) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        if state.status != 200:
            state.refused += 1
            return web.Response(status=state.status)
        record(state, body, request.headers.get("X-HeliosDB-Event-Count"), now)
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(stats_of(state)), content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.Response(text="ok")

    async def mode(request: web.Request) -> web.Response:
        if "status" in request.query:
            state.status = int(request.query["status"])
        if "latency" in request.query:
            state.latency = request.query["latency"] not in ("0", "false", "")
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/_mode", mode)
    app.router.add_route("*", "/{tail:(?!_).*}", hook)
    return app


def record(state: State, body: bytes, header_count: str | None, now: float) -> None:
    """Count (and, in latency mode, time) the events of one accepted delivery."""
    events: list[Any] | None = None
    if state.latency or (header_count is None and body[:1] == b"["):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        events = data if isinstance(data, list) else [data]
    n = int(header_count) if header_count else (len(events) if events is not None else 1)
    if state.first_recv == 0.0:
        state.first_recv = now
    state.last_recv = now
    state.count += n
    state.requests += 1
    state.bytes += len(body)
    if state.latency and events is not None:
        for ev in events:
            ct = _commit_time(ev)
            if ct is not None:
                state.latencies.append(now - ct)
                if not state.min_commit or ct < state.min_commit:
                    state.min_commit = ct


class RawHttp(asyncio.Protocol):
    """A minimal HTTP/1.1 server (keep-alive, Content-Length or chunked bodies).

    aiohttp's server costs ~0.3-0.5 ms of CPU per request on this class of machine,
    which caps a one-event-per-POST benchmark near 2,000/s whatever the sender; this
    parser costs a fraction of that, so the sender is what gets measured.
    """

    def __init__(self, state: State, app: web.Application) -> None:
        self.state = state
        self.app = app
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            pos = end + 4
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    eol = self.buf.find(b"\r\n", pos)
                    if eol < 0:
                        return
                    size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                    if len(self.buf) < eol + 2 + size + 2:
                        return
                    body += self.buf[eol + 2 : eol + 2 + size]
                    pos = eol + 2 + size + 2
                    if size == 0:
                        if self.buf[pos - 2 : pos] != b"\r\n":
                            return
                        break
                payload = bytes(body)
            else:
                length = int(headers.get("content-length", "0"))
                if len(self.buf) < pos + length:
                    return
                payload = bytes(self.buf[pos : pos + length])
                pos += length
            del self.buf[:pos]
            self.handle(method, target, headers, payload)

    def reply(self, status: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, ctype.encode(), len(body), body)
        )

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        state = self.state
        path, _, query = target.partition("?")
        if path.startswith("/_"):
            q = dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv)
            if path == "/_stats":
                self.reply(200, orjson.dumps(stats_of(state)), "application/json")
                return
            if path == "/_reset":
                state.reset()
            elif path == "/_mode":
                if "status" in q:
                    state.status = int(q["status"])
                if "latency" in q:
                    state.latency = q["latency"] not in ("0", "false", "")
            self.reply(200, b"ok")
            return
        now = time.time()
        if state.status != 200:
            state.refused += 1
            self.reply(state.status)
            return
        record(state, body, headers.get("x-heliosdb-event-count"), now)
        self.reply(200)


def stats_of(state: State) -> dict[str, Any]:
    out: dict[str, Any] = {
        "count": state.count,
        "requests": state.requests,
        "refused": state.refused,
        "first_recv": state.first_recv,
        "last_recv": state.last_recv,
        "bytes": state.bytes,
        "status": state.status,
        "min_commit": state.min_commit,
    }
    lat = sorted(state.latencies)
    if lat:

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] * 1000, 2)

        out["latency_ms"] = {
            "n": len(lat),
            "p50": pct(0.50),
            "p99": pct(0.99),
            "p999": pct(0.999),
            "max": round(lat[-1] * 1000, 2),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--latency", action="store_true")
    p.add_argument(
        "--impl",
        choices=["raw", "aiohttp"],
        default="raw",
        help="raw: minimal asyncio HTTP/1.1 server (default); aiohttp: aiohttp.web",
    )
    a = p.parse_args()
    state = State(a.status, a.latency)
    app = build_app(state)
    if a.impl == "aiohttp":
        web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=None, backlog=1024)
        return

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: RawHttp(state, app), "127.0.0.1", a.port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
