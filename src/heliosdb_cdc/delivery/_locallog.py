"""The local log: a durable, append-only record of every captured event.

Capture appends events (batched, one fsync per batch) and confirms the source
position to PostgreSQL only once the batch is durable; streams read the log at
their own pace from their own cursor, so a dead endpoint costs disk, not RAM,
and does not hold WAL in PostgreSQL.

Layout: segment files ``<first_seq:020d>.log`` in one directory. Each frame is
``u32 length | u32 crc32 | payload``; the payload starts with a fixed header
(seq, lsn, commit timestamp, kind, table length, key length) followed by the
table name, key and body. Kinds: operations (events), COMMIT markers written
at each transaction end (``lsn`` = commit end LSN, key = commit LSN) and a
SEGMENT header at the start of each file. Segments roll only right after a
commit marker, so recovery reads the last segment alone: anything after its
last commit marker (a torn write or an unfinished transaction) is cut off.

Writes happen on the capture thread; reads on the event loop. A bounded tail
of recent records stays in memory, older ones are read back from disk.

Durability: :attr:`LocalLog.durable` only moves after an ``fsync`` of the data it
covers. A new segment is written to a temporary name, fsynced, renamed into place
and the directory fsynced, so every segment file that exists after a power cut has
a whole header. Every file operation goes through a :class:`FileSystem`, so tests
can stand a simulated disk in for the real one and cut the power at any step.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .._errors import StateError
from .._record import OP_CODES, OP_NAMES, OP_WATERMARK, Record

log = logging.getLogger("heliosdb_cdc.locallog")

_FRAME = struct.Struct("<II")
_HDR = struct.Struct("<QQqBHII")  # seq, lsn, ts_us, kind, table_len, key_len, index in txn
_U64 = struct.Struct("<Q")

KIND_COMMIT = 0xFF
KIND_SEGMENT = 0xFE
__all__ = ["OP_CODES", "OP_NAMES", "OP_WATERMARK", "LocalLog", "Position", "Record"]


@dataclass(slots=True, frozen=True)
class Position:
    """The durable end of the log: last event sequence and last complete transaction."""

    seq: int
    commit_lsn: int
    end_lsn: int


def _frame(
    seq: int, lsn: int, ts: int, kind: int, table: bytes, key: bytes, body: bytes, index: int = 0
) -> bytes:
    payload = _HDR.pack(seq, lsn, ts, kind, len(table), len(key), index) + table + key + body
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _parse_payload(payload: bytes) -> tuple[int, int, int, int, str, bytes, bytes, int]:
    seq, lsn, ts, kind, tl, kl, index = _HDR.unpack_from(payload)
    o = _HDR.size
    table = payload[o : o + tl].decode()
    key = payload[o + tl : o + tl + kl]
    body = payload[o + tl + kl :]
    return seq, lsn, ts, kind, table, key, body, index


class FileSystem:
    """The log's file operations: the real ones. Tests substitute a simulated disk."""

    def open(self, path: Path, mode: str) -> IO[bytes]:
        f: IO[bytes] = open(path, mode)  # the caller closes it
        return f

    def fsync(self, f: IO[bytes]) -> None:
        os.fsync(f.fileno())

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink()

    def size(self, path: Path) -> int:
        return path.stat().st_size

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: Path) -> bool:
        """Create the directory if needed; return whether it was created."""
        if path.is_dir():
            return False
        path.mkdir(parents=True, exist_ok=True)
        return True


def _iter_frames(f: IO[bytes]) -> tuple[list[tuple[int, bytes]], int]:
    """Read every valid frame; return (offset, payload) pairs and the end of valid data."""
    out = []
    data = f.read()
    pos = 0
    n = len(data)
    while pos + 8 <= n:
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + 8 + length
        if end > n or length < _HDR.size:
            break
        payload = data[pos + 8 : end]
        if zlib.crc32(payload) != crc:
            break
        out.append((pos, payload))
        pos = end
    return out, pos


class LocalLog:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_bytes: int = 64 * 1024 * 1024,
        memory_events: int = 50_000,
        sync: bool = True,
        fs: FileSystem | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.fs = fs or FileSystem()
        self.segment_bytes = segment_bytes
        self.memory_events = memory_events
        self.sync = sync
        self._segments: list[int] = []  # first seqs, sorted
        self._file: IO[bytes] | None = None
        self._file_size = 0
        self._commit_offset = 0
        self._lock = threading.Lock()
        self._tail: deque[Record] = deque()
        self._next_seq = 1
        self.durable = Position(0, 0, 0)
        self._written = Position(0, 0, 0)
        self._bytes_on_disk = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._disk_cache: dict[int, tuple[int, int]] = {}  # next seq -> (segment, offset)

    # -- recovery ------------------------------------------------------------
    def open(self) -> Position:
        """Open (creating if needed) and recover; return the durable end position."""
        fs = self.fs
        try:
            if fs.mkdir(self.dir) and self.sync:
                fs.fsync_dir(self.dir.parent)  # the new directory's entry, too
            names = fs.listdir(self.dir)
            for name in names:
                if name.endswith(".log.tmp"):  # a roll cut short: that segment never existed
                    fs.unlink(self.dir / name)
            self._segments = sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())
            self._bytes_on_disk = sum(fs.size(self._path(first)) for first in self._segments)
            first = self._segments[0] if self._segments else 1
            while self._segments and not self._recover_last():
                first = self._segments[0] if self._segments else first
            if not self._segments:
                # (a lone segment without a header keeps its sequence numbers going)
                self.durable = self._written = Position(first - 1, 0, 0)
                self._next_seq = first
                self._new_segment(first, self.durable)
        except OSError as exc:
            raise StateError(f"cannot open the local log: {exc.strerror}", path=str(self.dir)) from exc
        return self.durable

    def _path(self, first: int) -> Path:
        return self.dir / f"{first:020d}.log"

    def _recover_last(self) -> bool:
        """Recover from the last segment; False (and the segment dropped) if it has no header."""
        fs = self.fs
        first = self._segments[-1]
        path = self._path(first)
        with fs.open(path, "rb") as f:
            frames, _ = _iter_frames(f)
        size = fs.size(path)
        if not frames or _parse_payload(frames[0][1])[3] != KIND_SEGMENT:
            # never complete (a segment is renamed into place only once its header is
            # durable): what it would have held is in the previous one or still in PostgreSQL
            log.warning("local log: dropping %s, a segment without a valid header", path.name)
            fs.unlink(path)
            self._fsync_dir()
            self._segments.pop()
            self._bytes_on_disk -= size
            return False
        pos = Position(first - 1, 0, 0)
        cut = 0
        for offset, payload in frames:
            seq, lsn, _ts, kind, _t, key, _b, _i = _parse_payload(payload)
            if kind in (KIND_SEGMENT, KIND_COMMIT):
                pos = Position(seq, _U64.unpack(key)[0], lsn)
                cut = offset + 8 + len(payload)
        if cut < size:
            log.warning(
                "local log: dropping %d bytes after the last complete transaction in %s "
                "(they are read again from PostgreSQL)",
                size - cut,
                path.name,
            )
        self._file = fs.open(path, "r+b")
        self._file.truncate(cut)
        self._file.seek(cut)
        if self.sync:
            fs.fsync(self._file)
        self._bytes_on_disk -= size - cut
        self._file_size = cut
        self._commit_offset = cut
        self._next_seq = pos.seq + 1
        self.durable = self._written = pos
        return True

    def _new_segment(self, first_seq: int, prev: Position) -> None:
        fs = self.fs
        if self._file is not None:  # (a roll: append synced it already)
            self._file.close()
            self._file = None
        path = self._path(first_seq)
        tmp = path.with_name(path.name + ".tmp")
        # a roll with no event since the last one (empty transactions) reuses the same
        # first seq and replaces that file: do not count its old bytes twice
        if first_seq in self._segments:
            self._bytes_on_disk -= fs.size(path)
        frame = _frame(prev.seq, prev.end_lsn, 0, KIND_SEGMENT, b"", _U64.pack(prev.commit_lsn), b"")
        # the header (the recovery position of this segment) is durable before the
        # segment exists under its name: a power cut leaves the old segment as the last
        # one, or this one whole, never an empty or torn last segment
        f = fs.open(tmp, "wb")
        try:
            f.write(frame)
            f.flush()
            if self.sync:
                fs.fsync(f)
            fs.rename(tmp, path)
        except BaseException:
            f.close()
            raise
        self._file = f
        self._file_size = len(frame)
        self._commit_offset = len(frame)
        self._bytes_on_disk += len(frame)
        if first_seq not in self._segments:
            self._segments.append(first_seq)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        if self.sync:
            self.fs.fsync_dir(self.dir)

    # -- writer (capture thread) --------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next_seq

    def append(
        self,
        events: list[Record],
        commits: list[tuple[int, int, int, int]],
        order: list[int],
    ) -> None:
        """Append a batch.

        ``events``: records in sequence order; ``commits``: (last_seq, commit_lsn,
        end_lsn, ts_us); ``order`` interleaves them: 0 takes the next event, 1 the
        next commit. Records become visible to readers at once;
        :meth:`sync_to_disk` makes them durable.
        """
        assert self._file is not None
        parts: list[bytes] = []
        ei = ci = 0
        last_commit: Position | None = None
        roll_at: int | None = None
        size = self._file_size
        commit_off: int | None = None
        pack_hdr = _HDR.pack
        pack_frame = _FRAME.pack
        crc32 = zlib.crc32
        add = parts.append
        for kind in order:
            if kind == 0:
                seq, lsn, ts, op, table, key, body, idx = events[ei]
                ei += 1
                tb = table.encode()
                payload = pack_hdr(seq, lsn, ts, op, len(tb), len(key), idx) + tb + key + body
                add(pack_frame(len(payload), crc32(payload)))
                add(payload)
                size += 8 + len(payload)
            else:
                last_seq, commit_lsn, end_lsn, ts = commits[ci]
                ci += 1
                fr = _frame(last_seq, end_lsn, ts, KIND_COMMIT, b"", _U64.pack(commit_lsn), b"")
                add(fr)
                size += len(fr)
                last_commit = Position(last_seq, commit_lsn, end_lsn)
                commit_off = size
                if size >= self.segment_bytes:
                    roll_at = ei + ci
                    break
        data = b"".join(parts)
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            # cut off a partial write so the file stays a sequence of whole frames
            try:
                self._file.truncate(self._file_size)
                self._file.seek(self._file_size)
            except OSError:
                pass
            raise StateError(
                f"cannot write the local log: {exc.strerror}; capture retries once space returns",
                path=str(self.dir),
            ) from exc
        self._file_size += len(data)
        self._bytes_on_disk += len(data)
        recs = events[:ei] if roll_at else events
        if recs:
            self._next_seq = recs[-1].seq + 1
        if last_commit is not None:
            self._written = last_commit
            assert commit_off is not None
            self._commit_offset = commit_off
        with self._lock:
            self._tail.extend(recs)
            while len(self._tail) > self.memory_events:
                self._tail.popleft()
        self._notify()
        if roll_at is not None:
            self.sync_to_disk()
            self._new_segment(self._next_seq, self._written)
            # the rest of the batch goes to the new segment
            if order[roll_at:]:
                self.append(events[ei:], commits[ci:], order[roll_at:])

    def sync_to_disk(self) -> Position:
        """fsync what was appended; return the new durable position."""
        assert self._file is not None
        try:
            self._file.flush()
            if self.sync:
                self.fs.fsync(self._file)
        except OSError as exc:
            raise StateError(f"cannot sync the local log: {exc.strerror}", path=str(self.dir)) from exc
        self.durable = self._written
        return self.durable

    def rewind_uncommitted(self) -> None:
        """Drop records of a transaction that did not finish (the source resends it)."""
        assert self._file is not None
        if self._file_size == self._commit_offset:
            return
        self._file.flush()
        self._file.truncate(self._commit_offset)
        self._file.seek(self._commit_offset)
        self._bytes_on_disk -= self._file_size - self._commit_offset
        self._file_size = self._commit_offset
        self._next_seq = self._written.seq + 1
        with self._lock:
            while self._tail and self._tail[-1].seq > self._written.seq:
                self._tail.pop()

    @property
    def written(self) -> Position:
        """End of the last complete transaction written (durable or not yet fsynced)."""
        return self._written

    @property
    def size_bytes(self) -> int:
        return self._bytes_on_disk

    # -- readers (event loop) -----------------------------------------------
    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and self._waiters:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for w in waiters:
            if not w.done():
                w.set_result(None)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    async def wait_beyond(self, seq: int, timeout: float | None = None) -> None:
        """Return once a record after ``seq`` exists (or after ``timeout``).

        A waiter costs nothing until the next append wakes it; one that times out or is
        cancelled leaves nothing behind (idle streams wait here without a timeout).
        """
        if self.last_seq > seq:
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.add(fut)
        try:
            if self.last_seq > seq:  # appended between the check and the registration
                return
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)

    def read_memory(self, from_seq: int, max_n: int) -> list[Record] | None:
        """Records from ``from_seq`` if the in-memory tail has them, else None."""
        with self._lock:
            if not self._tail:
                return [] if from_seq > self.last_seq else None
            first = self._tail[0].seq
            if from_seq < first:
                return None
            start = from_seq - first
            if start >= len(self._tail):
                return []
            end = min(len(self._tail), start + max_n)
            return [self._tail[i] for i in range(start, end)]

    def read_disk(self, from_seq: int, max_n: int) -> list[Record]:
        """Read records from disk (blocking: call from a worker thread)."""
        cached = self._disk_cache.pop(from_seq, None)
        if cached is not None and cached[0] in self._segments:
            seg, offset = cached
        else:
            idx = max(0, bisect.bisect_right(self._segments, from_seq) - 1)
            seg, offset = self._segments[idx], 0
        out: list[Record] = []
        chunk = 4 * 1024 * 1024
        last = self.last_seq
        ahead = False  # met a record the writer has not published yet
        while len(out) < max_n and not ahead:
            try:
                with self.fs.open(self._path(seg), "rb") as f:
                    f.seek(offset)
                    data = f.read(chunk)
            except FileNotFoundError:
                break
            pos = 0
            n = len(data)
            while pos + 8 <= n and len(out) < max_n:
                length, _crc = _FRAME.unpack_from(data, pos)
                end = pos + 8 + length
                if end > n:
                    break
                seq, lsn, ts, kind, table, key, body, idx = _parse_payload(data[pos + 8 : end])
                if kind < KIND_SEGMENT and seq > last:
                    # written to the file but not yet counted by the writer: stop before
                    # it, so the cached position never skips it
                    ahead = True
                    break
                pos = end
                if kind < KIND_SEGMENT and seq >= from_seq:
                    out.append(Record(seq, lsn, ts, kind, table, key, body, idx))
            offset += pos
            if len(out) >= max_n or ahead:
                break
            if n == chunk:  # more of this segment to read
                if pos == 0:
                    chunk *= 2  # one frame larger than the chunk
                continue
            if pos < n:
                break  # a frame still being written at the end of the log
            nxt = bisect.bisect_right(self._segments, seg)
            if nxt >= len(self._segments):
                break
            seg, offset = self._segments[nxt], 0
        if out:
            self._disk_cache[out[-1].seq + 1] = (seg, offset)
            while len(self._disk_cache) > 64:
                self._disk_cache.pop(next(iter(self._disk_cache)))
        return out

    async def read(self, from_seq: int, max_n: int) -> list[Record]:
        mem = self.read_memory(from_seq, max_n)
        if mem is not None:
            return mem
        return await asyncio.to_thread(self.read_disk, from_seq, max_n)

    @property
    def trim_threshold(self) -> int:
        """The lowest ``seq`` for which :meth:`truncate_before` deletes a segment."""
        segs = self._segments
        return segs[1] - 1 if len(segs) > 1 else self._next_seq

    def truncate_before(self, seq: int) -> int:
        """Delete whole segments holding only records <= ``seq``; return bytes freed."""
        freed = 0
        while len(self._segments) > 1 and self._segments[1] <= seq + 1:
            first = self._segments.pop(0)
            path = self._path(first)
            try:
                size = self.fs.size(path)
                self.fs.unlink(path)
            except FileNotFoundError:
                size = 0
            freed += size
        self._bytes_on_disk -= freed
        return freed

    def close(self) -> None:
        if self._file is not None:
            try:
                self.sync_to_disk()
            finally:
                self._file.close()
                self._file = None
