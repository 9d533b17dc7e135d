"""The admin endpoint: which config a service runs, for tools that wait for a rollout.

``GET /_mesh/config`` answers JSON::

    {"service": "reviews", "namespace": "default", "version": "v2",
     "digest": "3f2a…",                      # meshlib.config.digest of the config in force
     "files": ["config/reviews-v2.yaml", "rules/bookinfo.yaml"],
     "resources": [{"kind": "VirtualService", "namespace": "default", "name": "reviews",
                    "file": "rules/bookinfo.yaml", "line": 12}, …],
     "warnings": ["…"],
     "watch": {"running": true, "interval": 0.5, "reloads": 3, "last_error": null, …}}

``watch`` is null when the mesh is not watching its files (``Mesh.watch``). Like Envoy's admin
port, this tells what is in force; it changes nothing. ``meshctl bookinfo apply`` polls it until
each service reports the digest of the config its files now hold.

* ``MeshAdmin(app, mesh=None)``: ASGI middleware that answers the admin path and passes every
  other request (and scope type) to ``app``;
* ``MeshWSGIAdmin(app, mesh=None)``: the same for WSGI;
* ``config_status(mesh)``: the JSON body, for any other server.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshlib.config.digest import config_digest
from meshlib.server.asgi import ASGIApp, Receive, Scope, Send
from meshlib.server.wsgi import StartResponse, WSGIApp

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

CONFIG_PATH = "/_mesh/config"


def config_status(mesh: Mesh) -> dict[str, Any]:
    """What ``GET /_mesh/config`` answers for ``mesh``."""
    config = mesh.config
    service = config.service
    watcher = mesh.watcher
    return {
        "service": service.name,
        "namespace": service.namespace,
        "version": service.version,
        "digest": config_digest(config),
        "files": list(config.files),
        "resources": [
            {
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "file": r.file,
                "line": r.line,
            }
            for r in config.resources
        ],
        "warnings": [str(p) for p in config.warnings],
        "watch": dataclasses.asdict(watcher.status()) if watcher is not None else None,
    }


def _body(mesh: Mesh) -> bytes:
    return json.dumps(config_status(mesh), indent=1).encode("utf-8")


def _mesh_of(mesh: Mesh | None) -> Mesh:
    if mesh is not None:
        return mesh
    from meshlib.client import default_mesh  # noqa: PLC0415 - client builds on server

    return default_mesh()


class MeshAdmin:
    """ASGI middleware: ``GET /_mesh/config`` answered here, everything else passed on."""

    def __init__(self, app: ASGIApp, mesh: Mesh | None = None) -> None:
        self.app = app
        self.mesh = mesh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != CONFIG_PATH:
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _asgi_reply(send, 405, b'{"error": "GET only"}', [(b"allow", b"GET, HEAD")])
            return
        body = _body(_mesh_of(self.mesh))
        await _asgi_reply(send, 200, b"" if scope.get("method") == "HEAD" else body, [], len(body))


async def _asgi_reply(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
) -> None:
    size = str(len(body) if length is None else length).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", size),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MeshWSGIAdmin:
    """WSGI middleware: ``GET /_mesh/config`` answered here, everything else passed on."""

    def __init__(self, app: WSGIApp, mesh: Mesh | None = None) -> None:
        self.app = app
        self.mesh = mesh

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != CONFIG_PATH:
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            start_response(
                "405 Method Not Allowed",
                [("content-type", "application/json"), ("allow", "GET, HEAD")],
            )
            return [b'{"error": "GET only"}']
        body = _body(_mesh_of(self.mesh))
        start_response(
            "200 OK",
            [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("cache-control", "no-store"),
            ],
        )
        return [b"" if method == "HEAD" else body]


__all__ = ["CONFIG_PATH", "MeshAdmin", "MeshWSGIAdmin", "config_status"]
