"""Metrics with Istio's standard names and labels, for Prometheus.

A ``MetricsRecorder`` is a mesh listener. From each finished request it records what an Istio
sidecar records — so that Istio's Grafana dashboards, Kiali and PromQL written for Istio work on
meshlib services unchanged:

* ``istio_requests_total`` (counter), ``istio_request_duration_milliseconds``,
  ``istio_request_bytes`` and ``istio_response_bytes`` (histograms, Envoy's default buckets),
  with Istio's standard labels: ``reporter="source"`` for the calls this service makes,
  ``reporter="destination"`` for the requests it serves (reported by ``meshlib.server``);
* meshlib's own: ``meshlib_retries_total``, ``meshlib_breaker_state`` (0 closed, 1 open,
  2 half-open), ``meshlib_outlier_ejections_total``, ``meshlib_faults_injected_total``,
  ``meshlib_retry_budget_exhausted_total``, ``meshlib_mirror_dropped_total``,
  ``meshlib_peer_metadata_refused_total``
  (inbound requests whose workload metadata claimed another identity than the caller's
  certificate: the metadata was ignored; counted for the whole process),
  ``meshlib_inbound_headers_refused_total`` (inbound context headers no outbound call could
  carry, by ``header`` and ``action``), and the golden signals of each route of this service's
  calls (Envoy keeps per-route stats; Istio's labels have no route):
  ``meshlib_route_requests_total`` and ``meshlib_route_request_duration_milliseconds``.

Each recorder owns a ``prometheus_client`` registry (never the global one: several meshes in one
process keep apart), on which a custom collector turns the recorder's tallies into metric
families at each scrape. The text is served by ``scrape(mesh)`` (for the inbound middleware or
any web framework: ``metrics_app`` for ASGI, ``metrics_wsgi_app`` for WSGI) and, with
``spec.telemetry.metrics.port``, by a small scrape server of its own. Collectors and metrics an
app registers on ``recorder.registry`` appear in the same scrape.

The request path stays cheap: a finished request costs a dict look-up of its pre-built label set
(one per destination, endpoint, status and flags), a few additions and three ``bisect`` calls,
under one lock. The collector copies those tallies under the lock when Prometheus scrapes and
builds the text outside it. The exposition is the one OpenTelemetry's Prometheus exporter wrote
for the same instruments, which meshlib used before: counters named ``<name>_total``, the unit in
the histograms' names (``_milliseconds``), each family's labels in alphabetical order, bucket
bounds written as Envoy's (``le="1"``, ``le="0.5"``), no scope labels and no ``target_info``.
"""

from __future__ import annotations

import bisect
import dataclasses
import http.server
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric as Family

from meshlib.config import model as m
from meshlib.config.load import ServiceInfo
from meshlib.discovery import Endpoint
from meshlib.routing import CLUSTER_DOMAIN, RouteDecision
from meshlib.telemetry import (
    BreakerCreated,
    BreakerTransition,
    BudgetExhausted,
    EndpointEjected,
    FaultInjected,
    InboundFinished,
    InboundHeaderRefused,
    MirrorDropped,
    RequestFinished,
    RetryScheduled,
    StoreHealthChanged,
)
from meshlib.telemetry.peer import PeerMetadata, principal_parts, refused_claims
from meshlib.version import __version__

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

log = logging.getLogger("meshlib.metrics")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PATH = "/metrics"

#: Envoy's default histogram buckets, which Istio's three request histograms use (ms and bytes).
BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)

#: Istio's standard metric labels, in the order the label tuples below hold them.
LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)

#: The labels of ``meshlib_route_requests_total`` (and, without ``response_code``, of
#: ``meshlib_route_request_duration_milliseconds``): the route a call took, named as the access
#: log's ``route`` field names it (``virtual_service`` empty for a host without a
#: VirtualService, whose one route is Istio's ``default``).
ROUTE_LABELS: tuple[str, ...] = (
    "source_workload",
    "source_workload_namespace",
    "virtual_service",
    "route",
    "destination_service",
    "response_code",
)

#: ``meshlib_breaker_state`` values.
BREAKER_STATES: dict[str, int] = {"closed": 0, "open": 1, "half-open": 2}

UNKNOWN = "unknown"
_CANONICAL_NAME = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION = (
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
)
_CACHE_LIMIT = 8192


# --------------------------------------------------------------------------- label values


@dataclass(frozen=True, slots=True)
class Workload:
    """One side of a request as Istio's labels describe it (``source_*`` or ``destination_*``)."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = "latest"
    cluster: str = UNKNOWN

    @classmethod
    def of_service(cls, service: ServiceInfo) -> Workload:
        """This service: its ``app`` is its name unless an ``app`` label says otherwise; its
        workload ``<name>-<version>`` (Kubernetes' Deployment naming, as in Bookinfo's
        ``reviews-v2``) unless a ``workload`` label names it (the metadata it sends peers)."""
        own = PeerMetadata.of_service(service)
        return cls(
            workload=own.workload,
            namespace=own.namespace,
            app=own.app,
            version=own.version,
            canonical_service=own.canonical_service,
            canonical_revision=own.canonical_revision,
            cluster=own.cluster or UNKNOWN,
        )

    @classmethod
    def of_destination(
        cls,
        labels: Mapping[str, str],
        service_name: str,
        namespace: str,
        peer: PeerMetadata | None = None,
    ) -> Workload:
        """The destination as the endpoint's labels (or the subset's) describe it, else as the
        upstream's metadata (its response's ``x-envoy-peer-metadata``) does; without either, a
        service of the mesh (``namespace`` known) is its own app and workload."""
        own = peer if peer is not None else _NO_PEER
        version = labels.get("version") or own.version or UNKNOWN
        app = labels.get("app") or own.app or (service_name if namespace != UNKNOWN else UNKNOWN)
        workload = labels.get("workload") or own.workload
        if not workload:
            workload = f"{app}-{version}" if UNKNOWN not in (app, version) else app
        return cls(
            workload=workload,
            namespace=own.namespace or namespace,
            app=app,
            version=version,
            canonical_service=_first(labels, _CANONICAL_NAME)
            or own.canonical_service
            or service_name,
            canonical_revision=_first(labels, _CANONICAL_REVISION)
            or own.canonical_revision
            or "latest",
            cluster=own.cluster or UNKNOWN,
        )

    @classmethod
    def of_caller(cls, peer: PeerMetadata | None, principal: str | None) -> Workload:
        """The caller of an inbound request: its metadata, its verified identity (whose
        namespace stands when the metadata says none)."""
        parts = principal_parts(principal) if principal is not None else None
        shown = spiffe_uri(principal)
        if peer is None:
            if principal is None:
                return _UNKNOWN_WORKLOAD
            return cls(principal=shown, namespace=parts[0] if parts else UNKNOWN)
        return cls(
            workload=peer.workload or UNKNOWN,
            namespace=peer.namespace or (parts[0] if parts else UNKNOWN),
            principal=shown,
            app=peer.app or UNKNOWN,
            version=peer.version or UNKNOWN,
            canonical_service=peer.canonical_service or peer.app or UNKNOWN,
            canonical_revision=peer.canonical_revision or peer.version or "latest",
            cluster=peer.cluster or UNKNOWN,
        )

    def values(self) -> tuple[str, ...]:
        return (
            self.workload,
            self.namespace,
            self.principal,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision,
            self.cluster,
        )


_NO_PEER = PeerMetadata()
_UNKNOWN_WORKLOAD = Workload()


def spiffe_uri(principal: str | None) -> str:
    """A principal as Istio's metric labels show it: the certificate's URI SAN
    (``spiffe://cluster.local/ns/default/sa/bookinfo-details``), ``unknown`` without one.
    Istio's authorization principals drop the scheme; its metrics keep it (the Workload
    dashboard's mTLS panels select ``destination_principal=~"spiffe.*"``)."""
    if not principal:
        return UNKNOWN
    return principal if "://" in principal else "spiffe://" + principal


def _first(labels: Mapping[str, str], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


def service_name_and_namespace(host: str) -> tuple[str, str]:
    """``destination_service_name`` and ``_namespace`` of a host: the Kubernetes service name and
    namespace of ``name.ns.svc.cluster.local``; any other host is its own name, namespace
    unknown (as for a ServiceEntry host)."""
    suffix = "." + CLUSTER_DOMAIN
    if host.endswith(suffix):
        name, _, namespace = host[: -len(suffix)].partition(".")
        if name and namespace and "." not in namespace:
            return name, namespace
    return host, UNKNOWN


def response_code(status: int | None) -> str:
    """Istio's ``response_code``: the status, ``0`` when no response came at all."""
    return str(status) if status is not None else "0"


def outbound_labels(
    source: Workload,
    decision: RouteDecision,
    endpoint: Endpoint | None,
    status: int | None,
    flags: str,
    peer: PeerMetadata | None = None,
    tls: str | None = None,
    peer_identity: str | None = None,
    own_identity: str | None = None,
) -> tuple[str, ...]:
    """Istio's labels, in ``LABELS`` order, for a call this service made (``reporter="source"``).

    ``destination_version``/``_app``/``_workload`` come from the labels of the endpoint that
    answered (the pod's labels, under Istio), else from the subset's labels, else from the
    upstream's metadata (``peer``), else the service's short name is its app and workload; a
    host outside the mesh is ``PassthroughCluster``, one refused by ``REGISTRY_ONLY``
    ``BlackHoleCluster``, as Envoy names them.

    Over mutual TLS (``tls``, ``peer_identity``: the attempt's TLS mode and the upstream's
    verified identity), ``source_principal`` is this workload's SPIFFE ID when it presented its
    mesh certificate (``ISTIO_MUTUAL``), and ``destination_principal`` the URI SAN the upstream
    presented, as Envoy reports ``uri_san_local_certificate`` and ``uri_san_peer_certificate``
    (``own_identity``: this workload's SPIFFE ID)."""
    if tls == "ISTIO_MUTUAL" and own_identity:
        source = dataclasses.replace(source, principal=spiffe_uri(own_identity))
    target = decision.destination
    host = target.host if target is not None else decision.host
    if decision.passthrough:
        name, namespace, destination = "PassthroughCluster", UNKNOWN, Workload()
    elif not decision.matched and decision.virtual_service is None and decision.note:
        name, namespace, destination = "BlackHoleCluster", UNKNOWN, Workload()
    else:
        name, namespace = service_name_and_namespace(host)
        labels: dict[str, str] = {}
        if target is not None and target.subset_labels:
            labels.update(target.subset_labels)
        if endpoint is not None and endpoint.labels:
            labels.update(endpoint.labels)
        destination = Workload.of_destination(labels, name, namespace, peer)
        if peer_identity and "://" in peer_identity:
            destination = dataclasses.replace(destination, principal=peer_identity)
    return (
        "source",
        *source.values(),
        *destination.values(),
        host,
        name,
        namespace,
        "http",
        response_code(status),
        "",
        flags or "-",
        UNKNOWN,  # connection_security_policy: Istio's client side never knows it
    )


def inbound_labels(
    local: Workload, service: ServiceInfo, event: InboundFinished
) -> tuple[str, ...]:
    """Istio's labels for a request this service served (``reporter="destination"``): the
    caller as its metadata and its verified identity describe it (else by the workload name the
    server learnt, if any); ``connection_security_policy`` is ``mutual_tls`` for a caller with a
    verified mesh identity, ``none`` otherwise."""
    if event.peer is not None or event.principal is not None or not event.source:
        source = Workload.of_caller(event.peer, event.principal)
    else:
        source = Workload(workload=event.source)
    name = service.name
    host = f"{name}.{service.namespace}.{CLUSTER_DOMAIN}"
    if event.principal is not None:  # mutual TLS: this workload presented its certificate
        local = dataclasses.replace(local, principal=service.spiffe_id)
    return (
        "destination",
        *source.values(),
        *local.values(),
        host,
        name,
        service.namespace,
        event.protocol or "http",
        response_code(event.status),
        "",
        event.flags or "-",
        "mutual_tls" if event.principal is not None else "none",
    )


def route_labels(source: Workload, decision: RouteDecision, status: int | None) -> tuple[str, ...]:
    """``ROUTE_LABELS`` for a call this service made: the route by its name, else its place
    (``http[2]``), else ``-`` when no route matched."""
    target = decision.destination
    if decision.route_name:
        route = decision.route_name
    elif decision.route_index is not None:
        route = f"http[{decision.route_index}]"
    else:
        route = "-"
    return (
        source.workload,
        source.namespace,
        decision.virtual_service or "",
        route,
        target.host if target is not None else decision.host,
        response_code(status),
    )


# --------------------------------------------------------------------------- tallies


class _Histogram:
    """Bucket counts and sum of one label set (an explicit-bucket histogram: bucket ``i`` holds
    values in ``(BUCKETS[i-1], BUCKETS[i]]``, the last one those above ``BUCKETS[-1]``)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        return self.counts.copy(), self.sum


class _Series:
    """The tallies of one Istio label set (``labels``: the values in ``LABELS`` order)."""

    __slots__ = ("duration", "labels", "request_bytes", "requests", "response_bytes")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.requests = 0
        self.duration = _Histogram()
        self.request_bytes = _Histogram()
        self.response_bytes = _Histogram()


_Tally = dict[tuple[str, ...], int]
#: what a cached label set holds: the Istio series; the target, endpoint and peer metadata it was
#: made for (kept alive, so that their ids key nothing else meanwhile); for a call this service
#: made, its route's counter labels and duration histogram (None for a request it served)
_Cached = tuple["_Series", object, object, object, "tuple[str, ...] | None", "_Histogram | None"]


def build_labels() -> dict[str, str]:
    """``istio_build``'s labels, as an Istio proxy reports them: ``component="proxy"`` and the
    build's tag (``meshlib-0.1.0``). Istio's dashboards read the versions running from it."""
    return {"component": "proxy", "tag": f"meshlib-{__version__}"}


# --------------------------------------------------------------------------- the recorder


class MetricsRecorder:
    """A mesh listener that keeps Istio's request metrics and meshlib's own, for Prometheus.

    ``scrape(accept)`` returns ``(content_type, body)`` in Prometheus' text format (or
    OpenMetrics, when ``accept`` asks for it). With ``port`` set (0: any free port) a scrape
    server answers ``GET <path>`` on ``host:port`` in a background thread; ``port`` is then the
    port it listens on, and ``close()`` (``Mesh.close``) stops it.
    """

    def __init__(
        self,
        service: ServiceInfo,
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        path: str = DEFAULT_PATH,
    ) -> None:
        self.service = service
        self.source = Workload.of_service(service)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        self._routes: dict[tuple[object, ...], _Cached] = {}
        self._route_requests: _Tally = {}
        self._route_durations: dict[tuple[str, ...], _Histogram] = {}
        self._retries: _Tally = {}
        self._ejections: _Tally = {}
        self._faults: _Tally = {}
        self._budget: _Tally = {}
        self._mirror_dropped: _Tally = {}
        self._refused: _Tally = {}
        self._breakers: dict[tuple[str, str], int] = {}
        self._stores: dict[str, int] = {}
        #: the counters of ``meshlib_*`` tallies, in the order the scrape lists them
        self._counters: tuple[tuple[str, str, _Tally], ...] = (
            ("meshlib_retries", "Retries scheduled", self._retries),
            (
                "meshlib_outlier_ejections",
                "Endpoints ejected by outlier detection",
                self._ejections,
            ),
            ("meshlib_faults_injected", "Faults injected (delay, abort)", self._faults),
            (
                "meshlib_retry_budget_exhausted",
                "Retries refused by the retry budget or maxRetries",
                self._budget,
            ),
            (
                "meshlib_mirror_dropped",
                "Shadow requests not sent: the mesh had as many outstanding as it keeps",
                self._mirror_dropped,
            ),
            (
                "meshlib_inbound_headers_refused",
                "Inbound context headers no outbound call could carry (replaced or dropped)",
                self._refused,
            ),
            (
                "meshlib_route_requests",
                "Requests, by the route of this service's config they took",
                self._route_requests,
            ),
        )
        #: the registry the scrape reads: meshlib's collector, then whatever the app adds
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._handlers: dict[type, Callable[[Any], None]] = {
            StoreHealthChanged: self._store_health,
            RetryScheduled: self._retry,
            FaultInjected: self._fault,
            BudgetExhausted: self._budget_exhausted,
            MirrorDropped: self._mirror,
            EndpointEjected: self._ejected,
            BreakerCreated: self._breaker_created,
            BreakerTransition: self._breaker_transition,
            InboundHeaderRefused: self._header_refused,
        }
        self.path = path if path.startswith("/") else "/" + path
        self.host = host
        self._server: _ScrapeServer | None = None
        if port is not None:
            self._server = _ScrapeServer(self, host, port, self.path)

    # ------------------------------------------------------------------ events

    def on_event(self, event: Any) -> None:
        kind = type(event)
        if kind is RequestFinished:
            self._outbound(event)
        elif kind is InboundFinished:
            self._inbound(event)
        else:
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(event)

    def _outbound(self, event: RequestFinished) -> None:
        decision = event.request.decision
        target = decision.destination
        endpoint = event.endpoint
        # Targets and endpoints are shared, immutable objects: their ids key the label set
        # while the cache holds them (so no id is reused meanwhile); a host outside the mesh
        # gets a fresh target on every call, so its name keys it instead.
        where: object = decision.host if target is None or decision.passthrough else id(target)
        peer = event.peer
        key = (
            where,
            id(endpoint),
            event.status,
            event.flags,
            id(peer),
            event.tls,
            event.peer_identity,
        )
        found = self._routes.get(key)
        if found is None:
            labels = outbound_labels(
                self.source,
                decision,
                endpoint,
                event.status,
                event.flags,
                peer,
                event.tls,
                event.peer_identity,
                self.service.spiffe_id,
            )
            # the target (or, outside the mesh, the host) is the route's: one decision each
            route = route_labels(self.source, decision, event.status)
            found = (
                self._series_for(labels),
                target,
                endpoint,
                peer,
                route,
                self._route_histogram(route[:-1]),
            )
            routes = self._routes
            if len(routes) >= _CACHE_LIMIT:
                routes.clear()
            routes[key] = found
        series, _, _, _, route_key, histogram = found
        milliseconds = event.duration * 1000.0
        with self._lock:
            series.requests += 1
            series.duration.observe(milliseconds)
            series.request_bytes.observe(event.request_bytes or 0)
            series.response_bytes.observe(event.response_bytes or 0)
            if route_key is not None and histogram is not None:
                tally = self._route_requests
                tally[route_key] = tally.get(route_key, 0) + 1
                histogram.observe(milliseconds)

    def _route_histogram(self, route: tuple[str, ...]) -> _Histogram:
        with self._lock:
            histogram = self._route_durations.get(route)
            if histogram is None:
                histogram = self._route_durations[route] = _Histogram()
            return histogram

    def _inbound(self, event: InboundFinished) -> None:
        peer = event.peer
        key = (
            "inbound",
            event.source,
            event.status,
            event.flags,
            event.protocol,
            event.principal,
            id(peer),
        )
        found = self._routes.get(key)
        if found is None:
            labels = inbound_labels(self.source, self.service, event)
            found = (self._series_for(labels), None, None, peer, None, None)
            routes = self._routes
            if len(routes) >= _CACHE_LIMIT:
                routes.clear()
            routes[key] = found
        self._observe(found[0], event.duration, event.request_bytes, event.response_bytes)

    def _observe(
        self, series: _Series, duration: float, sent: int | None, received: int | None
    ) -> None:
        with self._lock:
            series.requests += 1
            series.duration.observe(duration * 1000.0)
            series.request_bytes.observe(sent or 0)
            series.response_bytes.observe(received or 0)

    def _series_for(self, labels: tuple[str, ...]) -> _Series:
        series = self._series.get(labels)
        if series is None:
            with self._lock:
                series = self._series.get(labels)
                if series is None:
                    series = _Series(labels)
                    self._series[labels] = series
        return series

    def _count(self, tally: _Tally, key: tuple[str, ...]) -> None:
        with self._lock:
            tally[key] = tally.get(key, 0) + 1

    def _retry(self, event: RetryScheduled) -> None:
        self._count(self._retries, _destination_of(event.request.decision))

    def _budget_exhausted(self, event: BudgetExhausted) -> None:
        self._count(self._budget, _destination_of(event.request.decision))

    def _mirror(self, event: MirrorDropped) -> None:
        self._count(self._mirror_dropped, _split(event.destination))

    def _fault(self, event: FaultInjected) -> None:
        where = _destination_of(event.request.decision)
        if event.delay is not None:
            self._count(self._faults, (*where, "delay"))
        if event.abort_status is not None or event.abort_grpc_status is not None:
            self._count(self._faults, (*where, "abort"))

    def _header_refused(self, event: InboundHeaderRefused) -> None:
        self._count(self._refused, (event.header, event.action))

    def _ejected(self, event: EndpointEjected) -> None:
        self._count(self._ejections, (*_split(event.destination), event.endpoint.address))

    def _breaker_created(self, event: BreakerCreated) -> None:
        with self._lock:
            self._breakers[_split(event.destination)] = BREAKER_STATES.get(event.state, 0)

    def _breaker_transition(self, event: BreakerTransition) -> None:
        with self._lock:
            self._breakers[_split(event.destination)] = BREAKER_STATES.get(event.new, 0)

    def _store_health(self, event: StoreHealthChanged) -> None:
        with self._lock:
            self._stores[event.store] = int(event.stale)

    # ------------------------------------------------------------------ collection

    def collect(self) -> Iterator[Family]:
        """The metric families of a scrape (``prometheus_client``'s collector protocol), in the
        order the scrape lists them; a family with nothing to report is left out."""
        with self._lock:
            series = [
                (
                    s.labels,
                    s.requests,
                    (
                        s.duration.snapshot(),
                        s.request_bytes.snapshot(),
                        s.response_bytes.snapshot(),
                    ),
                )
                for s in self._series.values()
            ]
            tallies = [list(tally.items()) for _, _, tally in self._counters]
            breakers = list(self._breakers.items())
            stores = list(self._stores.items())
            by_route = [(route, h.snapshot()) for route, h in self._route_durations.items()]

        if series:
            requests = _counter(
                "istio_requests", "Requests, as Istio's sidecars count them", LABELS
            )
            for labels, count, _ in series:
                requests.add_metric(_by_name(labels, _LABEL_ORDER), count)
            yield requests
        for (name, description, _), counts in zip(self._counters, tallies, strict=True):
            if counts:
                keys = _TALLY_LABELS[name]
                family = _counter(name, description, keys)
                order = _order(keys)
                for key, count in counts:
                    family.add_metric(_by_name(key, order), count)
                yield family
        refused = _counter(
            "meshlib_peer_metadata_refused",
            "Inbound requests whose workload metadata claimed another namespace or service "
            "account than the caller's certificate (the metadata was ignored)",
            (),
        )
        refused.add_metric([], refused_claims())
        yield refused
        build = build_labels()
        info = _gauge(
            "istio_build",
            "Istio component build info: the proxy is meshlib, tagged with its version",
            tuple(build),
        )
        info.add_metric([build[key] for key in sorted(build)], 1)
        yield info
        if breakers:
            gauge = _gauge(
                "meshlib_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open",
                _DESTINATION,
            )
            for destination, state in breakers:
                gauge.add_metric(list(destination), state)
            yield gauge
        if stores:
            gauge = _gauge(
                "meshlib_store_stale",
                "1 while the service's view of its store is stale (no member answers), else 0",
                ("store",),
            )
            for store, stale in stores:
                gauge.add_metric([store], stale)
            yield gauge
        if by_route:
            keys = ROUTE_LABELS[:-1]
            histogram = _histogram(
                "meshlib_route_request_duration",
                "Request duration by the route of this service's config the call took",
                "milliseconds",
                keys,
            )
            order = _order(keys)
            for route, snapshot in by_route:
                _add_histogram(histogram, _by_name(route, order), snapshot)
            yield histogram
        if not series:
            return
        for column, (name, description, unit) in enumerate(_ISTIO_HISTOGRAMS):
            histogram = _histogram(name, description, unit, LABELS)
            for labels, _, histograms in series:
                _add_histogram(histogram, _by_name(labels, _LABEL_ORDER), histograms[column])
            yield histogram

    # ------------------------------------------------------------------ scraping

    def scrape(self, accept: str | None = None) -> tuple[str, bytes]:
        """``(content_type, body)`` for a Prometheus scrape; ``accept`` is the request's
        ``Accept`` header (OpenMetrics when it asks for it, else Prometheus' text format)."""
        encoder, content_type = choose_encoder(accept or "")
        return content_type, encoder(self.registry)

    @property
    def port(self) -> int | None:
        """The scrape server's port (the one picked when the config said 0), or None."""
        return self._server.port if self._server is not None else None

    @property
    def url(self) -> str | None:
        """``http://host:port/path`` of the scrape server, or None."""
        server = self._server
        if server is None:
            return None
        return f"http://{_url_host(self.host)}:{server.port}{self.path}"

    @property
    def meter_provider(self) -> Any:
        """Removed (the scrape no longer goes through OpenTelemetry's SDK): a clear error saying
        what replaces it, ``registry``."""
        raise AttributeError(
            "MetricsRecorder.meter_provider was removed: register an app's metrics on "
            "recorder.registry (a prometheus_client CollectorRegistry); OpenTelemetry instruments "
            "reach the same scrape through opentelemetry-exporter-prometheus: "
            "MeterProvider(metric_readers=[PrometheusMetricReader(registry=recorder.registry)])"
        )

    def close(self) -> None:
        """Stop the scrape server (idempotent). The tallies stay readable."""
        server, self._server = self._server, None
        if server is not None:
            server.close()


def _order(names: Sequence[str]) -> tuple[int, ...]:
    """The positions of ``names`` in alphabetical order: the scrape lists each family's labels
    sorted by name."""
    return tuple(sorted(range(len(names)), key=names.__getitem__))


def _by_name(values: Sequence[str], order: tuple[int, ...]) -> list[str]:
    return [_writable(values[i]) for i in order]


def _writable(value: str) -> str:
    """``value`` as the scrape can write it: a lone surrogate (from an endpoint's labels in a
    registry file, say) cannot be encoded as UTF-8 and would fail every scrape, so it becomes
    U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _counter(name: str, description: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, description, labels=sorted(labels))


def _gauge(name: str, description: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, description, labels=sorted(labels))


def _histogram(
    name: str, description: str, unit: str, labels: Sequence[str]
) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, description, labels=sorted(labels), unit=unit)


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], tallied: tuple[list[int], float]
) -> None:
    counts, total = tallied
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(_BOUNDS, counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, total)


#: the bucket bounds as the scrape writes them (``le="1"``, ``le="0.5"``, ``le="+Inf"``)
_BOUNDS: tuple[str, ...] = (*(str(bound) for bound in BUCKETS), "+Inf")
_LABEL_ORDER = _order(LABELS)
#: the three request histograms: name, description and unit, for the ``_Series`` tallies in order
_ISTIO_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("istio_request_duration", "Request duration, as Istio's sidecars measure it", "milliseconds"),
    ("istio_request_bytes", "Request body sizes", "bytes"),
    ("istio_response_bytes", "Response body sizes", "bytes"),
)

_DESTINATION = ("destination_service", "destination_subset")
_TALLY_LABELS: dict[str, tuple[str, ...]] = {
    "meshlib_route_requests": ROUTE_LABELS,
    "meshlib_retries": _DESTINATION,
    "meshlib_retry_budget_exhausted": _DESTINATION,
    "meshlib_mirror_dropped": _DESTINATION,
    "meshlib_faults_injected": (*_DESTINATION, "fault"),
    "meshlib_outlier_ejections": (*_DESTINATION, "endpoint"),
    "meshlib_inbound_headers_refused": ("header", "action"),
}


def _destination_of(decision: RouteDecision) -> tuple[str, str]:
    target = decision.destination
    if target is None:
        return decision.host, ""
    return target.host, target.subset or ""


def _split(destination: str) -> tuple[str, str]:
    """``host|subset`` (a destination's name in events) → ``(host, subset)``."""
    host, _, subset = destination.partition("|")
    return host, subset


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- scrape server


class _ScrapeServer:
    """``GET <path>`` on ``host:port`` answered with the recorder's scrape, in a daemon thread."""

    def __init__(self, recorder: MetricsRecorder, host: str, port: int, path: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != path:
                    self.send_error(404, f"metrics are at {path}")
                    return
                content_type, body = recorder.scrape(self.headers.get("accept"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("scrape %s: " + format, self.client_address[0], *args)

        server_class: type[http.server.ThreadingHTTPServer] = http.server.ThreadingHTTPServer
        if ":" in host:
            server_class = _ThreadingHTTPServer6
        try:
            self._server = server_class((host, port), Handler)
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics scrape server on {host}:{port}: {exc.strerror}"
            ) from exc
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"meshlib-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _ThreadingHTTPServer6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


# --------------------------------------------------------------------------- public entry points


def recorder_from_settings(
    settings: m.MetricsSettings | None, service: ServiceInfo
) -> MetricsRecorder | None:
    """The recorder for ``spec.telemetry.metrics``: on when that section is present, unless it
    says ``enabled: false``; off (None, no cost) without it. ``port`` starts a scrape server
    (0: any free port) on ``host`` (default 127.0.0.1) at ``path`` (default /metrics)."""
    if settings is None or settings.enabled is False:
        return None
    return MetricsRecorder(
        service,
        port=settings.port,
        host=settings.host or DEFAULT_HOST,
        path=settings.path or DEFAULT_PATH,
    )


def recorder_of(mesh: Mesh) -> MetricsRecorder | None:
    """The metrics recorder listening to ``mesh``, if metrics are on."""
    for listener in mesh.telemetry.listeners:
        if isinstance(listener, MetricsRecorder):
            return listener
    return None


def scrape(mesh: Mesh, accept: str | None = None) -> tuple[str, bytes]:
    """``(content_type, body)`` of a Prometheus scrape of ``mesh``'s metrics: what the inbound
    middleware answers on ``/metrics``. Raises ``LookupError`` when metrics are off."""
    recorder = recorder_of(mesh)
    if recorder is None:
        raise LookupError("metrics are off for this mesh: set spec.telemetry.metrics")
    return recorder.scrape(accept)


_NOT_FOUND = b"metrics are off for this mesh: set spec.telemetry.metrics\n"


class MetricsASGIApp:
    """An ASGI app answering every HTTP request with a scrape of ``mesh``'s metrics (404 when
    they are off)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    async def __call__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Any],
        send: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        if scope["type"] != "http":
            return
        accept = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"accept":
                accept = value.decode("latin-1")
        status, content_type, body = _answer(self.mesh, accept)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class MetricsWSGIApp:
    """The WSGI twin of ``MetricsASGIApp``."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def __call__(
        self, environ: Mapping[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        status, content_type, body = _answer(self.mesh, environ.get("HTTP_ACCEPT"))
        reason = "OK" if status == 200 else "Not Found"
        start_response(
            f"{status} {reason}",
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
        )
        return [body]


def metrics_app(mesh: Mesh) -> MetricsASGIApp:
    """An ASGI app serving ``mesh``'s metrics: ``app.add_route("/metrics", metrics_app(mesh))``
    in Starlette or FastAPI (see docs/observability.md)."""
    return MetricsASGIApp(mesh)


def metrics_wsgi_app(mesh: Mesh) -> MetricsWSGIApp:
    """A WSGI app serving ``mesh``'s metrics (Flask: mount it with werkzeug's
    ``DispatcherMiddleware``; see docs/observability.md)."""
    return MetricsWSGIApp(mesh)


def _answer(mesh: Mesh, accept: str | None) -> tuple[int, str, bytes]:
    recorder = recorder_of(mesh)
    if recorder is None:
        return 404, "text/plain; charset=utf-8", _NOT_FOUND
    content_type, body = recorder.scrape(accept)
    return 200, content_type, body


__all__ = [
    "BREAKER_STATES",
    "BUCKETS",
    "LABELS",
    "MetricsASGIApp",
    "MetricsRecorder",
    "MetricsWSGIApp",
    "Workload",
    "inbound_labels",
    "metrics_app",
    "metrics_wsgi_app",
    "outbound_labels",
    "recorder_from_settings",
    "recorder_of",
    "scrape",
]
