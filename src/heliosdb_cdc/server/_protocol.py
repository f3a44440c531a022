"""What the HTTP layer needs from the service: the whole of it.

``server/`` is typed against :class:`HttpService`, never against the service's class,
so the service imports the server and not the other way round. The service
(``WebhookServer``) satisfies it; a test double for the HTTP layer needs only this.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .._config import Config, StreamConfig, WebhookRegistration


@runtime_checkable
class HttpService(Protocol):
    """Unknown stream names raise :class:`StreamNotFound`; a taken one :class:`StreamExists`."""

    @property
    def config(self) -> Config: ...

    #: set by the HTTP layer when it serves TLS: reloads the certificate on SIGHUP
    tls_reloader: Any

    # -- health and status ------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``/health``: ``status`` (ok | starting | failed), ``replication_connected``,
        ``streams``, ``source_error``."""
        ...

    def overview(self) -> dict[str, Any]:
        """``/api/status``: capture, slot, local log size, every stream's status."""
        ...

    def stream_status(self, name: str) -> dict[str, Any]: ...

    def list_stream_rows(self) -> list[dict[str, Any]]:
        """Rows of ``SHOW CDC STREAMS`` and ``GET /api/streams``."""
        ...

    # -- streams ------------------------------------------------------------------------
    def stream_names(self) -> list[str]: ...

    def has_stream(self, name: str) -> bool: ...

    def get_stream(self, name: str) -> dict[str, Any]:
        """The stream's catalog row: name, state, config (with its secret)."""
        ...

    async def create_stream(self, cfg: StreamConfig, origin: str = "sql") -> StreamConfig: ...

    async def drop_stream(self, name: str, if_exists: bool = False) -> None: ...

    async def set_paused(self, name: str, paused: bool) -> None: ...

    async def start_snapshot(self, name: str, kind: str = "backfill", where: str | None = None) -> None: ...

    async def cancel_snapshot(self, name: str) -> None: ...

    # -- webhooks (the guide's registration API) ------------------------------------------
    async def webhooks(self) -> list[dict[str, Any]]: ...

    async def register(self, registration: WebhookRegistration) -> str: ...

    async def unregister(self, url_or_name: str) -> None: ...

    # -- dead letters ---------------------------------------------------------------------
    def list_dead_letters(self, stream: str | None, limit: int) -> list[dict[str, Any]]: ...

    async def replay_dead_letters(self, ids: list[int] | None = None, stream: str | None = None) -> int: ...

    def purge_dead_letters(self, stream: str | None = None) -> int: ...
