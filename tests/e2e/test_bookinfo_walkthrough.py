"""Istio's Bookinfo tasks on meshlib, end to end: the demo's six processes on 127.0.0.1, rules
changed with ``meshctl bookinfo`` (a process of its own) while they run, and the product page
loaded as a browser would — through a stock ``httpx.Client`` and a stock ``httpx.AsyncClient``,
signed in as jason or not. Each test starts from ``meshctl bookinfo reset``.

The steps are ``examples/bookinfo/walkthrough.py``'s (the script prints them); the asserts here
say what Istio's task pages tell the user to expect. Timing bounds are loose on purpose.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from examples.bookinfo import walkthrough
from examples.bookinfo.walkthrough import REVIEWS_ERROR, Demo, Step

from .conftest import ROOT

pytestmark = pytest.mark.integration

BLACK = [(5, "black"), (4, "black")]
RED = [(5, "red"), (4, "red")]


def assert_ok(step: Step) -> None:
    assert step.ok, "\n".join(step.seen)


def test_no_rules_alternates_between_v1_v2_and_v3(demo: Demo) -> None:
    step = walkthrough.step_no_rules(demo)
    assert_ok(step)
    for pages in step.pages.values():
        seen = {p.version: p.stars for p in pages}
        assert seen == {"v1": [], "v2": BLACK, "v3": RED}


def test_all_v1_never_shows_stars(demo: Demo, samples: Path) -> None:
    step = walkthrough.step_all_v1(demo, samples)
    assert_ok(step)
    assert len(step.pages) == 4  # anonymous and jason, each through both clients
    for pages in step.pages.values():
        assert {p.version for p in pages} == {"v1"}
        assert all(p.stars == [] for p in pages)


def test_reviews_test_v2_shows_jason_black_stars(demo: Demo, samples: Path) -> None:
    step = walkthrough.step_test_v2(demo, samples)
    assert_ok(step)
    for name, pages in step.pages.items():
        if name.startswith("jason"):
            assert {p.version for p in pages} == {"v2"}
            assert all(p.stars == BLACK and p.empty_stars == 1 for p in pages)
            assert all(p.user == "jason" for p in pages)
        else:
            assert {p.version for p in pages} == {"v1"}
            assert all(p.stars == [] for p in pages)


def test_ratings_delay_breaks_jasons_page_after_about_6s(demo: Demo, samples: Path) -> None:
    step = walkthrough.step_delay(demo, samples)
    assert_ok(step)
    for name in ("jason (httpx.Client)", "jason (httpx.AsyncClient)"):
        (page,) = step.pages[name]
        assert page.reviews_error == REVIEWS_ERROR
        assert page.details_error is None
        assert 5.5 <= page.seconds < 9.0  # 3 s + 1 retry in productpage, not the 7 s delay
    for name in ("anonymous (httpx.Client)", "anonymous (httpx.AsyncClient)"):
        assert all(p.version == "v1" and p.seconds < 2.0 for p in step.pages[name])


def test_jason_on_v3_survives_a_2s_delay(demo: Demo, rules: dict[str, Path]) -> None:
    step = walkthrough.step_delay_fixed(demo, rules)
    assert_ok(step)
    for pages in step.pages.values():
        (page,) = pages
        assert page.version == "v3"
        assert page.stars == RED
        assert 1.9 <= page.seconds < 4.0


def test_ratings_abort_shows_jason_the_ratings_error(demo: Demo, samples: Path) -> None:
    step = walkthrough.step_abort(demo, samples)
    assert_ok(step)
    for name, pages in step.pages.items():
        for page in pages:
            if name.startswith("jason"):
                assert page.version == "v2"
                assert page.ratings_errors == ["Ratings service is currently unavailable"] * 2
                assert page.stars == []
            else:
                assert page.version == "v1"
                assert page.ratings_errors == []


def test_fifty_fifty_shows_red_stars_about_half_the_time(demo: Demo, samples: Path) -> None:
    step = walkthrough.step_shift_50(demo, samples, loads=100)
    assert_ok(step)
    for pages in step.pages.values():
        red = sum(1 for p in pages if p.stars == RED)
        assert 30 <= red <= 70
        assert all(p.stars in (RED, []) for p in pages)


def test_all_v3_always_shows_red_stars(demo: Demo, samples: Path) -> None:
    step = walkthrough.step_all_v3(demo, samples)
    assert_ok(step)
    for pages in step.pages.values():
        assert all(p.version == "v3" and p.stars == RED for p in pages)


def test_request_timeout_returns_in_about_1s(
    demo: Demo, samples: Path, rules: dict[str, Path]
) -> None:
    step = walkthrough.step_request_timeout(demo, samples, rules)
    assert_ok(step)
    for name, pages in step.pages.items():
        (page,) = pages
        if name.endswith("delay"):
            assert page.stars == BLACK
            assert 1.9 <= page.seconds < 3.5
        else:
            assert page.reviews_error == REVIEWS_ERROR
            assert 0.9 <= page.seconds < 2.5  # 0.5 s + productpage's retry, not 0.5 s


def test_circuit_breaking_trips_some_calls_with_uo(demo: Demo, rules: dict[str, Path]) -> None:
    step = walkthrough.step_circuit_breaking(demo, rules)
    assert_ok(step)
    assert len(step.seen) == 2  # httpx.Client and httpx.AsyncClient


def test_routes_shows_the_rules_and_every_service_in_sync(demo: Demo, samples: Path) -> None:
    demo.reset()
    applied = demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
    assert applied.splitlines()[0] == "VirtualService default/reviews created"
    out = demo.meshctl("routes")
    assert "      http[0] end-user = jason -> reviews v2" in out
    assert "      from virtual-service-reviews-test-v2.yaml" in out
    assert out.count("in sync") == 6
    assert "STALE" not in out


def test_a_bad_rule_file_changes_nothing(demo: Demo, samples: Path, tmp_path: Path) -> None:
    demo.reset()
    demo.apply(samples / "virtual-service-reviews-v3.yaml")
    bad = tmp_path / "bad.yaml"
    text = (samples / "virtual-service-reviews-v3.yaml").read_text()
    bad.write_text(text.replace("subset: v3}", "subset: v3}\n      weight: -5"))
    with pytest.raises(RuntimeError, match=r"bad\.yaml:\d+: spec.http\[0\].route\[0\].weight"):
        demo.apply(bad)
    page = walkthrough.Visitor(demo.base_url, "sync").load()
    assert page.stars == RED


def test_the_page_itself(demo: Demo) -> None:
    demo.reset()
    with httpx.Client(base_url=demo.base_url) as http:
        page = http.get("/productpage")
        assert page.status_code == 200
        assert "<title>Simple Bookstore App</title>" in page.text
        assert "The Comedy of Errors" in page.text
        assert "<dt>ISBN-10</dt><dd>1234567890</dd>" in page.text
        assert 'id="login"' in page.text
        login = http.post("/login", data={"username": "jason"})
        assert login.status_code == 303
        assert http.get("/productpage").text.count('id="user">jason<') == 1
        assert http.post("/logout").status_code == 303
        assert 'id="login"' in http.get("/productpage").text
        # an end-user header from the browser is not trusted: only the cookie says who
        spoofed = http.get("/productpage", headers={"end-user": "jason"}).text
        assert 'id="login"' in spoofed
        assert http.post("/login", data={"username": "no way"}).status_code == 400


def test_the_walkthrough_script_prints_each_step(demo: Demo, samples: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "examples/bookinfo/walkthrough.py",
            "--attach",
            "--run-dir",
            str(demo.run_dir),
            "--samples",
            str(samples),
            "--steps",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2. [request routing] virtual-service-all-v1.yaml"
    assert lines[1] == "   Istio says: no stars, no matter how many times you refresh"
    assert "   jason (httpx.AsyncClient): 20 loads: 20x reviews v1, no stars" in lines
    assert "   ok    jason (httpx.Client): v1 only, no stars" in lines
    assert lines[-1].startswith("0 step(s) not as Istio's tasks describe")
