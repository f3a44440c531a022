"""Outbound TLS for webhook destinations: verification on, TLS 1.2+, optional CA
bundle and client certificate (mutual TLS).

``create_mtls_client(ca_path, cert_path, key_path)`` is the guide's function;
:func:`client_context` builds the context a webhook stream uses from its
destination options (``ca_path``, ``client_cert_path``, ``client_key_path``)
and ``security.outbound_ca_path``. There is no option that turns verification
off.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import ConfigError

TLS_OPTIONS = ("ca_path", "client_cert_path", "client_key_path")


def _readable(path: str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path!r} is not a readable file")
    return str(p)


def create_client_context(
    ca_path: str | None = None, cert_path: str | None = None, key_path: str | None = None
) -> ssl.SSLContext:
    """A verifying client context: the system CAs (or ``ca_path``), TLS 1.2 or later,
    and a client certificate when ``cert_path`` is given."""
    if ca_path:
        ctx = ssl.create_default_context(cafile=_readable(ca_path, "CA bundle"))
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_path:
        try:
            ctx.load_cert_chain(
                _readable(cert_path, "client certificate"),
                _readable(key_path, "client key") if key_path else None,
            )
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot load the client certificate {cert_path!r}: {exc}") from None
    elif key_path:
        raise ConfigError("client_key_path is set but client_cert_path is not")
    return ctx


def create_mtls_client(ca_path: str, cert_path: str, key_path: str) -> ssl.SSLContext:
    """The guide's ``create_mtls_client``: trust ``ca_path``, present ``cert_path``/``key_path``."""
    return create_client_context(ca_path, cert_path, key_path)


def client_context(options: Mapping[str, Any], security: Any = None) -> ssl.SSLContext | None:
    """The context for a webhook destination, or None for the default (system CAs)."""
    ca = options.get("ca_path") or getattr(security, "outbound_ca_path", None)
    cert = options.get("client_cert_path")
    key = options.get("client_key_path")
    if not (ca or cert or key):
        return None
    return create_client_context(ca, cert, key)
