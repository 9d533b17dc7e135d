"""The product page in a real browser (Debian's Chromium, see ``chromium.py``), against the
running demo. It signs in as jason through the page's own form, checks the stars (each star
element's ``data-star-color``) and the error texts of the walkthrough's steps, and takes a PNG
screenshot of each step (under the test's tmp dir; also in the directory named by
``$BOOKINFO_SCREENSHOTS``: ``make screenshots`` refreshes ``docs/images/``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from examples.bookinfo.walkthrough import (
    AUTHORIZATION,
    DENIED,
    DETAILS_FAILED,
    END_USER_AUTH,
    MUTUAL_TLS,
    RATINGS_ERROR,
    REVIEWS_ERROR,
    REVIEWS_FAILED,
    SECURITY,
    Demo,
    plain_call,
)

from .chromium import Shots

pytestmark = pytest.mark.integration


def stars(driver: Any) -> list[str]:
    """The colour of each full star on the page, in order."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, 'svg[data-star="full"]')
    return [element.get_attribute("data-star-color") for element in found]


def wait_for(driver: Any, selector: str) -> Any:
    """The element, once the page that has it is loaded (a click navigates asynchronously)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    located = expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector))
    return WebDriverWait(driver, 10).until(located)


def text_of(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, selector).text)


def test_the_walkthrough_in_chromium(
    browser: Any, demo: Demo, samples: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    shots = Shots(tmp_path)
    demo.reset()
    demo.apply(samples / "virtual-service-all-v1.yaml")
    browser.get(demo.productpage)
    assert browser.title == "Simple Bookstore App"
    assert text_of(browser, "h1") == "The Comedy of Errors"
    assert stars(browser) == []
    assert "Reviews served by: reviews-v1" in text_of(browser, "#reviews")
    shots.take(browser, "all-v1")

    # sign in as jason, with the page's own form
    browser.find_element(By.NAME, "username").send_keys("jason")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    assert wait_for(browser, "#user").text == "jason"
    demo.apply(samples / "virtual-service-reviews-test-v2.yaml")
    browser.refresh()
    assert stars(browser) == ["black"] * 9  # 5 for Reviewer1, 4 for Reviewer2
    assert len(browser.find_elements(By.CSS_SELECTOR, 'svg[data-star="empty"]')) == 1
    shots.take(browser, "jason-black-stars")

    demo.apply(samples / "virtual-service-ratings-test-delay.yaml")
    started = time.monotonic()
    browser.refresh()
    took = time.monotonic() - started
    assert text_of(browser, "#reviews-error h3") == "Error fetching product reviews!"
    assert text_of(browser, "#reviews-error p") == REVIEWS_ERROR
    assert 5.5 <= took < 9.0
    shots.take(browser, "jason-delay-7s")

    demo.apply(samples / "virtual-service-ratings-test-abort.yaml")
    browser.refresh()
    errors = browser.find_elements(By.CSS_SELECTOR, ".rating-error")
    assert [e.text for e in errors] == [RATINGS_ERROR] * 2
    assert stars(browser) == []
    shots.take(browser, "jason-ratings-abort")

    demo.reset()  # traffic shifting starts over: all v1, then all to v3
    demo.apply(samples / "virtual-service-all-v1.yaml")
    demo.apply(samples / "virtual-service-reviews-v3.yaml")
    browser.refresh()
    assert stars(browser) == ["red"] * 9
    shots.take(browser, "red-stars-v3")

    browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
    assert wait_for(browser, "#login").is_displayed()
    demo.reset()

    for shot in shots.taken:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 5_000 < shot.stat().st_size < 400_000


def body_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def test_the_security_tasks_in_chromium(browser: Any, demo: Demo, tmp_path: Path) -> None:
    """Istio's authorization, mutual TLS and end-user authentication tasks, as a browser shows
    them (anonymous: signing in is a POST, which the viewer policies do not allow)."""
    shots = Shots(tmp_path, "bookinfo-security")
    demo.reset()

    demo.apply(*(SECURITY / name for name in AUTHORIZATION[:1]))
    browser.get(demo.productpage)
    assert body_text(browser) == DENIED
    shots.take(browser, "allow-nothing")

    demo.apply(*(SECURITY / name for name in AUTHORIZATION[1:2]))
    browser.refresh()
    assert text_of(browser, "#details-error h3") == DETAILS_FAILED + "!"
    assert text_of(browser, "#reviews-error h3") == REVIEWS_FAILED + "!"
    shots.take(browser, "productpage-viewer")

    demo.apply(*(SECURITY / name for name in AUTHORIZATION[2:4]))
    for _ in range(30):  # until reviews v2 or v3 answers: they call ratings, which allows nothing
        browser.refresh()
        if "reviews-v1" not in text_of(browser, "#reviews"):
            break
    assert "ISBN-10" in text_of(browser, "#details")
    assert stars_or_errors(browser) == ([], [RATINGS_ERROR] * 2)
    shots.take(browser, "reviews-viewer")

    demo.apply(*(SECURITY / name for name in AUTHORIZATION[4:]))
    seen: set[str] = set()
    for _ in range(30):  # until a page with stars (reviews v2 or v3) shows
        browser.refresh()
        colors = stars(browser)
        seen.update(colors)
        if colors:
            break
    assert seen
    assert seen <= {"black", "red"}
    shots.take(browser, "ratings-viewer")

    demo.reset()
    demo.apply(*(SECURITY / name for name in MUTUAL_TLS))
    browser.refresh()
    assert text_of(browser, "h1") == "The Comedy of Errors"
    assert "ISBN-10" in text_of(browser, "#details")
    assert plain_call(f"{demo.service_url('details')}/details/0").error is not None
    shots.take(browser, "mutual-tls-strict")

    demo.reset()
    demo.apply(*(SECURITY / name for name in END_USER_AUTH))
    browser.refresh()  # a browser sends no token: no request principal
    assert body_text(browser) == DENIED
    shots.take(browser, "require-jwt")
    demo.reset()

    for shot in shots.taken:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 2_000 < shot.stat().st_size < 400_000


def stars_or_errors(driver: Any) -> tuple[list[str], list[str]]:
    from selenium.webdriver.common.by import By

    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".rating-error")]
    return stars(driver), errors
