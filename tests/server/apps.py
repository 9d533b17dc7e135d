"""The same small service in five shapes — Starlette, FastAPI, Flask, bare ASGI and bare WSGI —
each behind meshlib's middleware, each calling ``reviews`` through one mesh.

Routes (the same in every shape):

``/sync/<item>``   a sync handler that calls ``http://reviews/r`` with ``mesh.client()``
``/async/<item>``  the same with ``mesh.async_client()`` (``asyncio.run`` in the WSGI shapes)
``/stream``        a streamed body that makes the call while it is being sent
``/fail``          raises ``RuntimeError``

Each answers JSON ``{"upstream": <status>, "context": {<headers of the request context>}}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from meshlib import Mesh, context
from meshlib.server import MeshMiddleware, MeshWSGIMiddleware

REVIEWS = "http://reviews/r"

#: The route template each shape reports for ``/sync/<item>`` (None: no router).
SYNC_ROUTE = {
    "starlette": "/sync/{item}",
    "fastapi": "/sync/{item}",
    "flask": "/sync/<item>",
    "asgi": None,
    "wsgi": None,
}
ASGI_KINDS = ("starlette", "fastapi", "asgi")
WSGI_KINDS = ("flask", "wsgi")
KINDS = ASGI_KINDS + WSGI_KINDS


def seen(status: int) -> dict[str, Any]:
    current = context.current()
    return {"upstream": status, "context": dict(current.headers) if current else None}


def call_sync(mesh: Mesh) -> dict[str, Any]:
    with mesh.client() as http:
        return seen(http.get(REVIEWS).status_code)


async def call_async(mesh: Mesh) -> dict[str, Any]:
    async with mesh.async_client() as http:
        return seen((await http.get(REVIEWS)).status_code)


def starlette_app(mesh: Mesh) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def sync(request: Request) -> JSONResponse:  # run in a worker thread by Starlette
        return JSONResponse(call_sync(mesh))

    async def async_(request: Request) -> JSONResponse:
        return JSONResponse(await call_async(mesh))

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b" "
            yield json.dumps(await call_async(mesh)).encode()

        return StreamingResponse(body(), media_type="application/json")

    async def fail(request: Request) -> JSONResponse:
        raise RuntimeError("boom")

    return Starlette(
        routes=[
            Route("/sync/{item}", sync),
            Route("/async/{item}", async_),
            Route("/stream", stream),
            Route("/fail", fail),
        ],
        middleware=[Middleware(MeshMiddleware, mesh=mesh)],
    )


def fastapi_app(mesh: Mesh) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/sync/{item}")
    def sync(item: str) -> dict[str, Any]:
        return call_sync(mesh)

    @app.get("/async/{item}")
    async def async_(item: str) -> dict[str, Any]:
        return await call_async(mesh)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b" "
            yield json.dumps(await call_async(mesh)).encode()

        return StreamingResponse(body(), media_type="application/json")

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("boom")

    return app


def flask_app(mesh: Mesh) -> Any:
    from flask import Flask, Response

    app = Flask("flask_shape")

    @app.get("/sync/<item>")
    def sync(item: str) -> dict[str, Any]:
        return call_sync(mesh)

    @app.get("/async/<item>")
    def async_(item: str) -> dict[str, Any]:
        return asyncio.run(call_async(mesh))

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[bytes]:  # runs after the view returned, as Flask streams
            yield b" "
            yield json.dumps(call_sync(mesh)).encode()

        return Response(body(), mimetype="application/json")

    @app.get("/fail")
    def fail() -> None:
        raise RuntimeError("boom")

    app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, mesh=mesh)
    return app


def asgi_app(mesh: Mesh) -> Any:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
        if path.startswith("/sync/"):
            body = await asyncio.to_thread(call_sync, mesh)  # contextvars flow into to_thread
        elif path.startswith("/async/"):
            body = await call_async(mesh)
        elif path == "/stream":
            await send(start)
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            chunk = json.dumps(await call_async(mesh)).encode()
            await send({"type": "http.response.body", "body": chunk})
            return
        elif path == "/fail":
            raise RuntimeError("boom")
        else:
            await send({**start, "status": 404})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return MeshMiddleware(app, mesh=mesh)


def wsgi_app(mesh: Mesh) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        headers = [("content-type", "application/json")]
        if path.startswith("/sync/"):
            body = call_sync(mesh)
        elif path.startswith("/async/"):
            body = asyncio.run(call_async(mesh))
        elif path == "/stream":

            def chunks() -> Iterator[bytes]:
                yield b" "
                yield json.dumps(call_sync(mesh)).encode()

            start_response("200 OK", headers)
            return chunks()
        elif path == "/fail":
            raise RuntimeError("boom")
        else:
            start_response("404 Not Found", headers)
            return [b"{}"]
        start_response("200 OK", headers)
        return [json.dumps(body).encode()]

    return MeshWSGIMiddleware(app, mesh=mesh)


BUILDERS: dict[str, Callable[[Mesh], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "flask": flask_app,
    "asgi": asgi_app,
    "wsgi": wsgi_app,
}
