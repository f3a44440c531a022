"""The local log under a power cut at every step: append, segment roll, rewind,
checkpoint of a stream cursor and deletion of old segments.

A simulated disk (tests/crashfs.py) keeps, at the cut, only what was fsynced
(file data by an fsync of the file, directory entries by an fsync of the
directory), and every in-between state of what was not. After each cut the log
recovers without an error, holds a prefix of what was appended, ends at a
transaction boundary no earlier than the position that was reported durable
(the one capture confirms to PostgreSQL), still holds every record after the
persisted stream cursor, and goes on appending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from heliosdb_cdc.delivery._locallog import OP_CODES, LocalLog, Position, Record
from tests.crashfs import PowerCut, SimDisk

DIR = Path("/simulated/log")
START = Position(0, 0, 0)
SEGMENT = 320  # a header, two events and a commit marker fill one


@dataclass
class Run:
    """What the scenario did, as the rest of the service would know it."""

    records: dict[int, Record] = field(default_factory=dict)
    commits: list[Position] = field(default_factory=lambda: [START])
    next_seq: int = 1
    lsn: int = 0x1000
    reported: Position = START  # the log's durable position (what capture confirms)
    persisted_cursor: int = 0  # the stream cursor committed to the state database


class Scenario:
    def __init__(self, log: LocalLog, disk: SimDisk, run: Run) -> None:
        self.log = log
        self.disk = disk
        self.run = run

    def _events(self, n: int) -> list[Record]:
        run = self.run
        out = []
        for i in range(n):
            seq = run.next_seq
            rec = Record(seq, run.lsn, seq, OP_CODES["UPDATE"], "orders", b"k%d" % seq, b'{"n":%d}' % seq, i)
            run.records[seq] = rec
            out.append(rec)
            run.next_seq += 1
        return out

    def batch(self, sizes: list[int]) -> None:
        """Transactions of ``sizes`` events in one append (the last one may stay open)."""
        run = self.run
        events: list[Record] = []
        commits = []
        order: list[int] = []
        for n in sizes:
            run.lsn += 0x100
            events += self._events(n)
            order += [0] * n + [1]
            commits.append((run.next_seq - 1, run.lsn, run.lsn + 8, 0))
            run.commits.append(Position(run.next_seq - 1, run.lsn, run.lsn + 8))
        self.log.append(events, commits, order)

    def open_txn(self, n: int) -> None:
        self.run.lsn += 0x100
        self.log.append(self._events(n), [], [0] * n)

    def sync(self) -> None:
        self.run.reported = self.log.sync_to_disk()

    def rewind(self) -> None:
        """A new replication session: the open transaction is dropped and resent."""
        self.log.rewind_uncommitted()
        run = self.run
        for seq in range(self.log.next_seq, run.next_seq):
            del run.records[seq]
        run.next_seq = self.log.next_seq

    def checkpoint(self, cursor: int) -> None:
        """A stream's cursor committed to the state database (one step, atomic)."""
        assert cursor <= self.run.reported.seq
        self.disk.step(f"checkpoint {cursor}")
        self.run.persisted_cursor = cursor

    def housekeeping(self) -> None:
        """Retention as the service does it: by the persisted cursor, never past durable."""
        self.log.truncate_before(min(self.run.persisted_cursor, self.log.durable.seq))

    def play(self) -> None:
        s = self
        s.log.open()
        s.batch([2])
        s.sync()
        s.batch([1, 0, 3])  # rolls in the middle of the batch
        s.sync()
        s.batch([0] * 7)  # commit markers only: a roll that keeps the segment's first seq
        s.sync()
        s.batch([2, 1])
        s.open_txn(2)  # a transaction still open at the end of a batch is fsynced too
        s.sync()
        s.rewind()
        s.batch([3])
        s.sync()
        s.checkpoint(6)
        s.housekeeping()
        s.batch([2, 2, 2, 1])
        s.sync()
        s.checkpoint(s.run.reported.seq - 2)
        s.housekeeping()
        s.batch([1])
        s.log.close()
        s.run.reported = s.log.durable


def play(cut_at: int | None) -> tuple[SimDisk, Run, bool]:
    disk = SimDisk(cut_at)
    run = Run()
    log = LocalLog(DIR, segment_bytes=SEGMENT, memory_events=4, fs=disk)
    try:
        Scenario(log, disk, run).play()
    except PowerCut:
        # what the log held as durable when the power went: at least what capture confirmed
        run.reported = log.durable
        return disk, run, True
    return disk, run, False


def verify(disk: SimDisk, run: Run, where: str) -> None:
    log = LocalLog(DIR, segment_bytes=SEGMENT, memory_events=4, fs=disk)
    pos = log.open()
    # a transaction boundary that was really written, with its LSNs (capture skips by them)
    assert pos in run.commits, where
    # nothing that was reported durable (and so confirmed to PostgreSQL) is lost
    assert pos.seq >= run.reported.seq and pos.end_lsn >= run.reported.end_lsn, where
    assert log.next_seq == pos.seq + 1, where
    # everything the persisted cursor still needs is there, in order, intact
    first = run.persisted_cursor + 1
    got = log.read_disk(first, 10_000)
    assert got == [run.records[s] for s in range(first, pos.seq + 1)], where
    assert log.size_bytes == disk.total_size(), where
    # and the log goes on from there
    scenario = Scenario(log, disk, Run(dict(run.records), list(run.commits), pos.seq + 1, run.lsn + 0x1000))
    scenario.batch([2])
    end = scenario.log.sync_to_disk()
    log.close()
    again = LocalLog(DIR, segment_bytes=SEGMENT, fs=disk)
    assert again.open() == end, where
    records = scenario.run.records
    assert again.read_disk(first, 10_000) == [records[s] for s in range(first, end.seq + 1)], where
    again.close()


def steps() -> int:
    disk, _run, cut = play(None)
    assert not cut
    return disk.steps


def test_scenario_covers_rolls_rewrites_and_deletions() -> None:
    disk, run, _ = play(None)
    trace = disk.trace
    # segment files written: created, or replaced by a roll that kept the first seq
    written = [t.split()[-1].removesuffix(".tmp") for t in trace if t.startswith(("create", "truncate 0"))]
    assert len(written) >= 5  # the first segment and its rolls
    assert len(set(written)) < len(written)  # a roll with no event since the last one
    assert sum(t.startswith("unlink") for t in trace) >= 2  # old segments deleted
    assert any(t.startswith("truncate") and not t.startswith("truncate 0 ") for t in trace)  # a rewind
    assert len(disk.names) >= 2
    verify(disk.image("durable", "durable"), run, "clean close")


def test_power_cut_at_every_step() -> None:
    total = steps()
    failures: list[str] = []
    for cut_at in range(total + 1):
        disk, run, cut = play(cut_at)
        assert cut == (cut_at < total)
        for name, image in disk.images():
            where = f"cut before step {cut_at} (after {disk.trace[-1:]}), {name}"
            try:
                verify(image, run, where)
            except Exception as exc:  # collect them all: one cut point rarely fails alone
                failures.append(f"{where}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


def test_power_cut_during_recovery() -> None:
    """Recovery itself (cutting a torn tail, dropping a segment) may be cut short."""
    total = steps()
    checked = 0
    for cut_at in range(total):
        disk, run, _ = play(cut_at)
        for _name, image in disk.images():
            # count recovery's own steps, then cut it at each of them
            probe = image.image("all", "all")
            LocalLog(DIR, segment_bytes=SEGMENT, fs=probe).open()
            for k in range(probe.steps):
                again = image.image("all", "all")
                again.cut_at = k
                with pytest.raises(PowerCut):
                    LocalLog(DIR, segment_bytes=SEGMENT, fs=again).open()
                for _n, after in again.images():
                    verify(after, run, f"cut at {cut_at}, recovery cut at {k}")
                    checked += 1
    assert checked > 0
