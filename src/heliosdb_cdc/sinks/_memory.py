"""In-memory sink for tests: records what it received, can be told to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._base import DELIVERED, OutboundEvent, Sink, SinkResult

if TYPE_CHECKING:
    from .._config import StreamConfig
    from ._registry import SinkContext


class MemorySink(Sink):
    def __init__(
        self,
        name: str = "memory",
        lanes: int = 4,
        max_batch: int = 100,
        decide: Callable[[OutboundEvent], SinkResult] | None = None,
        keep: bool = True,
    ) -> None:
        self.name = name
        self.lanes = lanes
        self.max_batch = max_batch
        self.received: list[OutboundEvent] = []
        self.keep = keep  # False: count only (a null sink for benchmarks)
        self.count = 0
        self.calls = 0
        self._decide = decide
        self.changed = asyncio.Event()
        self.closed = False
        self.tracks_position = True  # nothing to de-duplicate: no delivery records

    async def start(self) -> None:
        self.closed = False

    async def send(self, batch: Sequence[OutboundEvent]) -> list[SinkResult]:
        self.calls += 1
        results = []
        for ev in batch:
            res = self._decide(ev) if self._decide else DELIVERED
            if res.ok:
                self.count += 1
                if self.keep:
                    self.received.append(ev)
            results.append(res)
        self.changed.set()
        return results

    async def close(self) -> None:
        self.closed = True


def memory_sink_for(cfg: StreamConfig, ctx: SinkContext) -> tuple[Sink, str]:
    """The sink registry's factory for ``memory`` destinations (tests, benchmarks)."""
    return MemorySink(cfg.name, keep=bool(cfg.destination.options.get("keep", True))), f"memory://{cfg.name}"
