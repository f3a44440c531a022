"""LocalLog: append/read (memory and disk), segments, crash recovery, truncation."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heliosdb_cdc import StateError
from heliosdb_cdc.delivery._locallog import _HDR, OP_CODES, LocalLog, Position, Record

Event = Record


class Writer:
    """Appends transactions with contiguous seqs, one ``append`` per call."""

    def __init__(self, log: LocalLog) -> None:
        self.log = log
        self.seq = log.next_seq
        self.lsn = max(log.durable.end_lsn, 0x1000)
        self.written: dict[int, Event] = {}

    def events(self, n: int, lsn: int) -> list[Event]:
        out = []
        for i in range(n):
            ev = Record(self.seq, lsn, 1_700_000_000_000_000 + self.seq, OP_CODES["INSERT"], "orders",
                        b"k%d" % self.seq, b'{"n":%d}' % self.seq, i + 1)  # fmt: skip
            self.written[self.seq] = ev
            out.append(ev)
            self.seq += 1
        return out

    def txn(self, n: int, commit: bool = True) -> Position | None:
        self.lsn += 0x100
        evs = self.events(n, self.lsn)
        if not commit:
            self.log.append(evs, [], [0] * n)
            return None
        c = (self.seq - 1, self.lsn, self.lsn + 8, 0)
        self.log.append(evs, [c], [0] * n + [1])
        return Position(self.seq - 1, self.lsn, self.lsn + 8)

    def batch(self, sizes: list[int]) -> Position:
        """Several transactions in one append call."""
        events: list[Event] = []
        commits = []
        order: list[int] = []
        for n in sizes:
            self.lsn += 0x100
            events += self.events(n, self.lsn)
            commits.append((self.seq - 1, self.lsn, self.lsn + 8, 0))
            order += [0] * n + [1]
        self.log.append(events, commits, order)
        return Position(self.seq - 1, self.lsn, self.lsn + 8)


def check(rec: Record, ev: Event) -> None:
    seq, lsn, ts, op, table, key, body, idx = ev
    assert (rec.seq, rec.lsn, rec.ts_us, rec.op, rec.table, rec.key, rec.body, rec.index) == (
        seq,
        lsn,
        ts,
        op,
        table,
        key,
        body,
        idx,
    )
    assert rec == ev
    assert rec.operation == "INSERT"
    assert rec.event_id == f"evt_{lsn:016x}_{idx:06d}"


def open_log(path: Path, segment_bytes: int = 64 * 1024 * 1024, memory_events: int = 50_000) -> LocalLog:
    log = LocalLog(path, segment_bytes, memory_events, sync=False)
    log.open()
    return log


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.log"))


def test_new_log_is_empty(tmp_path: Path) -> None:
    log = LocalLog(tmp_path / "log")
    assert log.open() == Position(0, 0, 0)
    assert log.next_seq == 1
    assert log.read_memory(1, 10) == []
    assert log.read_disk(1, 10) == []
    assert segment_files(tmp_path / "log") == ["00000000000000000001.log"]
    log.close()


def test_append_and_read_from_memory(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    pos = w.txn(3)
    assert log.last_seq == 3
    assert log.durable == Position(0, 0, 0)  # not yet synced
    assert log.sync_to_disk() == pos
    recs = log.read_memory(1, 10)
    assert recs is not None and len(recs) == 3
    for r in recs:
        check(r, w.written[r.seq])
    assert [r.seq for r in log.read_memory(2, 1) or []] == [2]
    assert log.read_memory(4, 10) == []
    log.close()


async def test_read_falls_back_to_disk(tmp_path: Path) -> None:
    log = open_log(tmp_path, memory_events=2)
    w = Writer(log)
    for _ in range(5):
        w.txn(3)
    log.sync_to_disk()
    assert log.read_memory(1, 10) is None  # evicted from memory
    mem = log.read_memory(14, 10)
    assert [r.seq for r in mem or []] == [14, 15]
    recs = await log.read(1, 100)
    assert [r.seq for r in recs] == list(range(1, 16))
    for r in recs:
        check(r, w.written[r.seq])
    # resumed reads (cached disk position) continue contiguously
    got: list[int] = []
    nxt = 1
    while nxt <= 15:
        part = log.read_disk(nxt, 4)
        assert part, nxt
        got += [r.seq for r in part]
        nxt = part[-1].seq + 1
    assert got == list(range(1, 16))
    log.close()


def test_segments_roll_after_commits_and_reads_cross_them(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=300, memory_events=1)
    w = Writer(log)
    for n in [2, 3, 1, 4, 2]:
        w.txn(n)
    w.batch([1, 2, 3, 1])  # rolls in the middle of a batch
    log.sync_to_disk()
    files = segment_files(tmp_path)
    assert len(files) > 3
    firsts = [int(f[:-4]) for f in files]
    assert firsts == log._segments
    # each segment is named after the first seq it holds
    for first in firsts[1:]:
        recs = log.read_disk(first, 1)
        assert recs[0].seq == first
    for start in range(1, w.seq):
        recs = log.read_disk(start, 1000)
        assert [r.seq for r in recs] == list(range(start, w.seq))
    # recovery reads the last segment: same position
    end = log.durable
    log.close()
    again = open_log(tmp_path, segment_bytes=300)
    assert again.durable == end
    assert again.next_seq == w.seq
    again.close()


def test_recovery_drops_uncommitted_tail(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    committed = w.txn(2)
    w.txn(3, commit=False)
    log.close()
    size_before = (tmp_path / segment_files(tmp_path)[0]).stat().st_size
    log = open_log(tmp_path)
    assert log.durable == committed
    assert log.next_seq == 3
    assert [r.seq for r in log.read_disk(1, 100)] == [1, 2]
    assert (tmp_path / segment_files(tmp_path)[0]).stat().st_size < size_before
    # appending goes on after the last commit
    w2 = Writer(log)
    assert w2.seq == 3
    w2.txn(1)
    log.close()
    log = open_log(tmp_path)
    assert [r.seq for r in log.read_disk(1, 100)] == [1, 2, 3]
    log.close()


def test_recovery_after_torn_write_mid_frame(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    first = w.txn(2)
    log.sync_to_disk()
    boundary = log.size_bytes
    w.txn(2)
    log.close()
    path = tmp_path / segment_files(tmp_path)[0]
    size = path.stat().st_size
    for cut in (size - 1, size - 10, boundary + 5, boundary + 1):
        shutil.copy(path, tmp_path / "copy")
        os.truncate(tmp_path / "copy", cut)
        d = tmp_path / f"c{cut}"
        d.mkdir()
        shutil.move(tmp_path / "copy", d / path.name)
        rec = open_log(d)
        assert rec.durable == first, cut
        assert [r.seq for r in rec.read_disk(1, 100)] == [1, 2]
        assert (d / path.name).stat().st_size == boundary
        rec.close()


def test_recovery_ignores_garbage_after_last_commit(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    end = w.txn(3)
    log.close()
    path = tmp_path / segment_files(tmp_path)[0]
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x10\x00\x00\x00garbage bytes that are not a frame" * 3)
    log = open_log(tmp_path)
    assert log.durable == end
    assert path.stat().st_size == good
    assert [r.seq for r in log.read_disk(1, 100)] == [1, 2, 3]
    log.close()


def test_corrupted_crc_cuts_the_log_there(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    first = w.txn(1)
    log.sync_to_disk()
    boundary = log.size_bytes
    w.txn(1)
    log.close()
    path = tmp_path / segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[boundary + 30] ^= 0xFF  # inside the payload of the second transaction's event
    path.write_bytes(bytes(data))
    log = open_log(tmp_path)
    assert log.durable == first
    log.close()


def test_kill_after_segment_roll_keeps_the_position(tmp_path: Path) -> None:
    """A kill -9 leaves what was written to the OS; Python's buffers are lost."""
    log = LocalLog(tmp_path / "live", segment_bytes=200, memory_events=10)
    log.open()
    w = Writer(log)
    while len(segment_files(tmp_path / "live")) < 2:
        w.txn(2)
    # the append that rolled synced the old segment; nothing was written after it
    end = log.durable
    assert end.seq == w.seq - 1 and end.commit_lsn > 0
    shutil.copytree(tmp_path / "live", tmp_path / "killed")  # the image a kill -9 leaves
    rec = open_log(tmp_path / "killed", segment_bytes=200)
    assert rec.durable == end  # commit LSN included: the decoder skips by it
    assert rec.next_seq == w.seq
    rec.close()
    log.close()


def test_rewind_uncommitted(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    w = Writer(log)
    end = w.txn(2)
    size = log.size_bytes
    w.txn(3, commit=False)
    assert log.last_seq == 5
    assert log.size_bytes > size
    log.rewind_uncommitted()
    assert log.last_seq == 2
    assert log.next_seq == 3
    assert log.size_bytes == size
    assert [r.seq for r in log.read_memory(1, 10) or []] == [1, 2]
    log.rewind_uncommitted()  # nothing to drop: no-op
    assert log.next_seq == 3
    w2 = Writer(log)
    w2.txn(1)
    assert log.sync_to_disk().seq == 3
    assert [r.seq for r in log.read_disk(1, 10)] == [1, 2, 3]
    assert log.durable.seq == 3 and end is not None and end.seq == 2
    log.close()


def test_truncate_before_deletes_only_whole_old_segments(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=150, memory_events=1)
    w = Writer(log)
    for _ in range(6):
        w.txn(2)
    log.sync_to_disk()
    segs = list(log._segments)
    assert len(segs) >= 4
    total = log.size_bytes
    # below the threshold nothing goes; at it, the first segment does
    assert log.trim_threshold == segs[1] - 1
    assert log.truncate_before(segs[1] - 2) == 0
    # a seq inside the second segment: only the first one is wholly consumed
    freed = log.truncate_before(segs[1])
    assert log._segments == segs[1:]
    assert freed > 0
    assert log.size_bytes == total - freed
    assert not (tmp_path / f"{segs[0]:020d}.log").exists()
    # the records still needed are all readable
    assert [r.seq for r in log.read_disk(segs[1], 1000)] == list(range(segs[1], w.seq))
    # a seq just before a segment's end does not free it
    assert log.truncate_before(segs[2] - 2) == 0
    assert log._segments == segs[1:]
    # everything consumed: the last (current) segment stays
    log.truncate_before(10**9)
    assert log._segments == segs[-1:]
    assert segment_files(tmp_path) == [f"{segs[-1]:020d}.log"]
    log.close()


def test_size_bytes_matches_disk(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=250)
    w = Writer(log)
    for n in (1, 2, 3, 4):
        w.txn(n)
    w.txn(2, commit=False)
    log.sync_to_disk()
    assert log.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    log.rewind_uncommitted()
    log.sync_to_disk()
    assert log.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    log.close()


def test_unwritable_directory_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match="cannot open the local log"):
        LocalLog(blocker / "log").open()


# -- property: any crash point recovers to a commit boundary ----------------------------

txn_plan = st.lists(
    st.tuples(st.integers(0, 4), st.booleans()),  # (events, committed in its own append?)
    min_size=1,
    max_size=10,
)


@given(txn_plan, st.floats(0, 1), st.binary(max_size=40), st.sampled_from([10**9, 400]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_crash_recovers_a_committed_prefix(
    plan: list[tuple[int, bool]], crash_at: float, junk: bytes, segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = open_log(d, segment_bytes=segment_bytes, memory_events=3)
        w = Writer(log)
        commits: list[Position] = []
        for n, group in plan:
            if group:
                commits.append(w.batch([n]))
            else:
                pos = w.txn(n)
                assert pos is not None
                commits.append(pos)
        w.txn(2, commit=False)  # an unfinished transaction at the end
        log.sync_to_disk()
        log._file.close()  # type: ignore[union-attr]  # crash: no close(), no more writes
        last = d / segment_files(d)[-1]
        first_in_last = int(last.stem)
        size = last.stat().st_size
        cut = int(size * crash_at)
        os.truncate(last, cut)
        with open(last, "ab") as f:
            f.write(junk)

        rec = open_log(d, segment_bytes=segment_bytes)
        got = rec.durable
        # a commit boundary (or the position the last segment started at)
        candidates = [Position(0, 0, 0), *commits]
        # a torn segment header (cut inside its frame) keeps the seq but cannot know the LSN
        header_frame = 8 + _HDR.size + 8
        assert got in candidates or (got.seq == first_in_last - 1 and cut < header_frame)
        # never beyond what was committed, never lost before the last segment
        assert got.seq <= commits[-1].seq
        assert got.seq >= first_in_last - 1
        # the recovered log is exactly the prefix of events up to it
        recs = rec.read_disk(1, 10_000)
        assert [r.seq for r in recs] == list(range(1, got.seq + 1))
        for r in recs:
            check(r, w.written[r.seq])
        assert rec.next_seq == got.seq + 1
        rec.close()


def test_rolls_of_empty_transactions_keep_size_and_position(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=150)
    w = Writer(log)
    for _ in range(8):
        w.txn(0)  # transactions with no captured change: commit markers only
    end = log.sync_to_disk()
    assert log.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    w.txn(1)
    end = log.sync_to_disk()
    assert log.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    log.close()
    again = open_log(tmp_path, segment_bytes=150)
    assert again.durable == end
    assert [r.seq for r in again.read_disk(1, 10)] == [1]
    again.close()


def test_disk_read_never_skips_a_record_written_but_not_yet_published(tmp_path: Path) -> None:
    from heliosdb_cdc.delivery._locallog import OP_CODES, _frame

    log = LocalLog(tmp_path / "log", memory_events=1, sync=False)
    log.open()
    log.append(
        [Record(1, 10, 0, 1, "t", b"{}", b"{}", 1), Record(2, 10, 0, 1, "t", b"{}", b"{}", 2)],
        [(2, 10, 11, 0)],
        [0, 0, 1],
    )
    # the writer has put record 3 in the file but not yet counted it (a race with readers)
    assert log._file is not None
    log._file.write(_frame(3, 20, 0, OP_CODES["INSERT"], b"t", b"{}", b"{}", 1))
    log._file.flush()
    assert [r.seq for r in log.read_disk(1, 10)] == [1, 2]
    log._next_seq = 4  # now published
    assert [r.seq for r in log.read_disk(3, 10)] == [3]
