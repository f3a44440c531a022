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
from typing import Any

from .._config import Destination, StreamConfig
from .._errors import SinkError
from ._avro import AvroEncoder, AvroSchemaRegistry
from ._base import DELIVERED, OutboundEvent, Outcome, SinkResult

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


def _error_code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""


class KinesisSink:
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
