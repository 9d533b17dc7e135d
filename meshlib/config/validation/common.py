"""Host, name, label, port and exportTo rules that every Istio kind shares.

Each rule is Istio's own (istio/istio ``pkg/config/validation``, ``pkg/config/labels``,
``pkg/config/visibility``, ``pkg/config/protocol``). Scalar checks return an error message, or
``None`` when the value is valid; checks of a whole field return :class:`Finding`\\ s, each with its
path from the document's root.

Regular expressions are matched whole (``re.fullmatch``), as Go matches ``^…$``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Mapping, Sequence

from meshlib.config.source import Path
from meshlib.config.validation.findings import Finding, error, warning

# --------------------------------------------------------------------------- DNS names

DNS1123_LABEL_MAX_LENGTH = 63
DOMAIN_MAX_LENGTH = 255

_DNS1123_LABEL = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
# a wildcard label: "*", or a DNS-1123 label with a leading "*" or "*-"
_WILDCARD_LABEL_RE = re.compile(rf"\*|(?:\*|\*-)?{_DNS1123_LABEL}")


def is_dns1123_label(value: str) -> bool:
    """A DNS (RFC 1123) label: at most 63 letters, digits and ``-``, starting and ending with
    a letter or digit (``reviews``, ``v1``). Istio's rule for subset names, port names,
    namespaces and exportTo entries."""
    return len(value) <= DNS1123_LABEL_MAX_LENGTH and _DNS1123_LABEL_RE.fullmatch(value) is not None


def is_wildcard_dns1123_label(value: str) -> bool:
    """A DNS-1123 label, or ``*``, or a label with a leading ``*`` / ``*-`` (``*foo``)."""
    if len(value) > DNS1123_LABEL_MAX_LENGTH:
        return False
    return _WILDCARD_LABEL_RE.fullmatch(value) is not None


def check_dns1123_preconditions(name: str) -> str | None:
    """Istio's length rules for any domain name: not empty, at most 255 characters."""
    if len(name) > DOMAIN_MAX_LENGTH:
        return f"domain name {name!r} too long (max {DOMAIN_MAX_LENGTH})"
    if not name:
        return "empty domain name not allowed"
    return None


def check_dns1123_labels(domain: str) -> str | None:
    """Each dot-separated label is a DNS-1123 label; the top-level one is not all digits.
    A trailing dot (``istio.io.``) is allowed."""
    parts = domain.split(".")
    top = parts[-1]
    if _is_integer(top):
        return f"domain name {domain!r} invalid (top level domain {top!r} cannot be all-numeric)"
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None
        if not is_dns1123_label(label):
            return f"domain name {domain!r} invalid (label {label!r} invalid)"
    return None


def _is_integer(text: str) -> bool:
    """Go's ``strconv.Atoi`` accepts an optional sign and decimal digits."""
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None


def check_fqdn(name: str) -> str | None:
    """A fully-qualified (or short) DNS name, no wildcard: ``reviews``, ``api.example.com``."""
    return check_dns1123_preconditions(name) or check_dns1123_labels(name)


def check_wildcard_domain(domain: str) -> str | None:
    """A DNS name that may start with a wildcard label: ``*``, ``*.example.com``,
    ``*foo.example.com``; a wildcard anywhere but in the first label is invalid.
    Istio's rule for DestinationRule, ServiceEntry and VirtualService hosts."""
    problem = check_dns1123_preconditions(domain)
    if problem is not None:
        return problem
    first, dot, rest = domain.partition(".")
    if not is_wildcard_dns1123_label(first):
        return f"domain name {domain!r} invalid (label {first!r} invalid)"
    return check_dns1123_labels(rest) if dot else None


def check_partial_wildcard(host: str) -> str | None:
    """A wildcard host is ``*`` or starts with ``*.``; ``*foo.com`` is a partial wildcard."""
    if "*" in host and len(host) != 1 and not host.startswith("*."):
        return f"partial wildcard {host!r} not allowed"
    return None


def is_wildcarded(host: str) -> bool:
    """Istio's ``host.Name.IsWildCarded``: the host starts with ``*``."""
    return host.startswith("*")


def hosts_match(a: str, b: str) -> bool:
    """Istio's ``host.Name.Matches``: the two hosts have a name in common (``*.bar`` and
    ``*.foo.bar``, ``*.bar`` and ``a.bar``, or the same name)."""
    if is_wildcarded(a) and is_wildcarded(b):
        shorter, longer = (a, b) if len(a) < len(b) else (b, a)
        return longer[1:].endswith(shorter[1:])
    if is_wildcarded(a):
        return b.endswith(a[1:])
    if is_wildcarded(b):
        return a.endswith(b[1:])
    return a == b


def host_subset_of(host: str, other: str) -> bool:
    """Istio's ``host.Name.SubsetOf``: every name ``host`` stands for is one of ``other``'s."""
    if is_wildcarded(host):
        return is_wildcarded(other) and len(host) >= len(other) and host[1:].endswith(other[1:])
    if is_wildcarded(other):
        return host.endswith(other[1:])
    return host == other


def check_namespace_slash_hostname(host: str, *, gateway: bool) -> list[str]:
    """A ``namespace/dnsName`` host as Sidecar egress and Gateway servers write them.

    The namespace is ``*``, ``.`` or a DNS-1123 label (a Sidecar may also prefix it with ``~``);
    the name is an FQDN or a wildcard (``*``, ``*.example.com``), never a short name or a partial
    wildcard. A Gateway may omit the namespace and give an IP address as the name."""
    namespace, slash, name = host.partition("/")
    if not slash:
        if gateway:
            return _check_slash_hostname_part(host, gateway=True)
        return ["host must be of form namespace/dnsName"]
    problems: list[str] = []
    if not namespace or not name:
        problems.append("config namespace and dnsName in host entry cannot be empty")
    if not gateway:
        bare = namespace.removeprefix("~")
        if bare not in ("", "*", ".") and not is_dns1123_label(bare):
            problems.append(f"invalid namespace value {namespace!r} in sidecar")
    elif namespace not in ("*", ".") and not is_dns1123_label(namespace):
        problems.append(f"invalid namespace value {namespace!r} in gateway")
    problems.extend(_check_slash_hostname_part(name, gateway=gateway))
    return problems


def _check_slash_hostname_part(name: str, *, gateway: bool) -> list[str]:
    problems: list[str] = []
    if name != "*" and "." not in name:
        problems.append("short names (non FQDN) are not allowed")
    domain_problem = check_wildcard_domain(name)
    if domain_problem is not None and not (gateway and is_ip_address(name)):
        problems.append(domain_problem)
    partial = check_partial_wildcard(name)
    if partial is not None:
        problems.append(partial)
    return problems


# --------------------------------------------------------------------------- addresses


def is_ip_address(value: str) -> bool:
    """An IPv4 or IPv6 address as Go's ``netip.ParseAddr`` reads it (an IPv6 zone allowed)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_ip_address(value: str) -> str | None:
    return None if is_ip_address(value) else f"{value} is not a valid IP"


def check_ip_subnet(value: str) -> str | None:
    """An IP address or a CIDR block (``10.0.0.0/8``, ``2001:1::/64``)."""
    if value.count("/") == 1:
        address, _, bits = value.partition("/")
        if not _is_cidr(address, bits):
            return f"{value} is not a valid CIDR block"
        return None
    return check_ip_address(value)


def _is_cidr(address: str, bits: str) -> bool:
    """Go's ``netip.ParsePrefix``: host bits may be set; the prefix length is plain decimal."""
    if "%" in address or not bits.isdigit() or (len(bits) > 1 and bits[0] == "0"):
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return int(bits) <= ip.max_prefixlen


def check_unix_address(path: str) -> str | None:
    """A unix domain socket path: absolute, not a directory, or ``@abstract``."""
    if not path:
        return "unix address must not be empty"
    if path.startswith("@"):
        return None
    if not posixpath.isabs(path) or path.endswith("/"):
        return f"{path} is not an absolute path to a file"
    return None


# --------------------------------------------------------------------------- ports, protocols

PROTOCOLS: dict[str, str] = {
    "tcp": "TCP",
    "udp": "UDP",
    "grpc": "GRPC",
    "grpc-web": "GRPC-Web",
    "http": "HTTP",
    "http_proxy": "HTTP_PROXY",
    "http2": "HTTP2",
    "https": "HTTPS",
    "tls": "TLS",
    "mongo": "Mongo",
    "redis": "Redis",
    "mysql": "MySQL",
}
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web"})
TCP_PROTOCOLS = frozenset({"TCP", "HTTPS", "TLS", "Mongo", "Redis", "MySQL"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})


def parse_protocol(value: str) -> str | None:
    """A port's protocol as Istio reads it (case-insensitive), or None if Istio does not know it."""
    return PROTOCOLS.get(value.lower())


def check_protocol(value: str | None) -> str | None:
    """A known protocol name; empty or unset means "detect" and is valid."""
    if value and parse_protocol(value) is None:
        known = ", ".join(sorted(set(PROTOCOLS.values())))
        return f"unsupported protocol: {value} (use one of {known})"
    return None


def check_port_number(number: int) -> str | None:
    if 1 <= number <= 65535:
        return None
    return f"port number {number} must be in the range 1..65535"


def check_port_name(name: str | None) -> str | None:
    """A port name is a DNS-1123 label (``http``, ``grpc-web``), and Istio requires one."""
    if name is None or not is_dns1123_label(name):
        return (
            f"invalid port name: {name or ''!r} (a DNS-1123 label: lowercase letters, "
            "digits and '-', e.g. 'http')"
        )
    return None


# --------------------------------------------------------------------------- labels

_QUALIFIED_NAME = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS_NAME_PREFIX = rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*/"
_LABEL_KEY_RE = re.compile(rf"({_DNS_NAME_PREFIX})?({_QUALIFIED_NAME})")
_LABEL_VALUE_RE = re.compile(rf"(?:{_QUALIFIED_NAME})?")
_DNS_NAME_PREFIX_MAX_LENGTH = 253


def check_label_key(key: str) -> str | None:
    """A Kubernetes label name: an optional DNS prefix and ``/``, then a name of at most 63
    letters, digits, ``-``, ``_`` and ``.`` that starts and ends with a letter or digit."""
    match = _LABEL_KEY_RE.fullmatch(key)
    if match is None:
        return f"invalid label key: {key!r}"
    prefix, name = match.group(1), match.group(2)
    if prefix and len(prefix) - 1 > _DNS_NAME_PREFIX_MAX_LENGTH:
        return f"invalid label key: {key!r} (DNS prefix is too long)"
    if len(name) > DNS1123_LABEL_MAX_LENGTH:
        return f"invalid label key: {key!r} (name is too long)"
    return None


def check_label_value(value: str) -> str | None:
    """A label value: empty, or letters, digits, ``-``, ``_`` and ``.`` that start and end with
    a letter or digit."""
    if _LABEL_VALUE_RE.fullmatch(value) is None:
        return f"invalid label value: {value!r}"
    return None


def check_labels(labels: Mapping[str, str] | None, path: Path) -> list[Finding]:
    """Istio's ``labels.Instance.Validate``: every key and value is a valid Kubernetes label."""
    findings: list[Finding] = []
    for key, value in (labels or {}).items():
        for problem in (check_label_key(key), check_label_value(value)):
            if problem is not None:
                findings.append(error((*path, key), problem))
    return findings


def check_selector_labels(
    labels: Mapping[str, str] | None, path: Path, *, field: str
) -> list[Finding]:
    """A workload selector's labels: no empty key, no ``*`` in a key or value; a selector with
    no labels selects every workload in the namespace, which Istio warns about.

    ``path`` is the selector's own path; ``field`` names its labels field (``matchLabels`` in
    DestinationRule and the security kinds, ``labels`` in ServiceEntry and Sidecar)."""
    findings: list[Finding] = []
    for key, value in (labels or {}).items():
        where = (*path, field, key)
        if key == "":
            findings.append(error(where, f"empty key is not supported in selector: '={value}'"))
        if "*" in key or "*" in value:
            findings.append(error(where, f"wildcard is not supported in selector: '{key}={value}'"))
    if not labels:
        findings.append(
            warning(
                path,
                f"workload selector specified without labels: it selects every workload of "
                f"the namespace (give {field})",
            )
        )
    return findings


# --------------------------------------------------------------------------- exportTo

PRIVATE = "."
PUBLIC = "*"
NONE = "~"


def check_export_to_value(value: str) -> str | None:
    """One exportTo entry of a kind other than ServiceEntry: ``.``, ``*`` or a namespace name."""
    if value in (PRIVATE, PUBLIC):
        return None
    if value == NONE:
        return "exportTo ~ (none) is not allowed for Istio configuration objects"
    if not is_dns1123_label(value):
        return (
            f"{value!r}: only ., *, or a valid DNS 1123 label (a namespace name) is allowed "
            "as exportTo entry"
        )
    return None


def check_export_to(
    namespace: str,
    export_to: Sequence[str] | None,
    path: Path,
    *,
    service_entry: bool = False,
    selects_workloads: bool = False,
) -> list[Finding]:
    """Istio's ``validateExportTo``: each entry is ``.`` (this namespace), ``*`` (every
    namespace), a namespace name, or for a ServiceEntry ``~`` (no namespace); no duplicates
    (``.`` counts as ``namespace``); ``*`` and ``~`` stand alone. A DestinationRule with a
    workload selector (``selects_workloads``) exports to its own namespace only."""
    if not export_to:
        return []
    findings: list[Finding] = []
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        key = namespace if entry == PRIVATE else entry
        where = (*path, i)
        if key in seen:
            if key != entry:
                message = f"duplicate entries in exportTo: . and current namespace {namespace}"
            else:
                message = f"duplicate entries in exportTo for entry {entry}"
            findings.append(error(where, message))
            continue
        if service_entry and entry == NONE:
            seen.add(key)
            continue
        problem = check_export_to_value(key)
        if problem is not None:
            findings.append(error(where, problem))
        else:
            seen.add(key)
    if selects_workloads and seen:
        if namespace not in seen:
            findings.append(
                error(
                    path,
                    "destination rule with workload selector cannot have exportTo beyond "
                    "current namespace (write exportTo: ['.'])",
                )
            )
        elif len(seen) > 1:
            findings.append(
                error(
                    path,
                    "destination rule with workload selector cannot have multiple entries in "
                    "exportTo (write exportTo: ['.'])",
                )
            )
    if PUBLIC in seen and len(export_to) > 1:
        findings.append(
            error(
                path,
                "cannot have both public (*) and non-public exportTo values for a resource "
                "(* alone exports everywhere)",
            )
        )
    if NONE in seen and len(export_to) > 1:
        findings.append(
            error(path, "cannot export service entry to no one (~) and someone (~ stands alone)")
        )
    return findings


# --------------------------------------------------------------------------- durations


def check_duration(seconds: float) -> str | None:
    """Istio's ``ValidateDuration``: at least 1ms, in whole milliseconds."""
    if seconds < 0.001:
        return "duration must be greater than 1ms"
    millis = seconds * 1000
    if abs(round(millis) - millis) > 1e-6:
        return "only durations to ms precision are supported"
    return None
