"""``@handler`` on handler functions of Starlette, FastAPI, Flask and Werkzeug, on plain
functions given a mapping of headers, and served for real on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request  # Starlette's Request
from opentelemetry.trace import SpanKind

from meshlib import context, handler
from meshlib.server import MeshMiddleware
from meshlib.server.decorator import status_of, status_of_error

from .apps import call_async, call_sync
from .conftest import Service, make_service
from .live import serve_asgi, serve_wsgi


@pytest.fixture
def service() -> Service:
    return make_service()


def asgi_get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await c.get(path, **kwargs)

    return asyncio.run(go())


def wsgi_get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(transport=httpx.WSGITransport(app), base_url="http://app") as c:
        return c.get(path, **kwargs)


def only_call(service: Service) -> httpx.Headers:
    (call,) = service.upstreams.calls("reviews")
    return call.headers


# --------------------------------------------------------------------------- Starlette / FastAPI


def starlette(service: Service) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    mesh = service.mesh

    @handler(mesh=mesh)
    async def reviews(request: Request) -> JSONResponse:
        return JSONResponse(await call_async(mesh))

    @handler(mesh=mesh)
    def ratings(request: Request) -> JSONResponse:  # a worker thread: the context goes along
        return JSONResponse(call_sync(mesh), status_code=203)

    return Starlette(
        routes=[Route("/reviews/{id}", reviews), Route("/ratings/{id}", ratings)],
    )


@pytest.mark.parametrize(
    ("path", "route", "status"),
    [("/reviews/1", "/reviews/{id}", 200), ("/ratings/2", "/ratings/{id}", 203)],
)
def test_starlette_handlers(service: Service, path: str, route: str, status: int) -> None:
    response = asgi_get(
        starlette(service), path, headers={"end-user": "jason", "x-request-id": "r-1"}
    )
    assert response.status_code == status
    assert response.headers["x-request-id"] == "r-1"  # echoed on the returned response
    assert response.json()["context"]["end-user"] == "jason"
    headers = only_call(service)
    assert (headers["end-user"], headers["x-request-id"]) == ("jason", "r-1")
    (event,) = service.recorder.inbound()
    assert (event.method, event.path, event.status, event.request_id) == (
        "GET",
        path,
        status,
        "r-1",
    )
    server = next(s for s in service.spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert server.attributes is not None
    assert server.attributes["http.route"] == route


def test_fastapi_handlers_keep_their_signature(service: Service) -> None:
    # FastAPI resolves the annotations by name in the module: Request is imported at the top
    mesh = service.mesh
    app = FastAPI()

    @app.get("/items/{item}")
    @handler(mesh=mesh)
    async def item(request: Request, item: int, q: str = "") -> dict[str, Any]:
        return {"item": item, "q": q, **(await call_async(mesh))}

    @app.get("/missing")
    @handler(mesh=mesh)
    def missing(request: Request) -> None:
        raise HTTPException(status_code=404)

    assert list(inspect.signature(item).parameters) == ["request", "item", "q"]
    response = asgi_get(app, "/items/5?q=x", headers={"end-user": "ann"})
    assert response.json()["item"] == 5
    assert response.json()["q"] == "x"
    assert only_call(service)["end-user"] == "ann"
    assert asgi_get(app, "/missing").status_code == 404
    statuses = {(e.path, e.status) for e in service.recorder.inbound()}
    assert statuses == {("/items/5", 200), ("/missing", 404)}


# --------------------------------------------------------------------------- Flask / Werkzeug


def flask(service: Service) -> Any:
    from flask import Flask, abort

    mesh = service.mesh
    app = Flask("handler_shape")

    @app.get("/reviews/<int:id>")
    @handler(mesh=mesh)
    def reviews(id: int) -> tuple[dict[str, Any], int]:  # the request is flask.request
        return call_sync(mesh), 201

    @app.get("/async")
    @handler(mesh=mesh)
    def async_() -> dict[str, Any]:
        return asyncio.run(call_async(mesh))

    @app.get("/forbidden")
    @handler(mesh=mesh)
    def forbidden() -> None:
        abort(403)

    return app


def test_flask_views_take_the_request_from_flask(service: Service) -> None:
    app = flask(service)
    response = wsgi_get(app, "/reviews/3", headers={"end-user": "jason", "traceparent": TP})
    assert response.status_code == 201
    request_id = response.headers["x-request-id"]  # echoed, though the view returned a tuple
    headers = only_call(service)
    assert headers["x-request-id"] == request_id
    assert headers["end-user"] == "jason"
    (event,) = service.recorder.inbound()
    assert (event.status, event.trace_id) == (201, TP.split("-")[1])
    spans = service.spans.get_finished_spans()
    server = next(s for s in spans if s.kind is SpanKind.SERVER)
    attempt = next(s for s in spans if s.kind is SpanKind.CLIENT)
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/reviews/<int:id>"
    assert attempt.parent is not None
    assert server.context is not None
    assert attempt.parent.span_id == server.context.span_id


def test_flask_async_calls_and_http_errors(service: Service) -> None:
    app = flask(service)
    assert wsgi_get(app, "/async", headers={"end-user": "ann"}).status_code == 200
    assert only_call(service)["end-user"] == "ann"
    response = wsgi_get(app, "/forbidden")
    assert response.status_code == 403
    assert "x-request-id" in response.headers
    assert [e.status for e in service.recorder.inbound()] == [200, 403]


def test_a_werkzeug_request_argument(service: Service) -> None:
    from werkzeug.wrappers import Request as WerkzeugRequest
    from werkzeug.wrappers import Response

    mesh = service.mesh

    @WerkzeugRequest.application
    @handler(mesh=mesh)
    def app(request: WerkzeugRequest) -> Response:
        call_sync(mesh)
        return Response("ok", status=202)

    response = wsgi_get(app, "/w", headers={"x-request-id": "w-1", "END-USER": "jason"})
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "w-1"
    assert only_call(service)["end-user"] == "jason"
    (event,) = service.recorder.inbound()
    assert (event.path, event.status, event.response_bytes) == ("/w", 202, 2)


# --------------------------------------------------------------------------- plain functions


def test_a_mapping_of_headers_in_any_case(service: Service) -> None:
    mesh = service.mesh

    @handler(mesh=mesh)
    def consume(headers: dict[str, str]) -> str:
        call_sync(mesh)
        current = context.current()
        assert current is not None
        return current.headers["x-request-id"]

    assert consume({"X-Request-ID": "m-1", "End-User": "jason", "Other": "x"}) == "m-1"
    headers = only_call(service)
    assert headers["end-user"] == "jason"
    assert "other" not in headers


async def test_an_async_function_without_a_request_gets_a_new_request_id(
    service: Service,
) -> None:
    mesh = service.mesh

    @handler(mesh=mesh)
    async def job(n: int) -> str | None:
        await call_async(mesh)
        current = context.current()
        return current.request_id if current else None

    first, second = await job(1), await job(2)
    assert first is not None
    assert second is not None
    assert first != second
    assert uuid.UUID(first).version == 4
    assert context.current() is None
    assert [c.headers["x-request-id"] for c in service.upstreams.calls("reviews")] == [
        first,
        second,
    ]


def test_a_handler_called_inside_a_served_request_just_runs(service: Service) -> None:
    mesh = service.mesh

    @handler(mesh=mesh)
    def inner(headers: dict[str, str]) -> str | None:
        current = context.current()
        return current.request_id if current else None

    @handler(mesh=mesh)
    def outer(headers: dict[str, str]) -> str | None:
        return inner({"x-request-id": "other"})

    assert outer({"x-request-id": "outer"}) == "outer"
    assert [e.request_id for e in service.recorder.inbound()] == ["outer"]

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": (outer({}) or "").encode()})

    response = asgi_get(MeshMiddleware(asgi, mesh=mesh), "/", headers={"x-request-id": "mw"})
    assert response.text == "mw"  # the middleware serves the request, the handlers run inside
    assert [e.request_id for e in service.recorder.inbound()] == ["outer", "mw"]


def test_an_exception_is_reported_and_raised(service: Service) -> None:
    @handler(mesh=service.mesh)
    def broken(headers: dict[str, str]) -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        broken({"x-request-id": "e-1"})
    (event,) = service.recorder.inbound()
    assert (event.status, event.request_id) == (500, "e-1")
    assert context.current() is None


def test_status_of_results_and_errors() -> None:
    class TeapotError(Exception):
        code = 418

    class WithStatus:
        status = 204

    assert status_of("text") == 200
    assert status_of(("body", 302, {})) == 302
    assert status_of(("body", {"h": "v"})) == 200
    assert status_of(WithStatus()) == 204
    assert status_of(httpx.Response(409)) == 409
    assert status_of_error(TeapotError()) == 418
    assert status_of_error(ValueError()) == 500


# --------------------------------------------------------------------------- served for real


@pytest.fixture
def live_apps(service: Service) -> Iterator[dict[str, str]]:
    servers = {"starlette": serve_asgi(starlette(service)), "flask": serve_wsgi(flask(service))}
    try:
        yield {name: server.url for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_decorated_handlers_served_for_real(
    service: Service, live_apps: dict[str, str], client_kind: str
) -> None:
    paths = {"starlette": ["/reviews/1", "/ratings/2"], "flask": ["/reviews/3", "/async"]}

    async def fetch_async(url: str, request_id: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as c:
            return await c.get(url, headers={"x-request-id": request_id, "end-user": "jason"})

    for name, url in live_apps.items():
        for path in paths[name]:
            request_id = f"{name}{path}-{client_kind}"
            if client_kind == "sync":
                with httpx.Client(timeout=10) as c:
                    response = c.get(
                        url + path, headers={"x-request-id": request_id, "end-user": "jason"}
                    )
            else:
                response = asyncio.run(fetch_async(url + path, request_id))
            assert response.status_code < 300
            assert response.headers["x-request-id"] == request_id
            (call,) = [
                c
                for c in service.upstreams.calls("reviews")
                if c.headers["x-request-id"] == request_id
            ]
            assert call.headers["end-user"] == "jason"


TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_failing_tracer_never_fails_the_request(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from meshlib.telemetry.tracing import MeshTracer

    class Broken(MeshTracer):
        def start_server(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("tracer down")

    service.mesh.telemetry.set_tracer(Broken(TracerProvider()))

    @handler(mesh=service.mesh)
    def served(headers: dict[str, str]) -> str:
        call_sync(service.mesh)
        return "ok"

    assert served({"x-request-id": "t-1"}) == "ok"
    assert "tracer failed to start the server span" in caplog.text
    assert only_call(service)["x-request-id"] == "t-1"
    assert service.recorder.inbound()[0].status == 200
