"""The inbound side's core, shared by the ASGI and WSGI middleware and ``@handler``.

For each inbound request, ``Inbound.begin`` reads the request's headers once and makes:

* its request id: ``x-request-id`` as received, or a new uuid4 (as Envoy makes one);
* the ``RequestContext`` that outbound calls carry: ``x-request-id``, the app headers of
  ``spec.propagateHeaders`` and the trace headers as received (so the trace goes on through this
  service even with tracing off; with tracing on, each attempt replaces them with its own);
* what it cannot carry: a value no HTTP client can send (raw non-ASCII bytes, which servers
  hand over as Latin-1 text, or a control character) is replaced (``x-request-id``: a new one)
  or dropped (a trace header, with the rest of its format: the request starts a new trace; an
  app header), counted (``refused_headers()``, the metric
  ``meshlib_inbound_headers_refused_total``) and logged once per header name;
* its deadline, when the caller sent ``x-envoy-expected-rq-timeout-ms``;
* the SERVER span, when the mesh traces;
* the caller's workload metadata (Istio's ``x-envoy-peer-metadata``, ``meshlib.telemetry.peer``),
  bound to its verified mesh identity when it has one: it names the caller in the
  ``reporter="destination"`` metrics and the access log. The shells read it only from a caller
  whose context headers are trusted (the guard drops ``x-envoy-*`` from the others), remove it
  before the app sees the request and answer with this workload's own metadata.

``Served.attach`` makes the context (and the span) current; ``Served.finish`` ends the span and
reports ``InboundFinished`` to the mesh's telemetry hub.

Before that, when the workload has inbound security (``Inbound.guard``: AuthorizationPolicy,
RequestAuthentication, a mesh identity or ``spec.inbound``; ``meshlib.server.guard``), each
shell asks the guard for a ``Verdict``: a refusal is answered without calling the app and
reported like any request (with Envoy's response code details); an allowed request reaches the
app with the normalised path and the header changes, and headers an untrusted caller may not
set are left out of its context. Without inbound security the guard is None and costs one
attribute read and one identity comparison per request.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from opentelemetry import context as otel_context

from meshlib import context
from meshlib.context import REQUEST_ID, RequestContext
from meshlib.pipeline.headers import carriable, number
from meshlib.server.guard import InboundGuard, guard_of
from meshlib.telemetry import InboundFinished, InboundHeaderRefused
from meshlib.telemetry.peer import PEER_HEADERS, PEER_METADATA, PeerMetadata, bind, decode
from meshlib.telemetry.tracing import TRACE_HEADERS, MeshTracer, ServerSpan

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

log = logging.getLogger("meshlib.server")

#: Sent by Envoy to tell the upstream how long the caller waits (milliseconds).
DEADLINE_HEADER = "x-envoy-expected-rq-timeout-ms"
CONTENT_LENGTH = "content-length"
#: Headers the app-header loop leaves to the others: the request id, the trace, the peer's.
_NOT_APP = frozenset({REQUEST_ID, *TRACE_HEADERS, *PEER_HEADERS})
_B3_MULTI = tuple(name for name in TRACE_HEADERS if name.startswith("x-b3-"))
#: The trace headers that go with a refused one: a format is carried whole or not at all.
_TOGETHER: dict[str, tuple[str, ...]] = {
    "traceparent": ("traceparent", "tracestate"),
    **dict.fromkeys(_B3_MULTI, _B3_MULTI),
}

_refused: dict[str, int] = {}
_refused_lock = threading.Lock()
_logged: set[str] = set()


def refused_headers() -> dict[str, int]:
    """How many inbound values of each context header (lowercase name) no outbound call could
    carry, since the process started: raw non-ASCII bytes or a control character. Each was
    replaced (``x-request-id``) or dropped; the metric ``meshlib_inbound_headers_refused_total``
    counts them per mesh."""
    with _refused_lock:
        return dict(_refused)


def _refuse(mesh: Mesh, name: str, action: str) -> None:
    """Count a value of ``name`` that cannot be carried; log it the first time."""
    with _refused_lock:
        _refused[name] = _refused.get(name, 0) + 1
        first = name not in _logged
        _logged.add(name)
    if first:
        log.warning(
            "an inbound %s cannot be carried on outbound calls (raw non-ASCII bytes or a control "
            "character in its value): %s. Counted in meshlib_inbound_headers_refused_total; "
            "logged once per header",
            name,
            "a new request id is used" if action == "replaced" else "it is dropped",
        )
    hub = mesh.telemetry
    if hub.listening:
        hub.emit(InboundHeaderRefused(name, action))


class HeaderSource(Protocol):
    """Where the request's headers are read from: ``get`` by lowercase name."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Attached:
    """What ``Served.attach`` set, for ``Served.detach`` to undo."""

    request: contextvars.Token[RequestContext | None]
    trace: contextvars.Token[otel_context.Context] | None


class Inbound:
    """The inbound side of one mesh — or of the default mesh (``mesh=None``), found at the
    first request, so that an app may configure it after building its middleware."""

    __slots__ = ("_guard", "_mesh", "_wanted")

    def __init__(self, mesh: Mesh | None = None) -> None:
        self._mesh = mesh
        self._wanted: tuple[tuple[str, ...], frozenset[bytes]] | None = None
        self._guard: tuple[object, InboundGuard | None] = (None, None)

    def guard(self, mesh: Mesh) -> InboundGuard | None:
        """The inbound security of ``mesh``'s config in force, None without any (compiled once
        per config by ``guard_of``, remembered here for the next request)."""
        config = mesh.config
        known = self._guard
        if known[0] is config:
            return known[1]
        found = guard_of(mesh)
        self._guard = (config, found)
        return found

    @property
    def mesh(self) -> Mesh:
        mesh = self._mesh
        if mesh is None:
            from meshlib.client import default_mesh  # noqa: PLC0415 - client builds on server

            return default_mesh()
        return mesh

    def wanted(self, mesh: Mesh) -> frozenset[bytes]:
        """The header names ``begin`` reads (lowercase, as bytes), for one-pass ASGI scans."""
        propagate = mesh.config.service.propagate_headers
        known = self._wanted
        if known is None or known[0] is not propagate:
            names = {
                REQUEST_ID,
                DEADLINE_HEADER,
                CONTENT_LENGTH,
                *TRACE_HEADERS,
                *propagate,
                *PEER_HEADERS,
            }
            known = self._wanted = (propagate, frozenset(n.encode("latin-1") for n in names))
        return known[1]

    def begin(
        self,
        method: str,
        path: str,
        headers: HeaderSource,
        *,
        mesh: Mesh | None = None,
        scheme: str | None = None,
        principal: str | None = None,
        audit_policy: str | None = None,
    ) -> Served:
        """An inbound request starts: its context and span, not yet current. ``principal``: the
        caller's verified mesh identity; ``audit_policy``: the AUDIT policy that marked it."""
        mesh = mesh if mesh is not None else self.mesh
        service = mesh.config.service
        started = mesh.clock.now()
        received = headers.get(REQUEST_ID)
        request_id = carriable(received) if received else None
        if not request_id:
            if request_id is None and received:
                _refuse(mesh, REQUEST_ID, "replaced")
            request_id = str(uuid.uuid4())
        carried = {REQUEST_ID: request_id}
        for name in service.propagate_headers:
            if name in _NOT_APP:  # a peer speaks for itself only; the rest below
                continue
            value = headers.get(name)
            if value is not None:
                kept = carriable(value)
                if kept is None:
                    _refuse(mesh, name, "dropped")
                else:
                    carried[name] = kept
        trace: dict[str, str] = {}
        refused: list[str] | None = None
        for name in TRACE_HEADERS:
            value = headers.get(name)
            if value is not None:
                kept = carriable(value)
                if kept is None:
                    _refuse(mesh, name, "dropped")
                    refused = [*(refused or ()), *_TOGETHER.get(name, (name,))]
                else:
                    trace[name] = kept
        if refused is not None:  # the rest of a refused header's format goes too
            for name in refused:
                trace.pop(name, None)
        carried.update(trace)
        deadline = None
        timeout = headers.get(DEADLINE_HEADER)
        milliseconds = number(timeout) if timeout is not None else None
        if milliseconds:
            deadline = started + milliseconds / 1000
        length = headers.get(CONTENT_LENGTH)
        metadata = headers.get(PEER_METADATA)
        peer = bind(decode(metadata), principal) if metadata is not None else None
        found = mesh.telemetry.tracer
        tracer = found if isinstance(found, MeshTracer) else None
        span = None
        if tracer is not None:
            try:
                span = tracer.start_server(method, path, trace, request_id, scheme)
            except Exception:  # tracing's failure never reaches the app
                log.exception("tracer failed to start the server span")
        return Served(
            mesh,
            RequestContext(carried, deadline, service.name),
            method,
            path,
            started,
            number(length),
            trace,
            tracer if span is not None else None,
            span,
            principal,
            audit_policy,
            peer,
            metadata is not None,
        )


@dataclass(frozen=True, slots=True)
class Served:
    """One inbound request being served."""

    mesh: Mesh
    context: RequestContext
    method: str
    path: str
    started: float  # on the mesh clock
    request_bytes: int | None
    trace_headers: dict[str, str]
    tracer: MeshTracer | None
    span: ServerSpan | None
    principal: str | None = None  # the caller's verified mesh identity
    audit_policy: str | None = None
    peer: PeerMetadata | None = None  # the caller's metadata, bound to its identity
    #: the caller sent its metadata (trusted): the response carries this workload's
    exchange: bool = False

    @property
    def request_id(self) -> str:
        return self.context.headers[REQUEST_ID]

    def attach(self) -> Attached:
        """Make this request's context (and its span) current until ``detach``."""
        token = context.set_current(self.context)
        span = self.span
        return Attached(token, otel_context.attach(span.context) if span is not None else None)

    def detach(self, attached: Attached) -> None:
        if attached.trace is not None:
            otel_context.detach(attached.trace)
        context.reset_current(attached.request)

    def enter(self) -> None:
        """Make the context current for good — inside a context copy of the request's own
        (``contextvars.copy_context().run``), which is dropped afterwards."""
        context.set_current(self.context)
        if self.span is not None:
            otel_context.attach(self.span.context)

    def finish(
        self,
        status: int,
        response_bytes: int | None = None,
        *,
        route: str | None = None,
        error: BaseException | None = None,
        details: str = "",
    ) -> None:
        """The request is over: end its span, report it. ``details``: Envoy's response code
        details when the mesh answered the request itself."""
        duration = self.mesh.clock.now() - self.started
        if self.tracer is not None and self.span is not None:
            try:
                self.tracer.end_server(self.span, status, duration, route, error)
            except Exception:  # tracing's failure never reaches the app
                log.exception("tracer failed to end the server span")
        hub = self.mesh.telemetry
        if hub.active:
            hub.emit(
                InboundFinished(
                    self.method,
                    self.path,
                    status,
                    duration,
                    self.request_bytes,
                    response_bytes,
                    self.request_id,
                    self.trace_id(),
                    None,
                    response_code_details=details,
                    audit_policy=self.audit_policy,
                    principal=self.principal,
                    peer=self.peer,
                )
            )

    def trace_id(self) -> str | None:
        """The request's trace id (32 hex digits): its span's, else the one it arrived with."""
        if self.span is not None:
            return self.span.trace_id
        return trace_id_of(self.trace_headers)


def trace_id_of(headers: dict[str, str]) -> str | None:
    """The trace id in W3C or B3 trace headers, without parsing more than that."""
    parent = headers.get("traceparent")
    if parent is not None and len(parent) >= 35 and parent[2] == "-":
        return parent[3:35].lower()
    single = headers.get("b3")
    found = single.split("-", 1)[0] if single is not None and "-" in single else None
    found = found or headers.get("x-b3-traceid")
    if found is None or len(found) not in (16, 32):
        return None
    return found.lower().rjust(32, "0")


__all__ = [
    "DEADLINE_HEADER",
    "Attached",
    "HeaderSource",
    "Inbound",
    "Served",
    "refused_headers",
    "trace_id_of",
]
