"""PostgreSQL source: sans-IO pgoutput decoding and a thin replication driver."""

from ._decoder import ChangeDecoder, RelationInfo, TxnEnd, table_name
from ._protocol import format_lsn, parse_lsn, parse_message
from ._replication import Capture

__all__ = [
    "Capture",
    "ChangeDecoder",
    "RelationInfo",
    "TxnEnd",
    "format_lsn",
    "parse_lsn",
    "parse_message",
    "table_name",
]
