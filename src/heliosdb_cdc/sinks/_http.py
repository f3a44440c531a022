"""A lean HTTP/1.1 client for webhook POSTs.

One event per POST is the webhook's default, and a general-purpose client spends
most of a request's CPU time on what a webhook never needs (cookies, redirects,
proxies, streaming bodies, per-request header objects). :class:`HttpPool` keeps
keep-alive connections to one origin, writes a pre-built request head plus the
per-request headers and body in one ``write``, and lets ``httptools`` (the
llhttp parser uvicorn uses) parse the response; it reads only the status and
``Retry-After``.

One request is in flight per connection; concurrency comes from the connection
count (the stream's lanes). Request timeouts are enforced by one periodic sweep
(every tenth of the timeout, at most 1 s), not a timer per request. Connections are opened on demand: with an
:class:`SsrfGuard` the host is resolved and every address checked on each new
connection (DNS rebinding cannot slip a refused address in later); TLS uses the
given ``ssl.SSLContext`` (system CAs by default) with the URL's host name for
SNI and verification.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httptools

from ._ssrf import SsrfGuard, SsrfRefused, resolve_host

Resolver = Callable[[str, int], Awaitable[list[str]]]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` returns a future of (status, Retry-After)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self.status = 0
        self.retry_after: str | None = None
        self.reusable = False
        self.deadline = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionError(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.status:  # a response without a length ends with the connection
            self._done()
        else:
            self.fail(ConnectionResetError("connection closed before the response"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim response: the real one follows
            self.status = 0
            return
        self.reusable = self.parser.should_keep_alive()
        self._done()
        if not self.reusable and self.transport is not None:
            self.transport.close()

    # client side
    def request(self, data: bytes) -> asyncio.Future[tuple[int, str | None]]:
        assert self.transport is not None
        self.status = 0
        self.retry_after = None
        self.reusable = False
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return self.waiter

    def _done(self) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result((self.status, self.retry_after))

    def fail(self, exc: Exception) -> None:
        self.reusable = False
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class HttpPool:
    """Keep-alive connections to the origin of ``url``; ``post`` sends one request."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 30.0,
        ssrf_guard: SsrfGuard | None = None,
        user_agent: str = "heliosdb-cdc",
        max_idle: int = 1000,
        resolver: Resolver = resolve_host,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL {url!r} must be http:// or https:// with a host")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.ssrf_guard = ssrf_guard
        self.max_idle = max_idle
        self.resolver = resolver
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rsplit("@", 1)[-1]  # never send userinfo in Host
        self._head = f"POST {target} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: {user_agent}\r\n".encode(
            "latin-1"
        )
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        try:
            ipaddress.ip_address(self.host.split("%", 1)[0])
            self._literal = True
        except ValueError:
            self._literal = False

    async def post(self, headers: bytes, body: bytes) -> tuple[int, str | None]:
        """Send ``headers`` (``Name: value\\r\\n`` lines) and ``body``; return (status, Retry-After).

        Raises ``TimeoutError``, ``ssl.SSLError``, :class:`SsrfRefused` or ``OSError``.
        """
        conn = None
        idle = self._idle
        while idle:
            c = idle.pop()
            if c.usable:
                conn = c
                break
        if conn is None:
            conn = await self._connect()
        fut = conn.request(b"%s%sContent-Length: %d\r\n\r\n%s" % (self._head, headers, len(body), body))
        loop = conn.loop
        conn.deadline = loop.time() + self.timeout
        busy = self._busy
        busy.add(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        try:
            result = await fut
        except BaseException:  # failed, timed out or cancelled: this connection is done
            conn.fail(ConnectionAbortedError("request abandoned"))
            raise
        finally:
            busy.discard(conn)
        if conn.reusable and len(idle) < self.max_idle:
            idle.append(conn)
        return result

    @property
    def _sweep_every(self) -> float:
        return min(max(self.timeout / 10, 0.01), 1.0)

    def _sweep(self) -> None:
        """Fail requests past their deadline: one timer for the pool, not one per request."""
        self._sweeper = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn.fail(TimeoutError())
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    async def _addresses(self) -> list[str]:
        if self.ssrf_guard is None:
            return [self.host]
        if self._literal:
            self.ssrf_guard.check_address(self.host)
            return [self.host]
        try:
            found = await self.resolver(self.host, self.port)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {self.host!r}: {exc}") from None
        allowed = [a for a in found if self.ssrf_guard.reason(a) is None]
        if not allowed:
            reasons = "; ".join(sorted({self.ssrf_guard.reason(a) or "" for a in found}))
            raise SsrfRefused(f"webhook destination refused by the SSRF guard: {self.host} -> {reasons}")
        return allowed

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if self.tls:
            ctx = self.ssl_context or ssl.create_default_context()
        last: Exception | None = None
        async with asyncio.timeout(self.connect_timeout):
            for addr in await self._addresses():
                try:
                    _, proto = await loop.create_connection(
                        lambda: _Connection(loop),
                        addr,
                        self.port,
                        ssl=ctx,
                        server_hostname=self.host if ctx is not None else None,
                    )
                    return proto
                except ssl.SSLError:
                    raise
                except OSError as exc:
                    last = exc
        assert last is not None
        raise last

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for c in idle:
            if c.transport is not None:
                c.transport.close()
