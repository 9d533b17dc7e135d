"""The admin endpoint: which config a service runs, for tools that wait for a rollout.

``GET /_mesh/config`` answers JSON::

    {"service": "reviews", "namespace": "default", "version": "v2",
     "digest": "3f2a…",                      # meshlib.config.digest of the config in force
     "files": ["reviews-v2.yaml", "../rules/bookinfo.yaml"],   # relative to the config's folder
     "resources": [{"kind": "VirtualService", "namespace": "default", "name": "reviews",
                    "file": "../rules/bookinfo.yaml", "line": 12}, …],
     "warnings": ["…"],
     "watch": {"running": true, "interval": 0.5, "reloads": 3, "last_error": null, …}}

``watch`` is null when the mesh is not watching its files (``Mesh.watch``); ``store`` is null
without an etcd store (``spec.store``), else its URL, whether the service's view of it is
``stale``, the revision seen and the ``rules_revision`` in force (``meshlib.store.link``).
Like Envoy's admin port, this tells what is in force; it changes nothing. ``meshctl bookinfo
apply`` polls it until each service reports the digest of the config its files now hold.

* ``MeshAdmin(app, mesh=None)``: ASGI middleware that answers the admin path and passes every
  other request (and scope type) to ``app``;
* ``MeshWSGIAdmin(app, mesh=None)``: the same for WSGI;
* ``config_status(mesh)``: the JSON body, for any other server.

File names are shown relative to the folder of the service's config file, never as absolute
paths. When the service has a mesh identity (``spec.identity``) or an admin token
(``spec.admin.token`` or ``$MESHLIB_ADMIN_TOKEN``), the endpoint answers only a caller with a
verified mesh identity (a client certificate of the mesh CA, read as the inbound side reads it)
or one that sends ``Authorization: Bearer <token>`` (compared in constant time); anyone else
gets 401. Without either, it answers everyone, as before.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from meshlib.config.digest import config_digest
from meshlib.server.asgi import ASGIApp, Receive, Scope, Send, chain_of_scope
from meshlib.server.guard import admin_token, guard_of
from meshlib.server.wsgi import StartResponse, WSGIApp

if TYPE_CHECKING:
    from meshlib.config.watch import ConfigWatcher
    from meshlib.mesh import Mesh

CONFIG_PATH = "/_mesh/config"


def config_status(mesh: Mesh) -> dict[str, Any]:
    """What ``GET /_mesh/config`` answers for ``mesh``."""
    config = mesh.config
    service = config.service
    watcher = mesh.watcher
    base = os.path.dirname(os.path.abspath(config.files[0])) if config.files else os.getcwd()

    def shown(path: str) -> str:
        return _relative(path, base)

    return {
        "service": service.name,
        "namespace": service.namespace,
        "version": service.version,
        "digest": config_digest(config),
        "files": [shown(f) for f in config.files],
        "resources": [
            {
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "file": shown(r.file),
                "line": r.line,
            }
            for r in config.resources
        ],
        "warnings": [_scrub(str(p), base) for p in config.warnings],
        "watch": _watch(watcher, base),
        "store": mesh.store.status() if mesh.store is not None else None,
    }


def _scrub(text: str, base: str) -> str:
    """A message with the config folder's absolute path taken out of the file names in it."""
    return text.replace(base + os.sep, "")


def _watch(watcher: ConfigWatcher | None, base: str) -> dict[str, Any] | None:
    if watcher is None:
        return None
    status = dataclasses.asdict(watcher.status())
    if status.get("last_error"):
        status["last_error"] = _scrub(status["last_error"], base)
    return status


def _relative(path: str, base: str) -> str:
    """``path`` as the config's folder sees it; a name that is not a file path (``<string>``)
    as it is."""
    if not path or path.startswith("<"):
        return path
    try:
        return os.path.relpath(os.path.abspath(path), base)
    except ValueError:  # another drive
        return os.path.basename(path)


def admitted(mesh: Mesh, chain: Sequence[str], authorization: str | None) -> bool:
    """Whether a caller may read the admin endpoints (see the module's docstring)."""
    config = mesh.config
    token = admin_token(config)
    has_identity = config.service.identity is not None
    if token is None and not has_identity:
        return True
    if token is not None and authorization is not None:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), token.encode()
        ):
            return True
    if has_identity and chain:
        guard = guard_of(mesh)
        return guard is not None and guard.principal_of(chain) is not None
    return False


_REFUSED = b'{"error": "the admin endpoints need a mesh identity or the admin token"}'
_CHALLENGE = 'Bearer realm="meshlib admin"'


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
        mesh = _mesh_of(self.mesh)
        authorization = next(
            (v.decode("latin-1") for k, v in scope.get("headers") or () if k == b"authorization"),
            None,
        )
        if not admitted(mesh, chain_of_scope(scope), authorization):
            challenge = [(b"www-authenticate", _CHALLENGE.encode())]
            await _asgi_reply(send, 401, _REFUSED, challenge)
            return
        body = _body(mesh)
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
        mesh = _mesh_of(self.mesh)
        chain: tuple[str, ...] = ()
        if environ.get("SSL_CLIENT_CERT"):
            from meshlib.security.peer import chain_of_environ  # noqa: PLC0415

            chain = chain_of_environ(environ)
        if not admitted(mesh, chain, environ.get("HTTP_AUTHORIZATION")):
            start_response(
                "401 Unauthorized",
                [("content-type", "application/json"), ("www-authenticate", _CHALLENGE)],
            )
            return [_REFUSED]
        body = _body(mesh)
        start_response(
            "200 OK",
            [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("cache-control", "no-store"),
            ],
        )
        return [b"" if method == "HEAD" else body]


__all__ = ["CONFIG_PATH", "MeshAdmin", "MeshWSGIAdmin", "admitted", "config_status"]
