"""One-off SQL against the source: checks, publication, slot, catalog lookups."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from .._errors import SourceError, SourceFatalError
from ._types import FIRST_USER_OID, array_of

log = logging.getLogger("heliosdb_cdc.postgres")


# connection failures retrying cannot fix: (text in the server's message, the fix)
_FATAL_CONNECT = (
    ("password authentication failed", "check the user and password in source.dsn"),
    ("no pg_hba.conf entry", "allow this user and host in the server's pg_hba.conf, or fix source.dsn"),
    ("authentication failed", "check the user and credentials in source.dsn"),
    ("password is required", "add the password to source.dsn"),
    ("no password supplied", "add the password to source.dsn"),
    ("does not exist", "create it, or fix the user or database name in source.dsn"),
    ("is not permitted to log in", "run ALTER ROLE ... LOGIN; or use another user in source.dsn"),
)


def one_line(text: str) -> str:
    """A server message on one line (libpq's messages span several)."""
    return " ".join(str(text).split())


def connect(dsn: str, **kwargs: Any) -> psycopg2.extensions.connection:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg2.OperationalError as exc:
        text = one_line(str(exc))
        for needle, fix in _FATAL_CONNECT:
            if needle in text:
                raise SourceFatalError(f"cannot connect to PostgreSQL: {text}. Fix: {fix}.") from exc
        raise SourceError(f"cannot connect to PostgreSQL: {text}") from exc
    conn.autocommit = True
    return conn


def check_server(conn: psycopg2.extensions.connection) -> int:
    """Fail with the exact fix when the server cannot do logical replication."""
    with conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        (level,) = cur.fetchone()
        if level != "logical":
            raise SourceFatalError(
                f"PostgreSQL has wal_level={level}; change data capture needs wal_level=logical. "
                "Fix: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL."
            )
        cur.execute("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user")
        row = cur.fetchone()
        if row is not None and not row[0]:
            user = conn.info.user
            raise SourceFatalError(
                f"role {user!r} has no REPLICATION attribute: it cannot read a replication slot. "
                f"Fix: run ALTER ROLE {sql.Identifier(user).as_string(conn)} REPLICATION; as a superuser."
            )
        return int(conn.server_version)


def split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


def like_pattern(glob: str) -> str:
    """A LIKE pattern for a table pattern: ``*`` any run, ``?`` one character; ``_``,
    ``%`` and ``\\`` stand for themselves (``order_*`` does not match ``orderx``)."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def resolve_tables(conn: psycopg2.extensions.connection, names: Iterable[str]) -> list[str]:
    """Expand ``*`` patterns and check each table exists; return ``schema.table`` names."""
    out: list[str] = []
    with conn.cursor() as cur:
        for name in names:
            schema, table = split_table(name)
            if schema in ("pg_catalog", "information_schema") or schema.startswith("pg_toast"):
                # system tables cannot be published (and must not be captured)
                raise SourceError(f"table {name!r} is a system table and cannot be captured", table=name)
            if "*" in name or "?" in name:
                cur.execute(
                    "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r','p') AND n.nspname LIKE %s AND c.relname LIKE %s "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg\\_%%' "
                    "ORDER BY 1",
                    (like_pattern(schema), like_pattern(table)),
                )
                out.extend(r[0] for r in cur.fetchall())
                continue
            cur.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r','p') AND n.nspname = %s AND c.relname = %s",
                (schema, table),
            )
            row = cur.fetchone()
            if row is None:
                raise SourceError(f"table {name!r} does not exist in the source database", table=name)
            out.append(row[0])
    return sorted(set(out))


def table_columns(conn: psycopg2.extensions.connection, table: str) -> list[dict[str, Any]]:
    schema, name = split_table(table)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname, a.atttypid::int, NOT a.attnotnull, "
            "coalesce(a.attnum = ANY(i.indkey), false), a.attgenerated <> '' "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            # the row's key, as in change events: the identity index under USING INDEX
            "LEFT JOIN pg_index i ON i.indrelid = c.oid "
            "AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (schema, name),
        )
        return [
            {"name": r[0], "type_oid": r[1], "nullable": r[2], "key": r[3], "generated": r[4]}
            for r in cur.fetchall()
        ]


# the row's key: the replica identity index under USING INDEX, else the primary key (also
# under FULL, whose relation message flags every column)
_KEY_SQL = """
SELECT (SELECT array_agg(a.attname::text ORDER BY a.attnum)
        FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = c.oid
          AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END)
FROM pg_class c WHERE c.oid = %s
"""


def describe_relation(
    conn: psycopg2.extensions.connection, rel_oid: int, type_oids: Iterable[int]
) -> dict[str, Any]:
    """What a relation message does not say: the row's key columns (``None`` when the table
    has neither primary key nor identity index) and, for user-defined column types (domains,
    arrays of enums or domains), the built-in type whose conversion they take."""
    with conn.cursor() as cur:
        cur.execute(_KEY_SQL, (rel_oid,))
        row = cur.fetchone()
        key = list(row[0]) if row is not None and row[0] else None
        types: dict[str, int] = {}
        for oid in sorted(set(type_oids)):
            resolved = resolve_type(cur, oid)
            if resolved != oid:
                types[str(oid)] = resolved
    return {"oid": rel_oid, "key": key, "types": types}


def resolve_type(cur: Any, oid: int, depth: int = 0) -> int:
    """A domain converts like its base type, an array of a user type like the built-in array
    of what its elements resolve to; other user types (enums, composites) stay themselves."""
    if oid < FIRST_USER_OID or depth > 16:
        return oid
    cur.execute(
        "SELECT typtype, typbasetype::int, typelem::int, typcategory, typlen FROM pg_type WHERE oid = %s",
        (oid,),
    )
    row = cur.fetchone()
    if row is None:
        return oid
    typtype, base, elem, category, length = row
    if typtype == "d":
        return resolve_type(cur, base, depth + 1)
    if category == "A" and elem and length == -1:
        return array_of(resolve_type(cur, elem, depth + 1))
    return oid


def resolve_types(conn: psycopg2.extensions.connection, type_oids: Iterable[int]) -> dict[int, int]:
    """``resolve_type`` for several types (the snapshot's columns)."""
    with conn.cursor() as cur:
        return {oid: resolve_type(cur, oid) for oid in set(type_oids)}


def ensure_publication(
    conn: psycopg2.extensions.connection, publication: str, tables: Iterable[str]
) -> list[str]:
    """Make the publication hold exactly ``tables`` (``schema.table``); return them."""
    try:
        return _ensure_publication(conn, publication, tables)
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise _publication_privilege_error(conn, publication, exc) from None


def _publication_privilege_error(
    conn: psycopg2.extensions.connection,
    publication: str,
    exc: psycopg2.Error,
    tables: Iterable[str] = (),
) -> SourceFatalError:
    text = one_line(exc.pgerror or str(exc)).removeprefix("ERROR: ").strip()
    user = sql.Identifier(conn.info.user).as_string(conn)
    pub = sql.Identifier(publication).as_string(conn)
    named = ", ".join(sql.Identifier(*split_table(t)).as_string(conn) for t in tables)
    if "owner of table" in text and named:  # adding a stream's tables at runtime
        fix = (
            f"have the table's owner run ALTER TABLE ... OWNER TO {user}; or "
            f"ALTER PUBLICATION {pub} ADD TABLE {named}; themselves, then create the stream again"
        )
    elif "owner of publication" in text:
        fix = (
            f"run ALTER PUBLICATION {pub} OWNER TO {user}; as its owner, "
            f"or set source.publication to one {user} owns"
        )
    elif "owner of table" in text:
        fix = (
            f"have the table's owner run ALTER TABLE ... OWNER TO {user}; "
            f"or ALTER PUBLICATION {pub} ADD TABLE ...; themselves"
        )
    elif "database" in text:
        fix = f"run GRANT CREATE ON DATABASE {sql.Identifier(conn.info.dbname).as_string(conn)} TO {user};"
    else:
        fix = f"grant {user} the privilege named in the error"
    return SourceFatalError(f"cannot manage publication {publication!r}: {text}. Fix: {fix}.")


def _ensure_publication(
    conn: psycopg2.extensions.connection, publication: str, tables: Iterable[str]
) -> list[str]:
    wanted = sorted(set(tables))
    with conn.cursor() as cur:
        all_tables = _open_publication(conn, cur, publication)
        if _publishes_generated(conn) and all_tables is not None:
            cur.execute(
                sql.SQL("ALTER PUBLICATION {} SET (publish_generated_columns = stored)").format(
                    sql.Identifier(publication)
                )
            )
        if all_tables:
            return wanted  # FOR ALL TABLES: nothing to manage
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,),
        )
        current = {r[0] for r in cur.fetchall()}
        _alter_tables(
            cur, publication, [t for t in wanted if t not in current], [t for t in current if t not in wanted]
        )
    return wanted


def _open_publication(conn: psycopg2.extensions.connection, cur: Any, publication: str) -> bool | None:
    """Create the publication when missing (publishing stored generated columns where
    PostgreSQL can: 18 and later); whether it is FOR ALL TABLES, None when just created."""
    cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
    row = cur.fetchone()
    if row is not None:
        return bool(row[0])
    gen = " WITH (publish_generated_columns = stored)" if _publishes_generated(conn) else ""
    cur.execute(sql.SQL("CREATE PUBLICATION {}" + gen).format(sql.Identifier(publication)))
    log.info("created publication %s", publication)
    return None


def _alter_tables(cur: Any, publication: str, add: list[str], drop: list[str]) -> None:
    for verb, items in (("ADD", add), ("DROP", drop)):
        if items:
            idents = sql.SQL(", ").join(sql.Identifier(*split_table(t)) for t in items)
            cur.execute(
                sql.SQL("ALTER PUBLICATION {} " + verb + " TABLE {}").format(
                    sql.Identifier(publication), idents
                )
            )
            log.info("publication %s: %s %s", publication, verb.lower(), ", ".join(items))


def alter_publication(
    conn: psycopg2.extensions.connection,
    publication: str,
    add: Iterable[str] = (),
    drop: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    """Add ``add`` to and drop ``drop`` from the publication, looking only at those tables
    (``schema.table``): the cost of a stream's CREATE or DROP does not grow with the
    number of streams. Tables already (or no longer) in it are skipped; a publication
    FOR ALL TABLES is left alone. Returns the (added, dropped) tables."""
    add, drop = sorted(set(add)), sorted(set(drop))
    if not add and not drop:
        return [], []
    try:
        return _alter_publication(conn, publication, add, drop)
    except psycopg2.errors.InsufficientPrivilege as exc:
        # a clear refusal naming the fix (a 4xx to the CREATE/DROP), as at start
        raise _publication_privilege_error(conn, publication, exc, add or drop) from None


def _alter_publication(
    conn: psycopg2.extensions.connection, publication: str, add: list[str], drop: list[str]
) -> tuple[list[str], list[str]]:
    with conn.cursor() as cur:
        if _open_publication(conn, cur, publication):
            return [], []  # FOR ALL TABLES: nothing to manage
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables "
            "WHERE pubname = %s AND schemaname || '.' || tablename = ANY(%s)",
            (publication, add + drop),
        )
        present = {r[0] for r in cur.fetchall()}
        to_add = [t for t in add if t not in present]
        to_drop = [t for t in drop if t in present]
        _alter_tables(cur, publication, to_add, to_drop)
    return to_add, to_drop


def _publishes_generated(conn: psycopg2.extensions.connection) -> bool:
    return int(conn.server_version) >= 180000


def unpublished_columns(conn: psycopg2.extensions.connection, tables: Iterable[str]) -> dict[str, list[str]]:
    """Generated columns of ``tables`` that change events lack: all of them before
    PostgreSQL 18 (pgoutput does not send them); none from 18 on (published as stored)."""
    if _publishes_generated(conn):
        return {}
    out: dict[str, list[str]] = {}
    with conn.cursor() as cur:
        for table in tables:
            schema, name = split_table(table)
            cur.execute(
                "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
                "AND a.attgenerated <> '' ORDER BY a.attnum",
                (schema, name),
            )
            cols = [r[0] for r in cur.fetchall()]
            if cols:
                out[name if schema == "public" else table] = cols
    return out


LOST_SLOT_FIX = "Fix: run heliosdb-cdc run --resnapshot to create it again and re-read every captured table."


def lost_slot_error(slot: str) -> SourceFatalError:
    return SourceFatalError(
        f"replication slot {slot!r} does not exist, but this state directory read from it: "
        f"the changes committed while it was missing are lost. {LOST_SLOT_FIX}"
    )


def ensure_slot(conn: psycopg2.extensions.connection, slot: str, create: bool = True) -> bool:
    """Create the logical slot if missing (unless ``create`` is false: then a missing slot
    is a :func:`lost_slot_error`); True when it was created."""
    with conn.cursor() as cur:
        cur.execute("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        if row is not None:
            if row[0] != "pgoutput":
                raise SourceFatalError(
                    f"replication slot {slot!r} uses plugin {row[0]!r}, not pgoutput; "
                    "choose another source.slot or drop that slot",
                    slot=slot,
                )
            return False
        if not create:
            raise lost_slot_error(slot)
        try:
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ConfigurationLimitExceeded) as exc:
            text = one_line(exc.pgerror or str(exc)).removeprefix("ERROR: ").strip()
            fix = (
                "raise max_replication_slots on the server, or drop a slot no longer used"
                if isinstance(exc, psycopg2.errors.ConfigurationLimitExceeded)
                else "run ALTER ROLE ... REPLICATION; for the user of source.dsn"
            )
            raise SourceFatalError(f"cannot create replication slot {slot!r}: {text}. Fix: {fix}.") from None
        log.info("created replication slot %s", slot)
        return True


def slot_stats(conn: psycopg2.extensions.connection, slot: str) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active, "
            "confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    if row is None:
        return {}
    return {
        "lag_bytes": int(row[0] or 0),
        "retained_bytes": int(row[1] or 0),
        "active": bool(row[2]),
        "confirmed_flush_lsn": row[3],
    }


def table_oids(conn: psycopg2.extensions.connection, names: Iterable[str]) -> dict[str, int | None]:
    """OID of each ``schema.table`` name (None when no table has that name)."""
    names = list(names)
    out: dict[str, int | None] = dict.fromkeys(names)
    if not names:
        return out
    pairs = [split_table(n) for n in names]
    with conn.cursor() as cur:  # one statement, however many tables
        cur.execute(
            "SELECT n.nspname, c.relname, c.oid::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN unnest(%s::text[], %s::text[]) AS w(s, t) ON n.nspname = w.s AND c.relname = w.t "
            "WHERE c.relkind IN ('r','p')",
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        )
        found = {(r[0], r[1]): int(r[2]) for r in cur.fetchall()}
    for name, pair in zip(names, pairs, strict=True):
        out[name] = found.get(pair)
    return out


def relation_names(conn: psycopg2.extensions.connection, oids: Iterable[int]) -> dict[int, str | None]:
    """``schema.table`` name of each table OID now (None when no table has it)."""
    out: dict[int, str | None] = {}
    with conn.cursor() as cur:
        for oid in oids:
            cur.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s AND c.relkind IN ('r','p')",
                (oid,),
            )
            row = cur.fetchone()
            out[oid] = None if row is None else str(row[0])
    return out


def emit_table_change(conn: psycopg2.extensions.connection, content: bytes) -> None:
    """Write a table change into the WAL, where the decoder makes it a SCHEMA_CHANGE event."""
    from ._decoder import TABLE_CHANGE_PREFIX

    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(true, %s, %s::bytea)", (TABLE_CHANGE_PREFIX, content))


_DEBEZIUM_COLUMNS_SQL = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       coalesce(a.attnum = ANY (i.indkey), false),
       CASE WHEN bt.typcategory = 'A' OR t.typcategory = 'A'
            THEN coalesce(nullif(bt.typelem, 0), t.typelem) ELSE 0 END,
       NOT a.attnotnull
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""


def debezium_column_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    """Per column of ``schema.table``: name, type OID (a domain's base type), typmod,
    part of the primary key, array element type OID (0: not an array), nullable."""
    schema, name = split_table(table)
    regclass = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(_DEBEZIUM_COLUMNS_SQL, (regclass,))
            return list(cur.fetchall())
    finally:
        conn.close()
