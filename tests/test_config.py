"""Configuration: validation errors with key paths, YAML, env expansion, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from heliosdb_cdc import Config, ConfigError, OperationType, config_from_dict, load_config


@pytest.fixture(autouse=True)
def _no_dsn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELIOSDB_CDC_DSN", raising=False)


def error(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)  # type: ignore[arg-type]
    return exc.value


def test_defaults() -> None:
    c = config_from_dict({})
    assert isinstance(c, Config)
    assert c.webhook.retry.max_attempts == 3
    assert c.webhook.bind_address == "127.0.0.1:8080"
    assert c.log_dir == Path("./.heliosdb-cdc") / "log"
    assert c.database == "postgres"


def test_unknown_key_names_its_path() -> None:
    e = error({"webhook": {"retry": {"max_atempts": 3}}})
    assert e.context["key_path"] == "webhook.retry.max_atempts"
    assert "webhook.retry.max_atempts: unknown key" in str(e)
    assert error({"bogus": 1}).context["key_path"] == "bogus"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"webhook": {"retry": {"max_attempts": 0}}}, "webhook.retry.max_attempts"),
        ({"webhook": {"retry": {"max_attempts": -1}}}, "webhook.retry.max_attempts"),
        ({"webhook": {"retry": {"max_attempts": "many"}}}, "webhook.retry.max_attempts"),
        ({"webhook": {"timeout_secs": -5}}, "webhook.timeout_secs"),
        ({"webhook": {"bind_address": "nohost"}}, "webhook.bind_address"),
        ({"cdc": {"batch_size": -1}}, "cdc.batch_size"),
        ({"cdc": {"segment_bytes": 10}}, "cdc.segment_bytes"),
        ({"delivery": {"max_retries": -1}}, "delivery.max_retries"),
        ({"webhooks": [{"url": "https://ok.example/h"}, {"url": "ftp://x/h"}]}, "webhooks[1].url"),
        ({"webhooks": [{"url": "not a url"}]}, "webhooks[0].url"),
        ({"source": {"slot": "Bad-Slot"}}, "source.slot"),
        ({"webhooks": [{"url": "https://a.example", "operations": ["upsert"]}]}, "webhooks[0].operations"),
    ],
)
def test_invalid_values_name_the_key(data: dict, path: str) -> None:
    e = error(data)
    assert e.context["key_path"] == path
    assert f"{path}: " in str(e)


def test_bad_url_message() -> None:
    e = error({"webhooks": [{"url": "ftp://x/h"}]})
    assert "'ftp://x/h' is not an http(s) URL with a host" in str(e)


def test_not_a_mapping() -> None:
    assert "must be a mapping" in str(error(["a"]))


def test_delivery_max_retries_maps_to_retry_attempts() -> None:
    c = config_from_dict(
        {"delivery": {"max_retries": 5, "initial_retry_delay_ms": 250, "max_retry_delay_ms": 9000}}
    )
    assert c.webhook.retry.max_attempts == 6
    assert c.webhook.retry.initial_delay_ms == 250
    assert c.webhook.retry.max_delay_ms == 9000
    assert config_from_dict({"delivery": {"max_retries": 0}}).webhook.retry.max_attempts == 1
    # other retry settings are kept
    c = config_from_dict({"webhook": {"retry": {"multiplier": 3}}, "delivery": {"max_retries": 1}})
    assert (c.webhook.retry.max_attempts, c.webhook.retry.multiplier) == (2, 3.0)


def test_delivery_max_retries_respects_the_attempt_limit() -> None:
    assert config_from_dict({"delivery": {"max_retries": 999_999}}).webhook.retry.max_attempts == 1_000_000
    e = error({"delivery": {"max_retries": 1_000_000}})
    assert e.context["key_path"] == "delivery.max_retries"


def test_retry_delays() -> None:
    r = config_from_dict(
        {"webhook": {"retry": {"initial_delay_ms": 100, "max_delay_ms": 1000}}}
    ).webhook.retry
    assert [r.delay_ms(a) for a in (1, 2, 3, 4, 5, 10)] == [0.0, 100.0, 200.0, 400.0, 800.0, 1000.0]


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_HOST", "hooks.example.com")
    monkeypatch.setenv("HOOK_SECRET", "s3cr3t")
    c = config_from_dict(
        {
            "webhooks": [{"url": "https://${HOOK_HOST}/cdc", "secret": "${HOOK_SECRET}"}],
            "state_dir": "${STATE_DIR_UNSET:-/var/lib/cdc}",
        }
    )
    assert c.webhooks[0].url == "https://hooks.example.com/cdc"
    assert c.webhooks[0].secret.get_secret_value() == "s3cr3t"
    assert c.state_dir == "/var/lib/cdc"


def test_missing_env_var_names_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    e = error({"webhooks": [{"url": "https://${NOPE_NOT_SET}/x"}]})
    assert "NOPE_NOT_SET is not set" in str(e)
    assert e.context["key_path"] == "webhooks[0].url"


def test_dsn_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOSDB_CDC_DSN", "postgresql://app:pw@db.internal:5432/shop")
    c = config_from_dict({"source": {"slot": "s1"}})
    assert c.source.dsn.get_secret_value() == "postgresql://app:pw@db.internal:5432/shop"
    assert c.source.slot == "s1"
    assert c.database == "shop"
    assert config_from_dict({}).database == "shop"
    # an explicit dsn wins
    c = config_from_dict({"source": {"dsn": "postgresql://x@h/other"}})
    assert c.database == "other"


def test_dsn_env_with_invalid_source_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOSDB_CDC_DSN", "postgresql://app@h/db")
    assert error({"source": "oops"}).context["key_path"] == "source"


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOSDB_CDC_DSN", "postgresql://app:dbpassw0rd@h/db")
    c = config_from_dict(
        {
            "webhooks": [{"url": "https://a.example/h", "secret": "hooks3cret"}],
            "streams": [
                {
                    "name": "s",
                    "tables": ["orders"],
                    "destination": {"type": "webhook", "address": "https://b.example/h"},
                    "secret": "streams3cret",
                }
            ],
            "security": {"admin_token": "admint0ken"},
        }
    )
    for text in (repr(c), str(c), c.model_dump_json(), str(c.model_dump())):
        for secret in ("dbpassw0rd", "hooks3cret", "streams3cret", "admint0ken"):
            assert secret not in text
    assert "**********" in c.model_dump_json()
    assert c.security.admin_token is not None
    assert c.security.admin_token.get_secret_value() == "admint0ken"


def test_config_is_immutable() -> None:
    c = config_from_dict({})
    with pytest.raises(Exception, match="frozen"):
        c.state_dir = "x"  # type: ignore[misc]


def test_operations_and_streams() -> None:
    c = config_from_dict(
        {
            "webhooks": [{"url": "https://a.example/h", "operations": ["insert", "Update", "schema change"]}],
            "streams": [
                {
                    "name": "k",
                    "tables": ["orders"],
                    "format": "AVRO",
                    "destination": {"type": "kafka", "address": "localhost:9092", "topic": "t"},
                }
            ],
        }
    )
    assert c.webhooks[0].operations == [
        OperationType.INSERT,
        OperationType.UPDATE,
        OperationType.SCHEMA_CHANGE,
    ]
    assert c.streams[0].format == "avro"
    e = error(
        {
            "streams": [
                {"name": "a", "tables": [], "destination": {"type": "memory", "address": "m"}},
                {"name": "a", "tables": [], "destination": {"type": "memory", "address": "m"}},
            ]
        }
    )
    assert "duplicate stream names" in str(e)
    e = error({"streams": [{"name": "k", "tables": [], "destination": {"type": "kafka", "address": "x"}}]})
    assert "needs a topic" in str(e)
    assert e.context["key_path"] == "streams[0].destination.topic"


def test_load_config_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIES", "7")
    p = tmp_path / "c.yaml"
    p.write_text("webhook:\n  retry:\n    max_attempts: ${RETRIES}\nlogging:\n  level: debug\n  json: true\n")
    c = load_config(p)
    assert c.webhook.retry.max_attempts == 7
    assert c.logging.level == "DEBUG"
    assert c.logging.json_logs is True
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == config_from_dict({})


def test_load_config_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("webhook:\n  retry:\n    max_attempts: [1, 2\n  timeout_secs: 3\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+") as exc:
        load_config(p)
    assert exc.value.context["path"] == str(p)
    p.write_text("a: b\n\tc: d\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1"):
        load_config(p)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_validation_error_names_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("webhook:\n  retry:\n    max_attempts: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.context["key_path"] == "webhook.retry.max_attempts"


# -- YAML: duplicate keys, aliases, nesting --------------------------------------------------------


def load_text(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return load_config(p)


def test_duplicate_keys_are_refused_with_their_lines(tmp_path: Path) -> None:
    text = (
        "security:\n  admin_token: s3cret\nwebhook:\n  timeout_secs: 5\nsecurity:\n  metrics_public: true\n"
    )
    with pytest.raises(ConfigError, match=r"duplicate key 'security' at line 5 \(first given at line 1\)"):
        load_text(tmp_path, text)
    with pytest.raises(ConfigError, match="duplicate key 'max_attempts' at line 4"):
        load_text(tmp_path, "webhook:\n  retry:\n    max_attempts: 3\n    max_attempts: 5\n")


def test_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "filters:\n  - &base {name: a, tables: [orders], operations: [INSERT]}\n  - <<: *base\n    name: b\n"
    )
    c = load_text(tmp_path, text)
    assert [(f.name, f.tables) for f in c.filters] == [("a", ["orders"]), ("b", ["orders"])]


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
        prev = name
    with pytest.raises(ConfigError, match="YAML aliases expand the document by more than 10000 values"):
        load_text(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="refers to a node that contains it"):
        load_text(tmp_path, "filters: &f [*f]\n")
    with pytest.raises(ConfigError, match="nests deeper than 100 levels"):
        load_text(tmp_path, "a: " + "[" * 150 + "]" * 150 + "\n")
    with pytest.raises(ConfigError, match="nests deeper than 100 levels"):
        load_text(tmp_path, "a: " + "[" * 1500 + "\n")


# -- bounds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path", "bound"),
    [
        ({"webhook": {"worker_pool_size": 1_000_000_000}}, "webhook.worker_pool_size", "10000"),
        ({"webhook": {"max_concurrent_requests": 10**9}}, "webhook.max_concurrent_requests", "100000"),
        ({"webhook": {"timeout_secs": 10**9}}, "webhook.timeout_secs", "3600"),
        ({"webhook": {"max_payload_bytes": 10**12}}, "webhook.max_payload_bytes", "1073741824"),
        ({"webhook": {"retry": {"max_delay_ms": 10**12}}}, "webhook.retry.max_delay_ms", "86400000"),
        ({"webhook": {"retry": {"multiplier": 1e9}}}, "webhook.retry.multiplier", "100"),
        ({"webhook": {"retry": {"multiplier": float("inf")}}}, "webhook.retry.multiplier", "finite"),
        (
            {"webhook": {"circuit_breaker": {"timeout_secs": 10**9}}},
            "webhook.circuit_breaker.timeout_secs",
            "86400",
        ),
        (
            {"webhook": {"exactly_once": {"window_secs": 10**12}}},
            "webhook.exactly_once.window_secs",
            "31536000",
        ),
        ({"cdc": {"batch_size": 10**9}}, "cdc.batch_size", "100000"),
        ({"cdc": {"memory_queue_events": 10**9}}, "cdc.memory_queue_events", "1000000"),
        ({"cdc": {"segment_bytes": 10**12}}, "cdc.segment_bytes", "1073741824"),
        ({"cdc": {"poll_interval_ms": 10**9}}, "cdc.poll_interval_ms", "60000"),
        ({"source": {"status_interval_secs": 10**9}}, "source.status_interval_secs", "3600"),
        ({"delivery": {"max_retry_delay_ms": 10**12}}, "delivery.max_retry_delay_ms", "86400000"),
        ({"security": {"max_request_bytes": 10**12}}, "security.max_request_bytes", "1073741824"),
        ({"circuit_breaker": {"failure_threshold": 10**9}}, "circuit_breaker.failure_threshold", "1000000"),
        # settings added with delivery workers
        ({"delivery": {"workers": 10**6}}, "delivery.workers", "64"),
        ({"delivery": {"workers": 0}}, "delivery.workers", "1"),
        ({"cdc": {"partitions": 10**6}}, "cdc.partitions", "4096"),
        ({"cdc": {"partitions": 0}}, "cdc.partitions", "1"),
    ],
)
def test_every_size_is_bounded_and_the_error_says_the_bound(
    data: dict[str, object], path: str, bound: str
) -> None:
    e = error(data)
    assert e.context["key_path"] == path
    assert f"{path}: " in str(e) and bound in str(e)


# -- error messages ------------------------------------------------------------------------------------


def test_every_error_has_its_own_key_path_in_file_order() -> None:
    e = error({"webhook": {"retry": {"max_atempts": 3}}, "cdc": {"batch_size": -1}, "sorce": {}})
    assert e.problems == [
        ("webhook.retry.max_atempts", "unknown key; did you mean 'max_attempts'?"),
        ("cdc.batch_size", "Input should be greater than or equal to 1"),
        ("sorce", "unknown key; did you mean 'source'?"),
    ]
    assert e.context["key_path"] == "webhook.retry.max_atempts"
    assert (
        str(e).index("webhook.retry.max_atempts:") < str(e).index("cdc.batch_size:") < str(e).index("sorce:")
    )


def test_unknown_keys_suggest_or_list_what_is_allowed() -> None:
    assert "did you mean 'bind_address'?" in str(error({"webhook": {"bind_adress": "x"}}))
    assert "did you mean 'cert_path'?" in str(error({"security": {"tls": {"cert": "x"}}}))
    assert "did you mean 'predicate'?" in str(error({"filters": [{"predicat": "a > 1"}]}))
    e = error({"logging": {"zzz": 1}})
    assert "logging.zzz: unknown key; allowed here: json, level" in str(e)


def test_structure_errors_in_plain_words() -> None:
    e = error({"webhook": [{"url": "https://a.example/h"}]})
    assert e.problems == [
        ("webhook", "expected a mapping ('key: value' lines), got a list; did you mean 'webhooks:'?")
    ]
    e = error({"webhooks": {"url": "https://a.example/h"}})
    assert e.problems == [
        ("webhooks", "expected a list ('- item' lines), got a mapping; did you mean 'webhook:'?")
    ]
    e = error({"streams": [{"name": "a", "tables": "t"}]})
    assert e.problems == [
        ("streams[0].tables", "expected a list ('- item' lines), got text"),
        ("streams[0].destination", "required key is missing"),
    ]
    assert "Value error" not in str(error({"webhooks": [{"url": "ftp://x"}]}))


def test_model_level_errors_point_at_the_key() -> None:
    mem = {"type": "memory", "address": "m"}
    e = error({"streams": [{"name": "a", "tables": [], "destination": mem}] * 2})
    assert e.problems == [("streams[1].name", "duplicate stream names: 'a' is also streams[0]")]
    e = error({"streams": [{"name": "w", "tables": [], "destination": {"type": "webhook", "address": "x"}}]})
    assert e.context["key_path"] == "streams[0].destination.address"
    e = error(
        {
            "streams": [
                {
                    "name": "w",
                    "tables": [],
                    "format": "avro",
                    "destination": {"type": "webhook", "address": "https://h.example/"},
                }
            ]
        }
    )
    assert e.context["key_path"] == "streams[0].format"
