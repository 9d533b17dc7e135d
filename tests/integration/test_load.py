"""Thread and task safety under load: 10,000 calls through one client against real processes.

Bookinfo's 50/50 split (``virtual-service-reviews-50-v3``) sends the calls to the v1 and v3
processes. What each process counted must add up exactly to the calls made and agree, destination
by destination, with what meshlib says it decided; nothing fails; and every in-flight, pool and
retry-budget counter is back to zero afterwards. Each loop is bounded in calls and in time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from meshlib import Mesh
from meshlib.clients.httpx.transport import MeshInfo
from meshlib.routing import Target

from .conftest import mesh_yaml
from .upstream import Upstream

pytestmark = pytest.mark.integration

CALLS = 10_000
TIME_LIMIT = 45.0
URL = "http://reviews:9080"

# Bookinfo's reviews subsets, with a connection pool, outlier detection and (in the Service
# document) a breaker, so that every piece of shared state is exercised. The pool lets 8 requests
# per destination be in flight and queues the others (16 threads, 200 tasks): besides exercising
# the pending queue, this keeps httpx's own pool small — its bookkeeping costs grow with the
# square of the connections it holds, which would make 200 connections the bottleneck.
REVIEWS_DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 8}
      http: {http1MaxPendingRequests: 1000}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


class Tally:
    """What meshlib says it did, per destination subset, and anything that went wrong."""

    def __init__(self) -> None:
        self.decided: Counter[str | None] = Counter()
        self.targets: dict[str | None, Target] = {}
        self.errors: list[str] = []

    def add(self, response: httpx.Response) -> None:
        info = response.extensions["mesh"]
        assert isinstance(info, MeshInfo)
        target = info.decision.destination
        subset = target.subset if target is not None else None
        self.decided[subset] += 1
        if target is not None:
            self.targets.setdefault(subset, target)
        if response.status_code != 200 or response.json()["version"] != subset:
            self.errors.append(f"{response.status_code} {response.text[:80]} for {subset}")

    def merge(self, other: Tally) -> None:
        self.decided.update(other.decided)
        for subset, target in other.targets.items():
            self.targets.setdefault(subset, target)
        self.errors.extend(other.errors)


def load_mesh(upstreams: dict[str, Upstream]) -> Mesh:
    config = mesh_yaml(
        {"reviews": upstreams.values()},
        include=["virtual-service-reviews-50-v3.yaml"],
        circuit_breakers={"failureThreshold": 5, "resetTimeout": "30s"},
        docs=REVIEWS_DR,
    )
    return Mesh.from_yaml(config, seed=11)


def check(mesh: Mesh, upstreams: dict[str, Upstream], path: str, tally: Tally) -> None:
    assert tally.errors == []
    made = sum(tally.decided.values())
    assert made == CALLS, f"only {made} calls in {TIME_LIMIT} s"
    hits = {version: u.hits(path) for version, u in upstreams.items()}
    assert sum(hits.values()) == CALLS
    assert hits == {"v1": tally.decided["v1"], "v2": 0, "v3": tally.decided["v3"]}
    assert 0.45 * CALLS <= hits["v1"] <= 0.55 * CALLS
    for subset, target in tally.targets.items():
        cluster = mesh.cluster(target)
        assert cluster.balancer.inflight.snapshot() == {}, subset
        assert (cluster.pool.active, cluster.pool.pending) == (0, 0)
        assert cluster.pool.upstream_rq_pending_overflow == 0
        assert (cluster.budget.active_requests, cluster.budget.active_retries) == (0, 0)
        detector = cluster.balancer.detector
        assert detector is not None
        assert not any(status.ejected for status in detector.snapshot())
    assert {breaker.state for breaker in mesh.breakers().values()} == {"closed"}


def test_one_sync_client_shared_by_16_threads(upstreams: dict[str, Upstream]) -> None:
    mesh = load_mesh(upstreams)
    path = "/load/sync-16-threads"
    threads = 16
    deadline = time.monotonic() + TIME_LIMIT
    tickets = iter(range(CALLS))  # next() on a shared iterator hands out each call once

    with mesh.client() as client:

        def worker() -> Tally:
            tally = Tally()
            for _ in tickets:
                if time.monotonic() > deadline:
                    break
                try:
                    tally.add(client.get(URL + path))
                except Exception as exc:
                    tally.errors.append(repr(exc))
            return tally

        total = Tally()
        with ThreadPoolExecutor(threads) as pool:
            for tally in pool.map(lambda _: worker(), range(threads)):
                total.merge(tally)
    check(mesh, upstreams, path, total)


def test_one_async_client_shared_by_200_tasks(upstreams: dict[str, Upstream]) -> None:
    mesh = load_mesh(upstreams)
    path = "/load/async-200-tasks"
    tasks = 200

    async def run() -> Tally:
        deadline = time.monotonic() + TIME_LIMIT
        counter = itertools.count()
        total = Tally()
        async with mesh.async_client(timeout=30) as client:

            async def worker() -> None:
                while next(counter) < CALLS and time.monotonic() < deadline:
                    try:
                        total.add(await client.get(URL + path))
                    except Exception as exc:
                        total.errors.append(repr(exc))

            await asyncio.gather(*(worker() for _ in range(tasks)))
        return total

    check(mesh, upstreams, path, asyncio.run(run()))
