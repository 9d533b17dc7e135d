"""Warnings about configs that are valid but do not do what their authors think.

Each is a trap Istio users fall into: unreachable routes, subsets that do not exist, faults that
silently turn off retries, an empty ``retries`` that does not do what it seems to (null keeps the
default retries, ``{}`` turns them off), weights that do not add up, retries cut short by the
route timeout,
faults that inject nothing because no percentage was given, and delays that outlast a caller's
timeout somewhere up the call chain (Bookinfo's 7s ratings delay against productpage's 3s × 2
timeout on reviews) — the caller's timeouts come from route ``timeout``s and from the
``spec.appTimeouts`` each service declares for the timeouts its own code sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshlib.config import model as m
from meshlib.config import security as sec
from meshlib.config.compile import catches_all, fqdn, mesh_bound
from meshlib.config.load import NOT_APPLICABLE, MeshConfig, Resource
from meshlib.errors import ConfigError, Problem
from meshlib.routing import DEFAULT_RETRY


def lint(config: MeshConfig, services: Sequence[MeshConfig] = ()) -> list[Problem]:
    """Every warning for ``config``, in file order (load warnings included). ``services``: the
    configs of the other services of the mesh, whose ``spec.appTimeouts`` and route timeouts
    join the check of injected delays against the callers' timeouts."""
    problems: list[Problem] = list(config.warnings)
    subsets = _subsets(config)
    known = _known_hosts(config)
    claimed: dict[str, Resource] = {}
    delegates = {
        (r.namespace, r.name): r
        for r in config.of_kind("VirtualService")
        if isinstance(r.spec, m.VirtualService) and not r.spec.hosts
    }
    for resource in config.resources:
        if resource.spec is None:
            group = resource.api_version.rpartition("/")[0]
            if group in NOT_APPLICABLE:
                problems.append(
                    Problem(
                        resource.file,
                        resource.line,
                        "kind",
                        f"{resource.kind} {resource.name!r} is not applicable in-process: "
                        "loaded and ignored",
                        "warning",
                    )
                )
            continue
        if isinstance(resource.spec, m.VirtualService):
            problems += _virtual_service(
                resource, resource.spec, subsets, known, claimed, delegates
            )
        problems += _policy_targets(resource)
    problems += _delays_against_timeouts(config, services)
    problems.sort(key=lambda p: (p.file, p.line))
    return problems


def _policy_targets(resource: Resource) -> list[Problem]:
    """A security policy's ``targetRef(s)`` that meshlib does not act on: meshlib's workloads are
    the Services of the mesh; a Gateway, GatewayClass or ServiceEntry has no workload here, so a
    policy attached to one applies to nothing in-process (Istio applies it on a gateway or
    waypoint proxy)."""
    spec = resource.spec
    if not isinstance(spec, (sec.AuthorizationPolicy, sec.RequestAuthentication)):
        return []
    refs: list[tuple[tuple[str | int, ...], sec.PolicyTargetReference]] = []
    if spec.target_ref is not None:
        refs.append((("targetRef",), spec.target_ref))
    refs += [(("targetRefs", i), ref) for i, ref in enumerate(spec.target_refs or ())]
    return [
        resource.problem(
            (*at, "kind"),
            f"meshlib applies {resource.kind} targetRefs to Services only: a {ref.kind} has no "
            "workload in-process, so this reference selects nothing",
        )
        for at, ref in refs
        if ref.kind != "Service" or ref.group
    ]


def _subsets(config: MeshConfig) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for resource in config.of_kind("DestinationRule"):
        assert isinstance(resource.spec, m.DestinationRule)
        host = fqdn(resource.spec.host, resource.namespace)
        found.setdefault(host, set()).update(s.name for s in resource.spec.subsets or ())
    return found


def _known_hosts(config: MeshConfig) -> set[str] | None:
    """Hosts the registry knows, or None when this config names no registry at all."""
    namespace = config.service.namespace
    hosts = {fqdn(name, namespace) for name in config.service.registry}
    for resource in config.of_kind("ServiceEntry"):
        assert isinstance(resource.spec, m.ServiceEntry)
        hosts.update(fqdn(h, resource.namespace) for h in resource.spec.hosts)
    if config.service.registry_file is not None:
        from meshlib.discovery.file import FileRegistry  # noqa: PLC0415 - discovery needs config

        try:
            hosts.update(FileRegistry(config.service.registry_file, namespace).hosts())
        except ConfigError:
            return None  # the registry file's own errors are reported when the mesh loads it
    return hosts or None


def _virtual_service(
    resource: Resource,
    spec: m.VirtualService,
    subsets: dict[str, set[str]],
    known: set[str] | None,
    claimed: dict[str, Resource],
    delegates: dict[tuple[str, str], Resource],
) -> list[Problem]:
    out: list[Problem] = []
    if not mesh_bound(spec.gateways):
        out.append(
            resource.problem(
                ("gateways",),
                f"bound only to gateways {spec.gateways}: takes no part in mesh routing",
            )
        )
        return out
    for i, raw in enumerate(spec.hosts or ()):
        host = fqdn(raw, resource.namespace)
        first = claimed.setdefault(host, resource)
        if first is not resource:
            out.append(
                resource.problem(
                    ("hosts", i),
                    f"host {raw!r} is already routed by VirtualService {first.name!r} "
                    f"({first.file}:{first.line}): this one is ignored for it",
                )
            )
    catch_all: int | None = None
    for index, http in enumerate(spec.http or ()):
        at: tuple[str | int, ...] = ("http", index)
        if catch_all is not None:
            # after a route without match, Istio's own warning says it ("rule … not used")
            if spec.http[catch_all].match:  # type: ignore[index]
                out.append(
                    resource.problem(
                        at, f"unreachable: route http[{catch_all}] matches every request"
                    )
                )
        elif catches_all(http):
            catch_all = index
        if http.delegate is not None:
            out += _delegate(resource, at, http.delegate, delegates)
        destinations: list[tuple[tuple[str | int, ...], m.Destination]] = [
            (("route", j, "destination"), d.destination) for j, d in enumerate(http.route or ())
        ]
        if http.mirror is not None:
            destinations.append((("mirror",), http.mirror))
        destinations += [
            (("mirrors", j, "destination"), p.destination) for j, p in enumerate(http.mirrors or ())
        ]
        for where, destination in destinations:
            out += _destination(resource, (*at, *where), destination, subsets, known)
        if http.route and len(http.route) > 1:
            total = sum(d.weight for d in http.route)
            if total not in (0, 100):
                out.append(
                    resource.problem(
                        (*at, "route"),
                        f"weights sum to {total}, not 100: each destination gets weight/{total} "
                        "of the traffic",
                    )
                )
        out += _empty_retries(resource, at)
        if http.fault is not None:
            for name in ("retries", "timeout"):
                if getattr(http, name) is not None:
                    out.append(
                        resource.problem(
                            (*at, name),
                            f"ignored: a route with a fault gets no {name} (Istio's rule)",
                        )
                    )
            out += _fault(resource, (*at, "fault"), http.fault)
        elif http.retries is not None and http.timeout:
            retries = http.retries
            if retries.per_try_timeout and retries.attempts > 0:
                worst = retries.per_try_timeout * (retries.attempts + 1)
                if worst > http.timeout:
                    out.append(
                        resource.problem(
                            (*at, "retries", "perTryTimeout"),
                            f"perTryTimeout {retries.per_try_timeout:g}s × {retries.attempts + 1} "
                            f"tries = {worst:g}s exceeds the route timeout {http.timeout:g}s: "
                            "later retries will be cut short",
                        )
                    )
    return out


def _default_retries() -> str:
    codes = ",".join(str(c) for c in sorted(DEFAULT_RETRY.retriable_status_codes))
    return f"{DEFAULT_RETRY.attempts} retries on {','.join(DEFAULT_RETRY.retry_on)}" + (
        f" (status {codes})" if codes else ""
    )


def _empty_retries(resource: Resource, at: tuple[str | int, ...]) -> list[Problem]:
    """``retries:`` with nothing under it (YAML null: its fields lost their indentation) reads
    as no ``retries`` at all, and ``retries: {}`` as ``attempts: 0``, retries off: Istio's
    ``retry.ConvertPolicy`` (nil: the default policy; attempts 0: none), which meshlib follows.
    """
    spec = resource.document.data.get("spec") if isinstance(resource.document.data, dict) else None
    routes = spec.get("http") if isinstance(spec, dict) else None
    index = at[-1]
    if not isinstance(routes, list) or not isinstance(index, int) or index >= len(routes):
        return []
    route = routes[index]
    if not isinstance(route, dict) or "retries" not in route or route.get("fault") is not None:
        return []
    retries = route["retries"]
    if retries is None:
        message = (
            "empty: 'retries:' with nothing under it is read as no retries field at all (as "
            f"Istio reads it), so this route keeps the default policy, {_default_retries()}; "
            "retry fields go indented under 'retries', and 'attempts: 0' turns retries off"
        )
    elif retries == {}:
        message = (
            "'retries: {}' means attempts 0 (as in Istio): this route is not retried at all, "
            f"where leaving 'retries' out keeps the default policy, {_default_retries()}; "
            "write 'attempts: 0' if no retries is what you mean"
        )
    else:
        return []
    return [resource.problem((*at, "retries"), message)]


def _destination(
    resource: Resource,
    at: tuple[str | int, ...],
    destination: m.Destination,
    subsets: dict[str, set[str]],
    known: set[str] | None,
) -> list[Problem]:
    out = []
    host = fqdn(destination.host, resource.namespace)
    if (
        known is not None
        and host not in known
        and not any(k.startswith("*") and host.endswith(k[1:]) for k in known)
    ):
        out.append(
            resource.problem(
                (*at, "host"),
                f"host {destination.host!r} is not in the registry: calls to it will fail",
            )
        )
    if destination.subset is not None and destination.subset not in subsets.get(host, set()):
        defined = sorted(subsets.get(host, set()))
        hint = (
            f" (defined: {', '.join(defined)})"
            if defined
            else " (no DestinationRule defines subsets for it)"
        )
        out.append(
            resource.problem(
                (*at, "subset"),
                f"subset {destination.subset!r} of {destination.host!r} is not defined{hint}: "
                "calls get 503 (NC)",
            )
        )
    return out


def _delegate(
    resource: Resource,
    at: tuple[str | int, ...],
    delegate: m.Delegate,
    delegates: dict[tuple[str, str], Resource],
) -> list[Problem]:
    key = (delegate.namespace or resource.namespace, delegate.name)
    child = delegates.get(key)
    if child is None:
        return [
            resource.problem(
                (*at, "delegate"),
                f"no VirtualService {key[0]}/{key[1]} without hosts to delegate to: "
                "this route matches nothing",
            )
        ]
    assert isinstance(child.spec, m.VirtualService)
    if not resource.spec or not isinstance(resource.spec, m.VirtualService):
        return []
    if not resource.spec.hosts:
        return [resource.problem((*at, "delegate"), "delegation is one level deep: ignored")]
    return []


def _fault(
    resource: Resource, at: tuple[str | int, ...], fault: m.HTTPFaultInjection
) -> list[Problem]:
    out = []
    for name, part in (("delay", fault.delay), ("abort", fault.abort)):
        if part is None:
            continue
        if part.percentage is None and part.percent is None:
            out.append(
                resource.problem(
                    (*at, name),
                    f"no percentage: this {name} applies to 0% of requests (set percentage.value)",
                )
            )
    return out


# --------------------------------------------------------------------------- delays and timeouts


@dataclass(frozen=True, slots=True)
class _Call:
    """A known timeout on calls to ``host``: a service's declared app timeout, or a route's."""

    caller: str  # "productpage v1", or "the 0.5s timeout of VirtualService default/reviews http[0]"
    caller_host: str | None  # the caller's own host, to go on up the chain; None for a route
    host: str
    timeout: float
    attempts: int


def _service_calls(config: MeshConfig) -> list[_Call]:
    out = []
    for resource in config.of_kind("Service"):
        spec = resource.spec
        if not isinstance(spec, m.Service) or not spec.app_timeouts:
            continue
        namespace = resource.namespace
        who = f"{resource.name} {spec.version}" if spec.version else resource.name
        for name, declared in spec.app_timeouts.items():
            out.append(
                _Call(
                    who,
                    fqdn(resource.name, namespace),
                    fqdn(name, namespace),
                    declared.timeout,
                    declared.attempts,
                )
            )
    return out


def _route_calls(resources: Sequence[Resource]) -> list[_Call]:
    out = []
    for resource in resources:
        spec = resource.spec
        if not isinstance(spec, m.VirtualService) or not mesh_bound(spec.gateways):
            continue
        for index, http in enumerate(spec.http or ()):
            if not http.timeout or http.fault is not None:  # a fault route has no timeout
                continue
            who = (
                f"the {http.timeout:g}s timeout of VirtualService "
                f"{resource.namespace}/{resource.name} http[{index}]"
            )
            for host in spec.hosts or ():
                out.append(_Call(who, None, fqdn(host, resource.namespace), http.timeout, 1))
    return out


def _delays_against_timeouts(config: MeshConfig, services: Sequence[MeshConfig]) -> list[Problem]:
    """A fault delay that is at least a known timeout of a call on its way: the caller gives up
    (and, up the chain, so may the callers of the caller)."""
    calls = _service_calls(config)
    for other in services:
        calls += _service_calls(other)
    # route timeouts: the config's own VirtualServices, then those of the other services'
    # configs that it does not replace
    own = config.of_kind("VirtualService")
    keys = {r.key for r in own}
    routes = list(own)
    for other in services:
        for resource in other.of_kind("VirtualService"):
            if resource.key not in keys:
                keys.add(resource.key)
                routes.append(resource)
    calls += _route_calls(routes)
    if not calls:
        return []
    by_host: dict[str, list[_Call]] = {}
    for call in calls:
        by_host.setdefault(call.host, []).append(call)
    out: list[Problem] = []
    for resource in own:
        spec = resource.spec
        assert isinstance(spec, m.VirtualService)
        if not mesh_bound(spec.gateways):
            continue
        for index, http in enumerate(spec.http or ()):
            delay = http.fault.delay if http.fault is not None else None
            if delay is None or delay.fixed_delay is None or _percentage(delay) <= 0:
                continue
            at = ("http", index, "fault", "delay", "fixedDelay")
            for host in spec.hosts or ():
                target = fqdn(host, resource.namespace)
                for message in _outlasted(target, delay.fixed_delay, by_host):
                    out.append(resource.problem(at, message))
    return out


def _percentage(delay: m.Delay) -> float:
    if delay.percentage is not None:
        return delay.percentage.value
    return float(delay.percent or 0)


def _short(host: str) -> str:
    return host.split(".", 1)[0]


def _outlasted(host: str, delay: float, by_host: dict[str, list[_Call]]) -> list[str]:
    """Walk up the call chain from ``host``: each call whose timeout the delay reaches."""
    out: list[str] = []
    seen = {(host, delay)}
    # (host called, how long its answer is delayed, the chain from it down to the fault)
    frontier: list[tuple[str, float, tuple[str, ...]]] = [(host, delay, (_short(host),))]
    for _ in range(16):  # call chains are short; a cycle ends at `seen`
        if not frontier:
            break
        later: list[tuple[str, float, tuple[str, ...]]] = []
        for called, late, chain in frontier:
            for call in by_host.get(called, ()):
                waited = late
                if late >= call.timeout:
                    out.append(_message(delay, host, call, chain))
                    waited = call.timeout * call.attempts
                if call.caller_host is not None and (call.caller_host, waited) not in seen:
                    seen.add((call.caller_host, waited))
                    later.append((call.caller_host, waited, (call.caller, *chain)))
        frontier = later
    return out


def _message(delay: float, host: str, call: _Call, chain: tuple[str, ...]) -> str:
    """``chain``: who calls whom from ``call.host`` down to the delayed host."""
    text = f"a {delay:g}s delay on {_short(host)} outlasts "
    if call.caller_host is None:  # a route's timeout
        text += call.caller
        if len(chain) > 1:
            text += f" (calls to {' → '.join(chain)})"
        return text + ": the call ends in a timeout (UT) before the delay does"
    text += f"{call.caller}'s {call.timeout:g}s timeout on {_short(call.host)}"
    if len(chain) > 1:
        text += f" ({' → '.join((call.caller, *chain))})"
    if call.attempts > 1:
        gives_up = f"{call.attempts} tries × {call.timeout:g}s = {call.timeout * call.attempts:g}s"
    else:
        gives_up = f"{call.timeout:g}s"
    return f"{text}: {call.caller} gives up after {gives_up}, before the delay ends"
