"""Istio's validation of a destination rule (istio/istio ``ValidateDestinationRule`` and the
CRD schema's rules), after the model has checked its shape."""

from __future__ import annotations

from collections.abc import Sequence

from meshlib.balancing import is_prime
from meshlib.config import model as m
from meshlib.config.source import Path
from meshlib.config.validation import common
from meshlib.config.validation.findings import Finding, error, warning

SPEC: Path = ("spec",)

#: Kubernetes topology labels that ``failover`` already orders (region, zone, subzone).
TOPOLOGY_LABELS = frozenset(
    {"topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"}
)
MAGLEV_TABLE_SIZE_LIMIT = 5000011
CONFIGMAP_CREDENTIAL = "configmap://"


def check(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    """Every finding of Istio's validation of one DestinationRule."""
    assert isinstance(spec, m.DestinationRule)
    namespace = metadata.namespace or common.PRIVATE
    findings: list[Finding] = []
    problem = common.check_wildcard_domain(spec.host)
    if problem is not None:
        findings.append(error((*SPEC, "host"), f"{problem}: write a service name or FQDN"))
    if spec.traffic_policy is not None:
        findings += traffic_policy(spec.traffic_policy, (*SPEC, "trafficPolicy"), namespace)
    findings += subsets(spec.subsets or (), namespace)
    findings += common.check_export_to(
        namespace,
        spec.export_to,
        (*SPEC, "exportTo"),
        selects_workloads=spec.workload_selector is not None,
    )
    if spec.workload_selector is not None:
        findings += common.check_selector_labels(
            spec.workload_selector.match_labels,
            (*SPEC, "workloadSelector"),
            field="matchLabels",
        )
    return findings


def subsets(entries: Sequence[m.Subset], namespace: str) -> list[Finding]:
    findings: list[Finding] = []
    seen: set[str] = set()
    for i, subset in enumerate(entries):
        path: Path = (*SPEC, "subsets", i)
        if subset.name in seen:
            findings.append(
                error((*path, "name"), f"duplicate subset names: {subset.name} (names are unique)")
            )
        seen.add(subset.name)
        if not common.is_dns1123_label(subset.name):
            findings.append(
                error(
                    (*path, "name"),
                    f"subset name is invalid: {subset.name!r} (a DNS-1123 label: lowercase "
                    "letters, digits and '-', e.g. 'v1')",
                )
            )
        findings += common.check_labels(subset.labels, (*path, "labels"))
        if subset.traffic_policy is not None:
            findings += traffic_policy(subset.traffic_policy, (*path, "trafficPolicy"), namespace)
    return findings


# --------------------------------------------------------------------------- traffic policy


def traffic_policy(policy: m.TrafficPolicy, path: Path, namespace: str) -> list[Finding]:
    """Istio's ``validateTrafficPolicy``: not empty, then each of its settings."""
    if all(value is None for value in dict(policy).values()):
        return [
            error(
                path,
                "traffic policy must have at least one field (loadBalancer, connectionPool, "
                "outlierDetection, tls, portLevelSettings, tunnel, proxyProtocol or "
                "retryBudget): remove it or fill it in",
            )
        ]
    if policy.tunnel is not None and policy.proxy_protocol is not None:
        return [error(path, "tunnel and proxyProtocol must not be set together: keep one")]
    findings = outlier_detection(policy.outlier_detection, (*path, "outlierDetection"))
    findings += connection_pool(policy.connection_pool, (*path, "connectionPool"))
    findings += load_balancer(
        policy.load_balancer, policy.outlier_detection, (*path, "loadBalancer")
    )
    findings += client_tls(policy.tls, (*path, "tls"), namespace)
    findings += port_level_settings(
        policy.port_level_settings or (), (*path, "portLevelSettings"), namespace
    )
    findings += tunnel(policy.tunnel, (*path, "tunnel"))
    return findings


def port_level_settings(
    levels: Sequence[m.PortTrafficPolicy], path: Path, namespace: str
) -> list[Finding]:
    findings: list[Finding] = []
    for i, level in enumerate(levels):
        where: Path = (*path, i)
        if level.port is None:
            findings.append(
                error(where, "portTrafficPolicy must have valid port: add port: {number: N}")
            )
        settings = (level.outlier_detection, level.connection_pool, level.load_balancer, level.tls)
        if all(value is None for value in settings):
            findings.append(
                error(
                    where,
                    "port traffic policy must have at least one field (loadBalancer, "
                    "connectionPool, outlierDetection or tls)",
                )
            )
            continue
        findings += outlier_detection(level.outlier_detection, (*where, "outlierDetection"))
        findings += connection_pool(level.connection_pool, (*where, "connectionPool"))
        findings += load_balancer(
            level.load_balancer, level.outlier_detection, (*where, "loadBalancer")
        )
        findings += client_tls(level.tls, (*where, "tls"), namespace)
    return findings


def tunnel(settings: m.TunnelSettings | None, path: Path) -> list[Finding]:
    if settings is None:
        return []
    host = settings.target_host
    if common.check_fqdn(host) is not None and not common.is_ip_address(host):
        return [
            error(
                (*path, "targetHost"),
                f"tunnel target host must be valid FQDN or IP address, not {host!r}",
            )
        ]
    return []


# --------------------------------------------------------------------------- outlier detection


def outlier_detection(outlier: m.OutlierDetection | None, path: Path) -> list[Finding]:
    if outlier is None:
        return []
    findings: list[Finding] = []
    if outlier.consecutive_errors:
        findings.append(
            warning(
                (*path, "consecutiveErrors"),
                "outlier detection consecutive errors is deprecated, use "
                "consecutiveGatewayErrors or consecutive5xxErrors instead",
            )
        )
    if not outlier.split_external_local_origin_errors and outlier.consecutive_local_origin_failures:
        findings.append(
            error(
                (*path, "consecutiveLocalOriginFailures"),
                "outlier detection consecutive local origin failures is specified, but split "
                "external local origin errors is set to false: add "
                "splitExternalLocalOriginErrors: true",
            )
        )
    return findings


# --------------------------------------------------------------------------- connection pool


def connection_pool(pool: m.ConnectionPoolSettings | None, path: Path) -> list[Finding]:
    if pool is None:
        return []
    if pool.http is None and pool.tcp is None:
        return [error(path, "connection pool must have at least one field (tcp or http)")]
    findings: list[Finding] = []
    http = pool.http
    if http is not None:
        if http.h2_upgrade_policy == "UPGRADE" and http.use_client_protocol:
            findings.append(
                error(
                    (*path, "http", "useClientProtocol"),
                    "use client protocol must not be true when h2UpgradePolicy is UPGRADE",
                )
            )
        keepalive = http.http2_keep_alive
        if keepalive is not None:
            for field, value in (("interval", keepalive.interval), ("timeout", keepalive.timeout)):
                if value is None:
                    findings.append(
                        error(
                            (*path, "http", "http2KeepAlive"),
                            f"http2 keepalive {field} is required (e.g. {field}: 30s)",
                        )
                    )
    tcp = pool.tcp
    if tcp is not None and tcp.idle_timeout:  # 0s turns the idle timeout off
        problem = common.check_duration(tcp.idle_timeout)
        if problem is not None:
            findings.append(error((*path, "tcp", "idleTimeout"), problem))
    return findings


# --------------------------------------------------------------------------- load balancer


def load_balancer(
    lb: m.LoadBalancerSettings | None, outlier: m.OutlierDetection | None, path: Path
) -> list[Finding]:
    if lb is None:
        return []
    findings: list[Finding] = []
    if lb.consistent_hash is not None:
        findings += consistent_hash(lb.consistent_hash, (*path, "consistentHash"))
    if lb.locality_lb_setting is not None and lb.zone_aware_lb_setting is not None:
        findings.append(
            error(path, "only one of localityLbSetting and zoneAwareLbSetting can be set")
        )
    if lb.locality_lb_setting is not None:
        findings += locality_lb_setting(
            lb.locality_lb_setting, outlier, (*path, "localityLbSetting")
        )
    if lb.zone_aware_lb_setting is not None:
        findings += zone_aware_lb_setting(
            lb.zone_aware_lb_setting, outlier, (*path, "zoneAwareLbSetting")
        )
    return findings


def consistent_hash(lb: m.ConsistentHashLB, path: Path) -> list[Finding]:
    findings: list[Finding] = []
    cookie = lb.http_cookie
    if cookie is not None:
        if not cookie.name:
            findings.append(error((*path, "httpCookie", "name"), "name required for HttpCookie"))
        names: set[str] = set()
        for i, attribute in enumerate(cookie.attributes or ()):
            where: Path = (*path, "httpCookie", "attributes", i, "name")
            if not attribute.name:
                findings.append(error(where, "cookie attribute name cannot be empty"))
            elif attribute.name in names:
                findings.append(error(where, f"duplicate cookie attribute name: {attribute.name}"))
            names.add(attribute.name)
    if lb.minimum_ring_size:
        findings.append(
            warning(
                (*path, "minimumRingSize"),
                "consistent hash minimumRingSize is deprecated, use ringHash: "
                "{minimumRingSize: N} instead",
            )
        )
        if lb.ring_hash is not None or lb.maglev is not None:
            findings.append(
                error(
                    (*path, "minimumRingSize"),
                    "only one of minimumRingSize or maglev/ringHash can be specified",
                )
            )
    if lb.maglev is not None:
        size = lb.maglev.table_size or 0
        where = (*path, "maglev", "tableSize")
        if size == 0:
            findings.append(error(where, "tableSize must be set for maglev (e.g. 65537)"))
        if size >= MAGLEV_TABLE_SIZE_LIMIT:
            findings.append(
                error(where, f"tableSize must be less than {MAGLEV_TABLE_SIZE_LIMIT} for maglev")
            )
        if not is_prime(size):
            findings.append(
                error(
                    where, f"tableSize must be a prime number for maglev (e.g. 65537), not {size}"
                )
            )
    return findings


def locality_lb_setting(
    lb: m.LocalityLoadBalancerSetting, outlier: m.OutlierDetection | None, path: Path
) -> list[Finding]:
    """Istio's ``ValidateLocalityLbSetting``."""
    distribute = lb.distribute or []
    failover = lb.failover or []
    priority = lb.failover_priority or []
    if distribute and failover:
        return [error(path, "can not simultaneously specify 'distribute' and 'failover'")]
    if failover:
        for i, label in enumerate(priority):
            if label in TOPOLOGY_LABELS:
                return [
                    error(
                        (*path, "failoverPriority", i),
                        f"can not simultaneously set 'failover' and topology label '{label}' "
                        "in 'failoverPriority'",
                    )
                ]
    findings: list[Finding] = []
    for i, entry in enumerate(distribute):
        where: Path = (*path, "distribute", i)
        weights = list(entry.to.values())
        if any(not 1 <= weight <= 100 for weight in weights):
            return [*findings, error((*where, "to"), "locality weight must be in range [1, 100]")]
        if sum(weights) != 100:
            return [
                *findings,
                error((*where, "to"), f"total locality weight {sum(weights)} != 100"),
            ]
        problem = check_localities(list(entry.to))
        if problem is not None:
            findings.append(error((*where, "to"), problem))
    problem = check_localities([entry.from_ for entry in distribute])
    if problem is not None:
        findings.append(error((*path, "distribute"), problem))
    findings += _failover(failover, priority, outlier, path, "locality lb")
    return findings


def zone_aware_lb_setting(
    lb: m.ZoneAwareLoadBalancerSetting, outlier: m.OutlierDetection | None, path: Path
) -> list[Finding]:
    """Istio's ``ValidateZoneAwareLbSetting``: region, zone and subzone routing are automatic."""
    findings: list[Finding] = []
    priority = lb.failover_priority or []
    for i, label in enumerate(priority):
        if label in TOPOLOGY_LABELS:
            findings.append(
                error(
                    (*path, "failoverPriority", i),
                    f"'failoverPriority' for zone aware lb must not use topology label "
                    f"'{label}'; region- and zone-level routing are handled automatically",
                )
            )
    findings += _failover(lb.failover or [], priority, outlier, path, "zone aware lb")
    return findings


def _failover(
    failover: Sequence[m.LocalityFailover],
    priority: Sequence[str],
    outlier: m.OutlierDetection | None,
    path: Path,
    what: str,
) -> list[Finding]:
    findings: list[Finding] = []
    if (failover or priority) and outlier is None:
        findings.append(
            warning(
                path,
                "outlier detection policy must be provided for failover: add "
                "outlierDetection to the traffic policy",
            )
        )
    for i, entry in enumerate(failover):
        where: Path = (*path, "failover", i)
        if entry.from_ == entry.to:
            findings.append(
                error(where, f"{what} failover settings must specify different regions")
            )
        if "/" in entry.from_ or "/" in entry.to:
            findings.append(error(where, f"{what} failover only specify region (no '/')"))
        if "*" in entry.from_ or "*" in entry.to:
            findings.append(error(where, f"{what} failover region should not contain '*' wildcard"))
    return findings


def check_localities(localities: Sequence[str]) -> str | None:
    """Istio's ``validateLocalities``: ``region[/zone[/subzone]]`` with at most one ``*`` at the
    end, no empty part, and no locality covered by an earlier one."""
    seen: dict[str, dict[str, set[str]]] = {}
    for locality in localities:
        stars = locality.count("*")
        if stars and (stars > 1 or not locality.endswith("*")):
            return (
                f"locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            )
        if "*" in seen:
            return f"locality {locality} overlap with previous specified ones"
        parts = locality.split("/", 2)
        if any(part == "" for part in parts):
            return f"locality {locality} must not contain empty region/zone/subzone info"
        region = parts[0]
        zones = seen.get(region)
        if len(parts) == 1:
            if zones is not None:
                return f"locality {locality} overlap with previous specified ones"
            seen[region] = {"*": {"*"}}
            continue
        zone = parts[1]
        if zones is None:
            seen[region] = {zone: {"*"} if len(parts) == 2 else {parts[2]}}
            continue
        if "*" in zones:
            return f"locality {locality} overlap with previous specified ones"
        if len(parts) == 2:
            if zone in zones:
                return f"locality {locality} overlap with previous specified ones"
            zones[zone] = {"*"}
            continue
        subzones = zones.get(zone)
        if subzones is None:
            zones[zone] = {parts[2]}
        elif "*" in subzones or parts[2] in subzones:
            return f"locality {locality} overlap with previous specified ones"
        else:
            subzones.add(parts[2])
    return None


# --------------------------------------------------------------------------- TLS


def client_tls(tls: m.ClientTLSSettings | None, path: Path, namespace: str) -> list[Finding]:
    """Istio's ``ValidateTLS`` of a client's TLS settings."""
    if tls is None:
        return []
    findings: list[Finding] = []
    credential = tls.credential_name or ""
    if credential.startswith(CONFIGMAP_CREDENTIAL):
        problem = _configmap_credential(credential, namespace)
        if problem is not None:
            findings.append(error((*path, "credentialName"), problem))
    if tls.insecure_skip_verify:
        if tls.mode == "SIMPLE" and (tls.ca_certificates or credential or tls.subject_alt_names):
            findings.append(
                error(
                    (*path, "insecureSkipVerify"),
                    "cannot specify caCertificates or credentialName or subjectAltNames when "
                    "insecureSkipVerify is set true",
                )
            )
        if tls.mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names):
            findings.append(
                error(
                    (*path, "insecureSkipVerify"),
                    "cannot specify caCertificates or subjectAltNames when insecureSkipVerify "
                    "is set true",
                )
            )
    if tls.mode in ("SIMPLE", "MUTUAL") and credential:
        given = [
            name
            for name, value in (
                ("clientCertificate", tls.client_certificate),
                ("privateKey", tls.private_key),
                ("caCertificates", tls.ca_certificates),
                ("caCrl", tls.ca_crl),
            )
            if value
        ]
        if given:
            findings.append(
                error(
                    (*path, given[0]),
                    f"cannot specify client certificates or CA certificate or CA CRL if "
                    f"credentialName is set (remove {', '.join(given)}: the credential holds them)",
                )
            )
        return findings
    if tls.mode == "MUTUAL":
        if not tls.client_certificate:
            findings.append(
                error(path, "client certificate required for mutual tls (clientCertificate)")
            )
        if not tls.private_key:
            findings.append(error(path, "private key required for mutual tls (privateKey)"))
    return findings


def _configmap_credential(credential: str, namespace: str) -> str | None:
    """``configmap://namespace/name``, in the rule's own namespace."""
    parts = credential.removeprefix(CONFIGMAP_CREDENTIAL).split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return (
            f"invalid configmap:// credentialName {credential!r}: expected namespace and name "
            f"(configmap://{namespace}/NAME)"
        )
    if parts[0] != namespace:
        return (
            "invalid configmap:// credentialName: namespace must match the configuration "
            f"namespace {namespace!r}"
        )
    return None
