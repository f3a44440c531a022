"""CloudEvents 1.0 over webhooks: the ``cloudevents`` SDK parses what a real receiver got."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from heliosdb_cdc import Config, WebhookRegistration, WebhookServer
from heliosdb_cdc._config import config_from_dict
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc._errors import ConfigError, SqlError
from heliosdb_cdc.pipeline._formats import CloudEventsFormat
from heliosdb_cdc.sql import parse
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import start_receiver, verify_signature

SECRET = "your-webhook-secret"


def make_config(db: PgDatabase, tmp_path: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": db.dsn},
        "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "retry": {"initial_delay_ms": 10}},
    }
    data.update(extra)
    return Config.model_validate(data)


def parse_ce(headers: dict[str, str], body: bytes) -> Any:
    return from_http_event(HTTPMessage(headers={k.lower(): v for k, v in headers.items()}, body=body))


async def test_structured_and_binary_parse_with_the_sdk(pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2))")
    structured, r1 = await start_receiver(secret=SECRET)
    binary, r2 = await start_receiver(secret=SECRET)
    # YAML form for the binary stream, Python API (webhooks[].format) for the structured one
    stream = {
        "name": "items_ce_binary",
        "tables": ["items"],
        "destination": {"type": "webhook", "address": binary.url},
        "format": "cloudevents-binary",
        "secret": SECRET,
    }
    try:
        async with WebhookServer(make_config(pg_db, tmp_path, streams=[stream])) as server:
            await server.register(
                WebhookRegistration(url=structured.url, secret=SECRET, tables=["items"], format="CloudEvents")
            )
            pg_db.execute("INSERT INTO items VALUES (1, 'Grüße \"x\" 100%', 9.99)")
            pg_db.execute("UPDATE items SET price = 12.50 WHERE id = 1")
            pg_db.execute("DELETE FROM items WHERE id = 1")
            await structured.wait_for(3)
            await binary.wait_for(3)
    finally:
        await r1.cleanup()
        await r2.cleanup()
    assert structured.bad_signatures == 0 and binary.bad_signatures == 0

    for req in structured.requests:
        assert req.headers["Content-Type"] == "application/cloudevents+json"
        assert verify_signature(req.body, req.headers["X-HeliosDB-Signature"], SECRET)
    s_events = [parse_ce(r.headers, r.body) for r in structured.requests]
    b_events = [parse_ce(r.headers, r.body) for r in binary.requests]
    for req in binary.requests:
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["ce-specversion"] == "1.0"
    for events in (s_events, b_events):
        events.sort(key=lambda e: int(e.get_extension("sequence")))
        assert [e.get_type() for e in events] == [
            "io.heliosdb.cdc.insert",
            "io.heliosdb.cdc.update",
            "io.heliosdb.cdc.delete",
        ]
        for e in events:
            data = e.get_data()
            if isinstance(data, (bytes, str)):
                data = orjson.loads(data)
            assert e.get_specversion() == "1.0"
            assert e.get_id() == data["event_id"]
            assert e.get_source() == f"/heliosdb-cdc/{pg_db.name}/items"
            assert e.get_subject() == '{"id":1}'
            assert e.get_time() is not None
            assert e.get_time().isoformat().replace("+00:00", "Z") == data["timestamp"]
            assert e.get_extension("sequence") == str(data["sequence"])
            assert data["key"] == {"id": 1}
        first = events[0].get_data()
        first = orjson.loads(first) if isinstance(first, (bytes, str)) else first
        assert first["value"] == {"id": 1, "name": 'Grüße "x" 100%', "price": 9.99}
    # the same change has the same id in both modes
    assert [e.get_id() for e in s_events] == [e.get_id() for e in b_events]


def test_binary_header_values_are_percent_encoded() -> None:
    event = {
        "event_id": "evt_1",
        "timestamp": "2026-01-04T12:00:00Z",
        "sequence": 7,
        "operation": "INSERT",
        "database": "shop db",
        "table": "sales.orders",
        "key": {"name": 'é "q"'},
        "value": {"name": 'é "q"'},
        "old_value": None,
        "transaction_id": "txn_9",
    }
    key = orjson.dumps(event["key"])
    out = CloudEventsFormat(binary=True)(event, key, 0)
    assert out is not None
    for value in out.headers.values():
        assert value.isascii() and " " not in value and '"' not in value
    parsed = parse_ce({**out.headers, "content-type": "application/json"}, out.body)
    assert parsed.get_subject() == key.decode()
    assert parsed.get_source() == "/heliosdb-cdc/shop%20db/sales.orders"
    kafka = CloudEventsFormat(binary=True, header_prefix="ce_")(event, key, 0)
    assert (
        kafka is not None and "ce_id" in kafka.headers and kafka.headers["content-type"] == "application/json"
    )


@pytest.mark.parametrize(
    ("sql", "fmt"),
    [
        ("FORMAT CLOUDEVENTS", "cloudevents"),
        ("FORMAT cloudevents binary", "cloudevents-binary"),
        ("FORMAT DEBEZIUM", "debezium"),
        ("FORMAT JSON", "json"),
    ],
)
def test_sql_format_clause(sql: str, fmt: str) -> None:
    (stmt,) = parse(f"CREATE CHANGE DATA CAPTURE ON t TO WEBHOOK 'http://127.0.0.1:9/h' {sql}")
    assert stmt.to_config().format == fmt  # type: ignore[union-attr]


def test_format_refusals_name_what_is_wrong() -> None:
    with pytest.raises(SqlError, match="Kinesis records do not have"):
        parse("CREATE CHANGE DATA CAPTURE ON t TO KINESIS 's' REGION 'us-east-1' FORMAT CLOUDEVENTS BINARY")
    dest = {"type": "webhook", "address": "http://x/h", "options": {"batch_size": 5}}
    stream = {"name": "s", "tables": ["t"], "destination": dest, "format": "cloudevents-binary"}
    with pytest.raises(ConfigError, match=r"streams\[0\]\.format: .*one event per request"):
        config_from_dict({"streams": [stream]})
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.format"):
        config_from_dict({"webhooks": [{"url": "http://x/h", "format": "xml"}]})
    assert WebhookRegistration(url="http://x/h", format="heliosdb").format == "json"
