"""``heliosdb-cdc run --role worker``: delivery from the Kafka journal, on several machines.

The worker processes join one Kafka consumer group on the journal topic (``journal.
kafka.group_id``, default ``heliosdb-cdc-delivery-<topic>``); each delivers every
stream's destination for the partitions it holds, with the same stream runners as the
all-in-one process (filters, transforms, retries, circuit breakers, dead letters,
delivery records). The catalog is the shared state database: a stream created, altered,
paused or dropped through any instance's API is picked up within ``CATALOG_POLL_SECS``.
Offsets and rebalances: :mod:`heliosdb_cdc.delivery._kafka_source`. See docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, cast

from ._config import StreamConfig
from ._errors import SourceFatalError
from ._metrics import forget_stream
from .delivery import GlobalSeqSink, JournalConsumer, JournalSource, StreamRunner, WorkerStore

if TYPE_CHECKING:
    from ._service import WebhookServer

log = logging.getLogger("heliosdb_cdc.worker")

CATALOG_POLL_SECS = 1.0


def consumer_conf(service: WebhookServer) -> dict[str, Any]:
    k = service.config.journal.kafka
    assert k is not None
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "group.id": k.group_id or f"heliosdb-cdc-delivery-{k.topic}",
        "client.id": f"heliosdb-cdc-worker-{socket.gethostname()}-{os.getpid()}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # a worker that dies (kill -9, its machine) loses its partitions after this
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "topic.metadata.refresh.interval.ms": 5000,
        "logger": logging.getLogger("heliosdb_cdc.worker.kafka"),
    }
    conf.update(k.options)
    return conf


class WorkerRole:
    """The consumer group member and the stream runners of one worker process."""

    leader = False  # (only capture instances lead)

    def __init__(self, service: WebhookServer) -> None:
        assert service.store is not None and service.config.journal.kafka is not None
        self.service = service
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.consumer = JournalConsumer(
            consumer_conf(service), service.config.journal.kafka.topic, service.store
        )
        self.sources: dict[str, JournalSource] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._refused: dict[str, dict[str, Any]] = {}  # streams this worker cannot deliver
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {"partitions": sorted(self.consumer.assigned), "holder": self.holder}

    async def start(self) -> None:
        await self._sync_catalog()  # the streams first: no record is read before they are
        self.consumer.start()
        self._task = asyncio.create_task(self._poll(), name="worker-catalog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        # finish what was handed out, commit, leave the group; the runners run meanwhile
        await asyncio.to_thread(self.consumer.stop)
        for name in list(self.sources):
            await self._stop_runner(name)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_POLL_SECS)
            if self.consumer.error is not None:
                self.service.fail(SourceFatalError(self.consumer.error))
                return
            try:
                await self._sync_catalog()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the catalog: %s", exc)

    async def _sync_catalog(self) -> None:
        store = self.service.store
        assert store is not None
        rows = {r["name"]: r for r in await asyncio.to_thread(store.list_streams)}
        for name in [n for n in self.sources if n not in rows]:
            await self._stop_runner(name)
            log.info("stream %s dropped: no longer delivered", name)
        for name, row in rows.items():
            runner = self.service.runners.get(name)
            if name in self.sources and self._configs.get(name) != row["config"]:
                cursor = runner.saved_cursor if runner is not None else 0
                await self._stop_runner(name, keep_source=True)
                runner = None
                await self._start_runner(row, cursor)
            elif name not in self.sources and self._refused.get(name) != row["config"]:
                runner = await self._start_runner(row, 0)
            if runner is not None:
                if row["state"] == "paused" and not runner.paused:
                    runner.pause()
                elif row["state"] != "paused" and runner.paused:
                    runner.resume()

    async def _start_runner(self, row: dict[str, Any], cursor: int) -> StreamRunner | None:
        service = self.service
        store = service.store
        assert store is not None
        name = row["name"]
        self._configs[name] = row["config"]
        try:
            cfg = StreamConfig.model_validate(row["config"])
            sink, endpoint = service._build_sink(cfg)
            if sink.tracks_position or sink.resumes_by_mark:
                raise ValueError(
                    f"{cfg.destination.type} destinations are not delivered by --role worker yet; "
                    "run this stream on the all-in-one process"
                )
            predicate, transform = service._compile(cfg, endpoint)
        except Exception as exc:
            self._refused[name] = row["config"]  # tried again when its configuration changes
            log.error("stream %s not started: %s", name, exc)
            await asyncio.to_thread(store.set_error, name, f"--role worker: {exc}")
            return None
        source = self.sources.get(name)
        if source is None:
            source = JournalSource(name, endpoint, dedupe=service.config.webhook.exactly_once.enabled)
            source.bind_loop(asyncio.get_running_loop())
        runner = service.make_runner(
            cfg,
            cast(Any, GlobalSeqSink(sink, source)),
            endpoint,
            source,
            WorkerStore(store, source),
            predicate,
            transform,
            needs_event=sink.needs_event,
        )
        source.saved = lambda: runner.saved_cursor
        if row["state"] == "paused":
            runner.pause()
        await runner.start(cursor)
        service.runners[name] = runner
        if name not in self.sources:
            self.sources[name] = source
            self.consumer.add_source(source)
        log.info("stream %s delivered by this worker (%s)", name, endpoint)
        return runner

    async def _stop_runner(self, name: str, keep_source: bool = False) -> None:
        runner = self.service.runners.pop(name, None)
        if not keep_source:
            self.consumer.remove_source(name)
            self.sources.pop(name, None)
            self._configs.pop(name, None)
        if runner is not None:
            await runner.stop(drain_timeout=5.0)
            if not keep_source:
                forget_stream(name, runner.endpoint)
