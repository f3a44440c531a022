"""HTTP webhook destination: signed POSTs with aiohttp.

Headers: ``Content-Type: application/json``, ``X-HeliosDB-Signature:
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
import hashlib
import hmac
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp

from . import _standard_webhooks as standard_webhooks
from ._base import DELIVERED, OutboundEvent, Outcome, SinkResult
from ._ssrf import GuardedResolver, SsrfGuard, SsrfRefused

RETRYABLE_4XX = frozenset({408, 425, 429})


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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class WebhookSink:
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
    ) -> None:
        self.url = url
        self.secrets = [s for s in secrets if s]
        self.name = name
        self.lanes = lanes
        self.max_batch = batch_size
        self.batch_mode = batch_size > 1
        self.timeout = aiohttp.ClientTimeout(total=timeout_secs, connect=min(timeout_secs, 10))
        self.limit = max_concurrent_requests
        self.semaphore = semaphore
        self.ssl_context = ssl_context
        self.max_payload_bytes = max_payload_bytes
        self.extra_headers = extra_headers or {}
        # security (docs/security.md): Standard Webhooks keys, connect-time SSRF guard
        self.signature_scheme = signature_scheme
        std = signature_scheme == "standard"
        self._std_keys = [standard_webhooks.parse_secret(s) for s in self.secrets] if std else []
        self.ssrf_guard = ssrf_guard
        self._session: aiohttp.ClientSession | None = None
        self._literal_verdict: str | None = None  # "" allowed, else the refusal

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.limit,
                limit_per_host=self.limit,
                ssl=self.ssl_context or True,
                resolver=GuardedResolver(self.ssrf_guard) if self.ssrf_guard else None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "heliosdb-cdc"},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers_for(self, body: bytes, events: Sequence[OutboundEvent]) -> dict[str, str]:
        first = events[0]
        headers = {
            "Content-Type": "application/json",
            "X-HeliosDB-Event-ID": first.event_id,
            "X-HeliosDB-Timestamp": _now_header(),
            "X-HeliosDB-Sequence": str(first.sequence),
        }
        if len(events) > 1:
            headers["X-HeliosDB-Event-Count"] = str(len(events))
        if self._std_keys:
            headers.update(standard_webhooks.headers(self._std_keys, first.event_id, body))
        elif self.secrets:
            headers["X-HeliosDB-Signature"] = ",".join(sign(body, s) for s in self.secrets)
        headers.update(self.extra_headers)
        headers.update(first.headers)
        return headers

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]:
        if not batch:
            return []
        if self.batch_mode:
            body = b"[" + b",".join(e.body for e in batch) + b"]"
            res = await self._post(body, batch)
            return [res] * len(batch)
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
        if self._session is None:
            await self.start()
        assert self._session is not None
        headers = self.headers_for(body, events)
        sem = self.semaphore
        try:
            if sem is not None:
                await sem.acquire()
            try:
                async with self._session.post(
                    self.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.read()
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            finally:
                if sem is not None:
                    sem.release()
        except TimeoutError:
            return SinkResult(Outcome.RETRY, f"timed out after {self.timeout.total}s")
        except aiohttp.ClientSSLError as exc:
            return SinkResult(Outcome.RETRY, f"TLS error: {exc}")
        except aiohttp.ClientError as exc:
            return SinkResult(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return SinkResult(Outcome.RETRY, f"connection error: {exc}")
        if 200 <= status < 300:
            return DELIVERED
        if status >= 500 or status in RETRYABLE_4XX:
            return SinkResult(Outcome.RETRY, f"HTTP {status}", status=status, retry_after=retry_after)
        if 300 <= status < 400:
            return SinkResult(Outcome.FAILED, f"HTTP {status}: redirects are not followed", status=status)
        return SinkResult(Outcome.FAILED, f"HTTP {status}", status=status)
