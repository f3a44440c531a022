"""Opt-in Standard Webhooks signatures (https://www.standardwebhooks.com).

Selected per stream with the destination option ``signature_scheme: standard``
or for every webhook stream with ``webhook.signature_scheme: standard``.
Secrets have the form ``whsec_<base64 key>``; several active secrets (rotation,
comma-separated like the default scheme) give several space-separated
signatures. Headers::

    webhook-id: <event id, stable across retries>
    webhook-timestamp: <unix seconds when signed>
    webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> [v1,<...>]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence

SCHEMES = ("heliosdb", "standard")
PREFIX = "whsec_"


def parse_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; ValueError when malformed."""
    if not secret.startswith(PREFIX):
        raise ValueError("a Standard Webhooks secret must look like whsec_<base64>")
    raw = secret[len(PREFIX) :]
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret must look like whsec_<base64>") from None
    if len(key) < 16:
        raise ValueError("a Standard Webhooks secret needs at least 16 bytes of key")
    return key


def generate_secret(nbytes: int = 32) -> str:
    import secrets

    return PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(keys: Sequence[bytes], msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(k, msg_id, ts, body) for k in keys),
    }
