"""What the service adds to a webhook sink for security: the signature scheme, the
outbound TLS context (CA bundle, client certificate) and the SSRF guard; and the
checks a webhook stream passes before it is stored.

Destination options (YAML ``streams[].destination.options``, REST
``destination.options``): ``signature_scheme`` (``heliosdb`` | ``standard``),
``ca_path``, ``client_cert_path``, ``client_key_path``.
"""

from __future__ import annotations

from typing import Any

from .._errors import ConfigError
from . import _standard_webhooks as standard_webhooks
from ._ssrf import SsrfGuard, SsrfRefused
from ._tls import client_context


def _secrets(cfg: Any) -> list[str]:
    if cfg.secret is None or not cfg.secret.get_secret_value():
        return []
    return [s.strip() for s in cfg.secret.get_secret_value().split(",") if s.strip()]


def signature_scheme(cfg: Any, config: Any) -> str:
    scheme = str(cfg.destination.options.get("signature_scheme") or config.webhook.signature_scheme).lower()
    if scheme not in standard_webhooks.SCHEMES:
        raise ConfigError(
            f"stream {cfg.name}: signature_scheme must be 'heliosdb' or 'standard', not {scheme!r}",
            key_path="destination.options.signature_scheme",
        )
    if scheme == "standard":
        for s in _secrets(cfg):
            try:
                standard_webhooks.parse_secret(s)
            except ValueError as exc:
                # the message never contains the secret itself
                raise ConfigError(f"stream {cfg.name}: {exc}", key_path="secret") from None
    return scheme


def webhook_security_kwargs(cfg: Any, config: Any) -> dict[str, Any]:
    """Keyword arguments for :class:`WebhookSink` from a StreamConfig and the Config."""
    return {
        "signature_scheme": signature_scheme(cfg, config),
        "ssl_context": client_context(cfg.destination.options, config.security),
        "ssrf_guard": SsrfGuard.from_security(config.security),
    }


async def validate_webhook_stream(cfg: Any, config: Any) -> None:
    """Checks at registration: options, TLS files, and the URL's addresses (SSRF guard)."""
    if cfg.destination.type != "webhook":
        return
    webhook_security_kwargs(cfg, config)
    try:
        await SsrfGuard.from_security(config.security).check_url(cfg.destination.address)
    except SsrfRefused as exc:
        raise ConfigError(str(exc), key_path="destination.address") from None
