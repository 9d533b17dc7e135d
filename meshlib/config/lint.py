"""Warnings about configs that are valid but do not do what their authors think.

Each is a trap Istio users fall into: unreachable routes, subsets that do not exist, faults that
silently turn off retries, weights that do not add up, retries cut short by the route timeout, and
faults that inject nothing because no percentage was given.
"""

from __future__ import annotations

from meshlib.config import model as m
from meshlib.config.compile import catches_all, fqdn, mesh_bound
from meshlib.config.load import NOT_APPLICABLE, MeshConfig, Resource
from meshlib.errors import ConfigError, Problem


def lint(config: MeshConfig) -> list[Problem]:
    """Every warning for ``config``, in file order (load warnings included)."""
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
    problems.sort(key=lambda p: (p.file, p.line))
    return problems


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
            how = "has no match and catches" if not spec.http[catch_all].match else "matches"  # type: ignore[index]
            out.append(
                resource.problem(at, f"unreachable: route http[{catch_all}] {how} every request")
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
    if fault.delay is not None and fault.delay.exponential_delay is not None:
        out.append(
            resource.problem(
                (*at, "delay", "exponentialDelay"),
                "exponentialDelay is not supported (as in Istio): no delay is injected",
            )
        )
    return out
