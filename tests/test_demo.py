"""The demo's latency line: commit -> receipt, over the last 10 seconds only.

The receiver is the demo's own, served by aiohttp on a local port; the requests are
signed like the service signs them. Its clock is a stand-in so that "10 seconds
later" needs no waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from aiohttp import web

from heliosdb_cdc._embedded import free_port
from heliosdb_cdc.demo import LATENCY_WINDOW_S, SECRET, DemoReceiver, status_line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Post = Callable[[float], Awaitable[int]]


@pytest.fixture
async def demo() -> AsyncIterator[tuple[DemoReceiver, Clock, Post]]:
    clock = Clock()
    wall_offset = time.time() - clock.now
    # the wall clock moves with the stand-in clock: latency = wall() - commit time
    rec = DemoReceiver(clock=clock, wall=lambda: clock.now + wall_offset)
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    seq = iter(range(1, 1_000_000))

    async def post(latency_s: float) -> int:
        """Deliver one change committed ``latency_s`` before now (on the stand-in clock)."""
        n = next(seq)
        committed = datetime.fromtimestamp(clock.now + wall_offset - latency_s, UTC)
        body = orjson.dumps(
            {
                "event_id": f"evt_{n}",
                "timestamp": committed.isoformat().replace("+00:00", "Z"),
                "sequence": n,
            }
        )
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{port}/hook", data=body, headers={"X-HeliosDB-Signature": sig}) as r,
        ):
            return r.status

    yield rec, clock, post
    await runner.cleanup()


async def test_latency_is_commit_to_receipt(demo: tuple[DemoReceiver, Clock, Post]) -> None:
    rec, _, post = demo
    assert rec.percentile(0.5) is None  # nothing received yet: no number made up
    for latency in (0.010, 0.020, 0.030, 0.040):
        assert await post(latency) == 200
    p50 = rec.percentile(0.5)
    assert p50 is not None and p50 == pytest.approx(30, abs=1)
    assert rec.percentile(0.99) == pytest.approx(40, abs=1)


async def test_p99_covers_the_last_10_seconds_only(demo: tuple[DemoReceiver, Clock, Post]) -> None:
    rec, clock, post = demo
    assert LATENCY_WINDOW_S == 10
    for _ in range(50):
        assert await post(5.0)  # a slow start: 5 s behind
    assert rec.percentile(0.99) == pytest.approx(5000, abs=1)
    clock.now += 4
    for _ in range(50):
        assert await post(0.050)
    assert rec.percentile(0.99) == pytest.approx(5000, abs=1)  # the slow ones are 4 s old
    clock.now += 6.5  # the slow ones are 10.5 s old, the fast ones 6.5 s
    assert rec.percentile(0.99) == pytest.approx(50, abs=1)
    assert rec.percentile(0.5) == pytest.approx(50, abs=1)
    clock.now += 4  # nothing in the last 10 s
    assert rec.percentile(0.99) is None
    assert rec.received == 100


async def test_status_line_says_what_it_measures(demo: tuple[DemoReceiver, Clock, Post]) -> None:
    rec, _, post = demo
    assert re.search(r"commit->receipt latency \(last 10 s\) p50 +- ms +p99 +- ms$", status_line(0, rec))
    await post(0.25)
    line = status_line(7, rec)
    assert line.startswith("written       7  delivered       1  bad signatures 0  ")
    assert re.search(r"commit->receipt latency \(last 10 s\) p50 +250\.0 ms +p99 +250\.0 ms$", line)
