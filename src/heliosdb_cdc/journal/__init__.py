"""The journal: the durable, append-only log of change records.

It is the hand-off between capture and delivery and sits below both: capture
(``postgres/``) appends records and confirms the source position once they are
durable; delivery (``delivery/``) reads them back from each stream's cursor.
Neither side imports the other. See docs/architecture.md ("Layers", "The local log").
"""

from .._record import OP_CODES, OP_NAMES, OP_WATERMARK, Record
from ._chunk import Chunk
from ._durable import read_file, replace_file
from ._follow import LogFollower
from ._kafka import KafkaJournal, message_key
from ._locallog import FileSystem, LocalLog, Position
from ._writer import JournalWriter

__all__ = [
    "OP_CODES",
    "OP_NAMES",
    "OP_WATERMARK",
    "Chunk",
    "FileSystem",
    "JournalWriter",
    "KafkaJournal",
    "LocalLog",
    "LogFollower",
    "Position",
    "Record",
    "message_key",
    "read_file",
    "replace_file",
]
