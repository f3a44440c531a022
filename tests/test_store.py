"""SQLite Store: migrations, catalog, checkpoints and delivery records, dead letters."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from heliosdb_cdc import StateError, StreamExists, StreamNotFound
from heliosdb_cdc.store._sqlite import _MIGRATIONS, SCHEMA_VERSION, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state")
    yield s
    s.close()


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_fresh_store_is_migrated(tmp_path: Path) -> None:
    s = Store(tmp_path / "state")
    assert s.schema_version == SCHEMA_VERSION
    assert {"meta", "streams", "cursors", "deliveries", "dead_letters", "snapshots"} <= tables(s.path)
    iid = s.instance_id
    assert len(iid) == 12 and iid == s.instance_id
    s.close()
    # reopening is idempotent and keeps the instance id
    s = Store(tmp_path / "state")
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
    s = Store(tmp_path / "state")
    assert s.schema_version == 2
    assert "snapshots" in tables(s.path)
    assert s.get_cursor("s") == 5  # data kept
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "state")
    s._db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s.close()
    with pytest.raises(StateError, match=r"schema version 99, newer .*upgrade the package") as exc:
        Store(tmp_path / "state")
    assert "state.db" in str(exc.value)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text("x")
    with pytest.raises(StateError, match="cannot open the state database"):
        Store(f)


def test_corrupt_database_file(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(StateError, match="state database"):
        Store(tmp_path / "state")


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
        Store(d)
    assert exc.value.context["path"] == str(d / "state.db")


def test_writes_to_read_only_store_are_state_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from heliosdb_cdc.store import _sqlite

    Store(tmp_path / "state").close()  # migrated, then reopened read-only
    real = sqlite3.connect
    monkeypatch.setattr(
        _sqlite.sqlite3,
        "connect",
        lambda path, **kw: real(f"file:{path}?mode=ro", uri=True, **kw),
    )
    s = Store(tmp_path / "state")
    with pytest.raises(StateError, match="readonly"):
        s.create_stream("x", {}, "sql", "running")
    with pytest.raises(StateError, match="cannot write a checkpoint"):
        s.checkpoint("x", 1)
    with pytest.raises(StateError, match="dead letters"):
        s.add_dead_letters([_dl("a", "e", 1)])
    s.close()
