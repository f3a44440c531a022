"""pytest plugin: a real single-node Apache Kafka broker (KRaft) for the tests.

Session fixture ``kafka_bootstrap`` -> ``"127.0.0.1:PORT"``. Started lazily, the
first time a test asks for it, from Apache Kafka's own jars that
``scripts/kafka-jars.sh`` fetches from Maven Central with Maven (cached under
``~/.cache/heliosdb-cdc``). Needs Java 17+ and Maven.

* ``HELIOSDB_CDC_KAFKA_BOOTSTRAP=host:port`` uses a broker you already run.
* With ``CI=true`` a broker that cannot be started is a test failure, never a
  skip; elsewhere the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins import in_ci

ROOT = Path(__file__).resolve().parents[2]
JARS_SCRIPT = ROOT / "scripts" / "kafka-jars.sh"
START_TIMEOUT_S = float(os.environ.get("HELIOSDB_CDC_KAFKA_START_TIMEOUT", "180"))


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"Kafka broker unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Kafka broker unavailable: {reason}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_libs() -> Path:
    """The directory of Kafka's jars (fetched once with Maven)."""
    if shutil.which("java") is None:
        raise RuntimeError("java is not installed (scripts/install-system-deps.sh installs it)")
    proc = subprocess.run(
        ["bash", str(JARS_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{JARS_SCRIPT.name} failed: {proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


_LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


def _server_properties(data: Path, port: int, cport: int) -> str:
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
transaction.max.timeout.ms=900000
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=4194304
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
"""


class KafkaBroker:
    """One broker process; ``start()`` blocks until it answers metadata requests."""

    def __init__(self, libs: Path, workdir: Path) -> None:
        self.libs = libs
        self.workdir = workdir
        self.port = free_port()
        self.cport = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "broker.log"
        self.started_in: float | None = None

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xmx512m",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def start(self) -> None:
        t0 = time.monotonic()
        data = self.workdir / "data"
        props = self.workdir / "server.properties"
        (self.workdir / "log4j.properties").write_text(_LOG4J)
        props.write_text(_server_properties(data, self.port, self.cport))
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid(): "-..." reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(props)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready(t0)
        self.started_in = time.monotonic() - t0

    def _wait_ready(self, t0: float) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = t0 + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka broker exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers:
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"kafka broker not ready after {START_TIMEOUT_S}s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running Kafka broker (started on first use, stopped at the end)."""
    external = os.environ.get("HELIOSDB_CDC_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    try:
        libs = kafka_libs()
    except Exception as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable always raises
    workdir = Path(tempfile.mkdtemp(prefix="heliosdb-kafka-"))
    broker = KafkaBroker(libs, workdir)
    try:
        broker.start()
    except Exception as exc:
        broker.stop()
        _unavailable(str(exc))
    print(f"\nkafka broker {broker.bootstrap} ready in {broker.started_in:.1f}s")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
