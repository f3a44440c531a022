"""What the service reports: health, the stream rows of ``SHOW CDC STREAMS``, a stream's
status (``SHOW CDC STREAM STATUS``, ``GET /api/streams/{name}/status``) and the overview of
the status page (``GET /api/status``).

Functions of the running :class:`~heliosdb_cdc._service.WebhookServer` (its methods of
the same names call them); they read, never change.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .postgres import format_lsn

if TYPE_CHECKING:
    from ._service import WebhookServer


def health(self: WebhookServer) -> dict[str, Any]:
    """``status``: ok, starting (the source is retried: ``source_error`` says why) or
    failed (an error retrying cannot fix: the service is about to exit)."""
    cap = self.capture.status if self.capture else None
    status = "failed" if self.fatal_error else "ok" if self.ready else "starting"
    body: dict[str, Any] = {
        "status": status,
        "role": self.role or "all",
        "replication_connected": bool(cap and cap.connected),
        "codec": self.codec,  # native (compiled) or pure-python
        "streams": len(self.runners),
        "source_error": self.source_error or (cap.last_error if cap else None),
    }
    if self.role == "capture":
        body["leader"] = bool(self.leader)  # a standby is healthy too: it waits
    elif self.role == "worker" and self.ha is not None:
        body["partitions"] = self.ha.describe()["partitions"]  # of the journal topic
    return body


def overview(self: WebhookServer) -> dict[str, Any]:
    assert self.store is not None
    # three catalog reads for all streams, not three per stream
    dead = self.store.dead_letter_counts()
    snapshots = self.store.all_snapshots()
    streams = [
        stream_status(self, row["name"], row, dead.get(row["name"], 0), snapshots)
        for row in self.store.list_streams()
    ]
    cap = self.capture.describe() if self.capture else {}
    return {
        "capture": cap,
        "slot": self.slot_info,
        "local_log_bytes": self.log.size_bytes if self.log else 0,
        "streams": streams,
    }


def stream_state(self: WebhookServer, name: str, row: dict[str, Any]) -> str:
    runner = self.runners.get(name)
    if row["state"] == "paused":
        return "paused"
    if runner is None or row.get("failed"):
        return "failed"
    if self.catalog.table_problem(row["config"]):
        return "warning"  # a captured table is gone under its name: see last_error
    return "running"


def list_stream_rows(self: WebhookServer) -> list[dict[str, Any]]:
    assert self.store is not None
    rows = []
    for row in self.store.list_streams():
        cfg = row["config"]
        runner = self.runners.get(row["name"])
        rows.append(
            {
                "name": row["name"],
                "tables": ",".join(cfg["tables"]),
                "destination": cfg["destination"]["type"],
                "address": cfg["destination"]["address"]
                + (f" topic={cfg['destination']['topic']}" if cfg["destination"].get("topic") else ""),
                "format": cfg["format"].upper(),
                "state": stream_state(self, row["name"], row),
                "delivered": runner.stats.delivered if runner else 0,
                "lag_events": (self.log.last_seq - runner.cursor) if runner and self.log else 0,
            }
        )
    return rows


def stream_status(
    self: WebhookServer,
    name: str,
    row: dict[str, Any] | None = None,
    dead_letters: int | None = None,
    snapshots: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``row`` (its catalog row), ``dead_letters`` (its count) and ``snapshots`` (the
    stored snapshots of all streams) when the caller has them already: the overview of
    every stream reads each once for all streams, not once per stream."""
    assert self.store is not None
    if row is None:
        row = self.store.get_stream(name)
    runner = self.runners.get(name)
    cfg = row["config"]
    st = runner.stats if runner else None
    cap = self.capture.status if self.capture else None
    journal = self.log if self.log is not None else runner.log if runner else None  # (--role worker)
    lag_events = (journal.last_seq - runner.cursor) if runner and journal else 0
    lag_seconds = 0.0
    if runner and journal and lag_events > 0 and runner.cursor < journal.last_seq:
        first = journal.read_memory(runner.cursor + 1, 1)
        if first:
            lag_seconds = max(0.0, time.time() - first[0].ts_us / 1e6)
    endpoint = runner.endpoint if runner else cfg["destination"]["address"]
    breaker = self.circuit_breaker.state_of(endpoint)
    return {
        "name": name,
        "state": stream_state(self, name, row),
        "tables": ",".join(cfg["tables"]),
        "destination": f"{cfg['destination']['type']} {cfg['destination']['address']}",
        "format": cfg["format"].upper(),
        "source_position": format_lsn(cap.confirmed_lsn) if cap else None,
        "replication_connected": cap.connected if cap else False,
        "stream_position": runner.cursor if runner else None,
        "lag_events": lag_events,
        "lag_bytes": self.slot_info.get("lag_bytes", 0),
        "lag_seconds": round(lag_seconds, 3),
        "events_processed": st.processed if st else 0,
        "events_filtered": st.filtered if st else 0,
        "events_delivered": st.delivered if st else 0,
        "events_failed": st.failed if st else 0,
        "events_retried": st.retried if st else 0,
        "dead_letters": self.store.count_dead_letters(name) if dead_letters is None else dead_letters,
        "queue_memory": runner.queue_memory if runner else 0,
        "queue_overflow": runner.queue_overflow if runner else 0,
        "throughput_per_sec": round(st.rate(), 1) if st else 0.0,
        "p99_latency_ms": st.p99_ms() if st else None,
        "circuit_breaker": f"{endpoint}={breaker.name}",
        "last_error": (
            self.catalog.table_problem(cfg) or (st.last_error if st else None) or row["last_error"]
        ),
        "last_error_at": _iso(st.last_error_at if st else row["last_error_at"]),
        "capture_paused": cap.paused_reason if cap else None,
        "snapshot": _snapshot_summary(self.snapshot_status(name, snapshots)),
        "warnings": "; ".join(self.catalog.table_warnings.get(name, [])) or None,
        "unpublished_columns": {
            t: c
            for t, c in self.catalog.unpublished.items()
            if "*" in cfg["tables"] or t in {x.removeprefix("public.") for x in cfg["tables"]}
        },
    }


def _snapshot_summary(snap: dict[str, Any] | None) -> str | None:
    if not snap:
        return None
    text = f"{snap['kind']} {snap['state']}: {snap.get('rows_sent', 0)} rows"
    if snap.get("current_table") and snap["state"] == "running":
        text += f", reading {snap['current_table']}"
    if snap.get("where"):
        text += f" where {snap['where']}"
    if snap.get("error"):
        text += f" ({snap['error']})"
    return text


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
