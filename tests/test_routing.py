"""The router: host lookup, every match kind, precedence, weights, and Istio's defaults."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from examples.bookinfo import NETWORKING
from meshlib import ConfigError, Mesh, RouteRequest

BOOKINFO = NETWORKING  # the project's Bookinfo rule files


def bookinfo(*names: str, seed: int | None = 7) -> Mesh:
    files = [BOOKINFO / "destination-rule-all.yaml", *(BOOKINFO / n for n in names)]
    return Mesh.from_files(files, seed=seed)


def vs(http: str, *, hosts: str = "[svc]", extra: str = "") -> Mesh:
    """A mesh with one VirtualService for host `svc` (http routes given as YAML) + subsets."""
    text = f"""
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: caller}}
spec:
  version: v1
  labels: {{team: blue}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc}}
spec:
  host: svc
  subsets:
  - {{name: a, labels: {{version: a}}}}
  - {{name: b, labels: {{version: b}}}}
  - {{name: c, labels: {{version: c}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc}}
spec:
  hosts: {hosts}
  http:
{http}
{extra}
"""
    return Mesh.from_yaml(text, seed=3)


def subset_of(mesh: Mesh, url: str = "http://svc/", method: str = "GET", **headers: str) -> str:
    decision = mesh.explain(method, url, {k.replace("_", "-"): v for k, v in headers.items()})
    if not decision.matched:
        return decision.flag or "?"
    assert decision.destination is not None
    return decision.destination.subset or "-"


ROUTE_B = "    route: [{destination: {host: svc, subset: b}}]"
ROUTE_A = "  - route: [{destination: {host: svc, subset: a}}]"


def rule(match: str) -> str:
    return f"  - match:\n{match}\n{ROUTE_B}\n{ROUTE_A}"


# --------------------------------------------------------------------------- Bookinfo acceptance


def test_reviews_test_v2_jason_goes_to_v2_everyone_else_v1() -> None:
    mesh = bookinfo("virtual-service-reviews-test-v2.yaml")
    url = "http://reviews:9080/reviews/0"
    jason = mesh.explain("GET", url, {"end-user": "jason"})
    assert jason.destination is not None
    assert (jason.destination.subset, jason.route_index) == ("v2", 0)
    for headers in ({"end-user": "alice"}, {"end-user": "Jason"}, {}):
        other = mesh.explain("GET", url, headers)
        assert other.destination is not None
        assert (other.destination.subset, other.route_index) == ("v1", 1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("virtual-service-reviews-80-20.yaml", {"v1": 0.80, "v2": 0.20}),
        ("virtual-service-reviews-90-10.yaml", {"v1": 0.90, "v2": 0.10}),
        ("virtual-service-reviews-50-v3.yaml", {"v1": 0.50, "v3": 0.50}),
        ("virtual-service-reviews-v2-v3.yaml", {"v2": 0.50, "v3": 0.50}),
    ],
)
def test_weighted_split_over_10000_explains(name: str, expected: dict[str, float]) -> None:
    mesh = bookinfo(name)
    counts = Counter(
        mesh.explain("GET", "http://reviews:9080/reviews/0").destination.subset  # type: ignore[union-attr]
        for _ in range(10_000)
    )
    assert set(counts) == set(expected)
    for subset, share in expected.items():
        assert abs(counts[subset] / 10_000 - share) <= 0.015, (subset, counts)


def test_ratings_delay_for_jason_only() -> None:
    mesh = bookinfo("virtual-service-ratings-test-delay.yaml")
    jason = mesh.explain("GET", "http://ratings:9080/ratings/0", {"end-user": "jason"})
    assert jason.fault.delay == 7.0
    assert jason.fault.delay_percentage == 100.0
    assert jason.fault.abort_status is None
    other = mesh.explain("GET", "http://ratings:9080/ratings/0", {"end-user": "bob"})
    assert other.fault.delay is None
    assert not other.fault.active


def test_ratings_abort_500_for_jason() -> None:
    mesh = bookinfo("virtual-service-ratings-test-abort.yaml")
    jason = mesh.explain("GET", "http://ratings:9080/ratings/0", {"end-user": "jason"})
    assert (jason.fault.abort_status, jason.fault.abort_percentage) == (500, 100.0)
    assert mesh.explain("GET", "http://ratings/ratings/0").fault.abort_status is None


def test_details_fault_555_at_100_percent() -> None:
    mesh = Mesh.from_file(BOOKINFO / "fault-injection-details-v1.yaml")
    decision = mesh.explain("GET", "http://details:9080/details/0")
    assert (decision.fault.abort_status, decision.fault.abort_percentage) == (555, 100.0)


def test_same_seed_routes_identically() -> None:
    def run() -> list[str | None]:
        mesh = bookinfo("virtual-service-reviews-80-20.yaml", seed=42)
        return [
            mesh.explain("GET", "http://reviews/").destination.subset  # type: ignore[union-attr]
            for _ in range(200)
        ]

    assert run() == run()


# --------------------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    "host",
    [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "REVIEWS.default.svc.cluster.local.",
    ],
)
def test_every_spelling_of_a_service_host(host: str) -> None:
    mesh = bookinfo("virtual-service-reviews-v3.yaml")
    decision = mesh.explain("GET", f"http://{host}/reviews/0")
    assert decision.destination is not None
    assert decision.destination.subset == "v3"
    assert decision.host == "reviews.default.svc.cluster.local"


def test_short_name_of_another_namespace_is_not_ours() -> None:
    mesh = bookinfo("virtual-service-reviews-v3.yaml")
    decision = mesh.explain("GET", "http://reviews.other/reviews/0")
    assert decision.passthrough


def test_wildcard_hosts_most_specific_wins() -> None:
    mesh = Mesh.from_yaml(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wide}
spec:
  hosts: ["*.example.com"]
  http: [{route: [{destination: {host: wide.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: narrow}
spec:
  hosts: ["*.api.example.com"]
  http: [{route: [{destination: {host: narrow.example.com}}]}]
"""
    )
    assert mesh.explain("GET", "http://x.api.example.com/").destination.host == (  # type: ignore[union-attr]
        "narrow.example.com"
    )
    assert mesh.explain("GET", "http://www.example.com/").destination.host == (  # type: ignore[union-attr]
        "wide.example.com"
    )
    assert mesh.explain("GET", "http://example.org/").passthrough


def test_unknown_host_passes_through_or_is_refused_under_registry_only() -> None:
    base = "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: me}\nspec:\n"
    allow = Mesh.from_yaml(base + "  registry: {static: {a: [{address: '127.0.0.1:1'}]}}\n")
    decision = allow.explain("GET", "http://elsewhere.example/")
    assert (decision.matched, decision.passthrough, decision.flag) == (True, True, None)
    strict = Mesh.from_yaml(base + "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
    refused = strict.explain("GET", "http://elsewhere.example/")
    assert (refused.matched, refused.flag) == (False, "NR")


def test_known_service_without_virtual_service_gets_default_route() -> None:
    mesh = Mesh.from_yaml(
        """
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      details: [{address: "127.0.0.1:9081", labels: {version: v1}}]
"""
    )
    decision = mesh.explain("GET", "http://details:9080/details/0")
    assert decision.matched
    assert decision.route_name == "default"
    assert decision.destination is not None
    assert decision.destination.host == "details.default.svc.cluster.local"
    assert decision.retry.attempts == 2


def test_gateway_bound_virtual_service_does_not_route_mesh_traffic() -> None:
    mesh = Mesh.from_files([BOOKINFO / "bookinfo-gateway.yaml"])
    assert mesh.explain("GET", "http://productpage:9080/productpage").passthrough


# --------------------------------------------------------------------------- match kinds


def test_uri_exact_prefix_regex() -> None:
    mesh = vs(
        rule(
            "    - uri: {exact: /exact}\n    - uri: {prefix: /pre}\n    - uri: {regex: '/r/[0-9]+'}"
        )
    )
    assert subset_of(mesh, "http://svc/exact") == "b"
    assert subset_of(mesh, "http://svc/exact/more") == "a"
    assert subset_of(mesh, "http://svc/prefix/x") == "b"
    assert subset_of(mesh, "http://svc/r/123") == "b"
    assert subset_of(mesh, "http://svc/r/123x") == "a"  # full match, as Envoy
    assert subset_of(mesh, "http://svc/exact?q=1") == "b"  # the query is not part of the uri


def test_ignore_uri_case_for_exact_and_prefix() -> None:
    mesh = vs(
        rule(
            "    - uri: {exact: /Exact}\n      ignoreUriCase: true\n"
            "    - uri: {prefix: /PRE}\n      ignoreUriCase: true"
        )
    )
    assert subset_of(mesh, "http://svc/exact") == "b"
    assert subset_of(mesh, "http://svc/pre/x") == "b"
    assert subset_of(vs(rule("    - uri: {exact: /Exact}")), "http://svc/exact") == "a"


def test_method_scheme_authority_port() -> None:
    assert subset_of(vs(rule("    - method: {exact: POST}")), method="POST") == "b"
    assert subset_of(vs(rule("    - method: {exact: POST}")), method="get") == "a"
    assert subset_of(vs(rule("    - scheme: {exact: https}")), "https://svc/") == "b"
    assert subset_of(vs(rule("    - scheme: {exact: https}")), "http://svc/") == "a"
    authority = vs(rule("    - authority: {prefix: 'svc:8'}"))
    assert subset_of(authority, "http://svc:8080/") == "b"
    assert subset_of(authority, "http://svc:9090/") == "a"
    port = vs(rule("    - port: 9080"))
    assert subset_of(port, "http://svc:9080/") == "b"
    assert subset_of(port, "http://svc/") == "a"


def test_headers_exact_prefix_regex_present() -> None:
    exact = vs(rule("    - headers: {end-user: {exact: jason}}"))
    assert subset_of(exact, end_user="jason") == "b"
    assert subset_of(exact, end_user="jason2") == "a"
    assert subset_of(exact) == "a"
    prefix = vs(rule("    - headers: {x-env: {prefix: can}}"))
    assert subset_of(prefix, x_env="canary-1") == "b"
    assert subset_of(prefix, x_env="stable") == "a"
    regex = vs(rule("    - headers: {x-env: {regex: 'canary-[0-9]'}}"))
    assert subset_of(regex, x_env="canary-7") == "b"
    assert subset_of(regex, x_env="canary-77") == "a"
    present = vs(rule("    - headers: {x-debug: {}}"))
    assert subset_of(present, x_debug="") == "b"
    assert subset_of(present) == "a"


def test_header_names_match_any_case_in_the_request() -> None:
    mesh = vs(rule("    - headers: {end-user: {exact: jason}}"))
    assert mesh.explain("GET", "http://svc/", {"End-User": "jason"}).destination.subset == "b"  # type: ignore[union-attr]


def test_header_names_match_any_case_in_the_rule() -> None:
    # Istio accepts `X-Requested-With` in a match; Envoy matches header names in any case
    mesh = vs(rule("    - headers: {X-Requested-With: {exact: XMLHttpRequest}}"))
    assert subset_of(mesh, x_requested_with="XMLHttpRequest") == "b"
    assert subset_of(mesh, X_Requested_With="XMLHttpRequest") == "b"
    assert subset_of(mesh) == "a"
    without = vs(rule("    - withoutHeaders: {X-Beta: {}}"))
    assert subset_of(without) == "b"
    assert subset_of(without, x_beta="1") == "a"


def test_an_empty_match_entry_matches_every_request_and_ends_the_list() -> None:
    # `match: [{}]` is valid in Istio; pilot translates it to prefix "/", a catch-all
    mesh = vs(
        "  - match: [{}]\n"
        "    route: [{destination: {host: svc, subset: b}}]\n"
        "  - route: [{destination: {host: svc, subset: a}}]\n"
    )
    assert subset_of(mesh) == "b"
    assert subset_of(mesh, "http://svc/any/path", "POST", x_any="1") == "b"
    assert [r.index for r in mesh.table.lookup("svc").routes] == [0]  # type: ignore[union-attr]


def test_regex_is_re2_case_insensitive_flag_and_unicode_classes() -> None:
    mesh = vs(rule("    - headers: {x-name: {regex: '(?i)jason'}}"))
    assert subset_of(mesh, x_name="JaSoN") == "b"
    unicode = vs(rule("    - headers: {x-name: {regex: '\\pL+'}}"))
    assert subset_of(unicode, x_name="Jürgen") == "b"
    assert subset_of(unicode, x_name="j1") == "a"


def test_without_headers_follows_envoy_invert_match() -> None:
    mesh = vs(rule("    - withoutHeaders: {end-user: {exact: jason}}"))
    assert subset_of(mesh, end_user="alice") == "b"
    assert subset_of(mesh, end_user="jason") == "a"
    # absent header: pilot has Envoy match it as "" (istio#49537), and "" is not jason
    assert subset_of(mesh) == "b"
    anything = vs(rule("    - withoutHeaders: {end-user: {regex: '.*'}}"))
    assert subset_of(anything) == "a"  # "" matches .*: the inverted match fails
    absent = vs(rule("    - withoutHeaders: {x-debug: {}}"))
    assert subset_of(absent) == "b"
    assert subset_of(absent, x_debug="1") == "a"


def test_query_params_exact_regex_and_present() -> None:
    mesh = vs(rule("    - queryParams: {v: {exact: '2'}}\n    - queryParams: {beta: {}}"))
    assert subset_of(mesh, "http://svc/?v=2") == "b"
    assert subset_of(mesh, "http://svc/?v=3") == "a"
    assert subset_of(mesh, "http://svc/?beta") == "b"
    assert subset_of(mesh, "http://svc/") == "a"
    regex = vs(rule("    - queryParams: {id: {regex: '[0-9]+'}}"))
    assert subset_of(regex, "http://svc/?id=42") == "b"
    assert subset_of(regex, "http://svc/?id=4x") == "a"


def test_source_labels_select_this_service() -> None:
    ours = vs(rule("    - sourceLabels: {app: caller, version: v1}"))
    assert subset_of(ours) == "b"
    theirs = vs(rule("    - sourceLabels: {app: someone-else}"))
    assert subset_of(theirs) == "a"
    custom = vs(rule("    - sourceLabels: {team: blue}"))
    assert subset_of(custom) == "b"


def test_source_namespace_and_match_gateways() -> None:
    assert subset_of(vs(rule("    - sourceNamespace: default"))) == "b"
    assert subset_of(vs(rule("    - sourceNamespace: prod"))) == "a"
    assert subset_of(vs(rule("    - gateways: [mesh]"))) == "b"
    assert subset_of(vs(rule("    - gateways: [edge]"))) == "a"


def test_fields_in_one_entry_are_and_entries_are_or() -> None:
    both = vs(rule("    - headers: {end-user: {exact: jason}}\n      uri: {prefix: /api}"))
    assert subset_of(both, "http://svc/api/x", end_user="jason") == "b"
    assert subset_of(both, "http://svc/web", end_user="jason") == "a"
    assert subset_of(both, "http://svc/api/x") == "a"
    either = vs(rule("    - headers: {end-user: {exact: jason}}\n    - uri: {prefix: /api}"))
    assert subset_of(either, "http://svc/web", end_user="jason") == "b"
    assert subset_of(either, "http://svc/api/x") == "b"
    assert subset_of(either, "http://svc/web") == "a"


# --------------------------------------------------------------------------- precedence


def test_first_matching_route_wins_and_catch_all_ends_the_list() -> None:
    mesh = vs(
        "  - match: [{uri: {prefix: /api}}]\n"
        "    route: [{destination: {host: svc, subset: b}}]\n"
        "  - match: [{uri: {prefix: /api/v2}}]\n"
        "    route: [{destination: {host: svc, subset: c}}]\n"
        "  - route: [{destination: {host: svc, subset: a}}]\n"
        "  - match: [{uri: {prefix: /late}}]\n"
        "    route: [{destination: {host: svc, subset: c}}]\n"
    )
    assert subset_of(mesh, "http://svc/api/v2/x") == "b"  # first match, not the most specific
    assert subset_of(mesh, "http://svc/late") == "a"  # after the catch-all: unreachable
    assert [r.index for r in mesh.table.lookup("svc").routes] == [0, 1, 2]  # type: ignore[union-attr]


def test_no_route_matches_gives_nr_and_explains_why() -> None:
    mesh = vs(
        "  - name: jason-only\n"
        "    match: [{headers: {end-user: {exact: jason}}}, {uri: {prefix: /beta}}]\n"
        "    route: [{destination: {host: svc, subset: b}}]\n"
    )
    decision = mesh.explain("GET", "http://svc/home", {"end-user": "bob"})
    assert (decision.matched, decision.flag) == (False, "NR")
    assert decision.retry.attempts == 0
    (skipped,) = decision.skipped
    assert skipped.route_name == "jason-only"
    assert skipped.reasons == (
        "match[0]: headers.end-user wants exact 'jason', got 'bob'",
        "match[1]: uri wants prefix '/beta', got '/home'",
    )


def test_route_table_route_matches_explain() -> None:
    mesh = bookinfo("virtual-service-reviews-jason-v2-v3.yaml")
    request = RouteRequest.from_url("GET", "http://reviews/r", {"end-user": "jason"})
    assert mesh.route(request).destination.subset == "v2"  # type: ignore[union-attr]
    assert mesh.route(RouteRequest.from_url("GET", "http://reviews/r")).destination.subset == (  # type: ignore[union-attr]
        "v3"
    )


# --------------------------------------------------------------------------- weights


def test_zero_weight_never_chosen_and_single_destination_gets_all() -> None:
    mesh = vs(
        "  - route:\n"
        "    - {destination: {host: svc, subset: a}, weight: 0}\n"
        "    - {destination: {host: svc, subset: b}, weight: 1}\n"
        "    - {destination: {host: svc, subset: c}, weight: 3}\n"
    )
    counts = Counter(subset_of(mesh) for _ in range(8000))
    assert counts["a"] == 0
    assert abs(counts["c"] / 8000 - 0.75) < 0.02  # weight / sum(weights), sum need not be 100
    single = vs("  - route: [{destination: {host: svc, subset: b}, weight: 0}]")
    assert {subset_of(single) for _ in range(50)} == {"b"}


# --------------------------------------------------------------------------- policies


def test_default_retry_policy_and_no_timeout() -> None:
    decision = bookinfo("virtual-service-all-v1.yaml").explain("GET", "http://reviews/")
    assert decision.timeout is None
    assert decision.retry.attempts == 2
    assert decision.retry.source == "default"
    assert decision.retry.retry_on == (
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
        "retriable-status-codes",
    )
    assert decision.retry.retriable_status_codes == frozenset({503})
    assert decision.retry.per_try_timeout is None


def test_route_retries_timeout_and_retry_on_codes() -> None:
    mesh = vs(
        "  - timeout: 3s\n"
        "    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 'gateway-error,409'}\n"
        "    route: [{destination: {host: svc, subset: a}}]\n"
    )
    decision = mesh.explain("GET", "http://svc/")
    assert decision.timeout == 3.0
    assert decision.retry.attempts == 3
    assert decision.retry.per_try_timeout == 0.5
    assert decision.retry.retry_on == ("gateway-error", "retriable-status-codes")
    assert decision.retry.retriable_status_codes == frozenset({409})
    disabled = vs("  - retries: {attempts: 0}\n    route: [{destination: {host: svc}}]")
    assert disabled.explain("GET", "http://svc/").retry.attempts == 0
    with pytest.raises(ConfigError, match=r"timeout: must be at least 1ms"):
        vs("  - timeout: 0s\n    route: [{destination: {host: svc}}]")  # as Istio: omit it


def test_fault_turns_off_the_routes_retries_and_timeout() -> None:
    mesh = vs(
        "  - timeout: 1s\n"
        "    retries: {attempts: 5}\n"
        "    fault: {abort: {httpStatus: 503, percentage: {value: 10}}}\n"
        "    route: [{destination: {host: svc}}]\n"
    )
    decision = mesh.explain("GET", "http://svc/")
    assert decision.timeout is None
    assert decision.retry.attempts == 0
    assert decision.retry.source == "disabled-by-fault"
    assert decision.fault.abort_percentage == 10.0


def test_fault_percentages_legacy_percent_and_none() -> None:
    legacy = vs(
        "  - fault: {delay: {fixedDelay: 2s, percent: 30}}\n    route: [{destination: {host: svc}}]"
    )
    assert legacy.explain("GET", "http://svc/").fault.delay_percentage == 30.0
    both = vs(
        "  - fault: {delay: {fixedDelay: 2s, percent: 30, percentage: {value: 0.5}}}\n"
        "    route: [{destination: {host: svc}}]"
    )
    assert both.explain("GET", "http://svc/").fault.delay_percentage == 0.5
    unset = vs("  - fault: {abort: {httpStatus: 500}}\n    route: [{destination: {host: svc}}]")
    decision = unset.explain("GET", "http://svc/")
    assert decision.fault.abort_percentage == 0.0
    assert not decision.fault.active


def test_subset_policy_overrides_rule_policy_field_by_field() -> None:
    mesh = Mesh.from_yaml(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 100}}
    outlierDetection: {consecutive5xxErrors: 7}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {http1MaxPendingRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc}
spec:
  hosts: [svc]
  http:
  - match: [{headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: svc, subset: v2, port: {number: 9080}}}]
  - route: [{destination: {host: svc, subset: v1}}]
"""
    )
    v1 = mesh.explain("GET", "http://svc/").traffic_policy
    assert v1 is not None
    assert v1.load_balancer.simple == "ROUND_ROBIN"  # type: ignore[union-attr]
    assert v1.connection_pool.tcp.max_connections == 100  # type: ignore[union-attr]
    v2 = mesh.explain("GET", "http://svc:8080/", {"x-v": "2"}).traffic_policy
    assert v2 is not None
    assert v2.connection_pool.http.http1_max_pending_requests == 1  # type: ignore[union-attr]
    assert v2.connection_pool.tcp is None  # replaced whole, not merged inside
    assert v2.outlier_detection.consecutive_5xx_errors == 7  # type: ignore[union-attr]
    assert v2.load_balancer.simple == "ROUND_ROBIN"  # type: ignore[union-attr]


def test_port_level_settings_replace_and_do_not_inherit() -> None:
    mesh = Mesh.from_yaml(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 100}}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc}
spec:
  hosts: [svc]
  http:
  - match: [{port: 9080}]
    route: [{destination: {host: svc, port: {number: 9080}}}]
  - route: [{destination: {host: svc, port: {number: 8080}}}]
"""
    )
    on_9080 = mesh.explain("GET", "http://svc:9080/").traffic_policy
    assert on_9080 is not None
    assert on_9080.load_balancer.simple == "RANDOM"  # type: ignore[union-attr]
    assert on_9080.connection_pool is None  # not inherited from the rule
    on_8080 = mesh.explain("GET", "http://svc:8080/").traffic_policy
    assert on_8080 is not None
    assert on_8080.load_balancer.simple == "ROUND_ROBIN"  # type: ignore[union-attr]
    assert on_8080.connection_pool.tcp.max_connections == 100  # type: ignore[union-attr]


def test_missing_subset_is_marked_for_the_data_plane() -> None:
    mesh = vs("  - route: [{destination: {host: svc, subset: nope}}]")
    decision = mesh.explain("GET", "http://svc/")
    assert decision.destination is not None
    assert not decision.destination.subset_defined


def test_delegate_routes_are_inlined_under_the_parent_match() -> None:
    mesh = vs(
        "  - match: [{uri: {prefix: /api}}]\n"
        "    delegate: {name: child}\n"
        "  - route: [{destination: {host: svc, subset: a}}]\n",
        extra="""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: child}
spec:
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: svc, subset: c}}]
  - route: [{destination: {host: svc, subset: b}}]
""",
    )
    assert subset_of(mesh, "http://svc/api/x", end_user="jason") == "c"
    assert subset_of(mesh, "http://svc/api/x") == "b"
    assert subset_of(mesh, "http://svc/web", end_user="jason") == "a"


def test_to_dict_is_json_and_has_the_documented_keys() -> None:
    decision = bookinfo("virtual-service-ratings-test-delay.yaml").explain(
        "GET", "http://ratings/r", {"end-user": "jason"}
    )
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["destination"]["subset"] == "v1"
    assert data["fault"]["delay"] == 7.0
    assert set(data["retry"]) >= {"attempts", "per_try_timeout", "retry_on"}
    assert "traffic_policy" in data
