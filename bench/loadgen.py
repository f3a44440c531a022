"""Calibration: how many POSTs/s bench/receiver.py takes on this machine.

    python bench/loadgen.py URL REQUESTS [CONCURRENCY]

A raw asyncio HTTP/1.1 client in its own process posts REQUESTS bodies shaped like
a heliosdb-cdc event (~700 bytes, keep-alive, CONCURRENCY connections, one request in
flight on each). The receiver's
own stats give the rate; this bounds what any webhook sender can reach here.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

BODY = orjson.dumps(
    {
        "event_id": "evt_0000000001a2b3c4_000001",
        "timestamp": "2026-01-04T12:00:00.123456Z",
        "sequence": 1,
        "operation": "INSERT",
        "database": "postgres",
        "table": "bench_events",
        "key": {"id": 1},
        "value": {
            "id": 1,
            "account": 1,
            "amount": 12345.67,
            "note": "order note 1 " + "c4ca4238a0b923820dcc509a6f75849b",
            "code": "code-1",
            "active": False,
            "created_at": "2026-01-04T12:00:00.123456Z",
            "payload": {"k": 1, "tags": ["a", "b"], "ok": True},
            "ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "score": 123.456,
        },
        "old_value": None,
        "transaction_id": "txn_1234",
    }
)


class Client(asyncio.Protocol):
    """One keep-alive connection sending REQUEST, one at a time (a raw client: the cost of
    aiohttp's client would otherwise be what this measures)."""

    def __init__(self, request: bytes, quota: list[int], done: asyncio.Future[None]) -> None:
        self.request = request
        self.quota = quota
        self.done = done
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        if self.quota[0] <= 0:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.quota[0] -= 1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            self.send()


async def main(url: str, n: int, conc: int) -> None:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    request = (
        f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()
    quota = [n]
    futures = []
    for _ in range(conc):
        fut: asyncio.Future[None] = loop.create_future()
        futures.append(fut)
        await loop.create_connection(lambda f=fut: Client(request, quota, f), u.hostname, u.port)
    await asyncio.gather(*futures)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 64))
