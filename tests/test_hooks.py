"""Hooks: a user's own sink (``Mesh.add_listener``) receives every kind of mesh event.

Every client scenario runs through a stock ``httpx.Client`` and ``httpx.AsyncClient`` (the
``send`` fixture) on in-memory meshes with a fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import CircuitOpenError, ConfigError, Mesh
from meshlib.telemetry import (
    AttemptEnded,
    AttemptStarted,
    BreakerCreated,
    BreakerTransition,
    BudgetExhausted,
    ConfigReloaded,
    EndpointEjected,
    EndpointReturned,
    FaultInjected,
    MeshListener,
    RequestFinished,
    RetryScheduled,
)
from meshlib.testing import FakeClock, Reply, Upstreams, in_memory_mesh

REVIEWS = "http://reviews:9080/reviews/0"
HOST = "reviews.default.svc.cluster.local"

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
"""


def docs(*texts: str, service: str = SERVICE) -> str:
    return "\n---\n".join([service, *texts])


def vs(http: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )


def dr(body: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: reviews}}\nspec:\n  host: reviews\n{body}"
    )


class Sink:
    """A user's sink: keeps every event."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if type(e) is kind]


Send = Callable[..., httpx.Response]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstreams(clock: FakeClock) -> Upstreams:
    return Upstreams(clock=clock)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def meshes(sink: Sink) -> Iterator[Callable[[str, Upstreams], Mesh]]:
    """``build(yaml, upstreams)``: an in-memory mesh reporting to ``sink``."""
    made: list[Mesh] = []

    def build(text: str, upstreams: Upstreams) -> Mesh:
        mesh = in_memory_mesh(text, upstreams, seed=5)
        mesh.add_listener(sink)
        made.append(mesh)
        return mesh

    yield build
    for mesh in made:
        mesh.close()


def test_a_sink_sees_each_attempt_the_retry_and_the_finish(
    send: Send, upstreams: Upstreams, meshes: Any, sink: Sink, clock: FakeClock
) -> None:
    upstreams.script("reviews", [Reply(503), Reply(200)])
    mesh = meshes(docs(), upstreams)
    assert isinstance(sink, MeshListener)

    send(mesh, "GET", REVIEWS, headers={"x-request-id": "r-1"})

    assert sink.kinds() == [
        "AttemptStarted",
        "AttemptEnded",
        "RetryScheduled",
        "AttemptStarted",
        "AttemptEnded",
        "RequestFinished",
    ]
    first, second = sink.of(AttemptStarted)
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.endpoint.host == "reviews.upstream.test"
    assert first.request is second.request  # one RequestInfo for the events of one request
    assert first.request.request_id == "r-1"
    assert first.request.decision.destination.host == HOST
    ended = sink.of(AttemptEnded)
    assert [(e.status, e.error) for e in ended] == [(503, None), (200, None)]
    [retry] = sink.of(RetryScheduled)
    assert retry.attempt == 1
    assert retry.delay == clock.sleeps[0]
    [finished] = sink.of(RequestFinished)
    assert (finished.status, finished.flags, finished.attempts, finished.error) == (
        200,
        "",
        2,
        None,
    )


def test_a_sink_sees_the_injected_fault(
    send: Send, upstreams: Upstreams, meshes: Any, sink: Sink
) -> None:
    route = (
        "  - fault: {delay: {fixedDelay: 3s, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    upstreams.endpoint("reviews")
    mesh = meshes(docs(vs(route)), upstreams)

    send(mesh, "GET", REVIEWS)

    [fault] = sink.of(FaultInjected)
    assert (fault.delay, fault.abort_status, fault.abort_grpc_status) == (3.0, None, None)
    assert sink.kinds()[0] == "FaultInjected"
    [finished] = sink.of(RequestFinished)
    assert (finished.flags, finished.duration) == ("DI", 3.0)


def test_a_sink_sees_the_breaker_created_open_half_open_and_closed(
    send: Send, upstreams: Upstreams, meshes: Any, sink: Sink, clock: FakeClock
) -> None:
    upstreams.script("reviews", [Reply(500)])
    service = SERVICE + "  circuitBreakers: {failureThreshold: 1, resetTimeout: 10s}\n"
    mesh = meshes(docs(service=service), upstreams)

    assert send(mesh, "GET", REVIEWS).status_code == 500
    with pytest.raises(CircuitOpenError):
        send(mesh, "GET", REVIEWS)
    clock.advance(10)
    assert send(mesh, "GET", REVIEWS).status_code == 200

    assert sink.of(BreakerCreated) == [BreakerCreated(HOST, "closed")]
    transitions = [(e.destination, e.old, e.new) for e in sink.of(BreakerTransition)]
    assert transitions == [
        (HOST, "closed", "open"),
        (HOST, "open", "half-open"),
        (HOST, "half-open", "closed"),
    ]
    failed = sink.of(RequestFinished)[1]
    assert (failed.status, failed.flags) == (503, "UO")
    # meshlib's error and httpx's at once
    assert isinstance(failed.error, CircuitOpenError)
    assert isinstance(failed.error, httpx.TransportError)


def test_a_sink_sees_an_endpoint_ejected_and_returned(
    send: Send, upstreams: Upstreams, meshes: Any, sink: Sink, clock: FakeClock
) -> None:
    bad = upstreams.script("reviews", [Reply(500)])
    upstreams.endpoint("reviews", index=1)
    rule = dr(
        "  trafficPolicy:\n"
        "    loadBalancer: {simple: ROUND_ROBIN}\n"
        "    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s,"
        " maxEjectionPercent: 100}\n"
    )
    mesh = meshes(docs(rule), upstreams)

    for _ in range(2):
        send(mesh, "GET", REVIEWS)
    [ejected] = sink.of(EndpointEjected)
    assert (ejected.destination, ejected.endpoint, ejected.ejections) == (HOST, bad, 1)
    assert sink.of(EndpointReturned) == []

    clock.advance(30)
    send(mesh, "GET", REVIEWS)
    assert sink.of(EndpointReturned) == [EndpointReturned(HOST, bad)]


def test_a_sink_sees_the_retry_budget_run_out(
    send: Send, upstreams: Upstreams, meshes: Any, sink: Sink
) -> None:
    upstreams.script("reviews", [Reply(503)])
    rule = dr("  trafficPolicy: {retryBudget: {percent: 0, minRetryConcurrency: 0}}\n")
    mesh = meshes(docs(rule), upstreams)

    send(mesh, "GET", REVIEWS)

    [exhausted] = sink.of(BudgetExhausted)
    assert exhausted.attempt == 1
    assert exhausted.request.decision.destination.host == HOST
    assert sink.of(RetryScheduled) == []


def test_a_sink_sees_each_reload_good_and_bad(
    tmp_path: Path, upstreams: Upstreams, sink: Sink
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(docs(), encoding="utf-8")
    mesh = Mesh.from_file(path, transport=upstreams.transport())
    mesh.add_listener(sink)
    try:
        path.write_text(docs(vs("  - route: [{destination: {host: reviews}}]\n")), "utf-8")
        mesh.reload()
        path.write_text(docs(vs("  - route: [{destination: {host: reviews}, weight: -1}]\n")))
        with pytest.raises(ConfigError):
            mesh.reload()
    finally:
        mesh.close()

    good, bad = sink.of(ConfigReloaded)
    assert (good.ok, good.error) == (True, None)
    assert bad.ok is False
    assert isinstance(bad.error, ConfigError)
    assert "weight" in str(bad.error)


def test_removing_a_sink_stops_its_events_and_costs_nothing_after(
    send: Send, upstreams: Upstreams, sink: Sink
) -> None:
    mesh = in_memory_mesh(docs(), upstreams)
    assert not mesh.telemetry.active
    mesh.add_listener(sink)
    assert mesh.telemetry.active
    send(mesh, "GET", REVIEWS)
    mesh.remove_listener(sink)
    assert not mesh.telemetry.active
    send(mesh, "GET", REVIEWS)
    mesh.close()

    assert len(sink.of(RequestFinished)) == 1


def test_a_failing_sink_never_reaches_the_caller(
    send: Send, upstreams: Upstreams, meshes: Any, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def on_event(self, event: Any) -> None:
            raise RuntimeError("sink is down")

    mesh = meshes(docs(), upstreams)
    mesh.add_listener(Broken())

    assert send(mesh, "GET", REVIEWS).status_code == 200
    assert len(sink.of(RequestFinished)) == 1  # the other sinks still hear everything
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures
    assert "sink is down" in (failures[0].exc_text or "")
