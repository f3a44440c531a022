"""Circuit breaker state machine, as configured in the guide."""

from __future__ import annotations

import pytest

from heliosdb_cdc import CircuitBreakerConfig, CircuitState
from heliosdb_cdc.delivery._circuit import CircuitBreaker, CircuitBreakerRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


CFG = CircuitBreakerConfig(failure_threshold=5, success_threshold=2, timeout_secs=60, half_open_max_calls=3)


def make() -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker("https://api.example.com", CFG, clock=clock), clock  # type: ignore[arg-type]


def test_opens_after_failure_threshold_consecutive_failures() -> None:
    b, _ = make()
    for _ in range(4):
        assert b.try_acquire()
        b.record_failure()
    assert b.state is CircuitState.CLOSED
    b.record_success()  # resets the consecutive count
    for _ in range(4):
        b.record_failure()
    assert b.state is CircuitState.CLOSED
    b.record_failure()
    assert b.state is CircuitState.OPEN


def test_open_rejects_until_timeout_then_half_open_limits_calls() -> None:
    b, clock = make()
    for _ in range(5):
        b.record_failure()
    assert not b.try_acquire()
    clock.now += 59.9
    assert not b.try_acquire()
    clock.now += 0.2
    assert [b.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert b.state is CircuitState.HALF_OPEN


def test_half_open_closes_after_success_threshold() -> None:
    b, clock = make()
    for _ in range(5):
        b.record_failure()
    clock.now += 61
    assert b.try_acquire()
    b.record_success()
    assert b.state is CircuitState.HALF_OPEN
    assert b.try_acquire()
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert b.try_acquire() and b.try_acquire() and b.try_acquire() and b.try_acquire()


def test_half_open_failure_reopens() -> None:
    b, clock = make()
    for _ in range(5):
        b.record_failure()
    clock.now += 61
    assert b.try_acquire()
    b.record_failure()
    assert b.state is CircuitState.OPEN
    assert not b.try_acquire()
    assert [s for _, s in b.transitions] == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.OPEN,
    ]


async def test_registry_get_state_as_in_the_guide() -> None:
    reg = CircuitBreakerRegistry(CFG)
    assert await reg.get_state("https://unknown.example.com") is CircuitState.Closed
    b = reg.breaker("https://api.example.com")
    for _ in range(5):
        b.record_failure()
    assert await reg.get_state("https://api.example.com") is CircuitState.Open
    assert CircuitState.HalfOpen is CircuitState.HALF_OPEN


@pytest.mark.parametrize("field", ["failure_threshold", "success_threshold", "half_open_max_calls"])
def test_config_rejects_non_positive(field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        CircuitBreakerConfig(**{field: 0})
