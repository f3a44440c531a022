"""Capture leadership: a lease row per replication slot in the state database.

``<schema>.capture_leases (slot, generation, holder, expires_at)``. An instance becomes
leader by taking a lease that is free or expired, which bumps ``generation``; the leader
renews it every second (``expires_at = now() + ttl``, only while the generation is still
its own). Every publish and every confirm of the leader is checked against the
generation first (:meth:`Lease.check`): a leader that was paused (SIGSTOP, a long GC, a
network partition) past its lease finds a newer generation and steps down without
publishing or confirming. Times are the state database's clock (``now()``) alone.

A session advisory lock would not do alone: a paused process keeps its session, so its
lock is never released; the lease expires instead.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import psycopg2.extensions

from .._errors import LeadershipLost, StateError
from ._postgres import IDENTIFIER, redact_url


class Lease:
    """The lease of one slot, held (or waited for) by ``holder``."""

    def __init__(self, url: str, schema: str, slot: str, holder: str, ttl_secs: float) -> None:
        if not IDENTIFIER.fullmatch(schema):
            raise StateError(f"state schema {schema!r} must be a lowercase identifier", schema=schema)
        self._dsn = url
        self.url = redact_url(url)
        self._table = f'"{schema}".capture_leases'
        self.slot = slot
        self.holder = holder
        self.ttl = ttl_secs
        self._lock = threading.Lock()
        self._conn: psycopg2.extensions.connection | None = None
        self._run("cannot create the capture lease table", self._create)

    def _create(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"heliosdb_cdc lease {self._table}",))
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} (slot text PRIMARY KEY, "
            "generation bigint NOT NULL, holder text NOT NULL, expires_at timestamptz NOT NULL)"
        )

    def _run(self, what: str, fn: Any) -> Any:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg2.connect(
                        self._dsn,
                        connect_timeout=5,
                        application_name="heliosdb-cdc lease",
                        options="-c statement_timeout=5000",
                        keepalives=1,
                        keepalives_idle=5,
                        keepalives_interval=2,
                        keepalives_count=2,
                    )
                with self._conn, self._conn.cursor() as cur:  # one transaction
                    return fn(cur)
            except psycopg2.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                detail = " ".join(str(exc).split())
                raise StateError(f"{what}: {detail}", state=self.url, slot=self.slot) from exc

    def acquire(self) -> int | None:
        """Take the lease when it is free or expired; the new generation, or None."""

        def run(cur: Any) -> int | None:
            cur.execute(
                f"INSERT INTO {self._table} AS l (slot, generation, holder, expires_at) "
                "VALUES (%s, 1, %s, now() + make_interval(secs => %s)) ON CONFLICT (slot) DO UPDATE "
                "SET generation = l.generation + 1, holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE l.expires_at < now() RETURNING generation",
                (self.slot, self.holder, self.ttl),
            )
            row = cur.fetchone()
            return None if row is None else int(row[0])

        result: int | None = self._run("cannot take the capture lease", run)
        return result

    def renew(self, generation: int) -> bool:
        """Extend the lease; False when another instance has taken it."""

        def run(cur: Any) -> bool:
            cur.execute(
                f"UPDATE {self._table} SET expires_at = now() + make_interval(secs => %s) "
                "WHERE slot = %s AND generation = %s AND holder = %s",
                (self.ttl, self.slot, generation, self.holder),
            )
            return bool(cur.rowcount == 1)

        ok: bool = self._run("cannot renew the capture lease", run)
        return ok

    def check(self, generation: int) -> None:
        """Raise :class:`LeadershipLost` unless ``generation`` is still the current one."""

        def run(cur: Any) -> tuple[int, str] | None:
            cur.execute(f"SELECT generation, holder FROM {self._table} WHERE slot = %s", (self.slot,))
            row = cur.fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

        row = self._run("cannot check the capture lease", run)
        if row is None or row != (generation, self.holder):
            now = f"generation {row[0]}, held by {row[1]}" if row else "no lease"
            raise LeadershipLost(
                f"capture lease of slot {self.slot} lost: this instance led generation {generation}, "
                f"the lease is now {now}",
                slot=self.slot,
            )

    def release(self, generation: int) -> None:
        """Let a standby take over at once (a clean stop)."""

        def run(cur: Any) -> None:
            cur.execute(
                f"UPDATE {self._table} SET expires_at = now() - interval '1 second' "
                "WHERE slot = %s AND generation = %s AND holder = %s",
                (self.slot, generation, self.holder),
            )

        self._run("cannot release the capture lease", run)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
