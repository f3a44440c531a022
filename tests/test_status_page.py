"""The status page (GET /) rendered by a real headless Chromium against a running pipeline.

The page has no build step and no external assets; it polls ``api/status``. Chromium's
``--dump-dom`` gives the DOM after its scripts ran: it must show the stream, its state and
the delivered count the API reports. A screenshot is saved under the test's tmp dir and
must be a real, non-blank PNG.
"""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins import in_ci
from tests.plugins.postgres import PgDatabase
from tests.plugins.prometheus import fetch_json, fetch_text, monitoring_config, wait_until
from tests.plugins.receiver import Receiver

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if in_ci():
        pytest.fail("chromium is not installed (scripts/install-system-deps.sh)")
    pytest.skip("chromium is not installed")


async def _run_chromium(profile: Path, *args: str, timeout: float = 60) -> str:
    """Run headless Chromium without blocking the event loop the service runs on."""
    proc = await asyncio.create_subprocess_exec(
        _chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (
        f"chromium exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    )
    return out.decode()


def _png_scanlines(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the filtered scanlines of an 8-bit truecolour PNG (what Chromium writes).

    Filtered lines are enough to tell a page from a blank one: a uniform background filters
    to zero bytes and identical lines, text and borders do not.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), f"unexpected PNG format depth={depth} color={color}"
    stride = width * (3 if color == 2 else 4) + 1
    raw = zlib.decompress(idat)
    assert len(raw) == height * stride, "truncated image data"
    return width, height, [raw[y * stride + 1 : (y + 1) * stride] for y in range(height)]


def _cell(dom: str, stream: str, field: str) -> str:
    row = re.search(rf'<tr data-stream="{re.escape(stream)}">(.*?)</tr>', dom, re.S)
    assert row, f"no row for stream {stream!r} in the rendered page"
    cell = re.search(rf'<(\w+)[^>]*data-field="{field}"[^>]*>(.*?)</\1>', row.group(1), re.S)
    assert cell, f"no {field} cell for {stream!r}"
    return html.unescape(re.sub(r"<[^>]+>", "", cell.group(2))).strip()


def test_status_page_has_no_external_assets() -> None:
    page = (Path(__file__).parents[1] / "src/heliosdb_cdc/server/static/status.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load anything from outside"
    assert 'fetch("api/status"' in page  # relative: works behind a path-prefixing proxy


async def test_status_page_renders_live_stream_status(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE s_orders (id serial PRIMARY KEY, status text)")
    cfg = monitoring_config(pg_db, tmp_path)
    base = f"http://{cfg.webhook.bind_address}"
    stream = "status_stream"
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(
                url=receiver.url, secret="your-webhook-secret", tables=["s_orders"], name=stream
            )
        )
        pg_db.execute("INSERT INTO s_orders (status) SELECT 'new' FROM generate_series(1, 25)")
        await receiver.wait_for(25)

        async def api_delivered() -> int | None:
            data = await fetch_json(f"{base}/api/status")
            (s,) = [s for s in data["streams"] if s["name"] == stream]
            return s["events_delivered"] if s["events_delivered"] == 25 else None

        delivered = await wait_until(api_delivered, 10, what="the API to report 25 delivered")
        page = await fetch_text(f"{base}/")
        assert "<title>heliosdb-cdc status</title>" in page

        dom = await _run_chromium(
            tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom", f"{base}/"
        )
        assert _cell(dom, stream, "name") == stream
        assert _cell(dom, stream, "state") == "running"
        assert _cell(dom, stream, "events_delivered") == str(delivered)
        assert _cell(dom, stream, "dead_letters") == "0"
        assert _cell(dom, stream, "circuit") == "CLOSED"
        assert re.search(r'id="conn"[^>]*>up<', dom), "replication shown as up"
        assert re.search(r'id="health"[^>]*>healthy<', dom)
        assert re.search(r'id="updated"[^>]*>1 stream\(s\) · updated ', dom), "the page did not refresh"

        shot = tmp_path / "status-page.png"
        await _run_chromium(
            tmp_path / "profile-shot",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            "--window-size=1400,600",
            f"{base}/",
        )
        assert server.runners[stream].stats.delivered == delivered
    data = shot.read_bytes()
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes"
    width, height, lines = _png_scanlines(data)
    assert (width, height) == (1400, 600)
    # a blank 1400x600 page: 2 distinct lines, no non-zero filtered byte; this page: >100, ~2%
    assert len(set(lines)) > 40, "the screenshot is (nearly) blank"
    drawn = sum(len(line) - line.count(0) for line in lines) / sum(len(line) for line in lines)
    assert drawn > 0.005, f"only {drawn:.2%} of the screenshot's bytes show anything"
