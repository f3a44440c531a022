"""PostgreSQL source (capture): sans-IO pgoutput decoding, a thin replication driver, snapshots."""

from ._decoder import ChangeDecoder, RelationInfo, TxnEnd, table_name
from ._protocol import format_lsn, parse_lsn, parse_message
from ._replication import Capture
from ._snapshot import SnapshotState, Snapshotter

__all__ = [
    "Capture",
    "ChangeDecoder",
    "RelationInfo",
    "SnapshotState",
    "Snapshotter",
    "TxnEnd",
    "format_lsn",
    "parse_lsn",
    "parse_message",
    "table_name",
]
