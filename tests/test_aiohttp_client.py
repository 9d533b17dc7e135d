"""The mesh as an aiohttp client middleware, against real upstream processes on 127.0.0.1.

What an aiohttp caller relies on beyond the data-plane scenarios that run through every client
(``tests/integration``): the mesh's replies are ``ClientResponse`` objects, its failures are at
once aiohttp's and meshlib's exceptions, the caller's ``ClientTimeout`` stays its bound, the
route's deadline bounds the body aiohttp reads, and the call is recorded (and its pool slot
given back) when aiohttp lets go of the response, however that happens.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from meshlib import Mesh, context
from meshlib.clients import aiohttp as mesh_aiohttp
from meshlib.clients.aiohttp import mesh_info, raise_for_mesh
from meshlib.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    MeshRequestError,
    NoRouteError,
)
from meshlib.telemetry import RequestFinished
from tests.chaos.misbehaving import Misbehaving
from tests.integration.upstream import Upstream

pytestmark = pytest.mark.integration

FLAGS = "x-mesh-response-flags"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


@pytest.fixture(scope="module")
def mirror_upstream() -> Iterator[Upstream]:
    with Upstream.start("v2") as started:
        yield started


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[Misbehaving]:
    server = Misbehaving.start()
    try:
        yield server
    finally:
        server.stop()


def config(address: str, docs: str = "", *, extra: str = "", mirror: str | None = None) -> str:
    registry = f"      reviews: [{{address: '{address}', labels: {{version: v1}}}}]\n"
    if mirror is not None:
        registry += f"      shadow: [{{address: '{mirror}'}}]\n"
    text = (
        "apiVersion: meshlib.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: productpage}\n"
        "spec:\n"
        "  propagateHeaders: [end-user]\n"
        f"{extra}"
        "  registry:\n"
        "    static:\n"
        f"{registry}"
    )
    return text + ("---\n" + docs if docs.strip() else "")


class Recorder:
    """The ``RequestFinished`` events of a mesh."""

    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []

    def on_event(self, event: Any) -> None:
        if isinstance(event, RequestFinished):
            self.finished.append(event)


def reviews_vs(http: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata: {name: reviews}\n"
        "spec:\n"
        "  hosts: [reviews]\n"
        "  http:\n" + http
    )


# --------------------------------------------------------------------------- answers


async def test_an_upstream_answer_is_aiohttps_response_with_the_mesh_info(
    upstream: Upstream,
) -> None:
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    headers: {response: {set: {x-served-by: mesh}, remove: [x-upstream-extra]}}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    async with (
        mesh.aiohttp_session() as session,
        session.get("http://reviews:9080/reviews/1") as response,
    ):
        assert isinstance(response, aiohttp.ClientResponse)
        body = await response.json()
        info = mesh_info(response)
    assert response.status == 200
    assert body["path"] == "/reviews/1"
    assert body["headers"]["host"] == "reviews:9080"  # the authority the caller named
    assert info is not None
    assert info.endpoint == upstream.address
    assert info.attempts == 1
    assert response.mesh is info  # type: ignore[attr-defined]
    assert response.headers["x-served-by"] == "mesh"  # the route's response header operation
    assert FLAGS not in response.headers
    # what the mesh removes from an upstream's answer never reaches the caller
    assert "x-envoy-peer-metadata" not in response.headers


async def test_local_replies_are_client_responses_with_their_flags(upstream: Upstream) -> None:
    docs = reviews_vs(
        "  - match: [{uri: {prefix: /direct}}]\n"
        "    directResponse: {status: 418, body: {string: teapot}}\n"
        "  - match: [{uri: {prefix: /moved}}]\n"
        "    redirect: {uri: /new, authority: elsewhere:9080}\n"
        "  - match: [{uri: {prefix: /abort}}]\n"
        "    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: reviews}}]\n"
        "  - match: [{uri: {prefix: /ok}}]\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    before = upstream.hits()
    async with mesh.aiohttp_session() as session:
        async with session.get("http://reviews:9080/direct") as direct:
            assert await direct.text() == "teapot"
        async with session.get("http://reviews:9080/moved/x", allow_redirects=False) as moved:
            assert await moved.read() == b""
        async with session.get("http://reviews:9080/abort") as aborted:
            assert await aborted.text() == "fault filter abort"
        async with session.get("http://reviews:9080/none") as unrouted:
            assert await unrouted.read() == b""
            with pytest.raises(NoRouteError) as caught:
                raise_for_mesh(unrouted)
    assert direct.status == 418
    assert direct.reason == "I'm a Teapot"
    assert moved.status == 301
    assert moved.headers["location"] == "http://elsewhere:9080/new"
    assert aborted.status == 503
    assert aborted.headers[FLAGS] == "FI"
    assert unrouted.status == 404
    assert unrouted.headers[FLAGS] == "NR"
    assert isinstance(caught.value, mesh_aiohttp.NoRouteError)
    assert isinstance(caught.value, aiohttp.ClientConnectionError)
    for response, flags in ((direct, ""), (moved, ""), (aborted, "FI"), (unrouted, "NR")):
        info = mesh_info(response)
        assert info is not None
        assert info.flags == flags
    assert upstream.hits() == before  # none of them reached the upstream


# --------------------------------------------------------------------------- failures


async def test_an_open_breaker_raises_an_error_that_is_aiohttps_and_meshlibs(
    upstream: Upstream,
) -> None:
    extra = "  circuitBreakers: {failureThreshold: 1, resetTimeout: 3600s}\n"
    mesh = Mesh.from_yaml(config(upstream.address, extra=extra), seed=1)
    async with mesh.aiohttp_session() as session:
        with pytest.raises(CircuitOpenError):  # the 503 opens it; the default retry meets it
            async with session.get("http://reviews:9080/r?status=503"):
                pass
        before = upstream.hits()
        with pytest.raises(aiohttp.ClientConnectionError) as caught:
            async with session.get("http://reviews:9080/r"):
                pass
    error = caught.value
    assert isinstance(error, mesh_aiohttp.CircuitOpenError)
    assert isinstance(error, CircuitOpenError)
    assert isinstance(error, MeshRequestError)
    assert error.flag == "UO"
    assert error.destination == "reviews.default.svc.cluster.local"
    assert upstream.hits() == before


async def test_an_unreachable_upstream_is_retried_then_raised_as_both_families() -> None:
    mesh = Mesh.from_yaml(config("127.0.0.1:9"), seed=1)  # nothing listens on port 9
    async with mesh.aiohttp_session() as session:
        with pytest.raises(aiohttp.ClientConnectionError) as caught:
            await session.get("http://reviews:9080/r")
    error = caught.value
    assert isinstance(error, mesh_aiohttp.MeshRequestError)
    assert error.flag == "UF,URX"  # a connect failure, the default 2 retries spent
    assert "connect" in str(error)
    assert error.__cause__ is not None  # the pipeline's error, and aiohttp's beneath it


async def test_the_route_timeout_raises_deadline_exceeded_a_timeout_of_aiohttp(
    upstream: Upstream,
) -> None:
    docs = reviews_vs("  - route: [{destination: {host: reviews}}]\n    timeout: 0.2s\n")
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    async with mesh.aiohttp_session() as session:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as caught:
            await session.get("http://reviews:9080/slow?delay=3")
        took = time.monotonic() - started
    assert isinstance(caught.value, mesh_aiohttp.DeadlineExceeded)
    assert isinstance(caught.value, DeadlineExceeded)
    assert isinstance(caught.value, aiohttp.ClientError)
    assert caught.value.flag == "UT"
    assert 0.2 <= took < 2.0


async def test_the_callers_client_timeout_is_its_bound(upstream: Upstream) -> None:
    mesh = Mesh.from_yaml(config(upstream.address), seed=1)
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with mesh.aiohttp_session(timeout=timeout) as session:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError) as caught:
            await session.get("http://reviews:9080/slow?delay=3")
        took = time.monotonic() - started
    assert not isinstance(caught.value, MeshRequestError)  # the caller's own, not the mesh's
    assert 0.3 <= took < 2.0


async def test_a_per_try_timeout_is_retried_then_the_route_deadline_ends_the_call(
    upstream: Upstream,
) -> None:
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    timeout: 1s\n"
        "    retries: {attempts: 5, perTryTimeout: 0.15s, retryOn: reset}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    upstream.control("/_reset")
    async with mesh.aiohttp_session() as session:
        with pytest.raises(DeadlineExceeded):
            await session.get("http://reviews:9080/pertry?delay=3")
    tries = upstream.hits("/pertry")
    assert 2 <= tries <= 6  # each try cut at 0.15 s, then retried, within the 1 s deadline


async def test_the_route_deadline_bounds_the_body_aiohttp_reads(
    misbehaving: Misbehaving,
) -> None:
    chaos = misbehaving.address
    text = config(chaos).replace("reviews:", "chaos:") + (
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: chaos}\nspec:\n  hosts: [chaos]\n  http:\n"
        "  - route: [{destination: {host: chaos}}]\n    timeout: 0.4s\n"
    )
    mesh = Mesh.from_yaml(text, seed=1)
    recorder = Recorder()
    mesh.add_listener(recorder)
    async with mesh.aiohttp_session() as session:
        started = time.monotonic()
        async with session.get("http://chaos/trickle-body/aio?size=40&every=0.1") as response:
            assert response.status == 200  # the head is in at once
            with pytest.raises(DeadlineExceeded) as caught:
                await response.read()
        took = time.monotonic() - started
    assert isinstance(caught.value, aiohttp.ClientError)
    assert 0.4 <= took < 2.0  # not the 4 s the whole body would take
    info = mesh_info(response)
    assert info is not None
    assert "UT" in info.flags
    assert len(recorder.finished) == 1
    assert recorder.finished[0].response_code_details == "upstream_response_timeout"


# --------------------------------------------------------------------------- the call's end


async def test_the_call_is_recorded_when_aiohttp_lets_go_of_the_response(
    upstream: Upstream,
) -> None:
    extra = "  telemetry: {tracing: {enabled: false}}\n"
    mesh = Mesh.from_yaml(config(upstream.address, extra=extra), seed=1)
    recorder = Recorder()
    mesh.add_listener(recorder)
    async with mesh.aiohttp_session() as session:
        response = await session.get("http://reviews:9080/big?size=1000000")
        assert recorder.finished == []  # the body is still coming
        assert len(await response.read()) >= 1_000_000
        response.release()
        assert [event.status for event in recorder.finished] == [200]
        # released before the body was read: recorded then too
        early = await session.get("http://reviews:9080/big?size=1000000")
        early.close()
        assert [event.status for event in recorder.finished] == [200, 200]


async def test_pool_slots_are_given_back_however_the_response_ends(upstream: Upstream) -> None:
    docs = (
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata: {name: reviews}\n"
        "spec:\n"
        "  host: reviews\n"
        "  trafficPolicy:\n"
        "    connectionPool: {http: {http2MaxRequests: 1, http1MaxPendingRequests: 1}}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    async with mesh.aiohttp_session() as session:
        for size in (10, 1_000_000, 10, 1_000_000):
            async with session.get(f"http://reviews:9080/pool?size={size}") as response:
                assert response.status == 200
                if size == 10:
                    await response.read()  # read whole; the other two are left unread
        async with session.get("http://reviews:9080/pool") as last:
            assert last.status == 200  # not 503 UO: no slot was kept


# --------------------------------------------------------------------------- requests


async def test_a_bytes_body_is_sent_again_on_retry(upstream: Upstream) -> None:
    mesh = Mesh.from_yaml(config(upstream.address), seed=1)
    upstream.control("/_reset")
    async with (
        mesh.aiohttp_session() as session,
        session.put("http://reviews:9080/put?fail=1&echo=1", data=b"payload") as response,
    ):
        body = await response.json()
        info = mesh_info(response)
    assert response.status == 200
    assert body["body"] == "payload"
    assert info is not None
    assert info.attempts == 2


async def test_a_streamed_body_is_sent_once_and_never_retried(upstream: Upstream) -> None:
    mesh = Mesh.from_yaml(config(upstream.address), seed=1)
    upstream.control("/_reset")

    async def chunks() -> Any:
        yield b"one,"
        yield b"two"

    async with (
        mesh.aiohttp_session() as session,
        session.put("http://reviews:9080/stream?fail=1&echo=1", data=chunks()) as response,
    ):
        seen = await response.json()
    assert response.status == 503  # not replayable: the 503 is the answer
    assert upstream.hits("/stream") == 1
    assert seen["body"] == "one,two"  # the upstream got the whole stream


async def test_inbound_context_headers_are_carried(upstream: Upstream) -> None:
    mesh = Mesh.from_yaml(config(upstream.address), seed=1)
    inbound = context.RequestContext(headers={"x-request-id": "abc", "end-user": "jason"})
    async with mesh.aiohttp_session() as session:
        with context.use(inbound):
            async with session.get("http://reviews:9080/ctx") as carried:
                seen = (await carried.json())["headers"]
            async with session.get("http://reviews:9080/ctx", headers={"end-user": "alice"}) as own:
                kept = (await own.json())["headers"]
    assert seen["x-request-id"] == "abc"
    assert seen["end-user"] == "jason"
    assert kept["end-user"] == "alice"  # what the caller sets itself wins


async def test_a_mirror_gets_a_copy_and_the_caller_the_upstreams_answer(
    upstream: Upstream, mirror_upstream: Upstream
) -> None:
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    mirror: {host: shadow}\n"
        "    mirrorPercentage: {value: 100}\n"
    )
    text = config(upstream.address, docs, mirror=mirror_upstream.address)
    mesh = Mesh.from_yaml(text, seed=1)
    mirror_upstream.control("/_reset")
    async with mesh.aiohttp_session() as session:
        async with session.post("http://reviews:9080/mirrored", data=b"x") as response:
            answer = await response.json()
        for _ in range(100):  # the copy is sent in the background
            if mirror_upstream.hits("/mirrored"):
                break
            await asyncio.sleep(0.02)
    assert answer["version"] == "v1"
    assert mirror_upstream.hits("/mirrored") == 1
    mesh.close()


async def test_the_default_mesh_has_the_aiohttp_entry_points(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshlib import client

    mesh = Mesh.from_yaml(config(upstream.address), seed=1)
    monkeypatch.setattr(client, "default_mesh", lambda: mesh)
    async with (
        client.aiohttp_session() as session,
        session.get("http://reviews:9080/default") as response,
    ):
        assert json.loads(await response.read())["path"] == "/default"
    async with (
        aiohttp.ClientSession(middlewares=[client.aiohttp_middleware()]) as other,
        other.get("http://reviews:9080/default") as answer,
    ):
        assert mesh_info(answer) is not None


def chaos_config(address: str) -> str:
    return config(address).replace("reviews:", "chaos:")


async def test_a_connection_broken_in_the_body_is_recorded_uc(misbehaving: Misbehaving) -> None:
    mesh = Mesh.from_yaml(chaos_config(misbehaving.address), seed=1)
    recorder = Recorder()
    mesh.add_listener(recorder)
    async with (
        mesh.aiohttp_session() as session,
        session.get("http://chaos/reset-body/aio?size=1000&sent=10") as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    info = mesh_info(response)
    assert info is not None
    assert info.flags == "UC"
    assert [(e.status, e.flags) for e in recorder.finished] == [(200, "UC")]
    assert recorder.finished[0].response_code_details.startswith(
        "upstream_reset_after_response_started"
    )


async def test_an_upstreams_own_flags_header_never_passes_for_the_meshs(
    misbehaving: Misbehaving,
) -> None:
    mesh = Mesh.from_yaml(chaos_config(misbehaving.address), seed=1)
    async with mesh.aiohttp_session() as session:
        url = "http://chaos/status/aio?code=200&header=x-mesh-response-flags:UH&header=x-a:b"
        async with session.get(url) as response:
            await response.read()
    assert response.status == 200
    assert FLAGS not in response.headers
    assert response.headers["x-a"] == "b"
    assert [name for name, _ in response.raw_headers].count(b"x-a") == 1


async def test_the_response_is_for_the_url_the_caller_asked_for(misbehaving: Misbehaving) -> None:
    """aiohttp sent the attempt to the endpoint's address; the caller's response, and the
    cookies the session keeps from it, are the service's; ``request_info`` says where the
    attempt went."""
    from yarl import URL

    mesh = Mesh.from_yaml(chaos_config(misbehaving.address), seed=1)
    async with mesh.aiohttp_session() as session:
        url = "http://chaos/status/aio?code=200&header=set-cookie:flavour=mint"
        async with session.get(url) as response:
            await response.read()
        kept = session.cookie_jar.filter_cookies(URL("http://chaos/status/next"))
        async with session.get("http://chaos/ok/aio") as again:
            await again.read()
    assert response.url == URL(url)
    assert response.request_info.real_url == URL(url)
    assert response.request_info.url.authority == misbehaving.address
    assert kept["flavour"].value == "mint"
    assert again.status == 200


# --------------------------------------------------------------------------- mTLS


async def test_istio_mutual_is_originated_with_the_workload_identity(tmp_path: Any) -> None:
    """A destination with ``ISTIO_MUTUAL`` is called over mutual TLS with this workload's
    identity; the upstream's SPIFFE ID is checked and shown on the MeshInfo; a server with the
    wrong identity gets no byte of the request and the caller an error of both families."""
    from meshlib.errors import UpstreamTLSError
    from meshlib.security.ca import CertificateAuthority
    from meshlib.security.identity import SpiffeId
    from tests.security.test_outbound_tls import (
        PRODUCTPAGE,
        REVIEWS,
        Server,
        config,
        tls_rule,
        workload_context,
    )

    ca = CertificateAuthority.init(tmp_path / "ca")
    good = Server(workload_context(ca.issue(REVIEWS)))
    impostor = Server(workload_context(ca.issue(SpiffeId("cluster.local", "default", "other"))))
    rule = tls_rule(f"{{mode: ISTIO_MUTUAL, subjectAltNames: [{REVIEWS.uri}]}}")
    try:
        mesh = Mesh.from_yaml(config(ca, good.port, rules=rule))
        async with (
            mesh.aiohttp_session() as session,
            session.get("http://reviews:9080/reviews/0") as response,
        ):
            seen = await response.json()
        info = mesh_info(response)
        assert response.status == 200
        assert seen["peer"] == PRODUCTPAGE  # the server saw our identity
        assert info is not None
        assert info.tls == "ISTIO_MUTUAL"
        assert info.peer_identity == REVIEWS.uri

        wrong = Mesh.from_yaml(config(ca, impostor.port, rules=rule))
        async with wrong.aiohttp_session() as session:
            with pytest.raises(aiohttp.ClientConnectionError) as caught:
                await session.get("http://reviews:9080/reviews/0")
        assert isinstance(caught.value, UpstreamTLSError)
        assert caught.value.flag == "UF"
        assert impostor.requests == 0
    finally:
        good.close()
        impostor.close()


async def test_each_attempt_is_a_client_span_whose_context_the_upstream_receives(
    upstream: Upstream,
) -> None:
    from meshlib.telemetry.tracing import memory_tracer

    mesh = Mesh.from_yaml(config(upstream.address), seed=1)
    tracer, spans = memory_tracer(clock=mesh.clock)
    mesh.telemetry.set_tracer(tracer)
    upstream.control("/_reset")
    async with (
        mesh.aiohttp_session() as session,
        session.get("http://reviews:9080/traced?fail=1") as response,
    ):
        sent = (await response.json())["headers"]["traceparent"]
    first, second = sorted(spans.get_finished_spans(), key=lambda span: span.start_time or 0)
    assert response.status == 200
    assert first.attributes is not None
    assert first.attributes["http.response.status_code"] == 503
    assert second.attributes is not None
    assert second.attributes["http.request.resend_count"] == 1
    assert second.context is not None
    # the answering attempt's span is the parent the upstream was told of
    assert sent.split("-")[2] == f"{second.context.span_id:016x}"


async def test_an_encoded_path_a_query_and_non_ascii_header_values_go_as_sent(
    upstream: Upstream,
) -> None:
    docs = reviews_vs(
        "  - match: [{uri: {exact: /a b/c}}]\n"  # the router sees the path decoded
        "    route: [{destination: {host: reviews}}]\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    async with (
        mesh.aiohttp_session() as session,
        session.get(
            "http://reviews:9080/a%20b/c?x=%2F&y=1", headers={"x-name": "café"}
        ) as response,
    ):
        seen = await response.json()
    assert response.status == 200
    assert mesh_info(response) is not None
    assert seen["path"] in ("/a%20b/c", "/a b/c")
    # sent as aiohttp sends it (UTF-8), read by the upstream as Latin-1
    assert seen["headers"]["x-name"] == "café".encode().decode("latin-1")


async def test_a_rewrite_and_request_header_operations_reach_the_upstream(
    upstream: Upstream,
) -> None:
    docs = reviews_vs(
        "  - match: [{uri: {prefix: /old/}}]\n"
        "    rewrite: {uri: /new/}\n"
        "    headers: {request: {set: {x-added: mesh}, remove: [x-secret]}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    async with (
        mesh.aiohttp_session() as session,
        session.get(
            "http://reviews:9080/old/page?q=a%26b", headers={"x-secret": "s", "x-kept": "k"}
        ) as response,
    ):
        seen = await response.json()
    assert response.status == 200
    assert seen["path"] == "/new/page"
    assert seen["headers"]["x-added"] == "mesh"
    assert "x-secret" not in seen["headers"]
    assert seen["headers"]["x-kept"] == "k"
    assert str(response.url) == "http://reviews:9080/old/page?q=a%26b"  # the caller's URL


# --------------------------------------------------------------------------- the codec, alone


async def captured(url: str, **kwargs: Any) -> aiohttp.ClientRequest:
    """The ``ClientRequest`` aiohttp makes for ``url`` (nothing is sent)."""
    from meshlib.clients.aiohttp import _local_response

    found: list[aiohttp.ClientRequest] = []

    async def capture(req: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        found.append(req)
        return _local_response(req, 204, [], b"")

    async with (
        aiohttp.ClientSession(middlewares=(capture,)) as session,
        session.get(url, **kwargs),
    ):
        pass
    return found[0]


async def test_the_routers_view_of_hostile_and_unusual_requests() -> None:
    codec = mesh_aiohttp.CODEC
    request = await captured("http://[::1]:8080/a%20b?x=%2F")
    ipv6 = codec.view(request)
    # the query as aiohttp will send it (yarl writes a "/" in a query as it is)
    assert (ipv6.host, ipv6.port, ipv6.path) == ("::1", 8080, "/a b")
    assert ipv6.query == request.url.raw_query_string == "x=/"
    assert ipv6.authority == "[::1]:8080"
    repeated = await captured("http://Reviews/p", headers=[("x-a", "1"), ("x-a", "2")])
    view = codec.view(repeated)
    assert view.host == "reviews"
    assert view.port == 80
    assert view.headers["x-a"] == "1, 2"  # joined as Envoy joins them
    assert view.authority == repeated.headers["Host"] == "reviews"  # the Host aiohttp sends
    idna = codec.view(await captured("http://bücher.example/"))
    assert idna.host == "bücher.example"  # the router sees the host as written


async def test_errors_are_classified_as_envoys_failure_kinds() -> None:
    classify = mesh_aiohttp.classify
    async with aiohttp.ClientSession() as bare:  # a real refusal: nothing listens on port 9
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await bare.get("http://127.0.0.1:9/")
    refused = caught.value
    assert classify(refused) == "connect-failure"
    assert classify(aiohttp.ConnectionTimeoutError("slow connect")) == "connect-failure"
    assert classify(aiohttp.ServerDisconnectedError()) == "reset"
    assert classify(aiohttp.ClientPayloadError("cut")) == "reset"
    assert classify(ConnectionResetError()) == "reset"
    assert classify(CircuitOpenError("open")) == "other"
    assert classify(ValueError("a bug")) == "other"
    timeout = mesh_aiohttp.CODEC.outcome_of_error(
        mesh_aiohttp._AttemptTimeout("cut"), per_try_timeout=True
    )
    assert timeout.error == "per-try-timeout"
    assert mesh_aiohttp.CODEC.outcome_of_error(refused, per_try_timeout=False).request_sent is False


# --------------------------------------------------------------------------- cookies, headers
# and bodies on every path: aiohttp's handler, the mesh's TLS pools, mirrors' copies


class TLSUpstream:
    """An aiohttp server on 127.0.0.1 behind the ``reviews`` workload's certificate (a client
    certificate required): records what each request brought, answers with ``set-cookie``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.runner: Any = None
        self.port = 0

    async def start(self, tmp_path: Any) -> Mesh:
        from aiohttp import web

        from meshlib.security.ca import CertificateAuthority
        from tests.security.test_outbound_tls import REVIEWS, config, tls_rule, workload_context

        async def handle(request: web.Request) -> web.Response:
            self.seen.append(
                {
                    "raw": dict(request.raw_headers),
                    "cookie": request.headers.get("cookie"),
                    "body": await request.read(),
                }
            )
            return web.Response(text="ok", headers={"set-cookie": "session=abc; Path=/"})

        ca = CertificateAuthority.init(tmp_path / "ca")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, "127.0.0.1", 0, ssl_context=workload_context(ca.issue(REVIEWS))
        )
        await site.start()
        self.port = self.runner.addresses[0][1]
        rule = tls_rule(f"{{mode: ISTIO_MUTUAL, subjectAltNames: [{REVIEWS.uri}]}}")
        return Mesh.from_yaml(config(ca, self.port, rules=rule))

    async def stop(self) -> None:
        await self.runner.cleanup()


async def test_set_cookie_the_mesh_adds_or_answers_reaches_the_session_cookie_jar(
    upstream: Upstream,
) -> None:
    docs = reviews_vs(
        "  - match: [{uri: {prefix: /direct}}]\n"
        "    directResponse: {status: 200, body: {string: hi}}\n"
        "    headers: {response: {add: {set-cookie: 'answered=1; Path=/'}}}\n"
        "  - route: [{destination: {host: reviews}}]\n"
        "    headers: {response: {add: {set-cookie: 'flavour=mint; Path=/'}}}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs), seed=1)
    async with mesh.aiohttp_session() as session:
        async with session.get("http://reviews:9080/a") as routed:
            await routed.read()
        async with session.get("http://reviews:9080/direct") as direct:
            await direct.read()
        jar = {cookie.key: cookie.value for cookie in session.cookie_jar}
        async with session.get("http://reviews:9080/b") as after:
            seen = await after.json()
    assert routed.cookies["flavour"].value == "mint"
    assert direct.cookies["answered"].value == "1"
    assert jar == {"flavour": "mint", "answered": "1"}
    sent = sorted(seen["headers"]["cookie"].split("; "))
    assert sent == ["answered=1", "flavour=mint"]


async def test_a_set_cookie_the_mesh_removes_is_not_filed() -> None:
    """A ``Set-Cookie`` a response header operation removes is in neither the response's
    headers nor its cookies nor the session's jar; one it adds is in all three."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"set-cookie": "tracker=1; Path=/"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    headers: {response: {remove: [set-cookie], add: {set-cookie: 'kept=1'}}}\n"
    )
    mesh = Mesh.from_yaml(config(f"127.0.0.1:{port}", docs), seed=1)
    try:
        async with mesh.aiohttp_session() as session:
            async with session.get("http://reviews:9080/a") as response:
                await response.read()
            jar = [cookie.key for cookie in session.cookie_jar]
    finally:
        await runner.cleanup()
    assert response.headers.getall("set-cookie") == ["kept=1"]
    assert list(response.cookies) == ["kept"]
    assert jar == ["kept"]


async def test_istio_mutual_answers_cookies_and_bodies_and_headers_arrive_whole(
    tmp_path: Any,
) -> None:
    """Through the mesh's TLS pools: the upstream's ``Set-Cookie`` reaches the session's jar
    (and comes back on the next request), a non-ASCII header value arrives as aiohttp's UTF-8,
    and bytes, file and streamed bodies arrive whole, framed once (a ``Content-Length``, never
    with ``Transfer-Encoding``)."""
    import io

    server = TLSUpstream()
    mesh = await server.start(tmp_path)

    async def chunks() -> Any:
        yield b"a" * 500
        yield b"b" * 500

    try:
        async with mesh.aiohttp_session() as session:
            async with session.get("http://reviews:9080/login") as response:
                assert response.status == 200
                assert response.cookies["session"].value == "abc"
            assert [(c.key, c.value) for c in session.cookie_jar] == [("session", "abc")]
            bodies = {
                "bytes": b"x" * 1000,
                "file": io.BytesIO(b"y" * 1000),
                "stream": chunks(),
            }
            for name, data in bodies.items():
                async with session.post(
                    f"http://reviews:9080/{name}", data=data, headers={"x-user": "Jürgen"}
                ) as response:
                    assert response.status == 200, name
                    info = mesh_info(response)
                    assert info is not None
                    assert info.tls == "ISTIO_MUTUAL"
            assert len(server.runner.server.connections) == 1  # one pooled TLS connection
        for _ in range(200):  # the session closed: so did the mesh's TLS pool
            if not server.runner.server.connections:
                break
            await asyncio.sleep(0.01)
        assert server.runner.server.connections == []
    finally:
        await server.stop()
    login, *posts = server.seen
    assert login["cookie"] is None
    expected = [b"x" * 1000, b"y" * 1000, b"a" * 500 + b"b" * 500]
    assert [post["body"] for post in posts] == expected
    for post in posts:
        raw = post["raw"]
        assert post["cookie"] == "session=abc"
        assert raw[b"x-user"] == "Jürgen".encode()
        assert raw[b"Content-Length"] == b"1000"
        assert b"Transfer-Encoding" not in raw


async def test_a_header_no_bytes_can_be_sent_for_is_a_clear_error_on_a_tls_destination(
    tmp_path: Any,
) -> None:
    server = TLSUpstream()
    mesh = await server.start(tmp_path)
    try:
        async with mesh.aiohttp_session() as session:
            with pytest.raises(aiohttp.ClientConnectionError) as caught:
                await session.get("http://reviews:9080/odd", headers={"x-odd": "a\ud800"})
    finally:
        await server.stop()
    assert isinstance(caught.value, MeshRequestError)
    assert "a request header cannot be sent" in str(caught.value)
    assert server.seen == []


async def test_a_mirrored_call_with_a_non_ascii_header_is_sent_and_so_is_its_copy(
    upstream: Upstream, mirror_upstream: Upstream
) -> None:
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    mirror: {host: shadow}\n"
        "    mirrorPercentage: {value: 100}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs, mirror=mirror_upstream.address), seed=1)
    upstream.control("/_reset")
    mirror_upstream.control("/_reset")
    async with mesh.aiohttp_session() as session:
        async with session.post(
            "http://reviews:9080/mirrored-utf8?echo=1", data=b"x", headers={"x-user": "Jürgen"}
        ) as response:
            seen = await response.json()
        for _ in range(100):  # the copy is sent in the background
            if mirror_upstream.hits("/mirrored-utf8"):
                break
            await asyncio.sleep(0.02)
    assert response.status == 200
    assert seen["body"] == "x"
    assert seen["headers"]["x-user"] == "Jürgen".encode().decode("latin-1")
    assert mirror_upstream.hits("/mirrored-utf8") == 1
    assert mesh.mirrors.dropped == 0
    mesh.close()


async def test_a_mirror_copy_that_cannot_be_made_is_dropped_and_the_call_goes_on(
    upstream: Upstream, mirror_upstream: Upstream
) -> None:
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    mirror: {host: shadow}\n"
        "    mirrorPercentage: {value: 100}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs, mirror=mirror_upstream.address), seed=1)
    upstream.control("/_reset")
    mirror_upstream.control("/_reset")
    async with mesh.aiohttp_session() as session:
        # a lone surrogate: aiohttp writes what it can of it, no bytes of it can be copied
        async with session.get(
            "http://reviews:9080/uncopyable", headers={"x-odd": "a\ud800"}
        ) as response:
            await response.read()
        await asyncio.sleep(0.1)
    assert response.status == 200
    assert upstream.hits("/uncopyable") == 1
    assert mesh.mirrors.dropped == 1
    assert mirror_upstream.hits("/uncopyable") == 0
    mesh.close()


async def test_a_closed_session_leaves_no_connection_of_the_mesh_open(
    upstream: Upstream,
) -> None:
    """The pool of a session's mirror copies (as its TLS pools) closes with the session, even
    while the caller still holds the closed session."""
    state = {"open": 0, "requests": 0}

    class Shadow(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""
            state["open"] += 1

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
                state["requests"] += 1
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

        def connection_lost(self, exc: BaseException | None) -> None:
            state["open"] -= 1

    server = await asyncio.get_running_loop().create_server(Shadow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    docs = reviews_vs(
        "  - route: [{destination: {host: reviews}}]\n"
        "    mirror: {host: shadow}\n"
        "    mirrorPercentage: {value: 100}\n"
    )
    mesh = Mesh.from_yaml(config(upstream.address, docs, mirror=f"127.0.0.1:{port}"), seed=1)
    held = []
    try:
        for sent in range(1, 4):
            async with mesh.aiohttp_session() as session:
                async with session.get("http://reviews:9080/pooled") as response:
                    await response.read()
                for _ in range(200):  # the copy is sent in the background
                    if state["requests"] == sent:
                        break
                    await asyncio.sleep(0.01)
                assert state["open"] == 1
            held.append(session)
            for _ in range(200):
                if state["open"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert state["open"] == 0, f"session {sent}: the mirror's connection is still open"
    finally:
        server.close()
        await server.wait_closed()
        mesh.close()
    assert state["requests"] == 3
