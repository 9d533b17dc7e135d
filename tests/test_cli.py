"""``meshctl``: ``validate`` reports each problem where it is; ``explain`` says where a request
goes and why."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlib.cli import main

WriteYaml = Callable[[str, str], Path]
Capsys = pytest.CaptureFixture[str]


def run(capsys: Capsys, *argv: str | Path) -> tuple[int, list[str], list[str]]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path`` so that file names in the output stay short."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- validate


def test_validate_prints_errors_and_exits_1(
    write_yaml: WriteYaml, in_tmp: Path, capsys: Capsys
) -> None:
    write_yaml(
        "reviews.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: v1}
              weight: 50
            - destination: {host: reviews, subset: v2}
              weight: -50
        """,
    )
    write_yaml(
        "ratings.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: ratings}
        spec:
          host: ratings
          trafficPolicy:
            loadBalancer: {simpel: RANDOM}
        """,
    )
    code, out, _ = run(capsys, "validate", "reviews.yaml", "ratings.yaml")
    assert code == 1
    assert out == [
        "reviews.yaml:11: spec.http[0].route[1].weight: must be >= 0",
        "ratings.yaml:7: spec.trafficPolicy.loadBalancer.simpel: unknown field "
        "(did you mean 'simple'?)",
        "2 error(s)",
    ]


def test_validate_exits_0_with_warnings(bookinfo_dir: Path, capsys: Capsys) -> None:
    path = bookinfo_dir / "virtual-service-details-v2.yaml"
    code, out, _ = run(capsys, "validate", path)
    assert code == 0
    assert out == [
        f"{path}:9: warning: spec.http[0].route[0].destination.subset: subset 'v2' of "
        "'details' is not defined (no DestinationRule defines subsets for it): calls get 503 (NC)",
        "valid: 1 file(s), 1 resource(s) (1 used in-process), 1 warning(s)",
    ]


def test_validate_quiet_hides_warnings(bookinfo_dir: Path, capsys: Capsys) -> None:
    path = bookinfo_dir / "virtual-service-details-v2.yaml"
    code, out, _ = run(capsys, "validate", "-q", path)
    assert code == 0
    assert out == ["valid: 1 file(s), 1 resource(s) (1 used in-process), 1 warning(s)"]


def test_validate_finds_the_unreachable_route_in_bookinfo(
    bookinfo_dir: Path, capsys: Capsys
) -> None:
    path = bookinfo_dir / "fault-injection-details-v1.yaml"
    code, out, _ = run(capsys, "validate", path)
    assert code == 0
    assert out == [
        f"{path}:15: warning: spec.http[1]: virtualService rule #1 not used (only the last rule "
        "can have no matches)",  # Istio's own validation warning
        "valid: 1 file(s), 2 resource(s) (2 used in-process), 1 warning(s)",
    ]


LINT = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: faulty
    match:
    - headers: {end-user: {exact: jason}}
    fault:
      delay:
        fixedDelay: 7s
    timeout: 3s
    retries: {attempts: 2}
    route:
    - destination: {host: reviews, subset: v3}
  - name: split
    match:
    - uri: {prefix: /split}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 30
    - destination: {host: reviews, subset: v2}
      weight: 30
  - name: slow
    match:
    - uri: {prefix: /slow}
    timeout: 1s
    retries:
      attempts: 3
      perTryTimeout: 500ms
    route:
    - destination: {host: reviews, subset: v1}
  - name: rest
    route:
    - destination: {host: reviews, subset: v1}
  - name: dead
    route:
    - destination: {host: reviews, subset: v2}
"""


def test_validate_lint_warnings_name_their_lines(
    write_yaml: WriteYaml, in_tmp: Path, capsys: Capsys
) -> None:
    write_yaml("lint.yaml", LINT)
    code, out, _ = run(capsys, "validate", "lint.yaml")
    assert code == 0
    assert out == [
        "lint.yaml:20: warning: spec.http[0].fault.delay: no percentage: this delay applies to "
        "0% of requests (set percentage.value)",
        "lint.yaml:22: warning: spec.http[0].timeout: ignored: a route with a fault gets no "
        "timeout (Istio's rule)",
        "lint.yaml:23: warning: spec.http[0].retries: ignored: a route with a fault gets no "
        "retries (Istio's rule)",
        "lint.yaml:25: warning: spec.http[0].route[0].destination.subset: subset 'v3' of "
        "'reviews' is not defined (defined: v1, v2): calls get 503 (NC)",
        "lint.yaml:29: warning: spec.http[1].route: weights sum to 60, not 100: each "
        "destination gets weight/60 of the traffic",
        "lint.yaml:40: warning: spec.http[2].retries.perTryTimeout: perTryTimeout 0.5s × 4 "
        "tries = 2s exceeds the route timeout 1s: later retries will be cut short",
        'lint.yaml:46: warning: spec.http[4]: virtualService rule "dead" not used (only the last '
        "rule can have no matches)",
        "valid: 1 file(s), 2 resource(s) (2 used in-process), 7 warning(s)",
    ]


def test_validate_warns_about_hosts_outside_the_registry_and_claimed_twice(
    write_yaml: WriteYaml, in_tmp: Path, capsys: Capsys
) -> None:
    write_yaml(
        "mesh.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: productpage}
        spec:
          registry:
            static:
              reviews: [{address: 127.0.0.1:9081}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviewz}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews-again}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews}
        """,
    )
    code, out, _ = run(capsys, "validate", "mesh.yaml")
    assert code == 0
    assert out[:2] == [
        "mesh.yaml:16: warning: spec.http[0].route[0].destination.host: host 'reviewz' is not "
        "in the registry: calls to it will fail",
        "mesh.yaml:22: warning: spec.hosts[0]: host 'reviews' is already routed by "
        "VirtualService 'reviews' (mesh.yaml:9): this one is ignored for it",
    ]


def test_validate_missing_file_exits_1(in_tmp: Path, capsys: Capsys) -> None:
    code, out, _ = run(capsys, "validate", "nowhere.yaml")
    assert code == 1
    assert out == [
        "nowhere.yaml: cannot read nowhere.yaml: No such file or directory",
        "1 error(s)",
    ]


def test_no_command_prints_help_and_exits_2(capsys: Capsys) -> None:
    code, out, _ = run(capsys)
    assert code == 2
    assert out[0].startswith("usage: meshctl")


# --------------------------------------------------------------------------- explain


@pytest.fixture
def test_v2(bookinfo_dir: Path) -> list[str]:
    return [
        "-c",
        str(bookinfo_dir / "destination-rule-all.yaml"),
        "-c",
        str(bookinfo_dir / "virtual-service-reviews-test-v2.yaml"),
    ]


def test_explain_sends_jason_to_v2(test_v2: list[str], capsys: Capsys) -> None:
    code, out, _ = run(
        capsys, "explain", *test_v2, "-H", "end-user: jason", "GET", "http://reviews:9080/reviews/0"
    )
    assert code == 0
    assert out[:5] == [
        "host:         reviews.default.svc.cluster.local",
        "virtual svc:  default/reviews",
        "route:        http[0]",
        "destination:  reviews.default.svc.cluster.local, subset v2 (weight 100)",
        "  endpoints with labels {'version': 'v2'}",
    ]
    assert not any(line.startswith("skipped:") for line in out)


def test_explain_sends_other_users_to_v1_and_says_why(test_v2: list[str], capsys: Capsys) -> None:
    code, out, _ = run(
        capsys, "explain", *test_v2, "-H", "End-User: mary", "GET", "http://reviews:9080/reviews/0"
    )
    assert code == 0
    assert out[:6] == [
        "host:         reviews.default.svc.cluster.local",
        "virtual svc:  default/reviews",
        "skipped:      http[0]",
        "                match[0]: headers.end-user wants exact 'jason', got 'mary'",
        "route:        http[1]",
        "destination:  reviews.default.svc.cluster.local, subset v1 (weight 100)",
    ]


def test_explain_without_the_header_says_it_is_absent(test_v2: list[str], capsys: Capsys) -> None:
    code, out, _ = run(capsys, "explain", *test_v2, "GET", "http://reviews:9080/reviews/0")
    assert code == 0
    assert "                match[0]: headers.end-user wants exact 'jason', got absent" in out
    assert "destination:  reviews.default.svc.cluster.local, subset v1 (weight 100)" in out


def test_explain_json_has_the_documented_keys(bookinfo_dir: Path, capsys: Capsys) -> None:
    code, out, _ = run(
        capsys,
        "explain",
        "-c",
        bookinfo_dir / "destination-rule-reviews.yaml",
        "-c",
        bookinfo_dir / "virtual-service-reviews-test-v2.yaml",
        "--json",
        "-H",
        "end-user: jason",
        "GET",
        "http://reviews:9080/reviews/0",
    )
    assert code == 0
    decision = json.loads("\n".join(out))
    assert decision["matched"] is True
    assert decision["flag"] is None
    assert decision["route_index"] == 0
    assert decision["route_name"] is None
    destination = decision["destination"]
    assert destination["host"] == "reviews.default.svc.cluster.local"
    assert destination["subset"] == "v2"
    assert destination["port"] is None
    assert decision["fault"]["delay"] is None
    assert decision["fault"]["delay_percentage"] == 0.0
    assert decision["fault"]["abort_status"] is None
    assert decision["fault"]["abort_percentage"] == 0.0
    assert decision["timeout"] is None
    # no `retries` on the route: Istio's mesh default
    assert decision["retry"]["attempts"] == 2
    assert decision["retry"]["per_try_timeout"] is None
    assert decision["retry"]["retry_on"] == [
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
        "retriable-status-codes",
    ]
    assert decision["traffic_policy"] == {"loadBalancer": {"simple": "RANDOM"}}


def test_explain_json_shows_fault_timeout_and_retries(
    write_yaml: WriteYaml, bookinfo_dir: Path, capsys: Capsys
) -> None:
    ratings = bookinfo_dir / "virtual-service-ratings-test-delay.yaml"
    code, out, _ = run(
        capsys,
        "explain",
        "-c",
        ratings,
        "--json",
        "-H",
        "end-user: jason",
        "GET",
        "http://ratings/",
    )
    assert code == 0
    decision = json.loads("\n".join(out))
    assert decision["fault"]["delay"] == 7.0
    assert decision["fault"]["delay_percentage"] == 100.0  # from the legacy `percent: 100`
    assert decision["retry"]["attempts"] == 0  # a route with a fault gets no retries

    custom = write_yaml(
        "reviews.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - name: main
            timeout: 2s
            retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,429"}
            fault:
              abort: {httpStatus: 503, percentage: {value: 12.5}}
            route:
            - destination: {host: reviews, port: {number: 9080}}
          - name: rest
            route:
            - destination: {host: reviews}
        """,
    )
    code, out, _ = run(capsys, "explain", "-c", custom, "--json", "GET", "http://reviews/")
    assert code == 0
    decision = json.loads("\n".join(out))
    assert decision["route_name"] == "main"
    assert decision["destination"]["port"] == 9080
    assert decision["fault"]["abort_status"] == 503
    assert decision["fault"]["abort_percentage"] == 12.5
    # Istio: a route with a fault gets no timeout and no retries
    assert decision["timeout"] is None
    assert decision["retry"]["attempts"] == 0

    plain = write_yaml(
        "plain.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - timeout: 2s
            retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,429"}
            route:
            - destination: {host: reviews}
        """,
    )
    code, out, _ = run(capsys, "explain", "-c", plain, "--json", "GET", "http://reviews/")
    assert code == 0
    decision = json.loads("\n".join(out))
    assert decision["timeout"] == 2.0
    assert decision["retry"]["attempts"] == 3
    assert decision["retry"]["per_try_timeout"] == 0.5
    assert decision["retry"]["retry_on"] == ["5xx", "retriable-status-codes"]
    assert decision["retry"]["retriable_status_codes"] == [429]


def test_explain_no_route_says_so(capsys: Capsys, write_yaml: WriteYaml) -> None:
    only_jason = write_yaml(
        "reviews.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - match: [{headers: {end-user: {exact: jason}}}]
            route: [{destination: {host: reviews}}]
        """,
    )
    code, out, _ = run(capsys, "explain", "-c", only_jason, "GET", "http://reviews/")
    assert code == 0
    assert "result:       no route (flag NR)" in out


def test_explain_bad_header_exits_2(test_v2: list[str], capsys: Capsys) -> None:
    code, out, err = run(
        capsys, "explain", *test_v2, "-H", "end-user=jason", "GET", "http://reviews/"
    )
    assert code == 2
    assert out == []
    assert err == ["meshctl: bad header 'end-user=jason': write it as 'name: value'"]


def test_explain_bad_config_exits_1_with_problems(
    write_yaml: WriteYaml, in_tmp: Path, capsys: Capsys
) -> None:
    write_yaml(
        "bad.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - timeout: soon
            route: [{destination: {host: reviews}}]
        """,
    )
    code, out, err = run(capsys, "explain", "-c", "bad.yaml", "GET", "http://reviews/")
    assert code == 1
    assert out == []
    assert err == [
        "bad.yaml:7: spec.http[0].timeout: invalid duration 'soon': write a number and a unit "
        "(h, m, s, ms, us, ns), e.g. '7s', '0.5s', '100ms', '1m'"
    ]


# --------------------------------------------------------------------------- the installed command


def meshctl_command() -> list[str]:
    beside = Path(sys.executable).with_name("meshctl")
    script = str(beside) if beside.exists() else shutil.which("meshctl")
    assert script is not None, "the meshctl console script is not installed"
    return [script]


def test_console_script_runs(bookinfo_dir: Path) -> None:
    path = bookinfo_dir / "fault-injection-details-v1.yaml"
    done = subprocess.run(
        [*meshctl_command(), "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "virtualService rule #1 not used (only the last rule can have no matches)" in (
        done.stdout
    )
    assert done.stdout.splitlines()[-1].startswith("valid: 1 file(s)")


def test_module_entry_point_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: networking.istio.io/v1\nkind: Nonsense\n")
    done = subprocess.run(
        [sys.executable, "-m", "meshlib.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{bad}:2: kind: unknown kind 'Nonsense' of networking.istio.io" in done.stdout
