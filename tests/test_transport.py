"""The outbound pipeline end to end: ``MeshTransport`` and ``AsyncMeshTransport``.

Every scenario runs through a stock ``httpx.Client`` and a stock ``httpx.AsyncClient`` (the
``connect`` fixture), on in-memory meshes (``meshlib.testing``) with a ``FakeClock`` and a seed:
no sleeps, no network. Each test asserts what a caller relies on — where a request went, what
came back, how long it took in fake time, and what the upstream saw.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
import tenacity

from examples.bookinfo import NETWORKING
from meshlib import CircuitOpenError, DeadlineExceeded, Mesh, MeshRequestError, RouteRequest
from meshlib.clients.httpx.transport import (
    FLAGS_HEADER,
    AsyncMeshTransport,
    MeshInfo,
    MeshTransport,
)
from meshlib.config.load import load_texts
from meshlib.discovery import Endpoint
from meshlib.mesh import Cluster
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

BOOKINFO = NETWORKING  # the project's Bookinfo rule files

T = TypeVar("T")

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
"""


def bookinfo(*names: str) -> str:
    """Bookinfo's subsets plus the named rule files."""
    files = ("destination-rule-all.yaml", *names)
    return "\n---\n".join([SERVICE, *((BOOKINFO / name).read_text() for name in files)])


def docs(*texts: str, service: str = SERVICE) -> str:
    """A config: this service's document, then the given resources."""
    return "\n---\n".join([service, *texts])


def vs(host: str, http: str, *, annotations: str = "") -> str:
    """A VirtualService for ``host`` whose ``http`` list is given as YAML (indented 2)."""
    meta = f"  annotations: {annotations}\n" if annotations else ""
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata:\n  name: {host}\n{meta}spec:\n  hosts: [{host}]\n  http:\n{http}"
    )


def dr(host: str, body: str) -> str:
    """A DestinationRule for ``host`` with ``body`` (spec fields, indented 2)."""
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata:\n  name: {host}\nspec:\n  host: {host}\n{body}"
    )


SUBSETS = """\
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def catch_all(*fields: str, host: str = "reviews") -> str:
    """An ``http`` list of one route to ``host`` matching everything, with extra ``fields``
    (``"timeout: 3s"``, ``"retries: {attempts: 2}"``)."""
    lines = [f"  - route: [{{destination: {{host: {host}}}}}]", *(f"    {f}" for f in fields)]
    return "\n".join(lines) + "\n"


def info(response: httpx.Response) -> MeshInfo:
    mesh_info = response.extensions["mesh"]
    assert isinstance(mesh_info, MeshInfo)
    return mesh_info


def flags(response: httpx.Response) -> str:
    return response.headers.get(FLAGS_HEADER, "")


def cluster_of(mesh: Mesh, url: str, **headers: str) -> Cluster:
    """The runtime state of the destination ``url`` routes to."""
    request = RouteRequest.from_url("GET", url, headers)
    decision = mesh.route(request)
    assert decision.destination is not None
    return mesh.cluster(decision.destination, request.port)


# --------------------------------------------------------------------------- sync and async


class Pending:
    """A request running in the background (a thread, or a task on the caller's loop)."""

    def __init__(self, result: Callable[[], httpx.Response], done: Callable[[], bool]) -> None:
        self.result = result
        self.done = done


class Caller:
    """One stock httpx client of a mesh — ``httpx.Client`` or ``httpx.AsyncClient`` — behind
    one blocking interface. The async client runs on an event loop of its own."""

    def __init__(self, mode: str, mesh: Mesh, **options: Any) -> None:
        self.mode = mode
        self.mesh = mesh
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: ThreadPoolExecutor | None = None
        if mode == "sync":
            self._sync = mesh.client(**options)
            assert isinstance(self._sync, httpx.Client)
        else:
            self._loop = asyncio.new_event_loop()
            self._async = mesh.async_client(**options)
            assert isinstance(self._async, httpx.AsyncClient)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request and read its whole response."""
        if self._sync is not None:
            return self._sync.request(method, url, **kwargs)
        assert self._async is not None
        return self.run(self._async.request(method, url, **kwargs))

    def send_request(self, request: httpx.Request) -> httpx.Response:
        """Send a request built beforehand (``build_request``) and read its response."""
        if self._sync is not None:
            return self._sync.send(request)
        assert self._async is not None
        return self.run(self._async.send(request))

    def build_request(self, method: str, url: str, **kwargs: Any) -> httpx.Request:
        client = self._sync if self._sync is not None else self._async
        assert client is not None
        return client.build_request(method, url, **kwargs)

    def open(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request and return with the body unread (``stream=True``)."""
        if self._sync is not None:
            return self._sync.send(self._sync.build_request(method, url, **kwargs), stream=True)
        assert self._async is not None
        request = self._async.build_request(method, url, **kwargs)
        return self.run(self._async.send(request, stream=True))

    def close_response(self, response: httpx.Response) -> None:
        if self._sync is not None:
            response.close()
        else:
            self.run(response.aclose())

    def start(self, method: str, url: str, **kwargs: Any) -> Pending:
        """``open`` in the background: a thread for the sync client, a task for the async one
        (it runs whenever this caller's loop runs)."""
        if self._sync is not None:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(4)
            future: Future[httpx.Response] = self._threads.submit(self.open, method, url, **kwargs)
            return Pending(lambda: future.result(timeout=5), future.done)
        assert self._async is not None
        assert self._loop is not None
        request = self._async.build_request(method, url, **kwargs)
        task = self._loop.create_task(self._async.send(request, stream=True))
        return Pending(lambda: self.run(asyncio.wait_for(task, 5)), task.done)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (in real time, bounded) until ``condition()``; the loop runs meanwhile."""
        deadline = time.monotonic() + timeout
        if self._sync is not None:
            while not condition():
                assert time.monotonic() < deadline, "condition not reached in time"
                time.sleep(0.001)
            return

        async def poll() -> None:
            while not condition():
                assert time.monotonic() < deadline, "condition not reached in time"
                await asyncio.sleep(0.001)

        self.run(poll())

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
        if self._sync is not None:
            self._sync.close()
        if self._async is not None and self._loop is not None:
            self.run(self._async.aclose())
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self.run(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
        self.mesh.close()


Connect = Callable[..., Caller]


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """``connect(mesh, **client_options)``: a ``Caller`` on an ``httpx.Client`` (sync) or an
    ``httpx.AsyncClient`` (async); its ``send(method, url, **kw)`` returns the response."""
    callers: list[Caller] = []

    def make(mesh: Mesh, **options: Any) -> Caller:
        caller = Caller(request.param, mesh, **options)
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        caller.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstreams(clock: FakeClock) -> Upstreams:
    return Upstreams(clock=clock)


def build(text: str, upstreams: Upstreams, seed: int = 7) -> Mesh:
    """An in-memory mesh from ``text``; endpoints registered on ``upstreams`` so far are in it."""
    return in_memory_mesh(text, upstreams, clock=upstreams.clock, seed=seed)


REVIEWS = "http://reviews:9080/reviews/0"
RATINGS = "http://ratings:9080/ratings/0"


# --------------------------------------------------------------------------- routing


def test_header_routing_sends_jason_to_v2_and_everyone_else_to_v1(
    connect: Connect, upstreams: Upstreams
) -> None:
    for version in ("v1", "v2", "v3"):
        upstreams.endpoint("reviews", version)
    caller = connect(build(bookinfo("virtual-service-reviews-test-v2.yaml"), upstreams))

    for _ in range(4):
        response = caller.send("GET", REVIEWS, headers={"end-user": "jason"})
        assert response.status_code == 200
        assert info(response).endpoint == "reviews-v2.upstream.test:80"
        assert info(response).decision.destination is not None
        assert info(response).decision.destination.subset == "v2"
    for headers in ({"end-user": "alice"}, {"end-user": "Jason"}, {}):
        response = caller.send("GET", REVIEWS, headers=headers)
        assert info(response).endpoint == "reviews-v1.upstream.test:80"

    assert len(upstreams.calls("reviews", subset="v2")) == 4
    assert len(upstreams.calls("reviews", subset="v1")) == 3
    assert upstreams.calls("reviews", subset="v3") == []
    seen = upstreams.calls("reviews", subset="v2")[0]
    assert seen.headers["end-user"] == "jason"
    assert seen.headers["host"] == "reviews:9080"  # the upstream is called by service name
    assert seen.request.url.path == "/reviews/0"


def test_weights_80_20_reach_the_right_endpoints(connect: Connect, upstreams: Upstreams) -> None:
    for version in ("v1", "v2", "v3"):
        upstreams.endpoint("reviews", version)
    caller = connect(build(bookinfo("virtual-service-reviews-80-20.yaml"), upstreams, seed=11))

    n = 2000
    answered = Counter(info(caller.send("GET", REVIEWS)).endpoint for _ in range(n))

    v1 = len(upstreams.calls("reviews", subset="v1"))
    v2 = len(upstreams.calls("reviews", subset="v2"))
    assert v1 + v2 == n
    assert upstreams.calls("reviews", subset="v3") == []
    assert abs(v1 - 0.8 * n) < 90  # 5 standard deviations (sqrt(n * 0.8 * 0.2) ≈ 18)
    assert answered == {"reviews-v1.upstream.test:80": v1, "reviews-v2.upstream.test:80": v2}


# --------------------------------------------------------------------------- fault injection


def test_fault_delay_waits_7s_of_fake_time_then_reaches_the_upstream(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.endpoint("ratings", "v1")
    mesh = build(bookinfo("virtual-service-ratings-test-delay.yaml"), upstreams)
    caller = connect(mesh, timeout=10.0)  # reviews → ratings: Bookinfo's hard-coded 10 s

    start = clock.now()
    response = caller.send("GET", RATINGS, headers={"end-user": "jason"})
    assert response.status_code == 200
    assert clock.sleeps == [7.0]
    assert clock.now() - start == pytest.approx(7.0)
    assert flags(response) == "DI"
    assert info(response).flags == "DI"
    assert len(upstreams.calls("ratings", subset="v1")) == 1

    response = caller.send("GET", RATINGS, headers={"end-user": "alice"})
    assert response.status_code == 200
    assert clock.sleeps == [7.0]  # other users are not delayed
    assert flags(response) == ""
    assert len(upstreams.calls("ratings", subset="v1")) == 2


def test_delay_longer_than_the_callers_timeout_raises_read_timeout(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    """Bookinfo's lesson: productpage gives reviews 3 s (+1 retry), so a 7 s delay fails the
    page after 6 s instead of delaying it."""
    upstreams.endpoint("ratings", "v1")
    mesh = build(bookinfo("virtual-service-ratings-test-delay.yaml"), upstreams)
    caller = connect(mesh, timeout=3.0)

    start = clock.now()
    for _ in range(2):  # the call and its one retry, as productpage makes them
        with pytest.raises(httpx.ReadTimeout):
            caller.send("GET", RATINGS, headers={"end-user": "jason"})
    assert clock.now() - start == pytest.approx(6.0)
    assert clock.sleeps == [3.0, 3.0]
    assert upstreams.calls() == []


def test_fault_abort_answers_500_without_calling_the_upstream(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.endpoint("ratings", "v1")
    caller = connect(build(bookinfo("virtual-service-ratings-test-abort.yaml"), upstreams))

    response = caller.send("GET", RATINGS, headers={"end-user": "jason"})
    assert response.status_code == 500
    assert response.content == b"fault filter abort"
    assert flags(response) == "FI"
    assert info(response).flags == "FI"
    assert info(response).attempts == 0
    assert upstreams.calls() == []  # an injected abort is never retried, never sent

    response = caller.send("GET", RATINGS, headers={"end-user": "alice"})
    assert response.status_code == 200
    assert len(upstreams.calls("ratings")) == 1


def test_a_reply_of_the_mesh_leaves_the_transport_as_a_stream() -> None:
    """A transport hands over a response to read, the mesh's own replies as an upstream's: the
    client reads it (httpx reads a response twice over otherwise); its length is a header."""
    mesh = Mesh.from_yaml(
        docs(
            vs(
                "reviews",
                "  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n"
                "    route: [{destination: {host: reviews}}]\n",
            )
        )
    )
    request = httpx.Request("GET", "http://reviews/r")
    response = MeshTransport(
        mesh, httpx.MockTransport(lambda r: httpx.Response(200))
    ).handle_request(request)
    assert response.status_code == 503
    assert not response.is_stream_consumed
    with pytest.raises(httpx.ResponseNotRead):
        _ = response.content
    assert response.read() == b"fault filter abort"
    assert response.headers["content-length"] == str(len(b"fault filter abort"))
    assert flags(response) == "FI"

    async def read_async() -> bytes:
        transport = AsyncMeshTransport(mesh, httpx.MockTransport(lambda r: httpx.Response(200)))
        answer = await transport.handle_async_request(httpx.Request("GET", "http://reviews/r"))
        assert not answer.is_stream_consumed
        return await answer.aread()

    assert asyncio.run(read_async()) == b"fault filter abort"
    with httpx.Client(transport=MeshTransport(mesh)) as client:
        assert client.get("http://reviews/r").content == b"fault filter abort"


def test_fault_delay_then_abort(connect: Connect, clock: FakeClock, upstreams: Upstreams) -> None:
    upstreams.endpoint("ratings")
    fault = """\
  - fault:
      delay: {fixedDelay: 2s, percentage: {value: 100}}
      abort: {httpStatus: 503, percentage: {value: 100}}
    route: [{destination: {host: ratings}}]
"""
    caller = connect(build(docs(vs("ratings", fault)), upstreams))

    response = caller.send("GET", RATINGS)
    assert response.status_code == 503
    assert flags(response) == "DI,FI"
    assert clock.sleeps == [2.0]
    assert upstreams.calls() == []


def test_fault_abort_with_a_grpc_status(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("ratings")
    fault = """\
  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
"""
    caller = connect(build(docs(vs("ratings", fault)), upstreams))

    response = caller.send("POST", "http://ratings:9080/ratings.Ratings/Get")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc"
    assert response.headers["grpc-status"] == "14"
    assert flags(response) == "FI"
    assert upstreams.calls() == []


def test_fault_percentages_hold_statistically(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.endpoint("ratings")
    fault = """\
  - fault:
      delay: {fixedDelay: 1s, percentage: {value: 25}}
      abort: {httpStatus: 500, percent: 10}
    route: [{destination: {host: ratings}}]
"""
    caller = connect(build(docs(vs("ratings", fault)), upstreams, seed=5))

    n = 2000
    responses = [caller.send("GET", RATINGS) for _ in range(n)]
    delayed = sum("DI" in flags(r) for r in responses)
    aborted = sum(r.status_code == 500 for r in responses)
    both = sum(flags(r) == "DI,FI" for r in responses)

    assert delayed == len(clock.sleeps)
    assert abs(delayed - 0.25 * n) < 100  # 5 standard deviations (≈ 19)
    assert abs(aborted - 0.10 * n) < 70  # 5 standard deviations (≈ 13)
    assert abs(both - 0.025 * n) < 40  # independent draws: 25 % × 10 %
    assert all(flags(r) in ("FI", "DI,FI") for r in responses if r.status_code == 500)
    assert len(upstreams.calls()) == n - aborted


# --------------------------------------------------------------------------- retries


def test_attempts_2_on_an_always_503_upstream_makes_3_tries_and_returns_the_503(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(503)] * 10)
    route = catch_all("retries: {attempts: 2}")
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 503
    assert len(upstreams.calls("reviews")) == 3
    assert "URX" in flags(response).split(",")
    assert info(response).attempts == 3


@pytest.mark.parametrize("with_vs", [True, False], ids=["vs-without-retries", "no-vs"])
def test_the_mesh_default_policy_retries_503_twice(
    connect: Connect, upstreams: Upstreams, with_vs: bool
) -> None:
    upstreams.script("reviews", [Reply(503)] * 10)
    route = catch_all()
    caller = connect(build(docs(vs("reviews", route)) if with_vs else docs(), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 503
    assert len(upstreams.calls("reviews")) == 3
    assert info(response).decision.retry.source == "default"


def test_the_mesh_default_policy_does_not_retry_500(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.script("reviews", [Reply(500), Reply(200)])
    caller = connect(build(docs(), upstreams))
    assert caller.send("GET", REVIEWS).status_code == 500
    assert len(upstreams.calls("reviews")) == 1


@pytest.mark.parametrize(("max_retries", "tries"), [(0, 3), (1, 3)])
def test_max_retries_0_leaves_retries_unlimited_as_in_istio(
    connect: Connect, upstreams: Upstreams, max_retries: int, tries: int
) -> None:
    """Pilot applies ``connectionPool.http.maxRetries`` only when it is above 0."""
    upstreams.script("reviews", [Reply(503)] * 10)
    rule = dr(
        "reviews", f"  trafficPolicy: {{connectionPool: {{http: {{maxRetries: {max_retries}}}}}}}\n"
    )
    caller = connect(build(docs(rule), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 503
    assert len(upstreams.calls("reviews")) == tries
    assert flags(response) == "URX"


@pytest.mark.parametrize("opted_in", [False, True], ids=["default", "annotated"])
def test_post_is_retried_on_503_only_when_the_virtual_service_opts_in(
    connect: Connect, upstreams: Upstreams, opted_in: bool
) -> None:
    upstreams.script("reviews", [Reply(503)] * 10)
    route = catch_all("retries: {attempts: 2}")
    annotations = '{meshlib.dev/retry-non-idempotent: "true"}' if opted_in else ""
    caller = connect(build(docs(vs("reviews", route, annotations=annotations)), upstreams))

    response = caller.send("POST", REVIEWS, content=b"a review")
    assert response.status_code == 503
    calls = upstreams.calls("reviews")
    assert len(calls) == (3 if opted_in else 1)
    assert all(call.request.content == b"a review" for call in calls)


def test_post_is_retried_on_connect_failure_with_its_body(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(error=httpx.ConnectError), Reply(201)])
    caller = connect(build(docs(), upstreams))

    response = caller.send("POST", REVIEWS, content=b"a review")
    assert response.status_code == 201
    calls = upstreams.calls("reviews")
    assert len(calls) == 2
    assert calls[1].request.content == b"a review"
    assert info(response).attempts == 2


def test_post_is_not_retried_after_a_reset_once_sent(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(error=httpx.ReadError), Reply(200)])
    route = catch_all("retries: {attempts: 2, retryOn: 5xx}")
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    with pytest.raises(MeshRequestError) as caught:
        caller.send("POST", REVIEWS, content=b"a review")
    assert isinstance(caught.value.__cause__, httpx.ReadError)
    assert len(upstreams.calls("reviews")) == 1
    # the same failure on a GET is retried
    upstreams.script("reviews", [Reply(error=httpx.ReadError), Reply(200)])
    assert caller.send("GET", REVIEWS).status_code == 200


@pytest.mark.parametrize(
    ("retry_on", "status", "retried"),
    [
        ("gateway-error", 502, True),
        ("gateway-error", 503, True),
        ("gateway-error", 504, True),
        ("gateway-error", 500, False),
        ("5xx", 500, True),
        ("5xx", 599, True),
        ("5xx", 429, False),
        ("retriable-4xx", 409, True),
        ("retriable-4xx", 429, False),
        ("429,503", 429, True),
        ("429", 503, False),
        ("connect-failure", 503, False),
    ],
)
def test_retry_on_conditions(
    connect: Connect, upstreams: Upstreams, retry_on: str, status: int, retried: bool
) -> None:
    upstreams.script("reviews", [Reply(status), Reply(200)])
    route = (
        "  - route: [{destination: {host: reviews}}]\n"
        f'    retries: {{attempts: 1, retryOn: "{retry_on}"}}\n'
    )
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == (200 if retried else status)
    assert len(upstreams.calls("reviews")) == (2 if retried else 1)


def test_retry_after_is_honoured(connect: Connect, clock: FakeClock, upstreams: Upstreams) -> None:
    date = email.utils.formatdate(clock.wall() + 3, usegmt=True)
    upstreams.script(
        "reviews",
        [Reply(503, headers={"retry-after": "2"}), Reply(503, headers={"retry-after": date})],
    )
    caller = connect(build(docs(), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 200
    assert clock.sleeps == [2.0, pytest.approx(1.0, abs=1e-6)]  # the date was 3 s away at t0
    assert len(upstreams.calls("reviews")) == 3


def test_backoff_sleeps_fall_in_envoys_ranges(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.default = Reply(503)
    upstreams.endpoint("reviews")
    route = catch_all("retries: {attempts: 3, retryOn: 5xx}")
    caller = connect(build(docs(vs("reviews", route)), upstreams, seed=3))

    requests = 100
    for _ in range(requests):
        assert caller.send("GET", REVIEWS).status_code == 503
    assert len(clock.sleeps) == 3 * requests
    # retry N waits uniformly in [0, (2^N - 1) × 25 ms): 0–25, 0–75, 0–175 ms
    for n, bound in enumerate((0.025, 0.075, 0.175)):
        waits = clock.sleeps[n::3]
        assert all(0 <= w < bound for w in waits)
        assert max(waits) > 0.8 * bound  # jittered over the whole range


def test_a_retry_prefers_an_endpoint_not_yet_tried(connect: Connect, upstreams: Upstreams) -> None:
    bad = upstreams.script("reviews", [Reply(503)] * 200)
    good = upstreams.endpoint("reviews", index=1)
    caller = connect(build(docs(), upstreams))

    for _ in range(40):
        response = caller.send("GET", REVIEWS)
        assert response.status_code == 200
        assert info(response).endpoint == good.address
    calls = [c.endpoint for c in upstreams.calls()]
    assert bad.address in calls  # the first try did land on the failing endpoint at times
    for index, address in enumerate(calls):
        if address == bad.address:
            assert calls[index + 1] == good.address  # and its retry went elsewhere


class RecordingStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that remembers whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"body"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"body"

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class HeldOpenTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An upstream answering ``statuses`` in turn (then 200) with bodies that stay open until
    the caller closes them, recording their closing and what each request looked like."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.statuses = list(statuses)
        self.streams: list[RecordingStream] = []
        self.seen: list[httpx.Headers] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        stream = RecordingStream()
        with self._lock:
            self.streams.append(stream)
            self.seen.append(request.headers.copy())
            status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, stream=stream)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.handle_request(request)


def mesh_on(transport: HeldOpenTransport, text: str, clock: FakeClock) -> Mesh:
    """A mesh sending to ``transport``, with one endpoint for ``reviews``."""
    return Mesh(
        load_texts([("<test>", text)]),
        seed=1,
        clock=clock,
        transport=transport,
        extra_endpoints={"reviews": [Endpoint("reviews-0.upstream.test", 80)]},
    )


@pytest.mark.parametrize("statuses", [[503, 503, 200], [503, 503, 503]])
def test_discarded_responses_are_closed(
    connect: Connect, clock: FakeClock, statuses: list[int]
) -> None:
    upstream = HeldOpenTransport(statuses)
    caller = connect(mesh_on(upstream, docs(), clock))

    response = caller.open("GET", REVIEWS)
    assert response.status_code == statuses[-1]
    assert [s.closed for s in upstream.streams] == [True, True, False]
    caller.close_response(response)
    assert upstream.streams[-1].closed


def test_exhausted_retries_raise_a_mesh_error_never_a_tenacity_one(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(error=httpx.ConnectError)] * 10)
    caller = connect(build(docs(), upstreams))

    with pytest.raises(httpx.TransportError) as caught:
        caller.send("GET", REVIEWS)
    error = caught.value
    assert isinstance(error, MeshRequestError)
    assert not isinstance(error, tenacity.RetryError)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert error.flag.split(",") == ["UF", "URX"]
    assert len(upstreams.calls("reviews")) == 3


# --------------------------------------------------------------------------- timeouts


def test_route_timeout_raises_deadline_exceeded(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(200, delay=5)])
    route = catch_all("timeout: 3s")
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    start = clock.now()
    with pytest.raises(DeadlineExceeded) as caught:
        caller.send("GET", REVIEWS)
    error = caught.value
    assert isinstance(error, httpx.TimeoutException)
    assert error.flag == "UT"
    assert error.route == "default/reviews:http[0]"
    assert error.destination == "reviews.default.svc.cluster.local"
    assert error.route in str(error)
    assert error.destination in str(error)
    assert clock.now() - start == pytest.approx(3.0)
    assert len(upstreams.calls("reviews")) == 1


def test_the_callers_own_shorter_timeout_wins(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(200, delay=5)])
    route = catch_all("timeout: 10s")
    caller = connect(build(docs(vs("reviews", route)), upstreams), timeout=3.0)

    start = clock.now()
    with pytest.raises(httpx.ReadTimeout):
        caller.send("GET", REVIEWS)
    assert clock.now() - start == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("timeout", "sent"),
    [
        # httpx's default: every phase already within the call's deadline, sent as it is
        (httpx.Timeout(5.0), {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}),
        # a longer connect timeout than the read one: bounded by the deadline (the read one)
        (
            httpx.Timeout(3.0, connect=10.0),
            {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0},
        ),
        # no pool timeout at all: bounded too
        (httpx.Timeout(2.0, pool=None), {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}),
    ],
)
def test_the_first_attempt_never_waits_past_the_callers_deadline(
    connect: Connect,
    upstreams: Upstreams,
    timeout: httpx.Timeout,
    sent: dict[str, float],
) -> None:
    upstreams.script("reviews", [Reply(200)])
    caller = connect(build(docs(vs("reviews", catch_all())), upstreams), timeout=timeout)
    assert caller.send("GET", REVIEWS).status_code == 200
    got = upstreams.calls("reviews")[0].request.extensions["timeout"]
    assert got == pytest.approx(sent)


PER_TRY = "retries: {attempts: 3, perTryTimeout: 2s, retryOn: 'gateway-error,connect-failure'}"


def test_per_try_timeouts_are_retried_within_the_route_timeout(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    """Istio: with attempts 3, perTryTimeout 2s and timeout 3s, only 2 tries fit."""
    upstreams.script("reviews", [Reply(200, delay=10)] * 4)
    caller = connect(build(docs(vs("reviews", catch_all(PER_TRY, "timeout: 3s"))), upstreams))

    start = clock.now()
    with pytest.raises(DeadlineExceeded):
        caller.send("GET", REVIEWS)
    assert len(upstreams.calls("reviews")) == 2
    assert clock.now() - start == pytest.approx(3.0)


def test_per_try_timeout_without_a_route_timeout(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(200, delay=10), Reply(200, delay=10), Reply(200)])
    caller = connect(build(docs(vs("reviews", catch_all(PER_TRY))), upstreams), timeout=None)

    start = clock.now()
    response = caller.send("GET", REVIEWS)
    assert response.status_code == 200
    assert info(response).attempts == 3
    assert clock.now() - start == pytest.approx(4.0 + sum(clock.sleeps))
    assert 0 < sum(clock.sleeps) < 0.1  # two backoffs


def test_a_fault_route_gets_neither_timeout_nor_retries(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(200, delay=2), Reply(503), Reply(200)])
    route = """\
  - fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    timeout: 0.5s
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews}}]
"""
    caller = connect(build(docs(vs("reviews", route)), upstreams), timeout=None)

    start = clock.now()
    response = caller.send("GET", REVIEWS)
    assert response.status_code == 200  # not cut by the 0.5 s timeout
    assert clock.now() - start == pytest.approx(3.0)  # 1 s delay + 2 s upstream
    assert info(response).decision.timeout is None
    assert info(response).decision.retry.attempts == 0

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 503  # not retried
    assert len(upstreams.calls("reviews")) == 2


def test_the_timeout_header_overrides_the_route_timeout(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(200, delay=1), Reply(200, delay=2)])
    route = catch_all("timeout: 1.5s")
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    start = clock.now()
    with pytest.raises(DeadlineExceeded):
        caller.send("GET", REVIEWS, headers={"x-envoy-upstream-rq-timeout-ms": "500"})
    assert clock.now() - start == pytest.approx(0.5)

    response = caller.send("GET", REVIEWS, headers={"x-envoy-upstream-rq-timeout-ms": "4000"})
    assert response.status_code == 200


# --------------------------------------------------------------------------- local replies


def test_no_route_is_a_404_nr(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("reviews")
    route = (
        "  - match: [{headers: {end-user: {exact: jason}}}]\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 404
    assert flags(response) == "NR"
    assert info(response).endpoint is None
    assert info(response).attempts == 0
    assert upstreams.calls() == []


def test_an_undefined_subset_is_a_503_nc(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("reviews", "v1")
    route = "  - route: [{destination: {host: reviews, subset: v9}}]\n"
    caller = connect(build(docs(dr("reviews", SUBSETS), vs("reviews", route)), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 503
    assert flags(response) == "NC"
    assert upstreams.calls() == []


def test_a_subset_without_endpoints_is_a_503_uh(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("reviews", "v1")
    route = "  - route: [{destination: {host: reviews, subset: v2}}]\n"
    caller = connect(build(docs(dr("reviews", SUBSETS), vs("reviews", route)), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 503
    assert flags(response) == "UH"
    assert response.text == "no healthy upstream"
    assert upstreams.calls() == []


def test_registry_only_refuses_unknown_hosts_with_502_nr(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.endpoint("reviews")
    service = SERVICE + "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"
    caller = connect(build(docs(service=service), upstreams))

    response = caller.send("GET", "http://example.org/")
    assert response.status_code == 502
    assert flags(response) == "NR"
    assert upstreams.calls() == []
    assert caller.send("GET", REVIEWS).status_code == 200  # known hosts still go through


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{string: teapot}", b"teapot"),
        (f"{{bytes: {base64.b64encode(b'bin').decode()}}}", b"bin"),
    ],
)
def test_direct_response(
    connect: Connect, upstreams: Upstreams, body: str, expected: bytes
) -> None:
    upstreams.endpoint("reviews")
    route = f"  - directResponse: {{status: 418, body: {body}}}\n"
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    response = caller.send("GET", REVIEWS)
    assert response.status_code == 418
    assert response.content == expected
    assert upstreams.calls() == []


def test_the_meshs_own_replies_to_head_carry_no_body(
    connect: Connect, upstreams: Upstreams
) -> None:
    """Envoy's local replies (sendLocalReply) answer a HEAD request with the headers alone."""
    upstreams.endpoint("reviews", "v1")
    route = (
        "  - match: [{uri: {exact: /direct}}]\n"
        "    directResponse: {status: 418, body: {string: teapot}}\n"
        "  - match: [{uri: {exact: /none}}]\n"  # a subset without endpoints: UH
        "    route: [{destination: {host: reviews, subset: v2}}]\n"
        "  - match: [{uri: {exact: /abort}}]\n"
        "    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: reviews, subset: v1}}]\n"
    )
    caller = connect(build(docs(dr("reviews", SUBSETS), vs("reviews", route)), upstreams))

    for path, status, flag, text in [
        ("/direct", 418, "", "teapot"),
        ("/none", 503, "UH", "no healthy upstream"),
        ("/abort", 500, "FI", "fault filter abort"),
    ]:
        got = caller.send("GET", f"http://reviews:9080{path}")
        assert (got.status_code, flags(got), got.text) == (status, flag, text)
        head = caller.send("HEAD", f"http://reviews:9080{path}")
        assert (head.status_code, flags(head), head.content) == (status, flag, b"")
        assert head.headers.get("content-type") == got.headers.get("content-type")
        # the length of the body a GET gets, as Envoy's local reply to HEAD says it
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(text))
    assert upstreams.calls() == []


@pytest.mark.parametrize(
    ("redirect", "url", "status", "location"),
    [
        ("{uri: /v2/reviews}", REVIEWS + "?x=1", 301, "http://reviews:9080/v2/reviews?x=1"),
        (
            "{uri: /r, redirectCode: 302}",
            REVIEWS,
            302,
            "http://reviews:9080/r",
        ),
        (
            "{prefixRewrite: /v2/reviews, redirectCode: 307}",
            "http://reviews:9080/old/0?x=1",
            307,
            "http://reviews:9080/v2/reviews/0?x=1",
        ),
        (
            "{authority: reviews.example.com, derivePort: FROM_REQUEST_PORT, redirectCode: 308}",
            REVIEWS,
            308,
            "http://reviews.example.com:9080/reviews/0",
        ),
        (
            "{scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}",
            REVIEWS,
            301,
            "https://reviews/reviews/0",
        ),
        ("{scheme: https, port: 8443}", REVIEWS, 301, "https://reviews:8443/reviews/0"),
        ("{authority: reviews.example.com}", REVIEWS, 301, "http://reviews.example.com/reviews/0"),
        (
            "{authority: 'reviews.example.com:8080'}",
            REVIEWS,
            301,
            "http://reviews.example.com:8080/reviews/0",
        ),
    ],
)
def test_redirect(
    connect: Connect, upstreams: Upstreams, redirect: str, url: str, status: int, location: str
) -> None:
    upstreams.endpoint("reviews")
    route = f"  - match: [{{uri: {{prefix: /old}}}}]\n    redirect: {redirect}\n"
    route += f"  - redirect: {redirect}\n"
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    response = caller.send("GET", url)
    assert response.status_code == status
    assert response.headers["location"] == location
    assert upstreams.calls() == []


def test_rewrite_uri_and_authority(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("reviews")
    route = """\
  - match: [{uri: {prefix: /reviews}}]
    rewrite: {uri: /api/v1/reviews, authority: reviews.internal}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /health}}]
    rewrite: {uri: /status}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /service}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: '\\2/instance/\\1'}}
    route: [{destination: {host: reviews}}]
"""
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    caller.send("GET", "http://reviews:9080/reviews/0?x=1")
    caller.send("GET", "http://reviews:9080/health")
    caller.send("GET", "http://reviews:9080/service/foo/bar")
    first, second, third = (c.request for c in upstreams.calls("reviews"))
    assert first.url.path == "/api/v1/reviews/0"
    assert first.url.query == b"x=1"
    assert first.headers["host"] == "reviews.internal"
    assert second.url.path == "/status"
    assert second.headers["host"] == "reviews:9080"
    assert third.url.path == "/bar/instance/foo"


def test_header_operations_at_route_and_destination_level(
    connect: Connect, upstreams: Upstreams
) -> None:
    upstreams.script(
        "reviews", [Reply(200, headers={"x-upstream": "1", "server": "envoy", "x-drop": "d"})]
    )
    route = """\
  - headers:
      request: {set: {x-route: r}, add: {x-trace: from-route}, remove: [x-secret]}
      response: {set: {x-served-by: mesh}, remove: [server]}
    route:
    - destination: {host: reviews}
      headers:
        request: {set: {x-dest: d}, add: {x-trace: from-dest}}
        response: {add: {x-upstream: "2"}, remove: [x-drop]}
"""
    caller = connect(build(docs(vs("reviews", route)), upstreams))

    response = caller.send(
        "GET", REVIEWS, headers={"x-secret": "s", "x-route": "caller", "x-trace": "caller"}
    )
    seen = upstreams.calls("reviews")[0].headers
    assert "x-secret" not in seen
    assert seen["x-route"] == "r"
    assert seen["x-dest"] == "d"
    assert seen.get_list("x-trace", split_commas=True) == ["caller", "from-route", "from-dest"]
    assert response.headers["x-served-by"] == "mesh"
    assert "server" not in response.headers
    assert "x-drop" not in response.headers
    assert response.headers.get_list("x-upstream", split_commas=True) == ["1", "2"]


def test_the_callers_request_is_left_as_sent(connect: Connect, upstreams: Upstreams) -> None:
    """Rewrites and header operations change what the upstream gets, never the caller's own
    request: ``response.request`` is what was sent, and sending it again gives the same."""
    upstreams.script("reviews", [Reply(503)])
    route = """\
  - match: [{uri: {prefix: /reviews}}]
    rewrite: {uri: /api/reviews, authority: reviews.internal}
    headers:
      request: {set: {x-route: r}, add: {x-trace: mesh}, remove: [x-secret]}
    route: [{destination: {host: reviews}}]
"""
    one_per_connection = dr(
        "reviews", "  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}\n"
    )
    caller = connect(build(docs(one_per_connection, vs("reviews", route)), upstreams))
    request = caller.build_request("GET", REVIEWS, headers={"x-secret": "s", "x-trace": "caller"})
    as_sent = request.headers.multi_items()

    for _ in range(2):
        response = caller.send_request(request)
        assert response.status_code == 200
        assert response.request is request
        assert request.url == httpx.URL(REVIEWS)
        assert request.headers.multi_items() == as_sent

    calls = upstreams.calls("reviews")
    assert len(calls) == 3  # a 503, its retry, then the second send
    for call in calls:
        assert call.request.url.path == "/api/reviews/0"
        assert call.headers["host"] == "reviews.internal"
        assert call.headers["x-route"] == "r"
        assert "x-secret" not in call.headers
        assert call.headers.get_list("x-trace", split_commas=True) == ["caller", "mesh"]
        assert call.headers["connection"] == "close"


# --------------------------------------------------------------------------- circuit breaking


POOL_OF_ONE = dr(
    "reviews",
    "  trafficPolicy:\n"
    "    connectionPool:\n"
    "      tcp: {maxConnections: 1}\n"
    "      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n",
)
TWO_ROUTES = vs(
    "reviews",
    "  - match: [{headers: {end-user: {exact: jason}}}]\n"
    "    route: [{destination: {host: reviews}}]\n"
    "  - route: [{destination: {host: reviews}}]\n",
)


def test_connection_pool_overflow_is_a_503_uo_that_never_reaches_the_upstream(
    connect: Connect, clock: FakeClock
) -> None:
    """Istio's circuit-breaking task: maxConnections 1, http1MaxPendingRequests 1, three
    callers at once. The routes differ, the destination (and so its pool) is the same."""
    upstream = HeldOpenTransport()
    mesh = mesh_on(upstream, docs(POOL_OF_ONE, TWO_ROUTES), clock)
    caller = connect(mesh)
    pool = cluster_of(mesh, REVIEWS).pool
    jason = {"end-user": "jason"}

    first = caller.start("GET", REVIEWS)  # holds its connection: the body is left unread
    caller.wait_until(lambda: first.done() and pool.active == 1)
    second = caller.start("GET", REVIEWS, headers=jason)  # waits as pending
    caller.wait_until(lambda: pool.pending == 1)

    third = caller.send("GET", REVIEWS, headers=jason)  # no connection, no room to wait
    assert third.status_code == 503
    assert flags(third) == "UO"
    assert third.headers["x-envoy-overloaded"] == "true"
    assert info(third).attempts == 0
    assert len(upstream.seen) == 1  # the overflow never reached the upstream
    assert pool.pending_overflow == 1

    held = first.result()
    assert held.status_code == 200
    assert not second.done()
    caller.close_response(held)  # frees the connection for the pending request
    released = second.result()
    assert released.status_code == 200
    caller.close_response(released)
    assert len(upstream.seen) == 2
    assert [h["connection"] for h in upstream.seen] == ["close", "close"]  # 1 per connection
    assert all(s.closed for s in upstream.streams)
    assert (pool.active, pool.pending) == (0, 0)
    assert cluster_of(mesh, REVIEWS).balancer.inflight.snapshot() == {}


BREAKER_SERVICE = SERVICE + "  circuitBreakers: {failureThreshold: 3, resetTimeout: 30s}\n"


def test_the_breaker_opens_fails_fast_and_closes_after_a_successful_trial(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(500)] * 3)
    route = catch_all("retries: {attempts: 3, retryOn: 5xx}")
    route_no_retry = catch_all("retries: {attempts: 0}")
    mesh = build(docs(vs("reviews", route_no_retry), service=BREAKER_SERVICE), upstreams)
    caller = connect(mesh)

    for _ in range(3):
        assert caller.send("GET", REVIEWS).status_code == 500
    breaker = mesh.breakers()["reviews.default.svc.cluster.local"]
    assert breaker.state == "open"

    mesh.apply(load_texts([("<retrying>", docs(vs("reviews", route), service=BREAKER_SERVICE))]))
    assert mesh.breakers()["reviews.default.svc.cluster.local"] is breaker  # same settings
    with pytest.raises(CircuitOpenError) as caught:
        caller.send("GET", REVIEWS)
    assert caught.value.flag == "UO"
    assert isinstance(caught.value, httpx.TransportError)
    assert caught.value.destination == "reviews.default.svc.cluster.local"
    assert len(upstreams.calls("reviews")) == 3  # failing fast: not called, and not retried
    assert clock.sleeps == []

    clock.advance(29)
    with pytest.raises(CircuitOpenError):
        caller.send("GET", REVIEWS)
    clock.advance(1)  # reset timeout over, in fake time: one trial goes through
    response = caller.send("GET", REVIEWS)
    assert response.status_code == 200
    assert breaker.state == "closed"
    assert len(upstreams.calls("reviews")) == 4
    assert caller.send("GET", REVIEWS).status_code == 200


def test_a_failed_trial_opens_the_breaker_again(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    upstreams.script("reviews", [Reply(500)] * 4)
    mesh = build(docs(service=BREAKER_SERVICE), upstreams)
    caller = connect(mesh)

    for _ in range(3):
        caller.send("GET", REVIEWS)
    clock.advance(30)
    assert caller.send("GET", REVIEWS).status_code == 500  # the trial fails
    with pytest.raises(CircuitOpenError):
        caller.send("GET", REVIEWS)
    assert len(upstreams.calls("reviews")) == 4


def test_outlier_detection_ejects_a_failing_endpoint_until_its_time_is_up(
    connect: Connect, clock: FakeClock, upstreams: Upstreams
) -> None:
    bad = upstreams.script("reviews", [Reply(500)] * 100)
    good = upstreams.endpoint("reviews", index=1)
    rule = dr(
        "reviews",
        "  trafficPolicy:\n"
        "    loadBalancer: {simple: ROUND_ROBIN}\n"
        "    outlierDetection:\n"
        "      consecutive5xxErrors: 2\n"
        "      interval: 10s\n"
        "      baseEjectionTime: 30s\n"
        "      maxEjectionPercent: 100\n",
    )
    caller = connect(build(docs(rule), upstreams))

    def hits() -> int:
        return sum(c.endpoint == bad.address for c in upstreams.calls())

    for _ in range(4):
        caller.send("GET", REVIEWS)
    assert hits() == 2  # round robin: every other call, until the second 5xx ejects it
    for _ in range(10):
        response = caller.send("GET", REVIEWS)
        assert response.status_code == 200
        assert info(response).endpoint == good.address
    assert hits() == 2

    clock.advance(29.9)
    caller.send("GET", REVIEWS)
    assert hits() == 2
    clock.advance(0.1)  # baseEjectionTime is over: the endpoint is back
    for _ in range(2):
        caller.send("GET", REVIEWS)
    assert hits() == 3


# --------------------------------------------------------------------------- load balancing


def test_round_robin_alternates(connect: Connect, upstreams: Upstreams) -> None:
    endpoints = [upstreams.endpoint("reviews", index=i) for i in range(3)]
    rule = dr("reviews", "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n")
    caller = connect(build(docs(rule), upstreams))

    chosen = [info(caller.send("GET", REVIEWS)).endpoint for _ in range(9)]
    assert sorted(chosen[:3]) == sorted(e.address for e in endpoints)
    assert chosen == chosen[:3] * 3


def test_consistent_hash_on_a_header_sticks_to_one_endpoint_per_key(
    connect: Connect, upstreams: Upstreams
) -> None:
    for i in range(4):
        upstreams.endpoint("reviews", index=i)
    rule = dr(
        "reviews", "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n"
    )
    caller = connect(build(docs(rule), upstreams))

    chosen: dict[str, set[str | None]] = {}
    for _ in range(3):
        for user in (f"user-{i}" for i in range(20)):
            response = caller.send("GET", REVIEWS, headers={"X-User": user})
            chosen.setdefault(user, set()).add(info(response).endpoint)
    assert all(len(endpoints) == 1 for endpoints in chosen.values())
    assert len(set.union(*chosen.values())) >= 3  # the keys spread over the endpoints


# --------------------------------------------------------------------------- mirroring


MIRROR = """\
  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}
"""


@pytest.mark.parametrize(
    "mirror_reply", [Reply(200, body=b"shadow"), Reply(500), Reply(error=httpx.ConnectError)]
)
def test_mirroring_copies_the_request_and_never_affects_the_caller(
    connect: Connect, upstreams: Upstreams, mirror_reply: Reply
) -> None:
    upstreams.script("reviews", [Reply(200, body=b"primary")], subset="v1")
    upstreams.script("reviews", [mirror_reply], subset="v2")
    caller = connect(build(docs(dr("reviews", SUBSETS), vs("reviews", MIRROR)), upstreams))

    response = caller.send("POST", REVIEWS, content=b"payload", headers={"end-user": "jason"})
    assert response.status_code == 200
    assert response.content == b"primary"
    assert info(response).endpoint == "reviews-v1.upstream.test:80"

    caller.wait_until(lambda: len(upstreams.calls("reviews", subset="v2")) == 1)
    shadow = upstreams.calls("reviews", subset="v2")[0].request
    assert shadow.headers["host"] == "reviews-shadow:9080"
    assert shadow.headers["end-user"] == "jason"
    assert shadow.url.path == "/reviews/0"
    assert shadow.content == b"payload"
    primary = upstreams.calls("reviews", subset="v1")[0].request
    assert primary.headers["host"] == "reviews:9080"
    # the shadow carries the caller's workload metadata, as the call itself does
    for name in ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id"):
        assert shadow.headers[name] == primary.headers[name]


def test_a_mirror_at_0_percent_sends_nothing(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("reviews", "v1")
    upstreams.endpoint("reviews", "v2")
    route = MIRROR.replace("value: 100", "value: 0")
    caller = connect(build(docs(dr("reviews", SUBSETS), vs("reviews", route)), upstreams))

    for _ in range(20):
        assert caller.send("GET", REVIEWS).status_code == 200
    caller.wait_until(lambda: len(upstreams.calls("reviews", subset="v1")) == 20)
    assert upstreams.calls("reviews", subset="v2") == []


# --------------------------------------------------------------------------- what the mesh did


def test_every_response_carries_mesh_info(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.script("reviews", [Reply(503), Reply(200)], subset="v2")
    upstreams.endpoint("reviews", "v1")
    caller = connect(build(bookinfo("virtual-service-reviews-test-v2.yaml"), upstreams))

    retried = caller.send("GET", REVIEWS, headers={"end-user": "jason"})
    plain = caller.send("GET", REVIEWS)
    for response in (retried, plain):
        mesh_info = info(response)
        assert mesh_info.decision.virtual_service == "default/reviews"
        assert mesh_info.flags == ""
    assert (info(retried).attempts, info(retried).endpoint) == (2, "reviews-v2.upstream.test:80")
    assert (info(plain).attempts, info(plain).endpoint) == (1, "reviews-v1.upstream.test:80")
    assert info(retried).route == "default/reviews:http[0]"
    assert info(plain).route == "default/reviews:http[1]"


def test_unknown_hosts_pass_through_under_allow_any(connect: Connect, upstreams: Upstreams) -> None:
    upstreams.endpoint("reviews")
    caller = connect(build(docs(), upstreams))

    response = caller.send("GET", "http://example.org:8080/x?y=1", headers={"end-user": "jason"})
    assert response.status_code == 200
    assert info(response).decision.passthrough
    assert info(response).endpoint is None
    (seen,) = upstreams.calls()
    assert seen.endpoint == "example.org:8080"
    assert str(seen.request.url) == "http://example.org:8080/x?y=1"
    assert seen.headers["host"] == "example.org:8080"


# --------------------------------------------------------------------------- thread safety


def test_one_mesh_shared_by_16_threads_and_200_tasks_counts_every_call_once(
    upstreams: Upstreams,
) -> None:
    """10,000 calls over weighted routes at once: a sync client shared by 16 threads and an
    async client shared by 200 tasks, on the same mesh."""
    for version in ("v1", "v2", "v3"):
        for index in range(2):
            upstreams.endpoint("reviews", version, index=index)
    weighted = """\
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 30}
    - {destination: {host: reviews, subset: v3}, weight: 20}
"""
    subsets = SUBSETS + "  - {name: v3, labels: {version: v3}}\n"
    mesh = build(docs(dr("reviews", subsets), vs("reviews", weighted)), upstreams)
    threads, per_thread = 16, 300
    tasks, per_task = 200, 26
    assert threads * per_thread + tasks * per_task == 10_000

    answered: Counter[str | None] = Counter()  # by subset
    endpoints: Counter[str | None] = Counter()
    routes: Counter[int | None] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def record(response: httpx.Response) -> None:
        assert response.status_code == 200
        mesh_info = info(response)
        destination = mesh_info.decision.destination
        assert destination is not None
        assert mesh_info.attempts == 1
        with lock:
            answered[destination.subset] += 1
            endpoints[mesh_info.endpoint] += 1
            routes[mesh_info.decision.route_index] += 1

    def headers(i: int) -> dict[str, str]:
        return {"end-user": "jason"} if i % 10 == 0 else {}

    with mesh.client() as client:

        def work() -> None:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                record(client.get(REVIEWS, headers=headers(i)))

        async def task(client: httpx.AsyncClient) -> None:
            for i in range(per_task):
                record(await client.get(REVIEWS, headers=headers(i)))

        async def tasks_at_once() -> None:
            async with mesh.async_client() as client:
                barrier.wait(timeout=10)
                await asyncio.gather(*(task(client) for _ in range(tasks)))

        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(work) for _ in range(threads)]
            asyncio.run(tasks_at_once())
            for future in futures:
                future.result()

    calls = upstreams.calls()
    assert sum(answered.values()) == len(calls) == 10_000
    for subset in ("v1", "v2", "v3"):
        assert len(upstreams.calls("reviews", subset=subset)) == answered[subset]
    assert Counter(call.endpoint for call in calls) == endpoints  # no call lost or doubled
    assert len(endpoints) == 6  # least request spreads over both endpoints of each subset
    jason = threads * len(range(0, per_thread, 10)) + tasks * len(range(0, per_task, 10))
    assert routes == {0: jason, 1: 10_000 - jason}
    rest = 10_000 - jason
    for subset, share in (("v1", 0.5), ("v2", 0.3)):
        assert abs(answered[subset] - share * rest) < 0.03 * rest
    assert abs(answered["v3"] - jason - 0.2 * rest) < 0.03 * rest
    vhost = mesh.table.lookup("reviews.default.svc.cluster.local")
    assert vhost is not None
    for route in vhost.routes:
        for decision in route.decisions:
            assert decision.destination is not None
            cluster = mesh.cluster(decision.destination)
            assert cluster.balancer.inflight.snapshot() == {}
            assert (cluster.pool.active, cluster.pool.pending) == (0, 0)
            assert cluster.budget.active_requests == 0
