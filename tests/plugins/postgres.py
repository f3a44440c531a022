"""pytest plugin: a private PostgreSQL cluster (wal_level=logical) for the session,
and a fresh database per test. In CI a server that cannot start is a failure."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from heliosdb_cdc._embedded import EmbeddedPostgres

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    base = Path(tmp_path_factory.mktemp("pg"))
    os.chmod(base, 0o755)
    pg = EmbeddedPostgres(base / "data")
    pg.start()
    yield pg
    pg.stop("immediate")


class PgDatabase:
    def __init__(self, server: EmbeddedPostgres, name: str) -> None:
        self.server = server
        self.name = name
        self.dsn = server.dsn_for(name)

    def connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        return conn

    def execute(self, sql: str, params: object = None) -> list[tuple[object, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture
def pg_db(pg_server: EmbeddedPostgres) -> Iterator[PgDatabase]:
    name = f"t{os.getpid()}_{next(_counter)}"
    admin = psycopg2.connect(pg_server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    db = PgDatabase(pg_server, name)
    yield db
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,))
        for (slot,) in cur.fetchall():
            try:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg2.Error:
                pass
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
