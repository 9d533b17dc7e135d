"""One service of the acceptance chain (``test_chain.py``), as a program of its own.

    MESH_CONFIG=a.yaml python tests/integration/chain_service.py \\
        --name a --shape fastapi --next http://b --spans a.jsonl

It listens on 127.0.0.1 (a free port, printed on stdout) and serves, in the given shape:

``fastapi``    FastAPI behind ``MeshMiddleware`` (FastAPI's own tracing off: meshlib's spans only)
``flask``      Flask, each view under ``@handler``
``starlette``  Starlette, each endpoint under ``@handler``

With ``--next``, ``GET /sync`` calls ``<next>/sync`` with ``client.get`` and ``GET /async`` calls
``<next>/async`` with ``client.AsyncClient`` — through the default mesh, with no header written
by hand — and answers ``{"service", "downstream": <their JSON>}``. Without, it echoes what it
got: ``{"service", "version", "headers"}``.

Before meshlib is imported it installs the global tracer provider, with an exporter that writes
each finished span as a JSON line to ``--spans``: the app's own provider, which meshlib uses.
The program exits when its stdin closes (the test is over, or gone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

HOST = "127.0.0.1"


class JsonLinesExporter(SpanExporter):
    """Each span as one JSON line, appended to a file as it ends."""

    def __init__(self, path: str, service: str) -> None:
        self.path = path
        self.service = service
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.context
            assert context is not None
            lines.append(
                json.dumps(
                    {
                        "service": self.service,
                        "name": span.name,
                        "kind": span.kind.name,
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "attributes": dict(span.attributes or {}),
                    }
                )
            )
        with self.lock, open(self.path, "a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def front_app(shape: str, name: str, next_url: str) -> Any:
    from meshlib import client, handler
    from meshlib.server import MeshMiddleware

    def call_sync() -> dict[str, Any]:
        return {"service": name, "downstream": client.get(f"{next_url}/sync").json()}

    async def call_async() -> dict[str, Any]:
        async with client.AsyncClient() as http:
            response = await http.get(f"{next_url}/async")
        return {"service": name, "downstream": response.json()}

    if shape == "fastapi":
        from fastapi import FastAPI

        app = FastAPI(telemetry={"tracing": False})  # FastAPI's own spans: tests/server
        app.add_middleware(MeshMiddleware)

        @app.get("/sync")
        def sync() -> dict[str, Any]:
            return call_sync()

        @app.get("/async")
        async def async_() -> dict[str, Any]:
            return await call_async()

        return app
    if shape == "flask":
        from flask import Flask

        flask_app = Flask(name)

        @flask_app.get("/sync")
        @handler
        def flask_sync() -> dict[str, Any]:
            return call_sync()

        @flask_app.get("/async")
        @handler
        def flask_async() -> dict[str, Any]:
            return asyncio.run(call_async())

        return flask_app
    raise SystemExit(f"no front shape {shape!r}")


def leaf_app(shape: str, name: str, version: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from meshlib import handler

    if shape != "starlette":
        raise SystemExit(f"no leaf shape {shape!r}")

    @handler
    async def echo(request: Request) -> JSONResponse:
        body = {"service": name, "version": version, "headers": dict(request.headers)}
        return JSONResponse(body)

    return Starlette(routes=[Route("/sync", echo), Route("/async", echo)])


def serve(app: Any, shape: str) -> None:
    if shape == "flask":
        from werkzeug.serving import make_server

        server = make_server(HOST, 0, app, threaded=True)
        print(server.server_port, flush=True)
        server.serve_forever()
        return
    import uvicorn

    sock = socket.socket()
    sock.bind((HOST, 0))
    # listening before the port is printed: a request sent while uvicorn still starts waits in
    # the backlog instead of being refused
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def exit_when_parent_goes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--spans", required=True)
    parser.add_argument("--next")
    parser.add_argument("--version", default="v1")
    args = parser.parse_args()
    threading.Thread(target=exit_when_parent_goes, daemon=True).start()

    provider = TracerProvider(resource=Resource.create({"service.name": args.name}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(args.spans, args.name)))
    trace.set_tracer_provider(provider)

    if args.next:
        app = front_app(args.shape, args.name, args.next)
    else:
        app = leaf_app(args.shape, args.name, args.version)
    serve(app, args.shape)


if __name__ == "__main__":
    main()
