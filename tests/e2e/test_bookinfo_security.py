"""Istio's security tasks on Bookinfo, end to end: the demo runs each service with Istio's
service account and a certificate of the run directory's CA, the services call one another over
mutual TLS (auto mTLS), and ``meshctl bookinfo apply`` takes the policies of Istio's
"Authorization for HTTP traffic", mutual TLS and end-user authentication tasks
(``examples/bookinfo/security/``). The asserts say what Istio's task pages tell the user to
expect."""

from __future__ import annotations

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from examples.bookinfo import walkthrough
from examples.bookinfo.walkthrough import (
    DENIED,
    JWT_MALFORMED,
    RATINGS_ERROR,
    SECURITY,
    Demo,
    Step,
)
from meshlib.bookinfo import admin_context

pytestmark = pytest.mark.integration

BLACK = [(5, "black"), (4, "black")]
RED = [(5, "red"), (4, "red")]
ACCOUNTS = {
    "productpage": "bookinfo-productpage",
    "details": "bookinfo-details",
    "reviews": "bookinfo-reviews",
    "ratings": "bookinfo-ratings",
}


def assert_ok(step: Step) -> None:
    assert step.ok, "\n".join(step.seen)


def test_each_service_has_istios_identity_and_mtls_endpoints(demo: Demo) -> None:
    demo.reset()
    assert (demo.run_dir / "ca" / "ca.pem").is_file()
    registry = yaml.safe_load((demo.run_dir / "registry.yaml").read_text())
    for endpoints in registry.values():
        for endpoint in endpoints:
            assert endpoint["labels"]["security.istio.io/tlsMode"] == "istio"
    for name, account in ACCOUNTS.items():
        presented = walkthrough.presented_identity(demo.service_url(name), demo.run_dir)
        assert presented == f"spiffe://cluster.local/ns/default/sa/{account}"


def test_admin_endpoints_answer_mesh_peers_only(demo: Demo) -> None:
    demo.reset()
    details = demo.service_url("details")
    assert httpx.get(f"{details}/_mesh/config").status_code == 401  # plain text, no identity
    tls = admin_context(demo.run_dir)
    assert tls is not None
    https = details.replace("http://", "https://")
    status = httpx.get(f"{https}/_mesh/config", verify=tls).json()
    assert status["service"] == "details"


def test_allow_nothing_denies_the_page(demo: Demo) -> None:
    step = walkthrough.step_allow_nothing(demo)
    assert_ok(step)
    assert len(step.pages) == 4
    for (page,) in step.pages.values():
        assert (page.status, page.text) == (403, DENIED)


def test_productpage_viewer_shows_both_errors(demo: Demo) -> None:
    step = walkthrough.step_productpage_viewer(demo)
    assert_ok(step)
    for (page,) in step.pages.values():
        assert page.status == 200
        assert "Error fetching product details" in page.text
        assert "Error fetching product reviews" in page.text


def test_details_viewer_shows_the_details(demo: Demo) -> None:
    step = walkthrough.step_details_viewer(demo)
    assert_ok(step)
    for (page,) in step.pages.values():
        assert page.details_error is None
        assert "<dt>ISBN-10</dt><dd>1234567890</dd>" in page.text
        assert "Error fetching product reviews" in page.text


def test_reviews_viewer_shows_reviews_without_ratings(demo: Demo) -> None:
    step = walkthrough.step_reviews_viewer(demo)
    assert_ok(step)
    for (page,) in step.pages.values():
        assert page.reviews_error is None
        assert page.stars == []
        if page.version != "v1":
            assert page.ratings_errors == [RATINGS_ERROR] * 2
    # jason stays signed in: the end-user productpage makes from its cookie is its own
    assert all(page.user == "jason" for name, (page,) in step.pages.items() if "jason" in name)


def test_ratings_viewer_brings_the_stars_back(demo: Demo) -> None:
    step = walkthrough.step_ratings_viewer(demo, loads=10)
    assert_ok(step)
    for pages in step.pages.values():
        for page in pages:
            assert page.stars == {"v1": [], "v2": BLACK, "v3": RED}[page.version or ""]


def test_deleting_the_policies_brings_everything_back(demo: Demo) -> None:
    walkthrough.step_allow_nothing(demo)
    demo.meshctl("delete", *(SECURITY / name for name in walkthrough.AUTHORIZATION))
    page = walkthrough.Visitor(demo.base_url, "sync").load()
    assert page.status == 200
    assert page.details_error is None
    assert page.reviews_error is None


def test_strict_mtls_refuses_plain_text_but_the_page_works(demo: Demo) -> None:
    step = walkthrough.step_mutual_tls(demo)
    assert_ok(step)
    for pages in step.pages.values():
        assert {p.version for p in pages} <= {"v1", "v2", "v3"}
        assert all(p.stars in ([], BLACK, RED) for p in pages)
    # the mesh-wide STRICT applies to every workload but productpage
    for name in ("details", "reviews", "ratings"):
        assert walkthrough.plain_call(f"{demo.service_url(name)}/health").error is not None
    assert walkthrough.plain_call(f"{demo.base_url}/health").status == 200
    out = demo.meshctl("routes")
    assert "PeerAuthentication istio-system/default mTLS STRICT on the whole mesh" in out
    assert "mTLS PERMISSIVE on app=productpage" in out
    assert out.count("in sync") == 6  # meshctl reads the admin endpoints over mutual TLS


def test_authorization_policies_show_in_routes(demo: Demo) -> None:
    demo.reset()
    applied = demo.apply(SECURITY / "details-viewer.yaml")
    assert applied.splitlines()[0] == "AuthorizationPolicy default/details-viewer created"
    out = demo.meshctl("routes")
    assert "AuthorizationPolicy details-viewer" in out
    assert "ALLOW on app=details, 1 rule(s)" in out
    assert "      from details-viewer.yaml" in out


def test_request_authentication_refuses_a_bad_token_only(demo: Demo) -> None:
    step = walkthrough.step_request_authentication(demo)
    assert_ok(step)
    statuses = {name: page.status for name, (page,) in step.pages.items()}
    assert statuses == {
        f"anonymous ({client}), {label}": 401 if label == "bad token" else 200
        for client in ("httpx.Client", "httpx.AsyncClient")
        for label in ("no token", "bad token", "valid token")
    }
    assert all(
        page.text == JWT_MALFORMED
        for name, (page,) in step.pages.items()
        if name.endswith("bad token")
    )


def test_require_jwt_denies_requests_without_a_token(demo: Demo) -> None:
    step = walkthrough.step_require_jwt(demo)
    assert_ok(step)
    expected = {"no token": 403, "bad token": 401, "valid token": 200}
    for name, (page,) in step.pages.items():
        assert page.status == expected[name.split(", ")[1]], name
    # a token of another key set (signed with a key the rule does not hold) is refused too
    forged = _token_of_another_key()
    visitor = walkthrough.Visitor(demo.base_url, "sync")
    try:
        page = visitor.load({"authorization": f"Bearer {forged}"})
    finally:
        visitor.close()
    assert (page.status, page.text) == (401, "Jwks doesn't have key to match kid or alg from Jwt")


def _token_of_another_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io"}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "another"})
