"""Automatic propagation: what outbound calls carry while an inbound request is served, across
every concurrency primitive — and where Python does not carry it, what the app does instead.

Each scenario calls ``reviews`` through both ``httpx.Client`` and ``httpx.AsyncClient`` (an
``asyncio.run`` of its own inside threads) from inside a handler served by ``@handler``.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshlib import Mesh, context, handler
from meshlib.context import ContextExecutor, start_thread, wrap
from meshlib.telemetry.tracing import memory_tracer
from meshlib.testing import FakeClock, Upstreams, in_memory_mesh

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INBOUND = {
    "x-request-id": "req-1",
    "end-user": "jason",
    "traceparent": f"00-{TRACE_ID}-{PARENT}-01",
}

CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  propagateHeaders: [end-user]
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
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""


class World:
    def __init__(self, traced: bool) -> None:
        self.upstreams = Upstreams(clock=FakeClock())
        self.upstreams.endpoint("reviews", "v1")
        self.upstreams.endpoint("reviews", "v2")
        self.mesh = in_memory_mesh(CONFIG, self.upstreams)
        self.spans: InMemorySpanExporter | None = None
        if traced:
            tracer, self.spans = memory_tracer(clock=self.mesh.clock)
            self.mesh.telemetry.set_tracer(tracer)

    def headers(self) -> list[httpx.Headers]:
        return [call.headers for call in self.upstreams.calls("reviews")]


@pytest.fixture(params=[True, False], ids=["traced", "untraced"])
def world(request: pytest.FixtureRequest) -> World:
    return World(bool(request.param))


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def call(mesh: Mesh, kind: str, headers: dict[str, str] | None = None) -> int:
    """One call to reviews through a new client of ``kind``."""
    if kind == "sync":
        with mesh.client() as http:
            return http.get("http://reviews/r", headers=headers).status_code
    return asyncio.run(acall(mesh, headers))


async def acall(mesh: Mesh, headers: dict[str, str] | None = None) -> int:
    async with mesh.async_client() as http:
        return (await http.get("http://reviews/r", headers=headers)).status_code


def assert_carried(world: World, count: int) -> None:
    """Every call carried the inbound request's context (and went to v2, by end-user)."""
    seen = world.headers()
    assert len(seen) == count
    for headers in seen:
        assert headers["x-request-id"] == "req-1"
        assert headers["end-user"] == "jason"
        assert headers["traceparent"].split("-")[1] == TRACE_ID
    assert {c.endpoint for c in world.upstreams.calls("reviews")} == {"reviews-v2.upstream.test:80"}
    if world.spans is not None:
        spans = world.spans.get_finished_spans()
        (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
        attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
        assert len(attempts) == count
        assert server.context is not None
        for attempt in attempts:
            assert attempt.parent is not None
            assert attempt.parent.span_id == server.context.span_id
        sent = {h["traceparent"].split("-")[2] for h in seen}
        assert sent == {f"{a.context.span_id:016x}" for a in attempts if a.context}
    else:
        assert {h["traceparent"] for h in seen} == {INBOUND["traceparent"]}


def assert_not_carried(world: World) -> None:
    (headers,) = world.headers()
    assert "x-request-id" not in headers
    assert "end-user" not in headers
    if world.spans is None:
        assert "traceparent" not in headers
    else:  # a trace of its own
        assert headers["traceparent"].split("-")[1] != TRACE_ID
    assert world.upstreams.calls("reviews")[0].endpoint == "reviews-v1.upstream.test:80"


def serve(world: World, body: Callable[[], Any]) -> Any:
    """Run ``body`` as the handler of an inbound request with the ``INBOUND`` headers."""

    @handler(mesh=world.mesh)
    def served(headers: dict[str, str]) -> Any:
        return body()

    return served(dict(INBOUND))


async def aserve(world: World, body: Callable[[], Any]) -> Any:
    @handler(mesh=world.mesh)
    async def served(headers: dict[str, str]) -> Any:
        return await body()

    return await served(dict(INBOUND))


# --------------------------------------------------------------------------- asyncio


async def test_in_the_handler_itself(world: World) -> None:
    await aserve(world, lambda: acall(world.mesh))
    assert_carried(world, 1)


async def test_create_task(world: World) -> None:
    async def body() -> None:
        await asyncio.create_task(acall(world.mesh))

    await aserve(world, body)
    assert_carried(world, 1)


async def test_gather(world: World) -> None:
    async def body() -> None:
        await asyncio.gather(*(acall(world.mesh) for _ in range(3)))

    await aserve(world, body)
    assert_carried(world, 3)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is Python 3.11+")
async def test_task_group(world: World) -> None:
    async def body() -> None:
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
            group.create_task(acall(world.mesh))
            group.create_task(acall(world.mesh))

    await aserve(world, body)
    assert_carried(world, 2)


async def test_to_thread_with_either_client(world: World, kind: str) -> None:
    async def body() -> None:
        await asyncio.to_thread(call, world.mesh, kind)

    await aserve(world, body)
    assert_carried(world, 1)


async def test_run_in_executor_needs_wrap(world: World, kind: str) -> None:
    """``loop.run_in_executor`` does not copy the context (``asyncio.to_thread`` does)."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wrap(call), world.mesh, kind)

    await aserve(world, body)
    assert_carried(world, 1)


# --------------------------------------------------------------------------- threads


def test_start_thread(world: World, kind: str) -> None:
    def body() -> None:
        start_thread(call, world.mesh, kind).join()

    serve(world, body)
    assert_carried(world, 1)


def test_wrap_for_a_thread_the_app_starts(world: World, kind: str) -> None:
    def body() -> None:
        thread = threading.Thread(target=wrap(call), args=(world.mesh, kind))
        thread.start()
        thread.join()

    serve(world, body)
    assert_carried(world, 1)


def test_copy_context_run(world: World, kind: str) -> None:
    def body() -> None:
        snapshot = contextvars.copy_context()
        thread = threading.Thread(target=snapshot.run, args=(call, world.mesh, kind))
        thread.start()
        thread.join()

    serve(world, body)
    assert_carried(world, 1)


def test_context_executor_submit_and_map(world: World, kind: str) -> None:
    executor = ContextExecutor(2)  # made before the request: each task takes its submitter's

    def body() -> None:
        executor.submit(call, world.mesh, kind).result()
        list(executor.map(lambda _: call(world.mesh, kind), range(2)))

    try:
        serve(world, body)
    finally:
        executor.shutdown()
    assert_carried(world, 3)


def test_a_plain_thread_does_not_carry_it(world: World, kind: str) -> None:
    def body() -> None:
        thread = threading.Thread(target=call, args=(world.mesh, kind))
        thread.start()
        thread.join()

    serve(world, body)
    assert_not_carried(world)


def test_a_plain_thread_pool_does_not_carry_it(world: World, kind: str) -> None:
    def body() -> None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(call, world.mesh, kind).result()

    serve(world, body)
    assert_not_carried(world)


def test_after_the_request_nothing_is_carried(world: World, kind: str) -> None:
    serve(world, lambda: None)
    assert context.current() is None
    call(world.mesh, kind)
    assert_not_carried(world)


# --------------------------------------------------------------------------- what the app sets wins


def test_headers_the_app_sets_win_and_route(world: World, kind: str) -> None:
    serve(world, lambda: call(world.mesh, kind, {"end-user": "bob", "x-request-id": "own"}))
    (headers,) = world.headers()
    assert (headers["end-user"], headers["x-request-id"]) == ("bob", "own")
    assert world.upstreams.calls("reviews")[0].endpoint == "reviews-v1.upstream.test:80"


def test_the_callers_request_is_given_back_as_it_sent_it(world: World, kind: str) -> None:
    def body() -> httpx.Request:
        with world.mesh.client() as http:
            return http.get("http://reviews/r").request

    request = serve(world, body)
    assert "end-user" not in request.headers
    assert "traceparent" not in request.headers


# --------------------------------------------------------------------------- trace formats


@pytest.mark.parametrize(
    ("propagation", "expected", "absent"),
    [
        (None, {"traceparent"}, {"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}),
        (["b3"], {"b3"}, {"traceparent", "x-b3-traceid"}),
        (["b3multi"], {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}, {"traceparent", "b3"}),
        (["tracecontext", "b3"], {"traceparent", "b3"}, {"x-b3-spanid"}),
    ],
)
def test_an_attempt_replaces_the_carried_trace_headers(
    kind: str, propagation: list[str] | None, expected: set[str], absent: set[str]
) -> None:
    world = World(traced=False)
    tracer, spans = memory_tracer(clock=world.mesh.clock, propagation=propagation)
    world.mesh.telemetry.set_tracer(tracer)
    inbound = {
        "x-b3-traceid": TRACE_ID,
        "x-b3-spanid": PARENT,
        "x-b3-sampled": "1",
        "tracestate": "vendor=7",
        "baggage": "tenant=acme",
    }

    @handler(mesh=world.mesh)
    def served(headers: dict[str, str]) -> None:
        call(world.mesh, kind)

    served(inbound)
    (headers,) = world.headers()
    assert expected <= set(headers.keys())
    assert not absent & set(headers.keys())
    assert headers["baggage"] == "tenant=acme"
    attempt = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert attempt.context is not None
    span_id = f"{attempt.context.span_id:016x}"
    for name in expected:
        value = headers[name]
        assert TRACE_ID in value or name in ("x-b3-spanid", "x-b3-sampled")
    if "x-b3-spanid" in expected:
        assert headers["x-b3-spanid"] == span_id
    for name in [n for n in expected if n in ("traceparent", "b3")]:
        assert span_id in headers[name]
    for header in ("traceparent", "b3", "x-b3-traceid", "x-b3-spanid"):
        assert len(headers.get_list(header)) <= 1
