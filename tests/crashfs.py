"""A simulated disk for power-cut tests of the local log.

It stands in for :class:`heliosdb_cdc.delivery._locallog.FileSystem` (one
directory, the log's) and records every step that changes the disk: a write
reaching the OS (``flush``), a truncation, a file created, renamed or unlinked,
an ``fsync`` of a file or of the directory. With ``cut_at=k`` the k-th step
raises :class:`PowerCut` instead of happening, as a fault proxy drops a
connection at a chosen message. :meth:`SimDisk.images` then gives the disks a
power cut may leave behind:

* file data is durable only as of the file's last ``fsync``; what came after may
  be there in full, not at all, or with the last write torn;
* a directory entry (create, rename, unlink) is durable only after an ``fsync``
  of the directory; before that it may or may not have reached the disk.

Python's buffered writer is modelled too: ``write`` only buffers, ``flush`` (or
``seek``/``truncate``/``close``) hands the bytes to the OS, and ``fsync`` does not
flush, as ``os.fsync(f.fileno())`` does not.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, cast

from heliosdb_cdc.delivery._locallog import FileSystem


class PowerCut(Exception):
    """Raised at the step where the power goes."""


@dataclass
class Inode:
    data: bytearray = field(default_factory=bytearray)  # what the OS holds (page cache)
    durable: bytes = b""  # as of the last fsync
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)  # since then


def _apply(data: bytearray, op: tuple[str, int, bytes]) -> None:
    kind, offset, payload = op
    if kind == "truncate":
        del data[offset:]
        return
    if len(data) < offset:
        data.extend(b"\0" * (offset - len(data)))
    data[offset : offset + len(payload)] = payload


class SimFile:
    def __init__(self, disk: SimDisk, ino: int, writable: bool) -> None:
        self.disk = disk
        self.ino = ino
        self.writable = writable
        self.pos = 0
        self.buf = bytearray()
        self.closed = False

    def write(self, data: bytes) -> int:
        assert self.writable and not self.closed
        self.buf += data
        return len(data)

    def flush(self) -> None:
        if self.buf:
            data = bytes(self.buf)
            self.disk.op(self.ino, ("write", self.pos, data), f"write {len(data)}B")
            self.buf.clear()
            self.pos += len(data)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self.flush()
        assert whence == os.SEEK_SET
        self.pos = pos
        return pos

    def truncate(self, size: int | None = None) -> int:
        self.flush()
        size = self.pos if size is None else size
        self.disk.op(self.ino, ("truncate", size, b""), f"truncate {size} #{self.ino}")
        return size

    def read(self, n: int = -1) -> bytes:
        self.flush()
        data = self.disk.inodes[self.ino].data
        end = len(data) if n < 0 else self.pos + n
        out = bytes(data[self.pos : end])
        self.pos += len(out)
        return out

    def close(self) -> None:
        if not self.closed:
            if self.writable:
                self.flush()
            self.closed = True

    def __enter__(self) -> SimFile:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class SimDisk(FileSystem):
    def __init__(self, cut_at: int | None = None) -> None:
        self.cut_at = cut_at
        self.steps = 0
        self.trace: list[str] = []
        self.inodes: dict[int, Inode] = {}
        self.names: dict[str, int] = {}  # the directory as the OS shows it
        self.durable_names: dict[str, int] = {}  # as of its last fsync
        self._next_ino = 1

    # -- steps --------------------------------------------------------------------
    def step(self, what: str) -> None:
        """One change to the disk; the power goes before step ``cut_at``."""
        if self.cut_at is not None and self.steps >= self.cut_at:
            raise PowerCut(f"power cut before step {self.steps}: {what}")
        self.steps += 1
        self.trace.append(what)

    def op(self, ino: int, op: tuple[str, int, bytes], what: str) -> None:
        self.step(what)
        node = self.inodes[ino]
        _apply(node.data, op)
        node.pending.append(op)

    # -- FileSystem ---------------------------------------------------------------
    def open(self, path: Path, mode: str) -> IO[bytes]:
        name = path.name
        if mode == "wb":
            if name in self.names:
                ino = self.names[name]
                self.op(ino, ("truncate", 0, b""), f"truncate 0 {name}")
            else:
                self.step(f"create {name}")
                ino = self._next_ino
                self._next_ino += 1
                self.inodes[ino] = Inode()
                self.names[name] = ino
            return cast(IO[bytes], SimFile(self, ino, writable=True))
        if name not in self.names:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        assert mode in ("rb", "r+b"), mode
        return cast(IO[bytes], SimFile(self, self.names[name], writable=mode == "r+b"))

    def fsync(self, f: IO[bytes]) -> None:
        sim = cast(SimFile, f)
        self.step(f"fsync #{sim.ino}")
        node = self.inodes[sim.ino]
        node.durable = bytes(node.data)
        node.pending.clear()

    def fsync_dir(self, path: Path) -> None:
        self.step("fsync dir")
        self.durable_names = dict(self.names)

    def rename(self, src: Path, dst: Path) -> None:
        self.step(f"rename {src.name} {dst.name}")
        self.names[dst.name] = self.names.pop(src.name)

    def unlink(self, path: Path) -> None:
        if path.name not in self.names:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        self.step(f"unlink {path.name}")
        del self.names[path.name]

    def size(self, path: Path) -> int:
        if path.name not in self.names:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return len(self.inodes[self.names[path.name]].data)

    def listdir(self, path: Path) -> list[str]:
        return sorted(self.names)

    def mkdir(self, path: Path) -> bool:
        return False  # the simulated directory always exists

    # -- after a power cut --------------------------------------------------------
    def total_size(self) -> int:
        return sum(len(self.inodes[i].data) for n, i in self.names.items() if n.endswith(".log"))

    def image(self, names: str, data: str) -> SimDisk:
        """The disk after the power comes back.

        ``names``: "durable" (directory as of its last fsync) or "all" (every entry
        change reached the disk). ``data``: "durable" (as of each file's last fsync),
        "all" (every write reached the disk) or "torn" (the last write half done).
        """
        out = SimDisk()
        entries = self.durable_names if names == "durable" else self.names
        for name, ino in entries.items():
            node = self.inodes[ino]
            content = bytearray(node.durable)
            ops = node.pending if data != "durable" else []
            for i, op in enumerate(ops):
                if data == "torn" and i == len(ops) - 1 and op[0] == "write" and len(op[2]) > 1:
                    op = ("write", op[1], op[2][: len(op[2]) // 2])
                _apply(content, op)
            out.inodes[ino] = Inode(content, bytes(content))
            out.names[name] = out.durable_names[name] = ino
        out._next_ino = self._next_ino
        return out

    def images(self) -> Iterator[tuple[str, SimDisk]]:
        for names in ("durable", "all"):
            for data in ("durable", "all", "torn"):
                yield f"names={names} data={data}", self.image(names, data)
