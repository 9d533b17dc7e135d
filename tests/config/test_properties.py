"""Property tests: whatever valid config a user writes, loading and routing never crash; whatever
single mistake is made in it, loading fails with a ``ConfigError`` that says where."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlib import ConfigError, Mesh
from meshlib.cli import describe
from meshlib.config.compile import fqdn
from meshlib.config.lint import lint
from meshlib.routing import RouteRequest

PROPERTY_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Doc = dict[str, Any]

# Small pools, shared by the configs and the requests, so that matches do hit.
HOSTS = ["reviews", "ratings", "details", "productpage", "api.example.com"]
SUBSETS = ["v1", "v2", "v3"]
HEADER_NAMES = ["end-user", "x-canary", "x-version", "cookie"]
VALUES = ["jason", "v1", "v2", "/reviews", "/reviews/0", "a", "", "1"]
PATHS = ["/", "/reviews", "/reviews/0", "/Reviews/0", "/ratings/1", "/api/v1/products"]
REGEXES = [".*", "^/reviews/.*$", "[a-z]+", "(?i)jason", "v[0-9]+", "/reviews/\\d+"]

short_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-", max_size=12)
value_text = st.one_of(st.sampled_from(VALUES), short_text)


@st.composite
def durations(draw: st.DrawFn) -> str:
    """Durations Istio accepts everywhere, including fields that need whole milliseconds."""
    whole = draw(st.integers(min_value=1, max_value=5000))
    unit = draw(st.sampled_from(["ms", "s", "m", "h"]))
    if draw(st.booleans()) and unit != "ms":
        return f"{whole}.5{unit}"
    return f"{whole}{unit}"


def string_matches(
    allow_present: bool = False, empty_prefix: bool = False
) -> st.SearchStrategy[dict[str, str]]:
    """Istio allows an empty prefix in a uri match only (``empty_prefix``)."""
    prefixes = value_text if empty_prefix else value_text.filter(bool)
    kinds = [
        st.builds(lambda v: {"exact": v}, value_text),
        st.builds(lambda v: {"prefix": v}, prefixes),
        st.builds(lambda v: {"regex": v}, st.sampled_from(REGEXES)),
        st.builds(lambda v: {"regex": re.escape(v) + ".*"}, short_text),
    ]
    if allow_present:
        kinds.append(st.just({}))
    return st.one_of(kinds)


header_names = st.one_of(
    st.sampled_from(HEADER_NAMES), st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
)
percentages = st.floats(min_value=0, max_value=100, allow_nan=False)
# a fault's percentage is 0 or at least 0.0001 (Envoy counts it in millionths)
fault_percentages = percentages.filter(lambda v: v == 0 or v >= 0.0001)

match_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["by-user", "canary"]),
        "uri": string_matches(empty_prefix=True),
        "ignoreUriCase": st.booleans(),
        "method": string_matches(),
        "scheme": string_matches(),
        "authority": string_matches(),
        "headers": st.dictionaries(header_names, string_matches(allow_present=True), max_size=2),
        "withoutHeaders": st.dictionaries(
            header_names, string_matches(allow_present=True), max_size=1
        ),
        "queryParams": st.dictionaries(header_names, string_matches(), max_size=2),
        "port": st.sampled_from([80, 9080, 8080]),
        "sourceLabels": st.dictionaries(
            st.sampled_from(["app", "version"]), st.sampled_from(["productpage", "v1"]), max_size=2
        ),
        "sourceNamespace": st.sampled_from(["default", "other"]),
        "gateways": st.sampled_from([["mesh"], ["bookinfo-gateway"], ["mesh", "gw"]]),
        "statPrefix": st.just("stats"),
    },
).filter(bool)


@st.composite
def destinations(draw: st.DrawFn) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": draw(st.sampled_from(HOSTS))}
    if draw(st.booleans()):
        destination["subset"] = draw(st.sampled_from([*SUBSETS, "v9"]))
    if draw(st.booleans()):
        destination["port"] = {"number": draw(st.sampled_from([9080, 443]))}
    return destination


@st.composite
def route_destinations(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=1, max_value=3))
    out = [{"destination": draw(destinations())} for _ in range(count)]
    weights = draw(st.lists(st.integers(0, 100), min_size=count, max_size=count))
    if count > 1 and sum(weights) == 0:
        weights[0] = 1
    for entry, weight in zip(out, weights, strict=True):
        if count > 1 or draw(st.booleans()):
            entry["weight"] = weight
    return out


@st.composite
def faults(draw: st.DrawFn) -> dict[str, Any]:
    fault: dict[str, Any] = {}
    legacy = st.integers(min_value=0, max_value=100)
    if draw(st.booleans()):
        delay: dict[str, Any] = {"fixedDelay": draw(durations())}
        how = draw(st.sampled_from(["percentage", "percent", "none"]))
        if how == "percentage":
            delay["percentage"] = {"value": draw(fault_percentages)}
        elif how == "percent":
            delay["percent"] = draw(legacy)
        fault["delay"] = delay
    if not fault or draw(st.booleans()):
        abort: dict[str, Any] = {"httpStatus": draw(st.integers(min_value=200, max_value=599))}
        how = draw(st.sampled_from(["percentage", "percent", "none"]))
        if how == "percentage":
            abort["percentage"] = {"value": draw(fault_percentages)}
        elif how == "percent":
            abort["percent"] = draw(legacy)
        fault["abort"] = abort
    return fault


retry_conditions = st.lists(
    st.sampled_from(["5xx", "gateway-error", "connect-failure", "reset", "503", "429"]),
    min_size=1,
    max_size=3,
).map(",".join)


@st.composite
def http_routes(draw: st.DrawFn) -> dict[str, Any]:
    route: dict[str, Any] = {}
    if draw(st.booleans()):
        route["name"] = draw(st.sampled_from(["jason", "canary", "rest"]))
    if draw(st.integers(0, 3)):
        route["match"] = draw(st.lists(match_entries, min_size=1, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        route["directResponse"] = {"status": draw(st.integers(200, 599))}
        return route
    route["route"] = draw(route_destinations())
    if draw(st.booleans()):
        route["timeout"] = draw(durations())
    if draw(st.booleans()):
        retries = draw(
            st.fixed_dictionaries(
                {"attempts": st.integers(0, 5)},
                optional={"perTryTimeout": durations(), "retryOn": retry_conditions},
            )
        )
        # Istio rejects a retry policy whose attempts are 0 (retries off)
        route["retries"] = retries if retries["attempts"] else {"attempts": 0}
    if draw(st.integers(0, 3)) == 0:
        route["fault"] = draw(faults())
    if draw(st.integers(0, 5)) == 0:
        route["mirror"] = draw(destinations())
        route["mirrorPercentage"] = {"value": draw(percentages)}
    return route


def virtual_services(index: int) -> st.SearchStrategy[Doc]:
    return st.builds(
        lambda hosts, http: {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": f"vs-{index}"},
            "spec": {"hosts": hosts, "http": http},
        },
        st.lists(st.sampled_from(HOSTS), min_size=1, max_size=2, unique=True),
        st.lists(http_routes(), min_size=1, max_size=4),
    )


traffic_policies = st.fixed_dictionaries(
    {},
    optional={
        "loadBalancer": st.one_of(
            st.builds(
                lambda s: {"simple": s},
                st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]),
            ),
            st.builds(lambda h: {"consistentHash": {"httpHeaderName": h}}, header_names),
        ),
        "connectionPool": st.fixed_dictionaries(
            {},
            optional={
                "tcp": st.fixed_dictionaries(
                    {"maxConnections": st.integers(0, 1000), "connectTimeout": durations()}
                ),
                "http": st.fixed_dictionaries(
                    {"http1MaxPendingRequests": st.integers(0, 100), "idleTimeout": durations()}
                ),
            },
        ).filter(bool),  # Istio: "connection pool must have at least one field"
        "outlierDetection": st.fixed_dictionaries(
            {
                "consecutive5xxErrors": st.integers(0, 10),
                "interval": durations(),
                "baseEjectionTime": durations(),
                "maxEjectionPercent": st.integers(0, 100),
            }
        ),
    },
).filter(bool)  # Istio: "traffic policy must have at least one field"


@st.composite
def destination_rules(draw: st.DrawFn, host: str) -> Doc:
    names = draw(st.lists(st.sampled_from(SUBSETS), min_size=1, max_size=3, unique=True))
    subsets = []
    for name in names:
        subset: dict[str, Any] = {"name": name, "labels": {"version": name}}
        if draw(st.integers(0, 3)) == 0:
            subset["trafficPolicy"] = draw(traffic_policies)
        subsets.append(subset)
    spec: dict[str, Any] = {"host": host, "subsets": subsets}
    if draw(st.booleans()):
        spec["trafficPolicy"] = draw(traffic_policies)
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": f"dr-{host}"},
        "spec": spec,
    }


@st.composite
def valid_configs(draw: st.DrawFn) -> list[Doc]:
    docs: list[Doc] = []
    if draw(st.booleans()):
        registered = draw(st.lists(st.sampled_from(HOSTS), min_size=1, unique=True))
        docs.append(
            {
                "apiVersion": "meshlib.dev/v1",
                "kind": "Service",
                "metadata": {"name": "productpage"},
                "spec": {
                    "version": "v1",
                    "registry": {
                        "static": {
                            host: [
                                {"address": f"127.0.0.1:{9000 + i}", "labels": {"version": s}}
                                for i, s in enumerate(SUBSETS)
                            ]
                            for host in registered
                        }
                    },
                },
            }
        )
    for host in draw(st.lists(st.sampled_from(HOSTS), unique=True, max_size=3)):
        docs.append(draw(destination_rules(host)))
    count = draw(st.integers(min_value=1, max_value=3))
    docs += [draw(virtual_services(i)) for i in range(count)]
    return docs


def dump(docs: list[Doc]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, width=10**6)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "DELETE", "get"]))
    host = draw(
        st.sampled_from([*HOSTS, "unknown.example.org", "reviews.default.svc.cluster.local"])
    )
    port = draw(st.sampled_from(["", ":9080", ":80"]))
    path = draw(st.one_of(st.sampled_from(PATHS), short_text.map(lambda t: "/" + t)))
    params = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), value_text, max_size=2))
    query = "&".join(f"{k}={v}" for k, v in params.items())
    url = f"http://{host}{port}{path}" + (f"?{query}" if query else "")
    names = st.sampled_from([*HEADER_NAMES, "End-User", "X-Canary"])
    headers = draw(st.dictionaries(names, value_text, max_size=3))
    return method, url, headers


# --------------------------------------------------------------------------- valid configs


def listed_destinations(docs: list[Doc], vs_name: str, index: int) -> list[dict[str, Any]]:
    name = vs_name.rpartition("/")[2]
    (vs,) = [d for d in docs if d["kind"] == "VirtualService" and d["metadata"]["name"] == name]
    route: list[dict[str, Any]] = vs["spec"]["http"][index].get("route", [])
    return route


@PROPERTY_SETTINGS
@given(docs=valid_configs(), calls=st.lists(requests(), min_size=1, max_size=4))
def test_valid_configs_load_and_route(
    docs: list[Doc], calls: list[tuple[str, str, dict[str, str]]]
) -> None:
    mesh = Mesh.from_yaml(dump(docs), name="random.yaml", seed=7)
    for problem in lint(mesh.config):
        assert problem.severity == "warning"
        assert problem.line >= 1
    for method, url, headers in calls:
        decision = mesh.explain(method, url, headers)
        json.dumps(decision.to_dict())
        assert describe(decision)
        routed = mesh.route(RouteRequest.from_url(method, url, headers))
        assert (routed.matched, routed.flag, routed.route_index) == (
            decision.matched,
            decision.flag,
            decision.route_index,
        )
        if not decision.matched:
            assert decision.flag == "NR"
            continue
        if decision.virtual_service is None or decision.route_index is None:
            continue
        listed = listed_destinations(docs, decision.virtual_service, decision.route_index)
        target = decision.destination
        if not listed:
            assert target is None  # a directResponse route
            continue
        assert target is not None
        namespace = decision.virtual_service.partition("/")[0]
        choices = [
            (fqdn(d["destination"]["host"], namespace), d["destination"].get("subset"))
            for d in listed
            if len(listed) == 1 or d.get("weight", 0) > 0
        ]
        assert (target.host, target.subset) in choices


# --------------------------------------------------------------------------- invalid configs

MUTATIONS = [
    "unknown-key",
    "wrong-type",
    "negative-weight",
    "percentage-out-of-range",
    "legacy-percent-out-of-range",
    "bad-duration",
    "bad-regex",
    "garbage-yaml",
]


def with_destinations(docs: list[Doc]) -> list[dict[str, Any]]:
    return [
        route
        for doc in docs
        if doc["kind"] == "VirtualService"
        for route in doc["spec"]["http"]
        if "route" in route
    ]


@st.composite
def invalid_configs(draw: st.DrawFn, mutation: str) -> str:
    docs = copy.deepcopy(draw(valid_configs()))
    routes = with_destinations(docs)
    if not routes:  # every generated VirtualService can end up with direct responses only
        vs = next(d for d in docs if d["kind"] == "VirtualService")
        vs["spec"]["http"].append({"route": [{"destination": {"host": "reviews"}}]})
        routes = with_destinations(docs)
    route = draw(st.sampled_from(routes))
    destination = draw(st.sampled_from(route["route"]))
    if mutation == "unknown-key":
        where = draw(
            st.sampled_from(
                [
                    route,
                    destination,
                    destination["destination"],
                    draw(st.sampled_from(docs))["spec"],
                    draw(st.sampled_from(docs)),
                ]
            )
        )
        where[draw(st.sampled_from(["wieght", "hostz", "bogus", "retry", "Timeout"]))] = 1
    elif mutation == "wrong-type":
        place, bad = draw(
            st.sampled_from(
                [
                    ("weight", "ten"),
                    ("weight", 1.5),
                    ("weight", True),
                    ("destination", "reviews"),
                    ("timeout", 5),
                    ("route", "reviews"),
                    ("match", {"uri": {"exact": "/"}}),
                ]
            )
        )
        if place in ("weight", "destination"):
            destination[place] = bad
        else:
            route[place] = bad
    elif mutation == "negative-weight":
        destination["weight"] = -draw(st.integers(min_value=1, max_value=100))
    elif mutation in ("percentage-out-of-range", "legacy-percent-out-of-range"):
        value = draw(
            st.one_of(
                st.floats(min_value=100.001, max_value=1e9),
                st.floats(max_value=-0.001, min_value=-1e9),
            )
        )
        legacy = draw(st.one_of(st.integers(101, 10**6), st.integers(-(10**6), -1)))
        part = draw(st.sampled_from(["delay", "abort"]))
        fault = route.setdefault("fault", {})
        body = fault.setdefault(
            part, {"fixedDelay": "1s"} if part == "delay" else {"httpStatus": 500}
        )
        body.pop("percentage", None)
        body.pop("percent", None)
        if mutation == "percentage-out-of-range":
            body["percentage"] = {"value": value}
        else:
            body["percent"] = legacy
    elif mutation == "bad-duration":
        bad = draw(st.sampled_from(["7 seconds", "1x", "s", "-1s", "", "1.5", "5min", "10"]))
        key = draw(st.sampled_from(["timeout", "perTryTimeout"]))
        if key == "timeout":
            route["timeout"] = bad
        else:
            route["retries"] = {"attempts": 1, "perTryTimeout": bad}
    elif mutation == "bad-regex":
        bad = draw(st.sampled_from(["(?=x)", "a(?!b)", "(a", "[z-a]", "(?<=a)b", "\\1", "a**"]))
        field = draw(st.sampled_from(["uri", "method", "authority"]))
        route.setdefault("match", []).append({field: {"regex": bad}})
    text = dump(docs)
    if mutation == "garbage-yaml":
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(min_value=0, max_value=len(lines)))
        junk = draw(st.sampled_from(["\tkey: value\n", "a: [1, 2\n", "  : : :\n", "- {x: \n"]))
        text = "".join([*lines[:at], junk, *lines[at:]])
    return text


@pytest.mark.parametrize("mutation", MUTATIONS)
@settings(PROPERTY_SETTINGS, max_examples=30)
@given(data=st.data())
def test_one_mistake_always_raises_config_error(mutation: str, data: st.DataObject) -> None:
    text = data.draw(invalid_configs(mutation), label="config")
    with pytest.raises(ConfigError) as caught:
        Mesh.from_yaml(text, name="broken.yaml")
    error = caught.value
    assert error.problems, mutation
    for problem in error.problems:
        assert problem.file == "broken.yaml"
        assert problem.line >= 1, (mutation, str(problem))
        assert problem.line <= text.count("\n") + 1, (mutation, str(problem))
        assert problem.message.strip(), mutation
        assert "Input should" not in problem.message, (mutation, str(problem))
    assert "pydantic" not in str(error)
