"""The admin endpoints: which config a service runs (for tools that wait for a rollout), the spans
it made last (for tools that show a trace), the state of its destinations and its metrics (for
the live mesh page, ``meshctl dashboard``).

``GET /_mesh/config`` answers JSON::

    {"service": "reviews", "namespace": "default", "version": "v2",
     "digest": "3f2a…",                      # meshlib.config.digest of the config in force
     "files": ["reviews-v2.yaml", "../rules/bookinfo.yaml"],   # relative to the config's folder
     "resources": [{"kind": "VirtualService", "namespace": "default", "name": "reviews",
                    "file": "../rules/bookinfo.yaml", "line": 12}, …],
     "warnings": ["…"],
     "watch": {"running": true, "interval": 0.5, "reloads": 3, "last_error": null, …},
     "metrics": "http://127.0.0.1:41234/metrics",   # the scrape server, or null
     "tracing": true}

``watch`` is null when the mesh is not watching its files (``Mesh.watch``); ``store`` is null
without an etcd store (``spec.store``), else its URL, whether the service's view of it is
``stale``, the revision seen and the ``rules_revision`` in force (``meshlib.store.link``).
Like Envoy's admin port, this tells what is in force; it changes nothing. ``meshctl bookinfo
apply`` polls it until each service reports the digest of the config its files now hold.

``GET /_mesh/traces?limit=N[&trace_id=HEX32]`` answers the last ``N`` spans (default 100) of the
ones the mesh keeps when it traces (``spec.telemetry.tracing.recentSpans``, default 1024),
oldest first, only those of one trace with ``trace_id``::

    {"tracing": true, "keeps": 1024,
     "spans": [{"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>"|null,
                "name": "GET /productpage", "service": "productpage", "version": "v1",
                "kind": "SERVER"|"CLIENT"|"INTERNAL", "start_unix_nano": …, "end_unix_nano": …,
                "status": "OK"|"ERROR"|"UNSET", "attributes": {…},
                "events": [{"name": "meshlib.retry", "time_unix_nano": …, "attributes": {…}}]}, …]}

With tracing off, ``spans`` is empty and ``tracing`` false. A ``limit`` that is not a whole number
from 0 to 100000, or a ``trace_id`` that is not 32 hex digits, is a 400.

``GET /_mesh/clusters`` answers, as Envoy's ``/clusters`` does, each destination this service
has called (host and subset), its circuit breaker and its endpoints as outlier detection sees
them now::

    {"service": "reviews", "namespace": "default", "version": "v2", "workload": "reviews-v2",
     "clusters": [{"name": "ratings.default.svc.cluster.local|v1",
                   "host": "ratings.default.svc.cluster.local", "subset": "v1", "port": null,
                   "breaker": {"state": "closed", "failures": 0},     # null: no breaker
                   "outlier_detection": true,
                   "endpoints": [{"address": "127.0.0.1:9085", "labels": {"version": "v1"},
                                  "ejected": false, "ejections": 0, "ejected_for": 0.0}]}]}

``GET /_mesh/metrics`` answers the service's metrics scrape (Prometheus' text format, or
OpenMetrics when asked; Envoy's admin port serves ``/stats/prometheus`` the same way), or 404
when its metrics are off.

* ``MeshAdmin(app, mesh=None)``: ASGI middleware that answers the admin paths and passes every
  other request (and scope type) to ``app``;
* ``MeshWSGIAdmin(app, mesh=None)``: the same for WSGI;
* ``config_status(mesh)``, ``traces_status(mesh, query)``, ``clusters_status(mesh)``: the JSON
  bodies, for any other server.

File names are shown relative to the folder of the service's config file, never as absolute
paths. When the service has a mesh identity (``spec.identity``) or an admin token
(``spec.admin.token`` or ``$MESHLIB_ADMIN_TOKEN``), the endpoints answer only a caller with a
verified mesh identity (a client certificate of the mesh CA, read as the inbound side reads it)
or one that sends ``Authorization: Bearer <token>`` (compared in constant time); anyone else
gets 401. Without either, it answers everyone, as before.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from meshlib.config.digest import config_digest
from meshlib.server.asgi import ASGIApp, Receive, Scope, Send, chain_of_scope
from meshlib.server.guard import admin_token, guard_of
from meshlib.server.wsgi import StartResponse, WSGIApp

if TYPE_CHECKING:
    from meshlib.config.watch import ConfigWatcher
    from meshlib.mesh import Mesh
    from meshlib.telemetry.tracing import MeshTracer

CONFIG_PATH = "/_mesh/config"
TRACES_PATH = "/_mesh/traces"
#: How many spans ``GET /_mesh/traces`` answers without ``limit``, and the most it takes.
DEFAULT_TRACE_LIMIT = 100
MAX_TRACE_LIMIT = 100_000
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
CLUSTERS_PATH = "/_mesh/clusters"
METRICS_PATH = "/_mesh/metrics"
_JSON = "application/json"


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
        "metrics": _metrics_url(mesh),
        "tracing": _tracer(mesh) is not None,
    }


def _metrics_url(mesh: Mesh) -> str | None:
    from meshlib.telemetry.metrics import recorder_of  # noqa: PLC0415 - loads prometheus

    recorder = recorder_of(mesh)
    return recorder.url if recorder is not None else None


def _tracer(mesh: Mesh) -> MeshTracer | None:
    from meshlib.telemetry.tracing import MeshTracer  # noqa: PLC0415

    found = mesh.telemetry.tracer
    return found if isinstance(found, MeshTracer) else None


class BadQueryError(ValueError):
    """A query string the admin endpoint refuses (answered 400 with the message)."""


def traces_status(mesh: Mesh, query: str = "") -> dict[str, Any]:
    """What ``GET /_mesh/traces?<query>`` answers for ``mesh`` (``BadQueryError``: a bad one)."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=16)
    except ValueError as exc:
        raise BadQueryError(f"bad query string: {exc}") from None
    limit = DEFAULT_TRACE_LIMIT
    values = params.get("limit")
    if values:
        text = values[-1].strip()
        if not text.isdigit() or not text.isascii() or int(text) > MAX_TRACE_LIMIT:
            raise BadQueryError(f"limit must be a whole number from 0 to {MAX_TRACE_LIMIT}")
        limit = int(text)
    trace_id = None
    values = params.get("trace_id")
    if values:
        trace_id = values[-1].strip().lower()
        if not _TRACE_ID.fullmatch(trace_id):
            raise BadQueryError("trace_id must be 32 hex digits")
    tracer = _tracer(mesh)
    if tracer is None:
        return {"tracing": False, "keeps": 0, "spans": []}
    spans = tracer.recent_spans(limit, trace_id)
    return {"tracing": True, "keeps": tracer.keeps, "spans": spans}


def clusters_status(mesh: Mesh) -> dict[str, Any]:
    """What ``GET /_mesh/clusters`` answers for ``mesh``: this workload, and each destination it
    has called (Envoy's clusters: host and subset) with its circuit breaker's state and each
    endpoint as outlier detection sees it now."""
    from meshlib.telemetry.peer import PeerMetadata  # noqa: PLC0415 - only when asked

    service = mesh.config.service
    clusters = []
    for cluster in sorted(mesh.clusters(), key=lambda c: (c.name, c.target.port or 0)):
        detector = cluster.balancer.detector
        health = {s.address: s for s in detector.snapshot()} if detector is not None else {}
        endpoints = []
        for endpoint in cluster.endpoints():
            state = health.get(endpoint.address)
            endpoints.append(
                {
                    "address": endpoint.address,
                    "labels": dict(endpoint.labels),
                    "ejected": state.ejected if state is not None else False,
                    "ejections": state.ejections if state is not None else 0,
                    "ejected_for": round(state.ejected_for, 3) if state is not None else 0.0,
                }
            )
        breaker = cluster.breaker
        clusters.append(
            {
                "name": cluster.name,
                "host": cluster.target.host,
                "subset": cluster.target.subset,
                "port": cluster.target.port,
                "breaker": (
                    {"state": breaker.state, "failures": breaker.failure_count}
                    if breaker is not None
                    else None
                ),
                "outlier_detection": detector is not None,
                "endpoints": endpoints,
            }
        )
    return {
        "service": service.name,
        "namespace": service.namespace,
        "version": service.version,
        "workload": PeerMetadata.of_service(service).workload,
        "clusters": clusters,
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


def _answer(mesh: Mesh, path: str, query: str, accept: str | None) -> tuple[int, str, bytes]:
    """The status, content type and body of an admin path, for a caller already admitted."""
    if path == CONFIG_PATH:
        return 200, _JSON, json.dumps(config_status(mesh), indent=1).encode("utf-8")
    if path == CLUSTERS_PATH:
        return 200, _JSON, json.dumps(clusters_status(mesh), separators=(",", ":")).encode()
    if path == METRICS_PATH:
        from meshlib.telemetry.metrics import scrape  # noqa: PLC0415 - loads prometheus_client

        try:
            content_type, body = scrape(mesh, accept=accept)
        except LookupError:
            return 404, _JSON, b'{"error": "metrics are off (spec.telemetry.metrics)"}'
        return 200, content_type, body
    try:
        status = traces_status(mesh, query)
    except BadQueryError as exc:
        return 400, _JSON, json.dumps({"error": str(exc)}).encode("utf-8")
    return 200, _JSON, json.dumps(status, separators=(",", ":")).encode("utf-8")


_PATHS = frozenset({CONFIG_PATH, TRACES_PATH, CLUSTERS_PATH, METRICS_PATH})
_REASONS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found"}


def _mesh_of(mesh: Mesh | None) -> Mesh:
    if mesh is not None:
        return mesh
    from meshlib.client import default_mesh  # noqa: PLC0415 - client builds on server

    return default_mesh()


class MeshAdmin:
    """ASGI middleware: ``GET /_mesh/...`` answered here, everything else passed on."""

    def __init__(self, app: ASGIApp, mesh: Mesh | None = None) -> None:
        self.app = app
        self.mesh = mesh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path not in _PATHS:
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _asgi_reply(send, 405, b'{"error": "GET only"}', [(b"allow", b"GET, HEAD")])
            return
        mesh = _mesh_of(self.mesh)
        headers = {k: v.decode("latin-1") for k, v in scope.get("headers") or ()}
        if not admitted(mesh, chain_of_scope(scope), headers.get(b"authorization")):
            challenge = [(b"www-authenticate", _CHALLENGE.encode())]
            await _asgi_reply(send, 401, _REFUSED, challenge)
            return
        query = (scope.get("query_string") or b"").decode("latin-1")
        status, content_type, body = _answer(mesh, str(path), query, headers.get(b"accept"))
        shown = b"" if scope.get("method") == "HEAD" else body
        await _asgi_reply(send, status, shown, [], len(body), content_type)


async def _asgi_reply(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
    content_type: str = _JSON,
) -> None:
    size = str(len(body) if length is None else length).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", size),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MeshWSGIAdmin:
    """WSGI middleware: ``GET /_mesh/...`` answered here, everything else passed on."""

    def __init__(self, app: WSGIApp, mesh: Mesh | None = None) -> None:
        self.app = app
        self.mesh = mesh

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path not in _PATHS:
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
        status, content_type, body = _answer(
            mesh, str(path), environ.get("QUERY_STRING") or "", environ.get("HTTP_ACCEPT")
        )
        start_response(
            _REASONS.get(status, str(status)),
            [
                ("content-type", content_type),
                ("content-length", str(len(body))),
                ("cache-control", "no-store"),
            ],
        )
        return [b"" if method == "HEAD" else body]


__all__ = [
    "CLUSTERS_PATH",
    "CONFIG_PATH",
    "DEFAULT_TRACE_LIMIT",
    "MAX_TRACE_LIMIT",
    "METRICS_PATH",
    "TRACES_PATH",
    "BadQueryError",
    "MeshAdmin",
    "MeshWSGIAdmin",
    "admitted",
    "clusters_status",
    "config_status",
    "traces_status",
]
