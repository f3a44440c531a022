"""A destination kind is one entry in the sink registry (sinks/_registry.py): register a
kind, and a stream names it in ``destination.type``; its events arrive through its sink."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliosdb_cdc import ConfigError, Destination, StreamConfig, WebhookServer, config_from_dict
from heliosdb_cdc.sinks import (
    MemorySink,
    Sink,
    SinkContext,
    build_sink,
    register_sink,
    sink_kinds,
    unregister_sink,
)
from tests.plugins.postgres import PgDatabase
from tests.test_e2e_webhook import make_config

BUILT: list[MemorySink] = []  # the sinks the test kind's factory made


def pigeon_sink_for(cfg: StreamConfig, ctx: SinkContext) -> tuple[Sink, str]:
    sink = MemorySink(cfg.name)
    BUILT.append(sink)
    return sink, f"pigeon://{cfg.destination.address}"


@pytest.fixture
def pigeon() -> Iterator[str]:
    register_sink("pigeon", pigeon_sink_for)
    yield "pigeon"
    unregister_sink("pigeon")
    BUILT.clear()


def test_built_in_kinds_and_an_unknown_one_named() -> None:
    assert sink_kinds() == ["webhook", "kafka", "kinesis", "memory"]
    bad = {"streams": [{"name": "s", "tables": ["t"], "destination": {"type": "pigeon", "address": "x"}}]}
    with pytest.raises(ConfigError) as err:
        config_from_dict(bad)
    assert "destination.type: Input should be 'webhook', 'kafka', 'kinesis' or 'memory'" in str(err.value)


def test_the_registry_builds_the_kind_the_stream_names(pigeon: str) -> None:
    cfg = StreamConfig(name="s", tables=["t"], destination=Destination(type="memory", address="m"))
    sink, endpoint = build_sink(cfg, SinkContext(config_from_dict({})))
    assert isinstance(sink, MemorySink) and endpoint == "memory://s"
    cfg = StreamConfig(name="p", tables=["t"], destination=Destination(type=pigeon, address="loft"))
    sink, endpoint = build_sink(cfg, SinkContext(config_from_dict({})))
    assert sink is BUILT[-1] and endpoint == "pigeon://loft"
    unregister_sink(pigeon)
    with pytest.raises(ConfigError, match="no sink for 'pigeon'"):
        build_sink(cfg, SinkContext(config_from_dict({})))


async def test_a_registered_kind_carries_a_stream(pigeon: str, pg_db: PgDatabase, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE birds (id int PRIMARY KEY, name text)")
    async with WebhookServer(make_config(pg_db, tmp_path)) as server:
        cfg = StreamConfig(
            name="coop", tables=["birds"], destination=Destination(type=pigeon, address="loft")
        )
        await server.create_stream(cfg, origin="api")
        assert server.stream_status("coop")["destination"] == "pigeon loft"
        pg_db.execute("INSERT INTO birds VALUES (1, 'rock dove')")
        sink = BUILT[-1]
        async with asyncio.timeout(20):
            while not sink.received:
                await sink.changed.wait()
                sink.changed.clear()
        assert [(e.table, e.operation) for e in sink.received] == [("birds", "INSERT")]
        assert server.runners["coop"].endpoint == "pigeon://loft"
