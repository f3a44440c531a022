"""Circuit breaker per endpoint, as configured in the guide.

Closed -> Open after ``failure_threshold`` consecutive failures; Open rejects
at once (no request sent) for ``timeout_secs``; then Half-Open lets at most
``half_open_max_calls`` requests through at a time; ``success_threshold``
successes close it, any failure opens it again.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Protocol

from .._config import CircuitBreakerConfig
from .._metrics import CIRCUIT_STATE


class CircuitState(enum.Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    # the guide's Rust spelling
    Closed = 0
    HalfOpen = 1
    Open = 2


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class _SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class CircuitBreaker:
    """The breaker of one endpoint."""

    def __init__(self, endpoint: str, config: CircuitBreakerConfig, clock: Clock | None = None) -> None:
        self.endpoint = endpoint
        self.config = config
        self._clock: Clock = clock or _SystemClock()
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at = 0.0
        self.half_open_calls = 0
        self.transitions: list[tuple[float, CircuitState]] = []
        self._changed = asyncio.Event()
        CIRCUIT_STATE.labels(endpoint).set(0)

    def _set(self, state: CircuitState) -> None:
        if state is self.state:
            return
        self.state = state
        self.transitions.append((self._clock.time(), state))
        CIRCUIT_STATE.labels(self.endpoint).set(state.value)
        if state is CircuitState.OPEN:
            self.opened_at = self._clock.monotonic()
        if state is not CircuitState.HALF_OPEN:
            self.half_open_calls = 0
        self.successes = 0
        self._changed.set()
        self._changed = asyncio.Event()

    def show(self, state: CircuitState) -> None:
        """Take the state of breakers elsewhere (delivery workers): for status and metrics."""
        self._set(state)

    def retry_in(self) -> float:
        """Seconds until a call may be tried (0 when it may go now)."""
        if self.state is CircuitState.OPEN:
            left = self.opened_at + self.config.timeout_secs - self._clock.monotonic()
            if left > 0:
                return left
            self._set(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN and self.half_open_calls >= self.config.half_open_max_calls:
            return 0.05
        return 0.0

    def try_acquire(self) -> bool:
        """Take a slot for one call; False when the circuit rejects it now."""
        if self.retry_in() > 0:
            return False
        if self.state is CircuitState.HALF_OPEN:
            self.half_open_calls += 1
        return True

    async def acquire(self, stop: asyncio.Event | None = None) -> None:
        """Wait until a call is allowed (events wait; they are not dropped)."""
        while not self.try_acquire():
            wait = self.retry_in()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=max(wait, 0.01))
            except TimeoutError:
                pass
            if stop is not None and stop.is_set():
                raise asyncio.CancelledError

    def record_success(self) -> None:
        if self.state is CircuitState.HALF_OPEN:
            self.half_open_calls = max(0, self.half_open_calls - 1)
            self.successes += 1
            if self.successes >= self.config.success_threshold:
                self._set(CircuitState.CLOSED)
        self.failures = 0

    def record_failure(self) -> None:
        if self.state is CircuitState.HALF_OPEN:
            self._set(CircuitState.OPEN)
            return
        self.failures += 1
        if self.state is CircuitState.CLOSED and self.failures >= self.config.failure_threshold:
            self._set(CircuitState.OPEN)

    def release(self) -> None:
        """A half-open slot taken but not used for a result."""
        if self.state is CircuitState.HALF_OPEN:
            self.half_open_calls = max(0, self.half_open_calls - 1)


class CircuitBreakerRegistry:
    """All breakers by endpoint: ``await registry.get_state(url)`` as in the guide."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.config = config
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, endpoint: str) -> CircuitBreaker:
        b = self._breakers.get(endpoint)
        if b is None:
            b = self._breakers[endpoint] = CircuitBreaker(endpoint, self.config)
        return b

    async def get_state(self, endpoint: str) -> CircuitState:
        b = self._breakers.get(endpoint)
        if b is None:
            return CircuitState.CLOSED
        b.retry_in()  # move Open -> Half-Open when its time is up
        return b.state

    def state_of(self, endpoint: str) -> CircuitState:
        """One endpoint's state (CLOSED when it has no breaker yet), without listing all."""
        b = self._breakers.get(endpoint)
        return b.state if b is not None else CircuitState.CLOSED

    def states(self) -> dict[str, CircuitState]:
        return {k: b.state for k, b in self._breakers.items()}
