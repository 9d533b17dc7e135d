"""The scrape's exact text: every metric family meshlib emits, against a checked-in capture.

``workload()`` drives one mesh through every kind of series meshlib reports — Istio's counter and
three histograms from both reporters (subsets, named and unnamed routes, an injected delay and
abort, retries, a host outside the mesh, the upstream's and the caller's workload metadata, a
caller with a verified identity), ``istio_build``, and each ``meshlib_*`` counter and gauge,
with label values that need escaping. Everything runs on a fake clock, so the scrape is the same
on every run.

``fixtures/metrics_exposition.prom`` and ``.openmetrics`` hold that scrape in Prometheus' text
format and in OpenMetrics, as the previous implementation (OpenTelemetry's Prometheus exporter)
wrote it. The tests compare families, types, series, label sets, values and bucket boundaries
with the parser, then the bytes. After an intended change of the exposition, rewrite the
captures with ``python -m tests.test_metrics_exposition`` and review the diff.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import meshlib
from meshlib import CircuitOpenError, Mesh
from meshlib.telemetry import (
    BreakerCreated,
    BreakerTransition,
    BudgetExhausted,
    EndpointEjected,
    InboundFinished,
    InboundHeaderRefused,
    MirrorDropped,
    RequestFinished,
    StoreHealthChanged,
    metrics,
    peer,
)
from meshlib.telemetry.peer import PeerMetadata
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = FIXTURES / "metrics_exposition.prom"
OPENMETRICS = FIXTURES / "metrics_exposition.openmetrics"
#: the same mesh's scrape before its first call (Prometheus' text format)
IDLE = FIXTURES / "metrics_exposition_idle.prom"
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0; charset=utf-8"

CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  labels: {app: productpage, topology.istio.io/cluster: east}
  circuitBreakers: {failureThreshold: 2, resetTimeout: 30s}
  telemetry:
    metrics: {}
---
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
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    fault: {delay: {fixedDelay: 1.5s, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{headers: {end-user: {exact: abort}}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 2, retryOn: 5xx}
"""

#: the upstream's workload metadata, sent back on ratings' responses
RATINGS = PeerMetadata(
    workload="ratings-v1",
    namespace="default",
    app="ratings",
    version="v1",
    service_account="bookinfo-ratings",
    canonical_service="ratings",
    canonical_revision="v1",
    cluster="west",
)
#: an inbound caller, with its verified identity
CALLER = PeerMetadata(
    workload="gateway",
    namespace="istio-system",
    app="istio-ingressgateway",
    version="1.24",
    canonical_service="istio-ingressgateway",
    canonical_revision="1.24",
    cluster="east",
)
CALLER_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway"
#: a label value that needs escaping in both formats: quote, backslash, newline, non-ASCII
HOSTILE = 'we"ird\\wl\nü'


def workload(traffic: bool = True) -> Mesh:
    """A mesh that has reported every metric family meshlib emits (close it after use); without
    ``traffic``, the same mesh before its first call."""
    clock = FakeClock()
    upstreams = Upstreams(clock=clock)
    upstreams.endpoint("reviews", "v1")
    upstreams.endpoint("reviews", "v2")
    upstreams.endpoint("details")
    metadata = {peer.PEER_METADATA: peer.encode(RATINGS)}
    upstreams.script(
        "ratings",
        [Reply(503), Reply(200, headers=metadata, body=b"{}"), Reply(500), Reply(500)],
    )
    mesh = in_memory_mesh(CONFIG, upstreams, clock=clock, seed=3)
    if not traffic:
        return mesh
    seen: list[Any] = []
    mesh.telemetry.add_listener(_Keep(seen))

    with mesh.client() as client:
        for _ in range(3):
            client.get("http://reviews:9080/reviews/0", headers={"end-user": "jason"})
        client.post("http://reviews:9080/reviews/0", content=b"x" * 700)
        client.get("http://reviews:9080/reviews/0", headers={"end-user": "abort"})
        client.get("http://details:9080/details/0")
        client.get("http://outside.example/", headers={"content-length": "0"})
        # 503, then 200 with the metadata; 500s until the breaker opens; then refused (UO)
        for _ in range(4):
            with contextlib.suppress(CircuitOpenError):
                client.get("http://ratings:9080/ratings/0")

    recorder = metrics.recorder_of(mesh)
    assert recorder is not None
    finished = next(e for e in seen if isinstance(e, RequestFinished))
    endpoint = finished.endpoint
    assert endpoint is not None
    for event in (
        BudgetExhausted(finished.request, 2),
        EndpointEjected("reviews.default.svc.cluster.local|v1", endpoint, 1),
        BreakerCreated("reviews.default.svc.cluster.local|v2", "closed"),
        BreakerTransition("reviews.default.svc.cluster.local|v2", "closed", "half-open"),
        MirrorDropped("details.default.svc.cluster.local|"),
        StoreHealthChanged("etcd://127.0.0.1:2379/mesh", True),
        StoreHealthChanged("file:registry.yaml", False),
        InboundHeaderRefused("x-request-id", "replaced"),
        InboundHeaderRefused("baggage", "dropped"),
        InboundFinished("GET", "/productpage", 200, 0.0042, 0, 5120, "r1", None, None),
        InboundFinished("GET", "/productpage", 503, 12.5, 10, 19, "r2", None, HOSTILE, flags="UO"),
        InboundFinished(
            "POST",
            "/login",
            302,
            0.25,
            64,
            0,
            "r3",
            None,
            None,
            principal=CALLER_PRINCIPAL,
            peer=CALLER,
        ),
    ):
        recorder.on_event(event)
    return mesh


class _Keep:
    def __init__(self, into: list[Any]) -> None:
        self.into = into

    def on_event(self, event: Any) -> None:
        self.into.append(event)


def exposition(accept: str | None = None, traffic: bool = True) -> str:
    """The workload's scrape, with meshlib's version made a placeholder (``istio_build``'s tag)
    and the process-wide count of refused peer metadata fixed at 3."""
    real = metrics.refused_claims
    metrics.refused_claims = lambda: 3  # type: ignore[assignment]
    mesh = workload(traffic)
    try:
        _, body = metrics.scrape(mesh, accept)
    finally:
        metrics.refused_claims = real  # type: ignore[assignment]
        mesh.close()
    return body.decode().replace(f"meshlib-{meshlib.__version__}", "meshlib-VERSION")


@pytest.fixture(autouse=True)
def _fixed_refused_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "refused_claims", lambda: 3)


def structure(families: Any) -> dict[str, Any]:
    """Each family's type, help and unit, and its samples (name, labels, value) as a set."""
    out: dict[str, Any] = {}
    for family in families:
        samples = {
            (s.name, tuple(sorted(s.labels.items())), s.value, s.timestamp) for s in family.samples
        }
        out[family.name] = (family.type, family.documentation, family.unit, samples)
    return out


@pytest.mark.parametrize(
    ("accept", "capture", "parse"),
    [
        (None, TEXT, text_string_to_metric_families),
        (OPENMETRICS_ACCEPT, OPENMETRICS, openmetrics_families),
    ],
    ids=["prometheus-text", "openmetrics"],
)
def test_the_same_families_series_labels_and_buckets_as_the_capture(
    accept: str | None, capture: Path, parse: Any
) -> None:
    now = structure(parse(exposition(accept)))
    before = structure(parse(capture.read_text(encoding="utf-8")))

    assert sorted(now) == sorted(before)
    for name, (kind, help_, unit, samples) in before.items():
        assert now[name][:3] == (kind, help_, unit), name
        missing, extra = samples - now[name][3], now[name][3] - samples
        assert (name, sorted(missing), sorted(extra)) == (name, [], [])


def test_the_capture_covers_every_family_and_every_bucket() -> None:
    """The capture is a representative workload: a family meshlib emits that it lacks would
    escape the comparison."""
    families = {f.name: f for f in text_string_to_metric_families(TEXT.read_text("utf-8"))}

    assert set(families) == {
        "istio_requests",
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
        "istio_build",
        "meshlib_retries",
        "meshlib_outlier_ejections",
        "meshlib_faults_injected",
        "meshlib_retry_budget_exhausted",
        "meshlib_mirror_dropped",
        "meshlib_inbound_headers_refused",
        "meshlib_route_requests",
        "meshlib_route_request_duration_milliseconds",
        "meshlib_peer_metadata_refused",
        "meshlib_breaker_state",
        "meshlib_store_stale",
    }
    requests = families["istio_requests"].samples
    assert {s.labels["reporter"] for s in requests} == {"source", "destination"}
    assert {s.labels["destination_cluster"] for s in requests} >= {"west"}  # upstream metadata
    assert {s.labels["source_principal"] for s in requests} >= {"spiffe://" + CALLER_PRINCIPAL}
    assert {s.labels["source_workload"] for s in requests} >= {HOSTILE}
    assert {s.labels["response_flags"] for s in requests} >= {"DI", "FI", "UO", "-"}
    for name in (
        "istio_request_duration_milliseconds",
        "meshlib_route_request_duration_milliseconds",
    ):
        bounds = {s.labels["le"] for s in families[name].samples if s.name.endswith("_bucket")}
        assert bounds == {*(str(b) for b in metrics.BUCKETS), "+Inf"}


@pytest.mark.parametrize(
    ("accept", "capture"), [(None, TEXT), (OPENMETRICS_ACCEPT, OPENMETRICS)], ids=["text", "om"]
)
def test_the_same_bytes_as_the_capture(accept: str | None, capture: Path) -> None:
    assert exposition(accept) == capture.read_text(encoding="utf-8")


def test_before_the_first_call_only_the_build_and_the_process_wide_counter() -> None:
    idle = exposition(traffic=False)

    assert idle == IDLE.read_text(encoding="utf-8")
    assert {f.name for f in text_string_to_metric_families(idle)} == {
        "istio_build",
        "meshlib_peer_metadata_refused",
    }


if __name__ == "__main__":
    FIXTURES.mkdir(exist_ok=True)
    TEXT.write_text(exposition(), encoding="utf-8")
    OPENMETRICS.write_text(exposition(OPENMETRICS_ACCEPT), encoding="utf-8")
    IDLE.write_text(exposition(traffic=False), encoding="utf-8")
    print(f"wrote {TEXT}, {OPENMETRICS} and {IDLE}", file=sys.stderr)


def test_an_apps_own_metrics_on_the_recorders_registry_follow_meshlibs() -> None:
    from prometheus_client import Counter

    mesh = workload(traffic=False)
    try:
        recorder = metrics.recorder_of(mesh)
        assert recorder is not None
        orders = Counter("shop_orders", "Orders placed", ["kind"], registry=recorder.registry)
        orders.labels(kind="gift").inc(2)

        _, body = metrics.scrape(mesh)
    finally:
        mesh.close()
    families = [f.name for f in text_string_to_metric_families(body.decode())]
    assert families[:3] == ["meshlib_peer_metadata_refused", "istio_build", "shop_orders"]
    assert 'shop_orders_total{kind="gift"} 2.0' in body.decode()


def test_the_removed_meter_provider_says_what_replaces_it() -> None:
    mesh = workload(traffic=False)
    try:
        recorder = metrics.recorder_of(mesh)
        assert recorder is not None
        with pytest.raises(AttributeError, match=r"removed: register .* on recorder\.registry"):
            recorder.meter_provider  # noqa: B018
        assert not hasattr(recorder, "meter_provider")
    finally:
        mesh.close()


def test_a_label_value_utf8_cannot_encode_does_not_break_the_scrape() -> None:
    """A lone surrogate (a registry file's JSON may hold one) would fail every later scrape."""
    mesh = workload(traffic=False)
    try:
        recorder = metrics.recorder_of(mesh)
        assert recorder is not None
        recorder.on_event(InboundFinished("GET", "/", 200, 0.1, 0, 0, "r", None, "bad\udcffx"))
        recorder.on_event(InboundFinished("GET", "/", 200, 0.1, 0, 0, "r", None, "ok"))

        _, body = metrics.scrape(mesh)
    finally:
        mesh.close()
    [family] = [
        f for f in text_string_to_metric_families(body.decode()) if f.name == "istio_requests"
    ]
    sources = sorted(s.labels["source_workload"] for s in family.samples)
    assert sources[0].startswith("bad\ufffd")
    assert sources[0].endswith("x")
    assert sources[1] == "ok"
