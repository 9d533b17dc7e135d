"""Istio's validation of a virtual service (istio/istio ``pkg/config/validation``:
``ValidateVirtualService``, ``validateHTTPRoute`` and the rules they call).

The shape (types, ranges, one-ofs, RE2 syntax, durations of at least 1ms) is checked by
``meshlib.config.model``; this module adds the rules that depend on the field or on the rest of
the resource: hosts and gateways, which actions a rule may combine (a delegate's rules differ),
empty string matches, header names and values, authority rewrites, redirects, faults, retries,
CORS, TLS and TCP routes, exportTo, and the warnings for rules and matches that can never be used.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshlib.config import model as m
from meshlib.config.source import Path
from meshlib.config.validation import common
from meshlib.config.validation.findings import Finding, error, warning

MESH_GATEWAY = "mesh"
DEFAULT_NAMESPACE = "default"
JWT_CLAIM_PREFIX = "@request.auth.claims"
PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
CORS_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"}
)
MAX_REGEX_LENGTH = 1024
KIB = 1024
MIB = 1024 * KIB
#: the first label of an SNI name Istio generates for AUTO_PASSTHROUGH gateways
OUTBOUND_SNI_PREFIX = "outbound"

# RFC 7230 token characters: what Istio accepts in a header name
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]+")
# control characters other than horizontal tab are not allowed in a header value
_HEADER_VALUE_BAD_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check(spec: m.Model, metadata: m.Metadata) -> list[Finding]:
    assert isinstance(spec, m.VirtualService)
    namespace = metadata.namespace or DEFAULT_NAMESPACE
    return list(_virtual_service(spec, namespace))


# --------------------------------------------------------------------------- the resource


def _virtual_service(vs: m.VirtualService, namespace: str) -> Iterable[Finding]:
    root: Path = ("spec",)
    hosts = vs.hosts or []
    gateways = vs.gateways or []
    delegate = not hosts
    if delegate:
        yield from _delegate_resource(vs)
    to_gateway = bool(gateways) and MESH_GATEWAY not in gateways
    if gateways:
        yield from _gateway_names(gateways, (*root, "gateways"))
    if not to_gateway:
        yield from _jwt_claims_need_a_gateway(vs)
    yield from _hosts(vs, to_gateway)
    if not (vs.http or vs.tcp or vs.tls):
        yield error(root, "http, tcp or tls must be provided in virtual service (give it routes)")
    for i, http in enumerate(vs.http or ()):
        yield from _http_route(http, (*root, "http", i), delegate=delegate)
    for i, tls in enumerate(vs.tls or ()):
        yield from _tls_route(tls, vs, (*root, "tls", i))
    for i, tcp in enumerate(vs.tcp or ()):
        yield from _tcp_route(tcp, (*root, "tcp", i))
    yield from common.check_export_to(namespace, vs.export_to, (*root, "exportTo"))
    yield from _unreachable_http_rules(vs.http or [])
    yield from _unreachable_rules(vs.tcp or [], "tcp")
    yield from _unreachable_rules(vs.tls or [], "tls")


def _delegate_resource(vs: m.VirtualService) -> Iterable[Finding]:
    """A VirtualService without hosts is a delegate: only ``http`` rules, no gateways."""
    if vs.gateways:
        yield error(
            ("spec", "gateways"),
            "delegate virtual service must have no gateways specified (a virtual service "
            "without hosts is a delegate: give it hosts, or remove gateways)",
        )
    if vs.tls:
        yield error(("spec", "tls"), "delegate virtual service must have no tls route specified")
    if vs.tcp:
        yield error(("spec", "tcp"), "delegate virtual service must have no tcp route specified")


def _gateway_names(names: Sequence[str], path: Path) -> Iterable[Finding]:
    """Istio's ``validateGatewayNames``: ``namespace/name``, or a legacy name without a namespace
    (then Istio stops checking the list, and so does meshlib)."""
    for i, name in enumerate(names):
        where = (*path, i)
        space, slash, gateway = name.partition("/")
        if not slash:
            if "." in name:
                parts = name.split(".")
                yield warning(
                    where,
                    f"using legacy gatewayName format {name!r}; prefer the <namespace>/<name> "
                    f"format: '{parts[1]}/{parts[0]}'",
                )
            problem = common.check_fqdn(name)
            if problem is not None:
                yield error(where, f"{problem} (a gateway is 'mesh' or '<namespace>/<name>')")
            return
        if not space or not gateway:
            yield error(where, "config namespace and gateway name cannot be empty")
        if not common.is_dns1123_label(space):
            yield error(where, f"invalid value for namespace: {space!r} (a namespace name)")
        if not common.is_dns1123_label(gateway):
            yield error(where, f"invalid value for gateway name: {gateway!r} (a gateway's name)")


def _jwt_claims_need_a_gateway(vs: m.VirtualService) -> Iterable[Finding]:
    for i, http in enumerate(vs.http or ()):
        for j, entry in enumerate(http.match or ()):
            for field, headers in (
                ("headers", entry.headers),
                ("withoutHeaders", entry.without_headers),
            ):
                for name in headers or {}:
                    if is_jwt_claim(name):
                        yield error(
                            ("spec", "http", i, "match", j, field, name),
                            f"JWT claim based routing (key: {name}) is only supported for "
                            f"gateway, found no gateways: {vs.gateways or []}",
                        )


def _hosts(vs: m.VirtualService, to_gateway: bool) -> Iterable[Finding]:
    hosts = vs.hosts or []
    to_mesh = not to_gateway
    sni = _has_sni_hosts(vs)
    all_valid = True
    for i, host in enumerate(hosts):
        where: Path = ("spec", "hosts", i)
        problem = gateway_bound_domain(host, sni=sni) if to_gateway else _wildcard_domain(host)
        if problem is not None:
            if not common.is_ip_address(host):
                yield error(where, problem)
                all_valid = False
        elif to_mesh and host == "*":
            yield error(
                where,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway "
                "(name the hosts, or '*.example.com')",
            )
            all_valid = False
    if not all_valid:
        return
    for i, host in enumerate(hosts):
        for j in range(i + 1, len(hosts)):
            if common.hosts_match(host, hosts[j]):
                yield error(
                    ("spec", "hosts", j),
                    f"duplicate hosts in virtual service: {host} & {hosts[j]} "
                    "(one host may match the other: keep one)",
                )


def _has_sni_hosts(vs: m.VirtualService) -> bool:
    return any(match.sni_hosts for tls in vs.tls or () for match in tls.match)


def _wildcard_domain(host: str) -> str | None:
    problem = common.check_wildcard_domain(host)
    if problem is None:
        return None
    return f"{problem} (a host is a DNS name, '*.' may start it: 'reviews', '*.example.com')"


def gateway_bound_domain(domain: str, *, sni: bool) -> str | None:
    """Istio's ``ValidateWildcardDomainForVirtualServiceBoundToGateway``: a wildcard domain, or
    for SNI an ``outbound_.<port>_._.<host>`` name of an AUTO_PASSTHROUGH gateway."""
    problem = common.check_dns1123_preconditions(domain)
    if problem is not None:
        return problem
    if sni and domain.startswith(OUTBOUND_SNI_PREFIX + "_"):
        parts = domain.split("_")
        shape = "outbound_.<port>_._.<hostname>"
        if len(parts) < 4:
            return f"domain name {domain} invalid, should follow '{shape}' format"
        port, hostname = parts[1].strip("."), parts[3].strip(".")
        if parts[0] != OUTBOUND_SNI_PREFIX:
            return f"domain name {domain!r} invalid (label {parts[0]!r} invalid)"
        if re.search(r"[0-9]", port) is None:
            return f"domain name {domain!r} invalid (label {port!r} invalid). should follow {shape}"
        if re.search(r"[a-zA-Z]", hostname) is None:
            return (
                f"domain name {domain!r} invalid (label {hostname!r} invalid). "
                f"should follow {shape}"
            )
        return None
    return _wildcard_domain(domain)


# --------------------------------------------------------------------------- HTTP rules


def _http_route(http: m.HTTPRoute, path: Path, *, delegate: bool) -> Iterable[Finding]:
    yield from _http_actions(http, path, delegate=delegate)
    for i, entry in enumerate(http.match or ()):
        yield from _match_request(entry, (*path, "match", i))
    if http.headers is not None:
        yield from _header_operations(http.headers, (*path, "headers"))
    if http.cors_policy is not None:
        yield from _cors_policy(http.cors_policy, (*path, "corsPolicy"))
    if http.fault is not None:
        yield from _fault(http.fault, (*path, "fault"))
    if http.mirror_percent is not None:
        yield warning(
            (*path, "mirrorPercent"),
            'using deprecated setting "mirrorPercent", use "mirrorPercentage" instead '
            "(mirrorPercentage: {value: 5})",
        )
    if http.mirror is not None:
        yield from _destination(http.mirror, (*path, "mirror"))
    for i, mirror in enumerate(http.mirrors or ()):
        yield from _destination(mirror.destination, (*path, "mirrors", i, "destination"))
    if http.redirect is not None:
        yield from _redirect(http.redirect, http.match or [], (*path, "redirect"))
    if http.direct_response is not None:
        yield from _direct_response(http.direct_response, (*path, "directResponse"))
    if http.retries is not None:
        yield from _retries(http.retries, (*path, "retries"))
    if http.rewrite is not None:
        yield from _rewrite(http.rewrite, (*path, "rewrite"))
    yield from _authority_rewrite(http, path)
    for i, destination in enumerate(http.route or ()):
        where = (*path, "route", i)
        if destination.headers is not None:
            yield from _header_operations(destination.headers, (*where, "headers"))
        yield from _destination(destination.destination, (*where, "destination"))


def _http_actions(http: m.HTTPRoute, path: Path, *, delegate: bool) -> Iterable[Finding]:
    """Istio's ``validateHTTPRouteConflict``: what a rule does, and what it may combine."""
    if http.delegate is not None and not delegate:
        name = f" {http.name}" if http.name else ""
        if http.redirect is not None:
            yield error(
                (*path, "redirect"),
                f"root HTTP route{name} must not specify redirect (it delegates: the delegate "
                "VirtualService redirects)",
            )
        if http.route:
            yield error(
                (*path, "route"),
                f"root HTTP route{name} must not specify route (it delegates: the delegate "
                "VirtualService routes)",
            )
        return
    if delegate and http.delegate is not None:
        yield error(
            (*path, "delegate"),
            "delegate HTTP route cannot contain delegate (delegation is one level deep)",
        )
    if http.redirect is not None:
        for field, given in (
            ("route", bool(http.route)),
            ("fault", http.fault is not None),
            ("rewrite", http.rewrite is not None),
            ("directResponse", http.direct_response is not None),
        ):
            if given:
                yield error((*path, field), f"HTTP route cannot contain both {field} and redirect")
    elif http.direct_response is not None:
        for field, given in (
            ("route", bool(http.route)),
            ("fault", http.fault is not None),
            ("rewrite", http.rewrite is not None),
        ):
            if given:
                yield error(
                    (*path, field), f"HTTP route cannot contain both {field} and directResponse"
                )
    elif not http.route:
        yield error(
            path,
            "HTTP route, redirect or directResponse is required (give route: [{destination: "
            "{host: ...}}])",
        )
    if http.mirror is not None and http.mirrors:
        yield error((*path, "mirrors"), "HTTP route cannot contain both mirror and mirrors")


# --------------------------------------------------------------------------- matches


def _match_request(entry: m.HTTPMatchRequest, path: Path) -> Iterable[Finding]:
    for name, match in (entry.headers or {}).items():
        where = (*path, "headers", name)
        yield from _problem(where, match_header_name(name))
        yield from _string_match(match, where, present=True)
    for name, match in (entry.without_headers or {}).items():
        where = (*path, "withoutHeaders", name)
        yield from _problem(where, match_header_name(name))
        if match.regex != "*":  # not RE2: pilot's "present", inverted
            yield from _string_match(match, where, present=True)
    if entry.uri is not None:  # a uri may have an empty prefix (Envoy's path prefix may)
        yield from _regex(entry.uri.regex, (*path, "uri", "regex"))
    for field in ("scheme", "method", "authority"):
        match = getattr(entry, field)
        if match is not None:
            yield from _string_match(match, (*path, field))
    for name, match in (entry.query_params or {}).items():
        yield from _string_match(match, (*path, "queryParams", name), present=True)
    yield from common.check_labels(entry.source_labels, (*path, "sourceLabels"))
    if entry.gateways:
        yield from _gateway_names(entry.gateways, (*path, "gateways"))
    if entry.source_namespace and not common.is_dns1123_label(entry.source_namespace):
        yield error(
            (*path, "sourceNamespace"),
            f"sourceNamespace match {entry.source_namespace} is invalid (a namespace name)",
        )


def _string_match(match: m.StringMatch, path: Path, *, present: bool = False) -> Iterable[Finding]:
    """Istio's ``validateStringMatch``: neither an empty prefix nor an empty regex.
    ``present``: the match may be ``{}`` ("the header or parameter is present")."""
    if match.prefix == "":
        hint = "; for one that must be present, write {}" if present else ""
        yield error(
            (*path, "prefix"),
            f"prefix string match should not be empty (to match any value, remove the match{hint})",
        )
    yield from _regex(match.regex, (*path, "regex"))


def _regex(pattern: str | None, path: Path) -> Iterable[Finding]:
    """Istio's ``validateStringMatchRegexp``: a regex is not empty, not ``*``, and at most 1024
    characters (its RE2 syntax is checked with the shape)."""
    if pattern is None:
        return
    if pattern == "":
        yield error(path, "regex string match should not be empty (to match any value, write .*)")
    elif pattern == "*":
        yield error(
            path,
            "invalid RE2 regex '*': missing argument to repetition operator (to match any "
            "value, write .*; for a header that must be present, write {})",
        )
    elif len(pattern) > MAX_REGEX_LENGTH:
        yield error(path, f"regex is too large, max length allowed is {MAX_REGEX_LENGTH}")


def is_jwt_claim(name: str) -> bool:
    """``@request.auth.claims.<claim>`` or ``@request.auth.claims[<claim>]`` (any case)."""
    if not name.lower().startswith(JWT_CLAIM_PREFIX):
        return False
    rest = name[len(JWT_CLAIM_PREFIX) :]
    if rest.startswith(".") and len(rest) > 1:
        return True
    return rest.startswith("[") and rest.endswith("]") and len(rest) > 2


def match_header_name(name: str) -> str | None:
    """Istio's ``ValidateHTTPHeaderNameOrJwtClaimRoute``: an HTTP token (any case), a pseudo
    header (``:authority``) or a JWT claim."""
    if not name:
        return "header name cannot be empty"
    if is_jwt_claim(name) or name in PSEUDO_HEADERS:
        return None
    if _HEADER_NAME.fullmatch(name) is None:
        return (
            f"header name {name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
        )
    return None


# --------------------------------------------------------------------------- headers


def _header_operations(headers: m.Headers, path: Path) -> Iterable[Finding]:
    request, response = headers.request, headers.response
    if request is not None:
        where = (*path, "request")
        for field, values in (("add", request.add), ("set", request.set)):
            for name, value in (values or {}).items():
                yield from _problem((*where, field, name), request_header_name(name))
                yield from _problem((*where, field, name), header_value(value))
        for i, name in enumerate(request.remove or ()):
            yield from _problem((*where, "remove", i), header_operation_name(name))
    if response is not None:
        where = (*path, "response")
        for field, values in (("add", response.add), ("set", response.set)):
            for name, value in (values or {}).items():
                yield from _problem((*where, field, name), header_operation_name(name))
                yield from _problem((*where, field, name), header_value(value))
        for i, name in enumerate(response.remove or ()):
            yield from _problem((*where, "remove", i), header_operation_name(name))


def _is_authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


def request_header_name(name: str) -> str | None:
    """A request header to add or set: not empty, no pseudo header but ``:authority``, an HTTP
    token (meshlib: a name no HTTP client can send is refused here, not at every call)."""
    if not name:
        return "header name cannot be empty"
    if name.startswith(":") and not _is_authority(name):
        return f'invalid header {name!r}: header cannot have ":" prefix'
    return None if name.startswith(":") else _token(name)


def header_operation_name(name: str) -> str | None:
    """A header to remove, or a response header to add or set: not empty, not Host, no pseudo
    header, an HTTP token."""
    if not name:
        return "header name cannot be empty"
    if name.lower() == "host":
        return f"invalid header {name!r}: cannot set Host header (rewrite.authority sets it)"
    if name.startswith(":"):
        return f'invalid header {name!r}: header cannot have ":" prefix'
    return _token(name)


def _token(name: str) -> str | None:
    if _HEADER_NAME.fullmatch(name) is None:
        return (
            f"header name {name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
        )
    return None


def header_value(value: str) -> str | None:
    """Istio's ``ValidateHTTPHeaderValue``: no control character but tab, and ``%`` written as
    Envoy reads it: ``%%`` for a percent sign, ``%VARIABLE%`` or ``%VARIABLE(args)%``."""
    if _HEADER_VALUE_BAD_CHAR.search(value):
        return f"header value configuration {value!r} is invalid (no control characters)"
    problem = _envoy_format_problem(value)
    if problem is not None:
        return f"header value configuration {value!r}: {problem} (write %% for a percent sign)"
    return None


def _envoy_format_problem(value: str) -> str | None:
    """Envoy's header formatter parser (``header_parser.cc``), as Istio ports it."""
    state = "literal"
    pos = 0
    while pos < len(value):
        ch = value[pos]
        has_next = pos + 1 < len(value)
        if state == "literal":
            if ch == "%":
                if not has_next:
                    return "un-escaped %"
                if value[pos + 1] == "%":
                    pos += 1
                else:
                    state = "name"
        elif state == "name":
            if ch == "%":
                state = "literal"
            elif ch == "(":
                state = "array"
        elif state == "array":
            if ch == "[":
                state = "expect-string"
            elif ch != " ":
                state = "string"
        elif state == "delimiter":
            if ch == ",":
                state = "expect-string"
            elif ch == "]":
                state = "args-end"
            elif ch != " ":
                return "expecting ',', ']', or whitespace"
        elif state == "expect-string":
            if ch == '"':
                state = "string"
            elif ch != " ":
                return "expecting '\"'"
        elif state == "string":
            if ch == "\\":
                if not has_next:
                    return "un-terminated backslash in JSON string"
                pos += 1
            elif ch == ")":
                state = "variable-end"
            elif ch == '"':
                state = "delimiter"
        elif state == "args-end":
            if ch == ")":
                state = "variable-end"
            elif ch != " ":
                return "expecting ')' or whitespace"
        elif state == "variable-end":
            if ch == "%":
                state = "literal"
            elif ch != " ":
                return "expecting '%' or whitespace"
        pos += 1
    if state != "literal":
        return "un-terminated variable expression"
    return None


def _authority_rewrite(http: m.HTTPRoute, path: Path) -> Iterable[Finding]:
    """The authority is rewritten in one place only: ``rewrite.authority`` or one request
    header (``:authority`` or ``host``) to set or add."""
    current = http.rewrite.authority if http.rewrite is not None else None
    request = http.headers.request if http.headers is not None else None
    if request is None:
        return
    for field, values in (("set", request.set), ("add", request.add)):
        for name, value in (values or {}).items():
            if not _is_authority(name):
                continue
            if current:
                yield error(
                    (*path, "headers", "request", field, name),
                    f"authority header cannot be set multiple times: have {current!r}, attempting "
                    f"to set {value!r} (keep one of rewrite.authority and this header)",
                )
                return
            current = value


# --------------------------------------------------------------------------- route parts


def _destination(destination: m.Destination, path: Path) -> Iterable[Finding]:
    host = destination.host
    if host == "*":
        yield error((*path, "host"), "invalid destination host * (name one host)")
    else:
        yield from _problem((*path, "host"), _wildcard_domain(host))
    subset = destination.subset
    if subset and not common.is_dns1123_label(subset):
        yield error(
            (*path, "subset"),
            f"subset name is invalid: {subset} (a DNS-1123 label as Istio checks it: letters, "
            "digits and '-', at most 63, e.g. 'v1')",
        )


def _cors_policy(cors: m.CorsPolicy, path: Path) -> Iterable[Finding]:
    for i, origin in enumerate(cors.allow_origins or ()):
        where = (*path, "allowOrigins", i)
        value = next((v for v in (origin.exact, origin.prefix, origin.regex) if v is not None), "")
        if value == "":
            yield error(
                where,
                "'' is not a valid match type for CORS allow origins (write exact, prefix or "
                "regex with a value)",
            )
        else:
            yield from _regex(origin.regex, (*where, "regex"))
    for i, method in enumerate(cors.allow_methods or ()):
        if method not in CORS_METHODS:
            yield error(
                (*path, "allowMethods", i),
                f"{method!r} is not a supported HTTP method (one of "
                f"{', '.join(sorted(CORS_METHODS))})",
            )
    for field, names in (
        ("allowHeaders", cors.allow_headers),
        ("exposeHeaders", cors.expose_headers),
    ):
        for i, name in enumerate(names or ()):
            yield from _problem((*path, field, i), cors_header_name(name))
    if cors.max_age is not None and abs(cors.max_age - round(cors.max_age)) > 1e-9:
        yield error(
            (*path, "maxAge"),
            "max_age duration is accurate only to seconds precision (write whole seconds, "
            "e.g. 24h or 30s)",
        )


def cors_header_name(name: str) -> str | None:
    if not name:
        return "header name cannot be empty"
    if name != "*" and _HEADER_NAME.fullmatch(name) is None:
        return f"header name {name!r} is not a valid header name"
    return None


def _fault(fault: m.HTTPFaultInjection, path: Path) -> Iterable[Finding]:
    abort, delay = fault.abort, fault.delay
    if abort is not None:
        where = (*path, "abort")
        yield from _fault_percentage(abort.percentage, (*where, "percentage", "value"))
        if abort.http2_error is not None:
            yield error(
                (*where, "http2Error"),
                "HTTP/2 abort fault injection not supported yet (use httpStatus or grpcStatus)",
            )
        elif abort.http_status is None and abort.grpc_status is None:
            yield warning(
                where,
                "abort configured, but error type not set: nothing is aborted (set httpStatus "
                "or grpcStatus)",
            )
    if delay is not None:
        where = (*path, "delay")
        yield from _fault_percentage(delay.percentage, (*where, "percentage", "value"))
        if delay.exponential_delay is not None:
            yield error(
                (*where, "exponentialDelay"), "exponentialDelay not supported yet (use fixedDelay)"
            )


def _fault_percentage(percentage: m.Percent | None, path: Path) -> Iterable[Finding]:
    """Envoy takes a fault's percentage in millionths: 0, or at least 0.0001."""
    if percentage is not None and 0.0 < percentage.value < 0.0001:
        yield error(
            path,
            f"percentage {percentage.value:g} is neither 0.0, nor in range [0.0001, 100.0]",
        )


def _redirect(
    redirect: m.HTTPRedirect, matches: Sequence[m.HTTPMatchRequest], path: Path
) -> Iterable[Finding]:
    """Istio's ``validateHTTPRedirect``, which reports the first problem only."""
    problem = _redirect_problem(redirect, matches)
    if problem is not None:
        yield error(path, problem)


def _redirect_problem(
    redirect: m.HTTPRedirect, matches: Sequence[m.HTTPMatchRequest]
) -> str | None:
    if redirect.uri and redirect.prefix_rewrite:
        return "redirect may only specify one of uri or prefixRewrite"
    if redirect.prefix_rewrite:
        for entry in matches:
            if entry.uri is not None and entry.uri.prefix is None:
                return (
                    "redirect prefixRewrite requires all URI matches to use prefix match type "
                    "(match uri: {prefix: ...}, or redirect with uri)"
                )
    port_given = redirect.port is not None or redirect.derive_port is not None
    if not (
        redirect.uri
        or redirect.prefix_rewrite
        or redirect.authority
        or port_given
        or redirect.scheme
    ):
        return "redirect must specify URI, authority, scheme, or port"
    code = redirect.redirect_code
    if code and not 300 <= code <= 399:
        return f"{code} is not a valid redirect code, must be 3xx (301, 302, 303, 307 or 308)"
    if redirect.scheme and redirect.scheme not in ("http", "https"):
        return 'invalid redirect scheme, must be "http" or "https"'
    return None


def _direct_response(response: m.HTTPDirectResponse, path: Path) -> Iterable[Finding]:
    body = response.body
    if body is None:
        return
    size = len(body.string.encode()) if body.string is not None else _decoded_size(body.bytes)
    if size > MIB:
        yield error(
            (*path, "body"),
            "large direct_responses may impact control plane performance, must be less than 1MB",
        )
    elif size > 100 * KIB:
        yield warning(
            (*path, "body"), "large direct_responses may impact control plane performance"
        )


def _decoded_size(text: str | None) -> int:
    """The size of a ``bytes`` body, which YAML gives in base64."""
    if not text:
        return 0
    try:
        return len(base64.b64decode(text, validate=False))
    except (binascii.Error, ValueError):
        return len(text)


def _retries(retries: m.HTTPRetry, path: Path) -> Iterable[Finding]:
    configured = (
        retries.per_try_timeout is not None
        or bool(retries.retry_on)
        or retries.retry_remote_localities is not None
    )
    if retries.attempts == 0 and configured:
        yield error(
            path,
            "http retry policy configured when attempts are set to 0 (disabled): set attempts, "
            "or remove perTryTimeout, retryOn and retryRemoteLocalities",
        )


def _rewrite(rewrite: m.HTTPRewrite, path: Path) -> Iterable[Finding]:
    regex = rewrite.uri_regex_rewrite
    if rewrite.uri and regex is not None:
        yield error(path, "rewrite may only contain one of uri or uriRegexRewrite")
    elif not rewrite.uri and regex is None and not rewrite.authority:
        yield error(path, "rewrite must specify at least one of uri, uriRegexRewrite, or authority")
    elif regex is not None:
        where = (*path, "uriRegexRewrite")
        if not regex.match or not regex.rewrite:
            yield error(
                where, "uriRegexRewrite requires both rewrite and match fields to be specified"
            )
        elif len(regex.match) > MAX_REGEX_LENGTH:
            yield error(
                (*where, "match"), f"regex is too large, max length allowed is {MAX_REGEX_LENGTH}"
            )


# --------------------------------------------------------------------------- TLS and TCP


def _tls_route(tls: m.TLSRoute, vs: m.VirtualService, path: Path) -> Iterable[Finding]:
    if not tls.match:
        yield error((*path, "match"), "TLS route must have at least one match condition")
    for i, match in enumerate(tls.match):
        where = (*path, "match", i)
        if not match.sni_hosts:
            yield error((*where, "sniHosts"), "TLS match must have at least one SNI host")
        for j, sni in enumerate(match.sni_hosts):
            yield from _sni_host(sni, vs, (*where, "sniHosts", j))
        yield from _l4_match(match, where)
    if not tls.route:
        yield error(path, "TLS route is required (give route: [{destination: {host: ...}}])")
    yield from _route_destinations(tls.route or [], (*path, "route"))


def _sni_host(sni: str, vs: m.VirtualService, path: Path) -> Iterable[Finding]:
    gateways = vs.gateways or []
    if MESH_GATEWAY not in gateways:
        problem = gateway_bound_domain(sni, sni=True)
    else:
        problem = _wildcard_domain(sni)
    if problem is not None:
        if common.is_ip_address(sni):
            yield warning(
                path,
                f"using an IP address ({sni!r}) goes against SNI spec and most clients do not "
                "support this",
            )
        else:
            yield error(path, problem)
        return
    hosts = vs.hosts or []
    if not any(common.host_subset_of(sni, host) for host in hosts):
        yield error(
            path,
            f"SNI host {sni!r} is not a compatible subset of any of the virtual service hosts: "
            f"[{', '.join(hosts)}]",
        )


def _tcp_route(tcp: m.TCPRoute, path: Path) -> Iterable[Finding]:
    for i, match in enumerate(tcp.match or ()):
        yield from _l4_match(match, (*path, "match", i))
    if not tcp.route:
        yield error(path, "TCP route is required (give route: [{destination: {host: ...}}])")
    yield from _route_destinations(tcp.route or [], (*path, "route"))


def _l4_match(match: m.L4Match | m.TLSMatch, path: Path) -> Iterable[Finding]:
    for i, subnet in enumerate(match.destination_subnets or ()):
        yield from _problem((*path, "destinationSubnets", i), common.check_ip_subnet(subnet))
    yield from common.check_labels(match.source_labels, (*path, "sourceLabels"))
    if match.gateways:
        yield from _gateway_names(match.gateways, (*path, "gateways"))


def _route_destinations(route: Sequence[m.RouteDestination], path: Path) -> Iterable[Finding]:
    for i, destination in enumerate(route):
        yield from _destination(destination.destination, (*path, i, "destination"))
    if len(route) > 1 and sum(d.weight for d in route) == 0:
        yield error(path, "total destination weight = 0: give the destinations weights")


# --------------------------------------------------------------------------- unused rules


def _rule_name(rule: m.HTTPRoute | m.TCPRoute | m.TLSRoute, index: int) -> str:
    name = rule.name if isinstance(rule, m.HTTPRoute) else None
    return json.dumps(name) if name else f"#{index}"


def _match_name(match: Any, index: int) -> str:
    name = match.name if isinstance(match, m.HTTPMatchRequest) else None
    return json.dumps(name) if name else f"#{index}"


def _match_key(match: m.Model) -> str:
    """What a match selects, without its name: equal keys select the same requests."""
    data = match.model_dump(by_alias=True, exclude_none=True, exclude={"name"})
    data = {k: v for k, v in data.items() if v not in (False, "", [], {}) or k in _STRING_MATCHES}
    return json.dumps(data, sort_keys=True)


_STRING_MATCHES = frozenset({"uri", "scheme", "method", "authority"})


def _unused(path: Path, rule: str, reason: str) -> Finding:
    return warning(path, f"virtualService rule {rule} not used ({reason})")


def _ineffective(path: Path, rule: str, match: str, other: str) -> Finding:
    return warning(
        path,
        f"virtualService rule {rule} match {match} is not used (duplicate/overlapping match in "
        f"rule {other})",
    )


def _unreachable_rules(
    rules: Sequence[m.HTTPRoute | m.TCPRoute | m.TLSRoute], field: str
) -> Iterable[Finding]:
    """Istio's ``analyzeUnreachable…Rules``: a rule after one without matches, a second rule
    without matches, and a match some earlier rule has already."""
    seen: dict[str, int] = {}
    catch_all = -1
    for index, rule in enumerate(rules):
        path: Path = ("spec", field, index)
        name = _rule_name(rule, index)
        matches: Sequence[Any] = rule.match or []
        if not matches:
            if catch_all >= 0:
                yield _unused(path, name, "only the last rule can have no matches")
            catch_all = index
            continue
        if catch_all >= 0:
            yield _unused(path, name, "route without matches defined before")
            continue
        duplicates = 0
        for j, match in enumerate(matches):
            key = _match_key(match)
            if key in seen:
                other = seen[key]
                yield _ineffective(
                    (*path, "match", j),
                    name,
                    _match_name(match, j),
                    _rule_name(rules[other], other),
                )
                duplicates += 1
            else:
                seen[key] = index
        if duplicates == len(matches):
            yield _unused(path, name, "all matches used by prior rules")


@dataclass(frozen=True, slots=True)
class _PrefixMatch:
    """What Istio compares of a match on a uri prefix to find one an earlier match covers."""

    rule: int
    index: int
    rule_name: str
    match_name: str
    prefix: str
    port: int
    method: str
    authority: str
    headers: Mapping[str, str]
    query_params: Mapping[str, str]
    without_headers: Mapping[str, str]


def _exact_or_prefix(match: m.StringMatch | None) -> str:
    if match is None:
        return ""
    if match.exact:
        return "exact:" + match.exact
    if match.prefix:
        return "prefix:" + match.prefix
    return ""


def _prefix_match(
    rule: m.HTTPRoute, index: int, match: m.HTTPMatchRequest, j: int
) -> _PrefixMatch | None:
    if match.uri is None or not match.uri.prefix:
        return None
    return _PrefixMatch(
        rule=index,
        index=j,
        rule_name=_rule_name(rule, index),
        match_name=_match_name(match, j),
        prefix=match.uri.prefix,
        port=match.port or 0,
        method=_exact_or_prefix(match.method) or "exact:GET",
        authority=_exact_or_prefix(match.authority),
        headers={k: _exact_or_prefix(v) for k, v in (match.headers or {}).items()},
        query_params={k: _exact_or_prefix(v) for k, v in (match.query_params or {}).items()},
        without_headers={k: _exact_or_prefix(v) for k, v in (match.without_headers or {}).items()},
    )


def _covers_values(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    if len(a) != len(b):
        return False
    return all(
        key in b and (value == b[key] or value.startswith(b[key])) for key, value in a.items()
    )


def _covers(a: _PrefixMatch, b: _PrefixMatch) -> bool:
    """Istio's ``coveredValidation``: does ``a`` take every request ``b`` would?"""
    return (
        b.prefix.startswith(a.prefix)
        and a.port == b.port
        and a.method.startswith(b.method)
        and a.authority.startswith(b.authority)
        and _covers_values(a.headers, b.headers)
        and _covers_values(a.query_params, b.query_params)
        and _covers_values(a.without_headers, b.without_headers)
    )


def _unreachable_http_rules(rules: Sequence[m.HTTPRoute]) -> Iterable[Finding]:
    yield from _unreachable_rules(rules, "http")
    prefixes: list[_PrefixMatch] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if not rule.match:
            break  # Istio stops looking at matches after a rule without any
        for j, match in enumerate(rule.match):
            key = _match_key(match)
            if key in seen:
                continue
            seen.add(key)
            found = _prefix_match(rule, index, match, j)
            if found is not None:
                prefixes.append(found)
    yield from _overlapping(prefixes)


def _overlapping(prefixes: Sequence[_PrefixMatch]) -> Iterable[Finding]:
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1 :]:
            if b.prefix != a.prefix and _covers(a, b):
                yield _ineffective(
                    ("spec", "http", b.rule, "match", b.index),
                    b.rule_name,
                    f"{b.match_name} of prefix {b.prefix}",
                    f"{a.match_name} of prefix {a.prefix} on {a.rule_name}",
                )


# --------------------------------------------------------------------------- helpers


def _problem(path: Path, message: str | None) -> Iterable[Finding]:
    if message is not None:
        yield error(path, message)
