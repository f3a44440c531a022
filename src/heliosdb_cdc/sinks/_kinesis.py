"""AWS Kinesis Data Streams destination (aiobotocore), in order per key.

``Destination.address`` is the stream name (or ARN), ``region`` its region.
Credentials come from the standard AWS chain (environment, shared files,
instance/container role...). Options: ``endpoint_url`` (LocalStack, moto),
``max_attempts`` (5: tries of one PutRecords entry inside one send),
``timeout_s`` (30: bound of one send), ``schema_dir`` (FORMAT AVRO: each new
schema version is written there as ``<fingerprint>.avsc``).

Each record: partition key = ``<table>:<key JSON>`` (when longer than Kinesis'
256 characters: ``<table[:64]>:sha256:<hex digest>``), data = the body (event
JSON or, with FORMAT AVRO, Avro single-object encoding).

Limits: PutRecords takes at most 500 records and 5 MiB; a record (data +
partition key) may be 1 MiB: a bigger one is FAILED with the reason.

Order: PutRecords may fail some entries and write the others, so one call
holds at most one record per partition key, and calls go one after the other:
when an entry fails for good (still throttled after ``max_attempts``), the
later events of its key in the batch are not sent (RETRY), so a key's events
are never written out of order. Failed entries are retried alone: successful
ones are never sent twice.

After a restart (``recover``), records the last run put after its last
checkpoint are not put again: see ``_kinesis_recovery``. Options
``restart_dedupe`` (true), ``restart_scan_max_records`` (100000) and
``restart_scan_timeout_s`` (60) switch and bound that scan.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import Destination, StreamConfig
from .._errors import ConfigError, SinkError
from ._avro import AvroEncoder, AvroSchemaRegistry
from ._base import DELIVERED, OutboundEvent, Outcome, Sink, SinkResult
from ._kinesis_recovery import ResumeMarks, record_digest, scan_tail

if TYPE_CHECKING:
    from ._registry import SinkContext

log = logging.getLogger("heliosdb_cdc.sinks.kinesis")

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
    "RequestLimitExceeded",
}
_INVALID = {"ValidationException", "InvalidArgumentException", "SerializationException"}


def partition_key(table: str, key: bytes) -> str:
    """``table:key``, hashed when over Kinesis' 256-character limit."""
    pk = f"{table}:{key.decode('utf-8', 'replace')}"
    if len(pk) <= MAX_PARTITION_KEY_CHARS:
        return pk
    return f"{table[:64]}:sha256:{hashlib.sha256(pk.encode()).hexdigest()}"


@dataclass(slots=True)
class _Entry:
    index: int
    pk: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data) + len(self.pk.encode())


def plan_calls(
    entries: Sequence[_Entry],
    max_records: int = MAX_RECORDS_PER_CALL,
    max_bytes: int = MAX_BYTES_PER_CALL,
) -> list[list[_Entry]]:
    """Split entries into PutRecords calls: limits kept, one entry per key per call.

    An entry goes into the first call after the one holding its key's previous
    entry that still has room, so per-key order follows call order.
    """
    calls: list[list[_Entry]] = []
    sizes: list[int] = []
    last_call: dict[str, int] = {}
    first_open = 0  # calls before it are full
    for e in entries:
        j = max(last_call.get(e.pk, -1) + 1, first_open)
        while j < len(calls) and (len(calls[j]) >= max_records or sizes[j] + e.size > max_bytes):
            j += 1
        if j == len(calls):
            calls.append([])
            sizes.append(0)
        calls[j].append(e)
        sizes[j] += e.size
        last_call[e.pk] = j
        while first_open < len(calls) and len(calls[first_open]) >= max_records:
            first_open += 1
    return calls


def _bool_option(opts: dict[str, Any], name: str, default: bool) -> bool:
    value = opts.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "on", "yes", "1"):
        return True
    if text in ("false", "off", "no", "0"):
        return False
    raise ConfigError(
        f"Kinesis option {name} must be true or false, not {value!r}",
        key_path=f"destination.options.{name}",
    )


def _positive_option(opts: dict[str, Any], name: str, default: float) -> float:
    value = opts.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0:
        raise ConfigError(
            f"Kinesis option {name} must be a positive number, not {value!r}",
            key_path=f"destination.options.{name}",
        )
    return number


def _error_code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""


class KinesisSink(Sink):
    """Sends batches to one Kinesis stream with PutRecords."""

    def __init__(
        self,
        destination: Destination,
        *,
        format: str = "json",
        avro: AvroEncoder | None = None,
        name: str | None = None,
        max_batch: int = 5000,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        client_wrapper: Callable[[Any], Any] | None = None,
    ) -> None:
        opts = dict(destination.options)
        self.destination = destination
        self.stream = destination.address
        self.region = destination.region or "us-east-1"
        self.endpoint_url: str | None = opts.get("endpoint_url")
        self.name = name or f"kinesis:{self.stream}"
        self.lanes = 1
        self.max_batch = int(opts.get("max_batch", max_batch))
        self.max_attempts = int(max_attempts or opts.get("max_attempts", 5))
        self.timeout_s = float(timeout_s if timeout_s is not None else opts.get("timeout_s", 30))
        self.format = format.lower()
        self.avro = (avro or AvroEncoder(AvroSchemaRegistry())) if self.format == "avro" else None
        schema_dir = opts.get("schema_dir")
        self.schema_dir = Path(schema_dir) if schema_dir else None
        self._written_schemas: set[int] = set()
        self._wrap = client_wrapper
        self.restart_dedupe = _bool_option(opts, "restart_dedupe", True)
        self.resumes_by_mark = self.restart_dedupe  # finds its own puts after a crash
        self.scan_max_records = int(_positive_option(opts, "restart_scan_max_records", 100_000))
        self.scan_timeout_s = _positive_option(opts, "restart_scan_timeout_s", 60.0)
        self._marks = ResumeMarks()
        self._written: set[bytes] = set()  # digests of records found after a restart
        self.skipped_on_restart = 0
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._checked = False
        self._closed = False

    @classmethod
    def for_stream(cls, stream: StreamConfig, **kw: Any) -> KinesisSink:
        return cls(stream.destination, format=stream.format, **kw)

    def set_columns(self, table: str, columns: Sequence[dict[str, Any]]) -> None:
        """Column types of a table (name, type_oid, key[, typmod]) for FORMAT AVRO."""
        if self.avro is not None:
            self.avro.set_columns(table, columns)

    def _stream_arg(self) -> dict[str, str]:
        if self.stream.startswith("arn:"):
            return {"StreamARN": self.stream}
        return {"StreamName": self.stream}

    def _not_found(self) -> str:
        return f"Kinesis stream {self.stream!r} not found in region {self.region}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the client and check the stream exists (SinkError naming it if not).

        An unreachable endpoint is not an error here: sends return RETRY.
        """
        self._closed = False
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            cfg = AioConfig(
                connect_timeout=min(10.0, self.timeout_s),
                read_timeout=self.timeout_s,
                retries={"total_max_attempts": 1, "mode": "standard"},
            )
            stack = AsyncExitStack()
            client = await stack.enter_async_context(
                get_session().create_client(
                    "kinesis",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=cfg,
                )
            )
            self._stack = stack
            self._client = self._wrap(client) if self._wrap else client
        if not self._checked:
            await self._check_stream()

    async def _check_stream(self) -> None:
        try:
            await self._client.describe_stream_summary(**self._stream_arg())
        except Exception as exc:
            code = _error_code(exc)
            if code == "ResourceNotFoundException":
                raise SinkError(self._not_found(), stream=self.stream) from exc
            if code in ("AccessDeniedException", "UnrecognizedClientException"):
                # may still be allowed to PutRecords: let the sends tell
                log.warning("cannot describe Kinesis stream %s: %s", self.stream, exc)
                self._checked = True
                return
            log.warning("Kinesis endpoint not reachable yet (%s): %r", self.stream, exc)
            return
        self._checked = True

    async def close(self) -> None:
        self._closed = True
        stack, self._stack, self._client, self._checked = self._stack, None, None, False
        if stack is not None:
            await stack.aclose()

    # ------------------------------------------------------------------ send

    async def _encode(self, ev: OutboundEvent) -> bytes:
        if self.avro is None:
            return ev.body
        schema, _ = self.avro.schema_for(ev)
        data, _headers = await self.avro.encode(ev)
        if self.schema_dir is not None and schema.fingerprint not in self._written_schemas:
            self.schema_dir.mkdir(parents=True, exist_ok=True)
            (self.schema_dir / f"{schema.fingerprint:016x}.avsc").write_text(schema.json)
            self._written_schemas.add(schema.fingerprint)
        return data

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]:
        if not batch:
            return []
        if self._closed:
            raise SinkError("Kinesis sink is closed", stream=self.stream)
        if self._client is None or not self._checked:
            try:
                await self.start()
            except SinkError:
                raise
            except Exception as exc:  # endpoint down: retry later
                err = f"Kinesis endpoint unreachable for stream {self.stream!r}: {exc!r}"
                return [SinkResult(Outcome.RETRY, error=err)] * len(batch)
        results: list[SinkResult | None] = [None] * len(batch)
        entries: list[_Entry] = []
        for i, ev in enumerate(batch):
            try:
                data = await self._encode(ev)
            except SinkError as exc:
                results[i] = SinkResult(Outcome.FAILED, error=str(exc))
                continue
            e = _Entry(i, partition_key(ev.table, ev.key), data)
            if e.size > MAX_RECORD_BYTES:
                results[i] = SinkResult(
                    Outcome.FAILED,
                    error=(
                        f"record of {e.size} bytes (data + partition key) exceeds the "
                        f"Kinesis limit of {MAX_RECORD_BYTES} bytes"
                    ),
                    status=413,
                )
                continue
            entries.append(e)
        if self._written:
            entries = self._skip_written(batch, entries, results)
        if entries:
            self._marks.begin_send(max(batch[e.index].sequence for e in entries))

        deadline = time.monotonic() + self.timeout_s
        blocked: dict[str, str] = {}  # partition key -> why its later events wait
        delivered_any = False
        for call in plan_calls(entries):
            todo = []
            for e in call:
                if e.pk in blocked:
                    results[e.index] = SinkResult(
                        Outcome.RETRY,
                        error=f"waiting behind an undelivered earlier event of its key: {blocked[e.pk]}",
                    )
                else:
                    todo.append(e)
            if not todo:
                continue
            try:
                failed = await self._put_with_retries(todo, results, deadline)
            except SinkError:
                if not delivered_any:
                    raise
                failed = {e.index: self._not_found() for e in todo}
            for e in todo:
                why = failed.get(e.index)
                if why is None:
                    if results[e.index] is None:
                        results[e.index] = DELIVERED
                        delivered_any = True
                elif results[e.index] is None:
                    results[e.index] = SinkResult(Outcome.RETRY, error=why, retry_after=1.0)
                    blocked[e.pk] = why
                # else: FAILED (dead letter): later events of the key may go on
        return [r or DELIVERED for r in results]

    def _skip_written(
        self, batch: Sequence[OutboundEvent], entries: list[_Entry], results: list[SinkResult | None]
    ) -> list[_Entry]:
        """Entries whose record the last run already put (found by ``recover``) are DELIVERED."""
        todo = []
        for e in entries:
            event_id = batch[e.index].event_id
            # only data that names its event identifies it: a transformation may drop the id
            if event_id and event_id.encode() in e.data:
                digest = record_digest(e.pk, e.data)
                if digest in self._written:
                    self._written.discard(digest)
                    results[e.index] = DELIVERED
                    self.skipped_on_restart += 1
                    continue
            todo.append(e)
        return todo

    # ------------------------------------------------------------------ restart

    def resume_mark(self, cursor: int) -> str | None:
        """What to store with a checkpoint at ``cursor`` (the dispatcher's last finished
        event); ``recover`` reads the stream from there after a restart."""
        return self._marks.mark(cursor) if self.restart_dedupe else None

    async def recover(self, mark: str | None, horizon: int) -> None:
        """Read each shard from the stored mark to its tail; matching resent events are
        then answered DELIVERED without a new put. ``horizon``: the highest sequence the
        last run may have put (the local log's end); the mark stays the one to store
        until the cursor reaches it.

        A connection failure raises SinkError (the dispatcher retries); an AWS error
        (no read permission, expired shard) or a scan cut by its bounds only means
        that the events not found are put again.
        """
        if not self.restart_dedupe or not mark:
            return
        if self._client is None:
            await self.start()
        t0 = time.monotonic()
        try:
            result = await scan_tail(
                self._client,
                self._stream_arg(),
                mark,
                max_records=self.scan_max_records,
                timeout_s=self.scan_timeout_s,
                error_code=_error_code,
            )
        except ValueError as exc:
            log.warning("Kinesis stream %s: ignoring the stored resume mark: %s", self.stream, exc)
            return
        except Exception as exc:
            code = _error_code(exc)
            if code == "ResourceNotFoundException":
                raise SinkError(self._not_found(), stream=self.stream) from exc
            if not code:
                raise SinkError(
                    f"cannot read Kinesis stream {self.stream!r} after a restart: {exc!r}",
                    stream=self.stream,
                ) from exc
            log.warning(
                "Kinesis stream %s: cannot read what the last run put (%s): events since the "
                "last checkpoint are put again",
                self.stream,
                code,
            )
            return
        for shard, seq in result.positions.items():
            self._marks.written(shard, seq)
        self._marks.pin(mark, horizon)
        self._written = result.digests
        if not result.complete:
            log.warning(
                "Kinesis stream %s: restart scan %s: later events since the checkpoint may be put twice",
                self.stream,
                result.why_incomplete,
            )
        log.info(
            "Kinesis stream %s: read %d records from %d shards since the last checkpoint in %.2fs",
            self.stream,
            result.records,
            result.shards,
            time.monotonic() - t0,
        )

    async def _put_with_retries(
        self, todo: list[_Entry], results: list[SinkResult | None], deadline: float
    ) -> dict[int, str]:
        """PutRecords with per-entry retries; returns {index: reason} of entries not written."""
        pending = list(todo)
        reasons: dict[int, str] = {}
        attempt = 0
        while pending:
            attempt += 1
            try:
                resp = await self._client.put_records(
                    Records=[{"Data": e.data, "PartitionKey": e.pk} for e in pending],
                    **self._stream_arg(),
                )
            except Exception as exc:
                code = _error_code(exc)
                if code == "ResourceNotFoundException":
                    self._checked = False
                    raise SinkError(self._not_found(), stream=self.stream) from exc
                if code in _INVALID:
                    for e in pending:
                        results[e.index] = SinkResult(
                            Outcome.FAILED, error=f"Kinesis refused the record: {exc}", status=400
                        )
                        reasons[e.index] = str(exc)
                    return reasons
                why = (
                    f"Kinesis throttled PutRecords on {self.stream!r}: {code}"
                    if code in _THROTTLED
                    else f"Kinesis PutRecords on {self.stream!r} failed: {exc!r}"
                )
                reasons.update({e.index: why for e in pending})
            else:
                failed_now = []
                for e, rec in zip(pending, resp["Records"], strict=True):
                    if rec.get("ErrorCode"):
                        msg = rec.get("ErrorMessage", "")
                        reasons[e.index] = f"Kinesis entry failed: {rec['ErrorCode']}: {msg}"
                        failed_now.append(e)
                    else:
                        reasons.pop(e.index, None)
                        if "ShardId" in rec and "SequenceNumber" in rec:
                            self._marks.written(rec["ShardId"], rec["SequenceNumber"])
                pending = failed_now
                if not pending:
                    break
            if attempt >= self.max_attempts:
                break
            delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2)
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
        return {e.index: reasons[e.index] for e in pending}


def kinesis_sink_for(cfg: StreamConfig, ctx: SinkContext) -> tuple[Sink, str]:
    """The sink registry's factory for ``kinesis`` destinations."""
    dest = cfg.destination
    return KinesisSink.for_stream(cfg), f"kinesis://{dest.region}/{dest.address}"
