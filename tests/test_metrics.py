"""Metrics: Istio's names and labels, meshlib's own metrics, and the ways to scrape them.

Every client scenario runs through a stock ``httpx.Client`` and a stock ``httpx.AsyncClient``
(the ``send`` fixture), on in-memory meshes with a fake clock: no sleeps, no network — but for
the scrape server, which listens on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshlib import CircuitOpenError, Mesh, MeshRequestError
from meshlib.telemetry import InboundFinished, metrics
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

REVIEWS = "http://reviews:9080/reviews/0"

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  telemetry:
    metrics: {}
"""

SUBSETS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

JASON_TO_V2 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""


def docs(*texts: str, service: str = SERVICE) -> str:
    return "\n---\n".join([service, *texts])


def vs(http: str) -> str:
    """A VirtualService for reviews whose ``http`` list is ``http`` (YAML, indented 2)."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )


def dr(body: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: reviews}}\nspec:\n  host: reviews\n{body}"
    )


Send = Callable[..., httpx.Response]


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams(clock=FakeClock())


@pytest.fixture
def meshes() -> Iterator[Callable[[str, Upstreams], Mesh]]:
    """``build(yaml, upstreams)``: an in-memory mesh, closed after the test."""
    made: list[Mesh] = []

    def build(text: str, upstreams: Upstreams) -> Mesh:
        mesh = in_memory_mesh(text, upstreams, seed=3)
        made.append(mesh)
        return mesh

    yield build
    for mesh in made:
        mesh.close()


def samples(mesh: Mesh, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in a scrape of ``mesh``, parsed by prometheus_client."""
    _, body = metrics.scrape(mesh)
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    ]


def requests_by(mesh: Mesh, *keys: str) -> dict[tuple[str, ...], float]:
    """``istio_requests_total`` summed by ``keys``, as ``sum by (keys)`` would."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in samples(mesh, "istio_requests_total"):
        key = tuple(labels[k] for k in keys)
        out[key] = out.get(key, 0) + value
    return out


# --------------------------------------------------------------------------- Istio's labels


def test_source_reported_calls_carry_istios_labels_exactly(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    upstreams.endpoint("reviews", "v1")
    upstreams.endpoint("reviews", "v2")
    mesh = meshes(docs(SUBSETS, JASON_TO_V2), upstreams)

    for _ in range(3):
        send(mesh, "GET", REVIEWS, headers={"end-user": "jason"})
    for _ in range(2):
        send(mesh, "GET", REVIEWS)

    found = {
        labels["destination_version"]: (labels, value)
        for labels, value in samples(mesh, "istio_requests_total")
    }
    assert sorted(found) == ["v1", "v2"]
    labels, value = found["v2"]
    assert value == 3
    assert labels == {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "source_workload_namespace": "default",
        "source_principal": "unknown",
        "source_app": "productpage",
        "source_version": "v1",
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_cluster": "unknown",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "default",
        "destination_principal": "unknown",
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_cluster": "unknown",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
        "connection_security_policy": "unknown",
    }
    assert found["v1"][1] == 2
    assert set(metrics.LABELS) == set(labels)


def test_endpoint_labels_name_the_destination_workload_as_the_pod_labels_do(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    """Without a subset route the version comes from the endpoint that answered (as Istio reads
    it from the pod); ``app`` and ``version`` make the workload name."""
    upstreams.endpoint("reviews", labels={"app": "reviews", "version": "v3"})
    mesh = meshes(docs(), upstreams)

    send(mesh, "GET", REVIEWS)

    [(labels, value)] = samples(mesh, "istio_requests_total")
    assert value == 1
    assert labels["destination_version"] == "v3"
    assert labels["destination_app"] == "reviews"
    assert labels["destination_workload"] == "reviews-v3"


def test_a_service_without_a_version_and_a_host_outside_the_mesh(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    service = SERVICE.replace("  version: v1\n", "")
    mesh = meshes(docs(service=service), upstreams)

    assert send(mesh, "GET", "http://outside.example/x").status_code == 200  # passed through

    [(labels, _)] = samples(mesh, "istio_requests_total")
    assert labels["source_workload"] == "productpage"
    assert labels["source_version"] == "unknown"
    assert labels["source_canonical_revision"] == "latest"
    assert labels["destination_service"] == "outside.example"
    assert labels["destination_service_name"] == "PassthroughCluster"
    assert labels["destination_version"] == "unknown"


# --------------------------------------------------------------------------- response flags


def test_retries_spent_on_503_are_urx(send: Send, upstreams: Upstreams, meshes: Any) -> None:
    upstreams.script("reviews", [Reply(503)] * 3)
    mesh = meshes(docs(), upstreams)

    assert send(mesh, "GET", REVIEWS).status_code == 503

    assert requests_by(mesh, "response_code", "response_flags") == {("503", "URX"): 1}
    assert requests_by(mesh, "destination_service") == {("reviews.default.svc.cluster.local",): 1}
    [(labels, value)] = samples(mesh, "meshlib_retries_total")
    assert value == 2
    assert labels == {
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_subset": "",
    }


def test_connect_failures_after_retries_are_503_uf_urx(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    upstreams.script("reviews", [Reply(error=httpx.ConnectError)] * 3)
    mesh = meshes(docs(), upstreams)

    with pytest.raises(MeshRequestError):
        send(mesh, "GET", REVIEWS)

    assert requests_by(mesh, "response_code", "response_flags") == {("503", "UF,URX"): 1}


def test_injected_abort_is_fi_and_counted_as_a_fault(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    route = (
        "  - fault: {abort: {httpStatus: 500, percentage: {value: 100}}, "
        "delay: {fixedDelay: 2s, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    mesh = meshes(docs(vs(route)), upstreams)

    assert send(mesh, "GET", REVIEWS).status_code == 500

    assert requests_by(mesh, "response_code", "response_flags") == {("500", "DI,FI"): 1}
    faults = {
        labels["fault"]: value for labels, value in samples(mesh, "meshlib_faults_injected_total")
    }
    assert faults == {"delay": 1, "abort": 1}
    [(labels, duration)] = samples(mesh, "istio_request_duration_milliseconds_sum")
    assert (labels["response_flags"], duration) == ("DI,FI", 2000)  # the injected delay


def test_an_open_breaker_is_503_uo_and_the_gauge_follows_it(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    upstreams.script("reviews", [Reply(500)] * 2)
    service = SERVICE + "  circuitBreakers: {failureThreshold: 2, resetTimeout: 30s}\n"
    mesh = meshes(
        docs(
            vs("  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 0}\n"),
            service=service,
        ),
        upstreams,
    )

    assert samples(mesh, "meshlib_breaker_state") == []  # no breaker until the first call
    assert send(mesh, "GET", REVIEWS).status_code == 500
    gauge = {
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_subset": "",
    }
    assert samples(mesh, "meshlib_breaker_state") == [(gauge, 0)]  # created closed
    assert send(mesh, "GET", REVIEWS).status_code == 500
    assert samples(mesh, "meshlib_breaker_state") == [(gauge, 1)]  # open
    with pytest.raises(CircuitOpenError):
        send(mesh, "GET", REVIEWS)

    assert requests_by(mesh, "response_code", "response_flags") == {
        ("500", "-"): 2,
        ("503", "UO"): 1,
    }
    upstreams.clock.advance(30)  # type: ignore[union-attr]
    assert send(mesh, "GET", REVIEWS).status_code == 200
    assert samples(mesh, "meshlib_breaker_state") == [(gauge, 0)]  # half-open, then closed


def test_no_route_is_404_nr(send: Send, upstreams: Upstreams, meshes: Any) -> None:
    route = "  - match: [{uri: {prefix: /ratings}}]\n    route: [{destination: {host: reviews}}]\n"
    mesh = meshes(docs(vs(route)), upstreams)

    assert send(mesh, "GET", REVIEWS).status_code == 404

    assert requests_by(mesh, "response_code", "response_flags") == {("404", "NR"): 1}


# --------------------------------------------------------------------------- meshlib's own


def test_retry_budget_exhausted_is_counted(send: Send, upstreams: Upstreams, meshes: Any) -> None:
    upstreams.script("reviews", [Reply(503)] * 3)
    rule = dr("  trafficPolicy: {retryBudget: {percent: 0, minRetryConcurrency: 0}}\n")
    mesh = meshes(docs(rule), upstreams)

    response = send(mesh, "GET", REVIEWS)

    assert response.status_code == 503
    assert response.headers["x-mesh-response-flags"] == "UO"
    [(labels, value)] = samples(mesh, "meshlib_retry_budget_exhausted_total")
    assert (labels["destination_service"], value) == ("reviews.default.svc.cluster.local", 1)
    assert samples(mesh, "meshlib_retries_total") == []
    assert requests_by(mesh, "response_code", "response_flags") == {("503", "UO"): 1}


def test_outlier_ejections_are_counted_per_endpoint(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    bad = upstreams.script("reviews", [Reply(500)] * 10)
    upstreams.endpoint("reviews", index=1)
    rule = dr(
        "  trafficPolicy:\n"
        "    loadBalancer: {simple: ROUND_ROBIN}\n"
        "    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s,"
        " maxEjectionPercent: 100}\n"
    )
    mesh = meshes(docs(rule), upstreams)

    for _ in range(4):
        send(mesh, "GET", REVIEWS)

    assert samples(mesh, "meshlib_outlier_ejections_total") == [
        (
            {
                "destination_service": "reviews.default.svc.cluster.local",
                "destination_subset": "",
                "endpoint": bad.address,
            },
            1,
        )
    ]


# --------------------------------------------------------------------------- histograms


def test_histograms_use_istios_names_buckets_and_units(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    upstreams.script("reviews", [Reply(200, body=b"x" * 300, delay=0.03)])
    mesh = meshes(docs(), upstreams)

    send(mesh, "POST", REVIEWS, content=b"y" * 20)

    buckets = {
        labels["le"]: value
        for labels, value in samples(mesh, "istio_request_duration_milliseconds_bucket")
    }
    assert list(buckets) == [*(str(b) for b in metrics.BUCKETS), "+Inf"]
    assert (buckets["25"], buckets["50"], buckets["+Inf"]) == (0, 1, 1)
    assert samples(mesh, "istio_request_duration_milliseconds_sum")[0][1] == pytest.approx(30)
    assert samples(mesh, "istio_request_duration_milliseconds_count")[0][1] == 1
    assert samples(mesh, "istio_request_bytes_sum")[0][1] == 20
    assert samples(mesh, "istio_response_bytes_sum")[0][1] == 300
    sent = {labels["le"]: value for labels, value in samples(mesh, "istio_request_bytes_bucket")}
    assert (sent["10"], sent["25"]) == (0, 1)


def test_the_scrape_has_istios_metric_names_and_types(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    mesh = meshes(docs(), upstreams)
    send(mesh, "GET", REVIEWS)

    content_type, body = metrics.scrape(mesh)
    text = body.decode()

    assert content_type.startswith("text/plain; version=0.0.4")
    for line in (
        "# TYPE istio_requests_total counter",
        "# TYPE istio_request_duration_milliseconds histogram",
        "# TYPE istio_request_bytes histogram",
        "# TYPE istio_response_bytes histogram",
    ):
        assert line in text
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_request_duration_milliseconds_sum",
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_bucket",
        "istio_response_bytes_bucket",
    } <= names
    assert not any(n.startswith(("otel_", "target_info")) for n in names)
    assert "otel_scope" not in text

    content_type, body = metrics.scrape(mesh, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert "istio_requests_total{" in body.decode()
    assert body.decode().endswith("# EOF\n")


def test_inbound_requests_are_reported_by_the_destination(
    upstreams: Upstreams, meshes: Any
) -> None:
    mesh = meshes(docs(), upstreams)

    mesh.telemetry.emit(
        InboundFinished(
            "GET", "/productpage", 200, 0.012, 0, 4000, "r-1", None, source="istio-ingressgateway"
        )
    )

    [(labels, value)] = samples(mesh, "istio_requests_total")
    assert value == 1
    assert labels["reporter"] == "destination"
    assert labels["source_workload"] == "istio-ingressgateway"
    assert labels["source_version"] == "unknown"
    assert labels["destination_workload"] == "productpage-v1"
    assert labels["destination_app"] == "productpage"
    assert labels["destination_version"] == "v1"
    assert labels["destination_service"] == "productpage.default.svc.cluster.local"
    assert labels["destination_service_name"] == "productpage"
    assert labels["connection_security_policy"] == "none"
    assert labels["response_flags"] == "-"
    assert samples(mesh, "istio_response_bytes_sum")[0][1] == 4000


# --------------------------------------------------------------------------- on, off, apart


def test_metrics_are_off_without_the_section_or_when_disabled(
    upstreams: Upstreams, meshes: Any
) -> None:
    plain = SERVICE.replace("  telemetry:\n    metrics: {}\n", "")
    disabled = SERVICE.replace("metrics: {}", "metrics: {enabled: false}")
    for service in (plain, disabled):
        mesh = meshes(docs(service=service), upstreams)
        assert metrics.recorder_of(mesh) is None
        assert not mesh.telemetry.active  # the pipeline builds no event at all
        with pytest.raises(LookupError, match="metrics are off"):
            metrics.scrape(mesh)


def test_two_meshes_in_one_process_keep_their_own_metrics(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    first = meshes(docs(), upstreams)
    second = meshes(docs(), upstreams)

    send(first, "GET", REVIEWS)
    send(first, "GET", REVIEWS)
    send(second, "GET", REVIEWS)

    assert requests_by(first, "reporter") == {("source",): 2}
    assert requests_by(second, "reporter") == {("source",): 1}


# --------------------------------------------------------------------------- scraping


def test_the_scrape_server_answers_on_its_port_and_stops_with_the_mesh(
    send: Send, upstreams: Upstreams
) -> None:
    service = SERVICE.replace("metrics: {}", "metrics: {port: 0, path: /stats/prometheus}")
    mesh = in_memory_mesh(docs(service=service), upstreams)
    recorder = metrics.recorder_of(mesh)
    assert recorder is not None
    assert recorder.port is not None
    assert recorder.port > 0
    assert recorder.url == f"http://127.0.0.1:{recorder.port}/stats/prometheus"
    send(mesh, "GET", REVIEWS)

    with httpx.Client() as client:
        scraped = client.get(recorder.url)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "istio_requests_total{" in scraped.text
        assert client.get(f"http://127.0.0.1:{recorder.port}/metrics").status_code == 404

        mesh.close()
        assert recorder.port is None
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{scraped.url.port}/stats/prometheus")
    mesh.close()  # closing twice is fine


def test_a_port_in_use_fails_the_mesh_with_a_clear_error(upstreams: Upstreams) -> None:
    first = in_memory_mesh(
        docs(service=SERVICE.replace("metrics: {}", "metrics: {port: 0}")), upstreams
    )
    try:
        port = metrics.recorder_of(first).port  # type: ignore[union-attr]
        taken = SERVICE.replace("metrics: {}", f"metrics: {{port: {port}}}")
        with pytest.raises(OSError, match=f"metrics scrape server on 127.0.0.1:{port}"):
            in_memory_mesh(docs(service=taken), upstreams)
    finally:
        first.close()


async def test_the_asgi_app_serves_the_scrape(upstreams: Upstreams, meshes: Any) -> None:
    mesh = meshes(docs(), upstreams)
    async with mesh.async_client() as client:
        await client.get(REVIEWS)
    app = metrics.metrics_app(mesh)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://app"
    ) as scraper:
        response = await scraper.get("/metrics")
        openmetrics = await scraper.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )

    assert response.status_code == 200
    assert "istio_requests_total{" in response.text
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")

    off = meshes(
        docs(service=SERVICE.replace("metrics: {}", "metrics: {enabled: false}")), upstreams
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=metrics.metrics_app(off)), base_url="http://app"
    ) as scraper:
        assert (await scraper.get("/metrics")).status_code == 404


def test_the_wsgi_app_serves_the_scrape(upstreams: Upstreams, meshes: Any) -> None:
    mesh = meshes(docs(), upstreams)
    with mesh.client() as client:
        client.get(REVIEWS)
    app = metrics.metrics_wsgi_app(mesh)

    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://app") as scraper:
        response = scraper.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "istio_requests_total{" in response.text


async def test_fastapi_mounts_the_asgi_app_as_the_docs_say(
    upstreams: Upstreams, meshes: Any
) -> None:
    fastapi = pytest.importorskip("fastapi")
    mesh = meshes(docs(), upstreams)
    async with mesh.async_client() as client:
        await client.get(REVIEWS)
    app = fastapi.FastAPI()
    app.add_route("/metrics", metrics.metrics_app(mesh))

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://app"
    ) as scraper:
        response = await scraper.get("/metrics")

    assert response.status_code == 200
    assert "istio_requests_total{" in response.text


def test_flask_mounts_the_wsgi_app_as_the_docs_say(upstreams: Upstreams, meshes: Any) -> None:
    flask = pytest.importorskip("flask")
    dispatcher = pytest.importorskip("werkzeug.middleware.dispatcher")
    mesh = meshes(docs(), upstreams)
    with mesh.client() as client:
        client.get(REVIEWS)
    app = flask.Flask(__name__)
    app.wsgi_app = dispatcher.DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/metrics": metrics.metrics_wsgi_app(mesh)}
    )

    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://app") as scraper:
        response = scraper.get("/metrics")

    assert response.status_code == 200
    assert "istio_requests_total{" in response.text


async def test_requests_served_through_the_asgi_middleware_are_reported_by_the_destination(
    upstreams: Upstreams, meshes: Any
) -> None:
    server = pytest.importorskip("meshlib.server")
    mesh = meshes(docs(), upstreams)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    wrapped = server.MeshMiddleware(app, mesh)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://productpage"
    ) as client:
        assert (await client.post("/productpage", content=b"abc")).status_code == 201

    [(labels, value)] = samples(mesh, "istio_requests_total")
    assert value == 1
    assert (labels["reporter"], labels["response_code"]) == ("destination", "201")
    assert labels["destination_workload"] == "productpage-v1"
    assert samples(mesh, "istio_response_bytes_sum")[0][1] == 5


# --------------------------------------------------------------------------- per route


def test_calls_are_counted_by_the_route_they_took(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    upstreams.endpoint("reviews", "v1")
    upstreams.endpoint("reviews", "v2")
    upstreams.script("reviews", [Reply(503)], subset="v2")
    upstreams.endpoint("details")
    named = JASON_TO_V2.replace("  - match:", "  - name: jason\n    match:")
    mesh = meshes(docs(SUBSETS, named), upstreams)

    send(mesh, "GET", REVIEWS, headers={"end-user": "jason"})  # 503, then its retry
    send(mesh, "GET", REVIEWS)
    send(mesh, "GET", "http://details:9080/details/0")  # a host without a VirtualService
    send(mesh, "GET", "http://outside.example/")  # a host outside the mesh

    counted = {
        (s["virtual_service"], s["route"], s["destination_service"], s["response_code"]): value
        for s, value in samples(mesh, "meshlib_route_requests_total")
    }
    assert counted == {
        ("default/reviews", "jason", "reviews.default.svc.cluster.local", "200"): 1,
        ("default/reviews", "http[1]", "reviews.default.svc.cluster.local", "200"): 1,
        ("", "default", "details.default.svc.cluster.local", "200"): 1,
        ("", "allow_any", "outside.example", "200"): 1,
    }
    labels = samples(mesh, "meshlib_route_requests_total")[0][0]
    assert set(labels) == set(metrics.ROUTE_LABELS)
    assert (labels["source_workload"], labels["source_workload_namespace"]) == (
        "productpage-v1",
        "default",
    )
    counts = {
        s["route"]: value
        for s, value in samples(mesh, "meshlib_route_request_duration_milliseconds_count")
    }
    assert counts == {"jason": 1, "http[1]": 1, "default": 1, "allow_any": 1}
    buckets = [s for s, _ in samples(mesh, "meshlib_route_request_duration_milliseconds_bucket")]
    assert {s["le"] for s in buckets} == {*(str(b) for b in metrics.BUCKETS), "+Inf"}
    assert "response_code" not in buckets[0]


def test_a_call_no_route_matched_is_counted_as_route_dash(
    send: Send, upstreams: Upstreams, meshes: Any
) -> None:
    only_jason = vs(
        "  - match: [{headers: {end-user: {exact: jason}}}]\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    mesh = meshes(docs(only_jason), upstreams)

    assert send(mesh, "GET", REVIEWS).status_code == 404

    [(labels, value)] = samples(mesh, "meshlib_route_requests_total")
    assert (labels["virtual_service"], labels["route"], labels["response_code"], value) == (
        "default/reviews",
        "-",
        "404",
        1,
    )
