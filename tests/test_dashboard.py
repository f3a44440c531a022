"""deploy/grafana/heliosdb-cdc.json: an importable dashboard whose every query works.

* structure: schemaVersion, the DS_PROMETHEUS input, datasource and stream variables,
  the guide's panels (throughput, latency, success rate, circuit breaker, queue backlogs)
  and the operational ones (slot lag in bytes and seconds, dead letters);
* every metric name a panel's PromQL references is exported on GET /metrics of a
  running service;
* every panel query, with Grafana's variables filled in, is accepted by a real
  Prometheus scraping that service and returns series.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from heliosdb_cdc import WebhookRegistration, WebhookServer
from tests.plugins.postgres import PgDatabase
from tests.plugins.prometheus import (  # noqa: F401
    REPO,
    Exposition,
    PrometheusLauncher,
    monitoring_config,
    prometheus_server,
    scrape,
    wait_until,
)
from tests.plugins.receiver import Receiver

DASHBOARD = REPO / "deploy" / "grafana" / "heliosdb-cdc.json"

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def _exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dash) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels, keywords, durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = _GROUPING.sub(" ", text)  # by (...), on (...), group_left (...)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):  # not 5m, 1e9, $var
        word = m.group(0)
        if text[m.end() :].lstrip().startswith("("):
            continue  # a function call
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le, stream) (rate(foo_bucket{stream=~"$stream", status="a b"}[$__rate_interval]))'
        " / on (endpoint) group_left (stream) bar_total and baz offset 5m > bool 1e9"
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total", "baz"}
    assert metric_names("histogram_quantile(0.99, rate(x_bucket[5m]))") == {"x_bucket"}


def test_dashboard_is_importable() -> None:
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"] and dash.get("id") is None
    (ds_input,) = dash["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    stream = variables["stream"]
    assert stream["type"] == "query" and stream["includeAll"] and stream["multi"]
    assert stream["datasource"]["uid"] == "${datasource}"
    assert "stream" in stream["definition"]

    panels = _panels(dash)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in panels}
    for wanted in (
        "Event throughput",
        "Delivery latency (p50 / p99)",
        "Success rate",
        "Circuit breaker status",
        "Queue backlogs",
        "Replication slot lag (bytes)",
        "Replication lag (seconds)",
        "Dead letters",
    ):
        assert wanted in titles, f"missing panel {wanted!r}"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].strip(), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
    latency = next(p for p in panels if p["title"].startswith("Delivery latency"))
    quantiles = " ".join(t["expr"] for t in latency["targets"])
    assert "histogram_quantile(0.5," in quantiles and "histogram_quantile(0.99," in quantiles
    # panels that can be narrowed to a stream honour the variable
    for title, expr in _exprs(dash):
        if "stream" in expr and "replication" not in expr:
            assert 'stream=~"$stream"' in expr, title


def _exported(m: Exposition) -> set[str]:
    """Names a query may reference: the samples' names, which include _total/_bucket/_count/_sum."""
    names = m.names()
    for family, kind in m.types.items():
        names.add(family)
        if kind == "histogram":
            names |= {f"{family}_bucket", f"{family}_count", f"{family}_sum"}
    return names


async def test_every_panel_query_works_against_a_running_service(
    pg_db: PgDatabase,
    receiver: Receiver,
    tmp_path: Path,
    prometheus_server: PrometheusLauncher,  # noqa: F811
) -> None:
    dash = _dashboard()
    pg_db.execute("CREATE TABLE d_orders (id serial PRIMARY KEY, status text)")
    cfg = monitoring_config(pg_db, tmp_path)
    base = f"http://{cfg.webhook.bind_address}"
    async with WebhookServer(cfg) as server:
        await server.register(
            WebhookRegistration(
                url=receiver.url, secret="your-webhook-secret", tables=["d_orders"], name="dash_stream"
            )
        )
        prom = await prometheus_server.start(cfg.webhook.bind_address, rules=None)
        pg_db.execute("INSERT INTO d_orders (status) SELECT 'new' FROM generate_series(1, 20)")
        await receiver.wait_for(20)

        async def slot_stats_exported() -> Exposition | None:
            m = await scrape(base)
            return m if "heliosdb_cdc_replication_slot_lag_bytes" in m.names() else None

        m = await wait_until(slot_stats_exported, 15, 0.2, "slot statistics on /metrics")
        exported = _exported(m)
        for title, expr in _exprs(dash):
            names = metric_names(expr)
            assert names, f"{title}: no metric in {expr!r}"
            missing = names - exported
            assert not missing, f"panel {title!r} references {missing}, not exported by the service"

        # Grafana's variables as Grafana would fill them; then Prometheus must answer with series
        pg_db.execute("INSERT INTO d_orders (status) SELECT 'more' FROM generate_series(1, 20)")
        await receiver.wait_for(40)
        for title, expr in _exprs(dash):
            promql = expr.replace("$__rate_interval", "1m").replace("$stream", ".*")

            async def answered(promql: str = promql) -> list[dict[str, Any]]:
                return await prom.query(promql)

            result = await wait_until(answered, 15, 0.5, f"panel {title!r}: {promql}")
            assert result, title
        assert server.runners["dash_stream"].stats.delivered == 40
