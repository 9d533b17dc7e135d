"""A real Prometheus server scrapes a mesh's metrics and answers PromQL written for Istio.

The test starts Debian's ``prometheus`` on 127.0.0.1 with a one-second scrape interval and the
mesh's own scrape server as its only target, sends a known number of calls to each version of
``reviews`` through a stock ``httpx.Client`` and a stock ``httpx.AsyncClient``, and polls
Prometheus' HTTP API (bounded) until the query an Istio dashboard would run returns those counts.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshlib import Mesh
from meshlib.telemetry import metrics
from meshlib.testing import Upstreams, in_memory_mesh

from .prometheus import Prometheus, scrape_config

pytestmark = pytest.mark.integration

REVIEWS = "http://reviews:9080/reviews/0"

CONFIG = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  version: v1
  telemetry:
    metrics: {port: 0}
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
  - match: [{headers: {x-version: {exact: v2}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    upstreams = Upstreams()
    upstreams.endpoint("reviews", "v1")
    upstreams.endpoint("reviews", "v2")
    built = in_memory_mesh(CONFIG, upstreams)
    yield built
    built.close()


@pytest.fixture
def prometheus(tmp_path: Path, mesh: Mesh) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (.ci/run installs Debian's prometheus)")
    recorder = metrics.recorder_of(mesh)
    assert recorder is not None
    assert recorder.port is not None
    targets = f"    static_configs: [{{targets: ['127.0.0.1:{recorder.port}']}}]\n"
    server = Prometheus(binary, tmp_path, scrape_config({"meshlib": targets}))
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"prometheus exited with {code}:\n{server.output()}"


def send_calls(mesh: Mesh, v1: int, v2: int) -> None:
    """``v1`` + ``v2`` calls through each of httpx.Client and httpx.AsyncClient."""
    with mesh.client() as client:
        for _ in range(v1):
            assert client.get(REVIEWS).status_code == 200
        for _ in range(v2):
            assert client.get(REVIEWS, headers={"x-version": "v2"}).status_code == 200

    async def send_async() -> None:
        async with mesh.async_client() as client:
            for _ in range(v1):
                assert (await client.get(REVIEWS)).status_code == 200
            for _ in range(v2):
                response = await client.get(REVIEWS, headers={"x-version": "v2"})
                assert response.status_code == 200

    asyncio.run(send_async())


def test_prometheus_counts_requests_by_destination_version(
    mesh: Mesh, prometheus: Prometheus
) -> None:
    send_calls(mesh, v1=15, v2=10)  # twice over: 30 to v1, 20 to v2

    promql = 'sum by (destination_version) (istio_requests_total{reporter="source"})'
    expected = {"v1": 30.0, "v2": 20.0}
    deadline = time.monotonic() + 30
    seen: dict[str, float] = {}
    while seen != expected:
        assert time.monotonic() < deadline, (
            f"Prometheus still answers {seen} for {promql}; targets: {prometheus.targets()}\n"
            f"{prometheus.output()}"
        )
        time.sleep(0.25)
        seen = {
            row["metric"].get("destination_version", ""): float(row["value"][1])
            for row in prometheus.query(promql)
        }

    [count] = prometheus.query(
        'sum(istio_request_duration_milliseconds_count{reporter="source",'
        'destination_service_name="reviews"})'
    )
    assert float(count["value"][1]) == 50
    [target] = prometheus.targets()
    assert target["health"] == "up"
