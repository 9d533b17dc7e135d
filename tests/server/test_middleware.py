"""``MeshMiddleware`` and ``MeshWSGIMiddleware`` in Starlette, FastAPI, Flask, bare ASGI and bare
WSGI apps — in process and served for real on 127.0.0.1, driven by ``httpx.Client`` and
``httpx.AsyncClient``, with handlers that call out through both clients as well."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from meshlib import client, context
from meshlib.server import MeshMiddleware, MeshWSGIMiddleware

from .apps import ASGI_KINDS, KINDS, SYNC_ROUTE, WSGI_KINDS, call_async, call_sync
from .conftest import Get, Service, driver
from .live import LiveServer

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"

HOWS = ("inprocess", "live-sync", "live-async")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=HOWS)
def get(
    request: pytest.FixtureRequest,
    service: Service,
    live_servers: Callable[[str], LiveServer],
    kind: str,
) -> Get:
    return driver(service, live_servers, kind, str(request.param))


def new_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- what is carried


@pytest.mark.parametrize("outbound", ["sync", "async"])
def test_the_request_context_reaches_the_upstream(
    get: Get, service: Service, kind: str, outbound: str
) -> None:
    request_id = new_id()
    response = get(
        f"/{outbound}/7",
        headers={
            "x-request-id": request_id,
            "end-user": "jason",
            "X-Tenant": "acme",
            "x-not-listed": "stays home",
            "traceparent": TRACEPARENT,
        },
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    body = response.json()
    assert body["upstream"] == 200
    assert body["context"]["x-request-id"] == request_id
    assert body["context"]["end-user"] == "jason"
    assert body["context"]["traceparent"] == TRACEPARENT  # as received; attempts replace it

    (call,) = service.calls(request_id)
    assert call.headers["end-user"] == "jason"
    assert call.headers["x-tenant"] == "acme"
    assert "x-not-listed" not in call.headers
    version, trace_id, span_id, flags = call.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != PARENT  # the attempt's own CLIENT span
    assert call.headers.get_list("traceparent") == [call.headers["traceparent"]]


def test_a_request_id_is_made_when_the_caller_sent_none(get: Get, service: Service) -> None:
    response = get("/async/1")
    request_id = response.headers["x-request-id"]
    assert uuid.UUID(request_id).version == 4
    (call,) = service.calls(request_id)
    assert call.headers["x-request-id"] == request_id


def test_a_streamed_body_is_produced_in_the_request_context(get: Get, service: Service) -> None:
    request_id = new_id()
    response = get("/stream", headers={"x-request-id": request_id, "end-user": "ann"})
    assert response.status_code == 200
    assert response.json()["context"]["end-user"] == "ann"
    (call,) = service.calls(request_id)
    assert call.headers["end-user"] == "ann"
    assert service.inbound(request_id).response_bytes == len(response.content)


def test_nothing_of_a_request_stays_current_after_it(get: Get, service: Service) -> None:
    first, second = new_id(), new_id()
    get("/sync/1", headers={"x-request-id": first, "end-user": "jason"})
    response = get("/sync/2", headers={"x-request-id": second})
    assert "end-user" not in response.json()["context"]
    (call,) = service.calls(second)
    assert "end-user" not in call.headers
    assert context.current() is None


# --------------------------------------------------------------------------- what is reported


def test_each_request_is_reported_to_the_telemetry_hub(
    get: Get, service: Service, kind: str
) -> None:
    request_id = new_id()
    response = get("/sync/3", headers={"x-request-id": request_id, "traceparent": TRACEPARENT})
    event = service.inbound(request_id)
    assert (event.method, event.path, event.status) == ("GET", "/sync/3", 200)
    assert event.trace_id == TRACE_ID
    assert event.response_bytes == len(response.content)
    assert event.duration >= 0
    assert event.protocol == "http"


def test_a_failing_handler_is_a_500_with_an_error_span(
    get: Get, service: Service, kind: str
) -> None:
    request_id, trace_id = new_id(), uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{PARENT}-01"
    try:
        response = get("/fail", headers={"x-request-id": request_id, "traceparent": traceparent})
    except RuntimeError:  # bare WSGI in process: no server turns the exception into a 500
        assert kind == "wsgi"
    else:
        assert response.status_code == 500
    assert service.inbound(request_id).status == 500
    (server,) = service.spans_of(int(trace_id, 16), 1)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 500


def test_the_server_span_continues_the_callers_trace(get: Get, service: Service, kind: str) -> None:
    trace_id = uuid.uuid4().hex
    request_id = new_id()
    get(
        "/async/9",
        headers={"x-request-id": request_id, "traceparent": f"00-{trace_id}-{PARENT}-01"},
    )
    spans = service.spans_of(int(trace_id, 16), 2)
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    (attempt,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == PARENT
    assert server.parent.is_remote
    assert attempt.parent is not None
    assert server.context is not None
    assert attempt.parent.span_id == server.context.span_id
    attributes = dict(server.attributes or {})
    route = SYNC_ROUTE[kind]
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/async/9"
    assert attributes["http.response.status_code"] == 200
    if route is not None:
        assert attributes["http.route"] == route.replace("sync", "async")
        assert server.name == f"GET {attributes['http.route']}"
    else:
        assert "http.route" not in attributes
        assert server.name == "GET"
    (call,) = service.calls(request_id)
    assert attempt.context is not None
    assert call.headers["traceparent"] == f"00-{trace_id}-{attempt.context.span_id:016x}-01"


def test_with_tracing_off_the_trace_headers_go_on_as_received(get: Get, untraced: Service) -> None:
    request_id = new_id()
    b3 = {
        "x-b3-traceid": TRACE_ID,
        "x-b3-spanid": PARENT,
        "x-b3-sampled": "1",
        "baggage": "tenant=acme",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
    }
    get("/sync/4", headers={"x-request-id": request_id, **b3})
    (call,) = untraced.calls(request_id)
    for name, value in b3.items():
        assert call.headers[name] == value
    assert untraced.inbound(request_id).trace_id == TRACE_ID


# --------------------------------------------------------------------------- edges


def test_a_response_that_sets_its_own_request_id_keeps_it() -> None:
    async def app(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
        headers = [(b"X-Request-Id", b"mine")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    from meshlib.testing import Upstreams, in_memory_mesh

    mesh = in_memory_mesh("", Upstreams())

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(MeshMiddleware(app, mesh=mesh))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await c.get("/", headers={"x-request-id": "theirs"})

    response = asyncio.run(go())
    assert response.headers.get_list("x-request-id") == ["mine"]


def test_websocket_and_lifespan_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(f"{scope['type']}:{context.current() is not None}")

    from meshlib.testing import Upstreams, in_memory_mesh

    middleware = MeshMiddleware(app, mesh=in_memory_mesh("", Upstreams()))

    async def nothing() -> dict[str, object]:
        return {}

    async def sink(message: object) -> None:
        return None

    asyncio.run(middleware({"type": "lifespan"}, nothing, sink))
    asyncio.run(middleware({"type": "websocket", "path": "/ws", "headers": []}, nothing, sink))
    assert seen == ["lifespan:False", "websocket:False"]


def test_the_deadline_header_sets_the_context_deadline() -> None:
    from meshlib.testing import FakeClock, Upstreams, in_memory_mesh

    clock = FakeClock(start=50.0)
    mesh = in_memory_mesh("", Upstreams(), clock=clock)
    deadlines: list[float | None] = []

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        current = context.current()
        deadlines.append(current.deadline if current else None)
        start_response("200 OK", [])
        return [b""]

    wsgi = httpx.WSGITransport(MeshWSGIMiddleware(app, mesh=mesh))
    with httpx.Client(transport=wsgi, base_url="http://app") as c:
        c.get("/", headers={"x-envoy-expected-rq-timeout-ms": "1500"})
        c.get("/")
    assert deadlines == [51.5, None]


@pytest.mark.parametrize("shape", ["asgi", "wsgi"])
def test_mesh_none_is_the_default_mesh_found_at_the_first_request(
    monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    monkeypatch.setattr(client, "_mesh", None)
    monkeypatch.setattr(client, "_shared", None)
    from meshlib.testing import Upstreams, in_memory_mesh

    upstreams = Upstreams()
    upstreams.endpoint("reviews")

    def wsgi(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        call_sync(mesh)
        start_response("200 OK", [])
        return [b""]

    async def asgi(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
        await call_async(mesh)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    # built before the default mesh is configured: it is looked up at the first request
    app = MeshWSGIMiddleware(wsgi) if shape == "wsgi" else MeshMiddleware(asgi)
    mesh = in_memory_mesh(
        "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: p}\n"
        "spec: {propagateHeaders: [end-user]}\n",
        upstreams,
    )
    client.configure(mesh)
    if shape == "wsgi":
        with httpx.Client(transport=httpx.WSGITransport(app), base_url="http://a") as c:
            c.get("/", headers={"end-user": "jason"})
    else:

        async def go() -> None:
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://a") as c:
                await c.get("/", headers={"end-user": "jason"})

        asyncio.run(go())
    (call,) = upstreams.calls("reviews")
    assert call.headers["end-user"] == "jason"


def test_every_shape_is_tested() -> None:
    assert set(KINDS) == set(ASGI_KINDS) | set(WSGI_KINDS) == set(SYNC_ROUTE)


@pytest.mark.parametrize("traceparent", [TRACEPARENT, None])
def test_fastapis_own_server_span_and_meshlibs_nest(traceparent: str | None) -> None:
    """FastAPI makes spans of its own when it has a tracer provider: meshlib's SERVER span is
    the child of FastAPI's, never its sibling, with or without an incoming trace."""
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshlib.telemetry.tracing import MeshTracer
    from meshlib.testing import Upstreams, in_memory_mesh

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    upstreams = Upstreams()
    upstreams.endpoint("reviews")
    mesh = in_memory_mesh("", upstreams)
    mesh.telemetry.set_tracer(MeshTracer(provider, clock=mesh.clock))
    app = FastAPI(telemetry={"tracer_provider": provider, "metrics": False, "logs": False})
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/page")
    async def page() -> dict[str, object]:
        return await call_async(mesh)

    async def go() -> None:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            headers = {"traceparent": traceparent} if traceparent else {}
            assert (await c.get("/page", headers=headers)).status_code == 200

    asyncio.run(go())
    spans = {s.context.span_id: s for s in exporter.get_finished_spans() if s.context}
    servers = [s for s in spans.values() if s.kind is SpanKind.SERVER]
    ours = next(s for s in servers if s.instrumentation_scope.name == "meshlib")
    theirs = next(s for s in servers if s is not ours)
    assert ours.parent is not None
    assert theirs.context is not None
    assert ours.parent.span_id == theirs.context.span_id
    if traceparent:
        assert theirs.parent is not None
        assert f"{theirs.parent.span_id:016x}" == PARENT
    else:
        assert theirs.parent is None
    (attempt,) = [s for s in spans.values() if s.kind is SpanKind.CLIENT]
    ancestors = []
    parent = attempt.parent
    while parent is not None and parent.span_id in spans:
        ancestors.append(parent.span_id)
        parent = spans[parent.span_id].parent
    assert ours.context is not None
    assert ours.context.span_id in ancestors
