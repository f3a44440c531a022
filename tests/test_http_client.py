"""The webhook's HTTP/1.1 client (sinks/_http.py) against real sockets with scripted servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from heliosdb_cdc.sinks._base import OutboundEvent, Outcome
from heliosdb_cdc.sinks._http import HttpPool
from heliosdb_cdc.sinks._webhook import WebhookSink, retry_after_seconds

Reply = Callable[[bytes], bytes | None]  # request bytes -> raw response (None: say nothing)


class Server:
    """A raw HTTP server: reads one request at a time, answers with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.close_after = False
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.reply(head + body)
                if answer is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook?x=1"


Serve = Callable[[Reply], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def start(reply: Reply) -> Server:
        s = Server(reply)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def ok(_: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_keep_alive_reuses_one_connection_and_sends_exact_bytes(serve: Serve) -> None:
    srv = await serve(ok)
    pool = HttpPool(srv.url)
    for i in range(20):
        assert await pool.post(b"X-N: %d\r\n" % i, b'{"n":%d}' % i) == (200, None)
    pool.close()
    assert srv.connections == 1
    first = srv.requests[0]
    assert first.startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-N: 0\r\nContent-Length: 7\r\n\r\n" in first and first.endswith(b'{"n":0}')


async def test_concurrent_posts_open_one_connection_each(serve: Serve) -> None:
    srv = await serve(ok)
    pool = HttpPool(srv.url)
    results = await asyncio.gather(*(pool.post(b"", b"{}") for _ in range(10)))
    assert results == [(200, None)] * 10 and srv.connections == 10
    await asyncio.gather(*(pool.post(b"", b"{}") for _ in range(10)))
    assert srv.connections == 10  # all kept alive and reused
    pool.close()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 503 Unavailable\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Unavailable\r\nretry-after:  7 \r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_status_and_retry_after(serve: Serve, response: bytes) -> None:
    srv = await serve(lambda _: response)
    pool = HttpPool(srv.url)
    assert await pool.post(b"", b"{}") == (503, "7")
    assert await pool.post(b"", b"{}") == (503, "7")
    assert srv.connections == 1
    pool.close()


NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:29:30 GMT", 90.0),  # IMF-fixdate, 90 s ahead
        ("Wednesday, 21-Oct-15 07:28:10 GMT", 10.0),  # obsolete RFC 850 form
        ("Wed Oct 21 07:28:05 2015", 5.0),  # obsolete asctime form (GMT)
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: retry now
        ("soon", None),
        ("Wed, 99 Oct 2015 07:28:00 GMT", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=NOW) == seconds


async def test_sink_honours_a_retry_after_date(serve: Serve) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    head = f"HTTP/1.1 503 Busy\r\nRetry-After: {when}\r\nContent-Length: 0\r\n\r\n"
    srv = await serve(lambda _: head.encode())
    sink = WebhookSink(srv.url, ["s"])
    res = (await sink.send([OutboundEvent("evt_1", 1, "t", "INSERT", b"{}", b"{}", "")]))[0]
    assert res.outcome is Outcome.RETRY and res.status == 503
    assert res.retry_after is not None and 3000 < res.retry_after <= 3600
    await sink.close()


async def test_response_ended_by_close_and_connection_close(serve: Serve) -> None:
    srv = await serve(lambda _: b"HTTP/1.0 202 Accepted\r\n\r\nbody until EOF")
    srv.close_after = True
    pool = HttpPool(srv.url)
    assert await pool.post(b"", b"{}") == (202, None)
    assert await pool.post(b"", b"{}") == (202, None)
    assert srv.connections == 2
    srv2 = await serve(lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    pool2 = HttpPool(srv2.url)
    for _ in range(3):
        assert (await pool2.post(b"", b"{}"))[0] == 200
    assert srv2.connections == 3


async def test_server_closing_an_idle_connection_is_replaced(serve: Serve) -> None:
    srv = await serve(ok)
    srv.close_after = True  # closes after answering, without saying so
    pool = HttpPool(srv.url)
    assert (await pool.post(b"", b"{}"))[0] == 200
    await asyncio.sleep(0.05)  # the close reaches us while the connection is idle
    assert (await pool.post(b"", b"{}"))[0] == 200
    assert srv.connections == 2


async def test_timeout_refused_and_garbage(serve: Serve) -> None:
    silent = await serve(lambda _: None)
    pool = HttpPool(silent.url, timeout=0.3)
    with pytest.raises(TimeoutError):  # the pool's own timeout, not a hang
        await pool.post(b"", b"{}")
    garbage = await serve(lambda _: b"SMTP ready\r\n\r\n")
    with pytest.raises(ConnectionError, match="invalid HTTP response"):
        await HttpPool(garbage.url).post(b"", b"{}")
    port = silent.url.split(":")[2].split("/")[0]
    silent.server.close()  # type: ignore[union-attr]
    await silent.server.wait_closed()  # type: ignore[union-attr]
    with pytest.raises(OSError):
        await HttpPool(f"http://127.0.0.1:{port}/").post(b"", b"{}")


def test_bad_urls_are_refused() -> None:
    for url in ("ftp://example.com/x", "http:///nohost", "example.com/hook"):
        with pytest.raises(ValueError, match="http:// or https://"):
            HttpPool(url)
    pool = HttpPool("https://user:pw@hooks.example.com/in")
    assert pool.tls and pool.port == 443 and b"Host: hooks.example.com\r\n" in pool._head


async def test_sink_maps_outcomes_and_refuses_header_injection(serve: Serve) -> None:
    srv = await serve(ok)
    ev = OutboundEvent("evt_1", 1, "t", "INSERT", b"{}", b"{}", "")
    sink = WebhookSink(srv.url, ["s"])
    assert (await sink.send([ev]))[0].ok
    bad = OutboundEvent("evt_2", 2, "t", "INSERT", b"{}", b"{}", "", headers={"X-A": "1\r\nX-Evil: 1"})
    res = (await sink.send([bad]))[0]
    assert res.outcome is Outcome.FAILED and "line break" in (res.error or "")
    assert len(srv.requests) == 1
    with pytest.raises(ValueError, match="line break"):
        WebhookSink(srv.url, extra_headers={"X-B\n": "v"})
    silent = await serve(lambda _: None)
    slow = WebhookSink(silent.url, timeout_secs=0.2)
    res = (await slow.send([ev]))[0]
    assert res.outcome is Outcome.RETRY and res.error == "timed out after 0.2s"
    await sink.close()
    await slow.close()


async def test_a_cancelled_request_closes_its_connection(serve: Serve) -> None:
    srv = await serve(lambda _: None)
    pool = HttpPool(srv.url)
    task = asyncio.create_task(pool.post(b"", b"{}"))
    for _ in range(100):
        if pool._busy:
            break
        await asyncio.sleep(0.01)
    (conn,) = pool._busy
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.transport is not None and conn.transport.is_closing()
    assert not pool._busy and not pool._idle
