"""Receiver-side helpers: verify signatures, reject stale timestamps, handle
each event once.

``verify_signature`` is the guide's function. ``IdempotentHandler`` is the
guide's best practice 4 backed by SQLite: wrap your processing function and
duplicates (same ``event_id``) are answered without processing them again.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def verify_signature(payload: bytes, signature: str, secret: str) -> bool:
    """True when ``signature`` (``sha256=<hex>``, or several comma-separated during
    secret rotation) matches the HMAC-SHA256 of the exact ``payload`` bytes."""
    expected = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(part.strip(), expected) for part in signature.split(","))


def verify_timestamp(header: str, tolerance_secs: float = 300.0, now: float | None = None) -> bool:
    """True when the ``X-HeliosDB-Timestamp`` header is within ``tolerance_secs`` of now."""
    try:
        ts = datetime.fromisoformat(header.replace("Z", "+00:00"))
    except ValueError:
        return False
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return abs(current - ts.timestamp()) <= tolerance_secs


class IdempotentHandler:
    """Process each event once, whatever the number of deliveries.

    ``handler = IdempotentHandler("processed.db", process_event)``;
    ``handler(event)`` returns ``{"status": "success"|"duplicate", "event_id": ...}``.
    The mark is written after processing succeeds, so a crash in between
    processes the event again: make ``process_event`` itself safe to repeat or
    do its work in the same SQLite transaction (``handler.connection``).
    """

    def __init__(self, path: str, process: Callable[[dict[str, Any]], Any]) -> None:
        self.connection = sqlite3.connect(path, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS processed_events (event_id TEXT PRIMARY KEY, at REAL)"
        )
        self.connection.commit()
        self.process = process
        self._lock = threading.Lock()

    def already_processed(self, event_id: str) -> bool:
        with self._lock:
            row = self.connection.execute(
                "SELECT 1 FROM processed_events WHERE event_id = ?", (event_id,)
            ).fetchone()
        return row is not None

    def mark_processed(self, event_id: str) -> None:
        with self._lock:
            self.connection.execute(
                "INSERT OR IGNORE INTO processed_events VALUES (?, ?)", (event_id, time.time())
            )
            self.connection.commit()

    def __call__(self, event: dict[str, Any]) -> dict[str, str]:
        event_id = event["event_id"]
        if self.already_processed(event_id):
            return {"status": "duplicate", "event_id": event_id}
        self.process(event)
        self.mark_processed(event_id)
        return {"status": "success", "event_id": event_id}
