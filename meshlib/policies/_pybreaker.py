"""The parts of ``meshlib.policies.breaker`` built on pybreaker's classes.

Imported when the first breaker is made, not with ``meshlib.policies.breaker``: pybreaker
imports redis whenever it is installed, and redis loads much more (its OpenTelemetry metrics,
cryptography) — a cost only a service with ``spec.circuitBreakers`` should pay.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

import pybreaker

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import ConfigError

_SETTINGS_FILE = "BreakerSettings"

CircuitBreaker = pybreaker.CircuitBreaker
CircuitBreakerError = pybreaker.CircuitBreakerError


class ClockedMemoryStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's in-memory storage, remembering *when* the circuit opened on the injected clock.

    pybreaker stamps ``opened_at`` with ``datetime.now()`` in ``CircuitBreaker.open``; that
    datetime is kept for display, and the monotonic ``Clock.now()`` of the same moment is kept
    beside it. The open timeout is measured on the latter, so a fake clock drives it in tests.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self._opened_at_clock: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_at = value
        self._opened_at_clock = self._clock.now()

    def seconds_open(self) -> float | None:
        opened = self._opened_at_clock
        return None if opened is None else self._clock.now() - opened


# The property of pybreaker's Redis storage, called explicitly by the subclass below.
_REDIS_OPENED_AT: Any = pybreaker.CircuitRedisStorage.__dict__["opened_at"]


class ClockedRedisStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, with ``opened_at`` taken from the injected clock's wall time.

    Processes share the moment the circuit opened, so it must be wall time (``Clock.wall()``
    when the clock has it, the system's otherwise). pybreaker keeps it in whole seconds, so a
    shared breaker's reset timeout has a resolution of one second.
    """

    def __init__(self, clock: Clock, client: object, namespace: str) -> None:
        wall = getattr(clock, "wall", None)
        self._wall: Callable[[], float] = (
            cast("Callable[[], float]", wall) if callable(wall) else SYSTEM_CLOCK.wall
        )
        super().__init__(pybreaker.STATE_CLOSED, cast("Any", client), namespace=namespace)

    @property
    def opened_at(self) -> datetime | None:
        return cast("datetime | None", _REDIS_OPENED_AT.__get__(self, type(self)))

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        _REDIS_OPENED_AT.__set__(self, datetime.fromtimestamp(self._wall(), timezone.utc))

    def seconds_open(self) -> float | None:
        opened = self.opened_at
        return None if opened is None else self._wall() - opened.timestamp()


def redis_storage(destination: str, target: object, clock: Clock) -> ClockedRedisStorage:
    """pybreaker's ``CircuitRedisStorage`` for ``destination``; ``redis`` is imported only here."""
    missing = (
        "shared breaker state needs the 'redis' package (pip install redis), "
        "or leave redis unset to keep the state in this process"
    )
    client = target
    if isinstance(target, str):
        try:  # an optional dependency, imported only when configured
            redis: Any = importlib.import_module("redis")
        except ImportError as exc:
            raise ConfigError.single(_SETTINGS_FILE, 0, "redis", missing) from exc
        try:
            client = redis.Redis.from_url(target)
        except ValueError as exc:
            raise ConfigError.single(
                _SETTINGS_FILE, 0, "redis", f"invalid redis URL {target!r}: {exc}"
            ) from exc
    if not pybreaker.HAS_REDIS_SUPPORT:
        raise ConfigError.single(_SETTINGS_FILE, 0, "redis", missing)
    try:
        return ClockedRedisStorage(clock, client, namespace=f"meshlib:{destination}")
    except Exception as exc:  # pybreaker initialises its keys at once: redis must be reachable
        raise ConfigError.single(
            _SETTINGS_FILE, 0, "redis", f"cannot set up shared breaker state: {exc}"
        ) from exc


class TransitionListener(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's state changes to the owning ``Breaker``."""

    def __init__(
        self,
        changed: Callable[
            [pybreaker.CircuitBreakerState | None, pybreaker.CircuitBreakerState], None
        ],
    ) -> None:
        self._changed = changed

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._changed(old_state, new_state)
