"""Fixtures for the inbound side: one traced in-memory mesh per module, the service shapes of
``apps.py`` behind it, in-process and served for real on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshlib import Mesh
from meshlib.telemetry import InboundFinished
from meshlib.telemetry.tracing import MeshTracer, memory_tracer
from meshlib.testing import Call, FakeClock, Upstreams, in_memory_mesh

from .apps import ASGI_KINDS, BUILDERS
from .live import LiveServer, serve_asgi, serve_wsgi

T = TypeVar("T")

CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  propagateHeaders: [end-user, X-Tenant]
"""


class Recorder:
    """A mesh listener that keeps the events it is given."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._lock = threading.Lock()

    def on_event(self, event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def inbound(self) -> list[InboundFinished]:
        with self._lock:
            return [e for e in self.events if isinstance(e, InboundFinished)]


@dataclass
class Service:
    """The mesh the shapes serve with, and what it saw."""

    mesh: Mesh
    upstreams: Upstreams
    tracer: MeshTracer
    spans: InMemorySpanExporter
    recorder: Recorder
    apps: dict[str, Any] = field(default_factory=dict)

    def calls(self, request_id: str) -> list[Call]:
        return [c for c in self.upstreams.calls() if c.headers.get("x-request-id") == request_id]

    def spans_of(self, trace_id: int, count: int) -> list[ReadableSpan]:
        """The finished spans of a trace, once there are ``count`` (a live server ends its
        SERVER span just after the response went out)."""

        def found() -> list[ReadableSpan] | None:
            spans = [
                s
                for s in self.spans.get_finished_spans()
                if s.context is not None and s.context.trace_id == trace_id
            ]
            return spans if len(spans) >= count else None

        return eventually(found)

    def inbound(self, request_id: str) -> InboundFinished:
        def found() -> InboundFinished | None:
            events = [e for e in self.recorder.inbound() if e.request_id == request_id]
            return events[0] if events else None

        return eventually(found)


def eventually(probe: Callable[[], T | None], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("not there in time")
        time.sleep(0.005)


def make_service() -> Service:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews")
    mesh = in_memory_mesh(CONFIG, upstreams)
    tracer, spans = memory_tracer("productpage", clock=mesh.clock)
    mesh.telemetry.set_tracer(tracer)
    recorder = Recorder()
    mesh.telemetry.add_listener(recorder)
    return Service(mesh, upstreams, tracer, spans, recorder)


@pytest.fixture(scope="module")
def service() -> Service:
    return make_service()


@pytest.fixture
def untraced(service: Service) -> Iterator[Service]:
    """The module's service with tracing off for one test."""
    service.mesh.telemetry.set_tracer(None)
    try:
        yield service
    finally:
        service.mesh.telemetry.set_tracer(service.tracer)


@pytest.fixture(scope="module")
def live_servers(service: Service) -> Iterator[Callable[[str], LiveServer]]:
    """``live(kind)``: that shape served for real on 127.0.0.1 (started once per module)."""
    started: dict[str, LiveServer] = {}

    def live(kind: str) -> LiveServer:
        if kind not in started:
            app = BUILDERS[kind](service.mesh)
            started[kind] = serve_asgi(app) if kind in ASGI_KINDS else serve_wsgi(app)
        return started[kind]

    yield live
    for server in started.values():
        server.stop()


Get = Callable[..., httpx.Response]


def driver(service: Service, live: Callable[[str], LiveServer], kind: str, how: str) -> Get:
    """``get(path, headers=...)`` against shape ``kind``: in process (``httpx.ASGITransport``
    with an ``AsyncClient`` or ``httpx.WSGITransport`` with a ``Client``), or over the network
    with a ``Client`` (``live-sync``) or an ``AsyncClient`` (``live-async``)."""
    if how == "inprocess":
        app = service.apps.get(kind)
        if app is None:
            app = service.apps[kind] = BUILDERS[kind](service.mesh)
        if kind in ASGI_KINDS:
            transport = httpx.ASGITransport(app, raise_app_exceptions=False)

            def get_async(path: str, **kwargs: Any) -> httpx.Response:
                async def go() -> httpx.Response:
                    async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                        return await c.get(path, **kwargs)

                return asyncio.run(go())

            return get_async
        wsgi = httpx.WSGITransport(app, raise_app_exceptions=False)

        def get_sync(path: str, **kwargs: Any) -> httpx.Response:
            with httpx.Client(transport=wsgi, base_url="http://app") as c:
                return c.get(path, **kwargs)

        return get_sync
    url = live(kind).url
    if how == "live-sync":

        def get_live(path: str, **kwargs: Any) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=10) as c:
                return c.get(path, **kwargs)

        return get_live

    def get_live_async(path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                return await c.get(path, **kwargs)

        return asyncio.run(go())

    return get_live_async
