"""pytest plugin: a moto server standing in for AWS Kinesis.

Session fixture ``kinesis_endpoint`` -> ``"http://127.0.0.1:PORT"``, started
lazily on first use (``moto_server`` from ``moto[server]``). It also sets fake
AWS credentials in the environment (only where none are set) so the standard
credential chain finds some. ``HELIOSDB_CDC_KINESIS_ENDPOINT`` uses an endpoint
you already run (LocalStack...). With ``CI=true`` a server that cannot be started
is a test failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins import in_ci

_FAKE_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"moto server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"moto server unavailable: {reason}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    exe = shutil.which("moto_server")
    if exe:
        return [exe, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def kinesis_endpoint() -> Iterator[str]:
    """Endpoint URL of a moto server (started on first use, stopped at the end)."""
    for k, v in _FAKE_CREDS.items():
        os.environ.setdefault(k, v)
    external = os.environ.get("HELIOSDB_CDC_KINESIS_ENDPOINT")
    if external:
        yield external
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logdir = Path(tempfile.mkdtemp(prefix="heliosdb-moto-"))
    log = (logdir / "moto.log").open("wb")
    try:
        proc = subprocess.Popen(
            _moto_command(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        _unavailable(str(exc))
        raise
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                ready = True
                break
        except OSError:
            time.sleep(0.2)
    if not ready:
        proc.kill()
        proc.wait()
        tail = (logdir / "moto.log").read_text(errors="replace")[-2000:]
        _unavailable(f"moto_server did not answer on {url}: {tail}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(logdir, ignore_errors=True)
