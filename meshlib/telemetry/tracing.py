"""Tracing: a SERVER span for each inbound request, a CLIENT span for each outbound attempt.

meshlib speaks the OpenTelemetry API. Spans go to a ``TracerProvider``: the one the app installed
(``opentelemetry.trace.set_tracer_provider``), or one meshlib builds from the standard ``OTEL_*``
environment variables (``provider_from_environment``) when the config turns tracing on and the
app installed none. meshlib depends on the API only: building a provider needs the SDK, in the
``otel`` extra (``pip install 'meshlib[otel]'``); without it that is a ``ConfigError`` naming it.

When tracing is on (``tracer_from_settings``):

* a ``spec.telemetry.tracing`` section (``tracing: {}`` will do) — on; with the app's provider
  if it installed one, else with one built from the environment;
* ``enabled: false`` in it — off, whatever the app installed;
* no section — on exactly when the app installed a provider before the mesh was built.

Off, there is no tracer: the data plane builds no event and touches no OpenTelemetry object.

Inbound, every trace format is read — W3C ``traceparent``/``tracestate``, ``baggage``, B3 single
(``b3``) and multi (``x-b3-*``) headers; when both W3C and B3 are present, W3C wins. Outbound,
each attempt carries the formats ``propagation`` names (default: ``tracecontext`` and
``baggage``; ``$OTEL_PROPAGATORS`` when the config names none), for that attempt's own CLIENT
span; trace headers carried from the inbound request are replaced, never sent twice.

Sampling: ``sampling`` (a percentage, as Istio's ``randomSamplingPercentage``) decides for new
traces only — a request that arrives with a sampling decision keeps it, as at Envoy. The draw
hashes ``x-request-id`` when there is one, so every service of a call chain decides alike. Unset,
meshlib draws nothing and the provider's sampler decides (the SDK's default samples every trace,
or what ``$OTEL_TRACES_SAMPLER`` says); Istio's own default is 1 %: write ``sampling: 1`` for it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshlib.clock import SYSTEM_CLOCK, Clock, SystemClock
from meshlib.config import model as m
from meshlib.config.load import ServiceInfo
from meshlib.errors import ConfigError
from meshlib.version import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshlib.discovery import Endpoint
    from meshlib.routing import RouteDecision
    from meshlib.telemetry import AttemptEnded, AttemptStarted, TraceCarrier, URLView

log = logging.getLogger("meshlib.telemetry")

#: Every trace header meshlib reads inbound and carries on (lowercase), in the order of
#: precedence: a ``traceparent`` wins over B3 headers.
TRACE_HEADERS: tuple[str, ...] = (
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
#: The headers that name a span: an attempt's own replace the carried ones (baggage is not one).
SPAN_HEADERS = frozenset(TRACE_HEADERS) - {"baggage"}

DEFAULT_PROPAGATION: tuple[str, ...] = ("tracecontext", "baggage")
PROPAGATORS: dict[str, type[TextMapPropagator]] = {
    "tracecontext": TraceContextTextMapPropagator,
    "baggage": W3CBaggagePropagator,
    "b3": B3SingleFormat,
    "b3multi": B3MultiFormat,
}
#: Inbound: B3 first, then W3C, so that W3C wins when both are there.
_EXTRACTORS: tuple[TextMapPropagator, ...] = (
    B3MultiFormat(),  # reads the single ``b3`` header too
    TraceContextTextMapPropagator(),
    W3CBaggagePropagator(),
)
EXPORTERS = ("console", "otlp", "file", "none")
#: Where the ``file`` exporter writes when the config names no file.
TRACES_FILE_ENV = "MESHLIB_TRACES_FILE"
#: How many finished spans a mesh keeps for ``GET /_mesh/traces`` unless ``recentSpans`` says.
RECENT_SPANS = 1024
_OTLP_MODULES = {
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "http"),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "grpc"),
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


# --------------------------------------------------------------------------- spans in flight


@dataclass(frozen=True, slots=True)
class ServerSpan:
    """The SERVER span of one inbound request, and the OpenTelemetry context it is current in."""

    span: Span
    context: otel_context.Context
    start_ns: int
    method: str

    @property
    def trace_id(self) -> str:
        return trace.format_trace_id(self.span.get_span_context().trace_id)


@dataclass(frozen=True, slots=True)
class AttemptSpan:
    """The CLIENT span of one outbound attempt (``Telemetry.attempt_started``'s token)."""

    span: Span
    start_ns: int


# --------------------------------------------------------------------------- the tracer


class MeshTracer:
    """Makes meshlib's spans on one ``TracerProvider``; the mesh's ``AttemptTracer``.

    ``provider``: where spans go (default: the global one). ``sampling``: percentage of new
    traces to sample, None to leave it to the provider's sampler. ``propagation``: the formats
    written on each attempt (``tracecontext``, ``baggage``, ``b3``, ``b3multi``). ``clock``: the
    mesh clock; span times are its wall time, so spans agree with the mesh's own durations.
    """

    __slots__ = (
        "_attributes",
        "_clock",
        "_event_handlers",
        "_inject",
        "_owned",
        "_random",
        "_recent",
        "_tracer",
        "_w3c",
        "propagation",
        "sampling",
        "service",
        "version",
    )

    def __init__(
        self,
        provider: trace.TracerProvider | None = None,
        *,
        service: str = "unknown",
        clock: Clock = SYSTEM_CLOCK,
        sampling: float | None = None,
        propagation: Sequence[str] | None = None,
        version: str | None = None,
        recent_spans: int = RECENT_SPANS,
        owns_provider: bool = False,
    ) -> None:
        provider = provider if provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("meshlib", __version__)
        #: the provider meshlib built for this mesh, shut down (its exporters flushed) by close()
        self._owned: Any = provider if owns_provider else None
        self._clock = clock
        self._random = random.Random()
        self._attributes: dict[tuple[int, int], tuple[Any, Any, dict[str, Any]]] = {}
        #: the mesh's spans that ended last, for ``GET /_mesh/traces`` (oldest first)
        self._recent: deque[Any] | None = deque(maxlen=recent_spans) if recent_spans else None
        self._event_handlers: dict[type, Any] = {}
        self.service = service
        self.version = version
        self.sampling = sampling
        names = tuple(propagation) if propagation is not None else DEFAULT_PROPAGATION
        unknown = [name for name in names if name not in PROPAGATORS]
        if unknown:
            raise ValueError(f"unknown propagation format(s) {unknown}: use {list(PROPAGATORS)}")
        self.propagation = names
        self._w3c = "tracecontext" in names
        self._inject = tuple(
            PROPAGATORS[name]() for name in dict.fromkeys(names) if name != "tracecontext"
        )

    # ------------------------------------------------------------------ inbound

    def start_server(
        self,
        method: str,
        path: str,
        trace_headers: Mapping[str, str],
        request_id: str | None,
        scheme: str | None = None,
    ) -> ServerSpan:
        """Start the SERVER span of an inbound request, child of the trace context it carries
        (``trace_headers``: the inbound trace headers, lowercase names).

        An instrumentation outside meshlib's (FastAPI's own, OpenTelemetry's ASGI or WSGI
        middleware) may have started a span for this request already: when the current span is
        a local one that is the child of the incoming context — or there is no incoming context
        — the SERVER span is the child of that span, so that the two nest, not fork."""
        current = otel_context.get_current()
        parent = extract(trace_headers) if trace_headers else current
        if parent is not current:
            outer = trace.get_current_span(current).get_span_context()
            if outer.is_valid and not outer.is_remote:
                incoming = trace.get_current_span(parent).get_span_context()
                outer_parent = getattr(trace.get_current_span(current), "parent", None)
                if not incoming.is_valid or (
                    isinstance(outer_parent, SpanContext)
                    and outer_parent.span_id == incoming.span_id
                ):
                    parent = current
        start_ns = self._now_ns()
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        if scheme:
            attributes["url.scheme"] = scheme
        span = self._start(method, parent, SpanKind.SERVER, attributes, start_ns, request_id)
        return ServerSpan(span, trace.set_span_in_context(span, parent), start_ns, method)

    def end_server(
        self,
        server: ServerSpan,
        status: int,
        duration: float,
        route: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        span = server.span
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if route:
                span.set_attribute("http.route", route)
                span.update_name(f"{server.method} {route}")
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error) or None))
            elif status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=server.start_ns + int(duration * 1e9))
            if self._recent is not None:
                self._recent.append(span)
            return
        span.end(end_time=server.start_ns + int(duration * 1e9))

    # ------------------------------------------------------------------ outbound attempts

    def start(self, event: AttemptStarted, carrier: TraceCarrier) -> AttemptSpan:
        """Start the CLIENT span of an attempt and write its trace headers on the attempt.

        The parent is the current span (the inbound request's SERVER span, or the app's own
        span inside it); with none, the trace headers already on the request (carried from the
        inbound request, or set by the app); with none either, the attempt starts a trace."""
        carried = carrier.trace_headers(SPAN_HEADERS)
        parent = otel_context.get_current()
        if carried and not trace.get_current_span(parent).get_span_context().is_valid:
            parent = extract(carried)
        info = event.request
        start_ns = self._now_ns()
        span = self._unsampled(parent, info.request_id)
        if span is None:  # recorded (or left to the provider's sampler): with its attributes
            url = info.url
            port = url.port or _DEFAULT_PORTS.get(url.scheme)
            attributes: dict[str, Any] = {
                "http.request.method": info.method,
                "url.full": _full_url(url),
                "server.address": url.host,
            }
            if port is not None:
                attributes["server.port"] = port
            if event.attempt > 1:
                attributes["http.request.resend_count"] = event.attempt - 1
            attributes.update(self._route_attributes(info.decision, event.endpoint))
            span = self._tracer.start_span(
                info.method, parent, SpanKind.CLIENT, attributes=attributes, start_time=start_ns
            )
        own = span.get_span_context()
        pairs: list[tuple[str, str]] = []
        if self._w3c and own.is_valid:  # TraceContextTextMapPropagator's output, made directly
            pairs.append(
                ("traceparent", f"00-{own.trace_id:032x}-{own.span_id:016x}-{own.trace_flags:02x}")
            )
            if own.trace_state:
                pairs.append(("tracestate", own.trace_state.to_header()))
        if self._inject:
            injected: dict[str, str] = {}
            current = None
            for propagator in self._inject:
                if isinstance(propagator, W3CBaggagePropagator):
                    propagator.inject(injected, parent)  # baggage lives in the context, not span
                    continue
                if current is None:
                    current = trace.set_span_in_context(span, parent)
                propagator.inject(injected, current)
            pairs.extend(injected.items())
        carrier.put_trace_headers(SPAN_HEADERS, pairs)
        return AttemptSpan(span, start_ns)

    def end(self, token: Any, event: AttemptEnded, flags: str) -> None:
        attempt: AttemptSpan = token
        span = attempt.span
        if span.is_recording():
            if event.status is not None:
                span.set_attribute("http.response.status_code", event.status)
            if event.error is not None:
                span.set_attribute("error.type", event.error)
                span.set_status(Status(StatusCode.ERROR, event.error))
            elif event.status is not None and event.status >= 400:
                span.set_attribute("error.type", str(event.status))
                span.set_status(Status(StatusCode.ERROR))
            if flags:
                span.set_attribute("meshlib.response_flags", flags)
                if "DI" in flags.split(","):
                    span.set_attribute("meshlib.fault", "delay")
            span.end(end_time=attempt.start_ns + int(event.duration * 1e9))
            if self._recent is not None:
                self._recent.append(span)
            return
        span.end(end_time=attempt.start_ns + int(event.duration * 1e9))

    # ------------------------------------------------------------------ the mesh's own events

    def on_event(self, event: Any) -> None:
        """Record what the mesh did to a call as an event of the current span (the SERVER span
        of the inbound request being served, or the app's own span): a fault injected
        (``meshlib.fault``), a retry scheduled (``meshlib.retry``), a retry refused by the
        budget (``meshlib.retry.refused``). Other events are ignored."""
        handlers = self._event_handlers
        if not handlers:
            from meshlib.telemetry import (  # noqa: PLC0415 - the package imports this module
                BudgetExhausted,
                FaultInjected,
                RetryScheduled,
            )

            handlers[FaultInjected] = self._fault_event
            handlers[RetryScheduled] = self._retry_event
            handlers[BudgetExhausted] = self._refused_event
        handler = handlers.get(type(event))
        if handler is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            name, attributes = handler(event)
            span.add_event(name, attributes, timestamp=self._now_ns())

    def _fault_event(self, event: Any) -> tuple[str, dict[str, Any]]:
        attributes = self._call_attributes(event.request)
        if event.delay is not None:
            attributes["meshlib.fault.delay"] = event.delay
        if event.abort_status is not None:
            attributes["meshlib.fault.abort.http_status"] = event.abort_status
        if event.abort_grpc_status is not None:
            attributes["meshlib.fault.abort.grpc_status"] = event.abort_grpc_status
        aborts = event.abort_status is not None or event.abort_grpc_status is not None
        kinds = [kind for kind, on in (("delay", event.delay is not None), ("abort", aborts)) if on]
        attributes["meshlib.fault"] = ",".join(kinds)
        return "meshlib.fault", attributes

    def _retry_event(self, event: Any) -> tuple[str, dict[str, Any]]:
        attributes = self._call_attributes(event.request)
        attributes["meshlib.retry.attempt"] = event.attempt
        attributes["meshlib.retry.delay"] = event.delay
        return "meshlib.retry", attributes

    def _refused_event(self, event: Any) -> tuple[str, dict[str, Any]]:
        attributes = self._call_attributes(event.request)
        attributes["meshlib.retry.attempt"] = event.attempt
        return "meshlib.retry.refused", attributes

    @staticmethod
    def _call_attributes(info: Any) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "http.request.method": info.method,
            "url.full": _full_url(info.url),
        }
        target = info.decision.destination
        if target is not None:
            attributes["meshlib.destination"] = target.host
            if target.subset is not None:
                attributes["meshlib.destination.subset"] = target.subset
        return attributes

    # ------------------------------------------------------------------ recent spans

    def recent_spans(self, limit: int | None = None, trace_id: str | None = None) -> list[Any]:
        """The last ``limit`` spans of this mesh that ended (all kept, with None), oldest first,
        as ``span_record`` makes them; only those of ``trace_id`` (32 hex digits) when given."""
        kept = self._recent
        if kept is None or limit == 0:
            return []
        while True:
            try:
                spans = list(kept)
                break
            except RuntimeError:  # pragma: no cover - appended to while copied (free threading)
                continue
        if trace_id is not None:
            wanted = int(trace_id, 16)
            spans = [s for s in spans if s.get_span_context().trace_id == wanted]
        if limit is not None:
            spans = spans[-limit:]
        records = (span_record(s, self.service, self.version) for s in spans)
        return [r for r in records if r is not None]

    @property
    def keeps(self) -> int:
        """How many finished spans this tracer keeps (``recentSpans``)."""
        if self._recent is None:
            return 0
        return self._recent.maxlen or 0

    def close(self) -> None:
        """Flush and shut down the provider meshlib built for this mesh (not an app's)."""
        provider = self._owned
        self._owned = None
        if provider is not None:
            provider.shutdown()

    def _route_attributes(self, decision: RouteDecision, endpoint: Endpoint | None) -> Any:
        """The span attributes of a route and an endpoint: the same for every attempt that
        takes them, so made once per pair (decisions and endpoints are immutable)."""
        key = (id(decision), id(endpoint))
        found = self._attributes.get(key)
        if found is not None and found[0] is decision and found[1] is endpoint:
            return found[2]
        attributes: dict[str, Any] = {}
        if endpoint is not None:
            attributes["network.peer.address"] = endpoint.host
            attributes["network.peer.port"] = endpoint.port
        if decision.virtual_service is not None:
            attributes["meshlib.virtual_service"] = decision.virtual_service
        if decision.route_name is not None:
            attributes["meshlib.route.name"] = decision.route_name
        if decision.route_index is not None:
            attributes["meshlib.route.index"] = decision.route_index
        target = decision.destination
        if target is not None:
            attributes["meshlib.destination"] = target.host
            if target.subset is not None:
                attributes["meshlib.destination.subset"] = target.subset
        if len(self._attributes) >= 4096:
            self._attributes.clear()
        self._attributes[key] = (decision, endpoint, attributes)
        return attributes

    # ------------------------------------------------------------------ shared

    def _now_ns(self) -> int:
        clock = self._clock
        return time.time_ns() if type(clock) is SystemClock else int(clock.wall() * 1e9)

    def _start(
        self,
        method: str,
        parent: otel_context.Context,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int,
        request_id: str | None,
    ) -> Span:
        span = self._unsampled(parent, request_id)
        if span is not None:
            return span
        return self._tracer.start_span(
            method, parent, kind, attributes=attributes, start_time=start_ns
        )

    def _unsampled(self, parent: otel_context.Context, request_id: str | None) -> Span | None:
        """The span of a new trace meshlib decided not to sample (ids for the headers, nothing
        recorded), or None: the span is to be started, with its attributes."""
        if (
            self.sampling is None
            or trace.get_current_span(parent).get_span_context().is_valid
            or self.sample(request_id)
        ):
            return None
        return NonRecordingSpan(
            SpanContext(
                trace_id=self._random.getrandbits(128) or 1,
                span_id=self._random.getrandbits(64) or 1,
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.DEFAULT),
            )
        )

    def sample(self, request_id: str | None) -> bool:
        """Whether a new trace is sampled: ``sampling`` percent of request ids (or of draws)."""
        percent = self.sampling
        if percent is None or percent >= 100:
            return True
        if percent <= 0:
            return False
        key = zlib.crc32(request_id.encode()) if request_id else self._random.getrandbits(32)
        return key % 10_000 < percent * 100


def extract(headers: Any) -> otel_context.Context:
    """The trace context that ``headers`` (any mapping with ``get``) carry, in any format."""
    found = otel_context.Context()
    for propagator in _EXTRACTORS:
        found = propagator.extract(headers, found)
    return found


_KINDS = {"SERVER", "CLIENT", "INTERNAL", "PRODUCER", "CONSUMER"}


def span_record(
    span: Any, service: str | None = None, version: str | None = None
) -> dict[str, Any] | None:
    """A finished span as JSON-ready data, the form of ``GET /_mesh/traces`` and of the
    ``file`` exporter's lines::

        {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
         "name": "GET /productpage", "service": "productpage", "version": "v1",
         "kind": "SERVER", "start_unix_nano": 1767225600000000000, "end_unix_nano": ...,
         "status": "OK" | "ERROR" | "UNSET", "status_message": "..." (only when set),
         "attributes": {...}, "events": [{"name": ..., "time_unix_nano": ..., "attributes": {...}}]}

    ``span`` is the SDK's finished span (``ReadableSpan``); ``service``/``version`` default to
    its resource's ``service.name``/``service.version``. None for a span that is not one (a
    provider of another kind) or has not ended."""
    context = getattr(span, "context", None)
    end = getattr(span, "end_time", None)
    if context is None or end is None or not hasattr(span, "attributes"):
        return None
    resource = getattr(getattr(span, "resource", None), "attributes", None) or {}
    parent = span.parent
    kind = getattr(span.kind, "name", "INTERNAL")
    status = span.status
    record: dict[str, Any] = {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "service": service if service is not None else str(resource.get("service.name", "")),
        "version": version if version is not None else resource.get("service.version"),
        "kind": kind if kind in _KINDS else "INTERNAL",
        "start_unix_nano": int(span.start_time or 0),
        "end_unix_nano": int(end),
        "status": status.status_code.name,
        "attributes": _json_attributes(span.attributes),
        "events": [
            {
                "name": e.name,
                "time_unix_nano": int(e.timestamp),
                "attributes": _json_attributes(e.attributes),
            }
            for e in span.events
        ],
    }
    if status.description:
        record["status_message"] = status.description
    return record


def _json_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in (attributes or {}).items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def _full_url(url: URLView) -> str:
    """The URL without its credentials (``user:password@``)."""
    text = str(url)
    if url.userinfo:
        text = text.replace(f"://{url.userinfo.decode('ascii', 'replace')}@", "://", 1)
    return text


# --------------------------------------------------------------------------- building one


def installed_provider() -> trace.TracerProvider | None:
    """The tracer provider the app installed globally, or None (the API's default stand-in)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider


def tracer_from_settings(
    settings: m.TracingSettings | None,
    service: ServiceInfo,
    clock: Clock,
    *,
    provider: trace.TracerProvider | None = None,
) -> MeshTracer | None:
    """The mesh's tracer for ``spec.telemetry.tracing``, or None when tracing is off.

    ``provider`` overrides where spans go (tests pass one with an in-memory exporter)."""
    enabled = None if settings is None else settings.enabled is not False
    if enabled is False:
        return None
    owns = False
    if provider is None:
        provider = installed_provider()
        if provider is not None and settings is not None and settings.file is not None:
            log.warning(
                "%s: spec.telemetry.tracing.file is not used: the app installed its own tracer "
                "provider, whose exporters decide where spans go",
                service.name,
            )
    if provider is None:
        if not enabled:
            return None
        provider = provider_from_environment(
            service, file=settings.file if settings is not None else None
        )
        owns = True
    propagation = settings.propagation if settings is not None else None
    recent = settings.recent_spans if settings is not None else None
    return MeshTracer(
        provider,
        service=service.name,
        version=service.version,
        clock=clock,
        sampling=settings.sampling if settings is not None else None,
        propagation=propagation if propagation is not None else propagation_from_environment(),
        recent_spans=RECENT_SPANS if recent is None else recent,
        owns_provider=owns,
    )


def propagation_from_environment() -> tuple[str, ...] | None:
    """``$OTEL_PROPAGATORS`` as propagation formats meshlib writes; None when unset."""
    value = os.environ.get("OTEL_PROPAGATORS", "").strip()
    if not value:
        return None
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    known = tuple(name for name in names if name in PROPAGATORS)
    for name in names:
        if name not in PROPAGATORS:
            log.warning("OTEL_PROPAGATORS: %r is not a format meshlib writes; ignored", name)
    return known


def provider_from_environment(
    service: ServiceInfo, *, file: str | None = None
) -> SdkTracerProvider:
    """An SDK ``TracerProvider`` set up from the standard environment variables.

    ``OTEL_SERVICE_NAME`` (default: the Service document's name), ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_SAMPLER``/``_ARG`` (read by the SDK) and ``OTEL_TRACES_EXPORTER``: a comma
    list of ``console`` (stdout, each span as it ends), ``otlp`` (batched; needs
    ``opentelemetry-exporter-otlp-proto-http``, or ``-grpc`` with
    ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``), ``file`` (batched, JSON lines) and ``none``.

    ``file`` (``spec.telemetry.tracing.file``), else ``$MESHLIB_TRACES_FILE``, names the file
    the ``file`` exporter appends to; either one alone turns that exporter on, in addition to
    those ``OTEL_TRACES_EXPORTER`` names. With neither a file nor ``OTEL_TRACES_EXPORTER``, the
    exporter is ``otlp`` when its package is installed and none otherwise (spans are made,
    propagated and kept for ``GET /_mesh/traces``, not exported: a warning says so). meshlib
    keeps this provider to itself; it does not become the global one.

    Needs the OpenTelemetry SDK (``pip install 'meshlib[otel]'``): without it, a
    ``ConfigError`` that says so.
    """
    _require_sdk(service.name)
    # the SDK is imported only where meshlib sets a provider up itself
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    env = os.environ
    attributes: dict[str, str] = {"service.namespace": service.namespace}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service.name
    if service.version:
        attributes["service.version"] = service.version
    path = file or env.get(TRACES_FILE_ENV, "").strip() or None
    wanted = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if wanted:
        names = [name.strip().lower() for name in wanted.split(",") if name.strip()]
    elif path is not None:
        names = []
    else:
        names = ["otlp"] if _otlp_exporter(env, required=False) is not None else ["none"]
        if names == ["none"]:
            log.warning(
                "tracing is on for %s but no span exporter is set up: set OTEL_TRACES_EXPORTER "
                "(console, otlp, file) or install a TracerProvider before the mesh is built",
                service.name,
            )
    if path is not None and "file" not in names:
        names.append("file")
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError.single(
                "$OTEL_TRACES_EXPORTER",
                0,
                "",
                f"unknown span exporter {name!r}: meshlib sets up {', '.join(EXPORTERS)}",
            )
        if name == "file" and path is None:
            raise ConfigError.single(
                "$OTEL_TRACES_EXPORTER",
                0,
                "",
                "the file exporter needs a file: set spec.telemetry.tracing.file or "
                f"${TRACES_FILE_ENV}",
            )
    processors: list[Any] = []
    for name in dict.fromkeys(names):
        if name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        elif name == "otlp":
            processors.append(BatchSpanProcessor(_otlp_exporter(env, required=True)))
        elif name == "file" and path is not None:
            from meshlib.telemetry.spanfile import JsonLinesSpanExporter  # noqa: PLC0415

            processors.append(BatchSpanProcessor(JsonLinesSpanExporter(path)))
    provider = TracerProvider(resource=Resource.create(attributes))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


#: what to install for a provider meshlib builds itself
SDK_REQUIREMENT = "pip install 'meshlib[otel]' (the opentelemetry-sdk package)"


def _require_sdk(service: str) -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ConfigError.single(
            "spec.telemetry.tracing",
            0,
            "",
            f"tracing is on for {service} and the app installed no tracer provider, so meshlib "
            f"builds one from the OTEL_* variables, which needs the OpenTelemetry SDK: "
            f"{SDK_REQUIREMENT}; or install a TracerProvider before the mesh is built "
            f"({exc})",
        ) from None


def _otlp_exporter(env: Mapping[str, str], *, required: bool) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in _OTLP_MODULES:
        raise ConfigError.single(
            "$OTEL_EXPORTER_OTLP_PROTOCOL",
            0,
            "",
            f"unknown OTLP protocol {protocol!r}: use {' or '.join(_OTLP_MODULES)}",
        )
    module, flavour = _OTLP_MODULES[protocol]
    try:
        found = __import__(module, fromlist=["OTLPSpanExporter"])
    except ImportError:
        if not required:
            return None
        raise ConfigError.single(
            "$OTEL_TRACES_EXPORTER",
            0,
            "",
            f"otlp ({protocol}) needs the package opentelemetry-exporter-otlp-proto-{flavour}: "
            f"pip install opentelemetry-exporter-otlp-proto-{flavour}",
        ) from None
    return found.OTLPSpanExporter()


def memory_tracer(
    service: str = "test",
    *,
    clock: Clock = SYSTEM_CLOCK,
    sampling: float | None = None,
    propagation: Sequence[str] | None = None,
) -> tuple[MeshTracer, InMemorySpanExporter]:
    """A tracer whose spans are kept in memory, for tests::

    tracer, spans = memory_tracer()
    mesh = Mesh.from_yaml(config, telemetry=Telemetry(tracer=tracer))
    ...
    [span.name for span in spans.get_finished_spans()]

    Needs the OpenTelemetry SDK (``pip install 'meshlib[otel]'``): without it, ``ImportError``.
    """
    try:
        import opentelemetry.sdk.trace  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ImportError(f"memory_tracer needs the OpenTelemetry SDK: {SDK_REQUIREMENT}") from exc
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = MeshTracer(
        provider, service=service, clock=clock, sampling=sampling, propagation=propagation
    )
    return tracer, exporter


__all__ = [
    "DEFAULT_PROPAGATION",
    "PROPAGATORS",
    "RECENT_SPANS",
    "SPAN_HEADERS",
    "TRACES_FILE_ENV",
    "TRACE_HEADERS",
    "AttemptSpan",
    "MeshTracer",
    "ServerSpan",
    "extract",
    "installed_provider",
    "memory_tracer",
    "propagation_from_environment",
    "provider_from_environment",
    "span_record",
    "tracer_from_settings",
]
