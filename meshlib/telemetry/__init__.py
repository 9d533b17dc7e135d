"""Telemetry: what the data plane reports, and to whom.

The request pipeline reports to one ``Telemetry`` hub per mesh at fixed points (request started,
attempt started/ended, retry scheduled, fault injected, request finished) and the runtime state
reports its changes (breaker transitions, ejections, config reloads). The hub fans each event out
to its listeners — the metrics recorder, the access log, users' own sinks — and runs the attempt
tracer, which may add trace headers to each attempt.

When nothing listens and no tracer is set, ``Telemetry.active`` is False and the pipeline does not
build a single event: telemetry that is off costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from meshlib.discovery import Endpoint
    from meshlib.errors import ConfigError
    from meshlib.routing import RouteDecision
    from meshlib.telemetry.peer import PeerMetadata

log = logging.getLogger("meshlib.telemetry")


class URLView(Protocol):
    """A request's URL as telemetry reads it, whatever the client (``httpx.URL`` is one):
    the access log, metrics and the tracer read these, and nothing else."""

    @property
    def scheme(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int | None: ...  # None: the scheme's default

    @property
    def userinfo(self) -> bytes: ...

    @property
    def raw_path(self) -> bytes: ...  # path and query, as sent

    @property
    def netloc(self) -> bytes: ...  # host[:port], as sent

    def __str__(self) -> str: ...  # the full URL


class TraceCarrier(Protocol):
    """An attempt's trace headers, as the attempt tracer reads and writes them."""

    def trace_headers(self, names: frozenset[str]) -> dict[str, str]:
        """The attempt's headers of ``names`` (lower case)."""
        ...

    def put_trace_headers(self, names: frozenset[str], pairs: list[tuple[str, str]]) -> None:
        """Remove the attempt's headers of ``names`` and add ``pairs``."""
        ...


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """An outbound request as the mesh saw it (shared by the events of one request)."""

    method: str
    url: URLView
    decision: RouteDecision
    request_id: str | None
    started: float  # on the mesh clock


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    request: RequestInfo
    attempt: int  # 1-based
    endpoint: Endpoint | None


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    request: RequestInfo
    attempt: int
    endpoint: Endpoint | None
    status: int | None
    error: str | None  # the failure kind when no response came
    duration: float


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    request: RequestInfo
    attempt: int  # the attempt that failed
    delay: float


@dataclass(frozen=True, slots=True)
class FaultInjected:
    request: RequestInfo
    delay: float | None
    abort_status: int | None
    abort_grpc_status: str | None


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """An outbound request is over: the response the caller gets, or the error it gets."""

    request: RequestInfo
    status: int | None
    flags: str
    attempts: int
    endpoint: Endpoint | None
    #: seconds from the start of the call to its end: the response closed (its body read or
    #: abandoned), or the error raised; as Envoy's ``%DURATION%``
    duration: float
    request_bytes: int | None
    response_bytes: int | None
    error: BaseException | None
    #: the TLS the answering attempt was sent with (``ISTIO_MUTUAL``, ...; None: plain text) and
    #: the upstream's verified identity (``MeshInfo.tls``, ``MeshInfo.peer_identity``)
    tls: str | None = None
    peer_identity: str | None = None
    #: the upstream's workload metadata from its response (``x-envoy-peer-metadata``), if sent
    peer: PeerMetadata | None = None
    #: Envoy's response code details when the exchange failed after the response began
    #: (``upstream_reset_after_response_started{connection_termination}``,
    #: ``upstream_response_timeout``); "" otherwise
    response_code_details: str = ""


@dataclass(frozen=True, slots=True)
class InboundFinished:
    """An inbound request served by this service (reported by ``meshlib.server``)."""

    method: str
    path: str
    status: int
    duration: float  # seconds
    request_bytes: int | None
    response_bytes: int | None
    request_id: str | None
    trace_id: str | None
    source: str | None  # the calling workload, when known
    protocol: str = "http"
    flags: str = ""
    #: Envoy's response code details when the mesh answered itself
    #: (``rbac_access_denied_matched_policy[…]``, ``jwt_authn_access_denied{…}``); "" when the
    #: app did. ``audit_policy``: the AUDIT AuthorizationPolicy that marked the request.
    response_code_details: str = ""
    audit_policy: str | None = None
    #: the caller's verified mesh identity (mutual TLS), and its workload metadata
    #: (``x-envoy-peer-metadata``, bound to that identity; None when not sent or not trusted)
    principal: str | None = None
    peer: PeerMetadata | None = None


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    destination: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class BreakerCreated:
    """A breaker for ``destination`` (``host|subset``) came into use, in ``state``."""

    destination: str
    state: str


@dataclass(frozen=True, slots=True)
class EndpointEjected:
    destination: str
    endpoint: Endpoint
    ejections: int


@dataclass(frozen=True, slots=True)
class EndpointReturned:
    destination: str
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    ok: bool
    error: ConfigError | None


@dataclass(frozen=True, slots=True)
class StoreHealthChanged:
    """The mesh's view of its store (``meshlib.store``) went stale (no member answers) or is
    current again."""

    store: str
    stale: bool


@dataclass(frozen=True, slots=True)
class MirrorDropped:
    """A shadow request to ``destination`` (``host|subset``) was not sent: the mesh had as many
    outstanding as it keeps (``meshlib.mirror``)."""

    destination: str


@dataclass(frozen=True, slots=True)
class InboundHeaderRefused:
    """An inbound context header whose value no outbound call can carry (raw non-ASCII bytes,
    a control character): ``replaced`` (``x-request-id``: by a fresh one) or ``dropped``."""

    header: str
    action: str


@dataclass(frozen=True, slots=True)
class BudgetExhausted:
    request: RequestInfo
    attempt: int


# --------------------------------------------------------------------------- listeners


@runtime_checkable
class MeshListener(Protocol):
    """A sink for mesh events. Implement ``on_event``; dispatch on the event's type.

    Listeners run inline on the request path: keep them quick and never raise (an exception is
    logged and dropped — it never reaches the app).
    """

    def on_event(self, event: Any) -> None: ...


class AttemptTracer(Protocol):
    """Traces outbound attempts: ``start`` may set trace headers on the attempt (``carrier``)
    and returns a token handed back to ``end``. A tracer with an ``on_event(event)`` method
    also gets every event the hub emits (meshlib's own records faults and retries as span
    events)."""

    def start(self, event: AttemptStarted, carrier: TraceCarrier) -> Any: ...

    def end(self, token: Any, event: AttemptEnded, flags: str) -> None: ...


class Telemetry:
    """The hub one mesh reports to."""

    __slots__ = ("_listeners", "_span_events", "active", "listening", "tracer")

    def __init__(
        self, listeners: Sequence[MeshListener] = (), tracer: AttemptTracer | None = None
    ) -> None:
        self._listeners: tuple[MeshListener, ...] = tuple(listeners)
        self.tracer = tracer
        self._refresh()

    def _refresh(self) -> None:
        #: The tracer's ``on_event``, which turns faults and retries into span events.
        self._span_events = getattr(self.tracer, "on_event", None)
        #: Whether anything listens for events (a tracer alone needs only the attempt ones).
        self.listening = bool(self._listeners)
        #: Whether the pipeline reports at all: a listener or a tracer.
        self.active = self.listening or self.tracer is not None

    @property
    def listeners(self) -> tuple[MeshListener, ...]:
        return self._listeners

    def add_listener(self, listener: MeshListener) -> None:
        self._listeners = (*self._listeners, listener)
        self._refresh()

    def remove_listener(self, listener: MeshListener) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)
        self._refresh()

    def set_tracer(self, tracer: AttemptTracer | None) -> None:
        self.tracer = tracer
        self._refresh()

    def close(self) -> None:
        """Release what the listeners and the tracer hold (a scrape server, exporters): each
        one's ``close()``, if it has one. ``Mesh.close`` calls this."""
        for part in (*self._listeners, self.tracer):
            close = getattr(part, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("closing %r failed", part)

    def emit(self, event: Any) -> None:
        span_events = self._span_events
        if span_events is not None:
            try:
                span_events(event)
            except Exception:
                log.exception("attempt tracer failed on %s", type(event).__name__)
        for listener in self._listeners:
            try:
                listener.on_event(event)
            except Exception:  # a sink's failure never reaches the app
                log.exception("mesh listener %r failed on %s", listener, type(event).__name__)

    # ------------------------------------------------------------------ attempts

    def attempt_started(self, event: AttemptStarted, carrier: TraceCarrier) -> Any:
        token = None
        tracer = self.tracer
        if tracer is not None:
            try:
                token = tracer.start(event, carrier)
            except Exception:
                log.exception("attempt tracer failed to start a span")
        self.emit(event)
        return token

    def attempt_ended(self, token: Any, event: AttemptEnded, flags: str) -> None:
        tracer = self.tracer
        if tracer is not None and token is not None:
            try:
                tracer.end(token, event, flags)
            except Exception:
                log.exception("attempt tracer failed to end a span")
        self.emit(event)


__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "AttemptTracer",
    "BreakerCreated",
    "BreakerTransition",
    "BudgetExhausted",
    "ConfigReloaded",
    "EndpointEjected",
    "EndpointReturned",
    "FaultInjected",
    "InboundFinished",
    "InboundHeaderRefused",
    "MeshListener",
    "MirrorDropped",
    "RequestFinished",
    "RequestInfo",
    "RetryScheduled",
    "StoreHealthChanged",
    "Telemetry",
    "TraceCarrier",
    "URLView",
]
