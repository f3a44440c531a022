"""The ``heliosdb-cdc`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from . import __version__
from ._errors import CdcError

DEFAULT_SERVER = os.environ.get("HELIOSDB_CDC_SERVER", "http://127.0.0.1:8080")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", default=DEFAULT_SERVER, help="URL of the running service (default %(default)s)"
    )
    p.add_argument("--token", default=os.environ.get("HELIOSDB_CDC_TOKEN"), help="admin bearer token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heliosdb-cdc",
        description="Stream every committed PostgreSQL row change to webhooks, Kafka and Kinesis.",
    )
    parser.add_argument("--version", action="version", version=f"heliosdb-cdc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the service")
    run.add_argument("-c", "--config", default="heliosdb-cdc.yaml", help="YAML configuration file")
    run.add_argument(
        "--resnapshot",
        action="store_true",
        help="re-read every captured table with a snapshot (after a lost replication slot)",
    )
    run.add_argument(
        "--role",
        choices=["capture", "worker"],
        default=None,
        help="capture: capture only, into journal.kafka, one leader among the instances; "
        "worker: deliver from journal.kafka in a consumer group "
        "(default: capture and delivery in one process)",
    )

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", default="heliosdb-cdc.yaml")

    demo = sub.add_parser("demo", help="run a self-contained demo on an embedded PostgreSQL")
    demo.add_argument("--rate", type=float, default=200.0, help="changes per second (default 200)")
    demo.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (default: Ctrl-C)")
    demo.add_argument("--dir", default="./.heliosdb-cdc/demo", help="where the demo keeps its data")

    sql = sub.add_parser("sql", help="run SQL commands against the running service")
    _server_args(sql)
    sql.add_argument("statement", nargs="?", help="statements; omit for an interactive prompt")
    sql.add_argument("-f", "--file", help="read statements from a file")

    status = sub.add_parser("status", help="show capture and stream status")
    _server_args(status)

    dlq = sub.add_parser("dlq", help="inspect and replay dead letters")
    _server_args(dlq)
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--stream")
    dl.add_argument("--limit", type=int, default=100)
    ds = dsub.add_parser("show")
    ds.add_argument("id", type=int)
    dr = dsub.add_parser("replay")
    dr.add_argument("--stream")
    dr.add_argument("--id", type=int, action="append", dest="ids")
    dp = dsub.add_parser("purge")
    dp.add_argument("--stream")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config, args.resnapshot, args.role)
        if args.command == "check-config":
            from ._config import load_config
            from ._preflight import preflight

            cfg = load_config(args.config)
            preflight(cfg)  # what run refuses before it reaches the network
            print(f"{args.config}: OK ({len(cfg.streams)} stream(s), {len(cfg.webhooks)} webhook(s))")
            return 0
        if args.command == "demo":
            from .demo import run_demo

            return asyncio.run(run_demo(args.dir, args.rate, args.duration))
        if args.command == "sql":
            return asyncio.run(_sql(args))
        if args.command == "status":
            return asyncio.run(_status(args))
        if args.command == "dlq":
            return asyncio.run(_dlq(args))
    except CdcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


def _run(path: str, resnapshot: bool = False, role: str | None = None) -> int:
    from ._config import load_config
    from ._logging import setup_logging
    from ._preflight import preflight
    from ._service import WebhookServer

    cfg = load_config(path)
    preflight(cfg)  # the same checks as check-config, before any connection
    from ._ha import check_role

    check_role(cfg, role)  # what --role needs (state.url, journal.kafka), before any connection
    setup_logging(cfg.logging.level, cfg.logging.json_logs)

    async def main() -> int:
        server = WebhookServer(cfg, role=role)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGTERM / Ctrl-C stop the service in every state, starting (source retried) included
        starting = asyncio.create_task(server.start(resnapshot=resnapshot))
        if not await _first(starting, stop):
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        starting.result()  # an error retrying cannot fix: exit 2 with its fix
        failed = asyncio.create_task(server.failed.wait())
        try:
            await _first(failed, stop)
        finally:
            failed.cancel()
            await server.stop()
        if server.fatal_error is not None:
            raise server.fatal_error
        return 0

    return asyncio.run(main())


async def _first(task: asyncio.Task[Any], stop: asyncio.Event) -> bool:
    """Wait for ``task`` or ``stop``; True when the task finished first."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return task.done()


async def _request(args: Any, method: str, path: str, **kw: Any) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.request(method, args.server.rstrip("/") + path, headers=headers, **kw) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise CdcError(
                        data.get("error", f"HTTP {resp.status}") if isinstance(data, dict) else str(data)
                    )
                return data
        except aiohttp.ClientConnectionError as exc:
            raise CdcError(f"cannot reach the service at {args.server}: {exc}") from None


async def _sql(args: Any) -> int:
    from .sql import render_table, repl, run_remote

    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise CdcError(f"cannot read {args.file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CdcError(f"{args.file} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    elif args.statement:
        text = args.statement
    else:
        await repl(args.server, args.token)
        return 0
    results = await run_remote(args.server, text, args.token)
    for r in results:
        print(render_table(r))
    return 0


async def _status(args: Any) -> int:
    data = await _request(args, "GET", "/api/status")
    cap = data["capture"]
    print(
        f"replication: {'up' if cap.get('connected') else 'down'}  confirmed {cap.get('confirmed_lsn')}  "
        f"captured {cap.get('events')} events  slot lag {data['slot'].get('lag_bytes', '?')} bytes  "
        f"local log {data['local_log_bytes']} bytes  codec {cap.get('codec', '?')}"
    )
    if cap.get("last_error"):
        print(f"capture error: {cap['last_error']}")
    cols = [
        "name",
        "state",
        "events_delivered",
        "throughput_per_sec",
        "p99_latency_ms",
        "lag_events",
        "dead_letters",
        "circuit_breaker",
        "last_error",
    ]
    rows = [[str(s.get(c, "")) if s.get(c) is not None else "" for c in cols] for s in data["streams"]]
    print(_table(cols, rows))
    return 0


async def _dlq(args: Any) -> int:
    if args.dlq_command == "list":
        q = f"?limit={args.limit}" + (f"&stream={args.stream}" if args.stream else "")
        data = await _request(args, "GET", "/api/dead-letters" + q)
        cols = ["id", "stream", "event_id", "table", "operation", "attempts", "error"]
        print(_table(cols, [[str(d[c]) for c in cols] for d in data["dead_letters"]]))
    elif args.dlq_command == "show":
        data = await _request(args, "GET", "/api/dead-letters?limit=10000")
        match = [d for d in data["dead_letters"] if d["id"] == args.id]
        if not match:
            raise CdcError(f"no dead letter with id {args.id}")
        for k, v in match[0].items():
            print(f"{k:18} {v}")
    elif args.dlq_command == "replay":
        body: dict[str, Any] = {}
        if args.ids:
            body["ids"] = args.ids
        if args.stream:
            body["stream"] = args.stream
        data = await _request(args, "POST", "/api/dead-letters/replay", json=body)
        print(f"replayed {data['replayed']} dead letter(s)")
    elif args.dlq_command == "purge":
        q = f"?stream={args.stream}" if args.stream else ""
        data = await _request(args, "DELETE", "/api/dead-letters" + q)
        print(f"purged {data['purged']} dead letter(s)")
    return 0


def _table(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    sep = "-+-".join("-" * w for w in widths)
    body = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, sep, *body, f"({len(rows)} rows)"])


if __name__ == "__main__":
    sys.exit(main())
