"""Istio's validation of its security kinds (istio/istio ``ValidateAuthorizationPolicy``,
``ValidatePeerAuthentication``, ``ValidateRequestAuthentication``, the helpers of
``pkg/config/security``, and the CEL and schema rules of istio/api's CRDs), after the model of
``meshlib.config.security`` has checked the shape.

One difference is meshlib's own: an AuthorizationPolicy with ``action: CUSTOM`` (an external
authorizer, ``ext_authz``) is refused, as meshlib has no external authorizers to call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from meshlib.config import model as m
from meshlib.config import security as s
from meshlib.config.source import Path
from meshlib.config.validation import common
from meshlib.config.validation.findings import Finding, error, warning

SPEC: Path = ("spec",)
DRY_RUN = "istio.io/dry-run"
#: Annotations Istio's webhook refuses on any resource.
INTERNAL_ANNOTATIONS = (
    "internal.istio.io/webhook-always-reject",
    "internal.istio.io/parent-namespace",
    "internal.istio.io/parents",
)

# --------------------------------------------------------------------------- shared rules


def check_metadata(kind: str, spec: Any, metadata: m.Metadata) -> list[Finding]:
    """Istio's ``validateMetadata``: ``istio.io/dry-run`` only on an ALLOW or DENY
    AuthorizationPolicy, with a boolean value; Istio's internal annotations never."""
    findings: list[Finding] = []
    annotations = metadata.annotations or {}
    where: Path = ("metadata", "annotations")
    if DRY_RUN in annotations:
        value = annotations[DRY_RUN]
        if not isinstance(spec, s.AuthorizationPolicy):
            findings.append(
                error(
                    (*where, DRY_RUN),
                    f"{kind} does not support the annotation {DRY_RUN} (only an "
                    "AuthorizationPolicy does): remove it",
                )
            )
        elif (spec.action or "ALLOW") not in ("ALLOW", "DENY"):
            findings.append(
                error(
                    (*where, DRY_RUN),
                    f"the annotation {DRY_RUN} only supports action ALLOW or DENY, "
                    f"not {spec.action}",
                )
            )
        elif value not in _GO_BOOLS:
            findings.append(
                error((*where, DRY_RUN), f"{DRY_RUN} must be true or false, not {value!r}")
            )
    for name in INTERNAL_ANNOTATIONS:
        if name in annotations:
            findings.append(
                error((*where, name), f"the annotation {name} is Istio's own: it may not be set")
            )
    return findings


#: What Go's ``strconv.ParseBool`` reads.
_GO_BOOLS = frozenset(
    {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}
)

#: The kinds a policy's ``targetRef`` may name, by (canonical group, kind): Istio's
#: ``allowedTargetRefs``.
TARGET_KINDS = frozenset(
    {
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    }
)
_GROUP_RE = re.compile(r"|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_KIND_RE = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
MAX_TARGET_REFS = 16


def check_targets(
    selector: m.WorkloadSelector | None,
    target_ref: s.PolicyTargetReference | None,
    target_refs: Sequence[s.PolicyTargetReference] | None,
) -> list[Finding]:
    """``selector``, ``targetRef`` and ``targetRefs``: at most one of them, each valid."""
    findings: list[Finding] = []
    given = [
        name
        for name, value in (
            ("selector", selector),
            ("targetRef", target_ref),
            ("targetRefs", target_refs),
        )
        if value is not None
    ]
    if len(given) > 1:
        findings.append(
            error(
                (*SPEC, given[1]),
                f"only one of targetRefs or selector can be set (got {', '.join(given)})",
            )
        )
    if selector is not None:
        findings += check_selector(selector, (*SPEC, "selector"))
    if target_ref is not None:
        findings += check_target_ref(target_ref, (*SPEC, "targetRef"))
    if target_refs is not None:
        findings += _max_items(target_refs, MAX_TARGET_REFS, (*SPEC, "targetRefs"), "targetRefs")
        for i, ref in enumerate(target_refs):
            findings += check_target_ref(ref, (*SPEC, "targetRefs", i))
    return findings


def _max_items(items: Sequence[Any] | None, limit: int, path: Path, what: str) -> list[Finding]:
    """The CRD's ``maxItems`` on a list: more than ``limit`` items is an error."""
    if items is not None and len(items) > limit:
        return [error(path, f"at most {limit} {what} (CRD maxItems)")]
    return []


def check_selector(selector: m.WorkloadSelector, path: Path) -> list[Finding]:
    """Istio's ``validateWorkloadSelector`` (no empty key, no ``*``; no labels: a warning) and
    the CRD's limit on a label value's length."""
    findings = common.check_selector_labels(selector.match_labels, path, field="matchLabels")
    for key, value in (selector.match_labels or {}).items():
        if len(value) > common.DNS1123_LABEL_MAX_LENGTH:
            findings.append(
                error(
                    (*path, "matchLabels", key),
                    f"label value too long: at most {common.DNS1123_LABEL_MAX_LENGTH} characters",
                )
            )
    return findings


def check_target_ref(ref: s.PolicyTargetReference, path: Path) -> list[Finding]:
    """Istio's ``validatePolicyTargetReference`` and the CRD's patterns: a name, no namespace
    (the policy's own), and a Service, ServiceEntry, Gateway or GatewayClass."""
    findings: list[Finding] = []
    if not ref.name:
        findings.append(error((*path, "name"), "targetRef name must be set"))
    elif len(ref.name) > 253:
        findings.append(error((*path, "name"), "targetRef name too long (at most 253 characters)"))
    if ref.namespace:
        findings.append(
            error(
                (*path, "namespace"),
                "cross namespace referencing is not supported: leave targetRef namespace out "
                "(the policy's own namespace)",
            )
        )
    group = ref.group or ""
    if len(group) > 253 or not _GROUP_RE.fullmatch(group):
        findings.append(error((*path, "group"), f"invalid group {group!r}: a DNS subdomain"))
    if not ref.kind or len(ref.kind) > 63 or not _KIND_RE.fullmatch(ref.kind):
        findings.append(error((*path, "kind"), f"invalid kind {ref.kind!r}"))
    if ((group or "core"), ref.kind) not in TARGET_KINDS:
        findings.append(
            error(
                path,
                f"targetRef must be to a Service (group ''), a ServiceEntry "
                f"(networking.istio.io), or a Gateway or GatewayClass "
                f"(gateway.networking.k8s.io), not {group}/{ref.kind}",
            )
        )
    return findings


# --------------------------------------------------------------------------- value rules


def empty_values(values: Sequence[str] | None, path: Path, name: str) -> list[Finding]:
    """Istio's ``CheckEmptyValues``: no empty string in a list."""
    return [
        error((*path, i), f"empty value not allowed in {name}")
        for i, value in enumerate(values or ())
        if value == ""
    ]


def wildcard_values(values: Sequence[str] | None, path: Path, name: str) -> list[Finding]:
    """Istio's ``CheckWildcardValues``: exact, ``prefix*``, ``*suffix`` or ``*``."""
    findings = empty_values(values, path, name)
    for i, value in enumerate(values or ()):
        count = value.count("*")
        if count > 1:
            findings.append(error((*path, i), f"at most one wildcard is allowed in {value!r}"))
        elif count == 1 and value != "*" and not value.startswith("*") and not value.endswith("*"):
            findings.append(
                error((*path, i), f"wildcard is only allowed at the start or end: {value!r}")
            )
    return findings


def trust_domains(values: Sequence[str] | None, path: Path, name: str) -> list[Finding]:
    """Istio's ``CheckTrustDomainValues``: wildcard values without ``/``."""
    findings = wildcard_values(values, path, name)
    for i, value in enumerate(values or ()):
        if "/" in value:
            findings.append(error((*path, i), f"trust domain must not contain '/': {value!r}"))
    return findings


MAX_SERVICE_ACCOUNTS = 16
MAX_SERVICE_ACCOUNT_LENGTH = 320


def service_accounts(values: Sequence[str] | None, path: Path, name: str) -> list[Finding]:
    """Istio's ``CheckServiceAccount``: at most 16, each ``sa`` or ``namespace/sa``, no
    wildcard, at most 320 characters."""
    values = values or ()
    if len(values) > MAX_SERVICE_ACCOUNTS:
        return [error(path, f"may not have more than {MAX_SERVICE_ACCOUNTS} values in {name}")]
    findings: list[Finding] = []
    for i, value in enumerate(values):
        where = (*path, i)
        if value == "":
            findings.append(error(where, f"empty value not allowed in {name}"))
        elif "*" in value:
            findings.append(error(where, f"wildcard not allowed in {name}: {value!r}"))
        elif value.count("/") > 1:
            findings.append(
                error(
                    where, f"expected 'serviceAccount' or 'namespace/serviceAccount', not {value!r}"
                )
            )
        elif len(value) > MAX_SERVICE_ACCOUNT_LENGTH:
            findings.append(
                error(where, f"at most {MAX_SERVICE_ACCOUNT_LENGTH} characters in {name}")
            )
        else:
            namespace, slash, account = value.partition("/")
            if slash and not namespace:
                findings.append(error(where, f"empty namespace in {value!r}"))
            elif slash and not account:
                findings.append(error(where, f"empty service account in {value!r}"))
    return findings


def ip_blocks(values: Sequence[str] | None, path: Path) -> list[Finding]:
    """Istio's ``ValidateIPs``: each an IP address or a CIDR block."""
    findings: list[Finding] = []
    for i, value in enumerate(values or ()):
        if common.check_ip_subnet(value) is None and value.count("/") <= 1:
            continue
        if "/" in value:
            findings.append(error((*path, i), f"bad CIDR range ({value})"))
        else:
            findings.append(error((*path, i), f"bad IP address ({value})"))
    return findings


def ports(values: Sequence[str] | None, path: Path) -> list[Finding]:
    """Istio's ``ValidatePorts``: each a decimal number 0..65535 (written as a string)."""
    return [
        error((*path, i), f"bad port ({value}): a number from 0 to 65535")
        for i, value in enumerate(values or ())
        if not (value.isascii() and value.isdigit() and int(value) <= 65535)
    ]


MATCH_ONE = "{*}"
MATCH_ANY = "{**}"
#: An RFC 3986 ``pchar`` (Envoy's rule for a literal segment of a path template).
_LITERAL_RE = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")


def path_templates(values: Sequence[str] | None, path: Path) -> list[Finding]:
    """Istio's ``CheckValidPathTemplate``: ``{*}`` and ``{**}`` are whole segments, ``{**}``
    the last operator; no other ``{``/``}``; in a template, every other segment a literal."""
    findings: list[Finding] = []
    for i, value in enumerate(values or ()):
        template = MATCH_ONE in value or MATCH_ANY in value
        found_any = False
        for glob in value.strip("/").split("/"):
            if glob in (MATCH_ONE, MATCH_ANY):
                if found_any:
                    findings.append(
                        error((*path, i), f"{value!r}: {{**}} must be the last operator")
                    )
                    break
                found_any = glob == MATCH_ANY
                continue
            if "{" in glob or "}" in glob:
                findings.append(
                    error(
                        (*path, i),
                        f"{value!r}: '{{' or '}}' outside a path template ({{*}} or {{**}})",
                    )
                )
                break
            if template and not _LITERAL_RE.fullmatch(glob):
                findings.append(
                    error((*path, i), f"{value!r}: segment {glob!r} is not a valid literal")
                )
                break
    return findings


# --------------------------------------------------------------------------- when keys

#: ``when`` keys Istio knows, exactly.
WHEN_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.serviceAccount",
        "source.principal",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
#: ``when`` keys Istio knows by prefix, each ``prefix[name]``.
WHEN_MAP_KEYS = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")


_WHEN_MAP_KEY_FORMS = (
    "request.headers[<name>]",
    "request.auth.claims[<name>]",
    "experimental.envoy.filters.<filter>[<name>]",
)


def _map_key(key: str) -> str | None:
    """Istio's ``validateMapKey``: ``a[b]`` with a non-empty ``b``."""
    open_at = key.find("[")
    if key.endswith("]") and 0 < open_at < len(key) - 2:
        return None
    return f"bad key {key!r}: write it as name[field], e.g. request.headers[x-token]"


def when_attribute(key: str, values: Sequence[str], path: Path) -> list[Finding]:
    """Istio's ``ValidateAttribute`` of a ``when`` key and its values (or notValues)."""
    findings = empty_values(values, path, key)
    if findings:
        return findings
    problem: str | None = None
    if key.startswith("request.headers"):
        problem = _map_key(key)
    elif key in ("source.ip", "remote.ip", "destination.ip"):
        return ip_blocks(values, path)
    elif key == "source.serviceAccount":
        return service_accounts(values, path, key)
    elif key == "source.trustDomain":
        return wildcard_values(values, path, key)
    elif key.startswith("request.auth.claims"):
        problem = _map_key(key)
    elif key == "destination.port":
        return ports(values, path)
    elif key in WHEN_KEYS:
        return []
    elif key.startswith("experimental.envoy.filters."):
        problem = _map_key(key)
    elif key == "destination.namespace":
        problem = f"attribute {key} is replaced by the policy's metadata.namespace"
    elif key.startswith("destination.labels"):
        problem = f"attribute {key} is replaced by the workload selector"
    elif key in ("destination.name", "destination.user"):
        problem = f"deprecated attribute {key}: only supported in v1alpha1"
    else:
        known = ", ".join([*sorted(WHEN_KEYS), *_WHEN_MAP_KEY_FORMS])
        problem = f"unknown attribute: {key} (use one of {known})"
    return [error((*path[:-1], "key"), problem)] if problem else []


# --------------------------------------------------------------------------- AuthorizationPolicy

MAX_RULES = 512
MAX_FROM = 512

_SOURCE_FIELDS = (
    "principals",
    "not_principals",
    "request_principals",
    "not_request_principals",
    "namespaces",
    "not_namespaces",
    "service_accounts",
    "not_service_accounts",
    "ip_blocks",
    "not_ip_blocks",
    "remote_ip_blocks",
    "not_remote_ip_blocks",
    "trust_domains",
    "not_trust_domains",
)
#: Source fields a TCP connection has (the others need HTTP).
_TCP_SOURCE_FIELDS = (
    "principals",
    "not_principals",
    "namespaces",
    "not_namespaces",
    "service_accounts",
    "not_service_accounts",
    "ip_blocks",
    "not_ip_blocks",
    "remote_ip_blocks",
    "not_remote_ip_blocks",
)
_OPERATION_FIELDS = (
    "hosts",
    "not_hosts",
    "ports",
    "not_ports",
    "methods",
    "not_methods",
    "paths",
    "not_paths",
)
#: What ``from.source`` may not use in a CUSTOM policy (the external authorizer sees no peer
#: identity or JWT), and the ``when`` keys likewise.
_CUSTOM_SOURCE_FIELDS = (
    "namespaces",
    "not_namespaces",
    "service_accounts",
    "not_service_accounts",
    "trust_domains",
    "not_trust_domains",
    "principals",
    "not_principals",
    "request_principals",
    "not_request_principals",
)
_CUSTOM_WHEN_KEYS = frozenset(
    {"source.namespace", "source.serviceAccount", "source.trustDomain", "source.principal"}
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def check_authorization_policy(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    """Every finding of Istio's validation of one AuthorizationPolicy."""
    assert isinstance(spec, s.AuthorizationPolicy)
    findings = check_metadata("AuthorizationPolicy", spec, metadata)
    findings += check_targets(spec.selector, spec.target_ref, spec.target_refs)
    action = spec.action or "ALLOW"
    if action == "CUSTOM":
        findings += _custom(spec)
    elif spec.provider is not None:
        findings.append(
            error(
                (*SPEC, "provider"),
                f"provider is only for action CUSTOM, not {action}: remove it",
            )
        )
    if action == "DENY" and not spec.rules:
        findings.append(
            error(
                SPEC,
                "DENY action without rules is meaningless as it will never be triggered: add "
                "an empty rule {} if you want it be triggered for every request",
            )
        )
    findings += _max_items(spec.rules, MAX_RULES, (*SPEC, "rules"), "rules")
    for i, rule in enumerate(spec.rules or ()):
        findings += _rule(rule, (*SPEC, "rules", i), action)
    return findings


def _custom(spec: s.AuthorizationPolicy) -> list[Finding]:
    findings = [
        error(
            (*SPEC, "action"),
            "action CUSTOM delegates to an external authorizer, which meshlib does not support "
            "(it has no ext_authz client): use ALLOW, DENY or AUDIT",
        )
    ]
    if spec.rules is None:
        findings.append(
            error(
                SPEC,
                "CUSTOM action without rules is meaningless as it will never be triggered: add "
                "an empty rule {} if you want it be triggered for every request",
            )
        )
    elif spec.provider is None or not spec.provider.name:
        findings.append(error((*SPEC, "provider", "name"), "provider.name must not be empty"))
    for i, rule in enumerate(spec.rules or ()):
        at: Path = (*SPEC, "rules", i)
        for j, entry in enumerate(rule.from_ or ()):
            source = entry.source
            for name in _CUSTOM_SOURCE_FIELDS:
                if source is not None and getattr(source, name):
                    findings.append(
                        error(
                            (*at, "from", j, "source", _camel(name)),
                            f"{_camel(name)} is not supported with action CUSTOM",
                        )
                    )
        for j, condition in enumerate(rule.when or ()):
            key = condition.key
            if key in _CUSTOM_WHEN_KEYS or key.startswith("request.auth."):
                findings.append(
                    error((*at, "when", j, "key"), f"{key} is not supported with action CUSTOM")
                )
    return findings


def _rule(rule: s.Rule, at: Path, action: str) -> list[Finding]:
    findings: list[Finding] = []
    if rule.from_ is not None and not rule.from_:
        findings.append(error((*at, "from"), "from must not be empty (leave it out: any source)"))
    findings += _max_items(rule.from_, MAX_FROM, (*at, "from"), "from entries")
    tcp_in_from = tcp_in_to = from_exists = to_exists = False
    for j, entry in enumerate(rule.from_ or ()):
        where: Path = (*at, "from", j, "source")
        source = entry.source
        if source is None:
            findings.append(error(where, "from.source must not be empty (a from entry needs one)"))
            continue
        from_exists = True
        findings += _source(source, where)
        if any(getattr(source, name) is not None for name in _TCP_SOURCE_FIELDS):
            tcp_in_from = True
    if rule.to is not None and not rule.to:
        findings.append(error((*at, "to"), "to must not be empty (leave it out: any operation)"))
    for j, target in enumerate(rule.to or ()):
        where = (*at, "to", j, "operation")
        operation = target.operation
        if operation is None:
            findings.append(error(where, "to.operation must not be empty (a to entry needs one)"))
            continue
        to_exists = True
        findings += _operation(operation, where)
        if operation.ports is not None or operation.not_ports is not None:
            tcp_in_to = True
    for j, condition in enumerate(rule.when or ()):
        findings += _condition(condition, (*at, "when", j))
    http_only = (from_exists and not to_exists and not tcp_in_from) or (to_exists and not tcp_in_to)
    if http_only and action == "DENY":
        findings.append(
            warning(
                at,
                "this DENY rule uses only HTTP attributes: it denies all traffic to TCP ports "
                "under its scope; it is recommended to explicitly specify the port",
            )
        )
    return findings


def _source(source: s.Source, at: Path) -> list[Finding]:
    findings: list[Finding] = []
    identities = source.principals or source.not_principals
    identities = identities or source.namespaces or source.not_namespaces
    if identities and (source.service_accounts or source.not_service_accounts):
        findings.append(error(at, "cannot set serviceAccounts with namespaces or principals"))
    if not any(getattr(source, name) for name in _SOURCE_FIELDS):
        findings.append(error(at, "from.source must not be empty"))
    for name in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
        findings += ip_blocks(getattr(source, name), (*at, _camel(name)))
    for name in (
        "principals",
        "request_principals",
        "namespaces",
        "ip_blocks",
        "remote_ip_blocks",
        "not_principals",
        "not_request_principals",
        "not_namespaces",
        "not_ip_blocks",
        "not_remote_ip_blocks",
    ):
        findings += empty_values(getattr(source, name), (*at, _camel(name)), _camel(name))
    for name in ("service_accounts", "not_service_accounts"):
        findings += service_accounts(getattr(source, name), (*at, _camel(name)), _camel(name))
    for name in ("trust_domains", "not_trust_domains"):
        findings += trust_domains(getattr(source, name), (*at, _camel(name)), _camel(name))
    return _unique(findings)


def _operation(operation: s.Operation, at: Path) -> list[Finding]:
    findings: list[Finding] = []
    if not any(getattr(operation, name) for name in _OPERATION_FIELDS):
        findings.append(error(at, "to.operation must not be empty"))
    findings += ports(operation.ports, (*at, "ports"))
    findings += ports(operation.not_ports, (*at, "notPorts"))
    for name in _OPERATION_FIELDS:
        findings += empty_values(getattr(operation, name), (*at, _camel(name)), _camel(name))
    findings += path_templates(operation.paths, (*at, "paths"))
    findings += path_templates(operation.not_paths, (*at, "notPaths"))
    return _unique(findings)


def _condition(condition: s.Condition, at: Path) -> list[Finding]:
    key = condition.key
    if key == "":
        return [error((*at, "key"), "key must not be empty")]
    if not condition.values and not condition.not_values:
        return [error(at, f"at least one of values or notValues must be set for key {key}")]
    findings = when_attribute(key, condition.values or (), (*at, "values"))
    findings += when_attribute(key, condition.not_values or (), (*at, "notValues"))
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    """Each finding once (a field checked by two of Istio's rules may fail both alike)."""
    return list(dict.fromkeys(findings))


# --------------------------------------------------------------------------- PeerAuthentication


def check_peer_authentication(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    """Every finding of Istio's validation of one PeerAuthentication."""
    assert isinstance(spec, s.PeerAuthentication)
    findings = check_metadata("PeerAuthentication", spec, metadata)
    where: Path = (*SPEC, "portLevelMtls")
    ports_given = spec.port_level_mtls
    selects = spec.selector is not None and bool(spec.selector.match_labels)
    if ports_given and not selects:
        findings.append(
            error(
                where,
                "portLevelMtls requires a selector with matchLabels: a mesh- or namespace-wide "
                "peer authentication cannot have port level mTLS",
            )
        )
    if ports_given is not None and not ports_given:
        findings.append(error(where, "portLevelMtls, if given, must have at least one port"))
    for port in ports_given or {}:
        if not 0 < port <= 65535:
            findings.append(error((*where, str(port)), "port must be in the range 1..65535"))
    if spec.selector is not None:
        findings += check_selector(spec.selector, (*SPEC, "selector"))
    return findings


# --------------------------------------------------------------------------- RequestAuthentication

MAX_JWT_RULES = 4096
MAX_SPACE_DELIMITED_CLAIMS = 64
MAX_JWKS_URI_LENGTH = 2048
#: Go's ``url.Parse`` scheme: a letter, then letters, digits, ``+``, ``-`` and ``.``.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_STRICT_HEADER_RE = re.compile(r"[-_A-Za-z0-9]+")


def check_request_authentication(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    """Every finding of Istio's validation of one RequestAuthentication."""
    assert isinstance(spec, s.RequestAuthentication)
    findings = check_metadata("RequestAuthentication", spec, metadata)
    findings += check_targets(spec.selector, spec.target_ref, spec.target_refs)
    rules = spec.jwt_rules or ()
    findings += _max_items(rules, MAX_JWT_RULES, (*SPEC, "jwtRules"), "jwtRules")
    for i, rule in enumerate(rules):
        findings += _jwt_rule(rule, (*SPEC, "jwtRules", i))
    return findings


def _jwt_rule(rule: s.JWTRule, at: Path) -> list[Finding]:
    findings: list[Finding] = []
    for i, audience in enumerate(rule.audiences or ()):
        if not audience:
            findings.append(error((*at, "audiences", i), "audience must be a non-empty string"))
    if rule.issuer == "":
        findings.append(error((*at, "issuer"), "issuer must be a non-empty string"))
    elif not rule.issuer and not rule.jwks_uri:
        findings.append(error(at, "issuer or jwksUri must be a non-empty string"))
    if rule.jwks_uri is not None:
        problem = jwks_uri(rule.jwks_uri)
        if problem is not None:
            findings.append(error((*at, "jwksUri"), problem))
        if rule.jwks is not None:
            findings.append(error((*at, "jwks"), "only one of jwks or jwksUri can be set"))
    if rule.jwks is not None:
        findings += _jwks(rule.jwks, (*at, "jwks"))
    for i, header in enumerate(rule.from_headers or ()):
        if not header.name:
            findings.append(
                error((*at, "fromHeaders", i, "name"), "header name must be a non-empty string")
            )
    for name, what in (("fromParams", "query parameter"), ("fromCookies", "cookie name")):
        values = rule.from_params if name == "fromParams" else rule.from_cookies
        for i, value in enumerate(values or ()):
            if not value:
                findings.append(error((*at, name, i), f"{what} must be a non-empty string"))
    for i, claim in enumerate(rule.output_claim_to_headers or ()):
        where: Path = (*at, "outputClaimToHeaders", i)
        if not claim.claim or not claim.header:
            empty = "claim" if not claim.claim else "header"
            findings.append(
                error((*where, empty), "outputClaimToHeaders header and claim must not be empty")
            )
        elif not _STRICT_HEADER_RE.fullmatch(claim.header):
            findings.append(
                error(
                    (*where, "header"),
                    f"header name {claim.header!r} is not a valid header name (letters, digits, "
                    "'-' and '_')",
                )
            )
    if rule.timeout is not None:
        problem = common.check_duration(rule.timeout)
        if problem is not None:
            findings.append(error((*at, "timeout"), problem))
    claims = rule.space_delimited_claims or ()
    findings += _max_items(
        claims, MAX_SPACE_DELIMITED_CLAIMS, (*at, "spaceDelimitedClaims"), "spaceDelimitedClaims"
    )
    for i, claim_name in enumerate(claims):
        if not claim_name:
            findings.append(
                error((*at, "spaceDelimitedClaims", i), "claim name must be a non-empty string")
            )
    return findings


def jwks_uri(uri: str) -> str | None:
    """Istio's ``ParseJwksURI`` and the CRD's rules: an ``http://`` or ``https://`` URL (of at
    most 2048 characters) that Go's ``url.Parse`` reads."""
    if not uri:
        return "jwksUri must not be empty"
    if len(uri) > MAX_JWKS_URI_LENGTH:
        return f"jwksUri too long (at most {MAX_JWKS_URI_LENGTH} characters)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        return "invalid control character in jwksUri"
    match = _SCHEME_RE.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme not in ("http", "https"):
        return f"URI scheme {scheme!r} is not supported: url must have scheme http:// or https://"
    rest = uri[match.end() :] if match else uri
    if rest.startswith("//"):
        authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
        host = authority.rpartition("@")[2]
        if host.startswith("["):
            close = host.find("]")
            if close < 0:
                return f"invalid jwksUri {uri!r}: missing ']' in host"
            port = host[close + 1 :]
            if port and not re.fullmatch(r":[0-9]*", port):
                return f"invalid jwksUri {uri!r}: invalid port {port!r} after host"
        elif ":" in host:
            port = host[host.rfind(":") :]
            if not re.fullmatch(r":[0-9]*", port):
                return f"invalid jwksUri {uri!r}: invalid port {port!r} after host"
        if re.search(r"%(?![0-9A-Fa-f]{2})", authority):
            return f"invalid jwksUri {uri!r}: invalid URL escape in host"
    return None


#: The parameters each JWK key type needs (RFC 7518); ``d`` (and ``oct``'s ``k``) make a key
#: private.
_JWK_PARAMS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}


def _jwks(text: str, at: Path) -> list[Finding]:
    """Inline ``jwks``: a JSON Web Key Set (or one key) Istio's JWK parser reads; a key with
    private material is a warning (only public keys verify tokens)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return [error(at, f"jwks parse error: not JSON ({exc})")]
    if not isinstance(data, dict):
        return [error(at, 'jwks parse error: a JSON object ({"keys": [...]}) or one key')]
    keys: Any = data.get("keys", [data])
    if not isinstance(keys, list):
        return [error(at, "jwks parse error: keys must be a list")]
    findings: list[Finding] = []
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("kty") not in _JWK_PARAMS:
            kty = key.get("kty") if isinstance(key, dict) else None
            findings.append(
                error(at, f"jwks parse error: key {i} has no supported kty (got {kty!r})")
            )
            continue
        missing = [p for p in _JWK_PARAMS[key["kty"]] if not isinstance(key.get(p), str)]
        if missing:
            findings.append(
                error(at, f"jwks parse error: key {i} ({key['kty']}) lacks {', '.join(missing)}")
            )
        elif key["kty"] == "oct" or "d" in key:
            findings.append(
                warning(
                    at,
                    f"jwks key at index {i} contains private key material; only public keys are "
                    "used for verification",
                )
            )
    return findings
