"""pytest plugin: a real Confluent-compatible Schema Registry (Apicurio Registry 2.6).

Session fixture ``schema_registry_url`` -> the Confluent-compatible API
(``http://127.0.0.1:PORT/apis/ccompat/v7``). Started lazily from Apicurio
Registry's Quarkus distribution on Maven Central
(``io.apicurio:apicurio-registry-app:<version>:zip:all``, in-memory storage),
fetched once with Maven into ``~/.cache/heliosdb-cdc/apicurio``. Needs Java 17+ and Maven.

* ``HELIOSDB_CDC_SCHEMA_REGISTRY_URL=http://...`` uses a registry you already run.
* With ``CI=true`` a registry that cannot be started is a test failure, never a
  skip; elsewhere the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from heliosdb_cdc._embedded import free_port

from . import in_ci

VERSION = os.environ.get("HELIOSDB_CDC_APICURIO_VERSION", "2.6.13.Final")
CACHE = Path(os.environ.get("HELIOSDB_CDC_CACHE", Path.home() / ".cache" / "heliosdb-cdc")) / "apicurio"
START_TIMEOUT_S = float(os.environ.get("HELIOSDB_CDC_SCHEMA_REGISTRY_START_TIMEOUT", "180"))
CCOMPAT = "/apis/ccompat/v7"


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"Schema Registry unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Schema Registry unavailable: {reason}")


def install_apicurio() -> tuple[Path | None, str]:
    """The directory holding ``apicurio-registry-app-*-runner.jar`` and ``lib/``, or None and why."""
    home = CACHE / VERSION
    if list(home.glob("apicurio-registry-app-*-runner.jar")):
        return home, "cached"
    if shutil.which("java") is None:
        return None, "java not found"
    if shutil.which("mvn") is None:
        return None, "mvn not found (needed to fetch Apicurio Registry from Maven Central)"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        try:
            p = subprocess.run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "dependency:copy",
                    f"-Dartifact=io.apicurio:apicurio-registry-app:{VERSION}:zip:all",
                    f"-DoutputDirectory={tmp}",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, "mvn dependency:copy timed out after 600s"
        archives = list(Path(tmp).glob("*.zip"))
        if p.returncode != 0 or not archives:
            return None, f"mvn dependency:copy failed: {(p.stdout + p.stderr)[-300:]}"
        unpacked = Path(tmp) / "x"
        with zipfile.ZipFile(archives[0]) as zf:
            zf.extractall(unpacked)
        shutil.rmtree(home, ignore_errors=True)
        unpacked.rename(home)
    return home, "installed"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("HELIOSDB_CDC_SCHEMA_REGISTRY_URL")
    if external:
        yield external.rstrip("/")
        return
    home, why = install_apicurio()
    if home is None:
        _unavailable(why)
    assert home is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}{CCOMPAT}"
    log_path = tmp_path_factory.mktemp("apicurio") / "registry.log"
    runner = next(home.glob("apicurio-registry-app-*-runner.jar"))
    cmd = [
        "java",
        "-Xmx384m",
        f"-Dquarkus.http.port={port}",
        "-Dquarkus.http.host=127.0.0.1",
        "-Dquarkus.log.level=WARN",
        "-jar",
        str(runner),
    ]
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None:
                _unavailable(f"Apicurio Registry exited: {log_path.read_text()[-800:]}")
            if time.monotonic() > deadline:
                _unavailable(f"Apicurio Registry not ready within {START_TIMEOUT_S}s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
