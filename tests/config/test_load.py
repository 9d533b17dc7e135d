"""Loading config files: the Bookinfo rule files (the project's, and Istio's own as they are),
meshlib's Service document, includes, replacement of earlier definitions, and every Istio field
kept on the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from meshlib import ConfigError, Mesh
from meshlib.cli import main
from meshlib.config import model as m
from meshlib.config.load import MeshConfig, Resource, load_config, load_texts

WriteYaml = Callable[[str, str], Path]

BOOKINFO_FILES = {
    "bookinfo-gateway.yaml",
    "destination-rule-all-mtls.yaml",
    "destination-rule-all.yaml",
    "destination-rule-reviews.yaml",
    "fault-injection-details-v1.yaml",
    "virtual-service-all-v1.yaml",
    "virtual-service-details-v2.yaml",
    "virtual-service-ratings-db.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "virtual-service-ratings-test-delay.yaml",
    "virtual-service-reviews-50-v3.yaml",
    "virtual-service-reviews-80-20.yaml",
    "virtual-service-reviews-90-10.yaml",
    "virtual-service-reviews-jason-v2-v3.yaml",
    "virtual-service-reviews-test-v2.yaml",
    "virtual-service-reviews-v2-v3.yaml",
    "virtual-service-reviews-v3.yaml",
}


def only(config: MeshConfig, kind: str, name: str) -> Resource:
    found = [r for r in config.resources if r.kind == kind and r.name == name]
    assert len(found) == 1, f"{kind} {name}: {found}"
    return found[0]


def spec_of(config: MeshConfig, kind: str, name: str) -> m.Model:
    spec = only(config, kind, name).spec
    assert spec is not None
    return spec


# --------------------------------------------------------------------------- Istio's Bookinfo


def test_the_project_has_a_rule_file_for_each_of_istios(bookinfo_dir: Path) -> None:
    assert {p.name for p in bookinfo_dir.glob("*.yaml")} == BOOKINFO_FILES


def test_istios_bookinfo_samples_are_all_present(istio_bookinfo_dir: Path) -> None:
    assert {p.name for p in istio_bookinfo_dir.glob("*.yaml")} >= BOOKINFO_FILES


def _meaning(config: MeshConfig) -> dict[tuple[str, str], object]:
    """Each resource's spec as data, Istio's legacy integer ``percent`` of a fault written as
    the ``percentage`` it means."""

    def plain(value: object, key: str = "") -> object:
        if isinstance(value, dict):
            out = {k: plain(v, k) for k, v in value.items()}
            if key in ("delay", "abort") and "percent" in out:
                out.setdefault("percentage", {"value": float(out.pop("percent"))})  # type: ignore[arg-type]
            return out
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {
        (r.kind, r.name): plain(r.spec.model_dump(by_alias=True, exclude_none=True))
        if r.spec is not None
        else None
        for r in config.resources
    }


def test_project_rule_file_means_what_istios_file_means(
    istio_bookinfo_file: Path, bookinfo_dir: Path
) -> None:
    ours = load_config([bookinfo_dir / istio_bookinfo_file.name])
    istios = load_config([istio_bookinfo_file])
    assert _meaning(ours) == _meaning(istios)


def test_istio_bookinfo_file_loads_alone(istio_bookinfo_file: Path) -> None:
    test_bookinfo_file_loads_alone(istio_bookinfo_file)


def test_istio_bookinfo_file_loads_with_destination_rule_all(
    istio_bookinfo_file: Path, istio_bookinfo_dir: Path
) -> None:
    test_bookinfo_file_loads_with_destination_rule_all(istio_bookinfo_file, istio_bookinfo_dir)


def test_bookinfo_file_loads_alone(bookinfo_file: Path) -> None:
    documents = [d for d in yaml.safe_load_all(bookinfo_file.read_text()) if d is not None]
    config = load_config([bookinfo_file])
    assert config.files == (str(bookinfo_file),)
    assert [(r.kind, r.name) for r in config.resources] == [
        (d["kind"], d["metadata"]["name"]) for d in documents
    ]
    for resource in config.resources:
        assert resource.file == str(bookinfo_file)
        # every routing resource is validated into its model; only Gateway is kept without one
        assert (resource.spec is None) == (resource.kind == "Gateway")


def test_bookinfo_file_loads_with_destination_rule_all(
    bookinfo_file: Path, bookinfo_dir: Path
) -> None:
    rules = bookinfo_dir / "destination-rule-all.yaml"
    mesh = Mesh.from_files([bookinfo_file, rules])
    rule_names = {r.name for r in mesh.config.of_kind("DestinationRule")}
    assert rule_names == {"productpage", "reviews", "ratings", "details"}


def test_meshctl_validate_accepts_bookinfo_file(
    bookinfo_file: Path, bookinfo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(bookinfo_file)]) == 0
    alone = capsys.readouterr().out
    assert alone.splitlines()[-1].startswith("valid: 1 file(s)")

    assert (
        main(["validate", str(bookinfo_file), str(bookinfo_dir / "destination-rule-all.yaml")]) == 0
    )
    together = capsys.readouterr().out
    assert together.splitlines()[-1].startswith("valid: ")
    # destination-rule-all defines every subset the Bookinfo routes name
    assert "is not defined" not in together


def test_legacy_percent_and_percentage_value_both_load(
    write_yaml: WriteYaml, bookinfo_dir: Path
) -> None:
    legacy = write_yaml(
        "ratings.yaml",
        """
        apiVersion: networking.istio.io/v1alpha3
        kind: VirtualService
        metadata: {name: ratings}
        spec:
          hosts: [ratings]
          http:
          - fault:
              delay: {percent: 100, fixedDelay: 7s}
            route:
            - destination: {host: ratings, subset: v1}
        """,
    )
    delay = load_config([legacy])
    vs = spec_of(delay, "VirtualService", "ratings")
    assert isinstance(vs, m.VirtualService)
    assert vs.http is not None
    fault = vs.http[0].fault
    assert fault is not None
    assert fault.delay is not None
    assert fault.delay.percent == 100
    assert fault.delay.fixed_delay == 7.0

    abort = load_config([bookinfo_dir / "fault-injection-details-v1.yaml"])
    vs = spec_of(abort, "VirtualService", "details")
    assert isinstance(vs, m.VirtualService)
    assert vs.http is not None
    fault = vs.http[0].fault
    assert fault is not None
    assert fault.abort is not None
    assert fault.abort.http_status == 555
    assert fault.abort.percentage == m.Percent(value=100.0)


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"])
@pytest.mark.parametrize("kind", ["VirtualService", "DestinationRule", "ServiceEntry"])
def test_every_istio_api_version_is_accepted(version: str, kind: str) -> None:
    specs = {
        "VirtualService": "{hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}",
        "DestinationRule": "{host: reviews, subsets: [{name: v1, labels: {version: v1}}]}",
        "ServiceEntry": "{hosts: [a.example.com], ports: [{number: 443, protocol: TLS, name: t}]}",
    }
    text = (
        f"apiVersion: networking.istio.io/{version}\n"
        f"kind: {kind}\n"
        "metadata: {name: reviews}\n"
        f"spec: {specs[kind]}\n"
    )
    config = load_texts([("v.yaml", text)])
    (resource,) = config.resources
    assert resource.api_version == f"networking.istio.io/{version}"
    assert type(resource.spec).__name__ == kind


# --------------------------------------------------------------------------- Service document

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata:
  name: productpage
  namespace: shop
spec:
  version: v1
  labels: {team: books}
  propagateHeaders: [End-User, x-request-id]
  registry:
    static:
      reviews:
        - {address: 127.0.0.1:9081, labels: {version: v1}}
        - {address: "reviews-2.local:9082", labels: {version: v2}, weight: 3}
      details:
        - address: 127.0.0.1:9083
"""


def test_service_document_describes_this_service() -> None:
    config = load_texts([("mesh.yaml", SERVICE)])
    service = config.service
    assert service.name == "productpage"
    assert service.namespace == "shop"
    assert service.version == "v1"
    # own labels, plus Kubernetes' app/version labels derived from name and version
    assert service.labels == {"team": "books", "app": "productpage", "version": "v1"}
    assert service.propagate_headers == ("end-user", "x-request-id")
    reviews = service.registry["reviews"]
    assert [e.address for e in reviews] == ["127.0.0.1:9081", "reviews-2.local:9082"]
    assert [e.labels for e in reviews] == [{"version": "v1"}, {"version": "v2"}]
    assert [e.weight for e in reviews] == [1, 3]  # weight defaults to 1
    (details,) = service.registry["details"]
    assert details.address == "127.0.0.1:9083"
    assert details.labels is None


def test_without_service_document_defaults_apply(bookinfo_dir: Path) -> None:
    config = load_config([bookinfo_dir / "virtual-service-all-v1.yaml"])
    assert config.service.name == "unknown"
    assert config.service.namespace == "default"
    assert config.service.registry == {}
    assert {r.namespace for r in config.resources} == {"default"}


def test_resources_without_namespace_take_the_service_namespace() -> None:
    rule = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews}
"""
    config = load_texts([("mesh.yaml", SERVICE), ("rules.yaml", rule)])
    assert only(config, "DestinationRule", "reviews").namespace == "shop"


def test_include_loads_bookinfo_files_by_relative_path(
    write_yaml: WriteYaml, bookinfo_dir: Path, tmp_path: Path
) -> None:
    relative = Path(os.path.relpath(bookinfo_dir, tmp_path / "svc"))
    assert not relative.is_absolute()
    mesh_file = write_yaml(
        "svc/mesh.yaml",
        f"""
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {{name: productpage}}
        spec:
          include:
            - {relative / "destination-rule-all.yaml"}
            - {relative / "virtual-service-reviews-*.yaml"}
        """,
    )
    config = load_config([mesh_file])
    loaded = {Path(f).name for f in config.files}
    assert "destination-rule-all.yaml" in loaded
    assert "virtual-service-reviews-test-v2.yaml" in loaded
    assert "virtual-service-ratings-db.yaml" not in loaded
    assert {r.name for r in config.of_kind("DestinationRule")} == {
        "productpage",
        "reviews",
        "ratings",
        "details",
    }
    # every reviews file defines VirtualService default/reviews: the last one loaded wins
    vs = only(config, "VirtualService", "reviews")
    assert Path(vs.file).name == "virtual-service-reviews-v3.yaml"


def test_include_glob_is_relative_to_the_including_file(
    write_yaml: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(
        "conf/mesh.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: productpage}
        spec:
          include: [rules/*.yaml]
        """,
    )
    for name in ("a", "b"):
        write_yaml(
            f"conf/rules/{name}.yaml",
            f"""
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {{name: {name}}}
            spec: {{host: {name}}}
            """,
        )
    write_yaml("rules/c.yaml", "not: read\n")  # beside the cwd, not the including file
    monkeypatch.chdir(tmp_path)
    config = load_config(["conf/mesh.yaml"])
    assert [r.name for r in config.of_kind("DestinationRule")] == ["a", "b"]
    assert config.files == ("conf/mesh.yaml", "conf/rules/a.yaml", "conf/rules/b.yaml")


def test_missing_include_names_the_including_file_and_line(
    write_yaml: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_yaml(
        "mesh.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: productpage}
        spec:
          include:
            - rules.yaml
            - nothing-here.yaml
        """,
    )
    write_yaml("rules.yaml", "")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(["mesh.yaml"])
    (problem,) = caught.value.problems
    assert str(problem) == (
        "mesh.yaml:7: spec.include[1]: included file ./nothing-here.yaml not found"
    )


def test_include_glob_matching_nothing_is_a_warning(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "mesh.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: productpage}
        spec:
          include: [rules/*.yaml]
        """,
    )
    config = load_config([path])
    (warning,) = config.warnings
    assert warning.severity == "warning"
    assert (warning.line, warning.path) == (5, "spec.include[0]")
    assert warning.message == "'rules/*.yaml' matches no file"


def test_include_of_itself_does_not_loop(write_yaml: WriteYaml) -> None:
    path = write_yaml(
        "mesh.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: productpage}
        spec:
          include: ["*.yaml"]
        """,
    )
    write_yaml(
        "reviews.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec: {host: reviews}
        """,
    )
    config = load_config([path])
    assert config.service.name == "productpage"
    assert [Path(f).name for f in config.files] == ["mesh.yaml", "reviews.yaml"]
    assert sorted(r.kind for r in config.resources) == ["DestinationRule", "Service"]


def test_include_cycle_between_files_terminates(write_yaml: WriteYaml) -> None:
    first = write_yaml(
        "a.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: a}
        spec: {include: [b.yaml]}
        """,
    )
    write_yaml(
        "b.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: b}
        spec: {include: [a.yaml]}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config([first])
    (problem,) = caught.value.problems
    assert problem.message.startswith("a second Service document")
    assert Path(problem.file).name == "b.yaml"


# --------------------------------------------------------------------------- Gateway


def test_gateway_is_loaded_but_not_applicable(
    bookinfo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bookinfo_dir / "bookinfo-gateway.yaml"
    config = load_config([path])
    gateway = only(config, "Gateway", "bookinfo-gateway")
    assert gateway.spec is None
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"{path}:4: warning: kind: Gateway 'bookinfo-gateway' is not applicable in-process: "
        "loaded and ignored"
    ) in out.splitlines()
    assert (
        f"{path}:18: warning: spec.gateways: bound only to gateways ['bookinfo-gateway']: "
        "takes no part in mesh routing"
    ) in out.splitlines()


def test_gateway_bound_virtual_service_takes_no_part_in_mesh_routing(
    write_yaml: WriteYaml, bookinfo_dir: Path
) -> None:
    registry = write_yaml(
        "mesh.yaml",
        """
        apiVersion: meshlib.dev/v1
        kind: Service
        metadata: {name: reviews}
        spec:
          registry:
            static:
              productpage: [{address: 127.0.0.1:9080}]
        """,
    )
    mesh = Mesh.from_files([registry, bookinfo_dir / "bookinfo-gateway.yaml"])
    decision = mesh.explain("GET", "http://productpage:9080/productpage")
    assert decision.matched
    assert decision.route_name == "default"
    assert decision.virtual_service is None
    assert decision.destination is not None
    assert decision.destination.host == "productpage.default.svc.cluster.local"
    # the gateway VirtualService claims "*": in the mesh, it claims nothing
    other = mesh.explain("GET", "http://example.com/productpage")
    assert other.virtual_service is None
    assert other.passthrough


# --------------------------------------------------------------------------- replacement


def test_later_definition_replaces_earlier_with_a_warning(bookinfo_dir: Path) -> None:
    first = bookinfo_dir / "virtual-service-reviews-test-v2.yaml"
    second = bookinfo_dir / "virtual-service-reviews-v3.yaml"
    config = load_config([first, second])
    vs = only(config, "VirtualService", "reviews")
    assert vs.file == str(second)
    (warning,) = config.warnings
    assert str(warning) == (
        f"{second}:4: warning: metadata.name: VirtualService default/reviews replaces the one "
        f"at {first}:3"
    )
    decision = Mesh(config).explain("GET", "http://reviews/", {"end-user": "jason"})
    assert decision.destination is not None
    assert decision.destination.subset == "v3"


def test_same_name_in_other_namespace_or_kind_is_kept() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: other}
spec: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
"""
    config = load_texts([("r.yaml", text)])
    assert [(r.kind, r.namespace) for r in config.resources] == [
        ("DestinationRule", "default"),
        ("DestinationRule", "other"),
        ("VirtualService", "default"),
    ]
    assert config.warnings == ()


# --------------------------------------------------------------------------- every field

RICH = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  registry:
    static:
      reviews:
        - {address: 127.0.0.1:9081, labels: {version: v1}}
        - {address: 127.0.0.1:9082, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
    - name: jason
      match:
        - name: by-user
          uri: {exact: /Reviews/0}
          ignoreUriCase: true
          scheme: {exact: http}
          method: {regex: "GET|HEAD"}
          authority: {prefix: reviews}
          headers:
            end-user: {exact: jason}
            x-canary: {}
          port: 9080
          sourceLabels: {app: productpage}
          gateways: [mesh]
          queryParams:
            debug: {exact: "1"}
          withoutHeaders:
            x-skip: {prefix: "y"}
          sourceNamespace: default
          statPrefix: jason
      route:
        - destination: {host: reviews, subset: v2, port: {number: 9080}}
          weight: 75
          headers:
            request: {set: {x-version: v2}}
        - destination: {host: reviews, subset: v1}
          weight: 25
      rewrite: {uri: /reviews, authority: reviews.internal}
      timeout: 2.5s
      retries:
        attempts: 3
        perTryTimeout: 500ms
        retryOn: gateway-error,connect-failure,503
        retryRemoteLocalities: true
        retryIgnorePreviousHosts: false
        backoff: 100ms
      mirror: {host: reviews, subset: v1}
      mirrorPercentage: {value: 12.5}
      corsPolicy:
        allowOrigins: [{exact: "https://books.example"}, {regex: "https://.*[.]example"}]
        allowMethods: [GET, POST]
        allowHeaders: [x-custom]
        exposeHeaders: [x-trace]
        maxAge: 24h
        allowCredentials: true
        unmatchedPreflights: IGNORE
      headers:
        request:
          set: {x-route: jason}
          add: {x-added: "1"}
          remove: [x-internal]
        response:
          set: {cache-control: no-store}
          remove: [server]
    - name: faulty
      match: [{uri: {prefix: /faulty}}]
      fault:
        delay:
          fixedDelay: 7s
          percentage: {value: 0.5}
        abort:
          httpStatus: 503
          percent: 10
      rewrite:
        uriRegexRewrite: {match: "^/faulty/(.*)$", rewrite: "/\\\\1"}
      mirrors:
        - destination: {host: reviews, subset: v2}
          percentage: {value: 5}
        - destination: {host: ratings}
      route:
        - destination: {host: reviews}
    - name: moved
      match: [{uri: {prefix: /old}}]
      redirect: {uri: /new, authority: reviews.example, port: 8080, scheme: https,
                 redirectCode: 308}
    - name: gone
      match: [{uri: {exact: /gone}}]
      directResponse: {status: 410, body: {string: "gone for good"}}
    - name: delegated
      match: [{uri: {prefix: /v2}}]
      delegate: {name: reviews-v2, namespace: default}
    - name: rest
      route:
        - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-v2}
spec:
  http:
    - route: [{destination: {host: reviews, subset: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 2s
        tcpKeepalive: {probes: 5, time: 7200s, interval: 75s}
        maxConnectionDuration: 1h
        idleTimeout: 1m
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxRetries: 3
        idleTimeout: 90s
        h2UpgradePolicy: DO_NOT_UPGRADE
        useClientProtocol: true
        maxConcurrentStreams: 50
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      consecutiveLocalOriginFailures: 4
      splitExternalLocalOriginErrors: true
      interval: 5s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
      minHealthPercent: 20
    tls: {mode: ISTIO_MUTUAL, sni: reviews.local}
    portLevelSettings:
      - port: {number: 9080}
        loadBalancer:
          consistentHash:
            httpHeaderName: x-user
            ringHash: {minimumRingSize: 2048}
        connectionPool:
          http: {http1MaxPendingRequests: 2}
    retryBudget:
      percent: 25
      minRetryConcurrency: 5
  subsets:
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        loadBalancer:
          consistentHash:
            httpCookie: {name: session, path: /, ttl: 0.5s}
            maglev: {tableSize: 65537}
    - name: v2
      labels: {version: v2}
      trafficPolicy:
        loadBalancer:
          consistentHash: {useSourceIp: true}
    - name: v3
      labels: {version: v3}
      trafficPolicy:
        loadBalancer:
          consistentHash: {httpQueryParameterName: user}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-external}
spec:
  hosts: [ratings.example.com]
  addresses: [10.0.0.7/32]
  ports:
    - {number: 443, protocol: HTTPS, name: https, targetPort: 8443}
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
    - address: 10.0.0.7
      ports: {https: 8443}
      labels: {version: v1}
      network: net-1
      locality: us-east1/us-east1-b
      weight: 2
      serviceAccount: ratings
"""


@pytest.fixture(scope="module")
def rich() -> MeshConfig:
    return load_texts([("rich.yaml", RICH)])


def rich_routes(rich: MeshConfig) -> list[m.HTTPRoute]:
    vs = spec_of(rich, "VirtualService", "reviews")
    assert isinstance(vs, m.VirtualService)
    assert vs.http is not None
    return vs.http


def test_rich_config_loads_without_warnings(rich: MeshConfig) -> None:
    assert rich.warnings == ()
    assert [r.kind for r in rich.resources] == [
        "Service",
        "VirtualService",
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
    ]


def test_http_match_request_keeps_every_field(rich: MeshConfig) -> None:
    route = rich_routes(rich)[0]
    assert route.name == "jason"
    assert route.match is not None
    (entry,) = route.match
    assert entry.name == "by-user"
    assert entry.uri == m.StringMatch(exact="/Reviews/0")
    assert entry.ignore_uri_case is True
    assert entry.scheme == m.StringMatch(exact="http")
    assert entry.method == m.StringMatch(regex="GET|HEAD")
    assert entry.authority == m.StringMatch(prefix="reviews")
    assert entry.headers == {"end-user": m.StringMatch(exact="jason"), "x-canary": m.StringMatch()}
    assert entry.port == 9080
    assert entry.source_labels == {"app": "productpage"}
    assert entry.gateways == ["mesh"]
    assert entry.query_params == {"debug": m.StringMatch(exact="1")}
    assert entry.without_headers == {"x-skip": m.StringMatch(prefix="y")}
    assert entry.source_namespace == "default"
    assert entry.stat_prefix == "jason"


def test_http_route_keeps_destinations_rewrite_timeout_retries(rich: MeshConfig) -> None:
    route = rich_routes(rich)[0]
    assert route.route is not None
    first, second = route.route
    assert first.destination == m.Destination(
        host="reviews", subset="v2", port=m.PortSelector(number=9080)
    )
    assert (first.weight, second.weight) == (75, 25)
    assert first.headers is not None
    assert first.headers.request == m.HeaderOperations(set={"x-version": "v2"})
    assert route.rewrite == m.HTTPRewrite(uri="/reviews", authority="reviews.internal")
    assert isinstance(route.timeout, float)
    assert route.timeout == 2.5
    retries = route.retries
    assert retries is not None
    assert retries.attempts == 3
    assert isinstance(retries.per_try_timeout, float)
    assert retries.per_try_timeout == pytest.approx(0.5)
    assert retries.retry_on == "gateway-error,connect-failure,503"
    assert retries.retry_remote_localities is True
    assert retries.retry_ignore_previous_hosts is False
    assert retries.backoff == pytest.approx(0.1)


def test_http_route_keeps_mirror_cors_and_headers(rich: MeshConfig) -> None:
    route = rich_routes(rich)[0]
    assert route.mirror == m.Destination(host="reviews", subset="v1")
    assert route.mirror_percentage == m.Percent(value=12.5)
    cors = route.cors_policy
    assert cors is not None
    assert cors.allow_origins == [
        m.StringMatch(exact="https://books.example"),
        m.StringMatch(regex="https://.*[.]example"),
    ]
    assert cors.allow_methods == ["GET", "POST"]
    assert cors.allow_headers == ["x-custom"]
    assert cors.expose_headers == ["x-trace"]
    assert cors.max_age == 86400.0
    assert cors.allow_credentials is True
    assert cors.unmatched_preflights == "IGNORE"
    assert route.headers == m.Headers(
        request=m.HeaderOperations(
            set={"x-route": "jason"}, add={"x-added": "1"}, remove=["x-internal"]
        ),
        response=m.HeaderOperations(set={"cache-control": "no-store"}, remove=["server"]),
    )


def test_fault_regex_rewrite_and_mirrors(rich: MeshConfig) -> None:
    route = rich_routes(rich)[1]
    fault = route.fault
    assert fault is not None
    assert fault.delay is not None
    assert fault.delay.fixed_delay == 7.0
    assert isinstance(fault.delay.fixed_delay, float)
    assert fault.delay.percentage == m.Percent(value=0.5)
    assert fault.abort is not None
    assert fault.abort.http_status == 503
    assert fault.abort.percent == 10
    assert fault.abort.percentage is None
    assert route.rewrite is not None
    assert route.rewrite.uri_regex_rewrite == m.RegexRewrite(match="^/faulty/(.*)$", rewrite="/\\1")
    assert route.mirrors == [
        m.HTTPMirrorPolicy(
            destination=m.Destination(host="reviews", subset="v2"),
            percentage=m.Percent(value=5.0),
        ),
        m.HTTPMirrorPolicy(destination=m.Destination(host="ratings")),
    ]


def test_redirect_direct_response_and_delegate(rich: MeshConfig) -> None:
    routes = rich_routes(rich)
    assert routes[2].redirect == m.HTTPRedirect(
        uri="/new", authority="reviews.example", port=8080, scheme="https", redirect_code=308
    )
    assert routes[2].route is None
    assert routes[3].direct_response == m.HTTPDirectResponse(
        status=410, body=m.HTTPBody(string="gone for good")
    )
    assert routes[4].delegate == m.Delegate(name="reviews-v2", namespace="default")
    delegate = spec_of(rich, "VirtualService", "reviews-v2")
    assert isinstance(delegate, m.VirtualService)
    assert delegate.hosts is None


def test_destination_rule_traffic_policy(rich: MeshConfig) -> None:
    rule = spec_of(rich, "DestinationRule", "reviews")
    assert isinstance(rule, m.DestinationRule)
    policy = rule.traffic_policy
    assert policy is not None
    assert policy.load_balancer == m.LoadBalancerSettings(simple="ROUND_ROBIN")
    assert policy.connection_pool is not None
    tcp = policy.connection_pool.tcp
    assert tcp is not None
    assert tcp.model_dump(exclude_none=True) == {
        "max_connections": 100,
        "connect_timeout": 2.0,
        "tcp_keepalive": {"probes": 5, "time": 7200.0, "interval": 75.0},
        "max_connection_duration": 3600.0,
        "idle_timeout": 60.0,
    }
    assert isinstance(tcp.connect_timeout, float)
    assert policy.connection_pool.http is not None
    assert policy.connection_pool.http.model_dump(exclude_none=True) == {
        "http1_max_pending_requests": 1,
        "http2_max_requests": 1000,
        "max_requests_per_connection": 10,
        "max_retries": 3,
        "idle_timeout": 90.0,
        "h2_upgrade_policy": "DO_NOT_UPGRADE",
        "use_client_protocol": True,
        "max_concurrent_streams": 50,
    }
    assert policy.outlier_detection is not None
    assert policy.outlier_detection.model_dump(exclude_none=True) == {
        "consecutive_5xx_errors": 7,
        "consecutive_gateway_errors": 3,
        "consecutive_local_origin_failures": 4,
        "split_external_local_origin_errors": True,
        "interval": 5.0,
        "base_ejection_time": 180.0,
        "max_ejection_percent": 100,
        "min_health_percent": 20,
    }
    assert policy.tls == m.ClientTLSSettings(mode="ISTIO_MUTUAL", sni="reviews.local")
    assert policy.retry_budget == m.RetryBudget(percent=25.0, min_retry_concurrency=5)
    (level,) = policy.port_level_settings or []
    assert level.port == m.PortSelector(number=9080)
    assert level.load_balancer is not None
    assert level.load_balancer.consistent_hash == m.ConsistentHashLB(
        http_header_name="x-user", ring_hash=m.RingHash(minimum_ring_size=2048)
    )
    assert level.connection_pool == m.ConnectionPoolSettings(
        http=m.HTTPSettings(http1_max_pending_requests=2)
    )


def test_destination_rule_subsets_and_their_policies(rich: MeshConfig) -> None:
    rule = spec_of(rich, "DestinationRule", "reviews")
    assert isinstance(rule, m.DestinationRule)
    subsets = {s.name: s for s in rule.subsets or []}
    assert list(subsets) == ["v1", "v2", "v3"]
    assert subsets["v1"].labels == {"version": "v1"}
    hashes = {}
    for name, subset in subsets.items():
        assert subset.traffic_policy is not None
        assert subset.traffic_policy.load_balancer is not None
        hashes[name] = subset.traffic_policy.load_balancer.consistent_hash
    assert hashes["v1"] is not None
    assert hashes["v1"].model_dump(exclude_none=True) == {
        "http_cookie": {"name": "session", "path": "/", "ttl": 0.5},
        "maglev": {"table_size": 65537},
    }
    assert hashes["v2"] == m.ConsistentHashLB(use_source_ip=True)
    assert hashes["v3"] == m.ConsistentHashLB(http_query_parameter_name="user")


def test_subset_policy_reaches_the_routing_decision(rich: MeshConfig) -> None:
    decision = Mesh(rich).explain("GET", "http://reviews/rest")
    assert decision.route_name == "rest"
    policy = decision.traffic_policy
    assert policy is not None
    # the subset's loadBalancer replaces the rule's; the rest is inherited from the rule
    assert policy.load_balancer is not None
    assert policy.load_balancer.consistent_hash is not None
    assert policy.load_balancer.consistent_hash.http_cookie is not None
    assert policy.tls == m.ClientTLSSettings(mode="ISTIO_MUTUAL", sni="reviews.local")


def test_service_entry_with_endpoints(rich: MeshConfig) -> None:
    entry = spec_of(rich, "ServiceEntry", "ratings-external")
    assert entry == m.ServiceEntry(
        hosts=["ratings.example.com"],
        addresses=["10.0.0.7/32"],
        ports=[m.ServicePort(number=443, protocol="HTTPS", name="https", target_port=8443)],
        location="MESH_EXTERNAL",
        resolution="STATIC",
        endpoints=[
            m.WorkloadEntry(
                address="10.0.0.7",
                ports={"https": 8443},
                labels={"version": "v1"},
                network="net-1",
                locality="us-east1/us-east1-b",
                weight=2,
                service_account="ratings",
            )
        ],
    )


def test_model_is_frozen(rich: MeshConfig) -> None:
    route = rich_routes(rich)[0]
    with pytest.raises(ValueError, match="frozen"):
        route.timeout = 1.0  # type: ignore[misc]
