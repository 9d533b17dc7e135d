"""The live mesh page's model: scrapes in, the page's JSON out. Pure functions on made-up and
real scrapes (in-memory meshes with metrics on, on a fake clock): no sleeps, no network."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from meshlib import Mesh
from meshlib.dashboard import model
from meshlib.dashboard.model import (
    Scrape,
    ScrapeError,
    ServiceSnapshot,
    Target,
    build_view,
    call_trees,
    histogram_quantile,
    increases,
    keep_window,
    layout,
    parse_scrape,
    traffic_from_vectors,
    traffic_of,
)
from meshlib.telemetry import InboundFinished, metrics
from meshlib.telemetry.peer import PeerMetadata
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

# --------------------------------------------------------------------------- scrapes


def sample_line(name: str, value: float, **labels: str) -> str:
    inside = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inside}}} {value}"


EDGE = {
    "reporter": "source",
    "source_workload": "productpage-v1",
    "source_workload_namespace": "default",
    "source_app": "productpage",
    "source_version": "v1",
    "destination_workload": "reviews-v2",
    "destination_workload_namespace": "default",
    "destination_app": "reviews",
    "destination_version": "v2",
    "connection_security_policy": "unknown",
}


def requests(value: float, code: str = "200", **labels: str) -> str:
    return sample_line("istio_requests_total", value, **{**EDGE, "response_code": code, **labels})


def test_a_scrape_keeps_the_samples_the_page_reads_and_skips_the_rest() -> None:
    text = "\n".join(
        [
            "# HELP istio_requests_total Requests",
            "# TYPE istio_requests_total counter",
            requests(7),
            sample_line("istio_request_bytes_bucket", 3, le="10"),
            sample_line("istio_request_duration_milliseconds_bucket", 2, le="+Inf", **EDGE),
            sample_line("meshlib_retries_total", 4),
            'istio_requests_total{reporter="source",response_code="500"} NaN',
        ]
    )

    scrape = parse_scrape(text, at=5.0)

    assert scrape.at == 5.0
    names = sorted(name for name, _ in scrape.samples)
    assert names == ["istio_request_duration_milliseconds_bucket", "istio_requests_total"]
    [(key, value)] = [(k, v) for k, v in scrape.samples.items() if k[0] == "istio_requests_total"]
    assert value == 7
    assert dict(key[1])["destination_workload"] == "reviews-v2"


@pytest.mark.parametrize(
    "text",
    [
        'istio_requests_total{reporter="source" 1',
        'istio_requests_total{reporter="source"} one',
        "istio_requests_total{reporter=source} 1",
    ],
)
def test_a_scrape_that_is_not_prometheus_text_is_refused(text: str) -> None:
    with pytest.raises(ScrapeError, match="not Prometheus' text format"):
        parse_scrape(text, at=0.0)


def scrape(at: float, *lines: str) -> Scrape:
    return parse_scrape("\n".join(lines), at)


def test_increases_count_growth_resets_and_new_series() -> None:
    first = scrape(0, requests(10), requests(5, code="503"))
    second = scrape(10, requests(16), requests(5, code="503"))
    restarted = scrape(20, requests(3), requests(1, code="500"))  # the service restarted

    grown, span = increases([first, second, restarted])

    assert span == 20
    by_code = {dict(k[1])["response_code"]: v for k, v in grown.items()}
    # 200: +6, then a reset to 3 counts 3; 503: +0, then gone; 500: new, counted from zero
    assert by_code == {"200": 9, "503": 0, "500": 1}
    assert increases([first]) == ({}, 0.0)
    assert increases([]) == ({}, 0.0)


def test_the_window_keeps_the_scrape_before_it() -> None:
    scrapes = [Scrape(t, {}) for t in (0, 10, 20, 30, 40)]

    assert [s.at for s in keep_window(scrapes, 15)] == [20, 30, 40]
    assert [s.at for s in keep_window(scrapes, 20)] == [20, 30, 40]
    assert [s.at for s in keep_window(scrapes, 100)] == [0, 10, 20, 30, 40]
    assert keep_window([], 10) == ()


# --------------------------------------------------------------------------- quantiles


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # Prometheus' linear interpolation inside the bucket that holds the rank
        (0.5, {1: 0, 5: 2, 10: 4, math.inf: 4}, 5.0),
        (0.99, {1: 0, 5: 2, 10: 4, math.inf: 4}, 9.9),
        (0.5, {10: 4, math.inf: 4}, 5.0),  # the first bucket starts at 0
        (0.99, {1: 0, 5: 1, math.inf: 2}, 5.0),  # in +Inf: the highest finite bound
        (0.5, {1: 3, 5: 2, math.inf: 4}, pytest.approx(2 / 3)),  # non-monotonic fixed up
        (0.5, {1: 0, math.inf: 0}, None),  # nothing counted: NaN in Prometheus
        (0.5, {1: 2, 5: 2}, None),  # no +Inf bucket
        (1.5, {1: 2, math.inf: 2}, None),
    ],
)
def test_histogram_quantile_is_prometheus(
    q: float, buckets: dict[float, float], expected: Any
) -> None:
    assert histogram_quantile(q, buckets) == expected


# --------------------------------------------------------------------------- real scrapes

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  version: {version}
  telemetry:
    metrics: {{}}
"""

RATINGS_ABORT = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - name: abort-for-jason
    match: [{headers: {end-user: {exact: jason}}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: ratings, subset: v1}}]
  - route: [{destination: {host: ratings, subset: v1}}]
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


UPSTREAMS: dict[int, Upstreams] = {}


def upstreams_of(mesh: Mesh) -> Upstreams:
    return UPSTREAMS[id(mesh)]


@pytest.fixture
def bookinfo(clock: FakeClock) -> Iterator[dict[str, Mesh]]:
    """productpage and reviews v2 calling out, ratings serving: three in-memory meshes with
    metrics on, on one fake clock."""
    upstreams = Upstreams(clock=clock)
    upstreams.endpoint("reviews", "v2")
    upstreams.endpoint("details", "v1")
    upstreams.endpoint("ratings", "v1")
    meshes = {
        "productpage": in_memory_mesh(
            SERVICE.format(name="productpage", version="v1"), upstreams, seed=1, clock=clock
        ),
        "reviews": in_memory_mesh(
            SERVICE.format(name="reviews", version="v2") + RATINGS_ABORT,
            upstreams,
            seed=2,
            clock=clock,
        ),
        "ratings": in_memory_mesh(
            SERVICE.format(name="ratings", version="v1"), upstreams, seed=3, clock=clock
        ),
    }
    for mesh in meshes.values():
        UPSTREAMS[id(mesh)] = upstreams
    yield meshes
    for mesh in meshes.values():
        UPSTREAMS.pop(id(mesh))
        mesh.close()


def calls(mesh: Mesh, url: str, times: int, **kwargs: Any) -> None:
    with mesh.client() as client:
        for _ in range(times):
            client.get(url, **kwargs)


def served(mesh: Mesh, times: int, principal: str | None, caller: str) -> None:
    """``times`` requests served, as meshlib.server reports them, from ``caller``."""
    peer = PeerMetadata(workload=caller, namespace="default", app=caller.rsplit("-", 1)[0])
    for _ in range(times):
        mesh.telemetry.emit(
            InboundFinished(
                "GET",
                "/ratings/0",
                200,
                0.004,
                0,
                10,
                None,
                None,
                None,
                principal=principal,
                peer=peer,
            )
        )


def snapshot_of(
    mesh: Mesh, name: str, version: str, scrapes: list[Scrape], last_seen: float | None = 10.0
) -> ServiceSnapshot:
    return ServiceSnapshot(
        target=Target(f"https://{name}-{version}.test", name, version),
        last_seen=last_seen,
        config={"service": name, "version": version, "digest": f"digest-of-{name}"},
        clusters={
            "service": name,
            "namespace": "default",
            "version": version,
            "workload": f"{name}-{version}",
            "clusters": [],
        },
        scrapes=tuple(scrapes),
        metrics="on",
    )


def take(mesh: Mesh, at: float) -> Scrape:
    _, body = metrics.scrape(mesh)
    return parse_scrape(body.decode(), at)


def test_real_scrapes_make_edges_with_rates_errors_latency_and_mtls(
    bookinfo: dict[str, Mesh], clock: FakeClock
) -> None:
    productpage, reviews, ratings = (
        bookinfo["productpage"],
        bookinfo["reviews"],
        bookinfo["ratings"],
    )
    scrapes: dict[str, list[Scrape]] = {name: [] for name in bookinfo}

    def scrape_all(at: float) -> None:
        for name, mesh in bookinfo.items():
            scrapes[name].append(take(mesh, at))

    calls(productpage, "http://reviews:9080/reviews/0", 4)  # before the window: not counted
    scrape_all(0.0)
    clock.advance(10)
    calls(productpage, "http://reviews:9080/reviews/0", 20)
    calls(productpage, "http://details:9080/details/0", 10)
    upstreams_of(reviews).script("ratings", [Reply(200, delay=0.03)] * 6, subset="v1")
    calls(reviews, "http://ratings:9080/ratings/0", 6)
    calls(reviews, "http://ratings:9080/ratings/0", 4, headers={"end-user": "jason"})
    served(ratings, 6, "cluster.local/ns/default/sa/bookinfo-reviews", "reviews-v2")
    scrape_all(10.0)

    snapshots = [
        snapshot_of(productpage, "productpage", "v1", scrapes["productpage"]),
        snapshot_of(reviews, "reviews", "v2", scrapes["reviews"]),
        snapshot_of(ratings, "ratings", "v1", scrapes["ratings"]),
    ]
    view = build_view(
        now=10.0,
        mode="admin",
        source="3 admin endpoint(s)",
        window=30,
        snapshots=snapshots,
        traffic=traffic_of(snapshots, now=10.0, stale_after=8),
        stale_after=8,
    )

    edges = {(e["source"], e["destination"]): e for e in view["edges"]}
    assert set(edges) == {
        ("default/productpage-v1", "default/reviews-v2"),
        ("default/productpage-v1", "default/details-v1"),
        ("default/reviews-v2", "default/ratings-v1"),
    }
    to_reviews = edges[("default/productpage-v1", "default/reviews-v2")]
    assert to_reviews["rate"] == 2.0  # 20 calls in 10 s
    assert to_reviews["error_rate"] == 0.0
    assert to_reviews["status"] == "ok"
    assert to_reviews["reporter"] == "source"
    assert to_reviews["mtls"] is None  # reviews reported nothing
    assert edges[("default/productpage-v1", "default/details-v1")]["rate"] == 1.0
    to_ratings = edges[("default/reviews-v2", "default/ratings-v1")]
    assert to_ratings["rate"] == 1.0
    assert to_ratings["error_rate"] == 0.4  # jason's 4 injected aborts
    assert to_ratings["status"] == "failing"
    assert to_ratings["mtls"] == 1.0  # ratings saw every call over mutual TLS
    # 4 aborts in no time (bucket 0.5), 6 answers in 30 ms (bucket 25-50): interpolated
    assert to_ratings["p50"] == pytest.approx(25 + 25 * 1 / 6, abs=0.001)
    assert to_ratings["p99"] == pytest.approx(25 + 25 * 5.9 / 6, abs=0.001)

    routes = {
        (r["workload"], r["virtual_service"], r["route"], r["destination"].split(".")[0]): r
        for r in view["routes"]
    }
    assert set(routes) == {
        ("reviews-v2", "default/ratings", "abort-for-jason", "ratings"),
        ("reviews-v2", "default/ratings", "http[1]", "ratings"),
        ("productpage-v1", "", "default", "reviews"),  # Istio's route for a host without a VS
        ("productpage-v1", "", "default", "details"),
    }
    abort = routes[("reviews-v2", "default/ratings", "abort-for-jason", "ratings")]
    assert (abort["rate"], abort["error_rate"], abort["status"]) == (0.4, 1.0, "failing")
    rest = routes[("reviews-v2", "default/ratings", "http[1]", "ratings")]
    assert (rest["rate"], rest["error_rate"], rest["p50"]) == (0.6, 0.0, 37.5)  # mid-bucket
    assert routes[("productpage-v1", "", "default", "reviews")]["rate"] == 2.0

    nodes = {n["id"]: n for n in view["nodes"]}
    assert nodes["default/productpage-v1"]["state"] == "up"
    assert nodes["default/details-v1"]["state"] == "observed"  # known from metrics only
    assert (nodes["default/reviews-v2"]["app"], nodes["default/reviews-v2"]["version"]) == (
        "reviews",
        "v2",
    )
    services = {s["name"]: s for s in view["services"]}
    assert services["reviews"]["revision"] == "digest-of-reviews"
    assert services["reviews"]["state"] == "up"


def test_a_service_that_stops_answering_is_stale_with_its_last_numbers(
    bookinfo: dict[str, Mesh], clock: FakeClock
) -> None:
    productpage = bookinfo["productpage"]
    first = take(productpage, 0.0)
    calls(productpage, "http://reviews:9080/reviews/0", 10)
    clock.advance(5)
    second = take(productpage, 5.0)
    snapshot = snapshot_of(productpage, "productpage", "v1", [first, second], last_seen=1000.0)
    down = ServiceSnapshot(**{**_fields(snapshot), "error": "connection refused or failed"})
    never = ServiceSnapshot(
        Target("https://127.0.0.1:1", "ratings", "v1"), error="no answer in time"
    )

    view = build_view(
        now=1030.0,
        mode="admin",
        source="two",
        window=30,
        snapshots=[down, never],
        traffic=traffic_of([down, never], now=1030.0, stale_after=8),
        stale_after=8,
    )

    services = {s["name"]: s for s in view["services"]}
    assert services["productpage"]["state"] == "stale"
    assert services["productpage"]["last_seen"] == 1000.0
    assert services["productpage"]["error"] == "connection refused or failed"
    assert services["productpage"]["revision"] == "digest-of-productpage"  # its last good answer
    assert services["ratings"]["state"] == "stale"
    assert services["ratings"]["last_seen"] is None
    nodes = {n["id"]: n for n in view["nodes"]}
    assert nodes["default/productpage-v1"]["state"] == "stale"
    assert nodes["default/ratings-v1"]["state"] == "stale"  # never seen: still on the page
    [edge] = view["edges"]
    assert edge["stale"] is True
    assert edge["rate"] == 2.0  # the last known numbers


def _fields(snapshot: ServiceSnapshot) -> dict[str, Any]:
    return {name: getattr(snapshot, name) for name in snapshot.__slots__}


def test_a_service_silent_for_longer_than_stale_after_is_stale() -> None:
    snapshot = ServiceSnapshot(Target("http://a.test", "a", "v1"), last_seen=100.0)

    assert not snapshot.stale(now=105.0, after=8)
    assert snapshot.stale(now=108.5, after=8)


def test_one_scrape_shows_edges_without_a_rate_yet() -> None:
    only = scrape(0, requests(10))
    snapshot = ServiceSnapshot(Target("http://p.test", "productpage", "v1"), 0.0, scrapes=(only,))

    view = build_view(
        now=0.0,
        mode="admin",
        source="",
        window=30,
        snapshots=[snapshot],
        traffic=traffic_of([snapshot], 0.0, 8),
        stale_after=8,
    )

    [edge] = view["edges"]
    assert (edge["rate"], edge["error_rate"], edge["status"]) == (None, None, "idle")


def test_idle_edges_keep_the_mtls_seen_before() -> None:
    series = {**EDGE, "reporter": "destination", "connection_security_policy": "mutual_tls"}
    lines = (requests(4, **series),)
    snapshot = ServiceSnapshot(
        Target("http://r.test", "reviews", "v2"),
        10.0,
        scrapes=(scrape(0, *lines), scrape(10, *lines)),
    )
    traffic = traffic_of([snapshot], 10.0, 8)

    view = build_view(
        now=10.0,
        mode="admin",
        source="",
        window=30,
        snapshots=[snapshot],
        traffic=traffic,
        stale_after=8,
        mtls_seen=model.mtls_shares(model.cumulative_traffic([snapshot])),
    )

    [edge] = view["edges"]
    assert (edge["status"], edge["rate"], edge["mtls"]) == ("idle", 0.0, 1.0)
    assert edge["reporter"] == "destination"


@pytest.mark.parametrize(
    ("rate", "error_rate", "status"),
    [
        (None, None, "idle"),
        (0.0, None, "idle"),
        (2.0, 0.0, "ok"),
        (2.0, 0.001, "ok"),
        (2.0, 0.0011, "degraded"),
        (2.0, 0.199, "degraded"),
        (2.0, 0.2, "failing"),
        (2.0, 1.0, "failing"),
    ],
)
def test_edge_status_follows_kialis_thresholds(
    rate: float | None, error_rate: float | None, status: str
) -> None:
    assert model.edge_status(rate, error_rate) == status


# --------------------------------------------------------------------------- Prometheus vectors


def test_prometheus_vectors_make_the_same_edges() -> None:
    def item(value: str, **labels: str) -> dict[str, Any]:
        return {"metric": labels, "value": [1700000000.0, value]}

    base = {k: v for k, v in EDGE.items() if k != "connection_security_policy"}
    traffic = traffic_from_vectors(
        {
            model.REQUESTS: [
                item("1.5", **base, response_code="200", connection_security_policy="unknown"),
                item("0.5", **base, response_code="503", connection_security_policy="unknown"),
                item("NaN", **base, response_code="500"),  # left out
                {"metric": "not a map", "value": [0, "1"]},  # left out
                item("2", reporter="source"),  # no workloads: left out
                item(
                    "2.0",
                    **{**base, "reporter": "destination"},
                    response_code="200",
                    connection_security_policy="mutual_tls",
                ),
            ]
        },
        known=[item("1", **{**base, "destination_workload": "reviews-v3"})],
        quantiles={
            (model.REQUESTS, 0.5): [item("12.5", **base)],
            (model.REQUESTS, 0.99): [item("NaN", **base)],
        },
    )

    view = build_view(
        now=0.0,
        mode="prometheus",
        source="Prometheus at http://p",
        window=30,
        snapshots=[],
        traffic=traffic,
        stale_after=8,
    )

    edges = {e["destination"]: e for e in view["edges"]}
    v2 = edges["default/reviews-v2"]
    assert (v2["rate"], v2["error_rate"], v2["status"]) == (2.0, 0.25, "failing")
    assert (v2["p50"], v2["p99"], v2["mtls"]) == (12.5, None, 1.0)
    assert edges["default/reviews-v3"]["status"] == "idle"  # a series with no rate now
    assert {n["state"] for n in view["nodes"]} == {"observed"}


# --------------------------------------------------------------------------- text


def test_names_pass_through_as_text_and_long_ones_are_cut() -> None:
    hostile = "<script>alert(1)</script>"
    long_name = "x" * 500
    lines = (requests(1, source_workload=hostile, destination_workload=long_name),)
    snapshot = ServiceSnapshot(
        Target("http://h.test", hostile, "<b>v1</b>"),
        1.0,
        config={"service": hostile, "version": "<b>v1</b>", "digest": "d"},
        scrapes=(scrape(0, *lines),),
    )

    view = build_view(
        now=1.0,
        mode="admin",
        source="",
        window=30,
        snapshots=[snapshot],
        traffic=traffic_of([snapshot], 1.0, 8),
        stale_after=8,
    )

    assert view["services"][0]["name"] == hostile  # the page shows it as text
    assert view["services"][0]["version"] == "<b>v1</b>"
    workloads = {n["workload"] for n in view["nodes"]}
    assert hostile in workloads
    cut = [w for w in workloads if w.startswith("xxx")]
    assert cut == ["x" * (model.MAX_TEXT - 1) + "…"]


# --------------------------------------------------------------------------- traces


def span(
    trace: str, span_id: str, parent: str | None, name: str, start: int, end: int, **extra: Any
) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "service": extra.pop("service", "productpage"),
        "kind": extra.pop("kind", "SERVER"),
        "start_unix_nano": start,
        "end_unix_nano": end,
        "status": extra.pop("status", "OK"),
        "attributes": extra.pop("attributes", {}),
        "events": extra.pop("events", []),
    }


def test_call_trees_put_each_span_after_its_parent() -> None:
    spans = [
        span("t1", "c2", "root", "GET", 3_000_000, 5_000_000, kind="CLIENT"),
        span("t1", "root", None, "GET /productpage", 0, 10_000_000),
        span("t1", "c1", "root", "GET", 1_000_000, 2_000_000, kind="CLIENT"),
        span("t1", "s1", "c1", "GET /details/{id}", 1_100_000, 1_900_000, service="details"),
        span("t1", "s1", "c1", "GET /details/{id}", 1_100_000, 1_900_000, service="details"),
        span(
            "t1",
            "x",
            "c2",
            "GET",
            3_500_000,
            4_000_000,
            status="ERROR",
            attributes={"http.response.status_code": 500},
            events=[
                {"name": "meshlib.retry", "attributes": {"meshlib.retry.attempt": 1}},
                {
                    "name": "meshlib.fault",
                    "attributes": {
                        "meshlib.fault": "abort",
                        "meshlib.fault.abort.http_status": 500,
                    },
                },
                {"name": "meshlib.fault", "attributes": {"meshlib.fault.delay": "soon"}},
                "not an event",
            ],
        ),
        span("t2", "lost", "gone", "GET /ratings/0", 20_000_000, 21_000_000),  # parent not here
        {"trace_id": "t3", "span_id": "bad"},  # no times: left out
        "not a span",
    ]

    trees = call_trees(spans)  # type: ignore[arg-type]

    assert [t["trace_id"] for t in trees] == ["t2", "t1"]  # the newest first
    t1 = trees[1]
    assert [(s["span_id"], s["depth"]) for s in t1["spans"]] == [
        ("root", 0),
        ("c1", 1),
        ("s1", 2),
        ("c2", 1),
        ("x", 2),
    ]
    assert t1["span_count"] == 5  # the span reported twice counts once
    assert t1["errors"] == 1
    assert t1["duration_ms"] == 10.0
    assert (t1["root"], t1["service"]) == ("GET /productpage", "productpage")
    x = t1["spans"][-1]
    assert (x["offset_ms"], x["duration_ms"], x["status"], x["code"]) == (3.5, 0.5, "ERROR", "500")
    assert x["events"] == [  # as meshctl bookinfo trace says them, else name and attributes
        "retry after attempt 1 failed (backoff 0 ms)",
        "fault injected: abort 500",
        "meshlib.fault meshlib.fault.delay=soon",
    ]
    assert x["attributes"] == ["http.response.status_code=500"]
    assert trees[0]["spans"][0]["orphan"] is True


def test_call_trees_survive_cycles_and_keep_to_their_limits() -> None:
    cyclic = [
        span("c", "a", "b", "A", 0, 1),
        span("c", "b", "a", "B", 0, 1),
        span("c", "s", "s", "self", 0, 1),
    ]
    many = [span(f"t{i:03d}", "r", None, "GET", i, i + 1) for i in range(40)]
    wide = [span("w", "r", None, "root", 0, 10)]
    wide += [span("w", f"k{i}", "r", "GET", 1, 2) for i in range(500)]

    deep = [span("d", "s0", None, "GET", 0, 10)]
    deep += [span("d", f"s{i}", f"s{i - 1}", "GET", i, 10) for i in range(1, 3000)]

    [chain] = call_trees(deep)  # no RecursionError on a hostile chain
    assert chain["span_count"] == 3000
    assert max(s["depth"] for s in chain["spans"]) == 64
    [tree] = call_trees(cyclic)
    assert [s["span_id"] for s in tree["spans"]] == ["s"]  # a and b: no way in from a root
    assert len(call_trees(many)) == model.MAX_TRACES
    assert call_trees(many, limit=3)[0]["trace_id"] == "t039"
    assert len(call_trees(wide)[0]["spans"]) == model.MAX_SPANS


# --------------------------------------------------------------------------- layout


def test_layout_ranks_callers_left_of_callees() -> None:
    nodes = ["u/unknown", "d/productpage-v1", "d/details-v1", "d/reviews-v1", "d/ratings-v1"]
    edges = [
        ("u/unknown", "d/productpage-v1"),
        ("d/productpage-v1", "d/details-v1"),
        ("d/productpage-v1", "d/reviews-v1"),
        ("d/reviews-v1", "d/ratings-v1"),
    ]

    positions, width, height = layout(nodes, edges)

    columns = {node: x for node, (x, _) in positions.items()}
    assert columns["u/unknown"] < columns["d/productpage-v1"] < columns["d/details-v1"]
    assert columns["d/details-v1"] == columns["d/reviews-v1"] < columns["d/ratings-v1"]
    assert positions["d/details-v1"][1] < positions["d/reviews-v1"][1]  # in the given order
    assert layout(nodes, edges) == (positions, width, height)  # the same input, the same picture
    assert layout(list(reversed(nodes)), edges)[0] != positions  # the order of nodes is kept
    assert all(
        x + model.NODE_WIDTH <= width and y + model.NODE_HEIGHT <= height
        for x, y in positions.values()
    )


def test_layout_places_cycles_and_200_nodes_without_overlap() -> None:
    cycle = layout(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")])[0]
    assert cycle["a"][0] < cycle["b"][0] < cycle["c"][0]

    names = [f"default/svc-{i:03d}" for i in range(200)]
    tree = [(names[i], names[c]) for i in range(200) for c in (2 * i + 1, 2 * i + 2) if c < 200]
    positions, width, height = layout(names, tree)

    assert len(set(positions.values())) == 200
    assert max(y for _, y in positions.values()) + model.NODE_HEIGHT <= height
    assert height <= 2 * model.MARGIN + model.MAX_ROWS * model.ROW  # wrapped, not one tall column
    assert width < 20_000


def test_a_view_of_200_services_lists_every_one(clock: FakeClock) -> None:
    upstreams = Upstreams(clock=clock)
    for i in range(3):
        upstreams.endpoint(f"svc-{i}", "v1")
    snapshots = [
        ServiceSnapshot(
            Target(f"http://127.0.0.1:{10000 + i}", f"svc-{i:03d}", "v1"),
            last_seen=100.0 if i % 10 else None,
            error=None if i % 10 else "connection refused or failed",
            config={"service": f"svc-{i:03d}", "version": "v1", "digest": f"{i:064x}"},
        )
        for i in range(200)
    ]

    view = build_view(
        now=101.0,
        mode="admin",
        source="",
        window=30,
        snapshots=snapshots,
        traffic=traffic_of(snapshots, 101.0, 8),
        stale_after=8,
    )

    assert len(view["services"]) == len(view["nodes"]) == 200
    assert sum(1 for n in view["nodes"] if n["state"] == "stale") == 20
    assert view["size"]["height"] <= 2 * model.MARGIN + model.MAX_ROWS * model.ROW


def test_a_mesh_scrape_parses_with_the_route_metrics(bookinfo: dict[str, Mesh]) -> None:
    reviews = bookinfo["reviews"]
    calls(reviews, "http://ratings:9080/ratings/0", 2)

    parsed = take(reviews, 0.0)

    assert {name for name, _ in parsed.samples} == set(model.WANTED)
