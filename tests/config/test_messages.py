"""Messages a person can act on: a YAML syntax error is reported at the line that broke the
structure (not where the parser gave up) with what to do there, a field at the wrong level says
where it probably belongs, and "did you mean" offers only fields of that level.

Each case is a whole file as a person would write it, and checks the whole
``file:line: path: message`` text they see.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshlib import ConfigError
from meshlib.config.lint import lint
from meshlib.config.load import load_config
from tests.config.test_errors import VS  # lines 1-7 of every VirtualService case below


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    """Load ``text`` (written as it is, not dedented) as ``reviews.yaml``: every error."""
    monkeypatch.chdir(tmp_path)
    Path("reviews.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(["reviews.yaml"])
    return [str(p) for p in caught.value.problems]


def parser_line(text: str) -> int:
    """The line PyYAML's own error names."""
    with pytest.raises(yaml.YAMLError) as caught:
        list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    mark = getattr(caught.value, "problem_mark", None)
    assert mark is not None
    return int(mark.line) + 1


# ----------------------------------------------------------------------- YAML syntax errors

SYNTAX: list[tuple[str, str, str]] = [
    (
        # the brief's case as a syntax error: subset between destination's keys and route[0]'s
        "key-between-two-levels",
        VS
        + """\
  - route:
    - destination:
        host: reviews
       subset: v2
      weight: 100
""",
        "reviews.yaml:11: spec.http[0].route[0].destination.subset: invalid YAML: 'subset' is "
        "indented 7 spaces: did you mean it under 'destination', indented 8 like 'host' on "
        "line 10?",
    ),
    (
        # PyYAML stops at line 11 ("mapping values are not allowed here"): host is the odd one
        "first-key-dedented",
        VS
        + """\
  - route:
    - destination:
       host: reviews
        subset: v2
""",
        "reviews.yaml:10: spec.http[0].route[0].destination.host: invalid YAML: 'host' is "
        "indented 7 spaces: did you mean it under 'destination', indented 8 like 'subset' on "
        "line 11?",
    ),
    (
        # over-indented: YAML reads "reviews subset" as one value, then trips on the ':'
        "key-indented-too-far",
        VS
        + """\
  - route:
    - destination:
        host: reviews
          subset: v2
""",
        "reviews.yaml:11: spec.http[0].route[0].destination.subset: invalid YAML: 'subset' is "
        "indented 10 spaces: did you mean it under 'destination', indented 8 like 'host' on "
        "line 10?",
    ),
    (
        # PyYAML stops at line 13, perTryTimeout: attempts set the block's indentation
        "first-retry-field-indented-too-far",
        VS
        + """\
  - route:
    - destination:
        host: reviews
    retries:
       attempts: 3
      perTryTimeout: 2s
""",
        "reviews.yaml:12: spec.http[0].retries.attempts: invalid YAML: 'attempts' is indented 7 "
        "spaces: did you mean it under 'retries', indented 6 like 'perTryTimeout' on line 13?",
    ),
    (
        # PyYAML stops at line 16, four lines below
        "route-dedented-out-of-its-http-entry",
        VS
        + """\
  - match:
    - headers:
        end-user:
          exact: jason
  route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
""",
        "reviews.yaml:12: spec.http[0].route: invalid YAML: 'route' is indented 2 spaces: did "
        "you mean it under 'http[0]', indented 4 like 'match' on line 8?",
    ),
    (
        "key-dedented-between-levels",
        VS
        + """\
  - route:
    - destination:
        host: reviews
   timeout: 2s
""",
        "reviews.yaml:11: spec.http[0].timeout: invalid YAML: 'timeout' is indented 3 spaces: "
        "did you mean it under 'http[0]', indented 4 like 'route' on line 8?",
    ),
    (
        # PyYAML stops at line 2: the document "ended" after line 1
        "first-line-indented",
        """\
 apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
""",
        "reviews.yaml:1: apiVersion: invalid YAML: 'apiVersion' is indented 1 space: did you "
        "mean it at the top level, indented 0 like 'kind' on line 2?",
    ),
    (
        # two mistakes: the first one is reported (the second, once it is mended)
        "two-mistakes-first-one-first",
        VS
        + """\
  - route:
    - destination:
       host: reviews
        subset: v2
   timeout: 1s
""",
        "reviews.yaml:10: spec.http[0].route[0].destination.host: invalid YAML: 'host' is "
        "indented 7 spaces: did you mean it under 'destination', indented 8 like 'subset' on "
        "line 11?",
    ),
    (
        "missing-colon",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http
  - route:
    - destination:
        host: reviews
""",
        "reviews.yaml:7: spec.http: invalid YAML: 'http' has no ':' after it: write 'http:'",
    ),
    (
        "unclosed-bracket",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews
  http:
  - route:
    - destination: {host: reviews}
""",
        "reviews.yaml:6: spec.hosts: invalid YAML: the '[' on this line is not closed: end it "
        "with ']' (the parser reached line 7 without finding one)",
    ),
    (
        "value-with-colon-space",
        VS
        + """\
  - match:
    - uri:
        exact: /api: v1
    route:
    - destination: {host: reviews}
""",
        "reviews.yaml:10: spec.http[0].match[0].uri.exact: invalid YAML: the value of 'exact' "
        "has ': ' in it, which YAML reads as another key: quote the value "
        '(exact: "/api: v1")',
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SYNTAX], ids=[c[0] for c in SYNTAX])
def test_a_syntax_error_names_the_line_to_mend_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    assert problems(tmp_path, monkeypatch, text) == [expected]


@pytest.mark.parametrize(
    "case", ["first-key-dedented", "first-retry-field-indented-too-far", "first-line-indented"]
)
def test_the_line_reported_is_above_the_one_the_parser_stopped_at(case: str) -> None:
    text, expected = next(c[1:] for c in SYNTAX if c[0] == case)
    reported = int(expected.split(":")[1])
    assert reported < parser_line(text)


def test_the_line_reported_is_far_above_the_parser_line_when_a_block_lost_its_place() -> None:
    text, expected = next(c[1:] for c in SYNTAX if c[0] == "route-dedented-out-of-its-http-entry")
    assert (parser_line(text), int(expected.split(":")[1])) == (16, 12)


def test_a_syntax_error_no_one_line_mend_fixes_keeps_the_parsers_words_and_says_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = VS + "  - route:\n    - destination:\n        host: @reviews\n"
    assert problems(tmp_path, monkeypatch, text) == [
        "reviews.yaml:10: spec.http[0].route[0].destination.host: invalid YAML: while scanning "
        "for the next token, found character '@' that cannot start any token: quote the value"
    ]
    text = VS + "  - route:\n    - destination:\n        host: reviews\n    ]\n"
    assert problems(tmp_path, monkeypatch, text) == [
        "reviews.yaml:11: spec.http[0].route: invalid YAML: while parsing a block mapping, "
        "expected <block end>, but found ']': check the indentation of this line and the ones "
        "above it"
    ]


def test_documents_before_a_syntax_error_still_load_and_the_broken_one_is_not_half_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
 apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
"""
    # the one error: no "kind: required" for a document cut short after its first line
    assert problems(tmp_path, monkeypatch, text) == [
        "reviews.yaml:8: apiVersion: invalid YAML: 'apiVersion' is indented 1 space: did you "
        "mean it at the top level, indented 0 like 'kind' on line 9?"
    ]


# ----------------------------------------------------------- valid YAML, field at the wrong level

LEVELS: list[tuple[str, str, list[str]]] = [
    (
        # the brief's case: subset dedented out of destination to route[1]'s keys. It used to
        # suggest 'subsets', a DestinationRule field.
        "subset-dedented-out-of-destination",
        VS
        + """\
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
      subset: v2
      weight: 50
""",
        [
            "reviews.yaml:15: spec.http[0].route[1].subset: unknown field at the level of "
            "route[1]: did you mean it under 'destination'?"
        ],
    ),
    (
        "weight-indented-into-destination",
        VS
        + """\
  - route:
    - destination:
        host: reviews
        weight: 100
""",
        [
            "reviews.yaml:11: spec.http[0].route[0].destination.weight: unknown field in "
            "destination: did you mean it one level up, in route[0] (beside 'destination')?"
        ],
    ),
    (
        "retry-fields-dedented-out-of-retries",
        VS
        + """\
  - route:
    - destination:
        host: reviews
    retries:
    attempts: 3
    perTryTimeout: 2s
""",
        [
            "reviews.yaml:12: spec.http[0].attempts: unknown field at the level of http[0]: did "
            "you mean it under 'retries'? ('retries' on line 11 is empty: its fields go under it)",
            "reviews.yaml:13: spec.http[0].perTryTimeout: unknown field at the level of http[0]: "
            "did you mean it under 'retries'? ('retries' on line 11 is empty: its fields go under "
            "it)",
        ],
    ),
    (
        "field-of-two-children",
        VS
        + """\
  - fault:
      delay:
        fixedDelay: 7s
      percentage: {value: 100}
    route:
    - destination: {host: reviews}
""",
        [
            "reviews.yaml:11: spec.http[0].fault.percentage: unknown field at the level of fault: "
            "did you mean it under 'delay' or 'abort'?"
        ],
    ),
    (
        "load-balancer-field-dedented",
        """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
    simple: ROUND_ROBIN
""",
        [
            "reviews.yaml:9: spec.trafficPolicy.simple: unknown field at the level of "
            "trafficPolicy: did you mean it under 'loadBalancer'? ('loadBalancer' on line 8 is "
            "empty: its fields go under it)"
        ],
    ),
    (
        "spec-field-at-the-top-level",
        """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
hosts: [reviews]
spec:
  http:
  - route:
    - destination: {host: reviews}
""",
        ["reviews.yaml:5: hosts: unknown field at the top level: did you mean it under 'spec'?"],
    ),
    (
        # a typo is matched against the fields of its own level only
        "typo-matched-at-its-level",
        VS
        + """\
  - route:
    - destination:
        host: reviews
        subst: v2
""",
        [
            "reviews.yaml:11: spec.http[0].route[0].destination.subst: unknown field "
            "(did you mean 'subset'?)"
        ],
    ),
    (
        "no-field-of-that-name-nearby",
        VS
        + """\
  - route:
    - destination:
        host: reviews
      subsets: [v2]
""",
        ["reviews.yaml:11: spec.http[0].route[0].subsets: unknown field"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in LEVELS], ids=[c[0] for c in LEVELS])
def test_a_field_at_the_wrong_level_says_where_it_belongs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]
) -> None:
    assert problems(tmp_path, monkeypatch, text) == expected


# ----------------------------------------------------------------------------- empty retries

DEFAULT_POLICY = (
    "2 retries on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes "
    "(status 503)"
)


def warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("reviews.yaml").write_text(text, encoding="utf-8")
    return [str(p) for p in lint(load_config(["reviews.yaml"]))]


def test_retries_null_warns_that_the_route_keeps_the_default_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = VS + "  - route:\n    - destination:\n        host: reviews\n    retries:\n"
    assert warnings(tmp_path, monkeypatch, text) == [
        "reviews.yaml:11: warning: spec.http[0].retries: empty: 'retries:' with nothing under it "
        "is read as no retries field at all (as Istio reads it), so this route keeps the default "
        f"policy, {DEFAULT_POLICY}; retry fields go indented under 'retries', and 'attempts: 0' "
        "turns retries off"
    ]


def test_retries_empty_mapping_warns_that_the_route_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = VS + "  - route:\n    - destination:\n        host: reviews\n    retries: {}\n"
    assert warnings(tmp_path, monkeypatch, text) == [
        "reviews.yaml:11: warning: spec.http[0].retries: 'retries: {}' means attempts 0 (as in "
        "Istio): this route is not retried at all, where leaving 'retries' out keeps the default "
        f"policy, {DEFAULT_POLICY}; write 'attempts: 0' if no retries is what you mean"
    ]


def test_the_warnings_say_what_the_mesh_does(tmp_path: Path) -> None:
    """null: the default policy, as if absent; {}: no retries; attempts 0: no retries."""
    from meshlib import Mesh

    decisions = {}
    for written in ("", "    retries:\n", "    retries: {}\n", "    retries: {attempts: 0}\n"):
        text = VS + "  - route:\n    - destination:\n        host: reviews\n" + written
        decisions[written.strip()] = Mesh.from_yaml(text).explain("GET", "http://reviews/").retry
    assert decisions[""] == decisions["retries:"]
    assert (decisions["retries:"].attempts, decisions["retries:"].source) == (2, "default")
    assert decisions["retries: {}"].attempts == decisions["retries: {attempts: 0}"].attempts == 0


def test_explicit_retries_and_fault_routes_get_no_empty_retries_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        VS
        + """\
  - route:
    - destination: {host: reviews}
    retries: {attempts: 0}
  - fault:
      abort: {httpStatus: 500, percentage: {value: 1}}
    retries:
    route:
    - destination: {host: reviews}
"""
    )
    found = warnings(tmp_path, monkeypatch, text)
    assert not [w for w in found if "empty" in w or "retries: {}" in w]


# ----------------------------------------------------------------------------- unreachable routes


def test_a_route_after_one_that_matches_everything_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A match that every request meets ends the list as a route without match does; Istio's
    own warning covers only the latter, so meshlib's says the former, once."""
    text = VS + (
        "  - match:\n"
        "    - uri: {prefix: /}\n"
        "    route:\n"
        "    - destination: {host: reviews}\n"
        "  - name: late\n"
        "    route:\n"
        "    - destination: {host: reviews}\n"
    )
    assert warnings(tmp_path, monkeypatch, text) == [
        "reviews.yaml:12: warning: spec.http[1]: unreachable: route http[0] matches every request"
    ]
