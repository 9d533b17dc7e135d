"""End-user authentication: RequestAuthentication's JWT rules with Envoy's outcomes, the usual
attacks on JWT verification, and the JWKS fetcher on a fake clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from meshlib.config.security import JWTRule
from meshlib.security.jwks import JwksFetcher, parse_jwks
from meshlib.security.jwt import (
    MAX_TOKEN_BYTES,
    AuthnOutcome,
    RequestAuthenticator,
    compile_request_authentication,
)
from meshlib.testing import FakeClock

ISSUER = "https://issuer.example"

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())
_ED = ed25519.Ed25519PrivateKey.generate()


def _jwk(algorithm: Any, public_key: Any, **extra: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(public_key))
    entry.update(extra)
    return entry


JWKS = json.dumps(
    {
        "keys": [
            _jwk(RSAAlgorithm, _RSA.public_key(), kid="rsa-1"),
            _jwk(ECAlgorithm, _EC.public_key(), kid="ec-1"),
            _jwk(OKPAlgorithm, _ED.public_key(), kid="ed-1"),
        ]
    }
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def token(
    clock: FakeClock,
    *,
    key: Any = _RSA,
    alg: str = "RS256",
    kid: str | None = "rsa-1",
    **claims: Any,
) -> str:
    now = int(clock.wall())
    payload: dict[str, Any] = {"iss": ISSUER, "sub": "alice", "exp": now + 3600, "iat": now}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"kid": kid} if kid else None
    return pyjwt.encode(payload, key, alg, headers=headers)


def authenticator(clock: FakeClock, **rule: Any) -> RequestAuthenticator:
    spec: dict[str, Any] = {"issuer": ISSUER, "jwks": JWKS}
    spec.update(rule)
    return compile_request_authentication([JWTRule.model_validate(spec)], clock=clock)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# --------------------------------------------------------------------------- the good cases


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (_RSA, "RS256", "rsa-1"),
        (_RSA, "RS512", "rsa-1"),
        (_RSA, "PS256", "rsa-1"),
        (_EC, "ES256", "ec-1"),
        (_ED, "EdDSA", "ed-1"),
        (_RSA, "RS256", None),
    ],
)
def test_valid_token_gives_the_request_principal(
    clock: FakeClock, key: Any, alg: str, kid: str | None
) -> None:
    outcome = authenticator(clock).authenticate(bearer(token(clock, key=key, alg=alg, kid=kid)))
    assert outcome.ok
    assert outcome.authn is not None
    assert outcome.authn.principal == f"{ISSUER}/alice"
    assert outcome.headers.remove == ("authorization",)  # forwardOriginalToken: false


def test_no_token_passes_without_a_principal(clock: FakeClock) -> None:
    outcome = authenticator(clock).authenticate({"Other": "x"})
    assert outcome == AuthnOutcome(200)


def test_no_rules_pass_everything(clock: FakeClock) -> None:
    assert compile_request_authentication([], clock=clock).authenticate(bearer("garbage")).ok


def test_claims_audiences_presenter_and_space_delimited_scope(clock: FakeClock) -> None:
    tok = token(
        clock,
        aud=["a", "b"],
        azp="web",
        groups=["admin", "dev"],
        scope="read write",
        nested={"key": {"deep": "v"}},
        n=3,
    )
    authn = authenticator(clock).authenticate(bearer(tok)).authn
    assert authn is not None
    assert authn.audiences == ("a", "b")
    assert authn.presenter == "web"
    assert authn.claim(["groups"]) == ("admin", "dev")
    assert authn.claim(["scope"]) == ("read", "write")
    assert authn.claim(["nested", "key", "deep"]) == ("v",)
    assert authn.claim(["n"]) == ()
    assert authn.claim(["missing", "x"]) == ()


def test_token_from_param_and_cookie(clock: FakeClock) -> None:
    tok = token(clock)
    assert authenticator(clock).authenticate({}, f"x=1&access_token={tok}").authn is not None
    by_cookie = authenticator(clock, fromCookies=["session"])
    outcome = by_cookie.authenticate({"Cookie": f"a=b; session={tok}"})
    assert outcome.authn is not None
    assert outcome.headers.remove == ()  # a cookie token stays, as in Envoy
    # fromCookies given: the default locations are not read
    assert by_cookie.authenticate(bearer("garbage")).ok


def test_custom_header_with_prefix(clock: FakeClock) -> None:
    auth = authenticator(clock, fromHeaders=[{"name": "x-jwt-assertion", "prefix": "JWT "}])
    outcome = auth.authenticate({"X-Jwt-Assertion": "JWT " + token(clock)})
    assert outcome.authn is not None
    assert outcome.headers.remove == ("x-jwt-assertion",)
    assert auth.authenticate({"X-Jwt-Assertion": "other " + token(clock)}).authn is None


def test_forward_payload_and_claims_to_headers(clock: FakeClock) -> None:
    auth = authenticator(
        clock,
        forwardOriginalToken=True,
        outputPayloadToHeader="x-jwt-payload",
        outputClaimToHeaders=[
            {"header": "x-sub", "claim": "sub"},
            {"header": "x-n", "claim": "n"},
            {"header": "x-admin", "claim": "admin"},
            {"header": "x-list", "claim": "groups"},
        ],
    )
    tok = token(clock, n=42, admin=True, groups=["g"])
    outcome = auth.authenticate({"Authorization": f"Bearer {tok}", "X-Sub": "forged"})
    assert outcome.ok
    assert set(outcome.headers.remove) == {"x-jwt-payload", "x-sub", "x-n", "x-admin", "x-list"}
    added = dict(outcome.headers.add)
    assert json.loads(base64.urlsafe_b64decode(added["x-jwt-payload"] + "=="))["sub"] == "alice"
    assert added["x-jwt-payload"] == tok.split(".")[1]
    assert added["x-sub"] == "alice"
    assert added["x-n"] == "42"
    assert added["x-admin"] == "true"
    assert "x-list" not in added  # not a primitive: not copied (Envoy)
    # a request without token still loses the headers only the mesh may set
    assert "x-sub" in auth.authenticate({"X-Sub": "forged"}).headers.remove


def test_clock_skew_of_60_seconds(clock: FakeClock) -> None:
    now = int(clock.wall())
    auth = authenticator(clock)
    assert auth.authenticate(bearer(token(clock, exp=now - 59))).ok
    assert auth.authenticate(bearer(token(clock, nbf=now + 59))).ok
    assert auth.authenticate(bearer(token(clock, exp=now - 61))).message == "Jwt is expired"
    assert auth.authenticate(bearer(token(clock, nbf=now + 61))).message == "Jwt not yet valid"
    tok = token(clock, exp=now + 10)
    assert auth.authenticate(bearer(tok)).ok
    clock.advance(71)  # the fake clock's wall time moves with it
    assert auth.authenticate(bearer(tok)).message == "Jwt is expired"


def test_audiences_any_of(clock: FakeClock) -> None:
    auth = authenticator(clock, audiences=["svc-a", "https://svc-b/"])
    assert auth.authenticate(bearer(token(clock, aud=["x", "svc-a"]))).ok
    assert auth.authenticate(bearer(token(clock, aud="svc-b"))).ok  # scheme and slash ignored
    for aud in (["x"], "y", None):
        outcome = auth.authenticate(bearer(token(clock, aud=aud)))
        assert (outcome.status, outcome.message) == (401, "Audiences in Jwt are not allowed")


# --------------------------------------------------------------------------- attacks and garbage


def _unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


def _payload(clock: FakeClock) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": "mallory", "exp": int(clock.wall()) + 3600}


def test_alg_none_is_refused(clock: FakeClock) -> None:
    for alg in ("none", "None", "NONE"):
        forged = _unsigned({"alg": alg, "kid": "rsa-1"}, _payload(clock)) + "AA"
        outcome = authenticator(clock).authenticate(bearer(forged))
        assert (outcome.status, outcome.message) == (401, "Jwt header [alg] is not supported")
    # with the signature part empty it is not even a JWS
    empty = _unsigned({"alg": "none"}, _payload(clock))
    assert authenticator(clock).authenticate(bearer(empty)).status == 401


@pytest.mark.parametrize("kid", ["rsa-1", None])
def test_hs256_signed_with_the_public_key_is_refused(clock: FakeClock, kid: str | None) -> None:
    """The key confusion attack: the RSA public key (PEM or JWK text) as an HMAC secret."""
    header: dict[str, Any] = {"alg": "HS256", **({"kid": kid} if kid else {})}
    signing_input = (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(_payload(clock)).encode())}"
    )
    pem = _RSA.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, JWKS.encode()):
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        outcome = authenticator(clock).authenticate(bearer(f"{signing_input}.{b64(sig)}"))
        assert (outcome.status, outcome.message) == (401, "Jwt verification fails")
        assert outcome.authn is None


def test_hmac_keys_in_a_key_set_are_not_used(clock: FakeClock) -> None:
    keys = json.dumps({"keys": [{"kty": "oct", "k": b64(b"secret"), "kid": "h"}]})
    assert parse_jwks(keys).error == "Jwks doesn't have any valid public key"
    tok = pyjwt.encode(_payload(clock), b"secret" * 6, "HS256", headers={"kid": "h"})
    outcome = authenticator(clock, jwks=keys).authenticate(bearer(tok))
    assert (outcome.status, outcome.message) == (401, "Jwks doesn't have any valid public key")


def test_wrong_kid_and_wrong_key(clock: FakeClock) -> None:
    auth = authenticator(clock)
    outcome = auth.authenticate(bearer(token(clock, kid="unknown")))
    assert outcome.message == "Jwks doesn't have key to match kid or alg from Jwt"
    outcome = auth.authenticate(bearer(token(clock, key=_RSA_OTHER)))
    assert outcome.message == "Jwt verification fails"
    # an EC key does not verify an RSA algorithm, and the other way round
    outcome = auth.authenticate(bearer(token(clock, key=_RSA, kid="ec-1")))
    assert outcome.message == "Jwt verification fails"
    # a key whose alg is pinned is not tried for another alg
    pinned = json.dumps({"keys": [_jwk(RSAAlgorithm, _RSA.public_key(), kid="k", alg="RS256")]})
    outcome = authenticator(clock, jwks=pinned).authenticate(
        bearer(token(clock, alg="PS256", kid="k"))
    )
    assert outcome.message == "Jwks doesn't have key to match kid or alg from Jwt"


def test_tampered_payload_fails_verification(clock: FakeClock) -> None:
    head, _, sig = token(clock).split(".")
    forged = f"{head}.{b64(json.dumps(_payload(clock)).encode())}.{sig}"
    assert authenticator(clock).authenticate(bearer(forged)).message == "Jwt verification fails"


def test_wrong_issuer(clock: FakeClock) -> None:
    outcome = authenticator(clock).authenticate(bearer(token(clock, iss="https://evil")))
    assert (outcome.status, outcome.message) == (401, "Jwt issuer is not configured")


def test_oversize_token(clock: FakeClock) -> None:
    big = token(clock, padding="x" * MAX_TOKEN_BYTES)
    outcome = authenticator(clock).authenticate(bearer(big))
    assert (outcome.status, outcome.message) == (401, "Jwt is too large")


def seg(value: Any) -> str:
    """One base64url part holding ``value`` as JSON."""
    return b64(json.dumps(value).encode())


RS = seg({"alg": "RS256"})
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
GARBAGE = [
    ("abc", BAD_FORMAT),
    ("a.b.c.d", BAD_FORMAT),
    ("..", BAD_FORMAT),
    ("!!!.e30.AA", "Jwt header is an invalid Base64url encoded"),
    (f"{b64(b'not json')}.e30.AA", "Jwt header is an invalid JSON"),
    (f"{seg([1])}.e30.AA", "Jwt header is an invalid JSON"),
    (f"{b64(b'[' * 3000)}.e30.AA", "Jwt header is an invalid JSON"),
    (f"{seg({})}.e30.AA", "Jwt header [alg] field is required and must be a string"),
    (f"{seg({'alg': 1})}.e30.AA", "Jwt header [alg] field is required and must be a string"),
    (f"{seg({'alg': 'RS256', 'kid': 1})}.e30.AA", "Jwt header [kid] field is not a string"),
    (f"{RS}.%%%.AA", "Jwt payload is an invalid Base64url encoded"),
    (f"{RS}.{b64(b'nope')}.AA", "Jwt payload is an invalid JSON"),
    (f"{RS}.{seg({'exp': 'soon'})}.AA", "Jwt payload [exp] field is not an integer"),
    (f"{RS}.{seg({'exp': 1.5})}.AA", "Jwt payload [exp] field is not an integer"),
    (f"{RS}.{seg({'exp': -1})}.AA", "Jwt payload [exp] field is not a positive 64 bit integer"),
    (f"{RS}.{seg({'iss': 5})}.AA", "Jwt payload [iss] field is not a string"),
    (f"{RS}.{seg({'aud': [1]})}.AA", "Jwt payload [aud] field is not a string or string list"),
    (f"{RS}.e30.A", "Jwt signature is an invalid Base64url encoded"),
]


@pytest.mark.parametrize(("raw", "message"), GARBAGE, ids=[m for _, m in GARBAGE])
def test_garbage_is_a_401_with_envoys_message(clock: FakeClock, raw: str, message: str) -> None:
    outcome = authenticator(clock).authenticate(bearer(raw))
    assert (outcome.status, outcome.message) == (401, message)


def test_every_token_found_must_be_valid(clock: FakeClock) -> None:
    good = token(clock)
    outcome = authenticator(clock).authenticate(bearer(good), "access_token=garbage")
    assert outcome.status == 401


def test_rules_are_alternatives_and_envoy_picks_the_message(clock: FakeClock) -> None:
    other = {"issuer": "https://other", "jwks": JWKS}
    rules = [
        JWTRule.model_validate({"issuer": ISSUER, "jwks": JWKS}),
        JWTRule.model_validate(other),
    ]
    auth = compile_request_authentication(rules, clock=clock)
    assert auth.authenticate(bearer(token(clock, iss="https://other"))).ok
    assert auth.authenticate(bearer(token(clock))).ok
    # one rule says "unknown issuer", the other "expired": the real error wins
    expired = token(clock, iss="https://other", exp=int(clock.wall()) - 3600)
    assert auth.authenticate(bearer(expired)).message == "Jwt is expired"
    assert (
        auth.authenticate(bearer(token(clock, iss="https://x"))).message
        == "Jwt issuer is not configured"
    )


# --------------------------------------------------------------------------- key sets


def test_parse_jwks_errors() -> None:
    assert parse_jwks("{").error == "Jwks is an invalid JSON"
    assert parse_jwks("[]").error == "Jwks is an invalid JSON"
    assert parse_jwks("{}").error == "Jwks does not have [keys] field"
    assert parse_jwks('{"keys": {}}').error == "[keys] in Jwks is not an array"
    assert parse_jwks('{"keys": [{"kty": "RSA", "n": "!", "e": "AQAB"}, 3]}').error == (
        "Jwks doesn't have any valid public key"
    )
    private = json.loads(RSAAlgorithm.to_jwk(_RSA))
    assert parse_jwks(json.dumps({"keys": [private]})).error  # a private key is refused
    assert len(parse_jwks(JWKS).keys) == 3


def _fetching(clock: FakeClock, handler: Callable[[httpx.Request], httpx.Response]) -> JwksFetcher:
    return JwksFetcher(httpx.Client(transport=httpx.MockTransport(handler)), clock=clock)


def test_fetcher_caches_refreshes_and_keeps_the_last_good_set(clock: FakeClock) -> None:
    calls: list[str] = []
    replies = [httpx.Response(200, text=JWKS), httpx.Response(500), httpx.Response(200, text="{")]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return replies[min(len(calls), len(replies)) - 1]

    fetcher = _fetching(clock, handler)
    uri = "https://issuer.example/jwks"
    auth = compile_request_authentication(
        [JWTRule.model_validate({"issuer": ISSUER, "jwksUri": uri})], fetcher=fetcher, clock=clock
    )
    assert auth.jwks_uris == (uri,)
    assert auth.authenticate(bearer(token(clock))).ok
    assert auth.authenticate(bearer(token(clock))).ok
    assert len(calls) == 1  # cached
    clock.advance(301)  # Envoy's 5 minutes
    assert auth.authenticate(bearer(token(clock))).ok  # the refresh failed: last good set kept
    assert len(calls) == 2
    assert auth.authenticate(bearer(token(clock))).ok
    assert len(calls) == 2  # not retried before retry_interval
    clock.advance(2)
    assert auth.authenticate(bearer(token(clock))).ok  # a broken document keeps the old set too
    assert len(calls) == 3


def test_fetch_failure_without_a_good_set(clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    fetcher = _fetching(clock, handler)
    auth = compile_request_authentication(
        [JWTRule.model_validate({"issuer": ISSUER, "jwksUri": "https://x/jwks"})],
        fetcher=fetcher,
        clock=clock,
    )
    outcome = auth.authenticate(bearer(token(clock)))
    assert (outcome.status, outcome.message) == (401, "Jwks remote fetch is failed")
    assert auth.authenticate({}).ok  # no token: nothing to verify


async def test_async_fetch(clock: FakeClock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=JWKS)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        fetcher = JwksFetcher(async_client=client, clock=clock)
        auth = compile_request_authentication(
            [JWTRule.model_validate({"issuer": ISSUER, "jwksUri": "https://x/jwks"})],
            fetcher=fetcher,
            clock=clock,
        )
        assert (await auth.aauthenticate(bearer(token(clock)))).ok


# --------------------------------------------------------------------------- Istio's own samples


def test_istio_demo_tokens(istio_security_dir: Path, clock: FakeClock) -> None:
    jwks = (istio_security_dir / "jwks.json").read_text()
    rule = JWTRule.model_validate({"issuer": "testing@secure.istio.io", "jwks": jwks})
    auth = compile_request_authentication([rule], clock=clock)
    demo = auth.authenticate(bearer((istio_security_dir / "demo.jwt").read_text().strip()))
    assert demo.authn is not None
    assert demo.authn.principal == "testing@secure.istio.io/testing@secure.istio.io"
    assert demo.authn.claim(["foo"]) == ("bar",)
    groups = auth.authenticate(
        bearer((istio_security_dir / "groups-scope.jwt").read_text().strip())
    )
    assert groups.authn is not None
    assert groups.authn.claim(["groups"]) == ("group1", "group2")
    assert set(groups.authn.claim(["scope"])) >= {"scope1", "scope2"}
    other = compile_request_authentication(
        [JWTRule.model_validate({"issuer": "testing@secure.istio.io", "jwks": JWKS})], clock=clock
    )
    assert (
        other.authenticate(bearer((istio_security_dir / "demo.jwt").read_text().strip())).status
        == 401
    )
