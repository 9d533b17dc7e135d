"""Authorization: a workload's AuthorizationPolicies compiled into one decision function, with
Istio's semantics (what pilot generates for Envoy's RBAC filters).

:func:`policies_for` picks the policies that apply to a workload: those of the root namespace
(``istio-system`` by default: mesh-wide) and of the workload's own namespace, without selector
or with ``selector.matchLabels`` a subset of the workload's labels; ``targetRef(s)`` naming one
of the workload's Services (kind ``Service``) in its namespace. :func:`compile_authorization`
compiles them once per config into an :class:`Authorizer`; ``decide(request)`` then runs:

1. CUSTOM is not supported: :func:`authorization_problems` names it and compilation refuses it.
2. AUDIT policies only mark the request (``Decision.audited``).
3. DENY: a matching DENY policy denies.
4. ALLOW: with no ALLOW policy the request is allowed; with some, it is allowed only when one
   matches. An ALLOW policy without rules (``spec: {}``) allows nothing; ``rules: [{}]`` matches
   every request.

A rule matches when any ``from`` entry, any ``to`` entry and every ``when`` condition match; a
part left out matches anything. Inside a ``source`` or ``operation`` every field given must
match, one of its values being enough; ``not*`` fields exclude. Values match exactly, by prefix
(``abc*``), by suffix (``*abc``), or ``*`` (any non-empty value; for a header, present);
``paths`` also take Istio's templates ``{*}`` (one segment) and ``{**}`` (any rest). ``hosts``
compare case-insensitively and literally, port included: ``example.com`` does not match
``example.com:8080`` (write ``example.com:*`` as well, as Istio advises). ``principals``,
``namespaces``, ``serviceAccounts``, ``trustDomains`` and ``source.principal`` /
``source.namespace`` need the peer's mTLS identity: on plain text they never match.

A denial is answered 403 ``RBAC: access denied``; :attr:`Decision.response_code_details` is
Envoy's ``rbac_access_denied_matched_policy[ns[<ns>]-policy[<name>]-rule[<i>]]`` (``[none]``
when no ALLOW policy matched). Envoy sets no response flag for an RBAC denial (its response-flag
list has none), so the access log's flags stay ``-``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

from meshlib.errors import ConfigError, Problem

if TYPE_CHECKING:
    from meshlib.config.security import (
        AuthorizationPolicy,
        Condition,
        Operation,
        Rule,
        Source,
    )
    from meshlib.security.jwt import JwtAuthn

__all__ = [
    "DEFAULT_ROOT_NAMESPACE",
    "DENIED_BODY",
    "WHEN_KEYS",
    "Authorizer",
    "Decision",
    "NamedPolicy",
    "RequestAttributes",
    "authorization_problems",
    "compile_authorization",
    "original_client",
    "policies_for",
]

DEFAULT_ROOT_NAMESPACE: Final = "istio-system"
#: The body of Envoy's 403 for a denied request.
DENIED_BODY: Final = "RBAC: access denied"
#: Istio's ``when`` keys (pilot's ``authz/model``); the bracketed ones take a name.
WHEN_KEYS: Final = (
    "request.headers[]",
    "request.experimental.inline.headers[]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.serviceAccount",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[]",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "experimental.envoy.filters.*[]",
)

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What authorization looks at, built by the inbound side for each request.

    ``path`` is the normalised path (``meshlib.security.paths.normalize_path``; a query part is
    ignored); ``headers`` has lower-case names, repeated headers joined by ``,``;
    ``peer_principal`` is the mTLS peer's identity without ``spiffe://`` (None on plain text);
    ``peer_address`` its IP (``source.ip``); ``remote_address`` the original client
    (``remote.ip``: :func:`original_client`; None means the peer); ``jwt`` the verified end-user
    token; ``metadata`` filter metadata for ``experimental.envoy.filters.*`` conditions."""

    method: str
    path: str
    host: str = ""
    port: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    peer_principal: str | None = None
    peer_address: str | None = None
    remote_address: str | None = None
    destination_address: str | None = None
    sni: str | None = None
    jwt: JwtAuthn | None = None
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def original_client(
    peer_address: str, x_forwarded_for: str | None, num_trusted_proxies: int = 0
) -> str:
    """``remote.ip``: the client ``num_trusted_proxies`` hops before the peer, read from
    X-Forwarded-For as Envoy does with ``xff_num_trusted_hops``. With Istio's default (0 trusted
    proxies) it is the peer itself: a client cannot choose it by sending the header."""
    if num_trusted_proxies <= 0 or not x_forwarded_for:
        return peer_address
    hops = [h.strip() for h in x_forwarded_for.split(",") if h.strip()]
    if len(hops) < num_trusted_proxies:
        return peer_address
    return hops[len(hops) - num_trusted_proxies]


Action = Literal["ALLOW", "DENY", "AUDIT"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What authorization decided: ``allowed``, the policy and rule that decided (``policy``
    as ``namespace/name``; None when no policy applies, or no ALLOW policy matched), and
    whether an AUDIT policy marked the request (``audit_policy``)."""

    allowed: bool
    action: Action | None = None
    policy: str | None = None
    rule: int | None = None
    audited: bool = False
    audit_policy: str | None = None

    @property
    def policy_id(self) -> str:
        """Istio's RBAC policy name: ``ns[<ns>]-policy[<name>]-rule[<i>]``, or ``none``."""
        if self.policy is None or self.rule is None:
            return "none"
        namespace, _, name = self.policy.partition("/")
        return f"ns[{namespace}]-policy[{name}]-rule[{self.rule}]"

    @property
    def response_code_details(self) -> str:
        """Envoy's response code details: ``rbac_access_denied_matched_policy[…]`` for a
        denial, ``""`` when allowed."""
        return "" if self.allowed else f"rbac_access_denied_matched_policy[{self.policy_id}]"


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """An AuthorizationPolicy with the name and namespace it was declared with."""

    name: str
    namespace: str
    spec: AuthorizationPolicy

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------- applicability


def _applies(
    policy: NamedPolicy,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
    services: Iterable[str],
) -> bool:
    if policy.namespace not in (namespace, root_namespace):
        return False
    spec = policy.spec
    refs = list(spec.target_refs or ())
    if spec.target_ref is not None:
        refs.append(spec.target_ref)
    if refs:
        if policy.namespace != namespace:
            return False
        names = set(services)
        return any(
            r.kind == "Service" and (r.group or "") in ("", "core") and r.name in names
            for r in refs
        )
    if spec.selector is None:
        return True
    wanted = spec.selector.match_labels or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def policies_for(
    policies: Iterable[NamedPolicy],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    services: Iterable[str] = (),
) -> list[NamedPolicy]:
    """The policies that apply to a workload of ``namespace`` with ``labels`` (and behind the
    Services named in ``services``, for ``targetRefs``), root namespace first, then by name."""
    services = tuple(services)
    chosen = [p for p in policies if _applies(p, namespace, labels, root_namespace, services)]
    return sorted(chosen, key=lambda p: (p.namespace != root_namespace, p.namespace, p.name))


# --------------------------------------------------------------------------- matchers

Pred = Callable[[RequestAttributes], bool]
StrMatch = Callable[[str], bool]


def _string_matcher(values: Sequence[str], *, ignore_case: bool = False) -> StrMatch:
    """Istio's StringMatcher over alternatives: exact, ``prefix*``, ``*suffix``, or ``*``
    (any non-empty value)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    anything = False
    for value in values:
        v = value.lower() if ignore_case else value
        if v == "*":
            anything = True
        elif v.startswith("*"):
            suffixes.append(v[1:])
        elif v.endswith("*"):
            prefixes.append(v[:-1])
        else:
            exact.add(v)
    if anything:
        return bool
    pre, suf = tuple(prefixes), tuple(suffixes)

    def match(s: str) -> bool:
        if ignore_case:
            s = s.lower()
        return s in exact or (bool(pre) and s.startswith(pre)) or (bool(suf) and s.endswith(suf))

    if not pre and not suf:
        fixed = frozenset(exact)
        if ignore_case:
            return lambda s: s.lower() in fixed
        return fixed.__contains__
    return match


_TEMPLATE_SEGMENT: Final = r"[a-zA-Z0-9\-._~%!$&'()+,;:@]"


def _template_regex(template: str) -> re.Pattern[str]:
    """Istio's path template as Envoy's URI template matches it: ``{*}`` one non-empty segment,
    ``{**}`` whatever follows (zero or more segments)."""
    out = []
    for piece in re.split(r"(\{\*\*\}|\{\*\})", template):
        if piece == "{**}":
            out.append(_TEMPLATE_SEGMENT[:-1] + "/]*")
        elif piece == "{*}":
            out.append(_TEMPLATE_SEGMENT + "+")
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out))


def _path_matcher(values: Sequence[str]) -> StrMatch:
    plain = [v for v in values if "{*}" not in v and "{**}" not in v]
    templates = tuple(_template_regex(v) for v in values if "{*}" in v or "{**}" in v)
    simple = _string_matcher(plain) if plain else None
    if not templates and simple is not None:
        return simple

    def match(path: str) -> bool:
        if simple is not None and simple(path):
            return True
        return any(t.fullmatch(path) for t in templates)

    return match


def _networks(values: Sequence[str]) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _ip_matcher(values: Sequence[str]) -> Callable[[str | None], bool]:
    networks = _networks(values)

    def match(address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in n for n in networks)

    return match


def _wildcard_regex(value: str) -> str:
    return ".*".join(re.escape(part) for part in value.split("*"))


def _namespace_matcher(values: Sequence[str]) -> Callable[[str | None], bool]:
    """pilot: ``.*/ns/<namespace, * as .*>/.*`` on the peer's URI SAN."""
    pattern = re.compile("|".join(f".*/ns/{_wildcard_regex(v)}/.*" for v in values))
    return lambda p: p is not None and pattern.fullmatch(p) is not None


def _service_account_matcher(values: Sequence[str], policy_ns: str) -> Callable[[str | None], bool]:
    """pilot: ``spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?``; ``sa`` alone means the policy's
    namespace."""
    alternatives = []
    for value in values:
        ns, sep, sa = value.partition("/")
        if not sep:
            ns, sa = policy_ns, value
        alternatives.append(f".+/ns/{re.escape(ns)}/(?:.+/|)sa/{re.escape(sa)}(?:/.+)?")
    pattern = re.compile("|".join(alternatives))
    return lambda p: p is not None and pattern.fullmatch(p) is not None


def _principal_matcher(values: Sequence[str]) -> Callable[[str | None], bool]:
    if not any("*" in v for v in values):
        return frozenset(values).__contains__  # None is in no set of strings
    match = _string_matcher(values)
    return lambda p: p is not None and match(p)


def _trust_domain_matcher(values: Sequence[str]) -> Callable[[str | None], bool]:
    match = _string_matcher(values)
    return lambda p: p is not None and match(p.partition("/")[0])


_ANY: Final[StrMatch] = bool


def _request_principal_matcher(values: Sequence[str]) -> Callable[[JwtAuthn | None], bool]:
    """pilot's requestPrincipalGenerator: issuer and subject matched apart, split at the last
    ``/`` (an issuer may be a URL)."""
    pairs: list[tuple[StrMatch, StrMatch]] = []
    for value in values:
        iss, found, sub = value.rpartition("/")
        if not found:
            iss, sub = value, ""
        if value == "*":
            pairs.append((_ANY, _ANY))
        elif value.startswith("*"):
            if found:
                pairs.append(
                    (_ANY if iss == "*" else _string_matcher([iss]), _string_matcher([sub]))
                )
            else:
                pairs.append((_ANY, _string_matcher([value])))
        elif value.endswith("*"):
            if found:
                pairs.append(
                    (_string_matcher([iss]), _ANY if sub == "*" else _string_matcher([sub]))
                )
            else:
                pairs.append((_string_matcher([value]), _ANY))
        else:
            exact_iss, exact_sub = iss, sub
            pairs.append((exact_iss.__eq__, exact_sub.__eq__))

    def match(jwt: JwtAuthn | None) -> bool:
        if jwt is None or not jwt.issuer or not jwt.subject:
            return False
        return any(mi(jwt.issuer) and ms(jwt.subject) for mi, ms in pairs)

    return match


def _field(
    preds: list[Pred], values: Sequence[str] | None, not_values: Sequence[str] | None, build: Any
) -> None:
    """Add the predicates of one field and its ``not`` twin (``build(values) -> Pred``)."""
    if values:
        preds.append(build(values))
    if not_values:
        negated = build(not_values)
        preds.append(lambda r: not negated(r))


def _source(source: Source, policy_ns: str) -> list[Pred]:
    preds: list[Pred] = []

    def on_principal(make: Callable[[Sequence[str]], Callable[[str | None], bool]]) -> Any:
        def build(values: Sequence[str]) -> Pred:
            m = make(values)
            return lambda r: m(r.peer_principal)

        return build

    _field(preds, source.principals, source.not_principals, on_principal(_principal_matcher))
    _field(preds, source.namespaces, source.not_namespaces, on_principal(_namespace_matcher))
    _field(
        preds,
        source.service_accounts,
        source.not_service_accounts,
        on_principal(lambda v: _service_account_matcher(v, policy_ns)),
    )
    _field(
        preds, source.trust_domains, source.not_trust_domains, on_principal(_trust_domain_matcher)
    )

    def on_jwt(values: Sequence[str]) -> Pred:
        m = _request_principal_matcher(values)
        return lambda r: m(r.jwt)

    _field(preds, source.request_principals, source.not_request_principals, on_jwt)

    def on_peer_ip(values: Sequence[str]) -> Pred:
        m = _ip_matcher(values)
        return lambda r: m(r.peer_address)

    def on_remote_ip(values: Sequence[str]) -> Pred:
        m = _ip_matcher(values)
        return lambda r: m(r.remote_address if r.remote_address is not None else r.peer_address)

    _field(preds, source.ip_blocks, source.not_ip_blocks, on_peer_ip)
    _field(preds, source.remote_ip_blocks, source.not_remote_ip_blocks, on_remote_ip)
    return preds


def _operation(operation: Operation) -> list[Pred]:
    preds: list[Pred] = []

    def on_host(values: Sequence[str]) -> Pred:
        m = _string_matcher(values, ignore_case=True)
        return lambda r: bool(r.host) and m(r.host)

    def on_port(values: Sequence[str]) -> Pred:
        ports = frozenset(int(v) for v in values)
        return lambda r: r.port in ports

    def on_method(values: Sequence[str]) -> Pred:
        m = _string_matcher(values)
        return lambda r: m(r.method)

    def on_path(values: Sequence[str]) -> Pred:
        m = _path_matcher(values)
        return lambda r: m(r.path.partition("?")[0] if "?" in r.path else r.path)

    _field(preds, operation.hosts, operation.not_hosts, on_host)
    _field(preds, operation.ports, operation.not_ports, on_port)
    _field(preds, operation.methods, operation.not_methods, on_method)
    _field(preds, operation.paths, operation.not_paths, on_path)
    return preds


_BRACKETED: Final = re.compile(r"\[([^\[\]]+)\]")


def _bracketed(rest: str) -> list[str] | None:
    """``[a][b]`` → ``["a", "b"]``; None when ``rest`` is not only bracketed names."""
    names = _BRACKETED.findall(rest)
    if not names or "".join(f"[{n}]" for n in names) != rest:
        return None
    return names


def _condition_builder(key: str, policy_ns: str) -> Callable[[Sequence[str]], Pred] | None:
    """The predicate factory of a ``when`` key; None for a key Istio does not know."""
    for prefix in ("request.headers", "request.experimental.inline.headers"):
        if key.startswith(prefix + "["):
            names = _bracketed(key[len(prefix) :])
            if names is None or len(names) != 1:
                return None
            header = names[0].lower()

            def on_header(values: Sequence[str], header: str = header) -> Pred:
                if "*" in values:
                    return lambda r: header in r.headers
                m = _string_matcher(values)
                return lambda r: header in r.headers and m(r.headers[header])

            return on_header
    if key.startswith("request.auth.claims["):
        path = _bracketed(key[len("request.auth.claims") :])
        if path is None:
            return None

        def on_claim(values: Sequence[str], path: Sequence[str] = tuple(path)) -> Pred:
            m = _string_matcher(values)
            return lambda r: r.jwt is not None and any(m(v) for v in r.jwt.claim(path))

        return on_claim
    if key.startswith("experimental.envoy.filters.") and key.endswith("]"):
        filter_name, _, rest = key.removeprefix("experimental.").partition("[")
        field_name = rest[:-1]
        if not field_name or "[" in field_name or "]" in field_name:
            return None

        def on_metadata(values: Sequence[str]) -> Pred:
            listed = _string_matcher(
                [v[1:-1] for v in values if v.startswith("[") and v.endswith("]")]
            )
            plain = _string_matcher(
                [v for v in values if not (v.startswith("[") and v.endswith("]"))]
            )

            def match(r: RequestAttributes) -> bool:
                value = r.metadata.get(filter_name, _EMPTY).get(field_name)
                if isinstance(value, str):
                    return plain(value)
                if isinstance(value, list):
                    return any(isinstance(v, str) and listed(v) for v in value)
                return False

            return match

        return on_metadata

    def ip(attr: str) -> Callable[[Sequence[str]], Pred]:
        def build(values: Sequence[str]) -> Pred:
            m = _ip_matcher(values)
            if attr == "remote":
                return lambda r: m(
                    r.remote_address if r.remote_address is not None else r.peer_address
                )
            if attr == "destination":
                return lambda r: m(r.destination_address)
            return lambda r: m(r.peer_address)

        return build

    def principal(
        make: Callable[[Sequence[str]], Callable[[str | None], bool]],
    ) -> Callable[[Sequence[str]], Pred]:
        def build(values: Sequence[str]) -> Pred:
            m = make(values)
            return lambda r: m(r.peer_principal)

        return build

    def jwt_strings(read: Callable[[JwtAuthn], Sequence[str]]) -> Callable[[Sequence[str]], Pred]:
        def build(values: Sequence[str]) -> Pred:
            m = _string_matcher(values)
            return lambda r: r.jwt is not None and any(m(v) for v in read(r.jwt) if v)

        return build

    def request_principal(values: Sequence[str]) -> Pred:
        m = _request_principal_matcher(values)
        return lambda r: m(r.jwt)

    def port(values: Sequence[str]) -> Pred:
        ports = frozenset(int(v) for v in values)
        return lambda r: r.port in ports

    def sni(values: Sequence[str]) -> Pred:
        m = _string_matcher(values)
        return lambda r: r.sni is not None and m(r.sni)

    simple: dict[str, Callable[[Sequence[str]], Pred]] = {
        "source.ip": ip("source"),
        "remote.ip": ip("remote"),
        "destination.ip": ip("destination"),
        "source.namespace": principal(_namespace_matcher),
        "source.serviceAccount": principal(lambda v: _service_account_matcher(v, policy_ns)),
        "source.principal": principal(_principal_matcher),
        "request.auth.principal": request_principal,
        "request.auth.audiences": jwt_strings(lambda j: j.audiences),
        "request.auth.presenter": jwt_strings(lambda j: (j.presenter,)),
        "destination.port": port,
        "connection.sni": sni,
    }
    return simple.get(key)


def _conditions(conditions: Sequence[Condition], policy_ns: str) -> list[Pred]:
    preds: list[Pred] = []
    for condition in conditions:
        build = _condition_builder(condition.key, policy_ns)
        if build is None:  # refused by authorization_problems before we get here
            raise ValueError(f"unknown attribute {condition.key}")
        _field(preds, condition.values, condition.not_values, build)
    return preds


def _all(preds: Sequence[Pred]) -> Pred:
    if not preds:
        return lambda r: True
    if len(preds) == 1:
        return preds[0]
    fixed = tuple(preds)

    def match(r: RequestAttributes) -> bool:
        for p in fixed:
            if not p(r):
                return False
        return True

    return match


def _any(preds: Sequence[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]
    fixed = tuple(preds)

    def match(r: RequestAttributes) -> bool:
        for p in fixed:
            if p(r):
                return True
        return False

    return match


def _rule(rule: Rule, policy_ns: str) -> Pred:
    parts: list[Pred] = []
    if rule.from_:
        parts.append(
            _any([_all(_source(f.source, policy_ns) if f.source else []) for f in rule.from_])
        )
    if rule.to:
        parts.append(_any([_all(_operation(t.operation) if t.operation else []) for t in rule.to]))
    parts += _conditions(rule.when or (), policy_ns)
    return _all(parts)


# --------------------------------------------------------------------------- validation


def _template_problem(path: str) -> str:
    if "{" not in path and "}" not in path:
        return ""
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if ("{" in segment or "}" in segment) and segment not in ("{*}", "{**}"):
            return f"invalid path template {path!r}: {{*}} and {{**}} must be whole segments"
        if segment == "{**}" and i != len(segments) - 1:
            return f"invalid path template {path!r}: {{**}} must be the last segment"
    return ""


def authorization_problems(spec: AuthorizationPolicy) -> list[tuple[str, str]]:
    """What meshlib cannot enforce in ``spec``, as ``(field path, message)``: the CUSTOM action,
    ``when`` keys Istio does not know, ports that are not port numbers, IP blocks that are not
    IPs or CIDRs, bad path templates."""
    problems: list[tuple[str, str]] = []
    if spec.action == "CUSTOM":
        problems.append(
            (
                "action",
                "CUSTOM is not supported: meshlib has no external authorizer (use ALLOW or DENY)",
            )
        )
    for i, rule in enumerate(spec.rules or ()):
        where = f"rules[{i}]"
        for j, entry in enumerate(rule.from_ or ()):
            source = entry.source
            if source is None:
                continue
            for name in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
                for k, value in enumerate(getattr(source, name) or ()):
                    try:
                        _networks([value])
                    except ValueError:
                        camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)
                        problems.append(
                            (
                                f"{where}.from[{j}].source.{camel}[{k}]",
                                f"{value!r} is not an IP address or CIDR",
                            )
                        )
        for j, to in enumerate(rule.to or ()):
            op = to.operation
            if op is None:
                continue
            for name in ("ports", "not_ports"):
                for k, value in enumerate(getattr(op, name) or ()):
                    if not (value.isascii() and value.isdigit() and int(value) <= 65535):
                        camel = "notPorts" if name == "not_ports" else "ports"
                        problems.append(
                            (
                                f"{where}.to[{j}].operation.{camel}[{k}]",
                                f"{value!r} is not a port number",
                            )
                        )
            for name in ("paths", "not_paths"):
                for k, value in enumerate(getattr(op, name) or ()):
                    message = _template_problem(value)
                    if message:
                        camel = "notPaths" if name == "not_paths" else "paths"
                        problems.append((f"{where}.to[{j}].operation.{camel}[{k}]", message))
        for j, condition in enumerate(rule.when or ()):
            path = f"{where}.when[{j}]"
            if _condition_builder(condition.key, "") is None:
                problems.append((f"{path}.key", f"unknown attribute {condition.key!r}"))
                continue
            if not condition.values and not condition.not_values:
                problems.append(
                    (
                        path,
                        f"one of values or notValues must be set for key {condition.key!r}",
                    )
                )
            values = [*(condition.values or ()), *(condition.not_values or ())]
            if condition.key == "destination.port":
                for value in values:
                    if not (value.isascii() and value.isdigit() and int(value) <= 65535):
                        problems.append((path, f"{value!r} is not a port number"))
            if condition.key in ("source.ip", "remote.ip", "destination.ip"):
                for value in values:
                    try:
                        _networks([value])
                    except ValueError:
                        problems.append((path, f"{value!r} is not an IP address or CIDR"))
    return problems


# --------------------------------------------------------------------------- the authorizer


@dataclass(frozen=True, slots=True)
class _Compiled:
    key: str
    rules: tuple[Pred, ...]


def _first_match(
    policies: Sequence[_Compiled], request: RequestAttributes
) -> tuple[str, int] | None:
    for policy in policies:
        for index, rule in enumerate(policy.rules):
            if rule(request):
                return policy.key, index
    return None


_ALLOW_NO_POLICY: Final = Decision(True)
_DENY_NO_MATCH: Final = Decision(False, "ALLOW")


class Authorizer:
    """The compiled AuthorizationPolicies of one workload. ``decide`` is pure and fast."""

    def __init__(
        self,
        deny: Sequence[_Compiled],
        allow: Sequence[_Compiled],
        audit: Sequence[_Compiled],
        has_allow: bool,
    ) -> None:
        self._deny = tuple(deny)
        self._allow = tuple(allow)
        self._audit = tuple(audit)
        self._has_allow = has_allow

    def decide(self, request: RequestAttributes) -> Decision:
        audit_key: str | None = None
        if self._audit:
            hit = _first_match(self._audit, request)
            audit_key = hit[0] if hit else None
        hit = _first_match(self._deny, request) if self._deny else None
        if hit is not None:
            return Decision(False, "DENY", hit[0], hit[1], audit_key is not None, audit_key)
        if not self._has_allow:
            if audit_key is None:
                return _ALLOW_NO_POLICY
            return Decision(True, None, None, None, True, audit_key)
        hit = _first_match(self._allow, request)
        if hit is not None:
            return Decision(True, "ALLOW", hit[0], hit[1], audit_key is not None, audit_key)
        if audit_key is None:
            return _DENY_NO_MATCH
        return Decision(False, "ALLOW", None, None, True, audit_key)


def compile_authorization(policies: Iterable[NamedPolicy]) -> Authorizer:
    """Compile the policies that apply to a workload (:func:`policies_for`) into an
    :class:`Authorizer`. Raises ``ConfigError`` naming every problem of
    :func:`authorization_problems` (CUSTOM among them)."""
    problems: list[Problem] = []
    deny: list[_Compiled] = []
    allow: list[_Compiled] = []
    audit: list[_Compiled] = []
    has_allow = False
    for policy in policies:
        found = authorization_problems(policy.spec)
        if found:
            where = f"AuthorizationPolicy {policy.key}"
            problems += [Problem(where, 0, f"spec.{path}", message) for path, message in found]
            continue
        action = policy.spec.action or "ALLOW"
        rules = tuple(_rule(r, policy.namespace) for r in policy.spec.rules or ())
        compiled = _Compiled(policy.key, rules)
        if action == "DENY":
            deny.append(compiled)
        elif action == "AUDIT":
            audit.append(compiled)
        else:
            has_allow = True
            allow.append(compiled)
    if problems:
        raise ConfigError(problems)
    return Authorizer(deny, allow, audit, has_allow)
