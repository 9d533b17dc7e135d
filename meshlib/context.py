"""The inbound request's context, carried to every outbound call the handler makes.

Under Istio every app copies ``x-request-id``, the trace headers and app headers such as
``end-user`` from its inbound request onto each outbound call by hand (Bookinfo's
``getForwardHeaders``). With meshlib the server side (``meshlib.server``) puts them in a
``RequestContext`` held in a ``contextvars.ContextVar``, and the client side adds them to every call
made while that context is active — no app code.

``contextvars`` flow by themselves into ``asyncio`` tasks (``create_task``, ``gather``) and
``asyncio.to_thread``. They do not flow into threads an app starts itself nor into
``concurrent.futures`` executors: use ``meshlib.context.wrap``, ``start_thread`` or
``ContextExecutor`` there (or ``contextvars.copy_context().run``). docs/propagation.md has the
whole table.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

REQUEST_ID = "x-request-id"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What an inbound request hands on to the outbound calls made while serving it.

    ``headers``: lowercase name → value, added to each outbound call that does not set them
    itself — ``x-request-id``, the app headers of ``propagateHeaders`` (``end-user``, …) and the
    inbound trace headers as received (a mesh that traces replaces these on each attempt with
    its own span's). ``deadline``: the inbound request's own deadline on the mesh clock, if it
    has one. ``service``: who serves it.
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None
    service: str | None = None

    @property
    def request_id(self) -> str | None:
        return self.headers.get(REQUEST_ID)


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "meshlib_request_context", default=None
)


def current() -> RequestContext | None:
    """The request context of the inbound request being served, if any."""
    return _current.get()


def set_current(context: RequestContext | None) -> contextvars.Token[RequestContext | None]:
    """Make ``context`` current; ``reset_current(token)`` puts the previous one back."""
    return _current.set(context)


def reset_current(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


@contextmanager
def use(context: RequestContext | None) -> Iterator[RequestContext | None]:
    """Make ``context`` current for the block (servers do this around each handler call)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def wrap(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` bound to the current context: call it from any thread and it sees this request."""
    snapshot = contextvars.copy_context()

    def run_in_context(*args: P.args, **kwargs: P.kwargs) -> T:
        return snapshot.run(fn, *args, **kwargs)

    return run_in_context


def start_thread(target: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
    """Start a thread that runs ``target`` in the current request context."""
    thread = threading.Thread(target=wrap(target), args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


class ContextExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in the context of the code that submitted them."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


__all__ = [
    "REQUEST_ID",
    "ContextExecutor",
    "RequestContext",
    "current",
    "reset_current",
    "set_current",
    "start_thread",
    "use",
    "wrap",
]
