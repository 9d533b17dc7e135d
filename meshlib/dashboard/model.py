"""The live mesh page's model: what the services' admin endpoints (or Prometheus) said, turned into
the JSON the page draws. Everything here is pure — the time is passed in — so each step is
tested with made-up scrapes and a fake clock.

The steps:

1. ``parse_scrape(text, at)``: a service's Prometheus text → a ``Scrape`` (the samples the page
   needs: Istio's request counter and duration buckets, meshlib's per-route ones).
2. ``increases(scrapes)``: how much each counter grew over successive scrapes of one service,
   counter resets (a restart) counted as Prometheus' ``increase`` counts them.
3. ``traffic_of(snapshots)`` (admin mode) or ``traffic_from_vectors`` (Prometheus mode): rates per
   edge (source workload → destination workload, per reporter) and per route.
4. ``build_view``: nodes, edges (rate, error rate, p50/p99, mTLS, a status), routes, breakers,
   ejected endpoints, each service's config revision and state, recent traces as call trees, and
   a deterministic layout (``layout``).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from meshlib.telemetry.spantree import describe_event

#: The samples the page reads; the rest of a scrape (byte histograms, ...) is skipped unparsed.
REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds_bucket"
ROUTE_REQUESTS = "meshlib_route_requests_total"
ROUTE_DURATION = "meshlib_route_request_duration_milliseconds_bucket"
WANTED = (REQUESTS, DURATION, ROUTE_REQUESTS, ROUTE_DURATION)

#: An edge's error rate (5xx and no-response share) above which it is ``degraded``, and at or
#: above which it is ``failing``: Kiali's default thresholds (0.1 % and 20 %).
DEGRADED = 0.001
FAILING = 0.2
#: The longest label value, service name or header shown; longer ones are cut with an ellipsis.
MAX_TEXT = 200
#: Traces shown, and spans shown per trace.
MAX_TRACES = 12
MAX_SPANS = 150
MAX_ATTRIBUTES = 24

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]


class ScrapeError(ValueError):
    """A scrape that is not Prometheus' text format."""


@dataclass(frozen=True, slots=True)
class Scrape:
    """The samples of one scrape of one service, at ``at`` (seconds, the dashboard's clock)."""

    at: float
    samples: Mapping[SampleKey, float]


def parse_scrape(text: str, at: float) -> Scrape:
    """The wanted samples of a scrape in Prometheus' text format (or OpenMetrics). Raises
    ``ScrapeError`` for text that does not parse."""
    lines = [line for line in text.splitlines() if line.startswith(WANTED)]
    samples: dict[SampleKey, float] = {}
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name in WANTED and math.isfinite(sample.value):
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    samples[key] = float(sample.value)
    except (ValueError, TypeError, IndexError) as exc:
        raise ScrapeError(f"not Prometheus' text format: {exc}") from None
    return Scrape(at, samples)


def increases(scrapes: Sequence[Scrape]) -> tuple[dict[SampleKey, float], float]:
    """How much each sample grew from the first scrape to the last, and over how many seconds.

    Successive scrapes are compared pairwise: a value lower than the one before is a counter
    reset (the service restarted), and the whole new value counts; a sample missing from the
    earlier scrape was created since, from zero. With fewer than two scrapes nothing is known:
    ``({}, 0.0)``."""
    if len(scrapes) < 2:
        return {}, 0.0
    grown: dict[SampleKey, float] = defaultdict(float)
    for before, after in itertools.pairwise(scrapes):
        earlier = before.samples
        for key, value in after.samples.items():
            previous = earlier.get(key)
            if previous is None or value < previous:
                grown[key] += value
            else:
                grown[key] += value - previous
    return dict(grown), scrapes[-1].at - scrapes[0].at


def keep_window(scrapes: Sequence[Scrape], window: float) -> tuple[Scrape, ...]:
    """The scrapes a ``window``-second rate needs: those within the window of the newest, and the
    last one before it (so that the rate spans the whole window)."""
    if not scrapes:
        return ()
    start = scrapes[-1].at - window
    first = 0
    for index, scrape in enumerate(scrapes):
        if scrape.at <= start:
            first = index
    return tuple(scrapes[first:])


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``buckets`` maps each upper bound (``inf`` for
    ``+Inf``) to its cumulative count (or rate). None where Prometheus answers NaN: no ``+Inf``
    bucket, or nothing counted."""
    if not buckets or math.inf not in buckets or not 0 <= q <= 1:
        return None
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    for index in range(1, len(counts)):  # Prometheus' fix for non-monotonic buckets
        counts[index] = max(counts[index], counts[index - 1])
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:  # the +Inf bucket: the highest finite bound
        return bounds[-2] if len(bounds) > 1 else None
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[index - 1] if index > 0 else 0.0
    below = counts[index - 1] if index > 0 else 0.0
    inside = counts[index] - below
    if inside <= 0:
        return bounds[index]
    return start + (bounds[index] - start) * (rank - below) / inside


# --------------------------------------------------------------------------- traffic


def is_error(code: str) -> bool:
    """A 5xx, or no response at all (``response_code="0"``): an error of the call."""
    return code.startswith("5") or code == "0"


@dataclass(slots=True)
class Stats:
    """Requests per second, errors per second and duration-bucket rates of one edge or route."""

    rate: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    #: mutual TLS: requests per second by ``connection_security_policy`` (destination side)
    security: dict[str, float] = field(default_factory=dict)
    #: quantiles computed elsewhere (Prometheus' ``histogram_quantile``), by q
    quantiles: dict[float, float] = field(default_factory=dict)
    #: whether the numbers cover a window (False: the series exist, no rate is known yet)
    measured: bool = False

    def add(self, code: str, rate: float) -> None:
        self.rate += rate
        if is_error(code):
            self.errors += rate

    def quantile(self, q: float) -> float | None:
        known = self.quantiles.get(q)
        return known if known is not None else histogram_quantile(q, self.buckets)


Node = tuple[str, str]  # (namespace, workload)
EdgeKey = tuple[str, Node, Node]  # reporter, source, destination
RouteKey = tuple[Node, str, str, str]  # reporter workload, virtual service, route, destination


@dataclass(slots=True)
class NodeInfo:
    app: str = "unknown"
    version: str = "unknown"


@dataclass(slots=True)
class Traffic:
    """Rates by edge and reporter, and by route; the apps and versions the labels name."""

    edges: dict[EdgeKey, Stats] = field(default_factory=dict)
    routes: dict[RouteKey, Stats] = field(default_factory=dict)
    nodes: dict[Node, NodeInfo] = field(default_factory=dict)
    #: the services whose numbers are their last known ones (their admin endpoint is down)
    stale: set[Node] = field(default_factory=set)

    def edge(self, key: EdgeKey) -> Stats:
        found = self.edges.get(key)
        if found is None:
            found = self.edges[key] = Stats()
        return found

    def route(self, key: RouteKey) -> Stats:
        found = self.routes.get(key)
        if found is None:
            found = self.routes[key] = Stats()
        return found

    def name(self, node: Node, app: str, version: str) -> None:
        info = self.nodes.get(node)
        if info is None:
            self.nodes[node] = NodeInfo(app, version)
        elif info.app == "unknown" and app != "unknown":
            info.app, info.version = app, version


def _le(value: str) -> float | None:
    try:
        return float(value)  # "+Inf" parses as inf
    except ValueError:
        return None


def _ends(labels: Mapping[str, str]) -> tuple[Node, Node]:
    return (
        (labels.get("source_workload_namespace", "unknown"), labels.get("source_workload", "")),
        (
            labels.get("destination_workload_namespace", "unknown"),
            labels.get("destination_workload", ""),
        ),
    )


def _keys(name: str, labels: Mapping[str, str]) -> tuple[EdgeKey | None, RouteKey | None]:
    """Where a series of ``name`` counts: its edge (Istio's metrics) or its route (meshlib's)."""
    if name in (REQUESTS, DURATION):
        reporter = labels.get("reporter", "")
        source, destination = _ends(labels)
        if reporter not in ("source", "destination") or not source[1] or not destination[1]:
            return None, None
        return (reporter, source, destination), None
    if name not in (ROUTE_REQUESTS, ROUTE_DURATION):
        return None, None
    reporter_node = (
        labels.get("source_workload_namespace", "unknown"),
        labels.get("source_workload", "unknown"),
    )
    route = (
        reporter_node,
        labels.get("virtual_service", ""),
        labels.get("route", ""),
        labels.get("destination_service", ""),
    )
    return None, route


def add_sample(
    traffic: Traffic, name: str, labels: Mapping[str, str], rate: float, *, measured: bool
) -> None:
    """One series' rate (or, unmeasured, only its existence) into ``traffic``."""
    edge, route = _keys(name, labels)
    if edge is not None:
        _, source, destination = edge
        traffic.name(source, labels.get("source_app", "unknown"), labels.get("source_version", ""))
        traffic.name(
            destination,
            labels.get("destination_app", "unknown"),
            labels.get("destination_version", ""),
        )
        stats = traffic.edge(edge)
        if name == REQUESTS:
            policy = labels.get("connection_security_policy", "unknown")
            stats.security[policy] = stats.security.get(policy, 0.0) + rate
    elif route is not None:
        stats = traffic.route(route)
    else:
        return
    stats.measured = stats.measured or measured
    if name in (REQUESTS, ROUTE_REQUESTS):
        stats.add(labels.get("response_code", ""), rate)
    else:
        bound = _le(labels.get("le", ""))
        if bound is not None:
            stats.buckets[bound] = stats.buckets.get(bound, 0.0) + rate


def add_quantile(
    traffic: Traffic, name: str, q: float, labels: Mapping[str, str], value: float
) -> None:
    """A quantile computed by Prometheus for the edge (``name`` ``REQUESTS``) or route
    (``ROUTE_REQUESTS``) that ``labels`` name."""
    edge, route = _keys(name, labels)
    if edge is not None:
        traffic.edge(edge).quantiles[q] = value
    elif route is not None:
        traffic.route(route).quantiles[q] = value


def traffic_of_scrapes(traffic: Traffic, scrapes: Sequence[Scrape], stale: bool = False) -> None:
    """Add one service's successive scrapes to ``traffic``: rates over their span; a series seen
    only in the newest scrape (or with one scrape only) is known to exist, at no known rate."""
    if not scrapes:
        return
    grown, span = increases(scrapes)
    measured = span > 0
    for key in scrapes[-1].samples:
        name, labels = key
        found = dict(labels)
        rate = grown.get(key, 0.0) / span if measured else 0.0
        add_sample(traffic, name, found, rate, measured=measured)
        if stale and name == REQUESTS:
            source, destination = _ends(found)
            traffic.stale.add(source if found.get("reporter") == "source" else destination)


def traffic_from_vectors(
    vectors: Mapping[str, Sequence[Any]],
    known: Sequence[Any] = (),
    quantiles: Mapping[tuple[str, float], Sequence[Any]] | None = None,
) -> Traffic:
    """Prometheus mode: ``vectors`` maps ``REQUESTS`` and ``ROUTE_REQUESTS`` to the result of a
    PromQL ``rate(...)`` summed by the labels the page reads (Prometheus' JSON:
    ``[{"metric": {...}, "value": [t, "1.5"]}]``); ``known`` is every ``istio_requests_total``
    series there is (edges with no traffic now); ``quantiles`` maps ``(REQUESTS, 0.99)`` and the
    like to the result of a ``histogram_quantile`` query. Entries that are not well formed, and
    NaN values, are left out."""
    traffic = Traffic()
    for name, vector in vectors.items():
        for labels, value in _vector(vector):
            add_sample(traffic, name, labels, value, measured=True)
    for labels, _ in _vector(known):
        add_sample(traffic, REQUESTS, labels, 0.0, measured=False)
    for (name, q), vector in (quantiles or {}).items():
        for labels, value in _vector(vector):
            add_quantile(traffic, name, q, labels, value)
    return traffic


def _vector(result: Iterable[Any]) -> Iterable[tuple[dict[str, str], float]]:
    for item in result:
        if not isinstance(item, Mapping):
            continue
        metric, value = item.get("metric"), item.get("value")
        if not isinstance(metric, Mapping) or not isinstance(value, Sequence) or len(value) != 2:
            continue
        try:
            number = float(value[1])
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            yield {str(k): str(v) for k, v in metric.items()}, number


# --------------------------------------------------------------------------- what was polled


@dataclass(frozen=True, slots=True)
class Target:
    """A service the dashboard polls: its admin endpoint's base URL, and what is known of it
    before it answers (from ``bookinfo.json`` or a registry file)."""

    url: str
    name: str | None = None
    version: str | None = None
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """One service as last polled: when it last answered, why its last poll failed, and the
    last good answers of its admin endpoints."""

    target: Target
    last_seen: float | None = None
    error: str | None = None
    #: what went wrong with a part of its answer (it answered, so it is not stale)
    problem: str | None = None
    config: Mapping[str, Any] | None = None
    clusters: Mapping[str, Any] | None = None
    scrapes: tuple[Scrape, ...] = ()
    #: "on", "off" (its admin endpoint says metrics are off), "unknown"
    metrics: str = "unknown"
    spans: tuple[Mapping[str, Any], ...] = ()
    #: the digest its config files hold now, when the dashboard can read them (Bookinfo)
    expected_revision: str | None = None

    def stale(self, now: float, after: float) -> bool:
        return self.last_seen is None or self.error is not None or now - self.last_seen > after

    def identity(self) -> tuple[str, str, str, str]:
        """namespace, workload, app (service name), version: from its admin endpoint, else the
        target's description (namespace ``default`` when unknown)."""
        about = self.clusters or {}
        config = self.config or {}
        name = _text(about.get("service") or config.get("service") or self.target.name)
        version = _text(about.get("version") or config.get("version") or self.target.version)
        namespace = _text(
            about.get("namespace") or config.get("namespace") or self.target.namespace or "default"
        )
        workload = about.get("workload")
        if not isinstance(workload, str) or not workload:
            workload = f"{name}-{version}" if name and version else name or self.target.url
        return namespace, _text(workload), name or "unknown", version or "unknown"


def _text(value: object) -> str:
    """A value as shown on the page: a string, at most ``MAX_TEXT`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _number(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


# --------------------------------------------------------------------------- the view


def traffic_of(snapshots: Sequence[ServiceSnapshot], now: float, stale_after: float) -> Traffic:
    """Admin mode: the traffic every service's own scrapes show."""
    traffic = Traffic()
    for snapshot in snapshots:
        traffic_of_scrapes(traffic, snapshot.scrapes, snapshot.stale(now, stale_after))
    return traffic


def edge_status(rate: float | None, error_rate: float | None) -> str:
    if not rate:
        return "idle"
    if error_rate is not None and error_rate >= FAILING:
        return "failing"
    if error_rate is not None and error_rate > DEGRADED:
        return "degraded"
    return "ok"


def _stats_view(stats: Stats) -> dict[str, Any]:
    rate = stats.rate if stats.measured else None
    error_rate = stats.errors / stats.rate if stats.measured and stats.rate > 0 else None
    if stats.measured and stats.rate > 0 and error_rate is None:
        error_rate = 0.0
    return {
        "rate": _number(rate),
        "error_rate": _number(error_rate),
        "p50": _number(stats.quantile(0.5), 3),
        "p99": _number(stats.quantile(0.99), 3),
        "status": edge_status(rate, error_rate),
    }


def _node_id(node: Node) -> str:
    return f"{node[0]}/{node[1]}"


def _mtls(stats: Stats | None) -> float | None:
    """The share of requests a destination saw over mutual TLS; None when it did not say."""
    if stats is None:
        return None
    known = {k: v for k, v in stats.security.items() if k in ("mutual_tls", "none")}
    total = sum(known.values())
    if total <= 0:
        return None
    return round(known.get("mutual_tls", 0.0) / total, 4)


def build_view(
    *,
    now: float,
    mode: str,
    source: str,
    window: float,
    snapshots: Sequence[ServiceSnapshot],
    traffic: Traffic,
    stale_after: float,
    problems: Sequence[str] = (),
    mtls_seen: Mapping[tuple[Node, Node], float] | None = None,
) -> dict[str, Any]:
    """The page's JSON: see the module's docstring. ``mtls_seen`` is the share of mutual TLS of
    each edge over all time, for edges with no traffic in the window (admin mode)."""
    services: list[dict[str, Any]] = []
    nodes: dict[Node, dict[str, Any]] = {}
    breakers: list[dict[str, Any]] = []
    ejections: list[dict[str, Any]] = []
    spans: list[Mapping[str, Any]] = []
    for snapshot in snapshots:
        namespace, workload, app, version = snapshot.identity()
        node = (namespace, workload)
        stale = snapshot.stale(now, stale_after)
        config = snapshot.config or {}
        watch = config.get("watch") if isinstance(config.get("watch"), Mapping) else None
        revision = config.get("digest") if isinstance(config.get("digest"), str) else None
        services.append(
            {
                "url": _text(snapshot.target.url),
                "node": _node_id(node),
                "name": app,
                "namespace": namespace,
                "version": version,
                "workload": workload,
                "state": "stale" if stale else "up",
                "last_seen": snapshot.last_seen,
                "error": _text(snapshot.error) if snapshot.error else None,
                "problem": _text(snapshot.problem) if snapshot.problem else None,
                "revision": _text(revision) if revision else None,
                "expected_revision": snapshot.expected_revision,
                "reloads": watch.get("reloads") if watch else None,
                "config_error": _text(watch.get("last_error"))
                if watch and watch.get("last_error")
                else None,
                "metrics": snapshot.metrics,
            }
        )
        previous = nodes.get(node)
        if previous is None or previous["state"] == "stale":
            nodes[node] = {
                "id": _node_id(node),
                "namespace": namespace,
                "workload": workload,
                "app": app,
                "version": version,
                "state": "stale" if stale else "up",
                "last_seen": snapshot.last_seen,
            }
        breakers += _breakers(snapshot.clusters, node)
        ejections += _ejections(snapshot.clusters, node)
        spans.extend(snapshot.spans)

    for (_, source_node, destination_node), _stats in sorted(traffic.edges.items()):
        for end in (source_node, destination_node):
            if end not in nodes:
                info = traffic.nodes.get(end, NodeInfo())
                nodes[end] = {
                    "id": _node_id(end),
                    "namespace": _text(end[0]),
                    "workload": _text(end[1]),
                    "app": _text(info.app),
                    "version": _text(info.version),
                    "state": "observed",
                    "last_seen": None,
                }

    edges = _edges(traffic, mtls_seen or {})
    routes = [
        {
            "node": _node_id(reporter),
            "workload": _text(reporter[1]),
            "virtual_service": _text(vs),
            "route": _text(route),
            "destination": _text(destination),
            **_stats_view(stats),
        }
        for (reporter, vs, route, destination), stats in sorted(traffic.routes.items())
    ]
    ordered = sorted(
        nodes.values(), key=lambda n: (n["namespace"], n["app"], n["version"], n["id"])
    )
    positions, width, height = layout(
        [n["id"] for n in ordered], [(e["source"], e["destination"]) for e in edges]
    )
    for entry in ordered:
        entry["x"], entry["y"] = positions[entry["id"]]
    return {
        "mode": mode,
        "source": _text(source),
        "generated_at": now,
        "window": window,
        "thresholds": {"degraded": DEGRADED, "failing": FAILING},
        "problems": [_text(p) for p in problems],
        "services": services,
        "nodes": ordered,
        "edges": edges,
        "routes": routes,
        "breakers": breakers,
        "ejections": ejections,
        "traces": call_trees(spans),
        "size": {"width": width, "height": height},
    }


def _edges(traffic: Traffic, mtls_seen: Mapping[tuple[Node, Node], float]) -> list[dict[str, Any]]:
    """One edge per source → destination: the caller's numbers (``reporter="source"``, which
    include what its mesh did — injected faults, open breakers), else the destination's; mutual
    TLS from the destination's side (Istio's clients never know it)."""
    pairs: dict[tuple[Node, Node], dict[str, Stats]] = defaultdict(dict)
    for (reporter, source, destination), stats in traffic.edges.items():
        pairs[(source, destination)][reporter] = stats
    out: list[dict[str, Any]] = []
    for (source, destination), by_reporter in sorted(pairs.items()):
        chosen = by_reporter.get("source") or by_reporter["destination"]
        server = by_reporter.get("destination")
        mtls = _mtls(server) if server is not None and server.rate > 0 else None
        if mtls is None:
            mtls = mtls_seen.get((source, destination))
        reporter = "source" if "source" in by_reporter else "destination"
        out.append(
            {
                "id": f"{_node_id(source)}->{_node_id(destination)}",
                "source": _node_id(source),
                "destination": _node_id(destination),
                "reporter": reporter,
                **_stats_view(chosen),
                "mtls": mtls,
                "stale": (source if reporter == "source" else destination) in traffic.stale,
            }
        )
    return out


def mtls_shares(traffic: Traffic) -> dict[tuple[Node, Node], float]:
    """The share of mutual TLS of each edge the destinations' series show (for ``mtls_seen``)."""
    out: dict[tuple[Node, Node], float] = {}
    for (reporter, source, destination), stats in traffic.edges.items():
        if reporter == "destination":
            share = _mtls(stats)
            if share is not None:
                out[(source, destination)] = share
    return out


def cumulative_traffic(snapshots: Sequence[ServiceSnapshot]) -> Traffic:
    """The destinations' request counts since they started (each service's newest scrape), as
    rates of 1 per request: what ``mtls_shares`` needs for edges idle in the window."""
    traffic = Traffic()
    for snapshot in snapshots:
        if not snapshot.scrapes:
            continue
        for (name, labels), value in snapshot.scrapes[-1].samples.items():
            if name == REQUESTS:
                add_sample(traffic, name, dict(labels), value, measured=True)
    return traffic


def _breakers(clusters: Mapping[str, Any] | None, node: Node) -> list[dict[str, Any]]:
    out = []
    for cluster in _clusters(clusters):
        breaker = cluster.get("breaker")
        if isinstance(breaker, Mapping):
            out.append(
                {
                    "node": _node_id(node),
                    "workload": _text(node[1]),
                    "destination": _text(cluster.get("name")),
                    "state": _text(breaker.get("state")),
                    "failures": breaker.get("failures")
                    if isinstance(breaker.get("failures"), int)
                    else None,
                }
            )
    return out


def _ejections(clusters: Mapping[str, Any] | None, node: Node) -> list[dict[str, Any]]:
    out = []
    for cluster in _clusters(clusters):
        endpoints = cluster.get("endpoints")
        if not isinstance(endpoints, list):
            continue
        for endpoint in endpoints:
            if isinstance(endpoint, Mapping) and endpoint.get("ejected") is True:
                ejected_for = endpoint.get("ejected_for")
                out.append(
                    {
                        "node": _node_id(node),
                        "workload": _text(node[1]),
                        "destination": _text(cluster.get("name")),
                        "endpoint": _text(endpoint.get("address")),
                        "ejections": endpoint.get("ejections")
                        if isinstance(endpoint.get("ejections"), int)
                        else None,
                        "ejected_for": _number(ejected_for, 1)
                        if isinstance(ejected_for, (int, float))
                        else None,
                    }
                )
    return out


def _clusters(clusters: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    found = clusters.get("clusters") if isinstance(clusters, Mapping) else None
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, Mapping)]


# --------------------------------------------------------------------------- traces


def call_trees(spans: Iterable[Mapping[str, Any]], limit: int = MAX_TRACES) -> list[dict[str, Any]]:
    """The ``limit`` most recent traces (by their last span's end), newest first, each as its
    spans in call order: a span after its parent, ``depth`` levels in; siblings by start time.
    A span whose parent is not among them starts a tree of its own (``orphan``). Spans that are
    not well formed are left out; the same span reported twice counts once."""
    by_trace: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for span in spans:
        if not isinstance(span, Mapping):
            continue
        trace_id, span_id = span.get("trace_id"), span.get("span_id")
        start, end = span.get("start_unix_nano"), span.get("end_unix_nano")
        if not (isinstance(trace_id, str) and trace_id and isinstance(span_id, str) and span_id):
            continue
        if not (isinstance(start, int) and isinstance(end, int)):
            continue
        by_trace[trace_id][span_id] = span
    recent = sorted(
        by_trace.items(),
        key=lambda item: (max(s["end_unix_nano"] for s in item[1].values()), item[0]),
        reverse=True,
    )[:limit]
    return [_tree(trace_id, found) for trace_id, found in recent]


def _tree(trace_id: str, spans: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    children: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
    for span in spans.values():
        parent = span.get("parent_span_id")
        parent = (
            parent
            if isinstance(parent, str) and parent in spans and parent != span["span_id"]
            else None
        )
        children[parent].append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (s["start_unix_nano"], s["span_id"]))
    start = min(s["start_unix_nano"] for s in spans.values())
    end = max(s["end_unix_nano"] for s in spans.values())
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def walk(span: Mapping[str, Any], depth: int) -> None:
        # iterative over siblings, recursive over depth, bounded by MAX_SPANS and by ``seen``
        if len(rows) >= MAX_SPANS or span["span_id"] in seen:
            return
        seen.add(span["span_id"])
        parent = span.get("parent_span_id")
        attributes = span.get("attributes")
        code = (
            attributes.get("http.response.status_code") if isinstance(attributes, Mapping) else None
        )
        rows.append(
            {
                "span_id": _text(span["span_id"]),
                "depth": depth,
                "name": _text(span.get("name")),
                "service": _text(span.get("service")),
                "kind": _text(span.get("kind")),
                "status": _status(span),
                "offset_ms": round((span["start_unix_nano"] - start) / 1e6, 3),
                "duration_ms": round((span["end_unix_nano"] - span["start_unix_nano"]) / 1e6, 3),
                "orphan": depth == 0 and isinstance(parent, str) and bool(parent),
                "code": _text(code) if code is not None else None,
                "attributes": _attributes(attributes),
                "events": _events(span.get("events")),
            }
        )
        for child in children.get(span["span_id"], ()):
            if depth < 64:
                walk(child, depth + 1)

    for root in children.get(None, ()):
        walk(root, 0)
    root_spans = children.get(None, ())
    first = root_spans[0] if root_spans else None
    return {
        "trace_id": _text(trace_id),
        "root": _text(first.get("name")) if first else "",
        "service": _text(first.get("service")) if first else "",
        "started_unix_nano": start,
        "duration_ms": round((end - start) / 1e6, 3),
        "spans": rows,
        "span_count": len(spans),
        "errors": sum(1 for s in spans.values() if _is_error_span(s)),
    }


def _attributes(attributes: object) -> list[str]:
    """A span's attributes as ``key=value`` lines (at most ``MAX_ATTRIBUTES``)."""
    if not isinstance(attributes, Mapping):
        return []
    return [
        _text(f"{key}={value}")
        for key, value in sorted(attributes.items(), key=lambda kv: str(kv[0]))[:MAX_ATTRIBUTES]
    ]


def _events(events: object) -> list[str]:
    """A span's events (an injected fault, a retry), at most ``MAX_ATTRIBUTES``, in words as
    ``meshctl bookinfo trace`` says them (``fault injected: abort 500``); an event those words
    do not fit is its name and attributes."""
    if not isinstance(events, list):
        return []
    out = []
    for event in events[:MAX_ATTRIBUTES]:
        if not isinstance(event, Mapping):
            continue
        try:
            text = describe_event(event)
        except (TypeError, ValueError, AttributeError):
            attributes = event.get("attributes")
            pairs = attributes.items() if isinstance(attributes, Mapping) else ()
            text = " ".join([str(event.get("name", "")), *(f"{k}={v}" for k, v in pairs)])
        out.append(_text(text))
    return out


def _status(span: Mapping[str, Any]) -> str:
    """A span's status code as a word (``OK``, ``ERROR``, ``UNSET``): given as a string or as
    ``{"code": ...}``."""
    status = span.get("status")
    if isinstance(status, Mapping):
        status = status.get("code")
    if not isinstance(status, str):
        return ""
    return _text(status.upper().removeprefix("STATUS_CODE_"))


def _is_error_span(span: Mapping[str, Any]) -> bool:
    return _status(span) == "ERROR"


# --------------------------------------------------------------------------- layout

NODE_WIDTH = 170
NODE_HEIGHT = 44
COLUMN = 330
ROW = 64
MARGIN = 30
#: A rank with more nodes than this wraps into several columns.
MAX_ROWS = 16


def layout(
    nodes: Sequence[str], edges: Sequence[tuple[str, str]]
) -> tuple[dict[str, tuple[int, int]], int, int]:
    """Where each node goes: ranks left to right by distance from the nodes nothing calls (a
    breadth-first walk in the given order of ``nodes``; the members of a cycle that no such node
    reaches start at rank 0), each rank a column in the order of ``nodes``, wrapped every
    ``MAX_ROWS``. Deterministic: the same input gives the same picture. Returns the top-left
    corner of each node and the size of the whole."""
    known = set(nodes)
    callees: dict[str, list[str]] = defaultdict(list)
    called: set[str] = set()
    for source, destination in edges:
        if source in known and destination in known and source != destination:
            callees[source].append(destination)
            called.add(destination)
    order = {node: index for index, node in enumerate(nodes)}
    for targets in callees.values():
        targets.sort(key=order.__getitem__)
    rank: dict[str, int] = {}
    frontier = [n for n in nodes if n not in called]
    for node in frontier:
        rank[node] = 0
    pending = list(nodes)
    while True:
        while frontier:
            following: list[str] = []
            for node in frontier:
                for callee in callees.get(node, ()):
                    if callee not in rank:
                        rank[callee] = rank[node] + 1
                        following.append(callee)
            frontier = following
        rest = [n for n in pending if n not in rank]
        if not rest:
            break
        rank[rest[0]] = 0  # a cycle nothing outside it calls
        frontier = [rest[0]]
        pending = rest
    columns: dict[int, list[str]] = defaultdict(list)
    for node in nodes:
        columns[rank[node]].append(node)
    positions: dict[str, tuple[int, int]] = {}
    column = 0
    tallest = 0
    for level in sorted(columns):
        members = columns[level]
        for start in range(0, len(members), MAX_ROWS):
            chunk = members[start : start + MAX_ROWS]
            for row, node in enumerate(chunk):
                positions[node] = (MARGIN + column * COLUMN, MARGIN + row * ROW)
            tallest = max(tallest, len(chunk))
            column += 1
    width = 2 * MARGIN + max(column - 1, 0) * COLUMN + NODE_WIDTH
    height = 2 * MARGIN + max(tallest - 1, 0) * ROW + NODE_HEIGHT
    return positions, width, height


__all__ = [
    "DEGRADED",
    "FAILING",
    "Scrape",
    "ScrapeError",
    "ServiceSnapshot",
    "Stats",
    "Target",
    "Traffic",
    "build_view",
    "call_trees",
    "cumulative_traffic",
    "edge_status",
    "histogram_quantile",
    "increases",
    "keep_window",
    "layout",
    "mtls_shares",
    "parse_scrape",
    "traffic_from_vectors",
    "traffic_of",
    "traffic_of_scrapes",
]
