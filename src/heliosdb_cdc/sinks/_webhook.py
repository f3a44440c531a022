"""HTTP webhook destination: signed POSTs over keep-alive connections (``_http.HttpPool``).

Headers: ``Content-Type: application/json`` (``application/cloudevents+json`` with
``format: cloudevents``), ``X-HeliosDB-Signature:
sha256=<hex HMAC-SHA256 of the exact body>`` (one ``sha256=`` value per active
secret, comma-separated, when secrets are rotated), ``X-HeliosDB-Event-ID``,
``X-HeliosDB-Timestamp`` (when the request was signed) and
``X-HeliosDB-Sequence``. With ``batch_size > 1`` a POST carries a JSON array.
With ``signature_scheme="standard"`` the Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) replace ``X-HeliosDB-Signature``;
``ssrf_guard`` re-checks the destination's addresses on every new connection
(docs/security.md).

Outcomes: any 2xx delivered; 408, 425, 429 and 5xx, timeouts and connection
errors are retried (``Retry-After`` honoured); other 4xx fail for good and go
to dead letters.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import math
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import _standard_webhooks as standard_webhooks
from ._base import DELIVERED, OutboundEvent, Outcome, Sink, SinkResult
from ._http import HttpPool
from ._ssrf import SsrfGuard, SsrfRefused

if TYPE_CHECKING:
    from .._config import StreamConfig
    from ._registry import SinkContext

RETRYABLE_4XX = frozenset({408, 425, 429})
_HEAD = (
    b"Content-Type: %s\r\nX-HeliosDB-Event-ID: %s\r\nX-HeliosDB-Timestamp: %s\r\nX-HeliosDB-Sequence: %d\r\n"
)


_TS_CACHE: list[object] = [0, ""]


def _now_header() -> str:
    """The signing time to the second, formatted once per second."""
    now = int(time.time())
    if _TS_CACHE[0] != now:
        _TS_CACHE[0] = now
        _TS_CACHE[1] = datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(_TS_CACHE[1])


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex>``: what the guide's ``verify_signature`` expects."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _encode_headers(headers: dict[str, str]) -> bytes:
    """``Name: value\\r\\n`` lines; a line break in a name or value is refused (header injection)."""
    text = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if text.count("\r") != len(headers) or text.count("\n") != len(headers):
        bad = next(k for k, v in headers.items() if "\r" in k + v or "\n" in k + v)
        raise ValueError(f"header {bad!r} contains a line break")
    return text.encode()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delay-seconds (``120``) or an
    HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``, RFC 9110 10.2.3); a date in the past
    is 0. None when absent or unreadable. The caller caps it (``retry.max_delay_ms``)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms carry no zone; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class WebhookSink(Sink):
    def __init__(
        self,
        url: str,
        secrets: Sequence[str] = (),
        *,
        name: str = "webhook",
        lanes: int = 100,
        batch_size: int = 1,
        timeout_secs: float = 30.0,
        max_concurrent_requests: int = 1000,
        semaphore: asyncio.Semaphore | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_payload_bytes: int = 1024 * 1024,
        extra_headers: dict[str, str] | None = None,
        signature_scheme: str = "heliosdb",
        ssrf_guard: SsrfGuard | None = None,
        content_type: str = "application/json",
        batch_content_type: str = "application/json",
    ) -> None:
        self.url = url
        self.secrets = [s for s in secrets if s]
        self.name = name
        self.lanes = lanes
        self.max_batch = batch_size
        self.batch_mode = batch_size > 1
        self.timeout_secs = timeout_secs
        self.limit = max_concurrent_requests
        self.semaphore = semaphore
        self.ssl_context = ssl_context
        self.max_payload_bytes = max_payload_bytes
        self.extra_headers = extra_headers or {}
        # CloudEvents structured mode: application/cloudevents+json (-batch+json for arrays)
        self._content_type = content_type.encode()
        self._batch_content_type = batch_content_type.encode()
        self._extra = _encode_headers(self.extra_headers)
        # security (docs/security.md): Standard Webhooks keys, connect-time SSRF guard
        self.signature_scheme = signature_scheme
        std = signature_scheme == "standard"
        self._std_keys = [standard_webhooks.parse_secret(s) for s in self.secrets] if std else []
        self.ssrf_guard = ssrf_guard
        self._pool: HttpPool | None = None
        self._literal_verdict: str | None = None  # "" allowed, else the refusal

    async def start(self) -> None:
        if self._pool is None:
            self._pool = HttpPool(
                self.url,
                ssl_context=self.ssl_context,
                connect_timeout=min(self.timeout_secs, 10),
                timeout=self.timeout_secs,
                ssrf_guard=self.ssrf_guard,
                max_idle=self.limit,
            )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _header_bytes(self, body: bytes, events: Sequence[OutboundEvent]) -> bytes:
        first = events[0]
        ctype = self._batch_content_type if self.batch_mode else self._content_type
        head = _HEAD % (ctype, first.event_id.encode(), _now_header().encode(), first.sequence)
        if len(events) > 1:
            head += b"X-HeliosDB-Event-Count: %d\r\n" % len(events)
        if self._std_keys:
            head += _encode_headers(standard_webhooks.headers(self._std_keys, first.event_id, body))
        elif self.secrets:
            head += b"X-HeliosDB-Signature: %s\r\n" % ",".join(sign(body, s) for s in self.secrets).encode()
        head += self._extra
        if first.headers:
            head += _encode_headers(first.headers)
        return head

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]:
        if not batch:
            return []
        if self.batch_mode:
            body = b"[" + b",".join(e.body for e in batch) + b"]"
            res = await self._post(body, batch)
            return [res] * len(batch)
        if len(batch) == 1:  # the default (one event per POST): no gather, no extra tasks
            ev = batch[0]
            return [await self._post(ev.body, (ev,))]
        results = await asyncio.gather(*(self._post(e.body, (e,)) for e in batch))
        return list(results)

    async def _post(self, body: bytes, events: Sequence[OutboundEvent]) -> SinkResult:
        if len(body) > self.max_payload_bytes:
            return SinkResult(
                Outcome.FAILED,
                f"payload of {len(body)} bytes is over webhook.max_payload_bytes={self.max_payload_bytes}",
            )
        if self.ssrf_guard is not None:
            # IP-literal hosts never reach the resolver; the verdict for a literal depends on
            # the URL alone, so it is computed once
            if self._literal_verdict is None:
                try:
                    self.ssrf_guard.check_literal_url(self.url)
                    self._literal_verdict = ""
                except SsrfRefused as exc:
                    self._literal_verdict = str(exc)
            if self._literal_verdict:
                return SinkResult(Outcome.FAILED, self._literal_verdict)
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        try:
            headers = self._header_bytes(body, events)
        except ValueError as exc:
            return SinkResult(Outcome.FAILED, str(exc))
        sem = self.semaphore
        try:
            if sem is not None:
                await sem.acquire()
            try:
                status, retry_header = await self._pool.post(headers, body)
            finally:
                if sem is not None:
                    sem.release()
        except TimeoutError:
            return SinkResult(Outcome.RETRY, f"timed out after {self.timeout_secs}s")
        except ssl.SSLError as exc:
            return SinkResult(Outcome.RETRY, f"TLS error: {exc}")
        except OSError as exc:
            return SinkResult(Outcome.RETRY, f"connection error: {exc}")
        retry_after = retry_after_seconds(retry_header)
        if 200 <= status < 300:
            return DELIVERED
        if status >= 500 or status in RETRYABLE_4XX:
            return SinkResult(Outcome.RETRY, f"HTTP {status}", status=status, retry_after=retry_after)
        if 300 <= status < 400:
            return SinkResult(Outcome.FAILED, f"HTTP {status}: redirects are not followed", status=status)
        return SinkResult(Outcome.FAILED, f"HTTP {status}", status=status)


def webhook_sink_for(cfg: StreamConfig, ctx: SinkContext) -> tuple[Sink, str]:
    """The sink registry's factory for ``webhook`` destinations: endpoint = the URL."""
    from ._webhook_security import webhook_security_kwargs  # it reads the service's Config

    dest = cfg.destination
    wh = ctx.config.webhook
    secrets = []
    if cfg.secret is not None and cfg.secret.get_secret_value():
        secrets = [s.strip() for s in cfg.secret.get_secret_value().split(",")]
    sink = WebhookSink(
        dest.address,
        secrets,
        name=cfg.name,
        lanes=wh.worker_pool_size,
        batch_size=int(dest.options.get("batch_size", wh.batch_size)),
        timeout_secs=wh.timeout_secs,
        max_concurrent_requests=wh.max_concurrent_requests,
        semaphore=ctx.semaphore,
        max_payload_bytes=wh.max_payload_bytes,
        **webhook_security_kwargs(cfg, ctx.config),  # signature scheme, TLS, SSRF guard
        **ctx.content_types(cfg.format),  # CloudEvents: application/cloudevents+json
    )
    return sink, dest.address
