"""``GET /_mesh/config``: the digest of the config in force, its files and resources, and the
watcher's state; ``GET /_mesh/traces``: the spans the mesh made last — through the ASGI and the
WSGI middleware; every other request passes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshlib import Mesh
from meshlib.config.digest import config_digest
from meshlib.config.load import load_config
from meshlib.server import MeshAdmin, MeshMiddleware, MeshWSGIAdmin, MeshWSGIMiddleware
from meshlib.telemetry.tracing import MeshTracer
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

WriteYaml = Callable[[str, str], Path]

CONFIG = """
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
"""


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"the app"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"the app"]


@pytest.fixture
def config_file(write_yaml: WriteYaml) -> Path:
    return write_yaml("mesh.yaml", CONFIG)


@pytest.fixture(params=["asgi", "wsgi"])
def call(request: pytest.FixtureRequest) -> Callable[[Mesh, str, str], httpx.Response]:
    """``call(mesh, method, path)`` through one kind of admin middleware."""

    def sync_call(mesh: Mesh, method: str, path: str) -> httpx.Response:
        transport = httpx.WSGITransport(app=MeshWSGIAdmin(wsgi_app, mesh))
        with httpx.Client(transport=transport, base_url="http://svc") as http:
            return http.request(method, path)

    def async_call(mesh: Mesh, method: str, path: str) -> httpx.Response:

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=MeshAdmin(asgi_app, mesh))
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
                return await http.request(method, path)

        return asyncio.run(go())

    return async_call if request.param == "asgi" else sync_call


def test_the_config_in_force(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    response = call(mesh, "GET", "/_mesh/config")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["service"] == "reviews"
    assert body["version"] == "v2"
    assert body["digest"] == config_digest(load_config([config_file]))
    assert body["files"] == [config_file.name]  # no absolute path is shown
    assert [(r["kind"], r["name"], r["line"]) for r in body["resources"]] == [
        ("Service", "reviews", 1),
        ("VirtualService", "ratings", 7),
    ]
    assert body["watch"] is None
    assert body["metrics"] is None  # metrics off


def test_where_the_metrics_are_scraped(
    call: Callable[[Mesh, str, str], httpx.Response], write_yaml: WriteYaml
) -> None:
    text = CONFIG.replace("  version: v2\n", "  version: v2\n  telemetry: {metrics: {port: 0}}\n")
    mesh = Mesh.from_file(write_yaml("mesh.yaml", text))
    try:
        url = call(mesh, "GET", "/_mesh/config").json()["metrics"]
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/metrics")
        scraped = httpx.get(url)
        assert scraped.status_code == 200
        assert 'istio_build{component="proxy",tag="meshlib-' in scraped.text
    finally:
        mesh.close()


def test_the_watcher_state_once_watching(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    mesh.watch(interval=5.0)
    try:
        watch = call(mesh, "GET", "/_mesh/config").json()["watch"]
    finally:
        mesh.close()
    assert watch["running"] is True
    assert watch["interval"] == 5.0
    assert watch["reloads"] == 0
    assert watch["last_error"] is None


def test_other_requests_reach_the_app(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    assert call(mesh, "GET", "/reviews/0").text == "the app"
    assert call(mesh, "GET", "/_mesh/configs").text == "the app"
    refused = call(mesh, "POST", "/_mesh/config")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


def test_the_digest_ignores_file_names_layout_and_order(write_yaml: WriteYaml) -> None:
    documents = CONFIG.split("---\n")
    one = write_yaml("one.yaml", CONFIG)
    reordered = write_yaml("two.yaml", "\n---\n".join(reversed(documents)))
    changed = write_yaml("three.yaml", CONFIG.replace("host: ratings}", "host: ratings2}"))
    digest = config_digest(load_config([one]))
    assert config_digest(load_config([reordered])) == digest
    assert config_digest(load_config([changed])) != digest


# --------------------------------------------------------------------------- GET /_mesh/traces

TRACED = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
"""
INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def traced_service(kind: str, keep: int = 1024) -> tuple[Mesh, Any]:
    """A traced productpage whose page calls reviews (503, then 200 on the retry) and ratings
    (an injected abort), behind the admin middleware of ``kind`` (asgi, wsgi)."""
    upstreams = Upstreams(clock=FakeClock())
    upstreams.script("reviews", [Reply(503), Reply(200)])
    upstreams.endpoint("ratings")
    mesh = in_memory_mesh(TRACED, upstreams)
    tracer = MeshTracer(
        TracerProvider(), service="productpage", version="v1", clock=mesh.clock, recent_spans=keep
    )
    mesh.telemetry.set_tracer(tracer)
    if kind == "asgi":

        async def page(scope: dict[str, Any], receive: Any, send: Any) -> None:
            async with mesh.async_client() as http:
                await http.get("http://reviews/reviews/0")
                await http.get("http://ratings/ratings/0")
            await asgi_app(scope, receive, send)

        return mesh, MeshAdmin(MeshMiddleware(page, mesh), mesh)

    def wsgi_page(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with mesh.client() as http:
            http.get("http://reviews/reviews/0")
            http.get("http://ratings/ratings/0")
        return wsgi_app(environ, start_response)

    return mesh, MeshWSGIAdmin(MeshWSGIMiddleware(wsgi_page, mesh), mesh)


def request(kind: str, app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    if kind == "wsgi":
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://pp") as http:
            return http.request(method, path, **kwargs)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pp") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_spans_of_a_request_with_a_retry_and_a_fault(kind: str) -> None:
    mesh, app = traced_service(kind)
    assert request(kind, app, "GET", "/productpage", headers={"traceparent": INCOMING}).text == (
        "the app"
    )
    response = request(kind, app, "GET", "/_mesh/traces?limit=10")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["tracing"] is True
    spans = body["spans"]
    # in the order they ended: the two attempts to reviews, then the SERVER span
    assert [(s["kind"], s["status"]) for s in spans] == [
        ("CLIENT", "ERROR"),
        ("CLIENT", "UNSET"),
        ("SERVER", "UNSET"),
    ]
    failed, retried, server = spans
    trace_id = INCOMING.split("-")[1]
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert server["parent_span_id"] == INCOMING.split("-")[2]
    assert failed["parent_span_id"] == retried["parent_span_id"] == server["span_id"]
    assert all(len(s["span_id"]) == 16 and int(s["span_id"], 16) for s in spans)
    assert (server["name"], server["service"], server["version"]) == ("GET", "productpage", "v1")
    assert failed["attributes"]["http.response.status_code"] == 503
    assert retried["attributes"]["http.request.resend_count"] == 1
    for span in spans:
        assert 0 < span["start_unix_nano"] <= span["end_unix_nano"]
    # the mesh's own doings are events of the SERVER span: the retry, and the injected abort
    events = {e["name"]: e for e in server["events"]}
    assert set(events) == {"meshlib.retry", "meshlib.fault"}
    retry, fault = events["meshlib.retry"], events["meshlib.fault"]
    assert retry["attributes"]["meshlib.retry.attempt"] == 1
    assert retry["attributes"]["meshlib.destination"] == "reviews.default.svc.cluster.local"
    assert fault["attributes"]["meshlib.fault"] == "abort"
    assert fault["attributes"]["meshlib.fault.abort.http_status"] == 500
    assert fault["attributes"]["url.full"] == "http://ratings/ratings/0"
    assert server["start_unix_nano"] <= retry["time_unix_nano"] <= fault["time_unix_nano"]
    json.dumps(body, allow_nan=False)  # strict JSON
    mesh.close()


def test_limit_and_trace_id_select_the_most_recent(kind: str) -> None:
    mesh, app = traced_service(kind, keep=4)
    ids = [f"{n:032x}" for n in range(1, 4)]
    for trace_id in ids:
        request(kind, app, "GET", "/", headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"})
    everything = request(kind, app, "GET", "/_mesh/traces?limit=100").json()
    assert everything["keeps"] == 4
    assert len(everything["spans"]) == 4  # the ring keeps the last four spans only
    assert everything["spans"][-1]["trace_id"] == ids[-1]  # most recent last
    last = request(kind, app, "GET", "/_mesh/traces?limit=1").json()["spans"]
    assert last == everything["spans"][-1:]
    one = request(kind, app, "GET", f"/_mesh/traces?trace_id={ids[1].upper()}").json()["spans"]
    assert {s["trace_id"] for s in one} == {ids[1]}
    assert request(kind, app, "GET", "/_mesh/traces?limit=0").json()["spans"] == []
    mesh.close()


@pytest.mark.parametrize(
    "query",
    [
        "limit=-1",
        "limit=x",
        "limit=100001",
        "limit=1e3",
        "limit=%D9%A3",
        "trace_id=xyz",
        "trace_id=",
    ],
)
def test_a_bad_query_is_a_400(kind: str, query: str) -> None:
    _, app = traced_service(kind)
    response = request(kind, app, "GET", f"/_mesh/traces?{query}")
    assert response.status_code == 400
    assert "must be" in response.json()["error"]


def test_without_tracing_there_are_no_spans(
    call: Callable[[Mesh, str, str], httpx.Response], config_file: Path
) -> None:
    mesh = Mesh.from_file(config_file)
    assert call(mesh, "GET", "/_mesh/traces").json() == {"tracing": False, "keeps": 0, "spans": []}
    assert call(mesh, "GET", "/_mesh/config").json()["tracing"] is False
    assert call(mesh, "POST", "/_mesh/traces").status_code == 405


# --------------------------------------------------------------------------- clusters, metrics

WATCHED = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  circuitBreakers: {failureThreshold: 2, resetTimeout: 30s}
  telemetry:
    metrics: {}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s,
                       maxEjectionPercent: 100}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}], retries: {attempts: 0}}]
"""


def test_the_clusters_breakers_and_ejected_endpoints(
    call: Callable[[Mesh, str, str], httpx.Response],
) -> None:
    clock = FakeClock()
    upstreams = Upstreams(clock=clock)
    bad = upstreams.script("reviews", [Reply(500)], subset="v1")
    good = upstreams.endpoint("reviews", "v1", index=1)
    upstreams.endpoint("details", "v1")
    mesh = in_memory_mesh(WATCHED, upstreams, clock=clock)
    with mesh.client() as client:
        assert call(mesh, "GET", "/_mesh/clusters").json()["clusters"] == []  # nothing called yet
        statuses = [client.get("http://reviews:9080/reviews/0").status_code for _ in range(3)]
        client.get("http://details:9080/details/0")
    assert sorted(statuses) == [200, 200, 500]
    clock.advance(10)

    response = call(mesh, "GET", "/_mesh/clusters")

    assert response.status_code == 200
    body = response.json()
    assert (body["service"], body["version"], body["workload"]) == (
        "productpage",
        "v1",
        "productpage-v1",
    )
    reviews, details = sorted(body["clusters"], key=lambda c: c["host"], reverse=True)
    assert (reviews["name"], reviews["subset"]) == ("reviews.default.svc.cluster.local|v1", "v1")
    assert reviews["breaker"] == {"state": "closed", "failures": 0}  # a 500, then successes
    assert reviews["outlier_detection"] is True
    endpoints = {e["address"]: e for e in reviews["endpoints"]}
    assert endpoints[bad.address] == {
        "address": bad.address,
        "labels": {"version": "v1"},
        "ejected": True,
        "ejections": 1,
        "ejected_for": 20.0,  # 30 s, 10 s of which have passed
    }
    assert endpoints[good.address]["ejected"] is False
    assert details["name"] == "details.default.svc.cluster.local"
    assert details["outlier_detection"] is False
    assert details["breaker"] == {"state": "closed", "failures": 0}
    mesh.close()


def test_the_metrics_through_the_admin_endpoint(
    call: Callable[[Mesh, str, str], httpx.Response], write_yaml: WriteYaml
) -> None:
    upstreams = Upstreams(clock=FakeClock())
    upstreams.endpoint("reviews", "v1")
    mesh = in_memory_mesh(WATCHED, upstreams)
    with mesh.client() as client:
        client.get("http://reviews:9080/reviews/0")

    response = call(mesh, "GET", "/_mesh/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "istio_requests_total{" in response.text
    assert "meshlib_route_requests_total{" in response.text
    mesh.close()
    off = Mesh.from_file(write_yaml("off.yaml", CONFIG))
    refused = call(off, "GET", "/_mesh/metrics")
    assert refused.status_code == 404
    assert refused.json() == {"error": "metrics are off (spec.telemetry.metrics)"}


def test_openmetrics_when_asked() -> None:
    upstreams = Upstreams(clock=FakeClock())
    mesh = in_memory_mesh(WATCHED, upstreams)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=MeshAdmin(asgi_app, mesh))
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
            return await http.get(
                "/_mesh/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
            )

    response = asyncio.run(go())
    mesh.close()
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.parametrize("path", ["/_mesh/config", "/_mesh/clusters", "/_mesh/metrics"])
def test_every_admin_path_needs_the_token_when_there_is_one(
    call: Callable[[Mesh, str, str], httpx.Response], path: str
) -> None:
    token = WATCHED.replace(
        "  version: v1\n", "  version: v1\n  admin: {token: a-token-of-16-chars}\n"
    )
    mesh = in_memory_mesh(token, Upstreams(clock=FakeClock()))

    refused = call(mesh, "GET", path)
    assert refused.status_code == 401
    assert "istio_requests_total" not in refused.text
    admitted = call_with(mesh, path, {"authorization": "Bearer a-token-of-16-chars"})
    assert admitted.status_code == 200
    mesh.close()


def call_with(mesh: Mesh, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.WSGITransport(app=MeshWSGIAdmin(wsgi_app, mesh))
    with httpx.Client(transport=transport, base_url="http://svc") as http:
        return http.get(path, headers=headers)
