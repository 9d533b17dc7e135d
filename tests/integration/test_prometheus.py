"""A real Prometheus server scrapes a mesh's metrics and answers PromQL written for Istio.

The test starts Debian's ``prometheus`` on 127.0.0.1 with a one-second scrape interval and the
mesh's own scrape server as its only target, sends a known number of calls to each version of
``reviews`` through a stock ``httpx.Client`` and a stock ``httpx.AsyncClient``, and polls
Prometheus' HTTP API (bounded) until the query an Istio dashboard would run returns those counts.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib.telemetry import metrics
from meshlib.testing import Upstreams, in_memory_mesh

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Prometheus:
    """A Prometheus server of this test's own, scraping one target every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: meshlib\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n",
            encoding="utf-8",
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.output()}")
            time.sleep(0.1)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through ``/api/v1/query``: the result vector."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=5)
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        finally:
            self.log.close()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")[-4000:]


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
    server = Prometheus(binary, tmp_path, f"127.0.0.1:{recorder.port}")
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
