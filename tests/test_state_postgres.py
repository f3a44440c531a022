"""``state: {url: postgresql://...}``: the configuration, and the real service keeping its
state in PostgreSQL through kill -9 (every committed change arrives, in order per row)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from heliosdb_cdc import ConfigError, config_from_dict
from heliosdb_cdc._embedded import free_port
from heliosdb_cdc.store import PostgresStore, SQLiteStore, open_store
from tests.plugins.postgres import PgDatabase
from tests.plugins.receiver import Receiver
from tests.test_chaos_kill import check_deliveries, start_service, wait_healthy, write_workload


def _error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    return exc.value


def test_state_config_defaults_to_sqlite(tmp_path: Path) -> None:
    cfg = config_from_dict({"state_dir": str(tmp_path)})
    assert cfg.state.url is None and cfg.state.schema_name == "heliosdb_cdc"
    store = open_store(cfg)
    assert isinstance(store, SQLiteStore) and store.path == tmp_path / "state.db"
    store.close()


def test_state_url_from_the_environment_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_PASSWORD", "pa55-w0rd")
    cfg = config_from_dict(
        {"state": {"url": "postgresql://cdc:${STATE_PASSWORD}@db.internal/state", "schema": "cdc_a"}}
    )
    assert cfg.state.url is not None
    assert cfg.state.url.get_secret_value() == "postgresql://cdc:pa55-w0rd@db.internal/state"
    assert cfg.state.schema_name == "cdc_a"
    assert "pa55-w0rd" not in repr(cfg) and "pa55-w0rd" not in str(cfg.model_dump())


@pytest.mark.parametrize(
    ("state", "path", "message"),
    [
        ({"url": "mysql://db/state"}, "state.url", "must be a postgresql:// URL"),
        ({"url": "/var/lib/state.db"}, "state.url", "must be a postgresql:// URL"),
        ({"url": "postgresql://db/x", "schema": "Bad-Name"}, "state.schema", "lowercase identifier"),
        ({"uri": "postgresql://db/x"}, "state.uri", ""),
        ("postgresql://db/x", "state", ""),
    ],
)
def test_bad_state_config_names_the_key(state: Any, path: str, message: str) -> None:
    e = _error({"state": state})
    assert e.context["key_path"] == path
    assert message in str(e)


def test_missing_env_var_in_state_url_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_STATE_PW", raising=False)
    e = _error({"state": {"url": "postgresql://u:${NO_SUCH_STATE_PW}@h/d"}})
    assert e.context["key_path"] == "state.url" and "NO_SUCH_STATE_PW" in str(e)


def test_open_store_uses_the_url(pg_db: PgDatabase, tmp_path: Path) -> None:
    cfg = config_from_dict({"state_dir": str(tmp_path), "state": {"url": pg_db.dsn, "schema": "cdc_x"}})
    store = open_store(cfg)
    assert isinstance(store, PostgresStore) and store.schema == "cdc_x"
    store.close()
    assert not (tmp_path / "state.db").exists()


@pytest.mark.chaos
async def test_service_with_state_in_postgres_survives_kill_9(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State in a schema of the source database itself; the URL comes from the environment."""
    pg_db.execute("CREATE TABLE items (id serial PRIMARY KEY, v int, note text)")
    monkeypatch.setenv("TEST_STATE_URL", pg_db.dsn)
    port = free_port()
    cfg: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "state": {"url": "${TEST_STATE_URL}", "schema": "cdc_state"},
        "source": {"dsn": pg_db.dsn},
        "cdc": {"checkpoint_interval": 50},
        "webhook": {"bind_address": f"127.0.0.1:{port}", "worker_pool_size": 8},
        "webhooks": [{"url": receiver.url, "secret": "your-webhook-secret", "tables": ["items"]}],
    }
    config_path = tmp_path / "heliosdb-cdc.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = tmp_path / "service.log"
    api = f"http://127.0.0.1:{port}"

    proc = start_service(config_path, log_path)
    await wait_healthy(api, proc)
    writer = asyncio.create_task(asyncio.to_thread(write_workload, pg_db.dsn, 1500, 11))
    cursors: list[int] = []
    try:
        for _ in range(2):
            # kill once some deliveries were checkpointed in PostgreSQL
            for _ in range(300):
                rows = pg_db.execute("SELECT seq FROM cdc_state.cursors")
                if rows and int(rows[0][0]) > (cursors[-1] if cursors else 0):  # type: ignore[call-overload]
                    break
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            cursors.append(int(pg_db.execute("SELECT seq FROM cdc_state.cursors")[0][0]))  # type: ignore[call-overload]
            proc = start_service(config_path, log_path)
            await wait_healthy(api, proc)
        written = await writer
        for _ in range(600):
            if len({e["event_id"] for e in receiver.events}) >= written:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything more would be a duplicate
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    assert receiver.bad_signatures == 0
    check_deliveries(receiver.events, written)
    # the checkpoints went to PostgreSQL, and the restarts resumed from them
    assert 0 < cursors[0] < cursors[1], cursors
    assert not (tmp_path / "state" / "state.db").exists()
    resent = len(receiver.events) - written
    assert resent < written, f"{resent} repeats: a restart did not resume from its checkpoint"
    names = {r[0] for r in pg_db.execute("SELECT name FROM cdc_state.streams")}
    assert len(names) == 1


def test_deployment_guide_examples_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    for var in ("CDC_PASSWORD", "STATE_PASSWORD", "WEBHOOK_SECRET", "ADMIN_TOKEN"):
        monkeypatch.setenv(var, "x")
    text = (Path(__file__).parents[1] / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    configs = [config_from_dict(yaml.safe_load(b)) for b in blocks]  # every example is valid
    sqlite, postgres = configs[0], configs[1]
    assert sqlite.state.url is None
    assert postgres.state.url is not None and postgres.state.schema_name == "heliosdb_cdc"
