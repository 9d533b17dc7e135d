"""``meshctl dashboard --prometheus``: the page's numbers from PromQL, against Debian's
``prometheus`` (started by the test on a free loopback port) scraping the Bookinfo demo's
services through the demo's own target file; revisions and traces still from the services' admin
endpoints. And the quantiles the admin mode computes itself are Prometheus' own."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.bookinfo.walkthrough import Demo
from meshlib.dashboard.model import histogram_quantile
from tests.integration.prometheus import Prometheus, scrape_config

from .dashboard_process import DashboardProcess, Load

pytestmark = pytest.mark.integration

EDGES = [
    ("productpage-v1", "details-v1"),
    ("productpage-v1", "reviews-v1"),
    ("productpage-v1", "reviews-v2"),
    ("productpage-v1", "reviews-v3"),
    ("reviews-v2", "ratings-v1"),
    ("reviews-v3", "ratings-v1"),
]


@pytest.fixture
def prometheus(demo: Demo, tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (.ci/run installs Debian's prometheus)")
    targets = demo.run_dir / "prometheus-targets.json"
    job = f"    file_sd_configs: [{{files: ['{targets}'], refresh_interval: 1s}}]\n"
    server = Prometheus(binary, tmp_path, scrape_config({"bookinfo": job}))
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"prometheus exited with {code}:\n{server.output()}"


def view_until(url: str, ready: Any, what: str, timeout: float = 90.0) -> dict[str, Any]:
    """``GET /api/mesh`` until ``ready(view)`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = httpx.get(url + "api/mesh", timeout=5).json()
        if ready(view):
            return view
        time.sleep(0.5)
    raise AssertionError(f"{what}: the page never showed it; last view:\n{view}")


def edges_of(view: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (e["source"].split("/", 1)[1], e["destination"].split("/", 1)[1]): e for e in view["edges"]
    }


def test_the_graph_from_prometheus(demo: Demo, samples: Path, prometheus: Prometheus) -> None:
    demo.reset()
    dashboard = DashboardProcess(
        "--bookinfo",
        str(demo.run_dir),
        "--prometheus",
        prometheus.url,
        "--interval",
        "1",
        "--window",
        "10",
    )
    load = Load(demo)
    try:

        def live(view: dict[str, Any]) -> bool:
            found = edges_of(view)
            return all((found.get(edge) or {}).get("rate") for edge in EDGES)

        view = view_until(dashboard.url, live, "every Bookinfo edge with a rate")
        assert view["mode"] == "prometheus"
        assert view["source"].startswith(f"Prometheus at {prometheus.url}")
        assert view["problems"] == []
        found = edges_of(view)
        for edge in EDGES:
            assert found[edge]["status"] == "ok", (edge, found[edge])
            assert found[edge]["mtls"] == 1.0, (edge, found[edge])
            p50, p99 = found[edge]["p50"], found[edge]["p99"]
            assert p50 is not None, found[edge]
            assert p99 is not None, found[edge]
            assert p50 <= p99
        assert ("reviews-v1", "ratings-v1") not in found
        routes = {(r["workload"], r["destination"].split(".")[0]) for r in view["routes"]}
        assert ("productpage-v1", "reviews") in routes
        # the revisions still come from the services themselves
        assert [s["state"] for s in view["services"]] == ["up"] * 6
        assert all(s["revision"] == s["expected_revision"] for s in view["services"])
        assert all(s["metrics"] == "unknown" for s in view["services"])  # not scraped by us
        load.stop()

        demo.apply(samples / "virtual-service-all-v1.yaml")
        demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
        demo.apply(samples / "virtual-service-ratings-test-abort.yaml")
        load = Load(demo, user="jason")

        def red(view: dict[str, Any]) -> bool:
            edge = edges_of(view).get(("reviews-v2", "ratings-v1")) or {}
            return edge.get("status") == "failing"

        view = view_until(dashboard.url, red, "the ratings edge failing")
        assert edges_of(view)[("reviews-v2", "ratings-v1")]["error_rate"] >= 0.2
    finally:
        load.stop()
        assert dashboard.stop() == 0
        demo.reset()
    assert not [line for line in dashboard.errors if "Traceback" in line]


def test_the_admin_modes_quantiles_are_prometheus_own(demo: Demo, prometheus: Prometheus) -> None:
    load = Load(demo, seconds=60)
    selector = 'istio_request_duration_milliseconds_bucket{reporter="source"}'
    try:
        deadline = time.monotonic() + 60
        while True:
            at = time.time()
            rates = prometheus.query(f"sum by (le) (rate({selector}[15s]))", at=at)
            if rates and any(float(r["value"][1]) > 0 for r in rates):
                break
            assert time.monotonic() < deadline, prometheus.output()
            time.sleep(0.5)
    finally:
        load.stop()
    buckets = {float(r["metric"]["le"]): float(r["value"][1]) for r in rates}
    for q in (0.5, 0.9, 0.99):
        [answer] = prometheus.query(
            f"histogram_quantile({q}, sum by (le) (rate({selector}[15s])))", at=at
        )
        theirs = float(answer["value"][1])
        ours = histogram_quantile(q, buckets)
        assert ours is not None, (q, buckets)
        assert math.isclose(ours, theirs, rel_tol=1e-9), (q, ours, theirs)
