"""The denominator: a bare pgoutput consumer of its own slot, no decoding.

    python bench/raw_consumer.py DSN SLOT PUBLICATION STATUS_FILE

``start_replication(decode=False, proto_version 1)``, then only
``read_message`` + ``send_feedback``. A change is counted by the first byte of
the message (``I``/``U``/``D``), which is not decoding. Every 0.1 s it writes
``{"count": n, "last_recv": t, "first_recv": t0}`` (receipt times of the first
and latest change, ``time.time()``) to STATUS_FILE; it exits on SIGTERM.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

import psycopg2
import psycopg2.extras

CHANGE = frozenset(b"IUD")


def main() -> None:
    dsn, slot, publication, status_file = sys.argv[1:5]
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(
        slot_name=slot,
        decode=False,
        options={"proto_version": "1", "publication_names": publication},
        status_interval=10,
    )
    count = 0
    first = last = 0.0
    next_report = 0.0
    tmp = status_file + ".tmp"

    def report() -> None:
        with open(tmp, "w") as f:
            json.dump({"count": count, "first_recv": first, "last_recv": last, "ready": True}, f)
        os.replace(tmp, status_file)

    report()
    while not stop:
        msg = cur.read_message()
        if msg is not None:
            if msg.payload[0] in CHANGE:
                count += 1
                last = time.time()
                if not first:
                    first = last
            cur.send_feedback(flush_lsn=msg.data_start)
            if last >= next_report:
                report()
                next_report = last + 0.1
            continue
        report()
        next_report = time.time() + 0.1
        select.select([conn], [], [], 0.1)
    report()
    conn.close()


if __name__ == "__main__":
    main()
