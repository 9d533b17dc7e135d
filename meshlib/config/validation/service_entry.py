"""Istio's validation of a service entry (istio/istio ``ValidateServiceEntry`` and the CRD
schema's rules), after the model has checked its shape."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from meshlib.config import model as m
from meshlib.config.source import Path
from meshlib.config.validation import common
from meshlib.config.validation.findings import Finding, error, warning

SPEC: Path = ("spec",)
UNIX_PREFIX = "unix://"
#: ``networking.istio.io/enable-autoallocate-ip: "false"`` opts a ServiceEntry out of Istio's
#: automatic address allocation (on by default since Istio 1.20's ``PILOT_ENABLE_IP_AUTOALLOCATE``).
AUTOALLOCATE_LABEL = "networking.istio.io/enable-autoallocate-ip"
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
DYNAMIC_DNS_PROTOCOLS = frozenset({"HTTP", "TLS", "GRPC", "HTTP2"})
DNS_RESOLUTIONS = ("DNS", "DNS_ROUND_ROBIN")


def check(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    """Every finding of Istio's validation of one ServiceEntry."""
    assert isinstance(spec, m.ServiceEntry)
    resolution = spec.resolution or "NONE"
    labels = metadata.labels or {}
    findings = workload_selector(spec)
    findings += hosts(spec.hosts, resolution)
    findings += addresses(spec.addresses or (), resolution)
    findings += ports(spec, resolution, labels)
    findings += resolution_rules(spec, resolution, labels)
    findings += multiple_hosts(spec, resolution)
    findings += common.check_export_to(
        metadata.namespace or common.PRIVATE,
        spec.export_to,
        (*SPEC, "exportTo"),
        service_entry=True,
    )
    return findings


def workload_selector(spec: m.ServiceEntry) -> list[Finding]:
    selector = spec.workload_selector
    if selector is None:
        return []
    path: Path = (*SPEC, "workloadSelector")
    findings = [
        f
        for f in common.check_selector_labels(selector.labels, path, field="labels")
        if f.severity == "error"
    ]
    if not selector.labels:
        findings.append(
            warning(
                path,
                "service entry: workload selector specified without labels, will be applied to "
                "all services in namespace (give workloadSelector.labels)",
            )
        )
    if spec.endpoints:
        findings.append(
            error(
                (*SPEC, "endpoints"),
                "only one of workloadSelector or endpoints is allowed in a service entry",
            )
        )
    return findings


def hosts(names: Sequence[str], resolution: str) -> list[Finding]:
    findings: list[Finding] = []
    for i, host in enumerate(names):
        where: Path = (*SPEC, "hosts", i)
        if host == "*":
            findings.append(
                error(where, "invalid host *: a service entry names its hosts (e.g. *.example.com)")
            )
            continue
        problem = common.check_wildcard_domain(host)
        if problem is not None:
            findings.append(error(where, problem))
        partial = common.check_partial_wildcard(host)
        if partial is not None and resolution != "DYNAMIC_DNS":
            findings.append(warning(where, f"{partial} (write *.{host.lstrip('*.')})"))
    return findings


def addresses(values: Sequence[str], resolution: str) -> list[Finding]:
    findings: list[Finding] = []
    for i, address in enumerate(values):
        problem = common.check_ip_subnet(address)
        if problem is not None:
            findings.append(error((*SPEC, "addresses", i), problem))
    if any("/" in a for a in values) and resolution not in ("NONE", "STATIC"):
        findings.append(
            error(
                (*SPEC, "addresses"),
                f"CIDR addresses are allowed only for NONE/STATIC resolution types, not "
                f"{resolution}",
            )
        )
    return findings


def ports(spec: m.ServiceEntry, resolution: str, labels: dict[str, str]) -> list[Finding]:
    findings: list[Finding] = []
    names: set[str] = set()
    numbers: set[int] = set()
    auto_allocated = (
        resolution != "NONE"
        and labels.get(AUTOALLOCATE_LABEL, "").lower() != "false"
        and not spec.addresses
    )
    for i, port in enumerate(spec.ports or ()):
        where: Path = (*SPEC, "ports", i)
        if port.name in names:
            findings.append(
                error((*where, "name"), f"service entry port name {port.name!r} already defined")
            )
        names.add(port.name)
        if port.number in numbers:
            findings.append(
                error((*where, "number"), f"service entry port {port.number} already defined")
            )
        numbers.add(port.number)
        if not spec.addresses and not auto_allocated and port.protocol in (None, "", "TCP"):
            findings.append(
                warning(
                    where,
                    "addresses are required for ports serving TCP (or unset) protocol when IP "
                    "autoallocation is not enabled",
                )
            )
        problem = common.check_port_name(port.name)
        if problem is not None:
            findings.append(error((*where, "name"), problem))
        problem = common.check_protocol(port.protocol)
        if problem is not None:
            findings.append(error((*where, "protocol"), problem))
    return findings


def resolution_rules(
    spec: m.ServiceEntry, resolution: str, labels: dict[str, str]
) -> list[Finding]:
    port_names = {port.name for port in spec.ports or ()}
    endpoints = spec.endpoints or []
    findings: list[Finding] = []
    if resolution == "NONE":
        if endpoints:
            findings.append(
                error(
                    (*SPEC, "endpoints"),
                    "no endpoints should be provided for resolution type NONE (use STATIC or DNS)",
                )
            )
        if spec.workload_selector is not None:
            findings.append(
                warning(
                    (*SPEC, "workloadSelector"),
                    "workloadSelector should not be set when resolution mode is NONE",
                )
            )
    elif resolution == "STATIC":
        for i, endpoint in enumerate(endpoints):
            findings += workload_entry(
                endpoint, (*SPEC, "endpoints", i), port_names, allow_fqdn=False
            )
    elif resolution in DNS_RESOLUTIONS:
        findings += _dns(spec, resolution, port_names)
    else:
        findings += _dynamic_dns(spec, labels)
    return findings


def _dns(spec: m.ServiceEntry, resolution: str, port_names: Collection[str]) -> list[Finding]:
    findings: list[Finding] = []
    endpoints = spec.endpoints or []
    if not endpoints:
        for i, host in enumerate(spec.hosts):
            problem = common.check_fqdn(host)
            if problem is not None:
                findings.append(
                    error(
                        (*SPEC, "hosts", i),
                        f"hosts must be FQDN or contain only prefix wildcards if no endpoints "
                        f"are provided for resolution mode {resolution}, {problem}",
                    )
                )
                break
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        findings.append(
            error(
                (*SPEC, "endpoints"),
                f"there must only be 0 or 1 endpoint for resolution mode {resolution} "
                "(use DNS for several)",
            )
        )
    for i, endpoint in enumerate(endpoints):
        where: Path = (*SPEC, "endpoints", i)
        address = endpoint.address or ""
        if not common.is_ip_address(address) and common.check_fqdn(address) is not None:
            findings.append(
                error(
                    (*where, "address"),
                    f"endpoint address {address!r} is not a valid FQDN or an IP address",
                )
            )
        findings += common.check_labels(endpoint.labels, (*where, "labels"))
        findings += _endpoint_ports(endpoint, where, port_names)
    if spec.addresses and len(spec.hosts) > 1:
        for i, port in enumerate(spec.ports or ()):
            if common.parse_protocol(port.protocol or "") in common.TCP_PROTOCOLS:
                findings.append(
                    warning(
                        (*SPEC, "ports", i),
                        "service entry can not have more than one host specified simultaneously "
                        "with address and tcp port",
                    )
                )
                break
    return findings


def _dynamic_dns(spec: m.ServiceEntry, labels: dict[str, str]) -> list[Finding]:
    findings: list[Finding] = []
    for i, host in enumerate(spec.hosts):
        if not common.is_wildcarded(host):
            findings.append(
                error(
                    (*SPEC, "hosts", i),
                    f"host must be wildcarded for resolution mode DYNAMIC_DNS (e.g. *.{host})",
                )
            )
    if spec.addresses:
        findings.append(
            error(
                (*SPEC, "addresses"),
                "addresses cannot be set for resolution type DYNAMIC_DNS: HTTP route domains "
                "are generated from the hosts only",
            )
        )
    if spec.endpoints:
        findings.append(
            error(
                (*SPEC, "endpoints"),
                "endpoints cannot be set for resolution type DYNAMIC_DNS: the destination "
                "address comes from the hosts",
            )
        )
    for i, port in enumerate(spec.ports or ()):
        if common.parse_protocol(port.protocol or "") not in DYNAMIC_DNS_PROTOCOLS:
            findings.append(
                error(
                    (*SPEC, "ports", i, "protocol"),
                    "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution "
                    "type DYNAMIC_DNS",
                )
            )
    waypoint = labels.get(USE_WAYPOINT_LABEL, "")
    if spec.location == "MESH_INTERNAL" and waypoint and waypoint.lower() != "none":
        findings.append(
            error(
                (*SPEC, "location"),
                "location MESH_INTERNAL with resolution type DYNAMIC_DNS is not supported when "
                "using waypoints",
            )
        )
    return findings


def multiple_hosts(spec: m.ServiceEntry, resolution: str) -> list[Finding]:
    """Several hosts share a port only when HTTP (Host header) or TLS (SNI) tells them apart."""
    if resolution == "NONE" or len(spec.hosts) < 2:
        return []
    for i, port in enumerate(spec.ports or ()):
        protocol = common.parse_protocol(port.protocol or "")
        if protocol not in common.HTTP_PROTOCOLS and protocol not in common.TLS_PROTOCOLS:
            return [
                error(
                    (*SPEC, "ports", i, "protocol"),
                    "multiple hosts provided with non-HTTP, non-TLS ports: give each host its "
                    "own service entry, or declare the port's protocol (e.g. HTTP, TLS)",
                )
            ]
    return []


# --------------------------------------------------------------------------- endpoints


def workload_entry(
    entry: m.WorkloadEntry, path: Path, port_names: Collection[str] | None, *, allow_fqdn: bool
) -> list[Finding]:
    """Istio's ``validateWorkloadEntry``: an endpoint of a STATIC service entry (``port_names``
    its ports, ``allow_fqdn`` False) or a WorkloadEntry (no ports known, FQDNs allowed)."""
    address = entry.address or ""
    if not address:
        if not entry.network:
            return [error(path, "address is required (or a network)")]
        findings = [warning(path, f"address is unset with network {entry.network!r}")]
    else:
        findings = []
    unix = address.startswith(UNIX_PREFIX)
    if unix:
        problem = common.check_unix_address(address.removeprefix(UNIX_PREFIX))
        if problem is not None:
            findings.append(error((*path, "address"), problem))
        if entry.ports:
            findings.append(
                error((*path, "ports"), f"unix endpoint {address} must not include ports")
            )
    elif address and not common.is_ip_address(address):
        if not allow_fqdn:
            findings.append(
                error(
                    (*path, "address"),
                    f"endpoint address {address!r} is not a valid IP address (resolution STATIC "
                    "takes IP addresses; use DNS for host names)",
                )
            )
        elif common.check_fqdn(address) is not None:
            findings.append(
                error(
                    (*path, "address"),
                    f"endpoint address {address!r} is not a valid FQDN or an IP address",
                )
            )
    findings += _endpoint_ports(entry, path, port_names)
    findings += common.check_labels(entry.labels, (*path, "labels"))
    if unix and port_names is not None and len(port_names) != 1:
        findings.append(error(path, "exactly 1 service port required for unix endpoints"))
    return findings


def _endpoint_ports(
    entry: m.WorkloadEntry, path: Path, port_names: Collection[str] | None
) -> list[Finding]:
    findings: list[Finding] = []
    for name, number in (entry.ports or {}).items():
        where: Path = (*path, "ports", name)
        if port_names is not None and name not in port_names:
            findings.append(
                error(
                    where,
                    f"endpoint port {number} is not defined by the service entry (its port "
                    f"names: {', '.join(sorted(port_names)) or 'none'})",
                )
            )
        for problem in (common.check_port_name(name), common.check_port_number(number)):
            if problem is not None:
                findings.append(error(where, problem))
    return findings
