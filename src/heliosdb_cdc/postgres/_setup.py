"""One-off SQL against the source: checks, publication, slot, catalog lookups."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .._errors import SourceError
from ._types import FIRST_USER_OID, array_of

log = logging.getLogger("heliosdb_cdc.postgres")


def connect(dsn: str, **kwargs: Any) -> psycopg2.extensions.connection:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg2.OperationalError as exc:
        raise SourceError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from exc
    conn.autocommit = True
    return conn


def check_server(conn: psycopg2.extensions.connection) -> int:
    """Fail with the exact fix when the server cannot do logical replication."""
    with conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        (level,) = cur.fetchone()
        if level != "logical":
            raise SourceError(
                f"PostgreSQL has wal_level={level}; change data capture needs wal_level=logical. "
                "Fix: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL."
            )
        return int(conn.server_version)


def split_table(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


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
                    (
                        schema.replace("*", "%").replace("?", "_"),
                        table.replace("*", "%").replace("?", "_"),
                    ),
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
    wanted = sorted(set(tables))
    with conn.cursor() as cur:
        cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
        row = cur.fetchone()
        # PostgreSQL 18 publishes stored generated columns when asked; older ones never do
        publish_generated = _publishes_generated(conn)
        gen = sql.SQL(" WITH (publish_generated_columns = stored)" if publish_generated else "")
        if row is None:
            cur.execute(sql.SQL("CREATE PUBLICATION {}{}").format(sql.Identifier(publication), gen))
            log.info("created publication %s", publication)
        elif publish_generated:
            cur.execute(
                sql.SQL("ALTER PUBLICATION {} SET (publish_generated_columns = stored)").format(
                    sql.Identifier(publication)
                )
            )
        if row is not None and row[0]:
            return wanted  # FOR ALL TABLES: nothing to manage
        cur.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,),
        )
        current = {r[0] for r in cur.fetchall()}
        add = [t for t in wanted if t not in current]
        drop = [t for t in current if t not in wanted]
        for verb, items in (("ADD", add), ("DROP", drop)):
            if items:
                idents = sql.SQL(", ").join(sql.Identifier(*split_table(t)) for t in items)
                cur.execute(
                    sql.SQL("ALTER PUBLICATION {} " + verb + " TABLE {}").format(
                        sql.Identifier(publication), idents
                    )
                )
                log.info("publication %s: %s %s", publication, verb.lower(), ", ".join(items))
    return wanted


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


def ensure_slot(conn: psycopg2.extensions.connection, slot: str) -> bool:
    """Create the logical slot if missing; True when it was created."""
    with conn.cursor() as cur:
        cur.execute("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        if row is not None:
            if row[0] != "pgoutput":
                raise SourceError(
                    f"replication slot {slot!r} uses plugin {row[0]!r}, not pgoutput; "
                    "choose another source.slot or drop that slot",
                    slot=slot,
                )
            return False
        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
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
