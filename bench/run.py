"""heliosdb-cdc benchmark suite: one command, its own PostgreSQL, receivers and brokers.

    python bench/run.py [--quick] [--scenarios raw,null,...] [--workloads bulk,oltp] [--json out.json]

Scenarios (see BENCHMARKS.md):

  receiver       calibration: POSTs/s that bench/receiver.py takes from a raw HTTP load generator
  raw            bare pgoutput consumer (psycopg2, decode=False): the denominator
  null           WAL -> events -> memory sink, service in-process (bench/null_service.py)
  null_pure      the same on the pure-Python codec (HELIOSDB_CDC_PURE_PYTHON=1): before/after
  webhook1       service subprocess -> one event per POST -> receiver process
  webhook_batch  same with webhook.batch_size: 100 (a JSON array per POST)
  webhook1_w1, webhook1_w2, webhook1_w4
                 webhook1 with delivery.workers: 1, 2, 4 (worker processes; the scaling of
                 one-event-per-POST delivery); --workers N adds webhook1 with N workers
  latency        fixed rates (1,000/s; and 5,000/s without --quick): commit->receipt p50/p99/p999
  backlog        N changes behind a dead endpoint (503), then recovery: peak RSS, drain rate
  streams        control plane at scale: --streams (1,000) webhook streams created over REST
                 (total and last-100 create time), idle CPU of the service, one DELETE, and one
                 INSERT fanned out to every stream (time until all deliveries arrive)
  kafka          WAL -> Kafka (JSON), acknowledged (when a broker can be started here); also
                 kafka_avro (FORMAT AVRO) and kafka_avro_fastavro (the same, every body through
                 fastavro: HELIOSDB_CDC_AVRO_FASTAVRO=1)
  debezium       Debezium Server 2.7.3 (HTTP sink) on the webhook1 workload + latency at 1,000/s
  pgstream       pgstream (wal2json -> webhook notifier), same workloads and receiver, when
                 it can be found or built (bench/pgstream_peer.py) and wal2json is installed

Throughput workloads: ``bulk`` (10,000-row transactions) and ``oltp`` (1-10-row
transactions from 4 pgbench clients) are written while the consumer runs: rate =
changes / (receipt of the last change - commit time of the first), commit times from
PostgreSQL (track_commit_timestamp), receipt times from the consumer. ``catchup`` writes
the bulk workload first, then starts the consumer on its slot: rate = changes / (last
receipt - first receipt), the consumer's capacity with no writer competing for the CPU.
Ratios are to ``raw`` on the same workload in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import debezium_server  # noqa: E402
import pgstream_peer  # noqa: E402
import workload as wl  # noqa: E402

from heliosdb_cdc._embedded import EmbeddedPostgres, free_port  # noqa: E402

CACHE = Path(os.environ.get("HELIOSDB_CDC_BENCH_CACHE", Path.home() / ".cache" / "heliosdb-cdc-bench"))
ALL = [
    "receiver",
    "raw",
    "null",
    "null_pure",
    "webhook1",
    "webhook_batch",
    "webhook10",
    "webhook1_w1",
    "webhook1_w2",
    "webhook1_w4",
    "latency",
    "backlog",
    "streams",
    "kafka",
    "debezium",
    "pgstream",
]
THROUGHPUT = [
    "raw",
    "null",
    "null_pure",
    "webhook1",
    "webhook_batch",
    "webhook10",
    "kafka",
    "kafka_avro",
    "kafka_avro_fastavro",
    "debezium",
    "pgstream",
]
SECRET = "bench-secret"
INSTALL_TIMEOUT = 300
RECEIVER_IMPL = "raw"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------------
def spawn(
    cmd: list[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    f = open(log_path, "ab")
    return subprocess.Popen(
        cmd,
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process and of each live child, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[str(pid)] = round((int(fields[11]) + int(fields[12])) / tick, 2)
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                out.update(cpu_by_process(int(child)))
    except (OSError, ValueError, IndexError):
        pass
    return out


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set (VmHWM) of a process plus its live descendants (heliosdb-cdc's
    decode worker, a launcher script's JVM), kB: the sum of peaks, an upper bound."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total = int(line.split()[1])
                    break
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(vm_hwm_kb(int(child)) for child in f.read().split())
    except OSError:
        pass
    return total


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_json(url: str, method: str = "GET", timeout: float = 5) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def http_post_json(url: str, data: Any, timeout: float = 60) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, method="POST", data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat: utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Receiver:
    """bench/receiver.py in its own process."""

    def __init__(self, workdir: Path, status: int = 200, latency: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            str(BENCH / "receiver.py"),
            "--port",
            str(self.port),
            "--status",
            str(status),
            "--impl",
            RECEIVER_IMPL,
        ]
        if latency:
            cmd.append("--latency")
        self.proc = spawn(cmd, workdir / f"receiver-{self.port}.log")

        def up() -> bool:
            try:
                http_json(self.base + "/_stats", timeout=1)
                return True
            except OSError:
                return False

        wait_until(up, 30, "the receiver")

    def stats(self) -> dict[str, Any]:
        return http_json(self.base + "/_stats")

    def mode(self, **kw: Any) -> None:
        q = "&".join(f"{k}={v}" for k, v in kw.items())
        http_json(f"{self.base}/_mode?{q}", "POST")

    def wait_count(self, n: int, timeout: float) -> dict[str, Any]:
        return wait_until(
            lambda: (s := self.stats())["count"] >= n and s, timeout, f"{n} events at the receiver", 0.1
        )

    def close(self) -> None:
        stop(self.proc)


# -- the benchmark --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.decode_worker: bool = args.decode_worker
        self.workdir = Path(tempfile.mkdtemp(prefix="heliosdb-bench-"))
        os.chmod(self.workdir, 0o755)
        self.n_bulk = args.changes or (50_000 if self.quick else 200_000)
        self.n_oltp = args.oltp_changes or (20_000 if self.quick else 100_000)
        self.n_backlog = args.backlog_changes or (50_000 if self.quick else 200_000)
        self.n_streams = args.streams or (200 if self.quick else 1000)
        self.create_budget = args.create_budget
        self.latency_secs = 10 if self.quick else 20
        self.rates = [1000] if self.quick else [1000, 5000]
        self.pg = EmbeddedPostgres(
            self.workdir / "pg",
            extra_settings={
                "track_commit_timestamp": "on",
                "max_wal_size": "4GB",
                "checkpoint_timeout": "30min",
                "max_connections": "200",
            },
        )
        self.results: list[dict[str, Any]] = []
        self.settings: dict[str, str] = {}
        self.timeout = 900.0

    # -- PostgreSQL --------------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return self.pg.dsn

    def sql(self, q: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(q, args)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def start_pg(self) -> None:
        self.pg.start()
        for name in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_level",
            "shared_buffers",
            "track_commit_timestamp",
            "logical_decoding_work_mem",
        ):
            self.settings[name] = str(self.sql(f"SHOW {name}")[0][0])
        wl.create_table(self.dsn)
        log(
            f"PostgreSQL {self.settings['server_version']} on {self.dsn}, fsync={self.settings['fsync']}, "
            f"synchronous_commit={self.settings['synchronous_commit']}"
        )

    def slot_active(self, slot: str) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name=%s AND active", (slot,)))

    def drop_slots(self) -> None:
        wait_until(
            lambda: not self.sql("SELECT 1 FROM pg_replication_slots WHERE active"), 30, "slots to go idle"
        )
        self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")

    def prepare(self) -> None:
        """Before a scenario: no slot, an empty table."""
        self.drop_slots()
        wl.reset_table(self.dsn)
        self.sql("CHECKPOINT")

    def write(self, workload: str, n: int) -> dict[str, Any]:
        w = wl.run_bulk(self.dsn, n) if workload == "bulk" else wl.run_oltp(self.pg.bindir, self.dsn, n)
        total = wl.count_rows(self.dsn)
        first, last = wl.commit_span(self.dsn)
        return {**w, "changes": total, "first_commit": first, "last_commit": last}

    def n_for(self, workload: str) -> int:
        return self.n_bulk if workload == "bulk" else self.n_oltp

    def measure(
        self, workload: str, progress: Callable[[], dict[str, Any]], w: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the workload (unless already written: catch-up), wait for the consumer, compute the rate.

        live (bulk, oltp): changes / (receipt of the last change - commit of the first);
        catchup (a bulk backlog written before the consumer starts): changes / (last receipt - first receipt).
        """
        if w is None:
            w = self.write(workload, self.n_for(workload))
        n = w["changes"]
        st = wait_until(
            lambda: (s := progress()).get("count", 0) >= n and s, self.timeout, f"{n} changes", 0.1
        )
        if workload == "catchup":
            secs = st["last_recv"] - st["first_recv"]
            return {
                "changes": n,
                "secs": round(secs, 3),
                "rate": round(n / secs, 1),
                "count_seen": st["count"],
            }
        secs = st["last_recv"] - w["first_commit"]
        return {
            "changes": n,
            "secs": round(secs, 3),
            "rate": round(n / secs, 1),
            "write_rate": round(n / w["write_secs"], 1),
            "tail_ms": round((st["last_recv"] - w["last_commit"]) * 1000, 1),
            "count_seen": st["count"],
        }

    def throughput(
        self,
        workload: str,
        slot: str,
        start: Callable[
            [], tuple[Callable[[], None], Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]
        ],
    ) -> dict[str, Any]:
        """One throughput run: ``start()`` -> (stop, progress, extra) of a consumer of ``slot``."""
        self.prepare()
        w = None
        if workload == "catchup":
            self.ensure_slot(slot)
            w = self.write("bulk", self.n_bulk)
        stop_fn, progress, extra = start()
        try:
            m = self.measure(workload, progress, w)
            m.update(extra())
        finally:
            stop_fn()
        return m

    def ensure_slot(self, slot: str) -> None:
        """A publication and a pgoutput slot named ``slot`` (both), before any change is written."""
        self.sql(f"DROP PUBLICATION IF EXISTS {slot}")
        self.sql(f"CREATE PUBLICATION {slot} FOR TABLE {wl.TABLE}")
        if not self.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name=%s", (slot,)):
            self.sql("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    def add(self, row: dict[str, Any]) -> None:
        self.results.append(row)
        shown = {k: v for k, v in row.items() if k not in ("scenario", "workload")}
        log(f"{row['scenario']:<14} {row.get('workload', ''):<6} {shown}")

    # -- scenarios -------------------------------------------------------------------------------------
    def sc_raw(self, workload: str) -> None:
        def start() -> Any:
            self.ensure_slot("bench_raw")
            status = self.workdir / "raw.status"
            status.unlink(missing_ok=True)
            proc = spawn(
                [
                    sys.executable,
                    str(BENCH / "raw_consumer.py"),
                    self.dsn,
                    "bench_raw",
                    "bench_raw",
                    str(status),
                ],
                self.workdir / "raw.log",
            )
            wait_until(
                lambda: read_status(status).get("ready") and self.slot_active("bench_raw"), 30, "raw consumer"
            )
            return (lambda: stop(proc)), (lambda: read_status(status)), dict

        self.add({"scenario": "raw", "workload": workload, **self.throughput(workload, "bench_raw", start)})

    def sc_null_pure(self, workload: str) -> None:
        self.sc_null(workload, pure=True)

    def sc_null(self, workload: str, pure: bool = False) -> None:
        def start() -> Any:
            status = self.workdir / "null.status"
            status.unlink(missing_ok=True)
            state = self.workdir / f"null-{workload}"
            shutil.rmtree(state, ignore_errors=True)
            proc = spawn(
                [sys.executable, str(BENCH / "null_service.py"), self.dsn, str(state), str(status)]
                + (["--decode-worker"] if self.decode_worker else []),
                self.workdir / "null.log",
                env={"HELIOSDB_CDC_PURE_PYTHON": "1"} if pure else {"HELIOSDB_CDC_PURE_PYTHON": ""},
            )
            wait_until(
                lambda: read_status(status).get("ready") and self.slot_active("bench_null"),
                60,
                "null service",
            )

            def extra() -> dict[str, Any]:
                st = read_status(status)
                cpu_us = st.get("cpu_s", 0.0) * 1e6 / max(st.get("count", 0), 1)
                return {
                    "peak_rss_mb": round(st.get("rss_hwm_kb", 0) / 1024, 1),
                    "cpu_us_per_change": round(cpu_us, 2),
                    "note": f"codec {st.get('codec', '?')}; CPU {cpu_us:.1f} µs/change",
                }

            return (lambda: stop(proc)), (lambda: read_status(status)), extra

        name = "null_pure" if pure else "null"
        self.add({"scenario": name, "workload": workload, **self.throughput(workload, "bench_null", start)})

    def service_config(
        self,
        name: str,
        url: str,
        webhook: dict[str, Any] | None = None,
        streams: list[dict[str, Any]] | None = None,
        endpoints: int = 1,
        workers: int = 0,
    ) -> tuple[Path, str]:
        port = free_port()
        state = self.workdir / f"svc-{name}"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        cfg: dict[str, Any] = {
            "state_dir": str(state / "state"),
            "source": {"dsn": self.dsn, "slot": "bench_svc", "publication": "bench_svc"},
            "webhook": {"bind_address": f"127.0.0.1:{port}", **(webhook or {})},
            "logging": {"level": "WARNING"},
            "cdc": {"decode_worker": self.decode_worker},
        }
        if workers:
            cfg["delivery"] = {"workers": workers}
        if streams is not None:
            cfg["streams"] = streams
        else:
            urls = [url] if endpoints == 1 else [f"{url}{i}" for i in range(endpoints)]
            cfg["webhooks"] = [{"url": u, "secret": SECRET, "tables": [wl.TABLE]} for u in urls]
        path = state / "heliosdb-cdc.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path, f"http://127.0.0.1:{port}"

    def start_service(
        self, cfg: Path, api: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        exe = shutil.which("heliosdb-cdc")
        cmd = (
            [exe, "run", "-c", str(cfg)]
            if exe
            else [sys.executable, "-m", "heliosdb_cdc.cli", "run", "-c", str(cfg)]
        )
        proc = spawn(cmd, cfg.parent / "service.log", env=env)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"service exited with {proc.returncode}: "
                    f"{(cfg.parent / 'service.log').read_text()[-1500:]}"
                )
            try:
                http_json(api + "/health", timeout=1)
            except OSError:
                return False
            return self.slot_active("bench_svc")

        wait_until(healthy, 60, "the service")
        return proc

    def sc_webhook(self, workload: str, batch: int, endpoints: int = 1, workers: int = 0) -> None:
        """One event per POST (``batch`` 1) or batched; ``endpoints`` webhooks on the table,
        each a different URL of the same receiver: every change is delivered that many times,
        and the rate counts changes delivered to all of them. ``workers``: delivery.workers."""
        name = "webhook_batch" if batch > 1 else ("webhook1" if endpoints == 1 else f"webhook{endpoints}")
        if workers:
            name += f"_w{workers}"
        rec = Receiver(self.workdir)

        def progress() -> dict[str, Any]:
            s = rec.stats()
            return {**s, "count": s["count"] // endpoints}

        def start() -> Any:
            cfg, api = self.service_config(
                f"{name}-{workload}", rec.url, {"batch_size": batch}, endpoints=endpoints, workers=workers
            )
            proc = self.start_service(cfg, api)

            def extra() -> dict[str, Any]:
                row = {
                    "requests": rec.stats()["requests"],
                    "peak_rss_mb": round(vm_hwm_kb(proc.pid) / 1024, 1),
                }
                if workers:  # where the CPU went: the service, then each worker; the receiver
                    row["cpu_secs"] = list(cpu_by_process(proc.pid).values())
                    row["receiver_cpu_secs"] = cpu_by_process(rec.proc.pid).get(str(rec.proc.pid))
                return row

            return (lambda: stop(proc)), progress, extra

        try:
            m = self.throughput(workload, "bench_svc", start)
        finally:
            rec.close()
        row = {"scenario": name, "workload": workload, "batch_size": batch, **m}
        if workers:
            row["workers"] = workers
        if endpoints > 1:
            row["note"] = f"{endpoints} endpoints: {endpoints} deliveries per change"
        self.add(row)

    def sc_receiver(self) -> None:
        """Calibration: the receiver's capacity for one-event POSTs (bench/loadgen.py, its own process)."""
        n = 10_000 if self.quick else 30_000
        rec = Receiver(self.workdir)
        try:
            subprocess.run(
                [sys.executable, str(BENCH / "loadgen.py"), rec.url, str(n), "64"],
                check=True,
                timeout=600,
                capture_output=True,
            )
            s = rec.stats()
        finally:
            rec.close()
        secs = s["last_recv"] - s["first_recv"]
        self.add(
            {
                "scenario": "receiver",
                "workload": "POSTs",
                "changes": s["count"],
                "secs": round(secs, 3),
                "rate": round(s["count"] / secs, 1),
                "note": "calibration: raw HTTP load generator (bench/loadgen.py) -> receiver, 64 connections",
            }
        )

    def sc_latency(self) -> None:
        for rate in self.rates:
            self.prepare()
            rec = Receiver(self.workdir, latency=True)
            proc = None
            try:
                cfg, api = self.service_config(f"latency-{rate}", rec.url)
                proc = self.start_service(cfg, api)
                self.add(self._latency_run("latency", rate, rec))
            finally:
                stop(proc)
                rec.close()

    def _latency_run(self, scenario: str, rate: int, rec: Receiver) -> dict[str, Any]:
        w = wl.run_rate(self.pg.bindir, self.dsn, rate, self.latency_secs)
        n = wl.count_rows(self.dsn)
        s = rec.wait_count(n, 120)
        time.sleep(0.3)
        s = rec.stats()
        lat = s.get("latency_ms", {})
        first_delay = round((s["first_recv"] - s["min_commit"]) * 1000, 1) if s.get("min_commit") else None
        return {
            "first_event_ms": first_delay,
            "scenario": scenario,
            "workload": f"oltp@{rate}/s",
            "changes": n,
            "achieved_rate": round(n / w["write_secs"], 1),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "p999_ms": lat.get("p999"),
            "max_ms": lat.get("max"),
        }

    def sc_backlog(self) -> None:
        self.prepare()
        rec = Receiver(self.workdir, status=503)
        proc = None
        try:
            cfg, api = self.service_config(
                "backlog",
                rec.url,
                {
                    "retry": {"max_attempts": 1000, "initial_delay_ms": 100, "max_delay_ms": 1000},
                    "circuit_breaker": {"failure_threshold": 5, "timeout_secs": 1, "success_threshold": 1},
                },
            )
            proc = self.start_service(cfg, api)
            rss_idle = vm_hwm_kb(proc.pid)
            w = self.write("bulk", self.n_backlog)
            n = w["changes"]
            end_lsn = self.sql("SELECT pg_current_wal_lsn()")[0][0]
            # everything captured into the local log (the slot confirmed past the last commit)
            wait_until(
                lambda: self.sql(
                    "SELECT 1 FROM pg_replication_slots "
                    "WHERE slot_name='bench_svc' AND confirmed_flush_lsn >= %s",
                    (end_lsn,),
                ),
                self.timeout,
                "the backlog to be captured",
                0.2,
            )
            captured_at = time.time()
            time.sleep(3)  # retries and the open breaker against the dead endpoint
            rss_backlog = vm_hwm_kb(proc.pid)
            refused = rec.stats()["refused"]
            rec.mode(status=200)
            t_recover = time.time()
            s = rec.wait_count(n, self.timeout)
            drain = s["last_recv"] - t_recover
            self.add(
                {
                    "scenario": "backlog",
                    "workload": "bulk",
                    "changes": n,
                    "capture_rate": round(n / (captured_at - w["first_commit"]), 1),
                    "drain_secs": round(drain, 2),
                    "drain_rate": round(n / drain, 1),
                    "rss_idle_mb": round(rss_idle / 1024, 1),
                    "rss_backlog_mb": round(rss_backlog / 1024, 1),
                    "peak_rss_mb": round(vm_hwm_kb(proc.pid) / 1024, 1),
                    "refused_requests": refused,
                    "delivered_events": s["count"],
                }
            )
        finally:
            stop(proc)
            rec.close()

    def sc_streams(self) -> None:
        """Control plane at scale: ``n`` webhook streams on one table, each to its own URL of
        one receiver. Create time (total, first and last 100), idle CPU over 10 s, one
        DELETE, and one INSERT fanned out to all of them (commit -> last delivery)."""
        self.prepare()
        n = self.n_streams
        rec = Receiver(self.workdir)
        proc = None
        try:
            cfg, api = self.service_config("streams", rec.url, streams=[])
            proc = self.start_service(cfg, api)
            times: list[float] = []
            t_start = time.perf_counter()
            for i in range(n):
                t0 = time.perf_counter()
                status, body = http_post_json(
                    api + "/api/streams",
                    {
                        "name": f"s{i:04d}",
                        "tables": [wl.TABLE],
                        "destination": {"type": "webhook", "address": f"{rec.url}/{i}"},
                    },
                )
                times.append(time.perf_counter() - t0)
                if status != 201:
                    raise RuntimeError(f"POST /api/streams {i}: HTTP {status}: {str(body)[:300]}")
                if time.perf_counter() - t_start > self.create_budget:
                    log(f"streams: stopped creating after {i + 1} ({self.create_budget:.0f} s budget)")
                    break
            created = len(times)
            create_secs = time.perf_counter() - t_start
            time.sleep(2)  # settle
            c0, w0 = cpu_secs(proc.pid), time.monotonic()
            time.sleep(10)
            idle_pct = 100 * (cpu_secs(proc.pid) - c0) / (time.monotonic() - w0)
            http_json(rec.base + "/_reset", "POST")
            (row_id,) = self.sql(
                f"INSERT INTO {wl.TABLE} (account, note) VALUES (1, 'fan-out') RETURNING id"
            )[0]
            committed = float(
                self.sql(
                    "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) "
                    f"FROM {wl.TABLE} WHERE id = %s",
                    (row_id,),
                )[0][0]
            )
            s = rec.wait_count(created, 300)
            fanout = s["last_recv"] - committed
            first = s["first_recv"] - committed
            t0 = time.perf_counter()
            req = urllib.request.Request(f"{api}/api/streams/s0000", method="DELETE")
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 204
            delete_ms = (time.perf_counter() - t0) * 1000
            last100 = times[-100:]
            self.add(
                {
                    "scenario": "streams",
                    "workload": f"{created} streams",
                    "changes": created,
                    "create_secs": round(create_secs, 2),
                    "create_first100_secs": round(sum(times[:100]), 2),
                    "create_last100_secs": round(sum(last100), 2),
                    "create_last_ms": round(times[-1] * 1000, 1),
                    "idle_cpu_pct": round(idle_pct, 1),
                    "fanout_first_ms": round(first * 1000, 1),
                    "fanout_all_ms": round(fanout * 1000, 1),
                    "delivered_events": s["count"],
                    "delete_ms": round(delete_ms, 1),
                    "peak_rss_mb": round(vm_hwm_kb(proc.pid) / 1024, 1),
                }
            )
        finally:
            stop(proc, timeout=60)
            rec.close()

    # -- kafka ---------------------------------------------------------------------------------------
    def kafka_unavailable(self) -> str | None:
        try:
            from heliosdb_cdc.sinks._kafka import KafkaSink  # noqa: F401
        except Exception as exc:
            return f"KafkaSink does not import: {exc}"
        try:
            sys.path.insert(0, str(ROOT))
            from tests.plugins.kafka import KafkaBroker, kafka_libs  # noqa: F401
        except Exception as exc:
            return f"tests/plugins/kafka.py has no broker starter: {exc}"
        return None

    def sc_kafka(self, workloads: list[str]) -> None:
        why = self.kafka_unavailable()
        if why:
            self.add({"scenario": "kafka", "workload": "-", "note": f"not available: {why}"})
            return
        from tests.plugins.kafka import KafkaBroker, kafka_libs

        try:
            broker = KafkaBroker(kafka_libs(), self.workdir / "kafka")
            (self.workdir / "kafka").mkdir(exist_ok=True)
            broker.start()
        except Exception as exc:
            self.add(
                {
                    "scenario": "kafka",
                    "workload": "-",
                    "note": f"not available: broker did not start: {str(exc)[:200]}",
                }
            )
            return
        try:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
            for fmt in ("json", "avro", "avro_fastavro"):
                for workload in workloads:
                    self._kafka_run(admin, broker.bootstrap, fmt, workload)
        finally:
            broker.stop()

    def _kafka_run(self, admin: Any, bootstrap: str, fmt: str, workload: str) -> None:
        from confluent_kafka.admin import NewTopic

        scenario = "kafka" if fmt == "json" else f"kafka_{fmt}"
        topic = f"bench_{fmt}_{workload}"
        # avro_fastavro: FORMAT AVRO with every body through fastavro (the reference path
        # the per-column writers replace): before/after in one run
        env = {"HELIOSDB_CDC_AVRO_FASTAVRO": "1" if fmt == "avro_fastavro" else ""}
        fmt = fmt.partition("_")[0]
        admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)
        stream = {
            "name": "bench_kafka",
            "tables": [wl.TABLE],
            "format": fmt,  # avro without a registry: single-object encoding (docs/avro.md)
            "destination": {"type": "kafka", "address": bootstrap, "topic": topic},
        }

        def start() -> Any:
            cfg, api = self.service_config(f"{scenario}-{workload}", "", streams=[stream])
            proc = self.start_service(cfg, api, env)
            return (
                (lambda: stop(proc)),
                KafkaProgress(api, "bench_kafka"),
                lambda: {"peak_rss_mb": round(vm_hwm_kb(proc.pid) / 1024, 1)},
            )

        m = self.throughput(workload, "bench_svc", start)
        self.add(
            {
                "scenario": scenario,
                "workload": workload,
                "format": fmt,
                **m,
                "note": "acknowledged by the broker; last-ack time polled every 20 ms",
            }
        )

    # -- peers -----------------------------------------------------------------------------------------
    def sc_debezium(self, workloads: list[str]) -> None:
        dist, why = install_debezium()
        if dist is None:
            self.add({"scenario": "debezium", "workload": "-", "note": f"not installed: {why}"})
            return
        for workload in [*(w for w in workloads if w != "catchup"), "latency"]:
            self.prepare()
            self.sql("DROP PUBLICATION IF EXISTS dbz_pub")
            rec = Receiver(self.workdir, latency=workload == "latency")
            wd = self.workdir / f"debezium-{workload}"
            (wd / "conf").mkdir(parents=True, exist_ok=True)
            (wd / "conf" / "application.properties").write_text(
                debezium_properties(self.pg.port, rec.url, wd)
            )
            cmd = debezium_server.server_command(dist, wd / "conf")
            proc = spawn(cmd, wd / "debezium.log", cwd=wd)
            try:

                def ready(proc: subprocess.Popen[bytes] = proc, wd: Path = wd) -> bool:
                    if proc.poll() is not None:
                        raise RuntimeError(f"debezium exited: {(wd / 'debezium.log').read_text()[-1500:]}")
                    return self.slot_active("dbz")

                wait_until(ready, 180, "Debezium Server's slot")
                time.sleep(3)  # streaming starts after the (schema-only) snapshot
                if workload == "latency":
                    row = self._latency_run("debezium", 1000, rec)
                    row["note"] = "source.ts_ms: commit time in ms"
                    self.add(row)
                else:
                    m = self.measure(workload, rec.stats)
                    m["peak_rss_mb"] = round(vm_hwm_kb(proc.pid) / 1024, 1)
                    self.add({"scenario": "debezium", "workload": workload, **m})
            except Exception as exc:
                self.add({"scenario": "debezium", "workload": workload, "note": f"failed: {str(exc)[:300]}"})
            finally:
                stop(proc, 30)
                rec.close()

    def sc_pgstream(self, workloads: list[str]) -> None:
        """pgstream on the webhook1 workloads + latency at 1,000/s, the same receiver: wal2json
        slot ``pgstream_bench`` (``pgstream init``), one subscription for the table through
        its API, one event per POST."""
        binary, why = install_pgstream()
        if binary is None:
            self.add({"scenario": "pgstream", "workload": "-", "note": f"not installed: {why}"})
            return
        missing = pgstream_peer.wal2json_missing(self.pg.bindir)
        if missing:
            self.add({"scenario": "pgstream", "workload": "-", "note": f"not available: {missing}"})
            return
        url = f"{self.dsn}?sslmode=disable"
        slot = "pgstream_bench"
        for workload in [*(w for w in workloads if w != "catchup"), "latency"]:
            self.prepare()
            rec = Receiver(self.workdir, latency=workload == "latency")
            wd = self.workdir / f"pgstream-{workload}"
            wd.mkdir(parents=True, exist_ok=True)
            api = f"127.0.0.1:{free_port()}"
            env = pgstream_peer.environment(url, slot, api, f"public.{wl.TABLE}")
            proc = None
            try:
                init = subprocess.run(
                    [str(binary), "init", "--log-level", "error"],
                    env={**os.environ, **env},
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if init.returncode != 0:
                    raise RuntimeError(f"pgstream init failed: {(init.stdout + init.stderr)[-500:]}")
                proc = spawn(
                    [str(binary), "run", "--log-level", "warn"], wd / "pgstream.log", cwd=wd, env=env
                )

                def ready(proc: subprocess.Popen[bytes] = proc, wd: Path = wd) -> bool:
                    if proc.poll() is not None:
                        raise RuntimeError(f"pgstream exited: {(wd / 'pgstream.log').read_text()[-1500:]}")
                    return self.slot_active(slot)

                wait_until(ready, 60, "pgstream's slot")
                sub = {"url": rec.url, "schema": "public", "table": wl.TABLE, "event_types": ["I", "U", "D"]}
                subscribe = functools.partial(_try_post, f"http://{api}/webhooks/subscribe", sub)
                status, body = wait_until(subscribe, 30, "pgstream's subscription API")
                if status >= 300:
                    raise RuntimeError(f"POST /webhooks/subscribe: HTTP {status}: {str(body)[:300]}")
                time.sleep(2.5)  # the subscription cache refreshes every second
                if workload == "latency":
                    row = self._latency_run("pgstream", 1000, rec)
                    row["note"] = "wal2json commit timestamp (µs)"
                    self.add(row)
                else:
                    m = self.measure(workload, rec.stats)
                    m["peak_rss_mb"] = round(vm_hwm_kb(proc.pid) / 1024, 1)
                    self.add({"scenario": "pgstream", "workload": workload, **m})
            except Exception as exc:
                self.add({"scenario": "pgstream", "workload": workload, "note": f"failed: {str(exc)[:300]}"})
            finally:
                stop(proc, 30)
                rec.close()
                with contextlib.suppress(Exception):
                    subprocess.run(
                        [str(binary), "destroy", "--log-level", "error"],
                        env={**os.environ, **env},
                        capture_output=True,
                        timeout=60,
                        check=False,
                    )

    # -- driver ----------------------------------------------------------------------------------------
    def run(self, scenarios: list[str], workloads: list[str]) -> None:
        self.start_pg()
        try:
            for sc in scenarios:
                try:
                    if sc in ("raw", "null", "null_pure"):
                        for w in workloads:
                            getattr(self, f"sc_{sc}")(w)
                    elif sc == "webhook1":
                        for w in workloads:
                            self.sc_webhook(w, 1)
                    elif sc == "webhook_batch":
                        for w in workloads:
                            self.sc_webhook(w, 100)
                    elif sc == "webhook10":
                        for w in workloads:
                            self.sc_webhook(w, 1, endpoints=10)
                    elif sc.startswith("webhook1_w"):
                        for w in workloads:
                            self.sc_webhook(w, 1, workers=int(sc.removeprefix("webhook1_w")))
                    elif sc == "receiver":
                        self.sc_receiver()
                    elif sc == "latency":
                        self.sc_latency()
                    elif sc == "backlog":
                        self.sc_backlog()
                    elif sc == "streams":
                        self.sc_streams()
                    elif sc in ("kafka", "debezium", "pgstream"):
                        getattr(self, f"sc_{sc}")(workloads)
                except Exception as exc:
                    traceback.print_exc()
                    self.add({"scenario": sc, "workload": "-", "note": f"error: {str(exc)[:300]}"})
        finally:
            with contextlib.suppress(Exception):
                self.drop_slots()
            self.pg.stop()
            if not self.args.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)


class KafkaProgress:
    """Acknowledged count from the service's stream status; last-ack time = when it was seen."""

    def __init__(self, api: str, stream: str) -> None:
        self.url = f"{api}/api/streams/{stream}/status"
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def __call__(self) -> dict[str, Any]:
        time.sleep(0.02)
        try:
            n = int(http_json(self.url)["events_delivered"])
        except (OSError, KeyError, ValueError):
            n = self.count
        if n != self.count:
            self.count, self.last = n, time.time()
            self.first = self.first or self.last
        return {"count": self.count, "first_recv": self.first, "last_recv": self.last}


# -- peers: install --------------------------------------------------------------------------------
def install_debezium() -> tuple[Path | None, str]:
    return debezium_server.install_debezium(CACHE, INSTALL_TIMEOUT)


def install_pgstream() -> tuple[Path | None, str]:
    return pgstream_peer.install_pgstream(CACHE, ROOT, INSTALL_TIMEOUT * 3)


def _try_post(url: str, data: Any) -> tuple[int, Any] | None:
    """POST JSON; None while nothing listens there yet."""
    try:
        return http_post_json(url, data, timeout=10)
    except OSError:
        return None


def debezium_properties(pg_port: int, url: str, wd: Path) -> str:
    return f"""\
debezium.sink.type=http
debezium.sink.http.url={url}
debezium.sink.http.timeout.ms=30000
debezium.source.connector.class=io.debezium.connector.postgresql.PostgresConnector
debezium.source.offset.storage.file.filename={wd / "offsets.dat"}
debezium.source.offset.flush.interval.ms=1000
debezium.source.database.hostname=127.0.0.1
debezium.source.database.port={pg_port}
debezium.source.database.user=postgres
debezium.source.database.password=postgres
debezium.source.database.dbname=postgres
debezium.source.topic.prefix=bench
debezium.source.table.include.list=public.{wl.TABLE}
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


# -- report ------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "host": socket.gethostname(),
    }


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    raw = {r["workload"]: r["rate"] for r in results if r["scenario"] == "raw" and r.get("rate")}
    out: dict[str, float] = {}
    for r in results:
        if (
            r["scenario"] in THROUGHPUT
            and r["scenario"] != "raw"
            and r.get("rate")
            and raw.get(r["workload"])
        ):
            out[f"{r['scenario']}_over_raw_{r['workload']}"] = round(r["rate"] / raw[r["workload"]], 3)
            r["ratio_to_raw"] = out[f"{r['scenario']}_over_raw_{r['workload']}"]
    wh = {r["workload"]: r["rate"] for r in results if r["scenario"] == "webhook1" and r.get("rate")}
    cap = next((r["rate"] for r in results if r["scenario"] == "receiver" and r.get("rate")), None)
    if cap:
        for w, rate in wh.items():
            out[f"webhook1_over_receiver_capacity_{w}"] = round(rate / cap, 3)
    # delivery workers: the scaling of one-event-per-POST delivery, against workers: 1
    w1 = {r["workload"]: r["rate"] for r in results if r["scenario"] == "webhook1_w1" and r.get("rate")}
    for r in results:
        sc = r["scenario"]
        if sc.startswith("webhook1_w") and sc != "webhook1_w1" and r.get("rate") and w1.get(r["workload"]):
            out[f"{sc}_over_w1_{r['workload']}"] = round(r["rate"] / w1[r["workload"]], 2)
    for r in results:
        if r["scenario"] in ("debezium", "pgstream") and r.get("rate") and wh.get(r["workload"]):
            out[f"webhook1_over_{r['scenario']}_{r['workload']}"] = round(wh[r["workload"]] / r["rate"], 2)
    return out


def table(results: list[dict[str, Any]]) -> str:
    cols = [
        "scenario",
        "workload",
        "changes",
        "rate",
        "ratio_to_raw",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "peak_rss_mb",
        "drain_rate",
        "note",
    ]
    head = [
        "scenario",
        "workload",
        "changes",
        "changes/s",
        "x raw",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "peak RSS MB",
        "drain/s",
        "note",
    ]
    rows = [head]
    for r in results:
        row = []
        for c in cols:
            v = r.get(c, "")
            if c == "note" and not v:
                extra = []
                if r.get("achieved_rate"):
                    extra.append(f"achieved {r['achieved_rate']:.0f}/s")
                if r.get("write_rate"):
                    extra.append(f"writer {r['write_rate']:.0f}/s")
                if r.get("batch_size", 1) > 1:
                    extra.append(f"batch_size {r['batch_size']}")
                if r.get("rss_backlog_mb"):
                    extra.append(f"RSS idle {r['rss_idle_mb']} MB, capture {r['capture_rate']:.0f}/s")
                if r.get("scenario") == "streams" and "create_secs" in r:
                    extra.append(
                        f"create {r['create_secs']} s (last 100: {r['create_last100_secs']} s), "
                        f"idle CPU {r['idle_cpu_pct']} %, fan-out {r['fanout_all_ms']} ms, "
                        f"DELETE {r['delete_ms']} ms"
                    )
                v = "; ".join(extra)
            if c == "note" and isinstance(v, str) and len(v) > 110:
                v = v[:107] + "..."
            if isinstance(v, float):
                v = f"{v:,.0f}" if c in ("rate", "drain_rate") else f"{v:g}"
            elif isinstance(v, int):
                v = f"{v:,}"
            row.append(str(v) if v is not None else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def recorded_ratios() -> dict[str, float]:
    """The ratios BENCHMARKS.md records (its ``<!-- ratios: {...} -->`` line)."""
    m = re.search(r"<!--\s*ratios:\s*(\{.*?\})\s*-->", (ROOT / "BENCHMARKS.md").read_text(), re.S)
    if m is None:
        raise SystemExit("BENCHMARKS.md has no <!-- ratios: {...} --> line")
    data: dict[str, float] = json.loads(m.group(1))
    return data


def check_ratios(measured: dict[str, float], recorded: dict[str, float]) -> list[str]:
    """Problems with this run's ratios: each recorded ratio must be measured and reach
    half of the recorded value (a machine's noise moves a ratio by up to 2x)."""
    problems = []
    for key, value in recorded.items():
        if key not in measured:
            problems.append(f"{key} not measured in this run (run the scenarios it needs)")
        elif measured[key] < value / 2:
            problems.append(f"{key} = {measured[key]} is below half of the {value} recorded in BENCHMARKS.md")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer changes, shorter latency runs")
    p.add_argument("--scenarios", default=",".join(ALL), help=f"comma-separated, from {','.join(ALL)}")
    p.add_argument(
        "--workloads",
        default="bulk,oltp,catchup",
        help="throughput workloads: bulk (10,000-row txns), oltp (1-10-row txns), "
        "catchup (a bulk backlog read from the slot)",
    )
    p.add_argument("--changes", type=int, default=0, help="bulk changes per throughput scenario")
    p.add_argument("--oltp-changes", type=int, default=0, help="oltp changes per throughput scenario")
    p.add_argument("--backlog-changes", type=int, default=0)
    p.add_argument("--streams", type=int, default=0, help="streams of the streams scenario (1,000)")
    p.add_argument(
        "--create-budget",
        type=float,
        default=600.0,
        help="streams scenario: stop creating streams after this many seconds",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run webhook1 with delivery.workers: N (scenario webhook1_wN)",
    )
    p.add_argument("--json", help="write results here (default bench/results/<time>.json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument(
        "--decode-worker",
        action="store_true",
        help="run heliosdb-cdc with cdc.decode_worker: true (decode in a worker process)",
    )
    p.add_argument(
        "--receiver",
        choices=["raw", "aiohttp"],
        default="raw",
        help="receiver server: raw asyncio HTTP/1.1 (default) or aiohttp.web",
    )
    p.add_argument("--report", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    p.add_argument(
        "--check-ratios",
        action="store_true",
        help="exit 1 when a ratio recorded in BENCHMARKS.md falls below half (on a quiet machine: "
        "python bench/run.py --quick --scenarios raw,null --check-ratios)",
    )
    args = p.parse_args(argv)
    if args.report:
        data = json.loads(Path(args.report).read_text())
        print(table(data["results"]))
        print("ratios: " + json.dumps(data["ratios"]))
        return 0
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.workers and f"webhook1_w{args.workers}" not in scenarios:
        scenarios.append(f"webhook1_w{args.workers}")
    bad = [s for s in scenarios if s not in ALL and not re.fullmatch(r"webhook1_w[1-9][0-9]?", s)]
    if bad:
        p.error(f"unknown scenario(s) {bad}; choose from {ALL}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    global RECEIVER_IMPL
    RECEIVER_IMPL = args.receiver
    bench = Bench(args)
    started = time.time()
    bench.run(scenarios, workloads)
    rs = ratios(bench.results)
    out = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_secs": round(time.time() - started, 1),
        "machine": machine(),
        "postgres": bench.settings,
        "receiver": RECEIVER_IMPL,
        "sizes": {
            "bulk": bench.n_bulk,
            "oltp": bench.n_oltp,
            "backlog": bench.n_backlog,
            "streams": bench.n_streams,
            "latency_secs": bench.latency_secs,
            "rates": bench.rates,
        },
        "results": bench.results,
        "ratios": rs,
    }
    path = Path(args.json) if args.json else BENCH / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(table(bench.results))
    print("ratios: " + json.dumps(rs))
    print(f"results: {path}")
    if args.check_ratios:
        recorded = recorded_ratios()
        problems = check_ratios(rs, recorded)
        print("recorded ratios: " + json.dumps(recorded))
        for problem in problems:
            print("RATIO BELOW FLOOR: " + problem)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
