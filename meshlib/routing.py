"""The router: request → VirtualService → first matching route → weighted destination.

Everything here is pure and precompiled. ``RouteTable.route`` does one dict lookup for the host,
runs the compiled conditions of each route in order, and returns a ``RouteDecision`` that was built
when the config was compiled: a routing decision allocates nothing but the request view itself.

Istio's rules, as meshlib applies them:

* ``http`` routes are an ordered list; the first route with a matching ``match`` entry wins.
  ``match[]`` entries are OR, the fields inside one entry are AND; no ``match`` matches everything.
* A destination receives ``weight / sum(weights)`` of the traffic; weight 0 receives none; a single
  destination receives all of it, whatever its weight.
* No route matches → decision with flag ``NR`` (Envoy answers 404).
* Faults turn off the route's retries and timeout; without ``retries``, the mesh default applies.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from meshlib.config import model as m

CLUSTER_DOMAIN = "svc.cluster.local"

#: Istio's mesh-wide default retry policy (MeshConfig ``defaultHttpRetryPolicy``).
DEFAULT_RETRY_ON = (
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
)
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_RETRIABLE_STATUS_CODES = frozenset({503})
DEFAULT_BACKOFF = 0.025


# --------------------------------------------------------------------------- the request view


class RouteRequest:
    """What the router sees of a request. ``headers`` must answer ``get`` for lowercase names.

    ``httpx.Headers`` qualifies as it is (case-insensitive); so does a dict with lowercase keys.
    """

    __slots__ = (
        "_params",
        "authority",
        "headers",
        "host",
        "method",
        "path",
        "port",
        "query",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        scheme: str,
        host: str,
        port: int | None,
        path: str,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        authority: str | None = None,
    ) -> None:
        self.method = method.upper()
        self.scheme = scheme
        self.host = host.lower()
        self.port = port if port is not None else (443 if scheme == "https" else 80)
        self.path = path or "/"
        self.query = query
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.authority = (
            authority if authority is not None else (host if port is None else f"{host}:{port}")
        )
        self._params: dict[str, str] | None = None

    @classmethod
    def from_url(
        cls, method: str, url: str, headers: Mapping[str, str] | None = None
    ) -> RouteRequest:
        """Build from a URL string, e.g. ``RouteRequest.from_url("GET", "http://reviews/x")``."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        authority = lowered.get("host") or parts.netloc.rpartition("@")[2]
        return cls(
            method,
            parts.scheme or "http",
            parts.hostname or "",
            parts.port,
            parts.path,
            parts.query,
            lowered,
            authority,
        )

    @property
    def params(self) -> dict[str, str]:
        """Query parameters (first value of each), parsed on first use."""
        if self._params is None:
            self._params = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                self._params.setdefault(key, value)
        return self._params


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """The route's configured fault. Whether one request is hit is the data plane's draw."""

    delay: float | None = None
    delay_percentage: float = 0.0
    abort_status: int | None = None
    abort_grpc_status: str | None = None
    abort_percentage: float = 0.0

    @property
    def active(self) -> bool:
        return (self.delay is not None and self.delay_percentage > 0) or (
            (self.abort_status is not None or self.abort_grpc_status is not None)
            and self.abort_percentage > 0
        )


NO_FAULT = FaultDecision()


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The retry policy in force. ``attempts`` retries at most, so ``1 + attempts`` tries."""

    attempts: int
    retry_on: tuple[str, ...] = ()
    retriable_status_codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None
    backoff: float = DEFAULT_BACKOFF
    retry_remote_localities: bool = False
    retry_ignore_previous_hosts: bool = True
    allow_non_idempotent: bool = False
    source: str = "route"  # "route", "default" (mesh default) or "disabled-by-fault"
    #: The compiled ``RetryPolicy`` of these settings, made on first use (``policy_for``).
    compiled: Any = field(default=None, init=False, repr=False, compare=False, hash=False)


DEFAULT_RETRY = RetryDecision(
    attempts=DEFAULT_RETRY_ATTEMPTS,
    retry_on=DEFAULT_RETRY_ON,
    retriable_status_codes=DEFAULT_RETRIABLE_STATUS_CODES,
    source="default",
)
NO_RETRY_FAULT = RetryDecision(attempts=0, source="disabled-by-fault")


@dataclass(frozen=True, slots=True)
class Target:
    """A destination as the data plane needs it: host, subset, port, and the effective policy."""

    host: str
    subset: str | None = None
    port: int | None = None
    weight: int = 100
    subset_labels: Mapping[str, str] | None = None
    subset_defined: bool = True
    traffic_policy: m.TrafficPolicy | None = None
    destination_rule: str | None = None
    headers: m.Headers | None = None
    port_policies: Mapping[int, m.TrafficPolicy | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def policy_for(self, port: int | None) -> m.TrafficPolicy | None:
        """The effective policy for a call to ``port`` (the destination's own port when it names
        one): port-level settings for that port replace the rule's."""
        if self.port is None and port is not None and self.port_policies:
            return self.port_policies.get(port, self.traffic_policy)
        return self.traffic_policy

    @property
    def name(self) -> str:
        """``reviews.default.svc.cluster.local|v2`` style name, as in logs and metrics."""
        return f"{self.host}|{self.subset}" if self.subset else self.host

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "subset": self.subset,
            "port": self.port,
            "weight": self.weight,
            "subset_labels": dict(self.subset_labels) if self.subset_labels is not None else None,
            "subset_defined": self.subset_defined,
            "destination_rule": self.destination_rule,
            "headers": _dump(self.headers),
        }


@dataclass(frozen=True, slots=True)
class SkippedRoute:
    """A route ``explain`` passed over before the one that matched, and why."""

    route_index: int
    route_name: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes and under which policies. Built at compile time; shared, immutable."""

    matched: bool
    flag: str | None
    host: str
    virtual_service: str | None = None
    route_index: int | None = None
    route_name: str | None = None
    destination: Target | None = None
    fault: FaultDecision = NO_FAULT
    timeout: float | None = None
    retry: RetryDecision = DEFAULT_RETRY
    rewrite: m.HTTPRewrite | None = None
    redirect: m.HTTPRedirect | None = None
    direct_response: m.HTTPDirectResponse | None = None
    headers: m.Headers | None = None
    mirrors: tuple[tuple[Target, float], ...] = ()
    cors_policy: m.CorsPolicy | None = None
    passthrough: bool = False
    note: str | None = None
    skipped: tuple[SkippedRoute, ...] = ()
    uri_matches: tuple[tuple[MatchEntry, str], ...] = field(default=(), repr=False, compare=False)
    #: Derived: nothing to do before the first attempt — a matched route to a defined subset,
    #: with no direct response, redirect, fault, mirror, rewrite or request header operation.
    plain: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        target = self.destination
        plain = (
            self.matched
            and target is not None
            and target.subset_defined
            and self.direct_response is None
            and self.redirect is None
            and not self.fault.active
            and not self.mirrors
            and self.rewrite is None
            and (self.headers is None or self.headers.request is None)
            and (target.headers is None or target.headers.request is None)
        )
        object.__setattr__(self, "plain", plain)

    @property
    def traffic_policy(self) -> m.TrafficPolicy | None:
        return self.destination.traffic_policy if self.destination else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (``json.dumps(decision.to_dict())`` works)."""
        return {
            "matched": self.matched,
            "flag": self.flag,
            "host": self.host,
            "virtual_service": self.virtual_service,
            "route_index": self.route_index,
            "route_name": self.route_name,
            "destination": self.destination.to_dict() if self.destination else None,
            "fault": {
                "delay": self.fault.delay,
                "delay_percentage": self.fault.delay_percentage,
                "abort_status": self.fault.abort_status,
                "abort_grpc_status": self.fault.abort_grpc_status,
                "abort_percentage": self.fault.abort_percentage,
            },
            "timeout": self.timeout,
            "retry": {
                "attempts": self.retry.attempts,
                "per_try_timeout": self.retry.per_try_timeout,
                "retry_on": list(self.retry.retry_on),
                "retriable_status_codes": sorted(self.retry.retriable_status_codes),
                "backoff": self.retry.backoff,
                "source": self.retry.source,
            },
            "traffic_policy": _dump(self.traffic_policy),
            "rewrite": _dump(self.rewrite),
            "redirect": _dump(self.redirect),
            "direct_response": _dump(self.direct_response),
            "headers": _dump(self.headers),
            "mirrors": [
                {"destination": target.to_dict(), "percentage": pct} for target, pct in self.mirrors
            ],
            "passthrough": self.passthrough,
            "note": self.note,
            "skipped": [
                {
                    "route_index": s.route_index,
                    "route_name": s.route_name,
                    "reasons": list(s.reasons),
                }
                for s in self.skipped
            ],
        }


def route_label(decision: RouteDecision) -> str:
    """The route as errors, access logs and ``MeshInfo.route`` name it:
    ``<VirtualService>:<route>`` (the route's ``name``, else ``http[i]``; ``-`` for what is not
    there)."""
    vs = decision.virtual_service or "-"
    index = decision.route_index
    name = decision.route_name or (f"http[{index}]" if index is not None else "-")
    return f"{vs}:{name}"


def _dump(value: m.Model | None) -> dict[str, Any] | None:
    return value.model_dump(mode="json", by_alias=True, exclude_none=True) if value else None


# --------------------------------------------------------------------------- compiled routes

Test = Callable[[RouteRequest], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition of a match entry, with the words ``explain`` uses for it."""

    field: str
    expected: str
    test: Test
    actual: Callable[[RouteRequest], object]


@dataclass(frozen=True, slots=True)
class MatchEntry:
    """One ``match[]`` entry: all its conditions must hold. ``excluded`` entries never apply
    (e.g. ``sourceLabels`` that this service does not carry) and say why."""

    index: int
    name: str | None
    conditions: tuple[Condition, ...]
    excluded: str | None = None

    def matches(self, request: RouteRequest) -> bool:
        for condition in self.conditions:
            if not condition.test(request):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled ``http[]`` route with its prebuilt decisions, one per weighted destination."""

    index: int
    name: str | None
    entries: tuple[MatchEntry, ...] | None  # None: no `match`, the route matches everything
    decisions: tuple[RouteDecision, ...]
    cumulative: tuple[float, ...]
    line: int = 0
    file: str = ""
    #: Derived: the match as one callable (None: matches everything), so that a route with one
    #: entry of one condition costs the router one call, not three nested loops.
    test: Test | None = field(default=None, init=False, repr=False, compare=False)
    #: Derived: the only decision of an unweighted route (no draw needed), else None.
    single: RouteDecision | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", _route_test(self.entries))
        single = self.decisions[0] if len(self.decisions) == 1 else None
        object.__setattr__(self, "single", single)

    @property
    def catch_all(self) -> bool:
        return self.entries is None

    def matches(self, request: RouteRequest) -> bool:
        test = self.test
        return test is None or test(request)

    def pick(self, rng: random.Random) -> RouteDecision:
        single = self.single
        if single is not None:
            return single
        cumulative = self.cumulative
        return self.decisions[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


def _never(request: RouteRequest) -> bool:
    return False


def _route_test(entries: tuple[MatchEntry, ...] | None) -> Test | None:
    if entries is None:
        return None
    live = tuple(entry for entry in entries if entry.excluded is None)
    if not live:
        return _never
    if len(live) == 1:
        conditions = live[0].conditions
        if len(conditions) == 1:
            return conditions[0].test
        return live[0].matches

    def any_entry(request: RouteRequest) -> bool:
        for entry in live:
            if entry.matches(request):
                return True
        return False

    return any_entry


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """All routing for one service host: a VirtualService's routes, or the default route."""

    host: str
    routes: tuple[Route, ...]
    no_route: RouteDecision
    virtual_service: str | None = None
    file: str = ""


# --------------------------------------------------------------------------- the table


@dataclass(slots=True)
class RouteTable:
    """Host → VirtualHost lookup and route evaluation. Immutable after compilation, except for
    a bounded cache of host spellings already resolved."""

    hosts: dict[str, VirtualHost]
    wildcards: tuple[tuple[str, VirtualHost], ...]
    namespace: str
    registry_only: bool = False
    _cache: dict[str, VirtualHost | None] = field(default_factory=dict)

    def lookup(self, host: str) -> VirtualHost | None:
        """The virtual host serving ``host`` (any spelling: short, ``name.ns``, FQDN, wildcard)."""
        found = self.hosts.get(host)
        if found is not None:
            return found
        cache = self._cache
        if host in cache:
            return cache[host]
        result = self._resolve(host)
        if len(cache) >= 4096:
            cache.clear()
        cache[host] = result
        return result

    def _resolve(self, host: str) -> VirtualHost | None:
        if host.endswith("."):
            host = host[:-1]
            found = self.hosts.get(host)
            if found is not None:
                return found
        for suffix, vhost in self.wildcards:
            if suffix == "*" or host.endswith(suffix):
                return vhost
        return None

    def route(self, request: RouteRequest, rng: random.Random) -> RouteDecision:
        """The decision for ``request``. Pure but for ``rng``, drawn once for a weighted pick."""
        vhost = self.hosts.get(request.host) or self.lookup(request.host)
        if vhost is None:
            return self.outside(request.host)
        for route in vhost.routes:  # Route.matches and Route.pick, inlined: the hot path
            test = route.test
            if test is None or test(request):
                single = route.single
                return single if single is not None else route.pick(rng)
        return vhost.no_route

    def outside(self, host: str) -> RouteDecision:
        """A host the mesh does not know: passed through (ALLOW_ANY) or refused (REGISTRY_ONLY)."""
        if self.registry_only:
            return RouteDecision(
                matched=False,
                flag="NR",
                host=host,
                retry=RetryDecision(attempts=0, source="route"),
                note="outboundTrafficPolicy REGISTRY_ONLY: host is not in the mesh registry",
            )
        return RouteDecision(
            matched=True,
            flag=None,
            host=host,
            route_name="allow_any",
            destination=Target(host=host),
            passthrough=True,
            note="host not in the mesh: passed through unchanged (outboundTrafficPolicy ALLOW_ANY)",
        )

    def explain(self, request: RouteRequest, rng: random.Random) -> RouteDecision:
        """Like ``route``, and records why each earlier route did not match."""
        vhost = self.lookup(request.host)
        if vhost is None:
            return self.outside(request.host)
        skipped: list[SkippedRoute] = []
        for route in vhost.routes:
            if route.matches(request):
                decision = route.pick(rng)
                target = decision.destination
                if target is not None and target.port_policies:
                    policy = target.policy_for(request.port)
                    target = replace(target, traffic_policy=policy)
                return replace(decision, destination=target, skipped=tuple(skipped))
            skipped.append(SkippedRoute(route.index, route.name, tuple(_misses(route, request))))
        return replace(vhost.no_route, skipped=tuple(skipped))


def _misses(route: Route, request: RouteRequest) -> list[str]:
    reasons = []
    for entry in route.entries or ():
        label = f"match[{entry.index}]" + (f" ({entry.name})" if entry.name else "")
        if entry.excluded is not None:
            reasons.append(f"{label}: {entry.excluded}")
            continue
        for condition in entry.conditions:
            if not condition.test(request):
                actual = condition.actual(request)
                shown = "absent" if actual is None else repr(actual)
                reasons.append(
                    f"{label}: {condition.field} wants {condition.expected}, got {shown}"
                )
                break
    return reasons
