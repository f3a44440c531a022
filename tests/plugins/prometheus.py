"""Monitoring test helpers: read the service's /metrics, and a real Prometheus server.

Not registered in ``addopts``: a test module imports what it uses, e.g.
``from tests.plugins.prometheus import prometheus_server  # noqa: F401``.

``prometheus_server`` yields a :class:`PrometheusLauncher`; ``await launcher.start(target)``
runs the Debian ``prometheus`` binary on a free port with a generated configuration that
scrapes ``http://<target>/metrics`` every second and evaluates a copy of
``deploy/prometheus/alerts.yml`` every second, each ``for:`` replaced by a short duration.
Storage is a temporary directory; the process is stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from heliosdb_cdc import Config
from heliosdb_cdc._embedded import free_port
from tests.plugins import in_ci

REPO = Path(__file__).resolve().parents[2]
ALERTS_FILE = REPO / "deploy" / "prometheus" / "alerts.yml"


# -- the service's /metrics ----------------------------------------------------------------
def monitoring_config(db: Any, tmp_path: Path, **extra: Any) -> Config:
    """A service configuration for ``db`` with its HTTP API on a free loopback port."""
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "source": {"dsn": db.dsn, "slot": "heliosdb_cdc", "publication": "heliosdb_cdc"},
        "webhook": {"bind_address": f"127.0.0.1:{free_port()}", "retry": {"initial_delay_ms": 10}},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config.model_validate(data)


async def fetch_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, f"GET {url}: HTTP {resp.status}"
        return await resp.text()


async def fetch_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, f"GET {url}: HTTP {resp.status}"
        return await resp.json()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Exposition:
    """A parsed Prometheus text exposition: ``# TYPE`` lines and samples."""

    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        types: dict[str, str] = {}
        samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
            elif line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m, f"unparsable exposition line: {line!r}"
                labels = dict(_LABEL.findall(m.group(3) or ""))
                samples.append((m.group(1), labels, float(m.group(4))))
        return cls(types, samples)

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of ``name`` whose labels include ``labels`` (None when absent)."""
        found = [v for n, ls, v in self.samples if n == name and labels.items() <= ls.items()]
        assert len(found) <= 1, f"{name}{labels}: {len(found)} samples match"
        return found[0] if found else None

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name and labels.items() <= ls.items()]

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


async def scrape(base_url: str) -> Exposition:
    return Exposition.parse(await fetch_text(f"{base_url}/metrics"))


async def wait_until(check: Any, timeout: float = 20.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``await check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last {last!r}")


# -- a real Prometheus -------------------------------------------------------------------------
def shortened_rules(source: Path, dest: Path, for_: str) -> Path:
    """A copy of a rules file with every ``for:`` set to ``for_`` (tests cannot wait 5 minutes)."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


class PrometheusServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, workdir: Path) -> None:
        self.proc = proc
        self.url = url
        self.workdir = workdir

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}{path}", params=params) as r:
            data = await r.json()
        assert data.get("status") == "success", f"{path} {params}: {data}"
        return data["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query through /api/v1/query: the result vector."""
        data = await self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        data = await self.api("/api/v1/alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts

    async def wait_for_target_up(self, timeout: float = 15.0) -> None:
        async def up() -> bool:
            data = await self.api("/api/v1/targets")
            return any(t["health"] == "up" for t in data["activeTargets"])

        await wait_until(up, timeout, 0.2, "the scrape target to be up")

    def log_tail(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-4000:]


class PrometheusLauncher:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[PrometheusServer] = []

    async def start(
        self, target: str, *, rules: Path | None = ALERTS_FILE, for_: str = "2s"
    ) -> PrometheusServer:
        """Run Prometheus scraping ``http://target/metrics``; wait until it is ready."""
        binary = shutil.which("prometheus")
        if binary is None:
            if in_ci():
                pytest.fail("the prometheus binary is not installed (scripts/install-system-deps.sh)")
            pytest.skip("the prometheus binary is not installed")
        work = self.tmp / f"prometheus{len(self.servers)}"
        (work / "data").mkdir(parents=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "heliosdb-cdc",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        if rules is not None:
            config["rule_files"] = [str(shortened_rules(rules, work / "alerts.test.yml", for_))]
        (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        logf = (work / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        logf.close()
        server = PrometheusServer(proc, f"http://127.0.0.1:{port}", work)
        self.servers.append(server)

        async def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{server.url}/-/ready") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 20.0, 0.1, "prometheus to be ready")
        return server

    def stop(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.proc.terminate()
                try:
                    server.proc.wait(10)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait()


@pytest.fixture
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusLauncher]:
    launcher = PrometheusLauncher(tmp_path_factory.mktemp("prometheus"))
    yield launcher
    launcher.stop()
