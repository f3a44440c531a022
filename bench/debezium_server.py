"""Debezium Server 2.7 from Maven Central: fetched once, run with its HTTP sink.

Shared by the benchmark (``bench/run.py``, scenario ``debezium``) and the tests
that compare ``format: debezium`` with the real thing (tests/plugins/debezium.py).
Needs Java 17+ and Maven (``mvn dependency:copy`` fetches the distribution).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DEBEZIUM_VERSION = "2.7.3.Final"
CACHE = Path(os.environ.get("HELIOSDB_CDC_BENCH_CACHE", Path.home() / ".cache" / "heliosdb-cdc-bench"))


def install_debezium(cache: Path = CACHE, timeout: float = 300) -> tuple[Path | None, str]:
    """The unpacked distribution, or None and why it could not be installed."""
    base = cache / "debezium"
    dist = base / "debezium-server"
    if (dist / "lib").is_dir() and list(dist.glob("debezium-server-*runner.jar")):
        return dist, "cached"
    if shutil.which("java") is None:
        return None, "java not found"
    if shutil.which("mvn") is None:
        return None, "mvn not found (needed to fetch the distribution from Maven Central)"
    base.mkdir(parents=True, exist_ok=True)
    tar = base / f"debezium-server-dist-{DEBEZIUM_VERSION}.tar.gz"
    if not tar.exists():
        try:
            p = subprocess.run(
                [
                    "mvn",
                    "-q",
                    "-B",
                    "dependency:copy",
                    f"-Dartifact=io.debezium:debezium-server-dist:{DEBEZIUM_VERSION}:tar.gz",
                    f"-DoutputDirectory={base}",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, f"mvn dependency:copy timed out after {timeout}s"
        if p.returncode != 0 or not tar.exists():
            return None, f"mvn dependency:copy failed: {(p.stdout + p.stderr)[-300:]}"
    p2 = subprocess.run(
        ["tar", "xzf", str(tar), "-C", str(base)], capture_output=True, text=True, check=False
    )
    if p2.returncode != 0:
        return None, f"tar failed: {p2.stderr[-300:]}"
    return dist, "installed"


def server_command(dist: Path, conf_dir: Path, heap: str = "-Xmx1g") -> list[str]:
    """``java ... io.debezium.server.Main`` with ``conf_dir/application.properties``."""
    runner = next(dist.glob("debezium-server-*runner.jar"))
    return ["java", heap, "-cp", f"{runner}:{conf_dir}:{dist / 'lib'}/*", "io.debezium.server.Main"]
