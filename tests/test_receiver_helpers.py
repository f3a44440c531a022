"""heliosdb_cdc.receiver: the guide's verify_signature, timestamp tolerance, idempotent handling."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from heliosdb_cdc.receiver import IdempotentHandler, verify_signature, verify_timestamp
from heliosdb_cdc.sinks import sign


def guide_verify_signature(payload: bytes, signature: str, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, expected)


def test_signature_matches_the_guides_receiver_code() -> None:
    body = b'{"event_id":"evt_001","operation":"INSERT"}'
    sig = sign(body, "your-webhook-secret")
    assert guide_verify_signature(body, sig, "your-webhook-secret")
    assert verify_signature(body, sig, "your-webhook-secret")
    assert not verify_signature(body + b" ", sig, "your-webhook-secret")
    assert not verify_signature(body, sig, "other-secret")


def test_rotated_secrets_any_signature_matches() -> None:
    body = b"{}"
    header = ",".join(sign(body, s) for s in ("new-secret", "old-secret"))
    assert verify_signature(body, header, "old-secret")
    assert verify_signature(body, header, "new-secret")
    assert not verify_signature(body, header, "third")


def test_timestamp_tolerance() -> None:
    now = datetime(2026, 1, 4, 12, 0, tzinfo=UTC)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    assert verify_timestamp(now.strftime(fmt), 300, now=now.timestamp())
    assert not verify_timestamp((now - timedelta(minutes=6)).strftime(fmt), 300, now=now.timestamp())
    assert not verify_timestamp("not a time", 300)


def test_idempotent_handler_processes_each_event_once(tmp_path: Path) -> None:
    seen: list[Any] = []
    handler = IdempotentHandler(str(tmp_path / "p.db"), seen.append)
    ev = {"event_id": "evt_1", "value": {"id": 1}}
    assert handler(ev) == {"status": "success", "event_id": "evt_1"}
    assert handler(ev) == {"status": "duplicate", "event_id": "evt_1"}
    # a new handler on the same file remembers
    again = IdempotentHandler(str(tmp_path / "p.db"), seen.append)
    assert again(ev)["status"] == "duplicate"
    assert len(seen) == 1


def test_failed_processing_is_not_marked(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(ev: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")

    handler = IdempotentHandler(str(tmp_path / "p.db"), flaky)
    ev = {"event_id": "evt_2"}
    try:
        handler(ev)
    except RuntimeError:
        pass
    assert handler(ev)["status"] == "success"
    assert calls["n"] == 2
