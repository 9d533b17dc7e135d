"""Bad config: every error names file, line and field path, and says what is wrong.

Each case checks the whole ``file:line: path: message`` text a user sees, so a wrong line, a
vague path or a leaked validation-library message fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest
import yaml

from meshlib import ConfigError, MeshError, Problem
from meshlib.config import model as m
from meshlib.config.load import load_config, load_texts

WriteYaml = Callable[[str, str], Path]

# lines 1-7 of every VirtualService case below; the case's own lines start at 8
VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
"""

RETRY_CONDITIONS = (
    "5xx, cancelled, connect-failure, deadline-exceeded, envoy-ratelimited, gateway-error, "
    "http3-post-connect-failure, internal, refused-stream, reset, reset-before-request, "
    "resource-exhausted, retriable-4xx, retriable-headers, retriable-status-codes, unavailable"
)

CASES: list[tuple[str, str, str]] = [
    (
        "unknown-field",
        VS
        + """\
  - route:
    - destination:
        host: reviews
      wieght: 5
""",
        "reviews.yaml:11: spec.http[0].route[0].wieght: unknown field (did you mean 'weight'?)",
    ),
    (
        "unknown-top-level-field",
        """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spek: {host: reviews}
spec: {host: reviews}
""",
        "reviews.yaml:4: spek: unknown field (did you mean 'spec'?)",
    ),
    (
        "wrong-type-integer",
        VS
        + """\
  - route:
    - destination:
        host: reviews
      weight: "ten"
""",
        "reviews.yaml:11: spec.http[0].route[0].weight: must be an integer, not 'ten'",
    ),
    (
        "wrong-type-list",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: reviews
""",
        "reviews.yaml:5: spec.hosts: must be a list, not 'reviews'",
    ),
    (
        "wrong-type-number",
        VS
        + """\
  - fault:
      abort:
        httpStatus: 503
        percentage: {value: "50"}
    route:
    - destination: {host: reviews}
""",
        "reviews.yaml:11: spec.http[0].fault.abort.percentage.value: must be a number, not '50'",
    ),
    (
        "bad-duration",
        VS
        + """\
  - route:
    - destination:
        host: reviews
    timeout: 7 seconds
""",
        "reviews.yaml:11: spec.http[0].timeout: invalid duration '7 seconds': write a number and "
        "a unit (h, m, s, ms, us, ns), e.g. '7s', '0.5s', '100ms', '1m'",
    ),
    (
        "duration-as-number",
        VS
        + """\
  - route:
    - destination:
        host: reviews
    timeout: 5
""",
        "reviews.yaml:11: spec.http[0].timeout: must be a duration string such as '7s' or "
        "'100ms', not 5",
    ),
    (
        "duration-below-1ms",
        VS
        + """\
  - route:
    - destination:
        host: reviews
    retries:
      attempts: 2
      perTryTimeout: 100us
""",
        "reviews.yaml:13: spec.http[0].retries.perTryTimeout: must be at least 1ms",
    ),
    (
        "bad-re2-regex",
        VS
        + """\
  - match:
    - uri:
        regex: "(?=x)abc"
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:10: spec.http[0].match[0].uri.regex: invalid RE2 regex '(?=x)abc': "
        "invalid perl operator: (?=",
    ),
    (
        "negative-weight",
        VS
        + """\
  - route:
    - destination:
        host: reviews
      weight: 50
    - destination:
        host: reviews
        subset: v2
      weight: -1
""",
        "reviews.yaml:15: spec.http[0].route[1].weight: must be >= 0",
    ),
    (
        "percentage-over-100",
        VS
        + """\
  - fault:
      abort:
        httpStatus: 500
        percentage:
          value: 150
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:12: spec.http[0].fault.abort.percentage.value: must be between 0 and 100",
    ),
    (
        "legacy-percent-over-100",
        VS
        + """\
  - fault:
      delay:
        fixedDelay: 1s
        percent: 101
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:11: spec.http[0].fault.delay.percent: must be <= 100",
    ),
    (
        "http-status-too-high",
        VS
        + """\
  - fault:
      abort:
        httpStatus: 601
        percentage: {value: 1}
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:10: spec.http[0].fault.abort.httpStatus: must be <= 600",
    ),
    (
        "direct-response-status-too-low",
        VS
        + """\
  - directResponse:
      status: 99
""",
        "reviews.yaml:9: spec.http[0].directResponse.status: must be >= 200",
    ),
    (
        "grpc-status-number",
        VS
        + """\
  - fault:
      abort:
        grpcStatus: "14"
    route:
    - destination: {host: reviews}
""",
        "reviews.yaml:10: spec.http[0].fault.abort.grpcStatus: '14' is not a gRPC status name "
        "(use e.g. UNAVAILABLE, not its number)",
    ),
    (
        "two-of-exact-prefix-regex",
        VS
        + """\
  - match:
    - uri:
        exact: /a
        prefix: /b
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:9: spec.http[0].match[0].uri: set only one of exact, prefix, regex "
        "(got exact, prefix)",
    ),
    (
        "invalid-yaml",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews: v1
spec:
  hosts: [reviews]
""",
        "reviews.yaml:4: metadata.name: invalid YAML: the value of 'name' has ': ' in it, which "
        'YAML reads as another key: quote the value (name: "reviews: v1")',
    ),
    (
        "invalid-yaml-tab",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
\tname: reviews
""",
        "reviews.yaml:4: metadata.name: invalid YAML: 'name' is indented with a tab, and YAML "
        "indents with spaces only: indent it 2 spaces, under 'metadata'",
    ),
    (
        "duplicate-key",
        VS
        + """\
  - route:
    - destination:
        host: reviews
        host: ratings
""",
        "reviews.yaml:11: spec.http[0].route[0].destination.host: duplicate key "
        "(first given above)",
    ),
    (
        "missing-destination-host",
        VS
        + """\
  - route:
    - destination:
        subset: v1
""",
        "reviews.yaml:9: spec.http[0].route[0].destination.host: required field is missing",
    ),
    (
        "empty-destination-host",
        VS
        + """\
  - route:
    - destination:
        host: ""
""",
        "reviews.yaml:10: spec.http[0].route[0].destination.host: must not be empty",
    ),
    (
        "missing-spec",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
""",
        "reviews.yaml:1: spec: required field is missing",
    ),
    (
        "unknown-istio-kind",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualServise
metadata: {name: reviews}
spec: {hosts: [reviews]}
""",
        "reviews.yaml:2: kind: unknown kind 'VirtualServise' of networking.istio.io "
        "(did you mean 'VirtualService'?)",
    ),
    (
        "unknown-istio-version",
        """\
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: reviews}
spec: {hosts: [reviews]}
""",
        "reviews.yaml:1: apiVersion: unknown version 'v2' of networking.istio.io "
        "(use one of v1alpha3, v1beta1, v1)",
    ),
    (
        "not-a-mesh-api",
        """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews}
spec: {replicas: 1}
""",
        "reviews.yaml:1: apiVersion: 'apps/v1' Deployment is not a mesh resource (expected "
        "meshlib.dev/v1 Service or an Istio resource such as networking.istio.io/v1 "
        "VirtualService)",
    ),
    (
        "bad-header-name",
        VS
        + """\
  - match:
    - headers:
        end user:
          exact: jason
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:10: spec.http[0].match[0].headers[\"end user\"]: header name 'end user' is "
        "not a valid header name (letters, digits and !#$%&'*+-.^_`|~)",
    ),
    (
        "bad-retry-on",
        VS
        + """\
  - retries:
      attempts: 3
      retryOn: 5xx,connect-faillure
    route:
    - destination:
        host: reviews
""",
        "reviews.yaml:10: spec.http[0].retries.retryOn: 'connect-faillure' is not a retry "
        f"condition (use an HTTP status or one of {RETRY_CONDITIONS})",
    ),
    (
        "total-weight-zero",
        VS
        + """\
  - match:
    - uri: {prefix: /}
    route:
    - destination: {host: reviews, subset: v1}
    - destination: {host: reviews, subset: v2}
""",
        "reviews.yaml:10: spec.http[0].route: total destination weight = 0: give the "
        "destinations weights",
    ),
    (
        "route-without-action",
        VS
        + """\
  - match:
    - uri:
        prefix: /
""",
        "reviews.yaml:8: spec.http[0]: HTTP route, redirect or directResponse is required (give "
        "route: [{destination: {host: ...}}])",
    ),
    (
        "route-and-redirect",
        VS
        + """\
  - redirect: {uri: /new}
    route:
    - destination: {host: reviews}
""",
        "reviews.yaml:9: spec.http[0].route: HTTP route cannot contain both route and redirect",
    ),
    (
        "empty-prefix-header-match",
        VS
        + """\
  - match:
    - headers:
        end-user: {prefix: ""}
    route:
    - destination: {host: reviews}
""",
        "reviews.yaml:10: spec.http[0].match[0].headers.end-user.prefix: prefix string match "
        "should not be empty (to match any value, remove the match; for one that must be present, "
        "write {})",
    ),
    (
        "fault-without-delay-or-abort",
        VS
        + """\
  - route:
    - destination: {host: reviews}
    fault: {}
""",
        "reviews.yaml:10: spec.http[0].fault: a fault must have a delay, an abort, or both",
    ),
    (
        "unknown-load-balancer",
        """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: FASTEST
""",
        "reviews.yaml:8: spec.trafficPolicy.loadBalancer.simple: must be one of 'UNSPECIFIED', "
        "'LEAST_CONN', 'RANDOM', 'PASSTHROUGH', 'ROUND_ROBIN' or 'LEAST_REQUEST', not 'FASTEST'",
    ),
    (
        "bad-registry-address",
        """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews:
      - address: 127.0.0.1
""",
        "reviews.yaml:8: spec.registry.static.reviews[0].address: address '127.0.0.1' must be "
        "host:port, e.g. 127.0.0.1:9080",
    ),
    (
        "registry-port-out-of-range",
        """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews:
      - {address: "127.0.0.1:65536"}
""",
        "reviews.yaml:8: spec.registry.static.reviews[0].address: address '127.0.0.1:65536' "
        "must be host:port, e.g. 127.0.0.1:9080",
    ),
    (
        "document-not-a-mapping",
        """\
- apiVersion: networking.istio.io/v1
  kind: VirtualService
""",
        "reviews.yaml:1: a document must be a mapping with apiVersion, kind and metadata",
    ),
]


@pytest.fixture
def load_bad(
    write_yaml: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ConfigError]:
    """Write files into ``tmp_path`` (the cwd, so that names stay short) and load them,
    expecting a ``ConfigError``."""
    monkeypatch.chdir(tmp_path)

    def load(**files: str) -> ConfigError:
        names = []
        for name, text in files.items():
            write_yaml(f"{name}.yaml", text)
            names.append(f"{name}.yaml")
        with pytest.raises(ConfigError) as caught:
            load_config(names)
        return caught.value

    return load


def assert_clean(error: ConfigError) -> None:
    """Every problem is placed and worded by meshlib; nothing of PyYAML or pydantic leaks."""
    assert type(error) is ConfigError
    assert not isinstance(error.__cause__, (pydantic.ValidationError, yaml.YAMLError))
    assert not isinstance(error.__context__, (pydantic.ValidationError, yaml.YAMLError))
    text = str(error)
    for leak in ("pydantic", "Traceback", "Input should", "Value error", "validation error"):
        assert leak not in text
    assert error.problems
    for problem in error.problems:
        assert problem.severity == "error"
        assert problem.line >= 1
        assert problem.message


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_reported_as_file_line_path_message(
    load_bad: Callable[..., ConfigError], text: str, expected: str
) -> None:
    error = load_bad(reviews=text)
    assert_clean(error)
    assert [str(p) for p in error.problems] == [expected]
    assert str(error) == expected


def test_error_cases_cover_at_least_twelve_kinds() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 12


def test_lookahead_is_valid_python_regex_but_rejected_as_re2() -> None:
    re.compile("(?=x)abc")  # Python accepts it; Istio and Envoy (RE2) do not
    with pytest.raises(pydantic.ValidationError):
        m.StringMatch(regex="(?=x)abc")
    assert m.StringMatch(regex="(?i)^/reviews/[0-9]+$").regex == "(?i)^/reviews/[0-9]+$"


def test_http_status_below_range(load_bad: Callable[..., ConfigError]) -> None:
    error = load_bad(
        reviews=VS
        + """\
  - fault:
      abort: {httpStatus: 199, percentage: {value: 1}}
    route:
    - destination: {host: reviews}
"""
    )
    assert [str(p) for p in error.problems] == [
        "reviews.yaml:9: spec.http[0].fault.abort.httpStatus: must be >= 200"
    ]


def test_several_errors_in_one_file_are_all_reported(load_bad: Callable[..., ConfigError]) -> None:
    error = load_bad(
        reviews=VS
        + """\
  - match:
    - uri: {regex: "a(?!b)"}
    timeout: soon
    route:
    - destination: {host: reviews}
      weight: -5
    - destination: {host: reviews}
      weight: 5
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    lables: {version: v1}
"""
    )
    assert_clean(error)
    assert [str(p) for p in error.problems] == [
        "reviews.yaml:9: spec.http[0].match[0].uri.regex: invalid RE2 regex 'a(?!b)': "
        "invalid perl operator: (?!",
        "reviews.yaml:10: spec.http[0].timeout: invalid duration 'soon': write a number and a "
        "unit (h, m, s, ms, us, ns), e.g. '7s', '0.5s', '100ms', '1m'",
        "reviews.yaml:13: spec.http[0].route[0].weight: must be >= 0",
        "reviews.yaml:24: spec.subsets[0].lables: unknown field (did you mean 'labels'?)",
    ]
    assert str(error) == "\n".join(str(p) for p in error.problems)


def test_errors_in_several_files_are_all_reported(load_bad: Callable[..., ConfigError]) -> None:
    error = load_bad(
        reviews=VS
        + """\
  - route:
    - destination: {host: reviews}
    timeout: 1 minute
""",
        ratings="""\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    outlierDetection:
      maxEjectionPercent: 101
""",
        mesh="""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  propagateHeaders: end-user
""",
    )
    assert_clean(error)
    assert [str(p) for p in error.problems] == [
        "reviews.yaml:10: spec.http[0].timeout: invalid duration '1 minute': write a number and "
        "a unit (h, m, s, ms, us, ns), e.g. '7s', '0.5s', '100ms', '1m'",
        "ratings.yaml:8: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be <= 100",
        "mesh.yaml:5: spec.propagateHeaders: must be a list, not 'end-user'",
    ]


def test_good_documents_beside_bad_ones_do_not_half_apply(
    load_bad: Callable[..., ConfigError],
) -> None:
    error = load_bad(
        good="""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews}
""",
        bad=VS + "  - route: [{destination: {host: reviews}, weight: -1}]\n",
    )
    # the loader gives back no config at all: only the error
    assert [p.file for p in error.problems] == ["bad.yaml"]


def test_unreadable_files_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"apiVersion: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(["missing.yaml", "latin1.yaml"])
    assert [str(p) for p in caught.value.problems] == [
        "missing.yaml: cannot read missing.yaml: No such file or directory",
        "latin1.yaml:1: not UTF-8 text: invalid start byte",
    ]
    assert caught.value.problems[0].line == 0  # a file that cannot be read has no line


def test_config_error_is_a_value_error_and_a_mesh_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_texts([("x.yaml", "a: [")])
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, MeshError)
    assert_clean(error)
    # callers that only know ValueError still catch it
    with pytest.raises(ValueError, match=r"^x\.yaml:\d+: a: invalid YAML"):
        load_texts([("x.yaml", "a: [")])


def test_problem_text_forms() -> None:
    assert str(Problem("a.yaml", 3, "spec.hosts", "must be a list")) == (
        "a.yaml:3: spec.hosts: must be a list"
    )
    assert str(Problem("a.yaml", 3, "", "invalid YAML")) == "a.yaml:3: invalid YAML"
    assert str(Problem("a.yaml", 0, "", "cannot read")) == "a.yaml: cannot read"
    assert str(Problem("a.yaml", 3, "spec", "odd", "warning")) == "a.yaml:3: warning: spec: odd"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7s", 7.0),
        ("0.5s", 0.5),
        ("1m", 60.0),
        ("100ms", 0.1),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1500ms", 1.5),
        ("2h45m", 9900.0),
    ],
)
def test_good_durations_are_seconds(text: str, seconds: float) -> None:
    config = load_texts(
        [
            (
                "d.yaml",
                VS + f"  - timeout: {text}\n"
                "    retries: {attempts: 1, perTryTimeout: " + text + "}\n"
                "    route: [{destination: {host: reviews}}]\n",
            )
        ]
    )
    vs = config.resources[0].spec
    assert isinstance(vs, m.VirtualService)
    assert vs.http is not None
    route = vs.http[0]
    assert isinstance(route.timeout, float)
    assert route.timeout == pytest.approx(seconds)
    assert route.retries is not None
    assert route.retries.per_try_timeout == pytest.approx(seconds)
