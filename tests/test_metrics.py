"""The guide's Prometheus metrics on GET /metrics of a running pipeline: names, types, values.

One pipeline (PostgreSQL -> service -> a real receiver) goes through healthy delivery,
an endpoint answering 500 (circuit opens), recovery (half-open, then closed), and checks
every guide metric against what actually happened.
"""

from __future__ import annotations

import re
from pathlib import Path

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.prometheus import Exposition, monitoring_config, scrape, wait_until
from tests.plugins.receiver import Receiver

# the guide's "Available Metrics" table: exposed name -> type
GUIDE_METRICS = {
    "heliosdb_cdc_events_processed_total": "counter",
    "heliosdb_cdc_events_filtered_total": "counter",
    "heliosdb_webhook_delivery_duration_seconds": "histogram",
    "heliosdb_webhook_delivery_total": "counter",
    "heliosdb_webhook_retry_total": "counter",
    "heliosdb_circuit_breaker_state": "gauge",
    "heliosdb_event_queue_size": "gauge",
}
# every label the service may put on a series: all bounded (catalog names or small enums)
ALLOWED_LABELS = {"table", "stream", "endpoint", "status", "queue_type", "slot", "le"}


def _processed(m: Exposition, table: str) -> float:
    return sum(
        v
        for n, ls, v in m.samples
        if n == "heliosdb_cdc_events_processed_total" and ls.get("table", "").split(".")[-1] == table
    )


def _our_series(m: Exposition, stream: str, endpoint: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {
        (n, frozenset(ls.items()))
        for n, ls, _ in m.samples
        if n.startswith("heliosdb_") and (ls.get("stream") == stream or ls.get("endpoint") == endpoint)
    }


async def test_guide_metrics_on_a_running_pipeline(
    pg_db: PgDatabase, receiver: Receiver, tmp_path: Path
) -> None:
    pg_db.execute("CREATE TABLE m_orders (id serial PRIMARY KEY, status text)")
    cfg = monitoring_config(
        pg_db,
        tmp_path,
        webhook={
            "circuit_breaker": {"failure_threshold": 2, "timeout_secs": 1},
            "retry": {"initial_delay_ms": 10, "max_delay_ms": 50, "max_attempts": 100},
        },
    )
    base = f"http://{cfg.webhook.bind_address}"
    stream, endpoint = "metrics_stream", receiver.url
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(
                url=receiver.url,
                secret="your-webhook-secret",
                tables=["m_orders"],
                operations=["INSERT", "UPDATE"],  # DELETEs are filtered out
                name=stream,
            )
        )
        m0 = await scrape(base)
        # -- names and types exactly as in the guide; no *_created noise
        for name, kind in GUIDE_METRICS.items():
            assert m0.types.get(name) == kind, f"{name}: TYPE {m0.types.get(name)}, guide says {kind}"
        assert not [n for n in m0.types if n.endswith("_created")]
        processed_before = _processed(m0, "m_orders")

        # -- healthy delivery: 7 changes, 6 delivered, 1 filtered
        for i in range(5):
            pg_db.execute("INSERT INTO m_orders (status) VALUES (%s)", (f"s{i}",))
        pg_db.execute("UPDATE m_orders SET status = 'paid' WHERE id = 1")
        pg_db.execute("DELETE FROM m_orders WHERE id = 2")
        await receiver.wait_for(6)

        async def settled() -> Exposition | None:
            m = await scrape(base)
            done = (
                m.value("heliosdb_webhook_delivery_total", stream=stream, status="success") == 6
                and _processed(m, "m_orders") - processed_before == 7
                and m.value("heliosdb_cdc_events_filtered_total", stream=stream) == 1
                and m.value("heliosdb_event_queue_size", stream=stream, queue_type="memory") == 0
                and m.value("heliosdb_event_queue_size", stream=stream, queue_type="overflow") == 0
                # the first checkpoint has run (it creates the position gauges)
                and m.value("heliosdb_cdc_last_checkpoint_timestamp_seconds", stream=stream) is not None
            )
            return m if done else None

        m1 = await wait_until(settled, 15, what="metrics of 7 captured, 6 delivered, 1 filtered")
        assert m1.value("heliosdb_webhook_delivery_total", stream=stream, status="failure") == 0
        assert m1.value("heliosdb_webhook_retry_total", stream=stream) == 0
        assert m1.value("heliosdb_circuit_breaker_state", endpoint=endpoint) == 0
        assert m1.value("heliosdb_cdc_dead_letters_total", stream=stream) == 0  # exported before any
        # one request per event (batch_size 1); the P99-under-50ms bucket exists
        assert m1.value("heliosdb_webhook_delivery_duration_seconds_count", stream=stream) == 6
        les = {
            ls["le"] for ls in m1.series("heliosdb_webhook_delivery_duration_seconds_bucket", stream=stream)
        }
        assert "0.05" in les and "+Inf" in les
        assert m1.value("heliosdb_webhook_delivery_duration_seconds_bucket", stream=stream, le="+Inf") == 6
        assert server.runners[stream].stats.delivered == 6

        # -- label cardinality: more events add no series; no event ids in labels
        series1 = _our_series(m1, stream, endpoint)
        pg_db.execute("INSERT INTO m_orders (status) SELECT 'bulk' FROM generate_series(1, 30)")
        await receiver.wait_for(36)

        async def bulk_counted() -> Exposition | None:
            m = await scrape(base)
            ok = m.value("heliosdb_webhook_delivery_total", stream=stream, status="success") == 36
            return m if ok and _processed(m, "m_orders") - processed_before == 37 else None

        m2 = await wait_until(bulk_counted, 15, what="36 successes")
        assert _our_series(m2, stream, endpoint) == series1
        for name, labels, _ in m2.samples:
            if not name.startswith("heliosdb_"):
                continue
            assert set(labels) <= ALLOWED_LABELS, f"{name}: unexpected labels {set(labels) - ALLOWED_LABELS}"
            for value in labels.values():
                assert not re.search(r"evt_|txn_", value), f"{name}: event-specific label value {value!r}"

        # -- the endpoint fails: failures, retries, circuit open (2)
        receiver.respond = lambda req: 500
        pg_db.execute("INSERT INTO m_orders (status) VALUES ('while down')")

        async def circuit(state: int) -> Exposition | None:
            m = await scrape(base)
            return m if m.value("heliosdb_circuit_breaker_state", endpoint=endpoint) == state else None

        m3 = await wait_until(lambda: circuit(2), 15, 0.05, "circuit open (2)")
        assert m3.value("heliosdb_webhook_delivery_total", stream=stream, status="failure") >= 2
        assert m3.value("heliosdb_webhook_retry_total", stream=stream) >= 1
        assert m3.value("heliosdb_webhook_delivery_total", stream=stream, status="success") == 36

        # -- the endpoint recovers: the half-open probe succeeds (1 of success_threshold 2) ...
        receiver.respond = None
        await wait_until(lambda: circuit(1), 15, 0.05, "circuit half-open (1)")
        await receiver.wait_for(37)
        # ... and the next success closes it (0)
        pg_db.execute("INSERT INTO m_orders (status) VALUES ('after')")
        m4 = await wait_until(lambda: circuit(0), 15, 0.05, "circuit closed (0)")
        await receiver.wait_for(38)
        failures = m4.value("heliosdb_webhook_delivery_total", stream=stream, status="failure")
        retries = m4.value("heliosdb_webhook_retry_total", stream=stream)
        assert failures is not None and retries is not None
        # the one event failed on every attempt but its last: each failure was followed by a retry
        assert retries == failures
        assert server.runners[stream].stats.retried == retries
        assert m4.value("heliosdb_cdc_dead_letters_total", stream=stream) == 0


def test_batch_histogram_exposes_what_the_stock_histogram_does() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from heliosdb_cdc._metrics import LATENCY_BUCKETS, BatchHistogram

    values = [0.0, 0.001, 0.0010001, 0.02, 0.049, 0.05, 7.5, 30.0, 31.0, 1e9]
    ours, stock = CollectorRegistry(), CollectorRegistry()
    fast = BatchHistogram("lat_seconds", "Latency", ["stream"], LATENCY_BUCKETS, ours)
    slow = Histogram("lat_seconds", "Latency", ["stream"], buckets=LATENCY_BUCKETS, registry=stock)
    fast.labels("a").observe_many(values[:6])
    fast.labels("a").observe(values[6])
    fast.labels("b").observe_many(values[6:])
    for v in values[:7]:
        slow.labels("a").observe(v)
    for v in values[6:]:
        slow.labels("b").observe(v)

    def lines(reg: CollectorRegistry) -> list[str]:
        return [ln for ln in generate_latest(reg).decode().splitlines() if "_created" not in ln]

    assert lines(ours) == lines(stock)
    assert ours.get_sample_value("lat_seconds_count", {"stream": "b"}) == 4
