"""Shadow requests: the copies a route's ``mirror``/``mirrors`` send, their answers discarded.

As Envoy's shadow policy sends them (Istio configures it from ``mirror``/``mirrors``), a copy
goes to the mirror's destination with ``-shadow`` appended to its ``Host``, never delays the
call, and its answer or failure never reaches the caller. What bounds them:

* **The route's timeout.** Envoy gives a shadow request the route's timeout (its
  ``global_timeout``, ``x-envoy-upstream-rq-timeout-ms`` included). So does meshlib: a copy must
  be answered, body and all, by the call's route deadline (its start plus the timeout), every
  phase of it bounded as the call's own are (``meshlib.deadline``); a copy still waiting for a
  thread when that deadline passes is not sent. A route without a timeout gives its copies
  none, as in Envoy.
* **A bounded queue.** At most ``limit`` copies (64) are outstanding per mesh — waiting for one
  of the ``threads`` (4) that send the sync client's copies, or in flight — sync and async
  together. A copy that finds them all taken is dropped and counted, so an unresponsive mirror
  target costs a bounded amount of memory, threads and sockets, and the drops show (``dropped``,
  and the metric ``meshlib_mirror_dropped_total``).

``Mirrors`` keeps the counts: ``outstanding``, ``sent`` (answered, whatever the status),
``failed`` (no answer: an error, or the deadline) and ``dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

import httpx

from meshlib.deadline import Deadline, enter, leave
from meshlib.telemetry import MirrorDropped, Telemetry

__all__ = ["MIRROR_LIMIT", "MIRROR_THREADS", "Mirrors"]

log = logging.getLogger("meshlib.mirror")

#: Copies outstanding at most per mesh (queued or in flight); more are dropped.
MIRROR_LIMIT: Final = 64
#: Threads sending the sync client's copies.
MIRROR_THREADS: Final = 4


class Mirrors:
    """The shadow requests of one mesh: sent in the background, at most ``limit`` outstanding."""

    def __init__(
        self,
        now: Callable[[], float],
        telemetry: Telemetry,
        *,
        limit: int = MIRROR_LIMIT,
        threads: int = MIRROR_THREADS,
    ) -> None:
        self.limit = limit
        self.threads = threads
        self._now = now
        self._telemetry = telemetry
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: set[Future[None]] = set()
        self._closed = False
        #: copies queued or in flight
        self.outstanding = 0
        #: copies answered (any status)
        self.sent = 0
        #: copies that got no answer: an error, or the route's deadline
        self.failed = 0
        #: copies not sent: ``limit`` were outstanding already (or the mesh was closed)
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"<Mirrors outstanding={self.outstanding} sent={self.sent} failed={self.failed} "
            f"dropped={self.dropped}>"
        )

    # ------------------------------------------------------------------ sending

    def send(
        self,
        transport: httpx.BaseTransport,
        request: httpx.Request,
        deadline: float | None,
        destination: str,
    ) -> bool:
        """Send ``request`` through ``transport`` on a mirror thread, to be answered by
        ``deadline`` (absolute, on the mesh clock; None: no bound). False: dropped."""
        if not self._admit(destination):
            return False
        executor = self._executor
        if executor is None:
            with self._lock:
                executor = self._executor
                if executor is None:
                    executor = self._executor = ThreadPoolExecutor(
                        self.threads, thread_name_prefix="meshlib-mirror"
                    )
        try:
            future = executor.submit(self._send, transport, request, deadline)
        except RuntimeError:  # shut down meanwhile: the mesh was closed
            self._settle(None)
            return False
        self._queued.add(future)
        future.add_done_callback(self._queued.discard)
        return True

    def asend(
        self,
        transport: httpx.AsyncBaseTransport,
        request: httpx.Request,
        deadline: float | None,
        destination: str,
    ) -> bool:
        """``send`` for async clients: a task on the running event loop. False: dropped."""
        if not self._admit(destination):
            return False
        task = asyncio.get_running_loop().create_task(self._asend(transport, request, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def close(self) -> None:
        """Send no more copies: those queued are dropped, the async ones in flight cancelled;
        the sync ones in flight end by their deadline."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        for future in list(self._queued):
            if future.cancel():  # still queued: dropped
                self._settle(None)
        for task in list(self._tasks):
            loop = task.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    # ------------------------------------------------------------------ internals

    def drop(self, destination: str, why: str) -> None:
        """Count a copy to ``destination`` that is not sent (``why``, for the debug log)."""
        with self._lock:
            self.dropped += 1
        self._dropped(destination, why)

    def _admit(self, destination: str) -> bool:
        with self._lock:
            if not self._closed and self.outstanding < self.limit:
                self.outstanding += 1
                return True
            self.dropped += 1
        self._dropped(destination, f"{self.limit} copies outstanding")
        return False

    def _dropped(self, destination: str, why: str) -> None:
        log.debug("mirror to %s dropped: %s", destination, why)
        if self._telemetry.listening:
            self._telemetry.emit(MirrorDropped(destination))

    def _settle(self, answered: bool | None) -> None:
        with self._lock:
            self.outstanding -= 1
            if answered is True:
                self.sent += 1
            elif answered is False:
                self.failed += 1
            else:
                self.dropped += 1

    def _bound(self, request: httpx.Request, deadline: float | None) -> Deadline | None:
        """The copy's deadline, its timeouts set to what is left of it; raises
        ``httpx.PoolTimeout`` when nothing is."""
        if deadline is None:
            return None
        bound = Deadline(deadline, self._now)
        left = bound.left()
        if left <= 0:
            raise httpx.PoolTimeout("the route's deadline passed before the copy was sent")
        request.extensions = {
            **request.extensions,
            "timeout": {"connect": left, "read": left, "write": left, "pool": left},
        }
        return bound

    def _send(
        self, transport: httpx.BaseTransport, request: httpx.Request, deadline: float | None
    ) -> None:
        answered = False
        try:
            token = enter(self._bound(request, deadline))
            try:
                response = transport.handle_request(request)
                try:
                    for _ in response.stream:  # type: ignore[union-attr]
                        pass
                finally:
                    response.close()
            finally:
                leave(token)
            answered = True
        except Exception as exc:  # a copy's failure never reaches the caller
            log.debug("mirror to %s failed: %s", request.url, exc)
        finally:
            self._settle(answered)

    async def _asend(
        self, transport: httpx.AsyncBaseTransport, request: httpx.Request, deadline: float | None
    ) -> None:
        answered = False
        try:
            token = enter(self._bound(request, deadline))
            try:
                response = await transport.handle_async_request(request)
                try:
                    async for _ in response.stream:  # type: ignore[union-attr]
                        pass
                finally:
                    await response.aclose()
            finally:
                leave(token)
            answered = True
        except Exception as exc:  # a copy's failure never reaches the caller
            log.debug("mirror to %s failed: %s", request.url, exc)
        finally:
            self._settle(answered)
