"""Inbound security through the ASGI middleware, the WSGI middleware and ``@handler``:
AuthorizationPolicy (Istio's Bookinfo task at one service), RequestAuthentication, path
normalisation, the peer identity of the client certificate, the trust boundary for context
headers, the admin endpoint, and how the outcome shows in telemetry."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from meshlib import Mesh, context
from meshlib.security.authz import DENIED_BODY as AUTHZ_DENIED_BODY
from meshlib.security.ca import CertificateAuthority
from meshlib.server import MeshAdmin, MeshMiddleware, MeshWSGIAdmin, MeshWSGIMiddleware, handler
from meshlib.server.decorator import RequestRefusedError
from meshlib.server.guard import DENIED_BODY, guard_of
from meshlib.telemetry import metrics
from meshlib.testing import FakeClock, Upstreams, in_memory_mesh

from .conftest import Recorder
from .live import serve_asgi, serve_wsgi

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
OUTSIDER_CA = "outsider"
ISSUER = "testing@secure.istio.io"
_KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(_KEY.public_key())), "kid": "k1"}]})


def service_doc(name: str = "details", *, identity: str | None = None, extra: str = "") -> str:
    lines = [
        "apiVersion: meshlib.dev/v1",
        "kind: Service",
        f"metadata: {{name: {name}}}",
        "spec:",
        f"  serviceAccount: bookinfo-{name}",
        "  propagateHeaders: [end-user]",
        "  telemetry: {metrics: {}, accessLog: {format: json, logger: meshlib.test.access}}",
    ]
    if identity is not None:
        lines.append(f"  identity: {{ca: {identity}}}")
    return "\n".join(lines) + "\n" + extra


ALLOW_NOTHING = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
"""

VIEWER_GET = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
"""

FROM_PRODUCTPAGE = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
    to: [{operation: {methods: [GET]}}]
"""

DENY_ADMIN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, /admin/*]}}]
"""

AUDIT_ALL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
"""

JWT_EXAMPLE = f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: default}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{JWKS}'
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-group, claim: group}}]
"""

REQUIRE_JWT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
"""


def docs(*texts: str) -> str:
    return "---\n".join(texts)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("authz") / "ca", clock=clock)


@pytest.fixture(scope="module")
def outsider(tmp_path_factory: pytest.TempPathFactory, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("authz") / OUTSIDER_CA, clock=clock)


@pytest.fixture
def meshes(clock: FakeClock) -> Iterator[Any]:
    made: list[Mesh] = []

    def build(text: str) -> Mesh:
        upstreams = Upstreams(clock=clock)
        upstreams.endpoint("reviews")
        mesh = in_memory_mesh(text, upstreams, clock=clock)
        mesh.telemetry.add_listener(Recorder())
        made.append(mesh)
        return mesh

    yield build
    for mesh in made:
        mesh.close()


def token(clock: FakeClock, **claims: Any) -> str:
    now = int(clock.wall())
    payload = {"iss": ISSUER, "sub": "alice", "exp": now + 3600, "group": "dev", **claims}
    return pyjwt.encode(payload, _KEY, "ES256", headers={"kid": "k1"})


def cert_of(ca: CertificateAuthority, spiffe_id: str = PRODUCTPAGE) -> str:
    return ca.issue(spiffe_id).certificate_pem.decode("ascii")


# --------------------------------------------------------------------------- the apps


def starlette_app(mesh: Mesh) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        current = context.current()
        return JSONResponse(
            {
                "path": request.url.path,
                "headers": dict(request.headers),
                "carried": dict(current.headers) if current is not None else None,
            }
        )

    routes = [Route("/{rest:path}", echo, methods=["GET", "POST", "DELETE"])]
    return MeshAdmin(MeshMiddleware(Starlette(routes=routes), mesh=mesh), mesh=mesh)


class WithCert:
    """What a TLS-terminating server does: the client's chain in the ASGI TLS extension."""

    def __init__(self, app: Any, chain: list[str]) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            tls = {"server_cert": None, "client_cert_chain": self.chain}
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": tls}}
        await self.app(scope, receive, send)


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://details:9080") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(go())


def flask_app(mesh: Mesh) -> Any:
    from flask import Flask, request

    app = Flask("authz")

    @app.route("/<path:rest>", methods=["GET", "POST"])
    def echo(rest: str) -> dict[str, Any]:
        current = context.current()
        return {
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "carried": dict(current.headers) if current is not None else None,
        }

    app.wsgi_app = MeshWSGIAdmin(MeshWSGIMiddleware(app.wsgi_app, mesh=mesh), mesh=mesh)  # type: ignore[method-assign]
    return app


# --------------------------------------------------------------------------- Istio's task


def test_no_security_resources_no_guard(meshes: Any) -> None:
    mesh = meshes(service_doc())
    assert guard_of(mesh) is None
    assert AUTHZ_DENIED_BODY.encode() == DENIED_BODY


def test_allow_nothing_denies_with_rbac_access_denied(meshes: Any) -> None:
    mesh = meshes(docs(service_doc(), ALLOW_NOTHING))
    response = call(starlette_app(mesh), "GET", "/details/0")
    assert response.status_code == 403
    assert response.text == "RBAC: access denied"
    assert response.headers["x-request-id"]


def test_an_allow_get_policy(meshes: Any) -> None:
    mesh = meshes(docs(service_doc(), ALLOW_NOTHING, VIEWER_GET))
    app = starlette_app(mesh)
    assert call(app, "GET", "/details/0").status_code == 200
    denied = call(app, "POST", "/details/0")
    assert (denied.status_code, denied.text) == (403, "RBAC: access denied")


def test_a_principal_policy_needs_a_verified_client_certificate(
    meshes: Any, ca: CertificateAuthority, outsider: CertificateAuthority
) -> None:
    mesh = meshes(docs(service_doc(identity=str(ca.directory)), FROM_PRODUCTPAGE))
    app = starlette_app(mesh)
    assert call(app, "GET", "/details/0").status_code == 403  # plain text: no principal
    assert call(WithCert(app, [cert_of(ca)]), "GET", "/details/0").status_code == 200
    reviews = cert_of(ca, "spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    assert call(WithCert(app, [reviews]), "GET", "/details/0").status_code == 403
    forged = cert_of(outsider)  # the right SPIFFE ID from another CA: no identity
    assert call(WithCert(app, [forged]), "GET", "/details/0").status_code == 403


def test_without_an_identity_a_certificate_proves_nothing(
    meshes: Any, ca: CertificateAuthority
) -> None:
    mesh = meshes(docs(service_doc(), FROM_PRODUCTPAGE))
    assert call(WithCert(starlette_app(mesh), [cert_of(ca)]), "GET", "/x").status_code == 403


# --------------------------------------------------------------------------- paths


def test_policies_and_the_app_see_the_normalised_path(meshes: Any) -> None:
    mesh = meshes(docs(service_doc(), DENY_ADMIN))
    app = starlette_app(mesh)
    assert call(app, "GET", "/admin").status_code == 403
    assert call(app, "GET", "/public/%2e%2e/admin").status_code == 403
    seen = call(app, "GET", "/a/./b/../c%7e")
    assert seen.json()["path"] == "/a/c~"
    # Istio's BASE does not merge slashes (CVE-2021-31920): choose MERGE_SLASHES for that
    assert call(app, "GET", "http://details:9080//admin").status_code == 200


def test_merge_slashes_closes_the_double_slash(meshes: Any) -> None:
    extra = "  inbound: {pathNormalization: MERGE_SLASHES}\n"
    mesh = meshes(docs(service_doc(extra=extra), DENY_ADMIN))
    assert call(starlette_app(mesh), "GET", "http://details:9080//admin").status_code == 403


def test_a_path_envoy_refuses_is_400(meshes: Any) -> None:
    mesh = meshes(docs(service_doc(), DENY_ADMIN))
    response = call(starlette_app(mesh), "GET", "/a%00b")
    assert response.status_code == 400


# --------------------------------------------------------------------------- JWT


def test_an_invalid_token_is_401_with_envoys_message(meshes: Any, clock: FakeClock) -> None:
    mesh = meshes(docs(service_doc(), JWT_EXAMPLE))
    app = starlette_app(mesh)
    bad = token(clock)[:-4] + "AAAA"
    response = call(app, "GET", "/details/0?x=1", headers={"authorization": f"Bearer {bad}"})
    assert response.status_code == 401
    assert response.text == "Jwt verification fails"
    assert response.headers["www-authenticate"] == (
        'Bearer realm="http://details:9080/details/0", error="invalid_token"'
    )
    expired = token(clock, exp=int(clock.wall()) - 3600)
    response = call(app, "GET", "/", headers={"authorization": f"Bearer {expired}"})
    assert (response.status_code, response.text) == (401, "Jwt is expired")
    # no token: not refused by RequestAuthentication alone
    assert call(app, "GET", "/details/0").status_code == 200


def test_a_valid_token_is_taken_off_and_its_claims_put_on(meshes: Any, clock: FakeClock) -> None:
    mesh = meshes(docs(service_doc(), JWT_EXAMPLE))
    headers = {"authorization": f"Bearer {token(clock)}", "x-jwt-group": "admin"}
    seen = call(starlette_app(mesh), "GET", "/details/0", headers=headers).json()["headers"]
    assert "authorization" not in seen  # forwardOriginalToken: false
    assert seen["x-jwt-group"] == "dev"  # the caller's own value is replaced
    assert json.loads(pyjwt.utils.base64url_decode(seen["x-jwt-payload"]))["sub"] == "alice"


def test_request_principals_star_requires_a_token(meshes: Any, clock: FakeClock) -> None:
    mesh = meshes(docs(service_doc(), JWT_EXAMPLE, REQUIRE_JWT))
    app = starlette_app(mesh)
    assert call(app, "GET", "/details/0").status_code == 403
    good = {"authorization": f"Bearer {token(clock)}"}
    assert call(app, "GET", "/details/0", headers=good).status_code == 200


# --------------------------------------------------------------------------- the trust boundary

CONTEXT = {"end-user": "admin", "x-request-id": "outside-1", "x-envoy-expected-rq-timeout-ms": "5"}


def test_without_identity_headers_are_trusted_as_before(meshes: Any) -> None:
    mesh = meshes(service_doc())
    seen = call(starlette_app(mesh), "GET", "/p", headers=CONTEXT).json()
    assert seen["carried"]["end-user"] == "admin"
    assert seen["carried"]["x-request-id"] == "outside-1"


def test_an_outsiders_context_headers_are_dropped(meshes: Any, ca: CertificateAuthority) -> None:
    mesh = meshes(service_doc(identity=str(ca.directory)))
    app = starlette_app(mesh)
    response = call(app, "GET", "/p", headers=CONTEXT)
    seen = response.json()
    assert "end-user" not in seen["carried"]
    assert "end-user" not in seen["headers"]  # nor does the app see it
    assert "x-envoy-expected-rq-timeout-ms" not in seen["headers"]
    assert seen["carried"]["x-request-id"] != "outside-1"  # a fresh one
    assert response.headers["x-request-id"] == seen["carried"]["x-request-id"]
    # a mesh peer's are kept
    seen = call(WithCert(app, [cert_of(ca)]), "GET", "/p", headers=CONTEXT).json()
    assert seen["carried"]["end-user"] == "admin"
    assert seen["carried"]["x-request-id"] == "outside-1"


def test_trust_headers_from_mesh_without_identity_trusts_no_one(meshes: Any) -> None:
    mesh = meshes(service_doc(extra="  inbound: {trustHeadersFrom: mesh}\n"))
    seen = call(starlette_app(mesh), "GET", "/p", headers=CONTEXT).json()
    assert "end-user" not in seen["carried"]


def test_an_edge_may_trust_any_caller(meshes: Any, ca: CertificateAuthority) -> None:
    extra = "  inbound: {trustHeadersFrom: any}\n"
    mesh = meshes(service_doc(identity=str(ca.directory), extra=extra))
    seen = call(starlette_app(mesh), "GET", "/p", headers=CONTEXT).json()
    assert seen["carried"]["end-user"] == "admin"


# --------------------------------------------------------------------------- telemetry


def test_a_denial_shows_in_the_access_log_and_the_metrics(
    meshes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = meshes(docs(service_doc(), DENY_ADMIN, AUDIT_ALL))
    app = starlette_app(mesh)
    with caplog.at_level(logging.INFO, logger="meshlib.test.access"):
        call(app, "GET", "/admin")
        call(app, "GET", "/fine")
    denied, allowed = (json.loads(r.getMessage()) for r in caplog.records)
    assert denied["response_code"] == 403
    assert denied["response_flags"] == "-"
    assert denied["response_code_details"] == (
        "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]"
    )
    assert denied["audit_policy"] == "istio-system/audit-all"
    assert "response_code_details" not in allowed
    assert allowed["audit_policy"] == "istio-system/audit-all"
    codes = {
        labels["response_code"]: value
        for labels, value in metrics_samples(mesh)
        if labels["reporter"] == "destination"
    }
    assert codes == {"403": 1, "200": 1}


def metrics_samples(mesh: Mesh) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    _, body = metrics.scrape(mesh)
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "istio_requests_total"
    ]


# --------------------------------------------------------------------------- real servers


def test_under_uvicorn(meshes: Any, clock: FakeClock) -> None:
    mesh = meshes(docs(service_doc(), VIEWER_GET, DENY_ADMIN, JWT_EXAMPLE))
    server = serve_asgi(starlette_app(mesh))
    try:
        with httpx.Client(base_url=server.url) as http:
            assert http.get("/details/0").status_code == 200
            denied = http.post("/details/0")
            assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
            assert http.get("/public/%2e%2e/admin").status_code == 403
            bad = http.get("/x", headers={"authorization": "Bearer not.a.jwt"})
            assert bad.status_code == 401
            assert bad.headers["www-authenticate"].startswith('Bearer realm="http://127.0.0.1:')
    finally:
        server.stop()


def test_wsgi_middleware(meshes: Any, clock: FakeClock, ca: CertificateAuthority) -> None:
    mesh = meshes(
        docs(service_doc(identity=str(ca.directory)), VIEWER_GET, DENY_ADMIN, JWT_EXAMPLE)
    )
    server = serve_wsgi(flask_app(mesh))
    try:
        with httpx.Client(base_url=server.url) as http:
            good = {"authorization": f"Bearer {token(clock)}", **CONTEXT}
            response = http.get("/details/./0", headers=good)
            assert response.status_code == 200
            seen = response.json()
            assert seen["path"] == "/details/0"
            assert "authorization" not in seen["headers"]
            assert seen["headers"]["x-jwt-group"] == "dev"
            assert "end-user" not in seen["carried"]  # plain text: an outsider
            denied = http.post("/details/0")
            assert (denied.status_code, denied.text) == (403, "RBAC: access denied")
            assert http.get("/public/%2e%2e/admin").status_code == 403
            assert http.get("/_mesh/config").status_code == 401
    finally:
        server.stop()


def test_wsgi_peer_certificate_from_ssl_client_cert(meshes: Any, ca: CertificateAuthority) -> None:
    mesh = meshes(docs(service_doc(identity=str(ca.directory)), FROM_PRODUCTPAGE))
    app = flask_app(mesh).wsgi_app
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://details") as http:
        assert http.get("/details/0").status_code == 403
    inner = app

    def with_cert(environ: dict[str, Any], start_response: Any) -> Any:
        environ["SSL_CLIENT_CERT"] = cert_of(ca)
        return inner(environ, start_response)

    with httpx.Client(transport=httpx.WSGITransport(app=with_cert), base_url="http://d") as http:
        assert http.get("/details/0").status_code == 200
        assert http.get("/_mesh/config").status_code == 200  # a mesh peer reads the admin


# --------------------------------------------------------------------------- @handler


def test_handler_in_flask_and_starlette_and_with_headers(meshes: Any) -> None:
    mesh = meshes(docs(service_doc(), ALLOW_NOTHING, VIEWER_GET))
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    flask = Flask("handler")

    @flask.route("/f", methods=["GET", "POST"])
    @handler(mesh=mesh)
    def view() -> str:
        return "ok"

    with flask.test_client() as client:
        assert client.get("/f").status_code == 200
        refused = client.post("/f")
        assert (refused.status_code, refused.data) == (403, b"RBAC: access denied")

    @handler(mesh=mesh)
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/s", endpoint, methods=["GET", "POST"])])
    assert call(app, "GET", "/s").status_code == 200
    assert call(app, "POST", "/s").text == "RBAC: access denied"

    @handler(mesh=mesh)
    def on_message(headers: dict[str, str]) -> str:
        return "ran"

    with pytest.raises(RequestRefusedError) as refused_error:
        on_message({"x": "1"})  # no method: not a GET
    assert refused_error.value.status == 403


# --------------------------------------------------------------------------- admin


#: Both admin endpoints answer the same callers.
ADMIN_PATHS = pytest.mark.parametrize("path", ["/_mesh/config", "/_mesh/traces"])


@ADMIN_PATHS
def test_admin_needs_identity_or_token(
    path: str, meshes: Any, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = meshes(service_doc(identity=str(ca.directory)))
    app = starlette_app(mesh)
    refused = call(app, "GET", path)
    assert refused.status_code == 401
    assert call(WithCert(app, [cert_of(ca)]), "GET", path).status_code == 200
    monkeypatch.setenv("MESHLIB_ADMIN_TOKEN", "s3cret-token-of-the-admin")
    ok = call(app, "GET", path, headers={"authorization": "Bearer s3cret-token-of-the-admin"})
    assert ok.status_code == 200
    assert call(app, "GET", path, headers={"authorization": "Bearer nope"}).status_code == 401


@ADMIN_PATHS
def test_admin_token_in_the_service_document(path: str, meshes: Any, tmp_path: Path) -> None:
    mesh = meshes(service_doc(extra="  admin: {token: a-token-of-16-chars}\n"))
    app = starlette_app(mesh)
    assert call(app, "GET", path).status_code == 401
    headers = {"authorization": "Bearer a-token-of-16-chars"}
    assert call(app, "GET", path, headers=headers).status_code == 200


@ADMIN_PATHS
def test_admin_stays_open_without_identity_or_token(path: str, meshes: Any) -> None:
    assert call(starlette_app(meshes(service_doc())), "GET", path).status_code == 200


def test_a_reload_recompiles_the_policies(meshes: Any) -> None:
    from meshlib.config.load import load_texts

    mesh = meshes(service_doc())
    app = starlette_app(mesh)
    assert call(app, "GET", "/details/0").status_code == 200
    mesh.apply(load_texts([("mesh.yaml", docs(service_doc(), ALLOW_NOTHING))]))
    assert call(app, "GET", "/details/0").status_code == 403
    mesh.apply(load_texts([("mesh.yaml", service_doc())]))
    assert call(app, "GET", "/details/0").status_code == 200
    assert guard_of(mesh) is None
