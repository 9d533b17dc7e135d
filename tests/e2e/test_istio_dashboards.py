"""Istio's Grafana dashboards work unmodified on the Bookinfo demo.

A real Prometheus (Debian's binary, on a free loopback port) scrapes the running demo through the
target file its launcher writes (``prometheus-targets.json``), and a load generator of its own
(a meshlib client named ``fortio``, as in Istio's tasks, whose metrics Prometheus scrapes too, as
it does an ingress gateway's) loads the product page for a few seconds through a stock
``httpx.Client`` and a stock ``httpx.AsyncClient``. Then, for every HTTP panel of Istio's Mesh,
Service and Workload dashboards (the project's table of their PromQL, ``istio_dashboards.yaml``),
the test fills the dashboard's template variables as Grafana does — each service or workload of
the demo, each reporter (``qrep``: the calling side and the called side), "All" for the rest —
runs the panel's queries as range queries and requires data: who calls whom is Bookinfo's, the
numbers are the demo's.

``test_the_table_is_istios`` checks the table against Istio's own dashboards when
``$ISTIO_DASHBOARDS`` names a folder of them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.bookinfo.walkthrough import Demo
from meshlib import Mesh
from meshlib.telemetry.metrics import recorder_of
from tests.integration.prometheus import Prometheus, scrape_config

from .dashboards import (
    FILES,
    Dashboard,
    Panel,
    fill_variables,
    http_panels,
    interpolate,
    load_table,
    variables,
)

pytestmark = pytest.mark.integration

TABLE = load_table()
MESH, SERVICE, WORKLOAD = TABLE
#: Grafana's $__rate_interval: four scrape intervals (the scrape interval is 1 s here).
BUILTINS = {"__rate_interval": "4s"}
DOMAIN = "default.svc.cluster.local"
LOAD_SECONDS = 6.0
MAX_CALLS = 600
#: Who calls whom in Bookinfo (its code): fortio is the load generator.
CALLS = {
    "fortio": {"productpage"},
    "productpage-v1": {"details", "reviews"},
    "reviews-v2": {"ratings"},
    "reviews-v3": {"ratings"},
}
WORKLOADS = ("productpage-v1", "details-v1", "reviews-v1", "reviews-v2", "reviews-v3", "ratings-v1")
SERVICES = ("productpage", "details", "reviews", "ratings")
REPORTERS = ("destination", "source")


def callers(service: str) -> set[str]:
    return {caller for caller, called in CALLS.items() if service in called}


@dataclass
class Scraped:
    prometheus: Prometheus
    start: float  # the load's start and end, epoch seconds
    end: float

    def has_data(self, promql: str) -> list[dict[str, Any]]:
        return self.prometheus.query_range(promql, self.start, self.end + 2.0)


@pytest.fixture(scope="module")
def fortio(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The load generator: a mesh client with the demo's registry and rules, and metrics."""
    folder = tmp_path_factory.mktemp("fortio")
    config = folder / "fortio.yaml"
    config.write_text(
        "apiVersion: meshlib.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: fortio}\n"
        "spec:\n"
        f"  registry: {{file: {{path: {json.dumps(str(demo.run_dir / 'registry.yaml'))}}}}}\n"
        f"  include: [{json.dumps(str(demo.run_dir / 'rules' / '*.yaml'))}]\n"
        "  telemetry: {metrics: {port: 0}}\n",
        encoding="utf-8",
    )
    mesh = Mesh.from_file(config)
    yield mesh
    mesh.close()


@pytest.fixture(scope="module")
def scraped(
    demo: Demo, fortio: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (.ci/run installs Debian's prometheus)")
    demo.reset()
    recorder = recorder_of(fortio)
    assert recorder is not None
    targets = demo.run_dir / "prometheus-targets.json"
    config = scrape_config(
        {
            "bookinfo": f"    file_sd_configs: [{{files: [{json.dumps(str(targets))}]}}]\n",
            "fortio": f"    static_configs: [{{targets: ['127.0.0.1:{recorder.port}']}}]\n",
        }
    )
    prometheus = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), config)
    try:
        prometheus.wait_ready()
        wait_for_targets(prometheus, 7)
        start = time.time()
        load(fortio)
        end = time.time()
        time.sleep(2.5)  # the last scrapes
        yield Scraped(prometheus, start, end)
    finally:
        code = prometheus.stop()
        assert code == 0, f"prometheus exited with {code}:\n{prometheus.output()}"


def wait_for_targets(prometheus: Prometheus, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        up = [t for t in prometheus.targets() if t["health"] == "up"]
        if len(up) >= count:
            return
        assert time.monotonic() < deadline, f"targets: {prometheus.targets()}"
        time.sleep(0.2)


def load(mesh: Mesh) -> None:
    """Page loads for LOAD_SECONDS (at most MAX_CALLS), from an httpx.Client in one thread and
    an httpx.AsyncClient in another."""
    url = "http://productpage:9080/productpage"
    stop = time.monotonic() + LOAD_SECONDS
    left = [MAX_CALLS]
    lock = threading.Lock()
    codes: list[int] = []

    def take() -> bool:
        with lock:
            left[0] -= 1
            return left[0] >= 0 and time.monotonic() < stop

    def sync_loop() -> None:
        with mesh.client(timeout=10) as http:
            while take():
                codes.append(http.get(url).status_code)

    async def async_loop() -> None:
        async with mesh.async_client(timeout=10) as http:
            while take():
                codes.append((await http.get(url)).status_code)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(sync_loop), pool.submit(asyncio.run, async_loop())]:
            done.result()
    assert len(codes) >= 20, f"only {len(codes)} page loads in {LOAD_SECONDS}s"
    assert set(codes) == {200}


def panel_data(
    scraped: Scraped, dashboard: Dashboard, selected: dict[str, str]
) -> dict[str, list[list[dict[str, Any]]]]:
    """Each HTTP panel's results (one per query), the dashboard's variables filled with
    ``selected`` and "All"."""
    chosen = fill_variables(dashboard, scraped.prometheus.query, selected, BUILTINS)
    queries = {q: interpolate(q, chosen, BUILTINS) for p in dashboard.panels for q in p.queries}
    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(queries, pool.map(scraped.has_data, queries.values()), strict=True))
    return {p.title + "|" + p.row: [results[q] for q in p.queries] for p in dashboard.panels}


def empty(results: dict[str, list[list[dict[str, Any]]]], panels: list[Panel]) -> list[str]:
    return [p.title for p in panels if not any(results[p.title + "|" + p.row])]


def series_labels(results: list[list[dict[str, Any]]], label: str) -> set[str]:
    """``label``'s values among the series that moved during the load (the demo is shared with
    other tests, whose callers' series are still there, at a rate of 0)."""
    return {
        row["metric"].get(label, "")
        for result in results
        for row in result
        if any(float(v) for _, v in row.get("values") or [row["value"]])
    }


# --------------------------------------------------------------------------- the dashboards


def test_the_mesh_dashboard(scraped: Scraped) -> None:
    results = panel_data(scraped, MESH, {})
    assert empty(results, list(MESH.panels)) == []
    workloads = results["HTTP/gRPC Workloads|Global Traffic"][0]
    assert series_labels([workloads], "destination_workload_var") == {
        f"{w}.default" for w in WORKLOADS
    }
    versions = results["Istio Component Versions|Istio Component Versions"][0]
    assert [row["metric"] for row in versions] == [{"component": "proxy", "tag": "meshlib-0.1.0"}]
    assert float(versions[0]["values"][-1][1]) == 7  # six services and fortio


def test_every_service_in_the_service_variable(scraped: Scraped) -> None:
    service = next(v for v in SERVICE.variables if v.name == "service")
    chosen = fill_variables(
        SERVICE, scraped.prometheus.query, {}, BUILTINS
    )  # service has no "All": its first value
    assert chosen["service"].endswith(DOMAIN)
    inner = service.query.removeprefix("query_result(").removesuffix(")")
    from .dashboards import pick, result_lines

    offered = pick(service.regex, result_lines(scraped.prometheus.query(inner)))
    assert set(offered) == {f"{s}.{DOMAIN}" for s in SERVICES}


@pytest.mark.parametrize("qrep", REPORTERS)
@pytest.mark.parametrize("service", SERVICES)
def test_the_service_dashboard(scraped: Scraped, service: str, qrep: str) -> None:
    results = panel_data(scraped, SERVICE, {"service": f"{service}.{DOMAIN}", "qrep": qrep})
    assert empty(results, list(SERVICE.panels)) == []
    # By Source: the callers by name, not "unknown"
    by_source = results["Incoming Requests By Source And Response Code|Client Workloads"]
    assert series_labels(by_source, "source_workload") == callers(service)
    by_workload = results[
        "Incoming Requests By Destination Workload And Response Code|Service Workloads"
    ]
    assert series_labels(by_workload, "destination_workload") == {
        w for w in WORKLOADS if w.startswith(service + "-")
    }


@pytest.mark.parametrize("qrep", REPORTERS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_workload_dashboard(scraped: Scraped, workload: str, qrep: str) -> None:
    results = panel_data(
        scraped, WORKLOAD, {"namespace": "default", "workload": workload, "qrep": qrep}
    )
    inbound = [p for p in WORKLOAD.panels if p.row != "Outbound Services"]
    outbound = [p for p in WORKLOAD.panels if p.row == "Outbound Services"]
    assert len(outbound) == 5
    assert empty(results, inbound) == []
    name = workload.rsplit("-", 1)[0]
    by_source = results["Incoming Requests By Source And Response Code|Inbound Workloads"]
    assert series_labels(by_source, "source_workload") == callers(name)
    if workload in CALLS:
        assert empty(results, outbound) == []
        by_destination = results[
            "Outgoing Requests By Destination And Response Code|Outbound Services"
        ]
        assert series_labels(by_destination, "destination_service") == {
            f"{s}.{DOMAIN}" for s in CALLS[workload]
        }
    else:  # it calls nobody: its outbound panels are empty, in Istio as here
        assert [p.title for p in outbound] == empty(results, outbound)


def test_the_workload_variable_offers_every_workload(scraped: Scraped) -> None:
    from .dashboards import pick, result_lines

    variable = next(v for v in WORKLOAD.variables if v.name == "workload")
    query = interpolate(variable.query, {"namespace": "default"}, BUILTINS)
    inner = query.removeprefix("query_result(").removesuffix(")")
    offered = set(pick(variable.regex, result_lines(scraped.prometheus.query(inner))))
    assert set(WORKLOADS) <= offered


# --------------------------------------------------------------------------- the table


def test_the_table_is_istios(istio_dashboards_dir: Path) -> None:
    """The project's table is the HTTP panels' PromQL of Istio's own dashboards, verbatim."""
    folder = istio_dashboards_dir
    if (folder / "manifests" / "addons" / "dashboards").is_dir():
        folder = folder / "manifests" / "addons" / "dashboards"
    for dashboard in TABLE:
        assert dashboard.file in FILES
        data = json.loads((folder / dashboard.file).read_text(encoding="utf-8"))
        assert dashboard.title == data["title"]
        assert [
            {"title": p.title, "row": p.row, "queries": list(p.queries)} for p in dashboard.panels
        ] == http_panels(data), dashboard.file
        ours = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(var).items()}
            for var in dashboard.variables
        ]
        for entry in ours:
            if entry["type"] != "custom":
                entry.pop("options")
        assert ours == variables(data), dashboard.file
