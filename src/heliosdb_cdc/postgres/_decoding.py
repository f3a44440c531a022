"""Decoding batches of pgoutput payloads, in the capture thread or in a worker process.

The capture thread reads raw payloads from the slot; turning them into stored
records (``ChangeDecoder.feed_records``) is most of capture's CPU time. With
``cdc.decode_worker: true`` a separate process does it, so
decoding runs on another core than the stream runners and does not share their GIL, and
the capture thread reads the next batch from PostgreSQL while the previous one
is decoded. The worker holds the decoder's state (relations, open transaction,
sequence numbers) for one replication session; results come back in order.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._record import Record
from ._decoder import ChangeDecoder, TxnEnd, Undecodable


@dataclass(slots=True)
class DecodedBatch:
    """What one batch of payloads became, ready for ``LocalLog.append``."""

    events: list[Any]  # Record, or plain tuples in Record's field order from a worker
    commits: list[tuple[int, int, int, int]]  # (last_seq, commit_lsn, end_lsn, ts_us)
    order: list[int]  # 0: next event, 1: next commit
    in_transaction: bool  # the decoder is inside a transaction after this batch
    schemas: dict[str, list[dict[str, Any]]] | None  # known schemas, when they changed
    notices: list[str]  # warnings for the operator
    # rows that could not become events, for dead letters (see ChangeDecoder._row_change)
    undecodable: list[Undecodable] = field(default_factory=list)


def decode_batch(decoder: ChangeDecoder, payloads: list[bytes], plain: bool = False) -> DecodedBatch:
    """Feed ``payloads`` in order; ``plain`` gives events as tuples (cheaper to pickle)."""
    events: list[Any] = []
    commits: list[tuple[int, int, int, int]] = []
    order: list[int] = []
    feed = decoder.feed_records
    run = decoder.feed_run
    i, n = 0, len(payloads)
    while i < n:
        k = run(payloads, i, events, plain)  # a run of row changes through the compiled codec
        if k:
            order += [0] * k
            i += k
            continue
        payload = payloads[i]
        i += 1
        for item in feed(payload):
            if type(item) is Record:
                events.append(tuple(item) if plain else item)
                order.append(0)
            else:
                assert isinstance(item, TxnEnd)
                commits.append((decoder.next_sequence - 1, item.commit_lsn, item.end_lsn, item.commit_ts_us))
                order.append(1)
    schemas = None
    if decoder.schema_changed:
        schemas = decoder.known_schemas
        decoder.schema_changed = False
    notices = decoder.notices
    if notices:
        decoder.notices = []
    undecodable = decoder.undecodable
    if undecodable:
        decoder.undecodable = []
    return DecodedBatch(events, commits, order, decoder.in_transaction, schemas, notices, undecodable)


class Decoding(Protocol):
    """Where batches are decoded: ``submit`` starts one, ``collect`` waits for its result."""

    def submit(self, payloads: list[bytes]) -> Future[DecodedBatch]: ...

    def collect(self, fut: Future[DecodedBatch]) -> DecodedBatch: ...

    def close(self) -> None: ...


class InThread:
    """Decode in the calling (capture) thread."""

    def __init__(self, decoder: ChangeDecoder) -> None:
        self.decoder = decoder

    def submit(self, payloads: list[bytes]) -> Future[DecodedBatch]:
        fut: Future[DecodedBatch] = Future()
        fut.set_result(decode_batch(self.decoder, payloads))
        return fut

    def collect(self, fut: Future[DecodedBatch]) -> DecodedBatch:
        return fut.result()

    def close(self) -> None:
        self.decoder.close()


# -- worker process ------------------------------------------------------------------------
_WORKER: ChangeDecoder | None = None


def _exit_with_parent() -> None:
    """A pool worker blocks on a queue whose write end it holds itself, so it would outlive
    a parent killed with SIGKILL: watch the parent and leave with it."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="heliosdb-cdc-parent-watch", daemon=True).start()


def _init_worker(database: str, next_seq: int, skip_through_lsn: int, schemas: dict[str, Any]) -> None:
    global _WORKER
    _exit_with_parent()
    _WORKER = ChangeDecoder(database, next_seq, skip_through_lsn)
    _WORKER.known_schemas = schemas


def _decode_in_worker(payloads: list[bytes]) -> DecodedBatch:
    assert _WORKER is not None
    return decode_batch(_WORKER, payloads, plain=True)


def _as_records(batch: DecodedBatch) -> DecodedBatch:
    new = tuple.__new__
    batch.events = [new(Record, t) for t in batch.events]
    return batch


class InWorker:
    """Decode in one worker process (spawned: safe beside the service's threads)."""

    def __init__(self, database: str, next_seq: int, skip_through_lsn: int, schemas: dict[str, Any]) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(database, next_seq, skip_through_lsn, schemas),
        )
        # start it now (imports take ~0.5 s), before replication starts, so the first
        # changes of a session do not wait for it
        self._pool.submit(_decode_in_worker, []).result(timeout=120)

    def submit(self, payloads: list[bytes]) -> Future[DecodedBatch]:
        return self._pool.submit(_decode_in_worker, payloads)

    def collect(self, fut: Future[DecodedBatch]) -> DecodedBatch:
        return _as_records(fut.result())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
