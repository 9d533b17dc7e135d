"""Time, in one place: the only module of meshlib that reads the time or sleeps.

Every policy takes a ``Clock``; tests pass ``meshlib.testing.FakeClock`` and run in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds, and the two ways to wait."""

    def now(self) -> float:
        """Monotonic seconds (only differences are meaningful)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def wall(self) -> float:
        """Wall-clock seconds since the epoch (for HTTP dates such as ``Retry-After``)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def wall(self) -> float:
        """Wall-clock seconds since the epoch (for HTTP dates such as ``Retry-After``)."""
        return time.time()


SYSTEM_CLOCK = SystemClock()
