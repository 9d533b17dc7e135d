"""The lint for Bookinfo's fault-injection bug: a delay that outlasts a caller's timeout, found
up the call chain from the services' declared ``appTimeouts`` and from route timeouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshlib.cli import main
from meshlib.config.lint import lint
from meshlib.config.load import MeshConfig, load_config

WriteYaml = Callable[[str, str], Path]
Capsys = pytest.CaptureFixture[str]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "examples" / "bookinfo" / "config"


def service(name: str, version: str, timeouts: str = "") -> str:
    text = f"""
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {{name: {name}}}
        spec:
          version: {version}
        """
    if timeouts:
        text += f"  appTimeouts: {timeouts}\n"
    return text


def delay(host: str, seconds: str, percent: str = "percentage: {value: 100}") -> str:
    return f"""
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: {host}}}
        spec:
          hosts: [{host}]
          http:
          - fault:
              delay:
                {percent}
                fixedDelay: {seconds}
            route:
            - destination: {{host: {host}}}
        """


@pytest.fixture
def bookinfo(write_yaml: WriteYaml) -> list[MeshConfig]:
    """productpage (3 s × 2 on reviews), reviews v1 (no call), v2 (10 s) and v3 (2.5 s)."""
    files = [
        write_yaml(
            "productpage.yaml",
            service("productpage", "v1", "{reviews: {timeout: 3s, attempts: 2}}"),
        ),
        write_yaml("reviews-v1.yaml", service("reviews", "v1")),
        write_yaml("reviews-v2.yaml", service("reviews", "v2", "{ratings: {timeout: 10s}}")),
        write_yaml("reviews-v3.yaml", service("reviews", "v3", "{ratings: {timeout: 2.5s}}")),
    ]
    return [load_config([f]) for f in files]


def messages(config: MeshConfig, services: list[MeshConfig]) -> list[str]:
    found = lint(config, services)
    return [f"{p.line}: {p.path}: {p.message}" for p in found if p.path.endswith("fixedDelay")]


def test_istios_7s_delay_outlasts_productpages_timeout_on_reviews(
    bookinfo: list[MeshConfig], bookinfo_dir: Path
) -> None:
    rules = load_config([bookinfo_dir / "virtual-service-ratings-test-delay.yaml"])
    assert messages(rules, bookinfo) == [
        "15: spec.http[0].fault.delay.fixedDelay: a 7s delay on ratings outlasts reviews v3's "
        "2.5s timeout on ratings: reviews v3 gives up after 2.5s, before the delay ends",
        "15: spec.http[0].fault.delay.fixedDelay: a 7s delay on ratings outlasts productpage "
        "v1's 3s timeout on reviews (productpage v1 → reviews v2 → ratings): productpage v1 "
        "gives up after 2 tries × 3s = 6s, before the delay ends",
    ]


def test_a_2s_delay_outlasts_no_timeout(bookinfo: list[MeshConfig], write_yaml: WriteYaml) -> None:
    rules = load_config([write_yaml("delay.yaml", delay("ratings", "2s"))])
    assert messages(rules, bookinfo) == []


def test_a_delay_as_long_as_the_timeout_counts(
    bookinfo: list[MeshConfig], write_yaml: WriteYaml
) -> None:
    rules = load_config([write_yaml("delay.yaml", delay("reviews", "3s"))])
    assert messages(rules, bookinfo) == [
        "10: spec.http[0].fault.delay.fixedDelay: a 3s delay on reviews outlasts productpage "
        "v1's 3s timeout on reviews: productpage v1 gives up after 2 tries × 3s = 6s, before "
        "the delay ends"
    ]


def test_a_delay_that_applies_to_no_request_is_not_checked(
    bookinfo: list[MeshConfig], write_yaml: WriteYaml
) -> None:
    rules = load_config([write_yaml("delay.yaml", delay("reviews", "9s", "percent: 0"))])
    assert messages(rules, bookinfo) == []


def test_a_route_timeout_on_the_way_counts(
    bookinfo: list[MeshConfig], write_yaml: WriteYaml
) -> None:
    """Istio's request-timeouts task: ratings delayed 2 s, reviews' route times out at 0.5 s."""
    timeout = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: v2}
            timeout: 0.5s
        """
    in_force = load_config([write_yaml("timeout.yaml", timeout)])
    rules = load_config([write_yaml("delay.yaml", delay("ratings", "2s"))])
    assert messages(rules, [*bookinfo, in_force]) == [
        "10: spec.http[0].fault.delay.fixedDelay: a 2s delay on ratings outlasts the 0.5s "
        "timeout of VirtualService default/reviews http[0] (calls to reviews v2 → ratings): the "
        "call ends in a timeout (UT) before the delay does",
    ]


def test_without_declared_timeouts_there_is_nothing_to_check(
    bookinfo_dir: Path,
) -> None:
    rules = load_config([bookinfo_dir / "virtual-service-ratings-test-delay.yaml"])
    assert messages(rules, []) == []


def test_meshctl_validate_takes_the_services_configs(
    bookinfo_dir: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Bookinfo demo's own configs declare the app timeouts its code has."""
    monkeypatch.chdir(ROOT)
    delay_file = bookinfo_dir / "virtual-service-ratings-test-delay.yaml"
    subsets = bookinfo_dir / "destination-rule-all.yaml"
    files = [str(subsets), str(delay_file)]
    code = main(["validate", "-s", "examples/bookinfo/config/*.yaml", *files])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split(": ", 3)[-1] for line in out[:-1]] == [
        "a 7s delay on ratings outlasts reviews v3's 2.5s timeout on ratings: reviews v3 gives "
        "up after 2.5s, before the delay ends",
        "a 7s delay on ratings outlasts productpage v1's 3s timeout on reviews (productpage v1 "
        "→ reviews v2 → ratings): productpage v1 gives up after 2 tries × 3s = 6s, before the "
        "delay ends",
    ]
    assert out[-1] == "valid: 2 file(s), 5 resource(s) (5 used in-process), 2 warning(s)"


def test_meshctl_validate_reports_a_bad_service_config(
    write_yaml: WriteYaml, capsys: Capsys
) -> None:
    bad = write_yaml("bad.yaml", service("productpage", "v1", "{reviews: {timeout: soon}}"))
    rules = write_yaml("delay.yaml", delay("reviews", "3s"))
    assert main(["validate", "--service", str(bad), str(rules)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:6: spec.appTimeouts.reviews.timeout: invalid duration 'soon'" in out
    assert f"1 error(s) in the service config {bad}" in out
