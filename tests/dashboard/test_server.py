"""The page's server on 127.0.0.1: the page's own files and nothing from elsewhere, its JSON, the
headers that keep it to itself, and the poller that feeds it (admin endpoints on
``httpx.MockTransport``, a fake clock)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser

import httpx
import pytest

from meshlib.dashboard.model import Target
from meshlib.dashboard.server import STATIC, Dashboard, PageServer, static_files
from meshlib.testing import FakeClock

METRICS = (
    'istio_requests_total{reporter="source",source_workload="productpage-v1",'
    'source_workload_namespace="default",destination_workload="reviews-v1",'
    'destination_workload_namespace="default",response_code="200"} %d\n'
)


class Listed:
    """Targets named by the test, changed by assigning ``listed``."""

    def __init__(self, *urls: str) -> None:
        self.listed = [Target(u, u.split("//")[1].split(".")[0], "v1") for u in urls]
        self.problem: str | None = None

    def targets(self) -> Sequence[Target]:
        return self.listed

    def tls(self) -> ssl.SSLContext | None:
        return None

    def expected(self, target: Target) -> str | None:
        return None

    def describe(self) -> str:
        return f"{len(self.listed)} test service(s)"


class Mesh:
    """Admin endpoints behind one MockTransport: ``down`` ones refuse connections, the
    productpage's counter grows by 10 at each scrape."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.count = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("refused", request=request)
        if host == "broken":
            raise RuntimeError("a bug in the transport")
        name = host.split(".")[0]
        part = request.url.path.rsplit("/", 1)[-1]
        if part == "config":
            return httpx.Response(200, json={"service": name, "version": "v1", "digest": "d1"})
        if part == "metrics":
            if name != "productpage":
                return httpx.Response(404)
            self.count += 10
            return httpx.Response(200, text=METRICS % self.count)
        return httpx.Response(404)


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dashboard(mesh: Mesh, clock: FakeClock) -> Iterator[Dashboard]:
    built = Dashboard(
        Listed("http://productpage.test", "http://reviews.test"),
        interval=2,
        window=30,
        clock=clock,
        transport=httpx.MockTransport(mesh.handle),
    )
    yield built
    built.close()


@pytest.fixture
def server(dashboard: Dashboard) -> Iterator[PageServer]:
    page = PageServer(dashboard, "127.0.0.1", 0)
    thread = threading.Thread(target=page.serve_forever, daemon=True)
    thread.start()
    yield page
    page.shutdown()
    page.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------- the poller


def test_polls_turn_successive_scrapes_into_rates(
    dashboard: Dashboard, mesh: Mesh, clock: FakeClock
) -> None:
    first = dashboard.poll()
    assert [e["rate"] for e in first["edges"]] == [None]  # one scrape: no rate yet
    clock.advance(2)
    second = dashboard.poll()

    [edge] = second["edges"]
    assert (edge["source"], edge["destination"]) == ("default/productpage-v1", "default/reviews-v1")
    assert edge["rate"] == 5.0  # 10 more requests in 2 s
    assert {s["name"]: s["state"] for s in second["services"]} == {
        "productpage": "up",
        "reviews": "up",
    }
    assert {s["name"]: s["metrics"] for s in second["services"]} == {
        "productpage": "on",
        "reviews": "off",
    }
    assert dashboard.polls == 2
    assert httpx.Response(200, content=dashboard.view()).json() == second


def test_a_service_that_goes_down_stays_on_the_page_stale(
    dashboard: Dashboard, mesh: Mesh, clock: FakeClock
) -> None:
    dashboard.poll()
    clock.advance(2)
    mesh.down.add("reviews.test")

    view = dashboard.poll()

    services = {s["name"]: s for s in view["services"]}
    assert services["reviews"]["state"] == "stale"
    assert services["reviews"]["last_seen"] == clock.wall() - 2
    assert services["reviews"]["error"] == "connection refused or failed"
    assert services["reviews"]["revision"] == "d1"
    assert {n["id"]: n["state"] for n in view["nodes"]}["default/reviews-v1"] == "stale"

    mesh.down.clear()
    clock.advance(2)
    assert {s["name"]: s["state"] for s in dashboard.poll()["services"]}["reviews"] == "up"


def test_a_bug_polling_one_service_leaves_the_others(dashboard: Dashboard) -> None:
    dashboard.targets.listed.append(Target("http://broken", "broken", "v1"))  # type: ignore[attr-defined]

    view = dashboard.poll()

    services = {s["name"]: s for s in view["services"]}
    assert services["broken"]["state"] == "stale"
    assert services["broken"]["error"] == "RuntimeError: a bug in the transport"
    assert services["productpage"]["state"] == "up"


def test_services_no_longer_listed_are_forgotten_and_problems_shown(
    dashboard: Dashboard,
) -> None:
    dashboard.poll()
    targets: Listed = dashboard.targets  # type: ignore[assignment]
    targets.listed = targets.listed[:1]
    targets.problem = "no Bookinfo demo runs from /x (no bookinfo.json)"

    view = dashboard.poll()

    assert [s["name"] for s in view["services"]] == ["productpage"]
    assert view["problems"] == ["no Bookinfo demo runs from /x (no bookinfo.json)"]


def test_prometheus_that_does_not_answer_is_a_problem_not_a_crash(
    mesh: Mesh, clock: FakeClock
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    dashboard = Dashboard(
        Listed("http://productpage.test"),
        prometheus=f"http://127.0.0.1:{port}",
        clock=clock,
        transport=httpx.MockTransport(mesh.handle),
        timeout=1,
    )
    try:
        view = dashboard.poll()
    finally:
        dashboard.close()

    assert view["mode"] == "prometheus"
    assert view["problems"] == [
        f"Prometheus at http://127.0.0.1:{port}: connection refused or failed"
    ]
    assert mesh.count == 0  # the services' metrics are Prometheus' business in this mode
    assert [s["state"] for s in view["services"]] == ["up"]


def test_run_polls_until_stopped(dashboard: Dashboard) -> None:
    stop = threading.Event()
    dashboard.interval = 0.01
    thread = threading.Thread(target=dashboard.run, args=(stop,))
    thread.start()
    try:
        for _ in range(200):
            if dashboard.polls >= 2:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert dashboard.polls >= 2


# --------------------------------------------------------------------------- the page


def get(server: PageServer, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.port}{path}", headers=headers, timeout=5)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append(value)


def test_the_page_loads_only_its_own_files(server: PageServer) -> None:
    page = get(server, "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    parser = _Links()
    parser.feed(page.text)
    assert sorted(parser.links) == ["dashboard.css", "dashboard.js", "data:,"]

    loaded = {"/": page}
    for link in parser.links:
        if link.startswith("data:"):
            continue
        response = get(server, "/" + link)
        assert response.status_code == 200, link
        loaded[link] = response
    assert loaded["dashboard.js"].headers["content-type"].startswith("text/javascript")
    assert loaded["dashboard.css"].headers["content-type"].startswith("text/css")
    for name, response in loaded.items():
        # no URL of anywhere else in anything the page loads; relative paths only
        assert not re.search(r"https?://", response.text, re.IGNORECASE), name
        assert not re.search(r"[\"'`(=]\s*//", response.text), name  # nor protocol-relative
    script = loaded["dashboard.js"].text
    for markup in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert markup not in script
    assert 'fetch("api/mesh"' in script


def test_every_answer_carries_a_policy_that_allows_this_origin_only(server: PageServer) -> None:
    for path in ("/", "/dashboard.js", "/api/mesh", "/missing"):
        response = get(server, path)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy
        assert "connect-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


def test_the_json_is_the_latest_view(server: PageServer, dashboard: Dashboard) -> None:
    before = get(server, "/api/mesh").json()
    assert before["services"] == []  # not polled yet

    dashboard.poll()
    after = get(server, "/api/mesh")

    assert after.headers["content-type"] == "application/json"
    assert [s["name"] for s in after.json()["services"]] == ["productpage", "reviews"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/../meshlib/dashboard/server.py", 404),
        ("/static/index.html", 404),
        ("/server.py", 404),
        ("/%2e%2e/etc/passwd", 404),
        ("/index.html?x=1", 200),
        ("/api/mesh?since=0", 200),
    ],
)
def test_only_the_pages_files_are_served(server: PageServer, path: str, status: int) -> None:
    assert get(server, path).status_code == status


def test_a_request_for_another_host_is_refused(server: PageServer) -> None:
    assert get(server, "/", host=f"localhost:{server.port}").status_code == 200
    assert get(server, "/", host=f"[::1]:{server.port}").status_code == 200
    for host in (
        f"evil.example:{server.port}",  # DNS rebinding: a name that resolves to 127.0.0.1
        "127.0.0.1:1",
        "127.0.0.1",
        f"127.0.0.1.evil.example:{server.port}",
    ):
        response = get(server, "/api/mesh", host=host)
        assert response.status_code == 421, host
        assert "services" not in response.text


def test_other_methods_and_head(server: PageServer) -> None:
    url = f"http://127.0.0.1:{server.port}/api/mesh"
    assert httpx.post(url, content=b"x").status_code == 405
    assert httpx.delete(url).status_code == 405
    head = httpx.head(f"http://127.0.0.1:{server.port}/")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(static_files()["index.html"])
    assert head.content == b""


def test_the_package_ships_the_page() -> None:
    files = static_files()
    assert sorted(files) == sorted(STATIC)
    assert b'<svg id="graph"' in files["index.html"]
