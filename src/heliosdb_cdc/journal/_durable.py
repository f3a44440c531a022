"""Small files beside the log written whole (capture's ``schemas.json``).

Through the log's :class:`FileSystem` seam, so the power-cut tests cover them too.
"""

from __future__ import annotations

from pathlib import Path

from ._locallog import FileSystem

__all__ = ["read_file", "replace_file"]


def replace_file(fs: FileSystem, path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: after a power cut at any moment the file holds the
    old content or the new one, never a torn or empty one.

    The data is fsynced before the rename (else the rename may reach the disk before the
    data: an empty file), the directory after it (else the rename itself may be lost)."""
    tmp = path.with_suffix(".tmp")
    with fs.open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        fs.fsync(f)
    fs.rename(tmp, path)
    fs.fsync_dir(path.parent)


def read_file(fs: FileSystem, path: Path) -> bytes | None:
    """The file's content; None when there is none."""
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
