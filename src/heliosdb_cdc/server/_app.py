"""HTTP surface of the service on ``webhook.bind_address``: health, SQL, admin REST
API (with an OpenAPI document), Prometheus metrics and the live status page."""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from .._config import StreamConfig, WebhookRegistration
from .._errors import CdcError, SqlError, StreamExists, StreamNotFound
from .._input import check_stream
from .._metrics import REGISTRY
from .._names import check_name
from ._body import read_json as _read_json
from ._body import read_text as _read_text
from ._openapi import OPENAPI

if TYPE_CHECKING:
    from .._service import WebhookServer

log = logging.getLogger("heliosdb_cdc.server")

MAX_BODY = 1024 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


def _error(message: str, status: int, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


class ServiceStreamManager:
    """The SQL layer's StreamManager, backed by the running service."""

    def __init__(self, service: WebhookServer) -> None:
        self.s = service

    async def create_stream(self, cfg: StreamConfig) -> StreamConfig:
        return await self.s.create_stream(cfg, origin="sql")

    async def stream_names(self) -> list[str]:
        assert self.s.store is not None
        return self.s.store.stream_names()

    async def has_stream(self, name: str) -> bool:
        assert self.s.store is not None
        return self.s.store.has_stream(name)

    async def list_streams(self) -> list[dict[str, Any]]:
        return self.s.list_stream_rows()

    async def stream_status(self, name: str) -> dict[str, Any]:
        return self.s.stream_status(name)

    async def pause(self, name: str) -> None:
        await self.s.set_paused(name, True)

    async def resume(self, name: str) -> None:
        await self.s.set_paused(name, False)

    async def drop(self, name: str, if_exists: bool = False) -> None:
        await self.s.drop_stream(name, if_exists=if_exists)

    async def backfill(self, name: str, where: str | None) -> None:
        await self.s.start_snapshot(name, "backfill", where)

    async def cancel_backfill(self, name: str) -> None:
        await self.s.cancel_snapshot(name)


def build_app(service: WebhookServer) -> web.Application:
    from ._security import security_middlewares  # allow-list, tokens (docs/security.md)

    sec = service.config.security
    app = web.Application(client_max_size=sec.max_request_bytes, middlewares=security_middlewares(sec))
    manager = ServiceStreamManager(service)
    routes = web.RouteTableDef()

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        cap = service.capture.status if service.capture else None
        # 503 while starting (the source is retried: source_error says why) or after an
        # error retrying cannot fix (the service is about to exit)
        status = "failed" if service.fatal_error else "ok" if service.ready else "starting"
        body: dict[str, Any] = {
            "status": status,
            "role": service.role or "all",
            "replication_connected": bool(cap and cap.connected),
            "codec": service.codec,  # native (compiled) or pure-python
            "streams": len(service.runners),
            "source_error": service.source_error or (cap.last_error if cap else None),
        }
        if service.role == "capture":
            body["leader"] = bool(service.leader)  # a standby is healthy too: it waits
        elif service.role == "worker" and service.ha is not None:
            body["partitions"] = service.ha.describe()["partitions"]  # of the journal topic
        return _json(body, 200 if status == "ok" else 503)

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(REGISTRY))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    @routes.post("/sql")
    async def sql(request: web.Request) -> web.Response:
        from ..sql import execute

        text = await _read_text(request)
        if isinstance(text, web.Response):
            return text
        try:
            results = await execute(text, manager)
        except SqlError as exc:
            return _error(exc.message, 400, **exc.context)
        except CdcError as exc:
            return _error(str(exc), 400)
        return _json({"results": [_result_dict(r) for r in results]})

    @routes.get("/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return _json(OPENAPI)

    @routes.get("/api/streams")
    async def list_streams(request: web.Request) -> web.Response:
        return _json({"streams": service.list_stream_rows()})

    @routes.post("/api/streams")
    async def create_stream(request: web.Request) -> web.Response:
        data = await _read_json(request)
        if isinstance(data, web.Response):
            return data
        try:
            cfg = check_stream(StreamConfig.model_validate(data))
        except ValidationError as exc:
            return _error(_validation_message(exc, StreamConfig, data), 422)
        except CdcError as exc:
            return _error(exc.message, 422)
        try:
            await service.create_stream(cfg, origin="api")
        except StreamExists as exc:
            return _error(exc.message, 409)
        except CdcError as exc:
            return _error(getattr(exc, "message", str(exc)), 400)
        return _json(service.stream_status(cfg.name), 201)

    @routes.get("/api/streams/{name}")
    async def get_stream(request: web.Request) -> web.Response:
        assert service.store is not None
        name = request.match_info["name"]
        try:
            row = service.store.get_stream(name)
        except StreamNotFound as exc:
            return _error(exc.message, 404)
        cfg = dict(row["config"])
        if cfg.get("secret"):
            cfg["secret"] = "********"
        return _json({"name": name, "state": row["state"], "config": cfg})

    @routes.get("/api/streams/{name}/status")
    async def stream_status(request: web.Request) -> web.Response:
        try:
            return _json(service.stream_status(request.match_info["name"]))
        except StreamNotFound as exc:
            return _error(exc.message, 404)

    @routes.delete("/api/streams/{name}")
    async def delete_stream(request: web.Request) -> web.Response:
        try:
            await service.drop_stream(request.match_info["name"])
        except StreamNotFound as exc:
            return _error(exc.message, 404)
        return web.Response(status=204)

    @routes.post("/api/streams/{name}/pause")
    async def pause(request: web.Request) -> web.Response:
        try:
            await service.set_paused(request.match_info["name"], True)
        except StreamNotFound as exc:
            return _error(exc.message, 404)
        return _json({"name": request.match_info["name"], "state": "paused"})

    @routes.post("/api/streams/{name}/resume")
    async def resume(request: web.Request) -> web.Response:
        try:
            await service.set_paused(request.match_info["name"], False)
        except StreamNotFound as exc:
            return _error(exc.message, 404)
        return _json({"name": request.match_info["name"], "state": "running"})

    @routes.get("/api/webhooks")
    async def list_webhooks(request: web.Request) -> web.Response:
        return _json({"webhooks": await service.webhooks()})

    @routes.post("/api/webhooks")
    async def register(request: web.Request) -> web.Response:
        data = await _read_json(request)
        if isinstance(data, web.Response):
            return data
        try:
            reg = WebhookRegistration.model_validate(data)
            if reg.name is not None:
                check_name(reg.name)
        except ValidationError as exc:
            return _error(_validation_message(exc, WebhookRegistration, data), 422)
        except CdcError as exc:
            return _error(exc.message, 422)
        try:
            name = await service.register(reg)
        except StreamExists as exc:
            return _error(exc.message, 409)
        except CdcError as exc:
            return _error(getattr(exc, "message", str(exc)), 400)
        return _json({"name": name, "url": reg.url}, 201)

    @routes.delete("/api/webhooks/{name}")
    async def unregister(request: web.Request) -> web.Response:
        try:
            await service.unregister(request.match_info["name"])
        except StreamNotFound as exc:
            return _error(exc.message, 404)
        return web.Response(status=204)

    @routes.get("/api/dead-letters")
    async def dead_letters(request: web.Request) -> web.Response:
        assert service.store is not None
        stream = request.query.get("stream")
        try:
            limit = min(10_000, max(1, int(request.query.get("limit", "100"))))
        except ValueError:
            return _error("limit must be an integer", 400)
        return _json({"dead_letters": service.store.list_dead_letters(stream, limit)})

    @routes.post("/api/dead-letters/replay")
    async def replay(request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        if request.can_read_body:
            data = await _read_json(request)
            if isinstance(data, web.Response):
                return data
            if not isinstance(data, dict):
                return _error("request body must be a JSON object", 400)
            body = data
        ids = body.get("ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
            return _error("ids must be a list of integers", 400)
        if body.get("stream") is not None and not isinstance(body.get("stream"), str):
            return _error("stream must be a string", 400)
        n = await service.replay_dead_letters(ids, body.get("stream"))
        return _json({"replayed": n})

    @routes.delete("/api/dead-letters")
    async def purge(request: web.Request) -> web.Response:
        assert service.store is not None
        n = service.store.delete_dead_letters(stream=request.query.get("stream"))
        return _json({"purged": n})

    @routes.get("/api/status")
    async def status(request: web.Request) -> web.Response:
        return _json(overview(service))

    @routes.get("/")
    async def page(request: web.Request) -> web.Response:
        html = resources.files("heliosdb_cdc.server").joinpath("static/status.html").read_text()
        return web.Response(text=html, content_type="text/html")

    app.add_routes(routes)
    return app


def overview(service: WebhookServer) -> dict[str, Any]:
    assert service.store is not None
    # three catalog reads for all streams, not three per stream
    dead = service.store.dead_letter_counts()
    snapshots = service.store.all_snapshots()
    streams = [
        service.stream_status(row["name"], row, dead.get(row["name"], 0), snapshots)
        for row in service.store.list_streams()
    ]
    cap = service.capture.describe() if service.capture else {}
    return {
        "capture": cap,
        "slot": service.slot_info,
        "local_log_bytes": service.log.size_bytes if service.log else 0,
        "streams": streams,
    }


def _result_dict(r: Any) -> dict[str, Any]:
    if hasattr(r, "to_json"):
        out = r.to_json()
        return orjson.loads(out) if isinstance(out, (bytes, str)) else dict(out)
    return {"columns": r.columns, "rows": r.rows, "message": r.message}


def _validation_message(exc: ValidationError, model: Any, data: Any) -> str:
    # the configuration file's wording: key paths, "did you mean", plain structure errors
    from .._config_errors import problems

    return "; ".join(f"{path or '(body)'}: {msg}" for path, msg in problems(exc, model, data))


async def start_http(service: WebhookServer) -> web.AppRunner:
    from .._logging import install_bad_request_filter

    install_bad_request_filter()  # a malformed request: one WARNING line, rate-limited
    app = build_app(service)
    ssl_ctx = _tls_context(service, app)  # security.tls: HTTPS, TLS 1.2+, reload on SIGHUP
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=75)  # idle connections closed
    await runner.setup()
    host, _, port = service.config.webhook.bind_address.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_ctx)
    await site.start()
    log.info(
        "HTTP API on %s://%s (health, /sql, /api, /metrics, status page at /)",
        "https" if ssl_ctx else "http",
        service.config.webhook.bind_address,
    )
    return runner


def _tls_context(service: WebhookServer, app: web.Application) -> Any:
    import asyncio

    from ._security import CertReloader, server_ssl_context

    tls = service.config.security.tls
    if not tls.enabled:
        return None
    ctx = server_ssl_context(tls)
    reloader = CertReloader(ctx, str(tls.cert_path), str(tls.key_path))
    service.tls_reloader = reloader  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    if reloader.install_sighup(loop):

        async def _remove(_: web.Application) -> None:
            CertReloader.remove_sighup(loop)

        app.on_cleanup.append(_remove)
    return ctx
