"""Snapshot chunks: rows read between a low and a high watermark.

A snapshot (``postgres/``) reads a chunk of a table between two watermarks it
writes into the WAL, and hands the rows over; the stream runner (``delivery/``)
meets both watermarks in the local log and sends the rows that did not change in
between. The chunk is the hand-off object, so it lives here, below both sides.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Chunk:
    """Rows read between a low and a high watermark: (key bytes, event dict without position)."""

    watermark: str
    table: str
    rows: list[tuple[bytes, dict[str, Any]]]
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
