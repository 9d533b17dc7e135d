"""Authorization: Istio's AuthorizationPolicy semantics, table-driven, Istio's Bookinfo task with
the outcomes Istio documents, and path tricks against path rules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshlib.config.security import AuthorizationPolicy
from meshlib.errors import ConfigError
from meshlib.security.authz import (
    DENIED_BODY,
    NamedPolicy,
    RequestAttributes,
    authorization_problems,
    compile_authorization,
    original_client,
    policies_for,
)
from meshlib.security.jwt import JwtAuthn
from meshlib.security.paths import normalize_path

PRODUCTPAGE = "cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS = "cluster.local/ns/default/sa/bookinfo-reviews"


def policy(spec: dict[str, Any], name: str = "p", namespace: str = "default") -> NamedPolicy:
    return NamedPolicy(name, namespace, AuthorizationPolicy.model_validate(spec))


def request(**fields: Any) -> RequestAttributes:
    base: dict[str, Any] = {"method": "GET", "path": "/", "host": "svc:9080", "port": 9080}
    base.update(fields)
    return RequestAttributes(**base)


def allowed(specs: list[dict[str, Any]], req: RequestAttributes) -> bool:
    authorizer = compile_authorization([policy(s, f"p{i}") for i, s in enumerate(specs)])
    return authorizer.decide(req).allowed


def jwt(iss: str = "https://issuer", sub: str = "alice", **claims: Any) -> JwtAuthn:
    aud = claims.pop("aud", ())
    return JwtAuthn(
        iss, sub, tuple(aud), claims.pop("azp", ""), {"iss": iss, "sub": sub, **claims}, ""
    )


# --------------------------------------------------------------------------- evaluation order


def test_no_policy_allows() -> None:
    decision = compile_authorization([]).decide(request())
    assert decision.allowed
    assert decision.policy is None
    assert decision.response_code_details == ""


def test_allow_nothing() -> None:
    decision = compile_authorization([policy({}, "allow-nothing")]).decide(request())
    assert not decision.allowed
    assert decision.response_code_details == "rbac_access_denied_matched_policy[none]"
    assert DENIED_BODY == "RBAC: access denied"


def test_empty_rule_matches_everything() -> None:
    assert allowed([{"rules": [{}]}], request(method="DELETE", path="/x"))
    assert not allowed([{"action": "DENY", "rules": [{}]}], request())


def test_deny_wins_over_allow_and_names_the_rule() -> None:
    specs = [
        {"rules": [{}]},
        {
            "action": "DENY",
            "rules": [
                {"to": [{"operation": {"methods": ["POST"]}}]},
                {"to": [{"operation": {"paths": ["/admin*"]}}]},
            ],
        },
    ]
    authorizer = compile_authorization([policy(s, f"p{i}") for i, s in enumerate(specs)])
    assert authorizer.decide(request()).allowed
    decision = authorizer.decide(request(path="/admin/x"))
    assert (decision.allowed, decision.action, decision.policy, decision.rule) == (
        False,
        "DENY",
        "default/p1",
        1,
    )
    assert (
        decision.response_code_details
        == "rbac_access_denied_matched_policy[ns[default]-policy[p1]-rule[1]]"
    )


def test_deny_without_rules_denies_nothing() -> None:
    assert allowed([{"action": "DENY"}], request())


def test_any_allow_policy_is_enough() -> None:
    specs = [
        {"rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
        {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    ]
    assert allowed(specs, request(method="GET"))
    assert allowed(specs, request(method="POST"))
    assert not allowed(specs, request(method="PUT"))


def test_audit_only_marks() -> None:
    authorizer = compile_authorization(
        [policy({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]})]
    )
    marked = authorizer.decide(request(path="/a"))
    assert (marked.allowed, marked.audited, marked.audit_policy) == (True, True, "default/p")
    assert not authorizer.decide(request(path="/b")).audited
    both = compile_authorization(
        [
            policy({"action": "AUDIT", "rules": [{}]}, "audit"),
            policy({"action": "DENY", "rules": [{}]}, "deny"),
        ]
    ).decide(request())
    assert (both.allowed, both.audited, both.policy) == (False, True, "default/deny")


# --------------------------------------------------------------------------- rule structure

RULE_CASES = [
    # (rule, request fields, matches)
    (
        {"from": [{"source": {"principals": ["a"]}}, {"source": {"principals": ["b"]}}]},
        {"peer_principal": "b"},
        True,
    ),
    ({"to": [{"operation": {"methods": ["GET"], "paths": ["/x"]}}]}, {"path": "/y"}, False),
    (
        {"to": [{"operation": {"methods": ["GET"]}}, {"operation": {"paths": ["/y"]}}]},
        {"method": "POST", "path": "/y"},
        True,
    ),
    (
        {"from": [{"source": {"principals": ["a"]}}], "to": [{"operation": {"methods": ["GET"]}}]},
        {"peer_principal": "b"},
        False,
    ),
    (
        {
            "when": [
                {"key": "request.headers[x-a]", "values": ["1"]},
                {"key": "request.headers[x-b]", "values": ["2"]},
            ]
        },
        {"headers": {"x-a": "1"}},
        False,
    ),
    (
        {
            "when": [
                {"key": "request.headers[X-A]", "values": ["1"]},
                {"key": "request.headers[x-b]", "values": ["2"]},
            ]
        },
        {"headers": {"x-a": "1", "x-b": "2"}},
        True,
    ),
    (
        {"to": [{"operation": {"methods": ["GET"], "notPaths": ["/private*"]}}]},
        {"path": "/private/x"},
        False,
    ),
    ({"to": [{"operation": {"notMethods": ["DELETE"]}}]}, {"method": "GET"}, True),
    ({"to": [{"operation": {"paths": ["/x"], "notPaths": ["/x"]}}]}, {"path": "/x"}, False),
]


@pytest.mark.parametrize(("rule", "fields", "matches"), RULE_CASES)
def test_rule_structure(rule: dict[str, Any], fields: dict[str, Any], matches: bool) -> None:
    assert allowed([{"rules": [rule]}], request(**fields)) is matches


# --------------------------------------------------------------------------- value matching

FIELD_CASES = [
    # (operation/source field, values, request fields, matches)
    ("paths", ["/api"], {"path": "/api"}, True),
    ("paths", ["/api"], {"path": "/api/"}, False),
    ("paths", ["/api*"], {"path": "/api/v1"}, True),
    ("paths", ["*/status"], {"path": "/x/status"}, True),
    ("paths", ["*"], {"path": "/anything"}, True),
    ("paths", ["/api"], {"path": "/api?x=1"}, True),  # query excluded
    ("paths", ["/foo/{*}/bar"], {"path": "/foo/x/bar"}, True),
    ("paths", ["/foo/{*}/bar"], {"path": "/foo/x/y/bar"}, False),
    ("paths", ["/foo/{*}/bar"], {"path": "/foo//bar"}, False),
    ("paths", ["/foo/{**}"], {"path": "/foo/a/b/c"}, True),
    ("paths", ["/foo/{**}"], {"path": "/foo/"}, True),
    ("paths", ["/foo/{**}"], {"path": "/foobar"}, False),
    ("paths", ["/{*}/x/{**}"], {"path": "/a/x/b.txt"}, True),
    ("methods", ["GET"], {"method": "get"}, False),
    ("methods", ["GE*"], {"method": "GET"}, True),
    ("hosts", ["svc.example.com"], {"host": "SVC.Example.com"}, True),
    (
        "hosts",
        ["svc.example.com"],
        {"host": "svc.example.com:8080"},
        False,
    ),  # Istio: port is part of it
    ("hosts", ["svc.example.com:*"], {"host": "svc.example.com:8080"}, True),
    ("hosts", ["*.example.com"], {"host": "a.EXAMPLE.com"}, True),
    ("hosts", ["*"], {"host": ""}, False),
    ("ports", ["9080"], {"port": 9080}, True),
    ("ports", ["9080"], {"port": 9081}, False),
]


@pytest.mark.parametrize(("name", "values", "fields", "matches"), FIELD_CASES)
def test_operation_fields(
    name: str, values: list[str], fields: dict[str, Any], matches: bool
) -> None:
    spec = {"rules": [{"to": [{"operation": {name: values}}]}]}
    assert allowed([spec], request(**fields)) is matches
    not_name = "not" + name[0].upper() + name[1:]
    negated = {"rules": [{"to": [{"operation": {not_name: values}}]}]}
    assert allowed([negated], request(**fields)) is not matches


SOURCE_CASES = [
    ("principals", [PRODUCTPAGE], {"peer_principal": PRODUCTPAGE}, True),
    ("principals", [PRODUCTPAGE], {"peer_principal": None}, False),  # plain text
    ("principals", ["*"], {"peer_principal": REVIEWS}, True),
    ("principals", ["*"], {"peer_principal": None}, False),
    ("principals", ["cluster.local/ns/default/*"], {"peer_principal": REVIEWS}, True),
    ("principals", ["*/sa/bookinfo-reviews"], {"peer_principal": REVIEWS}, True),
    ("namespaces", ["default"], {"peer_principal": REVIEWS}, True),
    ("namespaces", ["default"], {"peer_principal": "cluster.local/ns/other/sa/default"}, False),
    ("namespaces", ["def*"], {"peer_principal": REVIEWS}, True),
    ("namespaces", ["*"], {"peer_principal": None}, False),  # plain text never has a namespace
    ("serviceAccounts", ["bookinfo-reviews"], {"peer_principal": REVIEWS}, True),  # policy's ns
    ("serviceAccounts", ["other/bookinfo-reviews"], {"peer_principal": REVIEWS}, False),
    ("serviceAccounts", ["bookinfo-review"], {"peer_principal": REVIEWS}, False),
    ("trustDomains", ["cluster.local"], {"peer_principal": REVIEWS}, True),
    ("trustDomains", ["example.org"], {"peer_principal": REVIEWS}, False),
    ("ipBlocks", ["10.0.0.0/8"], {"peer_address": "10.1.2.3"}, True),
    ("ipBlocks", ["10.1.2.3"], {"peer_address": "10.1.2.4"}, False),
    ("ipBlocks", ["2001:db8::/32"], {"peer_address": "2001:db8::1"}, True),
    ("ipBlocks", ["10.0.0.0/8"], {"peer_address": None}, False),
    (
        "remoteIpBlocks",
        ["203.0.113.0/24"],
        {"peer_address": "10.0.0.1", "remote_address": "203.0.113.9"},
        True,
    ),
    ("remoteIpBlocks", ["10.0.0.1"], {"peer_address": "10.0.0.1"}, True),  # no remote: the peer
    ("requestPrincipals", ["https://issuer/alice"], {"jwt": jwt()}, True),
    ("requestPrincipals", ["https://issuer/alice"], {"jwt": jwt(sub="bob")}, False),
    ("requestPrincipals", ["*"], {"jwt": jwt()}, True),
    ("requestPrincipals", ["*"], {"jwt": None}, False),
    ("requestPrincipals", ["https://issuer/*"], {"jwt": jwt(sub="anyone")}, True),
    ("requestPrincipals", ["*/alice"], {"jwt": jwt(iss="https://other")}, True),
    ("requestPrincipals", ["*issuer/alice"], {"jwt": jwt()}, True),
    # pilot splits at the last "/": issuer "https:/" exactly, subject prefix "iss"
    ("requestPrincipals", ["https://iss*"], {"jwt": jwt()}, False),
    ("requestPrincipals", ["iss*"], {"jwt": jwt(iss="issuer-1", sub="x")}, True),
]


@pytest.mark.parametrize(("name", "values", "fields", "matches"), SOURCE_CASES)
def test_source_fields(name: str, values: list[str], fields: dict[str, Any], matches: bool) -> None:
    spec = {"rules": [{"from": [{"source": {name: values}}]}]}
    assert allowed([spec], request(**fields)) is matches


def test_not_principals_on_plain_text_match_as_envoy_does() -> None:
    spec = {"rules": [{"from": [{"source": {"notPrincipals": [PRODUCTPAGE]}}]}]}
    assert allowed([spec], request(peer_principal=None))
    assert not allowed([spec], request(peer_principal=PRODUCTPAGE))


WHEN_CASES = [
    ("request.headers[version]", ["v1"], {"headers": {"version": "v1"}}, True),
    ("request.headers[version]", ["v*"], {"headers": {"version": "v2"}}, True),
    ("request.headers[version]", ["*"], {"headers": {"version": ""}}, True),  # presence
    ("request.headers[version]", ["*"], {"headers": {}}, False),
    ("source.ip", ["10.0.0.0/8"], {"peer_address": "10.0.0.1"}, True),
    ("remote.ip", ["192.0.2.1"], {"peer_address": "10.0.0.1", "remote_address": "192.0.2.1"}, True),
    ("source.namespace", ["default"], {"peer_principal": REVIEWS}, True),
    ("source.namespace", ["default"], {"peer_principal": None}, False),
    ("source.principal", [REVIEWS], {"peer_principal": REVIEWS}, True),
    ("source.serviceAccount", ["default/bookinfo-reviews"], {"peer_principal": REVIEWS}, True),
    ("request.auth.principal", ["https://issuer/alice"], {"jwt": jwt()}, True),
    ("request.auth.audiences", ["svc"], {"jwt": jwt(aud=("x", "svc"))}, True),
    ("request.auth.audiences", ["svc"], {"jwt": jwt()}, False),
    ("request.auth.presenter", ["web*"], {"jwt": jwt(azp="webapp")}, True),
    ("request.auth.claims[groups]", ["admin"], {"jwt": jwt(groups=["dev", "admin"])}, True),
    ("request.auth.claims[groups]", ["admin"], {"jwt": jwt(groups="admin")}, True),
    ("request.auth.claims[groups]", ["admin"], {"jwt": jwt(groups=["dev"])}, False),
    ("request.auth.claims[groups]", ["admin"], {"jwt": None}, False),
    ("request.auth.claims[a][b]", ["c"], {"jwt": jwt(a={"b": "c"})}, True),
    ("request.auth.claims[a][b]", ["c"], {"jwt": jwt(a={"b": ["x", "c"]})}, True),
    ("request.auth.claims[a][b]", ["c"], {"jwt": jwt(a="c")}, False),
    ("destination.ip", ["10.0.0.0/24"], {"destination_address": "10.0.0.7"}, True),
    ("destination.port", ["9080"], {"port": 9080}, True),
    ("connection.sni", ["*.local"], {"sni": "reviews.default.svc.cluster.local"}, True),
    ("connection.sni", ["*.local"], {"sni": None}, False),
    (
        "experimental.envoy.filters.a.b[c]",
        ["v"],
        {"metadata": {"envoy.filters.a.b": {"c": "v"}}},
        True,
    ),
    (
        "experimental.envoy.filters.a.b[c]",
        ["[v]"],
        {"metadata": {"envoy.filters.a.b": {"c": ["x", "v"]}}},
        True,
    ),
    ("experimental.envoy.filters.a.b[c]", ["v"], {}, False),
]


@pytest.mark.parametrize(("key", "values", "fields", "matches"), WHEN_CASES)
def test_when_conditions(
    key: str, values: list[str], fields: dict[str, Any], matches: bool
) -> None:
    assert (
        allowed([{"rules": [{"when": [{"key": key, "values": values}]}]}], request(**fields))
        is matches
    )
    negated = {"rules": [{"when": [{"key": key, "notValues": values}]}]}
    assert allowed([negated], request(**fields)) is not matches


def test_original_client_follows_trusted_proxies() -> None:
    assert original_client("10.0.0.1", "1.2.3.4, 5.6.7.8") == "10.0.0.1"  # Istio's default: 0
    assert original_client("10.0.0.1", "1.2.3.4, 5.6.7.8", 1) == "5.6.7.8"
    assert original_client("10.0.0.1", "1.2.3.4, 5.6.7.8", 2) == "1.2.3.4"
    assert original_client("10.0.0.1", "1.2.3.4", 2) == "10.0.0.1"
    assert original_client("10.0.0.1", None, 1) == "10.0.0.1"


# --------------------------------------------------------------------------- path tricks

PATH_TRICKS = [
    # (raw path, normalisation, denied by a DENY rule on paths ["/admin", "/admin/*"])
    ("/admin", "BASE", True),
    ("/admin/users", "BASE", True),
    ("/Admin", "BASE", False),  # paths are case-sensitive, in Istio too
    ("/public/../admin", "BASE", True),
    ("/public/%2e%2e/admin", "BASE", True),
    ("/public/%2E%2E/admin/x", "BASE", True),
    ("/%61dmin", "BASE", True),
    ("/admin?x=1", "BASE", True),
    ("/public\\..\\admin", "BASE", True),
    ("/./admin/", "BASE", True),
    ("//admin", "BASE", False),  # CVE-2021-31920: why Istio advises merging slashes
    ("//admin", "MERGE_SLASHES", True),
    ("/admin//x", "MERGE_SLASHES", True),
    ("/admin%2F..", "BASE", False),  # %2F kept: one segment "admin%2F.."
    ("/public%2F..%2Fadmin", "BASE", False),
    ("/public%2F..%2Fadmin", "DECODE_AND_MERGE_SLASHES", True),
    ("/admin%2Fx", "DECODE_AND_MERGE_SLASHES", True),
    ("/admin%252F", "DECODE_AND_MERGE_SLASHES", False),  # no double decoding
]


@pytest.mark.parametrize(("raw", "mode", "denied"), PATH_TRICKS)
def test_path_tricks(raw: str, mode: str, denied: bool) -> None:
    spec = {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]}
    path = normalize_path(raw, mode)  # type: ignore[arg-type]
    assert allowed([spec], request(path=path)) is not denied


# --------------------------------------------------------------------------- Bookinfo's task


ALLOW_NOTHING = policy({}, "allow-nothing")
PRODUCTPAGE_VIEWER = policy(
    {
        "selector": {"matchLabels": {"app": "productpage"}},
        "action": "ALLOW",
        "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
    },
    "productpage-viewer",
)
DETAILS_VIEWER = policy(
    {
        "selector": {"matchLabels": {"app": "details"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": [PRODUCTPAGE]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            }
        ],
    },
    "details-viewer",
)
REVIEWS_VIEWER = policy(
    {
        "selector": {"matchLabels": {"app": "reviews"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": [PRODUCTPAGE]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            }
        ],
    },
    "reviews-viewer",
)
RATINGS_VIEWER = policy(
    {
        "selector": {"matchLabels": {"app": "ratings"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": [REVIEWS]}}],
                "to": [{"operation": {"methods": ["GET"]}}],
            }
        ],
    },
    "ratings-viewer",
)
STEPS = [
    [ALLOW_NOTHING],
    [ALLOW_NOTHING, PRODUCTPAGE_VIEWER],
    [ALLOW_NOTHING, PRODUCTPAGE_VIEWER, DETAILS_VIEWER],
    [ALLOW_NOTHING, PRODUCTPAGE_VIEWER, DETAILS_VIEWER, REVIEWS_VIEWER],
    [ALLOW_NOTHING, PRODUCTPAGE_VIEWER, DETAILS_VIEWER, REVIEWS_VIEWER, RATINGS_VIEWER],
    [],  # clean-up
]
# Each call of the product page: (app called, caller's principal, path)
CALLS = {
    "productpage": ("productpage", None, "/productpage"),  # the browser: plain text at the edge
    "details": ("details", PRODUCTPAGE, "/details/0"),
    "reviews": ("reviews", PRODUCTPAGE, "/reviews/0"),
    "ratings": ("ratings", REVIEWS, "/ratings/0"),
}
# Istio's task: which calls succeed after each step
EXPECTED = [
    set(),  # "RBAC: access denied"
    {"productpage"},  # "Error fetching product details" and "... product reviews"
    {"productpage", "details"},
    {"productpage", "details", "reviews"},  # "Ratings service is currently unavailable"
    {"productpage", "details", "reviews", "ratings"},  # stars shown
    {"productpage", "details", "reviews", "ratings"},
]


@pytest.mark.parametrize("step", range(len(STEPS)))
def test_bookinfo_authorization_task(step: int) -> None:
    succeeded = set()
    for call, (app, principal, path) in CALLS.items():
        applied = policies_for(
            STEPS[step], namespace="default", labels={"app": app, "version": "v1"}
        )
        decision = compile_authorization(applied).decide(
            request(method="GET", path=path, host=f"{app}:9080", peer_principal=principal)
        )
        if decision.allowed:
            succeeded.add(call)
    assert succeeded == EXPECTED[step]


def test_bookinfo_post_to_productpage_is_denied() -> None:
    applied = policies_for(
        [ALLOW_NOTHING, PRODUCTPAGE_VIEWER], namespace="default", labels={"app": "productpage"}
    )
    decision = compile_authorization(applied).decide(request(method="POST", path="/login"))
    assert not decision.allowed
    assert decision.response_code_details == "rbac_access_denied_matched_policy[none]"


# --------------------------------------------------------------------------- scope


def test_which_policies_apply() -> None:
    mesh_wide = policy({}, "mesh", "istio-system")
    mesh_selected = policy({"selector": {"matchLabels": {"app": "a"}}}, "mesh-a", "istio-system")
    namespace_wide = policy({}, "ns", "default")
    selected = policy(
        {"selector": {"matchLabels": {"app": "a", "version": "v1"}}}, "a-v1", "default"
    )
    other_ns = policy({}, "other", "other")
    by_service = policy(
        {"targetRefs": [{"kind": "Service", "group": "", "name": "a"}]}, "svc", "default"
    )
    by_gateway = policy(
        {"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "a"}},
        "gw",
        "default",
    )
    everything = [
        other_ns,
        selected,
        namespace_wide,
        mesh_selected,
        mesh_wide,
        by_service,
        by_gateway,
    ]
    names = [
        p.name
        for p in policies_for(
            everything, namespace="default", labels={"app": "a", "version": "v1"}, services=["a"]
        )
    ]
    assert names == ["mesh", "mesh-a", "a-v1", "ns", "svc"]
    names = [
        p.name
        for p in policies_for(everything, namespace="default", labels={"app": "a", "version": "v2"})
    ]
    assert names == ["mesh", "mesh-a", "ns"]
    names = [p.name for p in policies_for(everything, namespace="x", labels={}, root_namespace="x")]
    assert names == []


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        (
            {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]},
            "action",
            "CUSTOM is not supported",
        ),
        (
            {"rules": [{"when": [{"key": "request.unknown", "values": ["x"]}]}]},
            "rules[0].when[0].key",
            "unknown attribute",
        ),
        (
            {"rules": [{"when": [{"key": "request.headers", "values": ["x"]}]}]},
            "rules[0].when[0].key",
            "unknown attribute",
        ),
        (
            {"rules": [{"when": [{"key": "source.ip"}]}]},
            "rules[0].when[0]",
            "one of values or notValues",
        ),
        (
            {"rules": [{"when": [{"key": "source.ip", "values": ["nope"]}]}]},
            "rules[0].when[0]",
            "not an IP",
        ),
        (
            {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]},
            "rules[0].to[0].operation.ports[0]",
            "not a port",
        ),
        (
            {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]},
            "rules[0].from[0].source.ipBlocks[0]",
            "not an IP",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a/{**}/b"]}}]}]},
            "rules[0].to[0].operation.paths[0]",
            "last segment",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a{*}"]}}]}]},
            "rules[0].to[0].operation.paths[0]",
            "whole segments",
        ),
    ],
)
def test_refused_policies(spec: dict[str, Any], path: str, message: str) -> None:
    problems = authorization_problems(AuthorizationPolicy.model_validate(spec))
    assert any(p == path and message in m for p, m in problems), problems
    with pytest.raises(ConfigError) as info:
        compile_authorization([policy(spec, "bad")])
    assert "AuthorizationPolicy default/bad" in str(info.value)


def test_decision_is_frozen_and_cheap_to_share() -> None:
    decision = compile_authorization([]).decide(request())
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]
    assert replace(request(), path="/x").path == "/x"
