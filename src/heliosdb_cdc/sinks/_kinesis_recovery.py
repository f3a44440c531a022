"""Kinesis after a restart: what did the last run already put?

Kinesis has no transactions, so a crash between PutRecords and the
dispatcher's checkpoint leaves records in the stream that the dispatcher
resends from its checkpoint. To skip them, the sink keeps a *resume mark*:
per shard, the sequence number of the last record written before the oldest
send that still holds an unfinished event. The dispatcher stores the mark with
each checkpoint; after a restart the sink reads every shard from its mark to
the tail (:func:`scan_tail`) and remembers a digest of each record's partition
key and data. A resent event whose partition key and encoded data are
byte-identical to a record found there, and whose data carries its own
``event_id`` (so the bytes name exactly one event), is answered DELIVERED
without a new put.

Only a record that is already in the stream makes an event skipped, so the
scan can never lose an event: a mark that is too old costs a longer scan, one
that is too new (or a scan cut short by its bounds) costs duplicates.

Bounds: at most ``max_records`` records are read (a 16-byte digest each,
about 100 bytes of memory with the set's overhead) within ``timeout_s``;
beyond either, the rest is resent as before (at least once).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("heliosdb_cdc.sinks.kinesis")

MARK_VERSION = 1
# shards the mark has no position for (never written by this sink) are read from the
# mark's time minus this margin: it covers a clock skew between this host and AWS
CLOCK_MARGIN_S = 60.0
MAX_HISTORY = 10_000
_THROTTLED = {"ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException"}


def record_digest(pk: str, data: bytes) -> bytes:
    """What identifies a record: 16 bytes of BLAKE2b over partition key and data."""
    h = hashlib.blake2b(digest_size=16)
    h.update(pk.encode())
    h.update(b"\0")
    h.update(data)
    return h.digest()


def _newer(a: str, b: str) -> bool:
    """Kinesis sequence numbers are decimal strings of up to 128 bits."""
    return len(a) > len(b) or (len(a) == len(b) and a > b)


@dataclass(slots=True)
class _Send:
    max_sequence: int  # highest dispatcher sequence of the send's events
    at: float  # wall time when the send began
    positions: dict[str, str]  # shard -> last sequence number written before it


@dataclass
class ResumeMarks:
    """Per-shard positions written so far and, per send, the positions before it."""

    positions: dict[str, str] = field(default_factory=dict)
    _sends: deque[_Send] = field(default_factory=deque)
    # after a restart: the mark read, kept until the cursor passes every event the
    # last run may have put, so a crash during the resend still finds its records
    _pinned: tuple[str, int] | None = None

    def pin(self, mark: str, until_sequence: int) -> None:
        self._pinned = (mark, until_sequence)

    def begin_send(self, max_sequence: int) -> None:
        if self._sends and self._sends[-1].max_sequence >= max_sequence:
            return  # a retry of events already covered by an earlier, unfinished send
        self._sends.append(_Send(max_sequence, time.time(), dict(self.positions)))
        while len(self._sends) > MAX_HISTORY:  # nobody asks for marks: keep memory bounded
            self._sends.popleft()

    def written(self, shard: str, sequence_number: str) -> None:
        old = self.positions.get(shard)
        if old is None or _newer(sequence_number, old):
            self.positions[shard] = sequence_number

    def mark(self, cursor: int) -> str:
        """The mark for a checkpoint at ``cursor``: every event after it was put after
        the positions this names (or is not put yet)."""
        sends = self._sends
        while sends and sends[0].max_sequence <= cursor:
            sends.popleft()
        if self._pinned is not None:
            if cursor < self._pinned[1]:
                return self._pinned[0]
            self._pinned = None
        if sends:
            at, positions = sends[0].at, sends[0].positions
        else:
            at, positions = time.time(), self.positions
        return json.dumps({"v": MARK_VERSION, "t": round(at, 3), "shards": positions})


def parse_mark(mark: str) -> tuple[float, dict[str, str]]:
    """(time, {shard: sequence number}); ValueError when it is not a mark."""
    try:
        doc = json.loads(mark)
        if doc.get("v") != MARK_VERSION:
            raise ValueError(f"unknown mark version {doc.get('v')!r}")
        shards = doc["shards"]
        if not isinstance(shards, dict):
            raise ValueError("shards is not an object")
        return float(doc["t"]), {str(k): str(v) for k, v in shards.items()}
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a Kinesis resume mark: {exc}") from exc


@dataclass
class ScanResult:
    digests: set[bytes] = field(default_factory=set)
    positions: dict[str, str] = field(default_factory=dict)
    records: int = 0
    shards: int = 0
    complete: bool = True
    why_incomplete: str = ""


ErrorCode = Callable[[BaseException], str]


async def _list_shards(client: Any, stream_arg: Mapping[str, str]) -> list[str]:
    shards: list[str] = []
    resp = await client.list_shards(**stream_arg)
    while True:
        shards.extend(s["ShardId"] for s in resp.get("Shards", []))
        token = resp.get("NextToken")
        if not token:
            return shards
        resp = await client.list_shards(NextToken=token)


async def scan_tail(
    client: Any,
    stream_arg: Mapping[str, str],
    mark: str,
    *,
    max_records: int,
    timeout_s: float,
    error_code: ErrorCode,
) -> ScanResult:
    """Read every shard from the mark to its tail, within the bounds.

    AWS errors that name a code (access denied, expired shard...) end the scan of
    that shard and make the result incomplete; connection errors propagate.
    """
    at, start = parse_mark(mark)
    deadline = time.monotonic() + timeout_s
    result = ScanResult(positions=dict(start))
    for shard in await _list_shards(client, stream_arg):
        result.shards += 1
        if shard in start:
            where: dict[str, Any] = {
                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "StartingSequenceNumber": start[shard],
            }
        else:
            when = datetime.fromtimestamp(max(0.0, at - CLOCK_MARGIN_S), tz=UTC)
            where = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": when}
        try:
            resp = await client.get_shard_iterator(ShardId=shard, **where, **stream_arg)
        except Exception as exc:
            if not error_code(exc):
                raise
            result.complete = False
            result.why_incomplete = f"shard {shard}: {error_code(exc)}"
            continue
        iterator = resp.get("ShardIterator")
        await _read_shard(client, stream_arg, shard, iterator, result, max_records, deadline, error_code)
        if not result.complete and result.why_incomplete.startswith("stopped"):
            break
    return result


async def _read_shard(
    client: Any,
    stream_arg: Mapping[str, str],
    shard: str,
    iterator: str | None,
    result: ScanResult,
    max_records: int,
    deadline: float,
    error_code: ErrorCode,
) -> None:
    arn = {k: v for k, v in stream_arg.items() if k == "StreamARN"}  # GetRecords takes no name
    delay = 0.2
    while iterator:
        if result.records >= max_records:
            result.complete = False
            result.why_incomplete = f"stopped after {result.records} records (max_records)"
            return
        if time.monotonic() > deadline:
            result.complete = False
            result.why_incomplete = f"stopped after {result.records} records (timeout)"
            return
        limit = min(10_000, max_records - result.records)
        try:
            resp = await client.get_records(ShardIterator=iterator, Limit=limit, **arn)
        except Exception as exc:
            code = error_code(exc)
            if not code:
                raise
            if code in _THROTTLED:  # 5 reads per second and shard
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            result.complete = False
            result.why_incomplete = f"shard {shard}: {code}"
            return
        records = resp.get("Records", [])
        for rec in records:
            result.digests.add(record_digest(rec["PartitionKey"], rec["Data"]))
            result.positions[shard] = rec["SequenceNumber"]
        result.records += len(records)
        iterator = resp.get("NextShardIterator")
        if resp.get("MillisBehindLatest", 0) == 0 and len(records) < limit:
            return  # at the tail
