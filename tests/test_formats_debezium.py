"""``format: debezium``: compared field by field with the real Debezium Server 2.7 on the
same changes, plus the Kafka key, tombstones and the ``schema`` part.

Debezium Server comes from Maven Central (bench/debezium_server.py, cached with the
benchmark's peers). Without Java or Maven the comparison is skipped with the reason,
except in CI (``CI=true``) where that is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_cdc import Config, WebhookServer
from heliosdb_cdc._config import StreamConfig
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc.pipeline._debezium import UNAVAILABLE, Column, convert, envelope
from tests.plugins import in_ci
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import start_receiver

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import debezium_server  # noqa: E402

START_TIMEOUT_S = float(os.environ.get("HELIOSDB_CDC_DEBEZIUM_START_TIMEOUT", "240"))
PREFIX = "dbz"

TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE every_type (
    id bigint PRIMARY KEY,
    c_smallint smallint, c_integer integer, c_bigint bigint,
    c_numeric_fixed numeric(12,2), c_numeric numeric,
    c_real real, c_double double precision, c_boolean boolean,
    c_text text, c_varchar varchar(20), c_char char(3), c_uuid uuid,
    c_enum mood, c_domain posint, c_money money,
    c_date date, c_time time, c_timestamp timestamp, c_timestamptz timestamptz,
    c_timetz timetz, c_interval interval,
    c_json json, c_jsonb jsonb, c_bytea bytea,
    c_int_array integer[], c_text_array text[]
);
ALTER TABLE every_type REPLICA IDENTITY FULL;
CREATE TABLE plain (id int PRIMARY KEY, name text, big text);
"""

ROW = """
INSERT INTO every_type VALUES (
    1, -32768, 2147483647, 9223372036854775807,
    1234567890.12, 12345678901234567890.123456789,
    1.5, 3.141592653589793, true,
    'héllo "x"', 'varchar', 'abc', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    'happy', 42, 1234.56,
    '2026-01-04', '12:34:56.789012', '2026-01-04 12:00:00.123456', '2026-01-04 12:00:00.5+02',
    '12:00:00+02', '1 year 2 mons 3 days 04:05:06.5',
    '{"a": [1, 2.5, null]}', '{"b": {"c": true}}', '\\xdeadbeef',
    '{1,NULL,3}', '{"a","b c"}'
)
"""


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"Debezium Server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Debezium Server unavailable: {reason}")


def _properties(port: int, db: str, url: str, wd: Path) -> str:
    return f"""\
debezium.sink.type=http
debezium.sink.http.url={url}
debezium.sink.http.timeout.ms=30000
debezium.source.connector.class=io.debezium.connector.postgresql.PostgresConnector
debezium.source.offset.storage.file.filename={wd / "offsets.dat"}
debezium.source.offset.flush.interval.ms=1000
debezium.source.database.hostname=127.0.0.1
debezium.source.database.port={port}
debezium.source.database.user=postgres
debezium.source.database.password=postgres
debezium.source.database.dbname={db}
debezium.source.topic.prefix={PREFIX}
debezium.source.table.include.list=public.every_type,public.plain
debezium.source.plugin.name=pgoutput
debezium.source.slot.name=dbz
debezium.source.publication.name=dbz_pub
debezium.source.publication.autocreate.mode=filtered
debezium.source.snapshot.mode=no_data
debezium.format.value=json
debezium.format.key=json
debezium.format.value.schemas.enable=false
debezium.format.key.schemas.enable=false
quarkus.http.port={free_port()}
quarkus.log.level=WARN
quarkus.log.console.json=false
"""


@pytest.fixture
def debezium_dist() -> Path:
    dist, why = debezium_server.install_debezium()
    if dist is None:
        _unavailable(why)
    assert dist is not None
    return dist


def _slot_active(db: PgDatabase, slot: str) -> bool:
    rows = db.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return bool(rows and rows[0][0])


async def _start_debezium(dist: Path, db: PgDatabase, url: str, wd: Path) -> subprocess.Popen[bytes]:
    (wd / "conf").mkdir(parents=True, exist_ok=True)
    (wd / "conf" / "application.properties").write_text(_properties(db.server.port, db.name, url, wd))
    with open(wd / "debezium.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            debezium_server.server_command(dist, wd / "conf", heap="-Xmx512m"),
            cwd=wd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _slot_active(db, "dbz"):
        if proc.poll() is not None:
            raise AssertionError(f"Debezium Server exited: {(wd / 'debezium.log').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            _unavailable(
                f"no active slot within {START_TIMEOUT_S}s: {(wd / 'debezium.log').read_text()[-800:]}"
            )
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)  # streaming starts after the (no-data) snapshot
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _key(e: dict[str, Any]) -> tuple[str, str]:
    return (e["source"]["table"], e["op"])


async def test_envelopes_match_debezium_server_field_by_field(
    debezium_dist: Path, pg_db: PgDatabase, tmp_path: Path
) -> None:
    pg_db.execute(TYPES)
    dbz_rec, dbz_runner = await start_receiver()
    ours, our_runner = await start_receiver()
    proc = await _start_debezium(debezium_dist, pg_db, dbz_rec.url, tmp_path / "dbz")
    stream = {
        "name": "dbz_compare",
        "tables": ["every_type", "plain"],
        "destination": {
            "type": "webhook",
            "address": ours.url,
            "options": {"debezium_topic_prefix": PREFIX},
        },
        "format": "debezium",
    }
    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": pg_db.dsn},
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "retry": {"initial_delay_ms": 10}},
            "streams": [stream],
        }
    )
    try:
        async with WebhookServer(cfg):
            pg_db.execute(ROW)
            pg_db.execute("INSERT INTO every_type (id) VALUES (2)")  # every other column NULL
            pg_db.execute("UPDATE every_type SET c_text = 'changed', c_numeric = 'NaN' WHERE id = 1")
            pg_db.execute("DELETE FROM every_type WHERE id = 2")
            pg_db.execute(
                "INSERT INTO plain SELECT 1, 'a', string_agg(md5(i::text), '') FROM generate_series(1, 4000) i"
            )
            # plain.big is TOASTed: an UPDATE that leaves it alone does not resend it
            pg_db.execute("UPDATE plain SET name = 'b' WHERE id = 1")
            pg_db.execute("DELETE FROM plain WHERE id = 1")
            n = 7
            theirs_all = await dbz_rec.wait_for(n, timeout=120)
            ours_all = await ours.wait_for(n, timeout=60)
    finally:
        _stop(proc)
        await dbz_runner.cleanup()
        await our_runner.cleanup()
    # one transaction per change; webhook lanes deliver different rows in parallel
    theirs_all = sorted(theirs_all, key=lambda e: e["source"]["txId"])
    ours_all = sorted(ours_all, key=lambda e: e["source"]["txId"])
    assert [_key(e) for e in ours_all] == [_key(e) for e in theirs_all]
    compared = 0
    for mine, real in zip(ours_all, theirs_all, strict=True):
        where = f"{real['source']['table']} {real['op']}"
        assert set(mine) == set(real), where
        assert mine["op"] == real["op"]
        for part in ("before", "after"):
            assert (mine[part] is None) == (real[part] is None), f"{where} {part}"
            if real[part] is None:
                continue
            assert list(mine[part]) == list(real[part]), f"{where} {part}: columns"
            for col, value in real[part].items():
                assert mine[part][col] == value, (
                    f"{where} {part}.{col}: ours {mine[part][col]!r}, Debezium {value!r}"
                )
                compared += 1
        ms, rs = mine["source"], real["source"]
        assert set(ms) == set(rs), where
        for field in ("connector", "name", "db", "schema", "table", "txId", "snapshot", "ts_ms", "ts_us"):
            assert ms[field] == rs[field], (
                f"{where} source.{field}: ours {ms[field]!r}, Debezium {rs[field]!r}"
            )
        # Debezium's lsn is the change's own WAL position; ours is its transaction's commit LSN
        assert isinstance(ms["lsn"], int) and ms["lsn"] >= rs["lsn"], where
        assert isinstance(mine["ts_ms"], int) and mine["ts_ms"] >= ms["ts_ms"]
    assert compared > 60
    # the cases that needed care are among those compared
    by = {_key(e): e for e in ours_all}
    assert by[("plain", "u")]["after"]["big"] == UNAVAILABLE
    assert by[("every_type", "u")]["after"]["c_numeric"] is None  # NaN: precise mode has none
    assert by[("every_type", "d")]["before"]["id"] == 2


# -- without Debezium Server -------------------------------------------------------------------
def test_conversions_follow_debezium_defaults() -> None:
    fixed = Column("n", 1700, typmod=(12 << 16 | 2) + 4)
    assert base64.b64decode(convert(Decimal("1234567890.12"), fixed)) == (123456789012).to_bytes(5, "big")
    # two's complement, shortest, as Java's BigInteger.toByteArray(): -100, -128, 128
    assert convert(Decimal("-1.00"), fixed) == base64.b64encode(b"\x9c").decode()
    assert convert(Decimal("-1.28"), fixed) == base64.b64encode(b"\x80").decode()
    assert convert(Decimal("1.28"), fixed) == base64.b64encode(b"\x00\x80").decode()
    var = convert(Decimal("12.345"), Column("n", 1700))
    assert var["scale"] == 3 and base64.b64decode(var["value"]) == (12345).to_bytes(2, "big")
    assert convert("NaN", Column("n", 1700)) is None
    assert convert("1970-01-02", Column("d", 1082)) == 1
    assert convert("00:00:01.5", Column("t", 1083)) == 1_500_000
    assert convert("1970-01-01T00:00:01.000001", Column("ts", 1114)) == 1_000_001
    assert convert("1970-01-01T00:00:01.5", Column("ts", 1114, typmod=3)) == 1_500
    assert convert("2026-01-04T12:00:00.5+02:00", Column("tz", 1184)) == "2026-01-04T10:00:00.500000Z"
    assert convert("P1DT2H", Column("i", 1186)) == (26 * 3600) * 1_000_000
    assert convert({"a": [1, {"b": None}]}, Column("j", 3802)) == '{"a": [1, {"b": null}]}'
    assert convert(["1970-01-02", None], Column("a", 1182, elem_oid=1082)) == [1, None]


def test_envelope_key_toast_and_delete() -> None:
    cols = [Column("id", 23, primary_key=True), Column("name", 25), Column("big", 25)]
    event = {
        "event_id": "evt_1",
        "timestamp": "2026-01-04T12:00:00.123456Z",
        "sequence": 3,
        "operation": "UPDATE",
        "database": "shop",
        "table": "sales.items",
        "key": {"id": 1},
        "value": {"id": 1, "name": "b"},  # big: unchanged TOAST, absent
        "old_value": None,
        "transaction_id": "txn_77",
    }
    rec = envelope(event, cols, lsn=99, prefix="p", version="v", now_us=5_000_000)
    assert rec.key == {"id": 1}
    assert rec.value["after"] == {"id": 1, "name": "b", "big": UNAVAILABLE}
    assert rec.value["before"] is None
    src = rec.value["source"]
    assert (src["schema"], src["table"], src["txId"], src["lsn"], src["ts_ms"]) == (
        "sales",
        "items",
        77,
        99,
        1767528000123,
    )
    assert rec.value_schema["name"] == "p.sales.items.Envelope"
    assert rec.key_schema["fields"] == [{"type": "int32", "optional": False, "field": "id"}]
    deleted = envelope(
        {**event, "operation": "DELETE", "value": None, "old_value": {"id": 1}},
        cols,
        lsn=1,
        prefix="p",
        version="v",
    )
    assert deleted.value["before"] == {"id": 1, "name": None, "big": None}
    assert deleted.value["after"] is None and deleted.value["op"] == "d"


def test_stream_config_accepts_debezium_everywhere() -> None:
    for dest in (
        {"type": "kafka", "address": "b:9092", "topic": "t"},
        {"type": "kinesis", "address": "s", "region": "us-east-1"},
        {"type": "webhook", "address": "http://x/h"},
    ):
        cfg = StreamConfig.model_validate(
            {"name": "s", "tables": ["t"], "destination": dest, "format": "Debezium"}
        )
        assert cfg.format == "debezium"


async def test_kafka_key_tombstone_and_schema(
    kafka_bootstrap: str, pg_db: PgDatabase, tmp_path: Path
) -> None:
    from tests.test_kafka_sink import consume

    pg_db.execute("CREATE TABLE acct (id int PRIMARY KEY, balance numeric(10,2), opened date)")
    topic = f"dbz-{os.getpid()}-{time.monotonic_ns()}"
    stream = {
        "name": "acct_dbz",
        "tables": ["acct"],
        "destination": {
            "type": "kafka",
            "address": kafka_bootstrap,
            "topic": topic,
            "options": {"debezium_schemas": True, "debezium_tombstones": True, "partitions": 1},
        },
        "format": "debezium",
    }
    cfg = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "source": {"dsn": pg_db.dsn},
            "webhook": {"bind_address": f"127.0.0.1:{free_port()}"},
            "streams": [stream],
        }
    )
    async with WebhookServer(cfg) as server:
        pg_db.execute("INSERT INTO acct VALUES (7, 10.50, '1970-01-11')")
        pg_db.execute("DELETE FROM acct WHERE id = 7")
        pg_db.execute("TRUNCATE acct")  # Debezium skips truncates by default: so do we
        deadline = time.monotonic() + 60
        while server.runners["acct_dbz"].stats.delivered < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        msgs = await asyncio.to_thread(consume, kafka_bootstrap, topic, 3, 30.0)
    assert len(msgs) == 3
    keys = [orjson.loads(m.key()) for m in msgs]
    assert all(k == {"schema": keys[0]["schema"], "payload": {"id": 7}} for k in keys)
    assert keys[0]["schema"]["name"] == f"{pg_db.name}.public.acct.Key"
    created, deleted = (orjson.loads(m.value()) for m in msgs[:2])
    assert msgs[2].value() is None  # the tombstone, after the delete
    assert created["payload"]["op"] == "c" and deleted["payload"]["op"] == "d"
    assert created["payload"]["after"]["opened"] == 10
    assert base64.b64decode(created["payload"]["after"]["balance"]) == (1050).to_bytes(2, "big")
    fields = {f["field"]: f for f in created["schema"]["fields"]}
    after = {f["field"]: f for f in fields["after"]["fields"]}
    assert after["balance"]["name"] == "org.apache.kafka.connect.data.Decimal"
    assert after["balance"]["parameters"] == {"scale": "2", "connect.decimal.precision": "10"}
    assert after["opened"]["name"] == "io.debezium.time.Date"
    assert after["id"]["optional"] is False


@pytest.mark.parametrize("doc", ["migrating-from-debezium.md", "kafka.md"])
def test_documented_yaml_is_valid(doc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    import yaml

    from heliosdb_cdc._config import config_from_dict

    for var in ("WEBHOOK_SECRET", "KAFKA_PASSWORD"):
        monkeypatch.setenv(var, "s")
    text = (ROOT / "docs" / doc).read_text()
    blocks = [
        b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith(("source:", "streams:"))
    ]
    formats = [
        s["format"] for b in blocks for s in config_from_dict(yaml.safe_load(b)).model_dump()["streams"]
    ]
    assert "debezium" in formats
