"""PostgreSQL source (capture): sans-IO pgoutput decoding, a thin replication driver, snapshots."""

from ._codec import codec_description, codec_name
from ._decoder import ChangeDecoder, RelationInfo, TxnEnd, table_name
from ._protocol import format_lsn, parse_lsn, parse_message
from ._publication import PublishedTables
from ._replication import Capture
from ._setup import (
    alter_publication,
    check_server,
    connect,
    debezium_column_rows,
    emit_table_change,
    ensure_publication,
    ensure_slot,
    relation_names,
    resolve_tables,
    slot_stats,
    split_table,
    table_columns,
    table_oids,
    unpublished_columns,
)
from ._snapshot import SnapshotState, Snapshotter

__all__ = [
    "Capture",
    "ChangeDecoder",
    "PublishedTables",
    "RelationInfo",
    "SnapshotState",
    "Snapshotter",
    "TxnEnd",
    "alter_publication",
    "check_server",
    "codec_description",
    "codec_name",
    "connect",
    "debezium_column_rows",
    "emit_table_change",
    "ensure_publication",
    "ensure_slot",
    "format_lsn",
    "parse_lsn",
    "parse_message",
    "relation_names",
    "resolve_tables",
    "slot_stats",
    "split_table",
    "table_columns",
    "table_name",
    "table_oids",
    "unpublished_columns",
]
