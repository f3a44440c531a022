"""Security of the service's own HTTP endpoints (admin REST API, /sql, /metrics).

* :func:`ip_allowlist_middleware` -- ``security.ip_whitelist`` (CIDRs, IPv4 and
  IPv6) checked on every request; others get 403 and a warning in the log.
  ``X-Forwarded-For`` is honoured only when the TCP peer is inside
  ``security.trusted_proxies``.
* :func:`auth_middleware` -- bearer tokens: ``security.admin_token`` (every
  request) and ``security.read_only_token`` (GET/HEAD, and ``POST /sql`` with
  SHOW statements only). ``/health``, the static status page and
  ``/openapi.json`` stay open; ``/metrics`` needs a token when tokens are set,
  unless ``security.metrics_public: true``. With ``security.tls.client_ca_path``
  a verified client certificate counts as the admin scope. Tokens are compared
  in constant time.
* :func:`server_ssl_context` -- TLS 1.2+ server context; :class:`CertReloader`
  loads the certificate chain again into the same context (on SIGHUP), so new
  connections get the new certificate without a restart.
* body size: ``security.max_request_bytes`` (aiohttp ``client_max_size``; 413 when
  over). Header sizes use aiohttp's bounds (8190 bytes per line, 32 KiB of
  fields in total); slow clients are cut off by aiohttp's keep-alive timeout.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .._errors import ConfigError

log = logging.getLogger("heliosdb_cdc.security")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

OPEN_PATHS = frozenset({"/health", "/", "/openapi.json"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

ADMIN = "admin"
READ_ONLY = "read_only"


def _networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _addr(value: str) -> IPAddress | None:
    try:
        a = ipaddress.ip_address(value.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def _inside(addr: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(request: web.Request, trusted_proxies: tuple[IPNetwork, ...]) -> IPAddress | None:
    """The client's address: the TCP peer, or -- only when the peer is a trusted proxy --
    the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    addr = _addr(str(peer[0])) if peer else None
    if addr is None or not trusted_proxies or not _inside(addr, trusted_proxies):
        return addr
    chain: list[str] = []
    for value in request.headers.getall("X-Forwarded-For", []):
        chain.extend(p for p in value.split(",") if p.strip())
    for hop in reversed(chain):
        a = _addr(hop)
        if a is None:
            return None  # garbage in the chain: treat as unknown (refused)
        addr = a
        if not _inside(a, trusted_proxies):
            break
    return addr


def ip_allowlist_middleware(allowed: Iterable[str], trusted_proxies: Iterable[str] = ()) -> Any:
    nets = _networks(allowed)
    proxies = _networks(trusted_proxies)

    @web.middleware
    async def ip_allowlist(request: web.Request, handler: Handler) -> web.StreamResponse:
        addr = client_address(request, proxies)
        if addr is None or not _inside(addr, nets):
            log.warning(
                "refused %s %s from %s: not in security.ip_whitelist",
                request.method,
                request.path,
                addr if addr is not None else "an unknown address",
            )
            return web.json_response({"error": "forbidden: address not allowed"}, status=403)
        return await handler(request)

    return ip_allowlist


def _token_bytes(secret: Any) -> bytes | None:
    if secret is None:
        return None
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    return value.encode() if value else None


def _has_client_cert(request: web.Request) -> bool:
    if request.transport is None:
        return False
    obj = request.transport.get_extra_info("ssl_object")
    return bool(obj is not None and obj.getpeercert())


def _sql_is_read_only(text: str) -> bool:
    from ..sql import ShowStreams, ShowStreamStatus, parse

    try:
        statements = parse(text)
    except Exception:
        return False
    return bool(statements) and all(isinstance(s, ShowStreams | ShowStreamStatus) for s in statements)


def auth_middleware(
    admin_token: Any = None,
    read_only_token: Any = None,
    *,
    metrics_public: bool = False,
    client_cert_auth: bool = False,
) -> Any:
    admin = _token_bytes(admin_token)
    reader = _token_bytes(read_only_token)
    # two distinct random values of the same shape stand in for unset tokens, so every
    # request does the same two comparisons whatever is configured
    absent = b"\x00unset-admin-token\x00"
    absent_ro = b"\x00unset-read-only-token\x00"

    def scope_of(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and presented:
            given = presented.strip().encode()
            is_admin = hmac.compare_digest(given, admin or absent)
            is_reader = hmac.compare_digest(given, reader or absent_ro)
            if is_admin and admin:
                return ADMIN
            if is_reader and reader:
                return READ_ONLY
        if client_cert_auth and _has_client_cert(request):
            return ADMIN
        return None

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or (path == "/metrics" and metrics_public):
            return await handler(request)
        scope = scope_of(request)
        if scope is None:
            log.warning("unauthenticated %s %s refused", request.method, path)
            return web.json_response(
                {"error": "authentication required: send Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="heliosdb-cdc"'},
            )
        if scope == READ_ONLY and request.method not in READ_METHODS:
            allowed = False
            if request.method == "POST" and path == "/sql":
                from ._body import read_text

                text = await read_text(request)  # undecodable: the same 4xx as for the admin
                if isinstance(text, web.Response):
                    return text
                allowed = _sql_is_read_only(text)
            if not allowed:
                return web.json_response(
                    {"error": "forbidden: the read-only token allows GET requests and SHOW statements only"},
                    status=403,
                )
        return await handler(request)

    return authenticate


def security_middlewares(security: Any) -> list[Any]:
    """The middlewares ``security`` asks for, outermost (allow-list) first."""
    out: list[Any] = []
    if security.ip_whitelist:
        out.append(ip_allowlist_middleware(security.ip_whitelist, security.trusted_proxies))
    client_cert = bool(security.tls.enabled and security.tls.client_ca_path)
    if security.admin_token is not None or security.read_only_token is not None or client_cert:
        out.append(
            auth_middleware(
                security.admin_token,
                security.read_only_token,
                metrics_public=security.metrics_public,
                client_cert_auth=client_cert,
            )
        )
    return out


# -- TLS ---------------------------------------------------------------------------------


def server_ssl_context(tls: Any) -> ssl.SSLContext:
    """TLS 1.2+ server context from ``security.tls`` (cert_path, key_path, client_ca_path)."""
    if not tls.cert_path or not tls.key_path:
        raise ConfigError(
            "security.tls.enabled is true: set security.tls.cert_path and security.tls.key_path",
            key_path="security.tls",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS")
    _load_chain(ctx, tls.cert_path, tls.key_path)
    if getattr(tls, "client_ca_path", None):
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load security.tls.client_ca_path {tls.client_ca_path!r}: {exc}",
                key_path="security.tls.client_ca_path",
            ) from None
        # optional: a verified certificate authenticates; /health stays reachable without one
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {cert!r} / key {key!r}: {exc}", key_path="security.tls"
        ) from None


class CertReloader:
    """Loads ``cert_path``/``key_path`` again into the live context (new connections only)."""

    def __init__(self, ctx: ssl.SSLContext, cert_path: str, key_path: str) -> None:
        self.ctx = ctx
        self.cert_path = cert_path
        self.key_path = key_path
        self.reloads = 0

    def reload(self) -> bool:
        try:
            _load_chain(self.ctx, self.cert_path, self.key_path)
        except ConfigError as exc:
            log.error("TLS certificate reload failed, keeping the current one: %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert_path)
        return True

    def install_sighup(self, loop: Any) -> bool:
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            return False
        return True

    @staticmethod
    def remove_sighup(loop: Any) -> None:
        try:
            loop.remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    a = _addr(h)
    return bool(a is not None and a.is_loopback)


def check_http_security(config: Any) -> None:
    """Refuse to serve the admin API on a non-loopback address without authentication,
    and fail early on a TLS setting that cannot work."""
    sec = config.security
    host = config.webhook.bind_address.rpartition(":")[0]
    has_auth = sec.admin_token is not None or bool(sec.tls.enabled and sec.tls.client_ca_path)
    if not is_loopback_host(host) and not has_auth:
        raise ConfigError(
            f"webhook.bind_address {config.webhook.bind_address} is not a loopback address, so the "
            "admin API needs authentication: set security.admin_token (and optionally "
            "security.read_only_token), or bind to 127.0.0.1",
            key_path="security.admin_token",
        )
    if sec.tls.enabled:
        server_ssl_context(sec.tls)
