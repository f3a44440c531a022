"""The guide's YAML examples and Python names, as written (hosts and paths aside), and
`check-config` refusing what `run` refuses before it reaches the network."""

from __future__ import annotations

import hashlib
import hmac
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from heliosdb_cdc import Config, ConfigError, load_config
from heliosdb_cdc.cli import main

# -- the guide's YAML blocks, verbatim (only the TLS file paths are replaced) -------------------

COLUMN_FILTERING = """\
# Filter by changed columns
filters:
- name: price_changes
  tables:
  - products
  columns:
    products:
    - price
    - discount
"""

CUSTOM_PREDICATES = """\
# Filter with SQL predicate
filters:
- name: high_value_orders
  tables:
  - orders
  operations:
  - INSERT
  predicate: "total > 1000"
"""

JINJA2_TEMPLATES = """\
transformations:
  - name: slack_format
    target: https://hooks.slack.com/services/...
    template: |
      {
        "text": "New {{ operation }} on {{ table }}",
        "blocks": [
          {
            "type": "section",
            "text": {
              "type": "mrkdwn",
              "text": "*{{ operation }}* on `{{ table }}`\\nKey: {{ key }}"
            }
          }
        ]
      }
"""

JSONPATH_EXTRACTION = """\
transformations:
  - name: extract_fields
    target: https://analytics.io/webhooks/orders
    jsonpath:
      order_id: "$.key.id"
      customer: "$.value.customer_id"
      amount: "$.value.total"
      operation: "$.operation"
"""

CIRCUIT_BREAKER = """\
circuit_breaker:
  failure_threshold: 5 # Open after 5 failures
  success_threshold: 2 # Close after 2 successes in half-open
  timeout_secs: 60 # Stay open for 60 seconds
  half_open_max_calls: 3 # Max calls in half-open state
"""

TLS_CONFIGURATION = """\
security:
  tls:
    enabled: true
    cert_path: /etc/heliosdb/tls/cert.pem
    key_path: /etc/heliosdb/tls/key.pem
  ip_whitelist:
    - 10.0.0.0/8
    - 172.16.0.0/12
"""

BEST_PRACTICE_FILTERS = """\
# Filter to reduce volume
filters:
  - name: relevant_changes
    tables:
      - orders          # Only tables you need
    operations:
      - INSERT
      - UPDATE          # Skip DELETEs if not needed
    columns:
      orders:
        - status
        - total         # Only columns you care about
"""

BEST_PRACTICE_RETRIES = """\
# Balance between reliability and latency
delivery:
  max_retries: 3                    # Enough for transient failures
  initial_retry_delay_ms: 100       # Quick first retry
  max_retry_delay_ms: 5000          # Don't wait too long
"""

GUIDE_YAML = {
    "column_filtering": COLUMN_FILTERING,
    "custom_predicates": CUSTOM_PREDICATES,
    "jinja2_templates": JINJA2_TEMPLATES,
    "jsonpath_extraction": JSONPATH_EXTRACTION,
    "circuit_breaker": CIRCUIT_BREAKER,
    "tls_configuration": TLS_CONFIGURATION,
    "best_practice_filters": BEST_PRACTICE_FILTERS,
    "best_practice_retries": BEST_PRACTICE_RETRIES,
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "ca": tmp_path / "ca.pem",
        "client_cert": tmp_path / "client-cert.pem",
        "client_key": tmp_path / "client-key.pem",
    }
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    client = ca.issue_cert("client.example")
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


def write_guide_yaml(name: str, tmp_path: Path, tls_files: dict[str, Path]) -> Path:
    text = GUIDE_YAML[name]
    text = text.replace("/etc/heliosdb/tls/cert.pem", str(tls_files["cert"]))
    text = text.replace("/etc/heliosdb/tls/key.pem", str(tls_files["key"]))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + text)
    return path


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check-config", "-c", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("name", sorted(GUIDE_YAML))
def test_guide_yaml_example_passes_check_config(
    name: str, tmp_path: Path, tls_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_guide_yaml(name, tmp_path, tls_files)
    code, out = check_config(path, capsys)
    assert code == 0, out
    assert ": OK (" in out


def test_guide_yaml_examples_mean_what_the_guide_says(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    def load(name: str) -> Config:
        return load_config(write_guide_yaml(name, tmp_path, tls_files))

    cb = load("circuit_breaker").webhook.circuit_breaker
    assert (cb.failure_threshold, cb.success_threshold, cb.timeout_secs, cb.half_open_max_calls) == (
        5,
        2,
        60,
        3,
    )
    assert load("circuit_breaker").webhook.circuit_breaker == Config().webhook.circuit_breaker
    retry = load("best_practice_retries").webhook.retry
    assert (retry.max_attempts, retry.initial_delay_ms, retry.max_delay_ms) == (4, 100, 5000)
    sec = load("tls_configuration").security
    assert sec.tls.enabled and sec.ip_whitelist == ["10.0.0.0/8", "172.16.0.0/12"]
    f = load("best_practice_filters").filters[0]
    assert (f.tables, [o.value for o in f.operations], f.columns) == (
        ["orders"],
        ["INSERT", "UPDATE"],
        {"orders": ["status", "total"]},
    )
    assert load("custom_predicates").filters[0].predicate == "total > 1000"
    assert load("jsonpath_extraction").transformations[0].jsonpath == {
        "order_id": "$.key.id",
        "customer": "$.value.customer_id",
        "amount": "$.value.total",
        "operation": "$.operation",
    }


def test_top_level_circuit_breaker_values_reach_the_service_and_conflicts_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("circuit_breaker:\n  failure_threshold: 9\n  timeout_secs: 5\n")
    cb = load_config(p).webhook.circuit_breaker
    assert (cb.failure_threshold, cb.timeout_secs, cb.success_threshold) == (9, 5, 2)
    p.write_text(
        "circuit_breaker: {failure_threshold: 9}\nwebhook: {circuit_breaker: {failure_threshold: 3}}\n"
    )
    with pytest.raises(ConfigError, match=r"both at the top level and as webhook\.circuit_breaker") as exc:
        load_config(p)
    assert exc.value.context["key_path"] == "circuit_breaker"
    p.write_text("circuit_breaker: {failure_treshold: 9}\n")
    with pytest.raises(ConfigError, match="did you mean 'failure_threshold'"):
        load_config(p)


# -- the guide's Python names ---------------------------------------------------------------------


def test_guide_python_names_import_from_the_package(tls_files: dict[str, Path]) -> None:
    from heliosdb_cdc import (  # every name the guide's code uses
        CdcConfig,
        CdcEvent,
        CircuitBreakerConfig,
        CircuitState,
        EventFilter,
        ExactlyOnceConfig,
        OperationType,
        RetryConfig,
        WebhookConfig,
        WebhookRegistration,
        WebhookServer,
        create_mtls_client,
        verify_signature,
    )

    flt = (
        EventFilter.new()
        .tables(["orders"])
        .operations([OperationType.Insert, OperationType.Update])
        .columns("orders", ["status"])
        .predicate("total > 100")
        .build()
    )
    assert flt.matches({"table": "orders", "operation": "INSERT", "value": {"total": 150, "status": "x"}})
    assert not flt.matches({"table": "orders", "operation": "INSERT", "value": {"total": 50, "status": "x"}})

    ctx = create_mtls_client(
        str(tls_files["ca"]), str(tls_files["client_cert"]), str(tls_files["client_key"])
    )
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode is ssl.CERT_REQUIRED

    body = b'{"event_id":"evt_001"}'
    sig = "sha256=" + hmac.new(b"your-webhook-secret", body, hashlib.sha256).hexdigest()
    assert verify_signature(body, sig, "your-webhook-secret")

    config = WebhookConfig(
        worker_pool_size=100,
        max_concurrent_requests=1000,
        retry=RetryConfig(
            max_attempts=3, initial_delay_ms=100, max_delay_ms=30000, multiplier=2.0, jitter=True
        ),
        timeout_secs=30,
    )
    server = WebhookServer(config)
    assert server.config.webhook.circuit_breaker == CircuitBreakerConfig()
    assert server.config.webhook.exactly_once == ExactlyOnceConfig()
    assert CdcConfig().batch_size == 1000
    assert {CircuitState.Closed, CircuitState.Open, CircuitState.HalfOpen} <= set(CircuitState)
    assert WebhookRegistration(url="https://api.example.com/webhooks/db-changes").tables == []
    assert "event_id" in CdcEvent.__dataclass_fields__ or hasattr(CdcEvent, "model_fields")


# -- check-config refuses what run refuses ----------------------------------------------------------


def bad_configs(tmp_path: Path, files: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """name -> (YAML, expected text in the error)."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    state_file = tmp_path / "state-is-a-file"
    state_file.write_text("")
    hook = "https://hooks.example.com/in"
    return {
        "tls cert missing": (
            f"security: {{tls: {{enabled: true, cert_path: {missing}, key_path: {files['key']}}}}}",
            "cannot load the TLS certificate",
        ),
        "tls cert not a certificate": (
            f"security: {{tls: {{enabled: true, cert_path: {junk}, key_path: {files['key']}}}}}",
            "cannot load the TLS certificate",
        ),
        "tls key of another certificate": (
            f"security: {{tls: {{enabled: true, cert_path: {files['cert']}, key_path: {files['client_key']}}}}}",
            "cannot load the TLS certificate",
        ),
        "tls without paths": ("security: {tls: {enabled: true}}", "set security.tls.cert_path"),
        "client CA not a certificate": (
            f"security: {{tls: {{enabled: true, cert_path: {files['cert']}, key_path: {files['key']}, "
            f"client_ca_path: {junk}}}}}",
            "security.tls.client_ca_path",
        ),
        "admin API exposed without a token": (
            "webhook: {bind_address: '0.0.0.0:8080'}",
            "security.admin_token",
        ),
        "outbound CA missing": (
            f"security: {{outbound_ca_path: {missing}}}\nwebhooks: [{{url: '{hook}'}}]",
            "is not a readable file",
        ),
        "webhook client certificate junk": (
            "streams: [{name: s, tables: [t], destination: {type: webhook, address: '"
            + hook
            + f"', options: {{client_cert_path: {junk}}}}}}}]",
            "cannot load the client certificate",
        ),
        "unknown signature scheme": (
            "streams: [{name: s, tables: [t], destination: {type: webhook, address: '"
            + hook
            + "', options: {signature_scheme: sha1}}}]",
            "streams[0].destination.options.signature_scheme",
        ),
        "standard webhooks secret of the wrong form": (
            f"webhook: {{signature_scheme: standard}}\nwebhooks: [{{url: '{hook}', secret: 'plain'}}]",
            "webhooks[0]",
        ),
        "predicate does not parse": (
            "filters: [{name: f, tables: [orders], predicate: 'total >'}]",
            "filters[0]",
        ),
        "stream filter predicate does not parse": (
            f"webhooks: [{{url: '{hook}', filters: [{{predicate: 'total > > 1'}}]}}]",
            "webhooks[0].filters[0]",
        ),
        "template does not compile": (
            "transformations: [{target: x, template: '{{ operation '}]",
            "transformations[0]",
        ),
        "option not a number": (
            "streams: [{name: s, tables: [t], destination: {type: webhook, address: '"
            + hook
            + "', options: {batch_size: many}}}]",
            "key_path=streams[0].destination.options.batch_size",
        ),
        "kafka option out of range": (
            "streams: [{name: k, tables: [t], destination: {type: kafka, address: 'localhost:9092', "
            "topic: t, options: {max_batch: 1000000000}}}]",
            "must be a number from 1 to 1000000",
        ),
        "state_dir is a file": (f"state_dir: {state_file}", "is not a directory"),
    }


def test_check_config_refuses_what_run_refuses(
    tmp_path: Path, tls_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for name, (text, expected) in bad_configs(tmp_path, tls_files).items():
        path = tmp_path / "c.yaml"
        if not text.startswith("state_dir"):
            text = f"state_dir: {tmp_path / 'state'}\n{text}"
        path.write_text(text + "\n")
        for command in ("check-config", "run"):  # run stops at the same check, before any connection
            code = main([command, "-c", str(path)])
            err = capsys.readouterr().err
            assert code == 2, (name, command, err)
            assert expected in err, (name, command, err)


def test_check_config_command_line(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    path = write_guide_yaml("tls_configuration", tmp_path, tls_files)
    res = subprocess.run(
        [sys.executable, "-m", "heliosdb_cdc.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    path.write_text(path.read_text().replace(str(tls_files["key"]), str(tls_files["client_key"])))
    res = subprocess.run(
        [sys.executable, "-m", "heliosdb_cdc.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "cannot load the TLS certificate" in res.stderr and "key_path=security.tls" in res.stderr
