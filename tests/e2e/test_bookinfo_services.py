"""The Bookinfo services as code and config: each service's mesh.yaml declares the app timeouts
its code has (so ``meshctl validate`` reasons about the real ones), no service copies a header
by hand, and each config validates."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from examples.bookinfo import productpage, reviews
from meshlib.config.load import load_config

from .conftest import ROOT

BOOKINFO = ROOT / "examples" / "bookinfo"


def app_timeouts(config: str) -> dict[str, tuple[float, int]]:
    found = load_config([BOOKINFO / "config" / config]).of_kind("Service")[0].spec
    return {name: (t.timeout, t.attempts) for name, t in (found.app_timeouts or {}).items()}


def test_declared_app_timeouts_are_the_codes_own() -> None:
    assert app_timeouts("productpage.yaml") == {
        "details": (productpage.DETAILS_TIMEOUT, 1),
        "reviews": (productpage.REVIEWS_TIMEOUT, productpage.REVIEWS_TRIES),
    }
    assert app_timeouts("reviews-v1.yaml") == {}
    assert app_timeouts("reviews-v2.yaml") == {"ratings": (reviews.RATINGS_TIMEOUT["v2"], 1)}
    assert app_timeouts("reviews-v3.yaml") == {"ratings": (reviews.RATINGS_TIMEOUT["v3"], 1)}
    assert (productpage.REVIEWS_TIMEOUT, productpage.REVIEWS_TRIES) == (3.0, 2)
    assert reviews.RATINGS_TIMEOUT == {"v2": 10.0, "v3": 2.5}


def test_no_service_forwards_headers_by_hand() -> None:
    """``end-user`` and ``x-request-id`` travel through meshlib's propagateHeaders alone."""
    for path in BOOKINFO.glob("*.py"):
        if path.name in ("walkthrough.py", "launcher.py"):
            continue
        code = path.read_text()
        assert "headers=" not in code, f"{path.name} sets headers on a call"
        assert not re.search(r"x-request-id|forward", code, re.IGNORECASE), path.name
    for path in (BOOKINFO / "config").glob("*.yaml"):
        assert "propagateHeaders: [end-user]" in path.read_text(), path.name


@pytest.mark.parametrize("config", sorted(p.name for p in (BOOKINFO / "config").glob("*.yaml")))
def test_each_config_validates(config: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlib.cli", "validate", f"examples/bookinfo/config/{config}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the rules directory is the run directory's, absent beside the templates: only that warning
    assert done.stdout.splitlines()[-1].endswith("1 warning(s)")
    assert "'../rules/*.yaml' matches no file" in done.stdout


def test_the_cookie_becomes_the_end_user() -> None:
    assert productpage.user_of("user=jason; theme=dark") == "jason"
    assert productpage.user_of("theme=dark") is None
    assert productpage.user_of('user="x\\r\\nend-user: root"') is None
    assert productpage.user_of(None) is None
