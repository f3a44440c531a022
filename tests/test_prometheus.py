"""deploy/prometheus against real Prometheus tools.

* ``promtool check rules`` / ``check config`` on the shipped files;
* ``promtool test rules``: every alert expression against synthetic series;
* a real ``prometheus`` scraping a running pipeline every second: the guide's five PromQL
  queries, verbatim, agree with what the pipeline did, and WebhookCircuitOpen fires
  when an endpoint stays down (its ``for:`` shortened to seconds).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins import in_ci
from tests.plugins.postgres import PgDatabase
from tests.plugins.prometheus import (  # noqa: F401
    ALERTS_FILE,
    REPO,
    PrometheusLauncher,
    PrometheusServer,
    monitoring_config,
    prometheus_server,
    scrape,
    wait_until,
)
from tests.plugins.receiver import Receiver

# the user guide's "Prometheus Metrics" queries, character for character
Q_RATE = "rate(heliosdb_cdc_events_processed_total[5m])"
Q_P99 = "histogram_quantile(0.99, rate(heliosdb_webhook_delivery_duration_seconds_bucket[5m]))"
Q_SUCCESS = (
    'sum(rate(heliosdb_webhook_delivery_total{status="success"}[5m])) /\n'
    "sum(rate(heliosdb_webhook_delivery_total[5m]))"
)
Q_OPEN = "heliosdb_circuit_breaker_state == 2"
Q_OVERFLOW = 'heliosdb_event_queue_size{queue_type="overflow"}'


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if in_ci():
            pytest.fail("promtool is not installed (scripts/install-system-deps.sh)")
        pytest.skip("promtool is not installed")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


# -- static checks -----------------------------------------------------------------------------
def test_alert_rules_pass_promtool() -> None:
    res = _run(_promtool(), "check", "rules", str(ALERTS_FILE))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alert_rules_cover_the_guide_and_operations() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]}
    guide = rules["WebhookCircuitOpen"]  # ALERT WebhookCircuitOpen IF ... == 2 FOR 5m
    assert guide["expr"].strip() == "heliosdb_circuit_breaker_state == 2"
    assert guide["for"] == "5m"
    assert guide["labels"] == {"severity": "warning"}
    exprs = " ".join(r["expr"] for r in rules.values())
    for metric in (
        "heliosdb_cdc_replication_slot_lag_bytes",
        "heliosdb_cdc_replication_slot_retained_wal_bytes",
        "heliosdb_cdc_replication_connected",
        "heliosdb_cdc_dead_letters_total",
        'heliosdb_webhook_delivery_total{status="failure"}',
    ):
        assert metric in exprs, f"no alert on {metric}"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_example_prometheus_config_is_valid(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "deploy/prometheus/prometheus.example.yml").read_text())
    assert doc["scrape_configs"][0]["metrics_path"] == "/metrics"
    doc["rule_files"] = [str(ALERTS_FILE)]  # the example points at /etc/prometheus/...
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(doc))
    res = _run(_promtool(), "check", "config", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr


def test_alert_expressions_on_synthetic_series(tmp_path: Path) -> None:
    """``promtool test rules``: each alert's expression selects exactly the troubled series."""
    rules = {
        r["alert"]: r["expr"] for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]
    }
    gib = 1024**3
    series = [
        ('heliosdb_circuit_breaker_state{endpoint="http://down/hook"}', "0 2x20"),
        ('heliosdb_circuit_breaker_state{endpoint="http://half/hook"}', "1x20"),
        ('heliosdb_circuit_breaker_state{endpoint="http://ok/hook"}', "0x20"),
        ('heliosdb_webhook_delivery_total{stream="bad",endpoint="e1",status="success"}', "0+7x20"),
        ('heliosdb_webhook_delivery_total{stream="bad",endpoint="e1",status="failure"}', "0+3x20"),
        ('heliosdb_webhook_delivery_total{stream="good",endpoint="e2",status="success"}', "0+10x20"),
        ('heliosdb_webhook_delivery_total{stream="good",endpoint="e2",status="failure"}', "0x20"),
        ('heliosdb_cdc_dead_letters_total{stream="bad",endpoint="e1"}', "0 0 0 0 0 2x16"),
        ('heliosdb_cdc_dead_letters_total{stream="good",endpoint="e2"}', "0x20"),
        ('heliosdb_cdc_replication_connected{slot="down"}', "1 0x20"),
        ('heliosdb_cdc_replication_connected{slot="up"}', "1x20"),
        ('up{job="heliosdb-cdc",instance="a:8080"}', "1 0x20"),
        ('up{job="heliosdb-cdc",instance="b:8080"}', "1x20"),
        ('heliosdb_cdc_replication_slot_lag_bytes{slot="behind"}', f"{2 * gib}x20"),
        ('heliosdb_cdc_replication_slot_lag_bytes{slot="fine"}', "1000x20"),
        ('heliosdb_cdc_replication_lag_seconds{slot="behind"}', "600x20"),
        ('heliosdb_cdc_replication_lag_seconds{slot="fine"}', "0.5x20"),
        ('heliosdb_cdc_replication_slot_retained_wal_bytes{slot="big"}', f"{30 * gib}x20"),
        ('heliosdb_cdc_replication_slot_retained_wal_bytes{slot="mid"}', f"{8 * gib}x20"),
        ('heliosdb_cdc_replication_slot_retained_wal_bytes{slot="small"}', f"{gib}x20"),
        ('heliosdb_event_queue_size{stream="slow",queue_type="overflow"}', "500000x20"),
        ('heliosdb_event_queue_size{stream="slow",queue_type="memory"}', "500000x20"),
        ('heliosdb_event_queue_size{stream="fast",queue_type="overflow"}', "3x20"),
        ('heliosdb_cdc_table_missing{table="gone"}', "0 1x20"),
        ('heliosdb_cdc_table_missing{table="here"}', "0x20"),
        ('heliosdb_cdc_table_changes_total{table="gone",change="dropped"}', "0 0 0 0 0 1x16"),
        ('heliosdb_cdc_table_changes_total{table="here",change="recreated"}', "0x20"),
    ]
    # alert -> (evaluation time, label sets expected to be selected)
    expected: dict[str, list[tuple[str, list[str]]]] = {
        "WebhookCircuitOpen": [("10m", ['{endpoint="http://down/hook"}'])],
        "WebhookDeliveryFailureRatioHigh": [("10m", ['{stream="bad",endpoint="e1"}'])],
        "HeliosCdcDeadLettersIncreasing": [
            ("8m", ['{stream="bad",endpoint="e1"}']),
            ("19m", []),  # no new dead letters in the last 10 minutes: resolved
        ],
        "HeliosCdcReplicationDisconnected": [("10m", ['{slot="down"}'])],
        "HeliosCdcDown": [("10m", ['{job="heliosdb-cdc",instance="a:8080"}'])],
        "HeliosCdcReplicationSlotLagHigh": [("10m", ['{slot="behind"}'])],
        "HeliosCdcReplicationLagSecondsHigh": [("10m", ['{slot="behind"}'])],
        "HeliosCdcSlotWalRetainedHigh": [("10m", ['{slot="big"}', '{slot="mid"}'])],
        "HeliosCdcSlotWalRetainedCritical": [("10m", ['{slot="big"}'])],
        "HeliosCdcOverflowBacklog": [("10m", ['{stream="slow",queue_type="overflow"}'])],
        "HeliosCdcCapturedTableMissing": [("10m", ['{table="gone"}'])],
        "HeliosCdcCapturedTableChanged": [
            ("8m", ['{table="gone",change="dropped"}']),
            ("19m", []),
        ],
    }
    assert set(expected) == set(rules), "every alert needs a case here"
    tests: list[dict[str, Any]] = []
    for alert, cases in expected.items():
        for at, label_sets in cases:
            tests.append(
                {
                    # "* 0 + 1": drop the value and the metric name, keep which series are selected
                    "expr": f"({rules[alert].strip()}) * 0 + 1",
                    "eval_time": at,
                    "exp_samples": [{"labels": ls, "value": 1} for ls in label_sets],
                }
            )
    unit = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": tests,
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    res = _run(_promtool(), "test", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr


# -- a real Prometheus scraping a running pipeline ---------------------------------------------
def _one(result: list[dict[str, Any]], **labels: str) -> float | None:
    found = [r for r in result if labels.items() <= r["metric"].items()]
    assert len(found) <= 1, found
    return float(found[0]["value"][1]) if found else None


async def _until(prom: PrometheusServer, promql: str, pred: Any, what: str, timeout: float = 15) -> Any:
    async def check() -> Any:
        result = await prom.query(promql)
        return result if pred(result) else None

    return await wait_until(check, timeout, 0.25, f"{what} ({promql})")


async def test_guide_queries_and_circuit_alert_on_real_prometheus(
    pg_db: PgDatabase,
    receiver: Receiver,
    tmp_path: Path,
    prometheus_server: PrometheusLauncher,  # noqa: F811
) -> None:
    pg_db.execute("CREATE TABLE p_orders (id serial PRIMARY KEY, status text)")
    cfg = monitoring_config(
        pg_db,
        tmp_path,
        webhook={
            # open after 2 failures and stay open for the rest of the test
            "circuit_breaker": {"failure_threshold": 2, "timeout_secs": 120},
            "retry": {"initial_delay_ms": 10, "max_delay_ms": 50, "max_attempts": 100},
        },
    )
    stream, endpoint = "prom_stream", receiver.url
    base = f"http://{cfg.webhook.bind_address}"
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(url=endpoint, secret="your-webhook-secret", tables=["p_orders"], name=stream)
        )
        prom = await prometheus_server.start(cfg.webhook.bind_address, for_="3s")
        await prom.wait_for_target_up()
        # the stream's series are scraped at 0 before anything happens
        await _until(
            prom,
            f'heliosdb_webhook_delivery_total{{stream="{stream}"}}',
            lambda r: len(r) == 2,
            "success and failure series",
        )
        assert _one(await prom.query(Q_OPEN), endpoint=endpoint) is None

        # -- healthy: N changes written over a few scrapes
        written = 0
        for batch in range(4):
            pg_db.execute("INSERT INTO p_orders (status) SELECT 'new' FROM generate_series(1, 10)")
            written += 10
            if batch < 3:
                await asyncio.sleep(1.2)
        await receiver.wait_for(written)
        await _until(
            prom,
            f'heliosdb_webhook_delivery_total{{stream="{stream}",status="success"}}',
            lambda r: _one(r) == written,
            f"{written} successes scraped",
        )
        processed = await prom.query('heliosdb_cdc_events_processed_total{table=~"(public\\\\.)?p_orders"}')
        assert _one(processed) == written  # the counter counts every captured change

        rate = await prom.query(Q_RATE)
        ours = [r for r in rate if r["metric"]["table"].split(".")[-1] == "p_orders"]
        assert len(ours) == 1 and float(ours[0]["value"][1]) > 0, rate

        # P99 of delivery: within the bucket that holds every observation (read from /metrics)
        p99 = _one(await prom.query(Q_P99), stream=stream, endpoint=endpoint)
        assert p99 is not None and math.isfinite(p99) and p99 > 0
        m = await scrape(base)
        total = m.value("heliosdb_webhook_delivery_duration_seconds_count", stream=stream)
        assert total == written
        bounds = sorted(
            float(ls["le"])
            for ls in m.series("heliosdb_webhook_delivery_duration_seconds_bucket", stream=stream)
            if m.value("heliosdb_webhook_delivery_duration_seconds_bucket", stream=stream, le=ls["le"])
            == total
        )
        assert p99 <= bounds[0], (p99, bounds[0])

        success = await prom.query(Q_SUCCESS)
        assert len(success) == 1 and float(success[0]["value"][1]) == 1.0, success

        # -- the endpoint goes down: failures, the circuit opens and stays open
        receiver.respond = lambda req: 500
        down_at = time.time()
        pg_db.execute("INSERT INTO p_orders (status) SELECT 'down' FROM generate_series(1, 5)")
        written += 5
        open_ = await _until(prom, Q_OPEN, lambda r: _one(r, endpoint=endpoint) == 2, "open circuit")
        assert all(float(r["value"][1]) == 2 for r in open_)

        failures = (await scrape(base)).value(
            "heliosdb_webhook_delivery_total", stream=stream, status="failure"
        )
        assert failures is not None and failures >= 2
        await _until(
            prom,
            f'heliosdb_webhook_delivery_total{{stream="{stream}",status="failure"}}',
            lambda r: _one(r) == failures,
            "failures scraped",
        )
        ratio = float((await prom.query(Q_SUCCESS))[0]["value"][1])
        # every series was scraped from 0, so the rate ratio is the ratio of counts
        assert ratio < 1
        delivered = written - 5
        assert ratio == pytest.approx(delivered / (delivered + failures), rel=1e-6)

        # -- WebhookCircuitOpen: pending, then firing once the endpoint has been down for `for:`
        async def firing() -> dict[str, Any] | None:
            for alert in await prom.alerts():
                labels = alert["labels"]
                if labels["alertname"] == "WebhookCircuitOpen" and labels.get("endpoint") == endpoint:
                    return alert if alert["state"] == "firing" else None
            return None

        alert = await wait_until(firing, 20, 0.25, "WebhookCircuitOpen firing")
        assert alert["labels"]["severity"] == "warning"
        assert endpoint in alert["annotations"]["summary"]
        assert time.time() - down_at >= 3  # not before the (shortened) for: duration

        # -- backlog on disk: the stream is paused, new changes wait in the local log
        await server.set_paused(stream, True)
        await asyncio.sleep(0.2)
        pg_db.execute("INSERT INTO p_orders (status) SELECT 'queued' FROM generate_series(1, 7)")
        written += 7
        overflow = await _until(
            prom, Q_OVERFLOW, lambda r: _one(r, stream=stream) == 7, "7 events in the overflow queue"
        )
        assert all(r["metric"]["queue_type"] == "overflow" for r in overflow)
        assert server.runners[stream].queue_overflow == 7
        await _until(
            prom,
            'heliosdb_cdc_events_processed_total{table=~"(public\\\\.)?p_orders"}',
            lambda r: _one(r) == written,
            f"{written} changes processed",
        )
