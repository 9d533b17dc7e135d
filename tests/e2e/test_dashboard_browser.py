"""The live mesh page (``meshctl dashboard``) in a real browser (Debian's Chromium, see
``chromium.py``), served by the command itself, run as a user runs it.

* 200 synthetic services behind one server (``synthetic_mesh.py``), with markup for names, two
  services that stop answering and two that never answer: every service is drawn, the markup
  shows as text and never runs, the silent ones show stale, and the page keeps refreshing.
* The Bookinfo demo under load: the graph shows productpage → details, productpage → reviews
  v1/v2/v3 and reviews v2/v3 → ratings with live rates; after Istio's abort step (all-v1,
  reviews-test-v2, ratings-test-abort, loading as jason) the ratings edge turns red. The
  screenshots go to ``$BOOKINFO_SCREENSHOTS`` too (``make screenshots``: ``docs/images``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.bookinfo.walkthrough import Demo

from .chromium import Shots
from .dashboard_process import DashboardProcess, Load
from .synthetic_mesh import (
    HOSTILE_ERROR,
    HOSTILE_HEADER,
    HOSTILE_NAME,
    HOSTILE_ROUTE,
    HOSTILE_SPAN,
    HOSTILE_VERSION,
    SyntheticMesh,
    closed_port,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def until(browser: Any, what: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.25).until(what)


def nodes(browser: Any) -> dict[str, dict[str, str]]:
    """Each node of the graph: its classes, state, workload and the texts shown in it."""
    found: dict[str, dict[str, str]] = browser.execute_script(
        """
        const out = {};
        for (const g of document.querySelectorAll('#nodes g.node')) {
          out[g.dataset.id] = {
            class: g.getAttribute('class'), state: g.dataset.state,
            workload: g.dataset.workload,
            name: g.querySelector('.name').textContent, sub: g.querySelector('.sub').textContent,
          };
        }
        return out;
        """
    )
    return found


def edges(browser: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Each edge of the graph, by (source, destination): classes, rate, error rate, mTLS."""
    found: list[dict[str, Any]] = browser.execute_script(
        """
        return [...document.querySelectorAll('#edges g.edge')].map((g) => ({
          source: g.dataset.source, destination: g.dataset.destination,
          class: g.getAttribute('class'), status: g.dataset.status,
          rate: g.dataset.rate === '' ? null : Number(g.dataset.rate),
          error_rate: g.dataset.errorRate === '' ? null : Number(g.dataset.errorRate),
          mtls: g.dataset.mtls === '' ? null : Number(g.dataset.mtls),
        }));
        """
    )
    return {(e["source"], e["destination"]): e for e in found}


def next_poll(browser: Any) -> None:
    """Until the page shows the dashboard's next poll."""
    script = "return document.body.dataset.generatedAt"
    seen = browser.execute_script(script)
    until(browser, lambda driver: driver.execute_script(script) != seen)


# --------------------------------------------------------------------------- synthetic


@pytest.fixture
def synthetic() -> Iterator[SyntheticMesh]:
    mesh = SyntheticMesh(200, down_after={5: 3, 6: 3})
    yield mesh
    mesh.close()


def test_200_services_with_markup_for_names_and_silent_ones(
    browser: Any, synthetic: SyntheticMesh, tmp_path: Path
) -> None:
    never = [f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"]
    dashboard = DashboardProcess(
        *(arg for url in [*synthetic.urls(), *never] for arg in ("--admin", url)),
        "--interval",
        "1",
        "--window",
        "10",
    )
    try:
        browser.set_window_size(1400, 1000)
        browser.get(dashboard.url)
        assert browser.title == "meshlib · live mesh"

        def drawn(driver: Any) -> dict[str, dict[str, str]] | None:
            found = nodes(driver)
            gone = [found.get(f"default/svc-00{i}-v1", {}) for i in (5, 6)]
            ready = len(found) == 202 and all(n.get("state") == "stale" for n in gone)
            return found if ready else None

        shown = until(browser, drawn)
        shot = tmp_path / "dashboard-200-services.png"
        assert browser.save_screenshot(str(shot))

        # every service drawn, the silent ones stale: "last seen" when they once answered
        assert sum(1 for n in shown.values() if n["state"] == "up") == 198
        for index in (5, 6):
            node = shown[f"default/svc-00{index}-v1"]
            assert "stale" in node["class"].split()
            assert node["sub"].startswith("stale · last seen ")
            assert node["sub"] != "stale · last seen never"
        for url in never:
            node = shown[f"default/{url}"]
            assert (node["state"], node["sub"]) == ("stale", "stale · last seen never")

        # every edge of the tree, live; the one into svc-003 failing; those of svc-005 stale
        def all_edges(driver: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
            found = edges(driver)
            live = all(e["rate"] for (source, _), e in found.items() if "svc-005" not in source)
            return found if len(found) == 199 and live else None

        drawn_edges = until(browser, all_edges)
        failing = [k for k, e in drawn_edges.items() if e["status"] == "failing"]
        assert failing == [(f"default/{synthetic.workload(1)}", "default/svc-003-v1")]
        assert "stale" in drawn_edges[("default/svc-005-v1", "default/svc-011-v1")]["class"]

        # markup from the mesh is text on the page, never markup: nothing ran, nothing was made
        assert browser.execute_script("return window.__pwned === undefined")
        made = browser.execute_script(
            "return [document.scripts.length, document.images.length,"
            " document.querySelectorAll('svg').length,"
            " document.querySelectorAll('iframe,b').length]"
        )
        assert made == [1, 0, 1, 0]
        root = shown[f"default/{synthetic.workload(0)}"]
        assert root["workload"] == f"{HOSTILE_NAME}-v1"
        assert root["name"] == (f"{HOSTILE_NAME}-v1")[:18] + "…"
        texts = browser.execute_script(
            "return [...document.querySelectorAll('#services-table td, #routes-table td,"
            " #ejections-table td, #breakers-table td, #traces summary, #traces .label')]"
            ".map((e) => e.textContent)"
        )
        assert HOSTILE_NAME in texts
        assert HOSTILE_VERSION in texts
        assert f"default/{HOSTILE_ROUTE}" in texts  # a VirtualService's name
        assert HOSTILE_ROUTE in texts  # an ejected endpoint
        assert any(HOSTILE_ERROR in t for t in texts)  # a config error
        assert any(t.startswith(HOSTILE_SPAN) for t in texts)  # a span's name
        title = browser.execute_script("return document.querySelector('#traces .label').title")
        assert f"http.request.header.end-user={HOSTILE_HEADER}" in title.split("\n")

        # the page keeps refreshing, with 202 services
        next_poll(browser)
        assert len(nodes(browser)) == 202
        assert (
            browser.execute_script("return document.getElementById('updated').dataset.state")
            == "live"
        )
        rows = browser.execute_script(
            "return document.querySelectorAll('#services-table tbody tr').length"
        )
        assert rows == 202
    finally:
        assert dashboard.stop() == 0
    assert not [line for line in dashboard.errors if "Traceback" in line]


def test_the_page_says_when_its_server_goes_away(browser: Any, synthetic: SyntheticMesh) -> None:
    dashboard = DashboardProcess("--admin", synthetic.url(7), "--interval", "1", "--window", "5")
    try:
        browser.get(dashboard.url)
        until(browser, lambda d: len(nodes(d)) == 3)
    finally:
        assert dashboard.stop() == 0
    state = until(
        browser,
        lambda d: d.execute_script(
            "const u = document.getElementById('updated');"
            " return u.dataset.state === 'unreachable' ? u.textContent : null"
        ),
    )
    assert state == "the dashboard server does not answer: showing the last data"
    assert len(nodes(browser)) == 3  # the last data stays


# --------------------------------------------------------------------------- Bookinfo


def test_bookinfo_under_load_and_the_abort_step(
    browser: Any, demo: Demo, samples: Path, tmp_path: Path
) -> None:
    shots = Shots(tmp_path, prefix="dashboard")
    demo.reset()
    dashboard = DashboardProcess(
        "--bookinfo", str(demo.run_dir), "--interval", "1", "--window", "8"
    )
    load = Load(demo)
    try:
        browser.set_window_size(1400, 1050)
        browser.get(dashboard.url)
        expected = [
            ("productpage-v1", "details-v1"),
            ("productpage-v1", "reviews-v1"),
            ("productpage-v1", "reviews-v2"),
            ("productpage-v1", "reviews-v3"),
            ("reviews-v2", "ratings-v1"),
            ("reviews-v3", "ratings-v1"),
        ]
        keys = [(f"default/{a}", f"default/{b}") for a, b in expected]

        def live(driver: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
            found = edges(driver)
            ready = all(k in found and (found[k]["rate"] or 0) > 0 for k in keys)
            return found if ready else None

        found = until(browser, live, timeout=90)
        for key in keys:
            assert found[key]["status"] == "ok", (key, found[key])
            assert found[key]["mtls"] == 1.0, (key, found[key])  # the demo runs mutual TLS
        assert ("default/reviews-v1", "default/ratings-v1") not in found  # v1 calls no ratings
        shown = nodes(browser)
        workloads = {f"default/{w}" for edge in expected for w in edge}
        assert {shown[w]["state"] for w in workloads} == {"up"}  # every one answers
        # other callers earlier in the session (a mesh of a test's own) are drawn from metrics
        assert {n["state"] for k, n in shown.items() if k not in workloads} <= {"observed"}
        revisions = browser.execute_script(
            "return [...document.querySelectorAll('#services-table tbody tr')]"
            ".map((tr) => tr.children[4].textContent)"
        )
        assert len(revisions) == 6
        assert all(r.endswith("(its files' config)") for r in revisions), revisions
        shots.take(browser, "bookinfo-live")
        load.stop()

        # Istio's abort step, as the walkthrough takes it, then load as jason
        demo.apply(samples / "virtual-service-all-v1.yaml")
        demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
        demo.apply(samples / "virtual-service-ratings-test-abort.yaml")
        load = Load(demo, user="jason")
        ratings = ("default/reviews-v2", "default/ratings-v1")

        def red(driver: Any) -> dict[str, Any] | None:
            edge = edges(driver).get(ratings)
            return edge if edge is not None and edge["status"] == "failing" else None

        edge = until(browser, red, timeout=90)
        assert edge["error_rate"] >= 0.2
        assert "failing" in edge["class"].split()
        stroke = browser.execute_script(
            "return getComputedStyle(document.querySelector('#edges g.edge"
            '[data-source="default/reviews-v2"][data-destination="default/ratings-v1"]'
            " path')).stroke"
        )
        assert stroke == "rgb(209, 26, 42)"  # red
        label = browser.execute_script(
            "return document.querySelector('#edge-labels g.edge-label.failing text').textContent"
        )
        assert "% err" in label.split(" · ")[1]
        route = browser.execute_script(
            "return [...document.querySelectorAll('#routes-table tbody tr.failing')]"
            ".map((tr) => [...tr.children].map((td) => td.textContent))"
        )
        assert any(r[0] == "reviews-v2" and r[1] == "default/ratings" for r in route), route
        shots.take(browser, "bookinfo-ratings-abort")

        # the call tree of a recent trace: jason's page load, productpage to reviews v2
        load.stop()
        for _ in range(2):  # a poll that started after the last page load was answered
            next_poll(browser)
        browser.execute_script(
            "document.querySelector('#traces details summary').click();"
            "document.getElementById('routes-section').scrollIntoView();"
        )
        rows = until(
            browser,
            lambda d: (
                d.execute_script(
                    "return [...document.querySelectorAll('#traces details[open] .tree li')]"
                    ".map((li) => [parseFloat(li.querySelector('.label').style.paddingLeft),"
                    " li.querySelector('.kind').textContent,"
                    " li.querySelectorAll('.service')[0].textContent, li.className])"
                )
                or None
            ),
        )
        depths = {service: depth for depth, _, service, _ in reversed(rows)}
        assert depths["productpage"] == 0, rows
        assert depths.get("reviews") == 2.4, (
            rows
        )  # SERVER under productpage's CLIENT span, 1.2em a level
        assert {"SERVER", "CLIENT"} <= {kind for _, kind, _, _ in rows}
        shots.take(browser, "bookinfo-traces")
    finally:
        load.stop()
        assert dashboard.stop() == 0
        demo.reset()
    assert not [line for line in dashboard.errors if "Traceback" in line]
    for shot in shots.taken:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
