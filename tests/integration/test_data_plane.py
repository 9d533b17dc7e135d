"""The data plane against real upstream processes on 127.0.0.1, through both clients.

Each test counts what really reached each process (its ``/_hits``), beside what meshlib says it
did (``response.extensions["mesh"]``). Timing asserts have a lower bound (the policy really
waited) and a generous upper one (it did not wait for the slow upstream).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from meshlib import Mesh, context
from meshlib.clients.httpx.transport import FLAGS_HEADER, MeshInfo
from meshlib.context import RequestContext
from meshlib.discovery import Endpoint
from meshlib.errors import CircuitOpenError, DeadlineExceeded
from meshlib.testing import FakeClock

from .conftest import Caller, mesh_yaml
from .upstream import Upstream

pytestmark = pytest.mark.integration

Connect = Callable[[Mesh], Caller]

DR_ALL = "destination-rule-all.yaml"
REVIEWS = "http://reviews:9080"
RATINGS = "http://ratings:9080"


def info(response: httpx.Response) -> MeshInfo:
    found = response.extensions["mesh"]
    assert isinstance(found, MeshInfo)
    return found


def subset_of(response: httpx.Response) -> str | None:
    destination = info(response).decision.destination
    assert destination is not None
    return destination.subset


# --------------------------------------------------------------------------- routing


def test_header_routing_sends_jason_to_the_v2_process_and_others_to_v1(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml(
        {"reviews": upstreams.values()},
        include=[DR_ALL, "virtual-service-reviews-test-v2.yaml"],
    )
    caller = connect(Mesh.from_yaml(config, seed=1))
    jason, others = f"{base_path}/jason", f"{base_path}/others"
    for user in ("jason", "alice", None):
        headers = {"end-user": user} if user else {}
        path = jason if user == "jason" else others
        for _ in range(5):
            response = caller.get(REVIEWS + path, headers=headers)
            expected = "v2" if user == "jason" else "v1"
            assert response.status_code == 200
            assert response.json()["version"] == expected
            assert subset_of(response) == expected
            assert info(response).endpoint == upstreams[expected].address
    assert [upstreams[v].hits(jason) for v in ("v1", "v2", "v3")] == [0, 5, 0]
    assert [upstreams[v].hits(others) for v in ("v1", "v2", "v3")] == [10, 0, 0]


def test_weighted_route_80_20_reaches_the_processes_in_proportion(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml(
        {"reviews": upstreams.values()},
        include=[DR_ALL, "virtual-service-reviews-80-20.yaml"],
    )
    caller = connect(Mesh.from_yaml(config, seed=7))
    calls = 300
    decided: Counter[str | None] = Counter()
    for _ in range(calls):
        response = caller.get(REVIEWS + base_path)
        assert response.status_code == 200
        assert response.json()["version"] == subset_of(response)
        decided[subset_of(response)] += 1
    hits = {v: upstreams[v].hits(base_path) for v in ("v1", "v2", "v3")}
    assert hits == {"v1": decided["v1"], "v2": decided["v2"], "v3": 0}
    assert sum(hits.values()) == calls
    # 20 % of 300 is 60, binomial sd ~6.9: far outside +-4.5 sd only by a broken weight.
    assert 29 <= hits["v2"] <= 91


# --------------------------------------------------------------------------- fault injection


def test_delay_fault_really_delays_and_the_route_gets_no_retries(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    docs = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      delay: {fixedDelay: 200ms, percentage: {value: 100}}
    route: [{destination: {host: ratings, subset: v1}}]
"""
    config = mesh_yaml({"ratings": upstreams.values()}, include=[DR_ALL], docs=docs)
    caller = connect(Mesh.from_yaml(config, seed=1))
    started = time.monotonic()
    response = caller.get(RATINGS + base_path)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["version"] == "v1"
    assert response.headers[FLAGS_HEADER] == "DI"
    assert 0.2 <= elapsed < 2.0
    assert upstreams["v1"].hits(base_path) == 1
    # Istio: a route with a fault gets no retries, so a 503 comes back after one try.
    failing = f"{base_path}/503"
    response = caller.get(RATINGS + failing, params={"status": "503"})
    assert response.status_code == 503
    assert info(response).attempts == 1
    assert upstreams["v1"].hits(failing) == 1


def test_abort_fault_answers_500_without_reaching_the_upstream(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml(
        {"ratings": upstreams.values()},
        include=[DR_ALL, "virtual-service-ratings-test-abort.yaml"],
    )
    caller = connect(Mesh.from_yaml(config, seed=1))
    before = {v: u.hits() for v, u in upstreams.items()}
    for _ in range(3):
        response = caller.get(RATINGS + base_path, headers={"end-user": "jason"})
        assert response.status_code == 500
        assert response.headers[FLAGS_HEADER] == "FI"
        assert info(response).attempts == 0
        assert response.content == b"fault filter abort"
        assert response.headers.get_list("content-length") == ["18"]  # said once
    # to HEAD, Envoy's local reply: the same headers, the body's length among them, no body
    head = caller.request("HEAD", RATINGS + base_path, headers={"end-user": "jason"})
    assert (head.status_code, head.content) == (500, b"")
    assert head.headers.get_list("content-length") == ["18"]
    assert {v: u.hits() for v, u in upstreams.items()} == before
    response = caller.get(RATINGS + base_path, headers={"end-user": "alice"})
    assert response.status_code == 200
    assert upstreams["v1"].hits(base_path) == 1


# --------------------------------------------------------------------------- retries and timeouts

RETRY_DOCS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  annotations: {meshlib.dev/retry-non-idempotent: "true"}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings, subset: v1}}]
    retries: {attempts: 2}
"""


def test_two_retry_attempts_make_exactly_three_tries_then_return_the_503(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml(
        {"reviews": upstreams.values(), "ratings": upstreams.values()},
        include=[DR_ALL],
        docs=RETRY_DOCS,
    )
    caller = connect(Mesh.from_yaml(config, seed=1))
    response = caller.get(REVIEWS + base_path, params={"status": "503"})
    assert response.status_code == 503
    assert response.json()["version"] == "v1"
    assert info(response).attempts == 3
    assert "URX" in response.headers[FLAGS_HEADER].split(",")
    assert upstreams["v1"].hits(base_path) == 3
    # An upstream that fails twice, then recovers: the caller sees the success.
    flaky = f"{base_path}/flaky"
    response = caller.get(REVIEWS + flaky, params={"fail": "2"})
    assert response.status_code == 200
    assert info(response).attempts == 3
    assert upstreams["v1"].hits(flaky) == 3


def test_post_is_retried_only_where_the_virtual_service_opts_in(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml(
        {"reviews": upstreams.values(), "ratings": upstreams.values()},
        include=[DR_ALL],
        docs=RETRY_DOCS,
    )
    caller = connect(Mesh.from_yaml(config, seed=1))
    plain, opted_in = f"{base_path}/plain", f"{base_path}/opted-in"
    response = caller.post(REVIEWS + plain, params={"status": "503", "echo": ""}, content=b"x")
    assert response.status_code == 503
    assert response.json()["body"] == "x"
    assert info(response).attempts == 1
    assert upstreams["v1"].hits(plain) == 1
    response = caller.post(RATINGS + opted_in, params={"status": "503", "echo": ""}, content=b"y")
    assert response.status_code == 503
    assert response.json()["body"] == "y"
    assert info(response).attempts == 3
    assert upstreams["v1"].hits(opted_in) == 3


def test_per_try_timeouts_within_the_route_timeout_raise_deadline_exceeded(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    docs = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
    timeout: 250ms
    retries:
      attempts: 3
      perTryTimeout: 100ms
      retryOn: gateway-error,connect-failure,refused-stream
"""
    config = mesh_yaml({"reviews": upstreams.values()}, include=[DR_ALL], docs=docs)
    caller = connect(Mesh.from_yaml(config, seed=1))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        caller.get(REVIEWS + base_path, params={"delay": "1"})
    elapsed = time.monotonic() - started
    # Two tries of 100 ms fit in 250 ms for sure (backoff before the first retry is < 25 ms);
    # a third one only if the backoffs leave room, cut short by the route timeout.
    assert 0.2 <= elapsed < 0.8
    assert raised.value.flag == "UT"
    assert isinstance(raised.value, caller.timeout_error)  # the client's own timeout too
    assert 2 <= upstreams["v1"].hits(base_path) <= 3


# --------------------------------------------------------------------------- endpoint failure


def test_a_killed_endpoint_is_retried_around_and_ejected(
    upstream_pair: tuple[Upstream, Upstream], connect: Connect, base_path: str
) -> None:
    dead, alive = upstream_pair
    # Bookinfo's ratings subsets and all-v1 routes, plus a DestinationRule of the operator's that
    # only adds a traffic policy: Istio merges the two (the later rule's policy is taken when the
    # first has none).
    docs = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings-resilience}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""
    config = mesh_yaml(
        {"ratings": upstream_pair}, include=[DR_ALL, "virtual-service-all-v1.yaml"], docs=docs
    )
    mesh = Mesh.from_yaml(config, seed=1)
    caller = connect(mesh)
    for _ in range(4):
        assert caller.get(RATINGS + base_path).status_code == 200
    assert dead.hits(base_path) == 2
    assert alive.hits(base_path) == 2

    dead.stop()
    attempts = []
    for _ in range(10):
        response = caller.get(RATINGS + base_path)
        assert response.status_code == 200
        assert info(response).endpoint == alive.address
        assert subset_of(response) == "v1"
        attempts.append(info(response).attempts)
    assert alive.hits(base_path) == 2 + 10
    # The first call to find the dead endpoint retried on the other; after that it is ejected.
    assert attempts[0] <= 2
    assert attempts.count(2) == 1
    target = info(response).decision.destination
    assert target is not None
    detector = mesh.cluster(target).balancer.detector
    assert detector is not None
    assert detector.is_ejected(Endpoint.parse(dead.address))
    assert not detector.is_ejected(Endpoint.parse(alive.address))
    status = {s.address: s for s in detector.snapshot()}
    assert status[dead.address].ejected
    assert status[dead.address].ejections == 1


# --------------------------------------------------------------------------- circuit breaking

CIRCUIT_BREAKING_DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""


def test_connection_pool_limits_overflow_with_503_uo_as_in_istios_task(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    mesh = Mesh.from_yaml(mesh_yaml({"httpbin": [upstreams["v1"]]}, docs=CIRCUIT_BREAKING_DR))
    caller = connect(mesh)
    url = "http://httpbin:8000" + base_path
    held = {"delay": "0.3"}

    # One caller at a time: nothing overflows; every request has a connection of its own.
    for _ in range(3):
        response = caller.get(url, params=held)
        assert response.status_code == 200
        assert response.json()["headers"]["connection"] == "close"
    assert upstreams["v1"].hits(base_path) == 3

    # Three at once: one in flight, one pending, the third overflows at once.
    results = caller.concurrently(3, "GET", url, params=held)
    statuses = sorted(r.status_code for r in results if isinstance(r, httpx.Response))
    assert len(statuses) == 3, results
    overflowed = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 503]
    assert overflowed
    assert statuses.count(200) >= 1
    for response in overflowed:
        assert response.headers[FLAGS_HEADER] == "UO"
        assert response.headers["x-envoy-overloaded"] == "true"
    assert upstreams["v1"].hits(base_path) == 3 + statuses.count(200)
    target = info(overflowed[0]).decision.destination
    assert target is not None
    pool = mesh.cluster(target).pool
    assert pool.upstream_rq_pending_overflow == len(overflowed)
    assert (pool.active, pool.pending) == (0, 0)
    # Local overflow replies are not the endpoint's fault: outlier detection ejected nothing.
    detector = mesh.cluster(target).balancer.detector
    assert detector is not None
    assert not any(s.ejected for s in detector.snapshot())


def test_breaker_opens_after_three_failures_and_closes_after_a_trial_success(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    docs = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings, subset: v1}}]
    retries: {attempts: 0}
"""
    clock = FakeClock()
    config = mesh_yaml(
        {"ratings": upstreams.values()},
        include=[DR_ALL],
        circuit_breakers={"failureThreshold": 3, "resetTimeout": "1s"},
        docs=docs,
    )
    mesh = Mesh.from_yaml(config, seed=1, clock=clock)
    caller = connect(mesh)
    failing, healthy = f"{base_path}/failing", f"{base_path}/healthy"
    v1 = upstreams["v1"]

    for _ in range(3):
        assert caller.get(RATINGS + failing, params={"status": "503"}).status_code == 503
    assert v1.hits(failing) == 3
    (breaker,) = mesh.breakers().values()

    def state() -> str:
        return breaker.state

    assert state() == "open"

    # Open: calls fail fast, whatever their path, and reach no upstream.
    for path in (failing, healthy):
        started = time.monotonic()
        with pytest.raises(CircuitOpenError) as raised:
            caller.get(RATINGS + path)
        assert time.monotonic() - started < 0.5
        assert raised.value.flag == "UO"
        assert isinstance(raised.value, caller.transport_error)  # the client's own error too
    assert (v1.hits(failing), v1.hits(healthy)) == (3, 0)

    clock.advance(0.9)  # not yet
    with pytest.raises(CircuitOpenError):
        caller.get(RATINGS + healthy)
    assert v1.hits(healthy) == 0

    clock.advance(0.2)  # past resetTimeout: one trial goes through, succeeds, closes the circuit
    assert caller.get(RATINGS + healthy).status_code == 200
    assert state() == "closed"
    for _ in range(3):
        assert caller.get(RATINGS + healthy).status_code == 200
    assert v1.hits(healthy) == 4

    # A failed trial opens it again for another resetTimeout.
    for _ in range(3):
        caller.get(RATINGS + failing, params={"status": "503"})
    assert state() == "open"
    clock.advance(1.1)
    assert caller.get(RATINGS + failing, params={"status": "503"}).status_code == 503
    assert state() == "open"
    with pytest.raises(CircuitOpenError):
        caller.get(RATINGS + healthy)
    assert v1.hits(failing) == 7


# --------------------------------------------------------------------------- local replies, edits


EDIT_DOCS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /v1api}
    headers:
      request: {set: {x-added: "yes"}, remove: [x-secret]}
      response: {set: {x-resp: done}}
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}
"""


def test_direct_response_redirect_rewrite_and_header_operations(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml({"reviews": upstreams.values()}, include=[DR_ALL], docs=EDIT_DOCS)
    caller = connect(Mesh.from_yaml(config, seed=1))
    before = upstreams["v1"].hits()

    direct = caller.get(REVIEWS + "/direct" + base_path)
    assert (direct.status_code, direct.text) == (418, "teapot")
    moved = caller.get(REVIEWS + "/old" + base_path)
    assert moved.status_code == 302
    assert moved.headers["location"] == "http://reviews:9080/new"
    assert upstreams["v1"].hits() == before  # neither reached an upstream

    response = caller.get(REVIEWS + "/api" + base_path, headers={"x-secret": "s"})
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/v1api" + base_path
    assert seen["headers"]["x-added"] == "yes"
    assert "x-secret" not in seen["headers"]
    assert response.headers["x-resp"] == "done"
    assert info(response).endpoint == upstreams["v1"].address


def test_a_mirrored_copy_reaches_the_mirror_with_a_shadow_host(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml({"reviews": upstreams.values()}, include=[DR_ALL], docs=EDIT_DOCS)
    caller = connect(Mesh.from_yaml(config, seed=1))
    response = caller.get(REVIEWS + base_path)
    assert response.json()["version"] == "v1"
    waited = time.monotonic() + 5
    while upstreams["v2"].hits(base_path) < 1 and time.monotonic() < waited:
        caller.pause(0.02)  # an async client's copy is a task on its event loop
    assert upstreams["v2"].hits(base_path) == 1
    assert upstreams["v1"].hits(base_path) == 1


def test_the_callers_own_timeout_bounds_the_call_and_raises_the_clients_timeout(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml({"reviews": upstreams.values()}, include=[DR_ALL])
    caller = connect(Mesh.from_yaml(config, seed=1))
    started = time.monotonic()
    with pytest.raises(caller.timeout_error) as raised:
        caller.get(REVIEWS + base_path, params={"delay": "2"}, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 1.5
    if caller.kind != "aiohttp":  # aiohttp's middleware raises its DeadlineExceeded (UT) here
        assert not isinstance(raised.value, DeadlineExceeded)  # the caller's, not the route's


def test_the_inbound_requests_context_is_carried_and_routes_the_call(
    upstreams: dict[str, Upstream], connect: Connect, base_path: str
) -> None:
    config = mesh_yaml(
        {"reviews": upstreams.values()},
        include=[DR_ALL, "virtual-service-reviews-test-v2.yaml"],
    )
    caller = connect(Mesh.from_yaml(config, seed=1))
    inbound = RequestContext(headers={"end-user": "jason", "x-request-id": "req-7"})
    with context.use(inbound):
        carried = caller.get(REVIEWS + base_path)
        own = caller.get(REVIEWS + base_path, headers={"end-user": "alice"})
    assert carried.json()["version"] == "v2"  # routed on the carried end-user
    seen = carried.json()["headers"]
    assert (seen["end-user"], seen["x-request-id"]) == ("jason", "req-7")
    assert own.json()["version"] == "v1"  # the caller's own header wins
    assert own.json()["headers"]["x-request-id"] == "req-7"
    plain = caller.get(REVIEWS + base_path)  # outside the inbound request: nothing carried
    assert plain.json()["version"] == "v1"
    assert "x-request-id" not in plain.json()["headers"]
