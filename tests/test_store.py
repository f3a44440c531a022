"""The state stores' contract (SQLite and PostgreSQL pass the same suite): migrations,
catalog, checkpoints and delivery records, dead letters, snapshots, meta. Then what is
particular to each: SQLite's file, PostgreSQL's schema, connection and URL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heliosdb_cdc import StateError, StreamExists, StreamNotFound
from heliosdb_cdc.store import PostgresStore, SQLiteStore, Store, _postgres, sink_mark_key
from heliosdb_cdc.store._sqlite import _MIGRATIONS, SCHEMA_VERSION
from tests.plugins.postgres import PgDatabase

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same state again on every call (a restart); closes them all at the end."""
    opened: list[Store] = []
    if request.param == "sqlite":

        def make() -> Store:
            return SQLiteStore(tmp_path / "state")

    else:
        db: PgDatabase = request.getfixturevalue("pg_db")

        def make() -> Store:
            return PostgresStore(db.dsn, "cdc_state")

    def opener() -> Store:
        s = make()
        opened.append(s)
        return s

    yield opener
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Opener) -> Store:
    return open_store()


def test_fresh_store_is_migrated_and_reopens(open_store: Opener) -> None:
    s = open_store()
    assert s.schema_version >= 1
    iid = s.instance_id
    assert len(iid) == 12 and iid == s.instance_id
    s.create_stream("s", {"a": 1}, "sql", "running")
    s.checkpoint("s", 7)
    s.close()
    # reopening is idempotent and keeps the instance id and the data
    s = open_store()
    assert s.instance_id == iid
    assert s.get_cursor("s") == 7 and s.get_stream("s")["config"] == {"a": 1}


def test_meta(store: Store) -> None:
    assert store.get_meta("slot:x") is None
    store.set_meta("slot:x", "0/16B3748")
    store.set_meta("slot:x", "0/16B3750")
    assert store.get_meta("slot:x") == "0/16B3750"
    store.set_meta("slot:x", None)
    assert store.get_meta("slot:x") is None
    store.set_meta("slot:x", None)  # deleting what is absent is fine


def test_checkpoint_meta_goes_with_the_cursor_and_the_stream(store: Store) -> None:
    store.create_stream("s", {}, "config", "running")
    store.checkpoint("s", 5, (), {sink_mark_key("s"): "mark-1"})
    store.checkpoint("s", 6, (), {sink_mark_key("s"): "mark-2"})
    assert (store.get_cursor("s"), store.get_meta(sink_mark_key("s"))) == (6, "mark-2")
    store.drop_stream("s")
    assert store.get_meta(sink_mark_key("s")) is None


def test_big_checkpoint_batch(store: Store) -> None:
    now = time.time()
    store.checkpoint("s", 5000, [("ep", f"evt_{i}", i, now) for i in range(1, 5001)])
    assert len(store.delivered_after("ep", 0)) == 5000
    assert store.delivered_after("ep", 4998) == {"evt_4999", "evt_5000"}
    store.sync_to_disk()


def test_catalog(store: Store) -> None:
    store.create_stream("orders", {"tables": ["orders"], "n": 1}, "sql", "running")
    with pytest.raises(StreamExists, match="'orders' already exists"):
        store.create_stream("orders", {}, "config", "running")
    store.create_stream("b", {}, "config", "paused")
    got = store.get_stream("orders")
    assert got["config"] == {"tables": ["orders"], "n": 1}
    assert (got["state"], got["origin"], got["last_error"]) == ("running", "sql", None)
    assert [s["name"] for s in store.list_streams()] == ["orders", "b"]
    store.set_state("orders", "paused")
    assert store.get_stream("orders")["state"] == "paused"
    store.update_stream_config("orders", {"n": 2})
    assert store.get_stream("orders")["config"] == {"n": 2}
    store.set_error("orders", "boom")
    got = store.get_stream("orders")
    assert got["last_error"] == "boom" and got["last_error_at"] is not None
    store.set_error("orders", None)
    assert store.get_stream("orders")["last_error_at"] is None
    with pytest.raises(StreamNotFound):
        store.set_state("missing", "paused")
    with pytest.raises(StreamNotFound, match="'missing' does not exist"):
        store.get_stream("missing")


def test_drop_stream(store: Store) -> None:
    store.create_stream("s", {}, "sql", "running")
    store.checkpoint("s", 10)
    store.save_snapshot("s", {"kind": "initial", "tables": ["t"], "state": "running"})
    store.drop_stream("s")
    with pytest.raises(StreamNotFound):
        store.get_stream("s")
    assert store.get_cursor("s") is None
    assert store.get_snapshot("s") is None
    with pytest.raises(StreamNotFound):
        store.drop_stream("s")
    # the connection is usable afterwards (no transaction left open)
    store.create_stream("s", {}, "sql", "running")
    assert store.get_stream("s")["name"] == "s"


def test_checkpoint_and_delivery_records(store: Store) -> None:
    now = time.time()
    store.checkpoint("s", 3, [("ep", "evt_1", 1, now), ("ep", "evt_2", 2, now), ("other", "evt_3", 3, now)])
    assert store.get_cursor("s") == 3
    assert store.delivered_after("ep", 0) == {"evt_1", "evt_2"}
    assert store.delivered_after("ep", 1) == {"evt_2"}
    assert store.delivered_after("other", 0) == {"evt_3"}
    # duplicates are ignored, the cursor moves
    store.checkpoint("s", 4, [("ep", "evt_2", 2, now)])
    assert store.get_cursor("s") == 4
    assert store.all_cursors() == {"s": 4}
    assert store.was_delivered("evt_1", "ep")
    assert not store.was_delivered("evt_1", "other")
    assert not store.was_delivered("evt_9", "ep")


def test_partition_cursors(open_store: Opener) -> None:
    """Delivery workers checkpoint one cursor per (stream, partition); the stream's own
    cursor stays; a fold makes one cursor again; drop forgets them; all survive a reopen."""
    store = open_store()
    store.create_stream("s", {}, "sql", "running")
    store.checkpoint("s", 5)
    now = time.time()
    store.checkpoint("s", 9, [("ep", "evt_9", 9, now)], partitions=[0, 2])
    store.checkpoint("s", 7, partitions=[1])
    assert store.get_cursor("s") == 5  # untouched by partition checkpoints
    assert store.partition_cursors("s") == {0: 9, 1: 7, 2: 9}
    assert store.delivered_after("ep", 0) == {"evt_9"}
    store.checkpoint("s", 11, partitions=[2])
    store.close()
    store = open_store()
    assert store.partition_cursors("s") == {0: 9, 1: 7, 2: 11}
    assert store.partition_cursors("other") == {}
    store.fold_partition_cursors("s", 7)
    assert store.get_cursor("s") == 7 and store.partition_cursors("s") == {}
    store.checkpoint("s", 12, partitions=[3])
    store.drop_stream("s")
    assert store.partition_cursors("s") == {}
    # a worker's last checkpoint landing after the drop does not carry over to a new stream
    store.checkpoint("s", 13, partitions=[4])
    store.create_stream("s", {}, "sql", "running")
    assert store.partition_cursors("s") == {}


def test_checkpoint_is_one_transaction(store: Store) -> None:
    store.checkpoint("s", 1, [("ep", "evt_1", 1, time.time())])
    # the second row is malformed (wrong arity) after the first was inserted:
    # nothing of this checkpoint may stay
    with pytest.raises(StateError, match="cannot write a checkpoint"):
        store.checkpoint("s", 9, [("ep", "evt_2", 2, time.time()), ("ep", "evt_3", 3)])  # type: ignore[list-item]
    assert store.get_cursor("s") == 1
    assert store.delivered_after("ep", 0) == {"evt_1"}
    store.checkpoint("s", 2, [("ep", "evt_2", 2, time.time())])  # usable afterwards
    assert store.get_cursor("s") == 2


def test_was_delivered_window_and_prune(store: Store) -> None:
    now = time.time()
    store.checkpoint("s", 2, [("ep", "old", 1, now - 1000), ("ep", "new", 2, now)])
    assert store.was_delivered("old", "ep")
    assert not store.was_delivered("old", "ep", window_secs=100)
    assert store.was_delivered("new", "ep", window_secs=100)
    assert store.prune_deliveries(500) == 1
    assert not store.was_delivered("old", "ep")
    assert store.was_delivered("new", "ep")
    assert store.prune_deliveries(500) == 0


def _dl(stream: str, event_id: str, seq: int) -> tuple[object, ...]:
    return (
        stream,
        "https://x/hook",
        event_id,
        seq,
        "orders",
        "INSERT",
        b"k",
        b'{"a":1}',
        "HTTP 500",
        3,
        1.0,
        2.0,
    )


def test_dead_letter_keeps_the_default_event_of_a_formatted_body(store: Store) -> None:
    # a formatted body (Debezium, CloudEvents) is stored with the default event it came from
    store.add_dead_letters([(*_dl("a", "e1", 1)[:7], b'{"op":"c"}', *_dl("a", "e1", 1)[8:], b'{"a":1}')])
    full = store.get_dead_letter(store.list_dead_letters("a")[0]["id"])
    assert full is not None
    assert (full["body"], full["event"]) == (b'{"op":"c"}', b'{"a":1}')


def test_dead_letters(store: Store) -> None:
    store.add_dead_letters([_dl("a", "e1", 1), _dl("a", "e2", 2), _dl("b", "e3", 3)])
    assert store.count_dead_letters() == 3
    assert store.count_dead_letters("a") == 2
    rows = store.list_dead_letters("a")
    assert [r["event_id"] for r in rows] == ["e1", "e2"]
    assert rows[0]["table"] == "orders" and rows[0]["attempts"] == 3 and rows[0]["error"] == "HTTP 500"
    assert [r["event_id"] for r in store.list_dead_letters(limit=1)] == ["e1"]
    full = store.get_dead_letter(rows[0]["id"])
    assert full is not None
    assert (full["key"], full["body"], full["stream"]) == (b"k", b'{"a":1}', "a")
    assert full["event"] is None
    assert store.get_dead_letter(10_000) is None
    assert store.delete_dead_letters(ids=[rows[0]["id"], 10_000]) == 1
    assert store.count_dead_letters() == 2
    assert store.delete_dead_letters(stream="b") == 1
    assert store.delete_dead_letters() == 1
    assert store.count_dead_letters() == 0


def test_dead_letter_bad_row_is_state_error(store: Store) -> None:
    with pytest.raises(StateError, match="dead letters"):
        store.add_dead_letters([("a", "ep", None, 1, "t", "INSERT", b"", b"", None, 1, 0.0, 0.0)])


def test_snapshots(store: Store) -> None:
    store.save_snapshot(
        "s", {"kind": "initial", "tables": ["a", "b"], "state": "running", "progress": {"a": 5}}
    )
    got = store.get_snapshot("s")
    assert got is not None
    assert (got["kind"], got["tables"], got["state"], got["progress"], got["rows_sent"]) == (
        "initial",
        ["a", "b"],
        "running",
        {"a": 5},
        0,
    )
    store.save_snapshot("s", {"kind": "initial", "tables": ["a"], "state": "done", "rows_sent": 9})
    got = store.get_snapshot("s")
    assert got is not None and (got["state"], got["rows_sent"]) == ("done", 9)
    store.delete_snapshot("s")
    assert store.get_snapshot("s") is None


def test_lookups_for_one_stream_and_for_all(store: Store) -> None:
    for name in ("b", "a"):
        store.create_stream(name, {"tables": ["t"]}, "api", "running")
    assert store.has_stream("a") and not store.has_stream("c")
    assert store.stream_names() == [r["name"] for r in store.list_streams()]
    assert sorted(store.stream_names()) == ["a", "b"]
    row = ("a", "http://x/", "evt_1", 1, "t", "INSERT", b"k", b"{}", "HTTP 500", 3, 0.0, 0.0)
    store.add_dead_letters([row, row, ("b", *row[1:])])
    assert store.dead_letter_counts() == {"a": 2, "b": 1}
    assert store.all_snapshots() == {}
    store.save_snapshot("b", {"kind": "backfill", "tables": ["public.t"], "state": "running"})
    snaps = store.all_snapshots()
    assert list(snaps) == ["b"] and snaps["b"] == store.get_snapshot("b")


# -- SQLite: the file --------------------------------------------------------


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_fresh_store_is_migrated(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "state")
    assert s.schema_version == SCHEMA_VERSION
    assert {"meta", "streams", "cursors", "deliveries", "dead_letters", "snapshots"} <= tables(s.path)
    iid = s.instance_id
    assert len(iid) == 12 and iid == s.instance_id
    s.close()
    # reopening is idempotent and keeps the instance id
    s = SQLiteStore(tmp_path / "state")
    assert s.schema_version == SCHEMA_VERSION
    assert s.instance_id == iid
    s.close()


def test_old_schema_is_upgraded(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for stmt in _MIGRATIONS[1]:
        db.execute(stmt)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO cursors VALUES ('s', 5, 0)")
    db.commit()
    db.close()
    s = SQLiteStore(tmp_path / "state")
    assert s.schema_version == SCHEMA_VERSION
    assert {"snapshots", "partition_cursors"} <= set(tables(s.path))
    assert s.get_cursor("s") == 5  # data kept
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "state")
    s._db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s.close()
    with pytest.raises(StateError, match=r"schema version 99, newer .*upgrade the package") as exc:
        SQLiteStore(tmp_path / "state")
    assert "state.db" in str(exc.value)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("x")
    with pytest.raises(StateError, match="cannot open the state database"):
        SQLiteStore(f)


def test_corrupt_database_file(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(StateError, match="state database"):
        SQLiteStore(tmp_path / "state")


def test_read_only_database_is_a_state_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read-only state directory looks like to SQLite, even when running as root."""
    from heliosdb_cdc.store import _sqlite

    d = tmp_path / "state"
    d.mkdir()
    (d / "state.db").write_bytes(b"")
    real = sqlite3.connect

    def read_only(path: object, **kw: object) -> sqlite3.Connection:
        return real(f"file:{path}?mode=ro", uri=True, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_sqlite.sqlite3, "connect", read_only)
    with pytest.raises(StateError, match=r"cannot open the state database: .*readonly") as exc:
        SQLiteStore(d)
    assert exc.value.context["path"] == str(d / "state.db")


def test_writes_to_read_only_store_are_state_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from heliosdb_cdc.store import _sqlite

    SQLiteStore(tmp_path / "state").close()  # migrated, then reopened read-only
    real = sqlite3.connect
    monkeypatch.setattr(
        _sqlite.sqlite3,
        "connect",
        lambda path, **kw: real(f"file:{path}?mode=ro", uri=True, **kw),
    )
    s = SQLiteStore(tmp_path / "state")
    with pytest.raises(StateError, match="readonly"):
        s.create_stream("x", {}, "sql", "running")
    with pytest.raises(StateError, match="cannot write a checkpoint"):
        s.checkpoint("x", 1)
    with pytest.raises(StateError, match="dead letters"):
        s.add_dead_letters([_dl("a", "e", 1)])
    s.close()


# -- PostgreSQL: the schema, the connection, the URL ---------------------------------


def _tables_in(db: PgDatabase, schema: str) -> set[str]:
    rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
    return {str(r[0]) for r in rows}


def test_pg_schema_of_its_own(pg_db: PgDatabase) -> None:
    a = PostgresStore(pg_db.dsn)  # default schema heliosdb_cdc
    b = PostgresStore(pg_db.dsn, "other_state")
    a.checkpoint("s", 1)
    b.checkpoint("s", 2)
    assert (a.get_cursor("s"), b.get_cursor("s")) == (1, 2)
    want = {"schema_migrations", "meta", "streams", "cursors", "deliveries", "dead_letters", "snapshots"}
    want.add("partition_cursors")
    assert _tables_in(pg_db, "heliosdb_cdc") == want
    assert _tables_in(pg_db, "other_state") == want
    assert _tables_in(pg_db, "public") == set()
    versions = [(v,) for v in range(1, _postgres.SCHEMA_VERSION + 1)]
    assert pg_db.execute("SELECT version FROM heliosdb_cdc.schema_migrations ORDER BY 1") == versions
    a.close()
    b.close()


def test_pg_pending_migrations_run_on_open(pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    PostgresStore(pg_db.dsn, "st").close()
    pg_db.execute("INSERT INTO st.cursors (stream, seq, updated_at) VALUES ('s', 5, 0)")
    nxt = _postgres.SCHEMA_VERSION + 1
    monkeypatch.setitem(_postgres.MIGRATIONS, nxt, ["ALTER TABLE {s}.cursors ADD COLUMN lease text"])
    monkeypatch.setattr(_postgres, "SCHEMA_VERSION", nxt)
    s = PostgresStore(pg_db.dsn, "st")
    assert s.schema_version == nxt
    assert s.get_cursor("s") == 5  # data kept
    assert pg_db.execute("SELECT lease FROM st.cursors") == [(None,)]
    s.close()


def test_pg_failed_migration_changes_nothing(pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_postgres.MIGRATIONS, 1, [*_postgres.MIGRATIONS[1], "CREATE TABLE {s}.streams ()"])
    with pytest.raises(StateError, match=r"cannot migrate the state database: .*already exists"):
        PostgresStore(pg_db.dsn, "st")
    assert _tables_in(pg_db, "st") == set()  # rolled back as one transaction


def test_pg_newer_schema_is_refused(pg_db: PgDatabase) -> None:
    PostgresStore(pg_db.dsn, "st").close()
    pg_db.execute("INSERT INTO st.schema_migrations (version) VALUES (99)")
    with pytest.raises(StateError, match=r"schema version 99, newer .*upgrade the package") as exc:
        PostgresStore(pg_db.dsn, "st")
    assert exc.value.context["schema"] == "st"
    assert pg_db.name in exc.value.context["state"]


def test_pg_concurrent_opens_migrate_once(pg_db: PgDatabase) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: PostgresStore(pg_db.dsn, "st"), range(4)))
    assert {s.schema_version for s in stores} == {_postgres.SCHEMA_VERSION}
    assert len({s.instance_id for s in stores}) == 1
    for s in stores:
        s.close()


def test_pg_unreachable_server_is_a_state_error_without_the_password() -> None:
    from heliosdb_cdc._embedded import free_port

    url = f"postgresql://cdc:s3cr3t-pw@127.0.0.1:{free_port()}/state"
    with pytest.raises(StateError, match="cannot open the state database") as exc:
        PostgresStore(url)
    assert "s3cr3t-pw" not in str(exc.value)
    assert exc.value.context["state"].startswith("postgresql://cdc@127.0.0.1:")


def test_pg_bad_schema_name_is_refused(pg_db: PgDatabase) -> None:
    with pytest.raises(StateError, match="lowercase identifier"):
        PostgresStore(pg_db.dsn, 'x"; DROP TABLE y; --')


def test_pg_checkpoint_failing_midway_leaves_nothing(pg_db: PgDatabase) -> None:
    s = PostgresStore(pg_db.dsn, "st")
    s.checkpoint("s", 1, [("ep", "evt_1", 1, time.time())])
    # the deliveries are written, then the cursor is out of bigint's range: all rolled back
    with pytest.raises(StateError, match=r"cannot write a checkpoint: .*out of range"):
        s.checkpoint("s", 2**70, [("ep", "evt_2", 2, time.time())])
    assert s.get_cursor("s") == 1
    assert s.delivered_after("ep", 0) == {"evt_1"}
    s.close()


def test_pg_lost_connection_is_a_state_error_then_reconnects(pg_db: PgDatabase) -> None:
    s = PostgresStore(pg_db.dsn, "st")
    s.checkpoint("s", 3)
    pg_db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'heliosdb-cdc state'",
        (pg_db.name,),
    )
    with pytest.raises(StateError, match="state database error"):
        s.get_cursor("s")
    assert s.get_cursor("s") == 3  # the next call connects again
    s.checkpoint("s", 4)
    assert s.get_cursor("s") == 4
    s.close()


def test_pg_state_in_a_database_we_may_not_create_schemas_in(pg_db: PgDatabase) -> None:
    """A schema created beforehand by an administrator is enough: no CREATE on the database."""
    pg_db.execute("DROP ROLE IF EXISTS cdc_limited")
    pg_db.execute("CREATE ROLE cdc_limited LOGIN")
    try:
        pg_db.execute(f'REVOKE CREATE ON DATABASE "{pg_db.name}" FROM PUBLIC')
        url = pg_db.dsn.replace("postgres@", "cdc_limited@")
        with pytest.raises(StateError, match=r"cannot migrate the state database: permission denied"):
            PostgresStore(url, "st")
        pg_db.execute("CREATE SCHEMA st AUTHORIZATION cdc_limited")
        s = PostgresStore(url, "st")
        s.checkpoint("s", 1)
        assert s.get_cursor("s") == 1
        s.close()
    finally:
        pg_db.execute("DROP SCHEMA IF EXISTS st CASCADE")
        pg_db.execute("DROP OWNED BY cdc_limited")
        pg_db.execute("DROP ROLE cdc_limited")


def test_pg_missing_database_is_a_state_error(pg_db: PgDatabase) -> None:
    with pytest.raises(StateError, match=r"cannot open the state database: .*does not exist"):
        PostgresStore(pg_db.dsn + "_missing")
