"""Context headers from outside the process that cannot be carried on: raw non-ASCII bytes (and
other bytes no HTTP client may send) in ``x-request-id``, the ``propagateHeaders``, the trace
headers. A real server (meshlib's own runner for the ASGI middleware and its WSGI adapter,
Werkzeug for a Flask view under ``@handler``, uvicorn for a Starlette endpoint under
``@handler``) receives them; the handler calls a real upstream process through
``httpx.Client`` and ``httpx.AsyncClient``. The calls succeed: ``x-request-id`` is replaced by
a fresh one (and that one is echoed), a trace header is dropped (the request starts a new
trace), an app header is dropped; each refusal is counted
(``meshlib.server.refused_headers()``, the metric ``meshlib_inbound_headers_refused_total``)
and logged once per header, not per request."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.serving import make_server as make_werkzeug_server

from meshlib import Mesh, handler
from meshlib.server import MeshMiddleware, MeshWSGIMiddleware, refused_headers
from meshlib.server.runner import make_server, make_wsgi_server
from meshlib.telemetry.metrics import scrape
from tests.integration.upstream import Upstream

HOST = "reviews.mesh.invalid"
URL = f"http://{HOST}:9080/reviews/0"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NEW_TRACE = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def mesh_config(address: str, tracing: bool, metrics: bool = False) -> str:
    telemetry = "  telemetry:\n"
    if tracing:
        telemetry += "    tracing: {enabled: true, propagation: [tracecontext, baggage, b3multi]}\n"
    if metrics:
        telemetry += "    metrics: {enabled: true}\n"
    return (
        "apiVersion: meshlib.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: productpage}\n"
        "spec:\n"
        "  propagateHeaders: [end-user, x-request-id, x-custom]\n"
        f"{telemetry if tracing or metrics else ''}"
        "  registry:\n"
        "    static:\n"
        f'      {HOST}: [{{address: "{address}"}}]\n'
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


# --------------------------------------------------------------------------- the handler's work


def call_sync(mesh: Mesh) -> dict[str, Any]:
    """One call through ``httpx.Client``: what the upstream received, or what went wrong."""
    try:
        with mesh.client(timeout=10.0) as http:
            response = http.get(URL)
    except Exception as exc:  # the test reports whatever escaped to the app
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"status": response.status_code, "headers": response.json()["headers"]}


async def call_async(mesh: Mesh) -> dict[str, Any]:
    """The same through ``httpx.AsyncClient``."""
    try:
        async with mesh.async_client(timeout=10.0) as http:
            response = await http.get(URL)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"status": response.status_code, "headers": response.json()["headers"]}


async def both_async(mesh: Mesh) -> dict[str, Any]:
    return {"sync": await asyncio.to_thread(call_sync, mesh), "async": await call_async(mesh)}


def both_sync(mesh: Mesh) -> dict[str, Any]:
    return {"sync": call_sync(mesh), "async": asyncio.run(call_async(mesh))}


# --------------------------------------------------------------------------- the servers


def free_socket() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


@contextmanager
def meshlib_server(app: Any, mesh: Mesh, *, wsgi: bool) -> Iterator[str]:
    """``app`` on meshlib's own runner (uvicorn; WSGI apps in its thread pool)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    make = make_wsgi_server if wsgi else make_server
    server = make(app, mesh, port=port, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def werkzeug_server(app: Any) -> Iterator[str]:
    """``app`` on Werkzeug's threaded server (Flask's own)."""
    server = make_werkzeug_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def asgi_middleware(mesh: Mesh) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = json.dumps(await both_async(mesh)).encode()
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send({**start, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return MeshMiddleware(app, mesh=mesh)


def wsgi_middleware(mesh: Mesh) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps(both_sync(mesh)).encode()]

    return MeshWSGIMiddleware(app, mesh=mesh)


def flask_handler(mesh: Mesh) -> Any:
    app = Flask(__name__)

    @app.route("/productpage")
    @handler(mesh=mesh)
    def productpage() -> dict[str, Any]:
        return both_sync(mesh)

    return app


def starlette_handler(mesh: Mesh) -> Any:
    @handler(mesh=mesh)
    async def productpage(request: Request) -> JSONResponse:
        return JSONResponse(await both_async(mesh))

    return Starlette(routes=[Route("/productpage", productpage)])


SERVERS: dict[str, Callable[[Mesh], Any]] = {
    "asgi-middleware": lambda mesh: meshlib_server(asgi_middleware(mesh), mesh, wsgi=False),
    "wsgi-middleware": lambda mesh: meshlib_server(wsgi_middleware(mesh), mesh, wsgi=True),
    "flask-handler": lambda mesh: werkzeug_server(flask_handler(mesh)),
    "starlette-handler": lambda mesh: meshlib_server(starlette_handler(mesh), mesh, wsgi=False),
}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --------------------------------------------------------------------------- the cases

#: Raw header values no HTTP client may send on: UTF-8 bytes, Latin-1 bytes, a C1 control byte.
UTF8, LATIN1, C1 = "caf\u00e9".encode(), "\u00e9t\u00e9".encode("latin-1"), b"ok\x85"


def served(url: str, headers: dict[str, bytes | str]) -> tuple[httpx.Response, dict[str, Any]]:
    with httpx.Client(timeout=30.0) as http:
        response = http.get(f"{url}/productpage", headers=headers)
    assert response.status_code == 200, response.text
    return response, response.json()


def assert_calls_succeeded(result: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Both outbound calls reached the upstream; what each carried, by client kind."""
    carried = {}
    for kind in ("sync", "async"):
        assert "error" not in result[kind], f"{kind}: {result[kind]['error']}"
        assert result[kind]["status"] == 200
        carried[kind] = result[kind]["headers"]
    return carried


@pytest.mark.parametrize("tracing", [False, True], ids=["tracing-off", "tracing-on"])
def test_a_header_that_cannot_be_carried_never_breaks_the_calls(
    upstream: Upstream, server: str, tracing: bool
) -> None:
    mesh = Mesh.from_yaml(mesh_config(upstream.address, tracing))
    sent: dict[str, bytes | str] = {
        "x-request-id": UTF8,
        "end-user": LATIN1,
        "traceparent": C1,
        "tracestate": b"vendor=" + UTF8,
        "baggage": b"user=" + LATIN1,
        "b3": b"\xff\xfe",
        "x-b3-traceid": UTF8,
        "x-b3-spanid": b"b7ad6b7169203331",
        "x-custom": "kept",
        "x-envoy-expected-rq-timeout-ms": b"\xb2",  # "²": str.isdigit() says yes
    }
    with SERVERS[server](mesh) as url:
        response, result = served(url, sent)
    carried = assert_calls_succeeded(result)
    request_id = response.headers["x-request-id"]
    assert UUID.fullmatch(request_id), request_id  # a fresh one, echoed
    for kind, headers in carried.items():
        assert headers["x-request-id"] == request_id, kind
        assert "end-user" not in headers, kind
        assert headers["x-custom"] == "kept", kind
        assert "baggage" not in headers, kind
        assert "tracestate" not in headers, kind
        assert "b3" not in headers, kind
        if tracing:  # a new trace, of this service's own, in the formats it writes
            trace = NEW_TRACE.fullmatch(headers["traceparent"])
            assert trace is not None, headers["traceparent"]
            assert headers["x-b3-traceid"] == trace.group(1)
        else:  # none, and B3 not in part: its spanid went with its traceid
            for name in ("traceparent", "x-b3-traceid", "x-b3-spanid"):
                assert name not in headers, (kind, name)
    mesh.close()


def test_headers_that_can_be_carried_are_carried_as_received(
    upstream: Upstream, server: str
) -> None:
    mesh = Mesh.from_yaml(mesh_config(upstream.address, tracing=False))
    request_id = str(uuid.uuid4())
    sent = {
        "x-request-id": request_id,
        "end-user": "jason",
        "traceparent": TRACEPARENT,
        "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
        "baggage": "user=jason",
    }
    with SERVERS[server](mesh) as url:
        response, result = served(url, sent)
    carried = assert_calls_succeeded(result)
    assert response.headers["x-request-id"] == request_id
    for headers in carried.values():
        for name, value in sent.items():
            assert headers[name] == value
    mesh.close()


def test_each_refusal_is_counted_and_logged_once(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """``x-custom`` is refused by this test alone: its one warning is this test's."""
    mesh = Mesh.from_yaml(mesh_config(upstream.address, tracing=False, metrics=True))
    before = refused_headers()
    bad = {"x-request-id": b"\xff", "end-user": b"j\xc3\xa9", "x-custom": b"\xe2\x82\xac"}
    with (
        caplog.at_level(logging.WARNING, logger="meshlib"),
        SERVERS["asgi-middleware"](mesh) as url,
    ):
        for _ in range(5):
            _, result = served(url, bad)
            assert_calls_succeeded(result)
    after = refused_headers()
    for name in bad:
        assert after.get(name, 0) - before.get(name, 0) == 5, name
    text = scrape(mesh)[1].decode()
    assert 'refused_total{action="replaced",header="x-request-id"} 5.0' in text
    assert 'refused_total{action="dropped",header="end-user"} 5.0' in text
    assert 'refused_total{action="dropped",header="x-custom"} 5.0' in text
    said = [r.getMessage() for r in caplog.records if "cannot be carried" in r.getMessage()]
    assert len([m for m in said if "x-custom" in m]) == 1
    mesh.close()


# --------------------------------------------------------------------------- a JWT claim

_KEY = ec.generate_private_key(ec.SECP256R1())
_JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(_KEY.public_key())), "kid": "k1"}]})
ISSUER = "testing@secure.istio.io"


def jwt_config(address: str) -> str:
    return (
        mesh_config(address, tracing=False).replace("x-custom]", "x-custom, x-jwt-name]")
        + f"""---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{_JWKS}'
    outputClaimToHeaders: [{{header: x-jwt-name, claim: name}}]
"""
    )


@pytest.mark.parametrize("server", ["asgi-middleware", "wsgi-middleware", "starlette-handler"])
def test_a_claim_put_in_a_header_that_cannot_be_carried(upstream: Upstream, server: str) -> None:
    """``outputClaimToHeaders``: a claim that is not ASCII reaches the app as its UTF-8 bytes
    (as Envoy puts it there); the outbound calls cannot carry it, and succeed without it."""
    mesh = Mesh.from_yaml(jwt_config(upstream.address))
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "lukasz", "exp": now + 3600, "name": "\u0141ukasz"}
    token = pyjwt.encode(claims, _KEY, "ES256", headers={"kid": "k1"})
    with SERVERS[server](mesh) as url:
        _, result = served(url, {"authorization": f"Bearer {token}", "x-custom": "kept"})
    for headers in assert_calls_succeeded(result).values():
        assert "x-jwt-name" not in headers
        assert headers["x-custom"] == "kept"
    mesh.close()
