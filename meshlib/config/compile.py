"""Validated config → runtime routing tables (``meshlib.routing``), with Istio's defaults applied.

Host names follow Kubernetes/Istio rules: a short name (``reviews``) in a resource means
``reviews.<namespace of that resource>.svc.cluster.local``; a request may name a service as
``reviews`` (own namespace), ``reviews.ns``, ``reviews.ns.svc`` or the FQDN, as Envoy's virtual-host
domains allow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from meshlib.config import model as m
from meshlib.config.load import MeshConfig, Resource, ServiceInfo
from meshlib.routing import (
    CLUSTER_DOMAIN,
    DEFAULT_BACKOFF,
    DEFAULT_RETRIABLE_STATUS_CODES,
    DEFAULT_RETRY,
    DEFAULT_RETRY_ON,
    NO_FAULT,
    NO_RETRY_FAULT,
    Condition,
    FaultDecision,
    MatchEntry,
    RetryDecision,
    Route,
    RouteDecision,
    RouteRequest,
    RouteTable,
    Target,
    VirtualHost,
)

MESH_GATEWAY = "mesh"


# --------------------------------------------------------------------------- host names


def fqdn(host: str, namespace: str) -> str:
    """Istio's short-name rule: a host without dots lives in the resource's namespace."""
    host = host.lower().rstrip(".")
    if host == "*" or host.startswith("*.") or "." in host:
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def spellings(host: str, own_namespace: str) -> list[str]:
    """Every way a request may name ``host``: for a Kubernetes service FQDN, also ``name.ns``,
    ``name.ns.svc``, and the short ``name`` from within its own namespace."""
    names = [host]
    suffix = "." + CLUSTER_DOMAIN
    if host.endswith(suffix):
        short = host[: -len(suffix)]
        name, _, namespace = short.partition(".")
        if name and namespace and "." not in namespace:
            names += [f"{short}.svc", short]
            if namespace == own_namespace:
                names.append(name)
    return names


def mesh_bound(gateways: list[str] | None) -> bool:
    """A VirtualService (or match) applies to sidecars when it names no gateways, or ``mesh``."""
    return not gateways or MESH_GATEWAY in gateways


# --------------------------------------------------------------------------- string matches

_RE2_ONLY = re.compile(r"\[:|\\[pPzCQE]|\{,|\(\?[a-zA-Z]*U|\(\?<|\(\?[a-zA-Z]*i")


def regex_test(pattern: str) -> Callable[[str], bool]:
    """A full-match test with RE2's meaning. Python's ``re`` runs it (ten times faster from
    Python) when the pattern means the same to both engines; RE2 itself otherwise."""
    if pattern.isascii() and not _RE2_ONLY.search(pattern):
        try:
            compiled = re.compile(pattern, re.ASCII)
        except re.error:
            pass
        else:
            full = compiled.fullmatch
            return lambda value: full(value) is not None
    slow = m.re2_compile(pattern).fullmatch
    return lambda value: slow(value) is not None


def string_test(
    match: m.StringMatch, ignore_case: bool = False
) -> tuple[str, Callable[[str | None], bool]]:
    """StringMatch → (description, test on a value that may be absent)."""
    if match.exact is not None:
        exact = match.exact
        if ignore_case:
            folded = exact.lower()
            return f"exact {exact!r} (any case)", lambda v: v is not None and v.lower() == folded
        return f"exact {exact!r}", lambda v: v == exact
    if match.prefix is not None:
        prefix = match.prefix
        if ignore_case:
            folded = prefix.lower()
            return (
                f"prefix {prefix!r} (any case)",
                lambda v: v is not None and v.lower().startswith(folded),
            )
        return f"prefix {prefix!r}", lambda v: v is not None and v.startswith(prefix)
    if match.regex is not None:
        if match.regex == "*":  # istio#20629: pilot turns regex "*" into a presence match
            return "present", lambda v: v is not None
        full = regex_test(match.regex)
        return f"regex {match.regex!r}", lambda v: v is not None and full(v)
    return "present", lambda v: v is not None


# --------------------------------------------------------------------------- match entries

_IGNORED_HEADER_KEYS = frozenset({"uri", "scheme", "method", "authority"})


def compile_entry(
    index: int,
    entry: m.HTTPMatchRequest,
    vs_gateways: list[str] | None,
    service: ServiceInfo,
    vs_namespace: str,
) -> MatchEntry:
    conditions: list[Condition] = []

    def add(
        field: str,
        description: str,
        test: Callable[[RouteRequest], bool],
        actual: Callable[[RouteRequest], object],
    ) -> None:
        conditions.append(Condition(field, description, test, actual))

    if entry.uri is not None:
        text, uri_ok = string_test(entry.uri, ignore_case=bool(entry.ignore_uri_case))
        add("uri", text, lambda r: uri_ok(r.path), lambda r: r.path)
    if entry.method is not None:
        text, method_ok = string_test(entry.method)
        add("method", text, lambda r: method_ok(r.method), lambda r: r.method)
    if entry.scheme is not None:
        text, scheme_ok = string_test(entry.scheme)
        add("scheme", text, lambda r: scheme_ok(r.scheme), lambda r: r.scheme)
    if entry.authority is not None:
        text, authority_ok = string_test(entry.authority)
        add("authority", text, lambda r: authority_ok(r.authority), lambda r: r.authority)
    if entry.port is not None:
        port = entry.port
        add("port", f"{port}", lambda r: r.port == port, lambda r: r.port)
    # header names match in any case (Envoy lowercases them); the router's map is lowercase
    for name, header in (entry.headers or {}).items():
        if name in _IGNORED_HEADER_KEYS:
            continue
        text, ok = string_test(header)
        if name.lower().startswith("@request.auth.claims"):
            add(
                f"headers.{name}",
                f"{text} (JWT claim: needs RequestAuthentication)",
                lambda r: False,
                lambda r: None,
            )
            continue
        lower = name.lower()
        add(f"headers.{name}", text, _header_test(lower, ok), _header_value(lower))
    for name, header in (entry.without_headers or {}).items():
        if name in _IGNORED_HEADER_KEYS:
            continue
        text, ok = string_test(header)
        # Envoy's invert_match; pilot sets treat_missing_header_as_empty (istio#49537, Istio
        # 1.22): an absent header is matched as "", except by a presence match.
        presence = text == "present"
        add(
            f"withoutHeaders.{name}",
            f"not {text}",
            _without_test(name.lower(), ok, presence),
            _header_value(name.lower()),
        )
    for name, param in (entry.query_params or {}).items():
        text, ok = string_test(param)
        add(f"queryParams.{name}", text, _param_test(name, ok), _param_value(name))

    excluded = None
    if entry.source_labels:
        missing = {k: v for k, v in entry.source_labels.items() if service.labels.get(k) != v}
        if missing:
            excluded = (
                f"sourceLabels {entry.source_labels} do not select this service "
                f"({service.name}, labels {service.labels})"
            )
    if excluded is None and entry.source_namespace not in (None, service.namespace):
        excluded = (
            f"sourceNamespace {entry.source_namespace!r} is not this service's "
            f"({service.namespace!r})"
        )
    gateways = entry.gateways if entry.gateways is not None else vs_gateways
    if excluded is None and not mesh_bound(gateways):
        excluded = f"bound to gateways {gateways}, not to the mesh"
    return MatchEntry(index, entry.name, tuple(conditions), excluded)


def _header_test(name: str, ok: Callable[[str | None], bool]) -> Callable[[RouteRequest], bool]:
    return lambda r: ok(r.headers.get(name))


def _header_value(name: str) -> Callable[[RouteRequest], object]:
    return lambda r: r.headers.get(name)


def _without_test(
    name: str, ok: Callable[[str | None], bool], presence: bool
) -> Callable[[RouteRequest], bool]:
    def test(r: RouteRequest) -> bool:
        value = r.headers.get(name)
        if value is None:
            return presence or not ok("")
        return not ok(value)

    return test


def _param_test(name: str, ok: Callable[[str | None], bool]) -> Callable[[RouteRequest], bool]:
    return lambda r: ok(r.params.get(name))


def _param_value(name: str) -> Callable[[RouteRequest], object]:
    return lambda r: r.params.get(name)


# --------------------------------------------------------------------------- policies


def fault_decision(fault: m.HTTPFaultInjection | None) -> FaultDecision:
    if fault is None:
        return NO_FAULT
    delay, abort = fault.delay, fault.abort
    return FaultDecision(
        delay=delay.fixed_delay if delay else None,
        delay_percentage=_percentage(delay.percentage, delay.percent) if delay else 0.0,
        abort_status=abort.http_status if abort else None,
        abort_grpc_status=abort.grpc_status if abort else None,
        abort_percentage=_percentage(abort.percentage, abort.percent) if abort else 0.0,
    )


def _percentage(percentage: m.Percent | None, percent: int | None) -> float:
    """``percentage.value`` wins over the legacy integer ``percent``; neither set means 0%."""
    if percentage is not None:
        return percentage.value
    if percent is not None:
        return float(percent)
    return 0.0


RETRY_NON_IDEMPOTENT = "meshlib.dev/retry-non-idempotent"


def retry_decision(route: m.HTTPRoute, allow_non_idempotent: bool = False) -> RetryDecision:
    """Istio's ``retry.ConvertPolicy``: the mesh default when ``retries`` is absent.

    ``allow_non_idempotent`` comes from the VirtualService annotation
    ``meshlib.dev/retry-non-idempotent: "true"``: without it POST and PATCH are retried only when
    the request provably never left (connect failure, refused stream)."""
    if route.fault is not None:
        return NO_RETRY_FAULT
    retries = route.retries
    if retries is None:
        if allow_non_idempotent:
            return replace(DEFAULT_RETRY, allow_non_idempotent=True)
        return DEFAULT_RETRY
    if retries.attempts <= 0:
        return RetryDecision(attempts=0, source="route")
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    codes: frozenset[int] = DEFAULT_RETRIABLE_STATUS_CODES
    if retries.retry_on:
        names: list[str] = []
        numbers: set[int] = set()
        for raw in retries.retry_on.split(","):
            item = raw.strip()
            if item.isdigit():
                numbers.add(int(item))
            elif item and item not in names:
                names.append(item)
        if numbers and "retriable-status-codes" not in names:
            names.append("retriable-status-codes")
        retry_on, codes = tuple(names), frozenset(numbers)
    return RetryDecision(
        attempts=retries.attempts,
        retry_on=retry_on,
        retriable_status_codes=codes,
        per_try_timeout=retries.per_try_timeout,
        backoff=retries.backoff if retries.backoff is not None else DEFAULT_BACKOFF,
        retry_remote_localities=bool(retries.retry_remote_localities),
        retry_ignore_previous_hosts=retries.retry_ignore_previous_hosts is not False,
        allow_non_idempotent=allow_non_idempotent,
        source="route",
    )


def route_timeout(route: m.HTTPRoute) -> float | None:
    """Off when absent or 0s; and off on a route with a fault (Istio's rule)."""
    if route.fault is not None or not route.timeout:
        return None
    return route.timeout


_POLICY_FIELDS = tuple(m.TrafficPolicy.model_fields)
_PORT_FIELDS = ("load_balancer", "connection_pool", "outlier_detection", "tls")


def merge_policy(
    base: m.TrafficPolicy | None, override: m.TrafficPolicy | None
) -> m.TrafficPolicy | None:
    """Subset policy over the rule's, field by field (a given field replaces the rule's whole)."""
    if override is None:
        return base
    if base is None:
        return override
    values = {
        name: getattr(override, name)
        if getattr(override, name) is not None
        else getattr(base, name)
        for name in _POLICY_FIELDS
    }
    return m.TrafficPolicy.model_construct(**values)


def port_policy(policy: m.TrafficPolicy | None, port: int | None) -> m.TrafficPolicy | None:
    """Port-level settings for ``port`` replace (do not inherit) the four policies they carry:
    a field the port-level entry leaves out falls back to its default, not to the rule's value."""
    if policy is None or port is None or not policy.port_level_settings:
        return policy
    for level in policy.port_level_settings:
        if level.port is not None and level.port.number == port:
            values = {name: getattr(policy, name) for name in _POLICY_FIELDS}
            values.update({name: getattr(level, name) for name in _PORT_FIELDS})
            return m.TrafficPolicy.model_construct(**values)
    return policy


# --------------------------------------------------------------------------- the compiler


@dataclass(frozen=True, slots=True)
class _Rule:
    resource: Resource
    spec: m.DestinationRule
    host: str


class Compiler:
    """Builds a ``RouteTable`` from a ``MeshConfig``."""

    def __init__(self, config: MeshConfig, extra_hosts: Iterable[str] = ()) -> None:
        self.config = config
        self.service = config.service
        namespace = self.service.namespace
        self.rules: dict[str, _Rule] = {}
        self.wild_rules: list[_Rule] = []
        for resource in config.of_kind("DestinationRule"):
            assert isinstance(resource.spec, m.DestinationRule)
            host = fqdn(resource.spec.host, resource.namespace)
            rule = _Rule(resource, resource.spec, host)
            if host.startswith("*"):
                self.wild_rules.append(rule)
            elif host in self.rules:
                self.rules[host] = _merge_rules(self.rules[host], rule)
            else:
                self.rules[host] = rule
        self.wild_rules.sort(key=lambda r: -len(r.host))
        self.delegates: dict[tuple[str, str], Resource] = {}
        for resource in config.of_kind("VirtualService"):
            assert isinstance(resource.spec, m.VirtualService)
            if not resource.spec.hosts:
                self.delegates[(resource.namespace, resource.name)] = resource
        self.known_hosts: list[str] = [fqdn(name, namespace) for name in self.service.registry]
        for resource in config.of_kind("ServiceEntry"):
            assert isinstance(resource.spec, m.ServiceEntry)
            self.known_hosts += [fqdn(h, resource.namespace) for h in resource.spec.hosts]
        self.known_hosts += [fqdn(h, namespace) for h in extra_hosts]

    # -------------------------------------------------------------- destination rules

    def rule_for(self, host: str) -> _Rule | None:
        rule = self.rules.get(host)
        if rule is not None:
            return rule
        for wild in self.wild_rules:
            if wild.host == "*" or host.endswith(wild.host[1:]):
                return wild
        return None

    def target(
        self,
        destination: m.Destination,
        namespace: str,
        weight: int = 100,
        headers: m.Headers | None = None,
    ) -> Target:
        host = fqdn(destination.host, namespace)
        port = destination.port.number if destination.port else None
        rule = self.rule_for(host)
        policy = rule.spec.traffic_policy if rule else None
        labels = None
        defined = True
        if destination.subset is not None:
            subset = (
                next((s for s in (rule.spec.subsets or ()) if s.name == destination.subset), None)
                if rule
                else None
            )
            if subset is None:
                defined = False
            else:
                labels = dict(subset.labels or {})
                policy = merge_policy(policy, subset.traffic_policy)
        by_port: dict[int, m.TrafficPolicy | None] = {}
        if port is not None:
            policy = port_policy(policy, port)
        elif policy is not None and policy.port_level_settings:
            by_port = {
                level.port.number: port_policy(policy, level.port.number)
                for level in policy.port_level_settings
                if level.port is not None
            }
        return Target(
            host=host,
            subset=destination.subset,
            port=port,
            weight=weight,
            subset_labels=labels,
            subset_defined=defined,
            traffic_policy=policy,
            destination_rule=f"{rule.resource.namespace}/{rule.resource.name}" if rule else None,
            headers=headers,
            port_policies=by_port,
        )

    # -------------------------------------------------------------- virtual services

    def compile(self) -> RouteTable:
        namespace = self.service.namespace
        hosts: dict[str, VirtualHost] = {}
        wildcards: list[tuple[str, VirtualHost]] = []
        claimed: set[str] = set()
        for resource in self.config.of_kind("VirtualService"):
            spec = resource.spec
            assert isinstance(spec, m.VirtualService)
            if not spec.hosts or not mesh_bound(spec.gateways):
                continue
            for raw in spec.hosts:
                host = fqdn(raw, resource.namespace)
                if host in claimed:
                    continue  # first VirtualService for a host wins; `meshctl validate` warns
                claimed.add(host)
                vhost = self.virtual_host(resource, spec, host)
                if host.startswith("*"):
                    wildcards.append((host[1:] if host != "*" else "*", vhost))
                else:
                    for name in spellings(host, namespace):
                        hosts.setdefault(name, vhost)
        for host in self.known_hosts:
            if host in claimed:
                continue
            claimed.add(host)
            vhost = self.default_host(host)
            if host.startswith("*"):
                wildcards.append((host[1:] if host != "*" else "*", vhost))
                continue
            for name in spellings(host, namespace):
                hosts.setdefault(name, vhost)
        wildcards.sort(key=lambda item: (item[0] == "*", -len(item[0])))
        return RouteTable(
            hosts=hosts,
            wildcards=tuple(wildcards),
            namespace=namespace,
            registry_only=self.service.outbound_mode == "REGISTRY_ONLY",
        )

    def default_host(self, host: str) -> VirtualHost:
        """A known service without a VirtualService: Istio's ``default`` route to all of it."""
        decision = RouteDecision(
            matched=True,
            flag=None,
            host=host,
            route_name="default",
            destination=self.target(m.Destination(host=host), self.service.namespace),
        )
        route = Route(0, "default", None, (decision,), (1.0,))
        return VirtualHost(host, (route,), _no_route(host, None))

    def virtual_host(self, resource: Resource, spec: m.VirtualService, host: str) -> VirtualHost:
        vs_name = f"{resource.namespace}/{resource.name}"
        routes: list[Route] = []
        for index, http in enumerate(spec.http or ()):
            for route in self.routes_of(http, index, resource, spec.gateways, host, vs_name, None):
                routes.append(route)
                if route.catch_all:
                    break
            if (routes and routes[-1].catch_all) or catches_all(http):
                break  # pilot stops at the first catch-all: later routes are unreachable
        return VirtualHost(host, tuple(routes), _no_route(host, vs_name), vs_name, resource.file)

    def routes_of(
        self,
        http: m.HTTPRoute,
        index: int,
        resource: Resource,
        gateways: list[str] | None,
        host: str,
        vs_name: str,
        parent: tuple[MatchEntry, ...] | None,
    ) -> Iterable[Route]:
        entries: tuple[MatchEntry, ...] | None = None
        if http.match:  # an absent or empty `match` matches every request
            entries = tuple(
                compile_entry(i, e, gateways, self.service, resource.namespace)
                for i, e in enumerate(http.match)
            )
        entries = _combine(parent, entries)
        if http.delegate is not None:
            if parent is not None:
                return  # delegation is one level deep, as in Istio
            child = self.delegates.get(
                (http.delegate.namespace or resource.namespace, http.delegate.name)
            )
            if child is None:
                return
            child_spec = child.spec
            assert isinstance(child_spec, m.VirtualService)
            for child_http in child_spec.http or ():
                yield from self.routes_of(
                    child_http, index, child, gateways, host, vs_name, entries
                )
            return
        decisions = self.decisions(http, index, resource, host, vs_name)
        if http.rewrite is not None or (
            http.redirect is not None and http.redirect.prefix_rewrite is not None
        ):
            uri_matches = _uri_matches(entries, http)
            decisions = tuple(replace(d, uri_matches=uri_matches) for d in decisions)
        weights = [float(d.destination.weight) if d.destination else 1.0 for d in decisions]
        cumulative: list[float] = []
        total = 0.0
        for weight in weights:
            total += weight
            cumulative.append(total)
        yield Route(
            index=index,
            name=http.name,
            entries=entries,
            decisions=decisions,
            cumulative=tuple(cumulative),
            line=resource.line_of("http", index),
            file=resource.file,
        )

    def decisions(
        self, http: m.HTTPRoute, index: int, resource: Resource, host: str, vs_name: str
    ) -> tuple[RouteDecision, ...]:
        namespace = resource.namespace
        base = RouteDecision(
            matched=True,
            flag=None,
            host=host,
            virtual_service=vs_name,
            route_index=index,
            route_name=http.name,
            fault=fault_decision(http.fault),
            timeout=route_timeout(http),
            retry=retry_decision(http, _allows_non_idempotent(resource)),
            rewrite=http.rewrite,
            redirect=http.redirect,
            direct_response=http.direct_response,
            headers=http.headers,
            mirrors=self.mirrors(http, namespace),
            cors_policy=http.cors_policy,
        )
        destinations = http.route or []
        if not destinations:  # redirect or directResponse: answered locally, nothing to retry
            return (replace(base, retry=NO_RETRY_LOCAL, timeout=None),)
        if len(destinations) == 1:
            only = destinations[0]
            target = self.target(only.destination, namespace, 100, only.headers)
            return (replace(base, destination=target),)
        return tuple(
            replace(base, destination=self.target(d.destination, namespace, d.weight, d.headers))
            for d in destinations
            if d.weight > 0
        ) or (base,)

    def mirrors(self, http: m.HTTPRoute, namespace: str) -> tuple[tuple[Target, float], ...]:
        if http.mirror is not None:
            if http.mirror_percentage is not None:
                pct = http.mirror_percentage.value
            elif http.mirror_percent is not None:
                pct = float(http.mirror_percent)
            else:
                pct = 100.0
            return ((self.target(http.mirror, namespace), pct),)
        return tuple(
            (self.target(p.destination, namespace), p.percentage.value if p.percentage else 100.0)
            for p in http.mirrors or ()
        )


def _combine(
    parent: tuple[MatchEntry, ...] | None, child: tuple[MatchEntry, ...] | None
) -> tuple[MatchEntry, ...] | None:
    """A delegate's route matches when both its own and its parent's match hold."""
    if parent is None:
        return child
    if child is None:
        return parent
    return tuple(
        MatchEntry(
            c.index,
            c.name or p.name,
            p.conditions + c.conditions,
            p.excluded or c.excluded,
        )
        for p in parent
        for c in child
    )


NO_RETRY_LOCAL = RetryDecision(attempts=0, source="route")


def catches_all(http: m.HTTPRoute) -> bool:
    """A route pilot treats as a catch-all: no match, or a match entry that is only
    ``uri: {prefix: /}`` (or regex ``.*``), or empty (``{}``, which pilot translates to prefix
    ``/``) — later routes of the VirtualService are dead."""
    if not http.match:
        return True
    for entry in http.match:
        uri = entry.uri
        if uri is not None and uri.prefix != "/" and uri.regex not in (".*", "/.*"):
            continue
        others = entry.model_dump(exclude_none=True, exclude={"uri", "name", "ignore_uri_case"})
        if not others:
            return True
    return False


def _merge_rules(first: _Rule, later: _Rule) -> _Rule:
    """Istio merges DestinationRules for one host: subsets are added (a name already defined
    keeps its first definition); the first rule's traffic policy stays, or, when it has none,
    the later rule's is taken (pilot ``mergeDestinationRule``)."""
    names = {s.name for s in first.spec.subsets or ()}
    added = [s for s in later.spec.subsets or () if s.name not in names]
    update: dict[str, object] = {}
    if added:
        update["subsets"] = [*(first.spec.subsets or ()), *added]
    if first.spec.traffic_policy is None and later.spec.traffic_policy is not None:
        update["traffic_policy"] = later.spec.traffic_policy
    if not update:
        return first
    return _Rule(first.resource, first.spec.model_copy(update=update), first.host)


def _allows_non_idempotent(resource: Resource) -> bool:
    annotations = resource.document.data.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(RETRY_NON_IDEMPOTENT, "")).lower() == "true"


def _uri_matches(
    entries: tuple[MatchEntry, ...] | None, http: m.HTTPRoute
) -> tuple[tuple[MatchEntry, str], ...]:
    """For each match entry, the uri text a prefix rewrite replaces: the exact path or prefix
    it matched on; no uri match means prefix "/" (as Istio translates it)."""
    if entries is None:
        return ((MatchEntry(0, None, ()), "/"),)
    out = []
    for entry, source in zip(entries, http.match or (), strict=False):
        uri = source.uri
        text = "/"
        if uri is not None:
            text = (
                uri.exact if uri.exact is not None else uri.prefix if uri.prefix is not None else ""
            )
        out.append((entry, text))
    return tuple(out)


def matched_uri(decision: RouteDecision, request: RouteRequest) -> str | None:
    """The uri text the request matched on (see ``_uri_matches``); "" means the whole path."""
    for entry, text in decision.uri_matches:
        if entry.matches(request):
            return text or request.path
    return None


def regex_substitute(pattern: str, replacement: str, path: str) -> str:
    """Envoy's ``regex_rewrite``: replace every RE2 ``pattern`` match; ``\\1`` names a group."""
    return str(m.re2_compile(pattern).sub(replacement, path))


def _no_route(host: str, vs_name: str | None) -> RouteDecision:
    return RouteDecision(
        matched=False,
        flag="NR",
        host=host,
        virtual_service=vs_name,
        retry=RetryDecision(attempts=0, source="route"),
        note=f"no route of VirtualService {vs_name} matched" if vs_name else "no route matched",
    )


def compile_table(config: MeshConfig, extra_hosts: Iterable[str] = ()) -> RouteTable:
    """Compile a validated config into the router's table. ``extra_hosts`` are services known
    from elsewhere (a registry file, say): they get Istio's default route."""
    return Compiler(config, extra_hosts).compile()
