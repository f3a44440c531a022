"""``heliosdb-cdc run --role capture``: capture on several machines, one leader at a time.

Each instance waits for the slot's lease in the state database (:class:`~heliosdb_cdc.
store.Lease`); the one that takes it (bumping the generation) terminates the
walsender still attached to the slot, fences the previous leader's Kafka producer
(:meth:`~heliosdb_cdc.journal.KafkaJournal.open`), resumes after the last published
position and captures into the Kafka journal. It renews the lease every second; when it
cannot (another instance took it, or the state database was unreachable for the whole
lease) it stops capture without confirming and waits again. See docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import Config
from ._errors import CdcError, ConfigError, LeadershipLost, SourceFatalError
from .journal import KafkaJournal
from .postgres import Capture, connect
from .store import Lease, PostgresStore

if TYPE_CHECKING:
    from ._service import WebhookServer

log = logging.getLogger("heliosdb_cdc.ha")

ROLES = ("capture", "worker")
RENEW_SECS = 1.0


def check_role(cfg: Config, role: str | None) -> None:
    """What a role needs from the configuration (a ConfigError naming the key)."""
    if role is None:
        if cfg.journal.kafka is not None:
            raise ConfigError(
                "journal.kafka is for --role capture and --role worker: the all-in-one process "
                "(no --role) keeps the local log; run with --role, or remove journal.kafka",
                key_path="journal.kafka",
            )
        return
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if cfg.state.url is None:
        raise ConfigError(
            f"--role {role} needs the state in PostgreSQL (state.url: postgresql://...): the "
            "instances share their catalog (and capture's lease) there",
            key_path="state.url",
        )
    if cfg.journal.kafka is None:
        raise ConfigError(
            f"--role {role} needs journal.kafka (bootstrap_servers, topic): the topic capture "
            "publishes every change to and workers deliver from",
            key_path="journal.kafka",
        )


def _terminate_walsender(dsn: str, slot: str, wait_secs: float = 10.0) -> None:
    """End the replication connection still attached to the slot (a paused or partitioned
    old leader): from now on it can confirm nothing."""
    conn = connect(dsn)
    try:
        conn.autocommit = True
        deadline = time.monotonic() + wait_secs
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                row = cur.fetchone()
                if row is None or row[0] is None:
                    return
                log.warning("terminating the old leader's replication connection (pid %s)", row[0])
                cur.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                if time.monotonic() > deadline:
                    return  # capture retries start_replication until the slot is free
                time.sleep(0.1)
    finally:
        conn.close()


class CaptureRole:
    """Leader election and capture into the Kafka journal for one service instance."""

    def __init__(self, service: WebhookServer) -> None:
        cfg = service.config
        assert cfg.state.url is not None and cfg.journal.kafka is not None
        self.service = service
        self.kafka = cfg.journal.kafka
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = Lease(
            cfg.state.url.get_secret_value(),
            cfg.state.schema_name,
            cfg.source.slot,
            self.holder,
            self.kafka.lease_secs,
        )
        self.leader = False
        self.generation = 0
        self.journal: KafkaJournal | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._elect(), name="capture-election")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        generation = self.generation if self.leader else 0
        await self._step_down()
        if generation:
            with contextlib.suppress(CdcError):
                await asyncio.to_thread(self.lease.release, generation)
        self.lease.close()

    def describe(self) -> dict[str, Any]:
        return {"leader": self.leader, "generation": self.generation, "holder": self.holder}

    async def _elect(self) -> None:
        poll = min(1.0, self.kafka.lease_secs / 4)
        waiting_logged = False
        while True:
            try:
                generation = await asyncio.to_thread(self.lease.acquire)
            except CdcError as exc:
                log.warning("capture standby: %s", exc)
                generation = None
            if generation is None:
                if not waiting_logged:
                    log.info(
                        "capture standby: another instance holds the lease of slot %s",
                        self.service.config.source.slot,
                    )
                    waiting_logged = True
                await asyncio.sleep(poll)
                continue
            waiting_logged = False
            try:
                await self._lead(generation)
            except LeadershipLost as exc:
                log.warning("capture leader stepping down: %s", exc)
            except SourceFatalError as exc:
                self.service.fail(exc)
                return
            except CdcError as exc:
                log.error("capture leader stepping down: %s", exc)
            finally:
                await self._step_down()
            await asyncio.sleep(poll)

    async def _lead(self, generation: int) -> None:
        started = time.monotonic()
        self.generation = generation
        log.info("capture lease of slot %s taken: generation %d", self.service.config.source.slot, generation)
        prep = asyncio.create_task(self._become_leader(generation))
        last_renewed = time.monotonic()
        try:
            while True:
                await asyncio.sleep(RENEW_SECS)
                try:
                    if not await asyncio.to_thread(self.lease.renew, generation):
                        await asyncio.to_thread(self.lease.check, generation)  # raises, saying who
                        raise LeadershipLost("capture lease lost", generation=generation)
                    last_renewed = time.monotonic()
                except LeadershipLost:
                    raise
                except CdcError as exc:
                    if time.monotonic() - last_renewed > self.kafka.lease_secs:
                        raise LeadershipLost(
                            f"capture lease not renewed for {self.kafka.lease_secs}s: {exc}"
                        ) from exc
                    log.warning("renewing the capture lease: %s", exc)
                if prep.done():
                    prep.result()  # an error of becoming leader
                    if not self.leader:
                        self.leader = True
                        log.info(
                            "capture leader (generation %d) after %.1fs",
                            generation,
                            time.monotonic() - started,
                        )
                    self._check_capture()
        finally:
            prep.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await prep

    def _check_capture(self) -> None:
        cap = self.service.capture
        if cap is None:
            return
        if cap.status.stepped_down:
            raise LeadershipLost(cap.status.stepped_down)
        if cap.status.fatal:
            raise SourceFatalError(cap.status.fatal)

    async def _become_leader(self, generation: int) -> None:
        service = self.service
        cfg = service.config
        assert service.store is not None
        if isinstance(service.store, PostgresStore):  # (check_role: always)
            service.store.generation = generation  # every checkpoint carries it
        await service._prepare_source()  # publication and slot
        await asyncio.to_thread(_terminate_walsender, service.dsn, cfg.source.slot)
        journal = KafkaJournal(
            self.kafka.bootstrap_servers,
            self.kafka.topic,
            cfg.source.slot,
            Path(cfg.state_dir) / "capture",
            partitions=self.kafka.partitions,
            replication_factor=self.kafka.replication_factor,
            generation=generation,
            fence=lambda: self.lease.check(generation),
            options=dict(self.kafka.options),
            timeout_s=self.kafka.timeout_s,
        )
        self.journal = journal
        await asyncio.to_thread(journal.open)
        capture = Capture(
            dsn=service.dsn,
            slot=cfg.source.slot,
            publication=cfg.source.publication,
            database=cfg.database,
            log_=journal,
            batch_size=cfg.cdc.batch_size,
            poll_interval_ms=cfg.cdc.poll_interval_ms,
            max_log_bytes=cfg.cdc.max_log_bytes,
            streaming=cfg.source.streaming,
            status_interval=cfg.source.status_interval_secs,
            reconnect_max_delay=min(cfg.source.reconnect_max_delay_secs, 2.0),
            decode_worker=cfg.cdc.decode_worker,
            store=service.store,
        )
        service.capture = capture
        capture.start()

    async def _step_down(self) -> None:
        self.leader = False
        capture, self.service.capture = self.service.capture, None
        if capture is not None:
            await asyncio.to_thread(capture.stop)
        if self.journal is not None:
            self.journal.close()
            self.journal = None
