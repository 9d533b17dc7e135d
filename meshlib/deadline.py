"""The deadline of the I/O in progress: one absolute time on the mesh's clock.

A timeout that httpx hands an inner transport (``request.extensions["timeout"]``) bounds each
operation — each read, each write, the connect — so an upstream that sends one byte at a time,
never pausing as long as the timeout, is never cut off. A deadline bounds them all together.

The mesh transport sets the deadline that bounds what an inner transport does for it, around
each call it makes to one: an attempt's deadline (``min(perTryTimeout, what is left of the
call's)``) while the attempt is sent and its response headers awaited, then the call's own
deadline (the route timeout, or the caller's timeout if that ends first) around each read of the
response body, whoever reads it. The inner transports meshlib ships honour it at every blocking
step: each read, write, connect and TLS handshake of the httpcore transports (``DeadlineBackend``
in ``meshlib.clients.httpx.httpcore``, and ``TLSBackend`` in ``meshlib.clients.httpx.tls``, the
TLS the mesh originates) waits at most what is left, and the aiohttp transport arms
one timer for it. A step that begins with nothing left fails at once with a timeout, without
touching the network.

A context variable carries it (a thread's own, an asyncio task's own), so that it reaches the
network layer through transports that know nothing of the mesh, and never leaks to other calls.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token

__all__ = ["Deadline", "current", "enter", "leave"]


class Deadline:
    """An absolute time ``at`` on the clock ``now`` (the mesh's: ``Mesh.now``)."""

    __slots__ = ("at", "now")

    def __init__(self, at: float, now: Callable[[], float]) -> None:
        self.at = at
        self.now = now

    def left(self) -> float:
        """Seconds left (zero or less: the deadline has passed)."""
        return self.at - self.now()

    def bound(self, timeout: float | None) -> float | None:
        """``timeout`` (None: none), shortened to what is left; zero or less when nothing is."""
        left = self.at - self.now()
        return left if timeout is None or left < timeout else timeout

    def __repr__(self) -> str:
        return f"<Deadline in {self.left():.3f}s>"


_current: ContextVar[Deadline | None] = ContextVar("meshlib.deadline", default=None)

#: The deadline of the I/O in progress in this thread or task, or None.
current: Callable[[], Deadline | None] = _current.get
#: Make ``deadline`` the current one; returns the token for ``leave``.
enter: Callable[[Deadline | None], Token[Deadline | None]] = _current.set
#: Put back the deadline ``enter`` replaced.
leave: Callable[[Token[Deadline | None]], None] = _current.reset
