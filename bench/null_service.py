"""Scenario 2: WAL -> events -> memory sink, the service in-process (in this process).

    python bench/null_service.py DSN STATE_DIR STATUS_FILE

Runs :class:`WebhookServer` with one stream whose destination is
``type: memory`` on ``bench_events``, and wraps that sink's ``send`` (from
here, not in the package) to record the count and the time of the latest
acknowledged event. Writes ``{"count", "first_recv", "last_recv", "rss_hwm_kb", "cpu_s",
"codec"}`` to STATUS_FILE every 0.1 s (``cpu_s``: the process's CPU time since the service
started, all threads); exits on SIGTERM. ``HELIOSDB_CDC_PURE_PYTHON=1`` runs it on the
pure-Python codec (scenario ``null_pure``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc.postgres._codec import codec_name

STREAM = "bench_null"


def make_config(
    dsn: str,
    state_dir: str,
    webhook_url: str | None = None,
    batch_size: int = 1,
    decode_worker: bool = False,
) -> Config:
    """The null-sink stream; with ``webhook_url`` a webhook stream of the same name instead."""
    if webhook_url:
        dest: dict[str, Any] = {"type": "webhook", "address": webhook_url}
    else:
        dest = {"type": "memory", "address": "null"}
    return Config.model_validate(
        {
            "state_dir": state_dir,
            "source": {"dsn": dsn, "slot": "bench_null", "publication": "bench_null"},
            "cdc": {"decode_worker": decode_worker},
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "batch_size": batch_size},
            "streams": [
                {"name": STREAM, "tables": ["bench_events"], "destination": dest, "secret": "bench-secret"}
            ],
            "logging": {"level": "WARNING"},
        }
    )


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def wrap(self, sink: Any) -> None:
        orig = sink.send

        async def send(batch: Any) -> Any:
            res = await orig(batch)
            received = getattr(sink, "received", None)
            if received is not None:
                received.clear()  # a null sink: keep nothing
            now = time.time()
            self.count += sum(1 for r in res if r.ok)
            self.last = now
            if not self.first:
                self.first = now
            return res

        sink.send = send


def rss_hwm_kb() -> int:
    """VmHWM of this process plus its children (the decode worker), kB."""
    from run import vm_hwm_kb

    return vm_hwm_kb(os.getpid())


async def serve(
    dsn: str, state_dir: str, status_file: str, stop: asyncio.Event, decode_worker: bool = False
) -> None:
    counter = Counter()
    cpu0 = time.process_time()  # the service's CPU from here (all threads), imports excluded
    server = WebhookServer(make_config(dsn, state_dir, decode_worker=decode_worker))
    await server.start(serve_http=False)
    counter.wrap(server.runners[STREAM].sink)
    tmp = status_file + ".tmp"
    try:
        while not stop.is_set():
            with open(tmp, "w") as f:
                json.dump(
                    {
                        "count": counter.count,
                        "first_recv": counter.first,
                        "last_recv": counter.last,
                        "rss_hwm_kb": rss_hwm_kb(),
                        "cpu_s": time.process_time() - cpu0,
                        "codec": codec_name(),
                        "ready": True,
                    },
                    f,
                )
            os.replace(tmp, status_file)
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except TimeoutError:
                pass
    finally:
        await server.stop()


def main() -> None:
    dsn, state_dir, status_file = sys.argv[1:4]
    decode_worker = "--decode-worker" in sys.argv[4:]

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(dsn, state_dir, status_file, stop, decode_worker)

    asyncio.run(run())


if __name__ == "__main__":
    main()
