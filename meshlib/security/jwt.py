"""End-user authentication: RequestAuthentication's JWT rules, as Envoy's ``jwt_authn`` filter
applies them in an Istio sidecar.

:func:`compile_request_authentication` turns the ``jwtRules`` of every RequestAuthentication that
applies to a workload into a :class:`RequestAuthenticator`;
``authenticate(headers, query)`` gives an :class:`AuthnOutcome`:

- no token in any rule's locations: the request passes with no request principal (an
  AuthorizationPolicy with ``requestPrincipals: ["*"]`` is what requires one);
- every token found by some rule valid: it passes, with the :class:`JwtAuthn` that authorization
  reads (``request.auth.principal`` = ``<iss>/<sub>``, audiences, presenter, claims) and the header
  changes to make (token removed, payload and claims copied);
- otherwise 401, with Envoy's message (``Jwt verification fails``, ``Jwt is expired``, …).

Per rule, as Envoy: the token is parsed (``Jwt is not in the form of …``, ``Jwt header [alg] is not
supported`` for ``none`` and anything unknown), its ``iss`` must be the rule's issuer (``Jwt issuer
is not configured``), ``nbf``/``exp`` are checked with 60 s of clock skew (``Jwt not yet valid``,
``Jwt is expired``), one ``aud`` must be among the rule's ``audiences`` when it has some
(``Audiences in Jwt are not allowed``), then the signature against the keys whose ``kid`` and
``alg`` fit (``Jwks doesn't have key to match kid or alg from Jwt``, ``Jwt verification fails``).
Only public-key algorithms are accepted, each with its own key type: an HS256 token "signed" with
an RSA public key finds no key to verify it. When rules fail differently, the message is Envoy's
choice: any error beats ``Jwt issuer is not configured``, which beats a missing token.

Tokens are bounded (:data:`MAX_TOKEN_BYTES`, 8 KiB): a larger one is refused with ``Jwt is too
large`` (meshlib's message; Envoy only bounds the whole header block). Nothing in a token, however
malformed, raises: it is a 401.

``forwardOriginalToken`` false (the default) removes the header the token came in, as Envoy does;
a token in a query parameter or cookie is left where it is, as Envoy leaves it.
``outputPayloadToHeader`` and ``outputClaimToHeaders`` headers sent by the client are always
removed first, so that only the mesh can set them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.security.jwks import JwksFetcher, KeySet, parse_jwks

if TYPE_CHECKING:
    from meshlib.config.security import JWTRule

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_SPACE_DELIMITED_CLAIMS",
    "MAX_TOKEN_BYTES",
    "AuthnOutcome",
    "HeaderChanges",
    "JwtAuthn",
    "RequestAuthenticator",
    "compile_request_authentication",
    "verify_token",
]

#: Envoy's default clock skew for ``nbf`` and ``exp`` (``clock_skew_seconds``).
CLOCK_SKEW: Final = 60
#: The largest token meshlib reads (header, payload and signature, base64url).
MAX_TOKEN_BYTES: Final = 8 * 1024
#: Claims whose string value Istio also reads as a space-separated list (OAuth 2.0 ``scope``).
DEFAULT_SPACE_DELIMITED_CLAIMS: Final = ("scope", "permission")

_IMPLEMENTED_ALGS: Final = frozenset(
    {"ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"}
    | {"PS256", "PS384", "PS512", "EdDSA"}
)
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")

# Envoy's (jwt_verify_lib's) status messages.
MISSING: Final = "Jwt is missing"
NOT_YET_VALID: Final = "Jwt not yet valid"
EXPIRED: Final = "Jwt is expired"
BAD_FORMAT: Final = (
    "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
)
HEADER_BAD_BASE64: Final = "Jwt header is an invalid Base64url encoded"
HEADER_BAD_JSON: Final = "Jwt header is an invalid JSON"
HEADER_BAD_ALG: Final = "Jwt header [alg] field is required and must be a string"
HEADER_ALG_NOT_SUPPORTED: Final = "Jwt header [alg] is not supported"
HEADER_BAD_KID: Final = "Jwt header [kid] field is not a string"
PAYLOAD_BAD_BASE64: Final = "Jwt payload is an invalid Base64url encoded"
PAYLOAD_BAD_JSON: Final = "Jwt payload is an invalid JSON"
SIGNATURE_BAD_BASE64: Final = "Jwt signature is an invalid Base64url encoded"
UNKNOWN_ISSUER: Final = "Jwt issuer is not configured"
AUDIENCE_NOT_ALLOWED: Final = "Audiences in Jwt are not allowed"
VERIFICATION_FAILS: Final = "Jwt verification fails"
KID_ALG_MISMATCH: Final = "Jwks doesn't have key to match kid or alg from Jwt"
NO_VALID_KEYS: Final = "Jwks doesn't have any valid public key"
FETCH_FAILED: Final = "Jwks remote fetch is failed"
TOO_LARGE: Final = "Jwt is too large"  # meshlib's own


@dataclass(frozen=True, slots=True)
class JwtAuthn:
    """A verified token, as authorization reads it (Istio's ``request.auth.*``)."""

    issuer: str
    subject: str
    audiences: tuple[str, ...]
    presenter: str  # ``azp``; "" when absent
    claims: Mapping[str, Any]
    payload_b64: str = field(repr=False)

    @property
    def principal(self) -> str:
        """``request.auth.principal``: ``<iss>/<sub>``."""
        return f"{self.issuer}/{self.subject}"

    def claim(self, path: Sequence[str]) -> tuple[str, ...]:
        """The string values of a (nested) claim, for ``request.auth.claims[a][b]``: a string
        claim is one value, a list claim its string items; anything else none."""
        value: Any = self.claims
        for name in path:
            if not isinstance(value, Mapping) or name not in value:
                return ()
            value = value[name]
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    """Headers to remove (lower-case names) then add, before the request reaches the app."""

    remove: tuple[str, ...] = ()
    add: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AuthnOutcome:
    """The result of end-user authentication: ``status`` 200 (pass) or 401 (``message`` is
    Envoy's), the verified token if any, and the header changes to apply when it passes."""

    status: int
    message: str = ""
    authn: JwtAuthn | None = None
    headers: HeaderChanges = HeaderChanges()

    @property
    def ok(self) -> bool:
        return self.status == 200


class _JwtError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _b64decode(part: str, message: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part.rstrip("=")) % 4 == 1:
        raise _JwtError(message)
    try:
        return base64.urlsafe_b64decode(part.rstrip("=") + "=" * (-len(part.rstrip("=")) % 4))
    except ValueError:
        raise _JwtError(message) from None


def _json_object(raw: bytes, message: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise _JwtError(message) from None
    if not isinstance(value, dict):
        raise _JwtError(message)
    return value


def _int_claim(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _JwtError(f"Jwt payload [{name}] field is not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise _JwtError(f"Jwt payload [{name}] field is not an integer")
    if value < 0 or value >= 2**63:
        raise _JwtError(f"Jwt payload [{name}] field is not a positive 64 bit integer")
    return int(value)


@dataclass(frozen=True, slots=True)
class _Token:
    alg: str
    kid: str
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes
    payload_b64: str
    iss: str
    sub: str
    audiences: tuple[str, ...]
    nbf: int
    exp: int


def _parse(token: str) -> _Token:
    """Parse a compact JWS as jwt_verify_lib does, with its messages."""
    if len(token) > MAX_TOKEN_BYTES:
        raise _JwtError(TOO_LARGE)
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _JwtError(BAD_FORMAT)
    header = _json_object(_b64decode(parts[0], HEADER_BAD_BASE64), HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _JwtError(HEADER_BAD_ALG)
    if alg not in _IMPLEMENTED_ALGS:
        raise _JwtError(HEADER_ALG_NOT_SUPPORTED)
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise _JwtError(HEADER_BAD_KID)
    payload = _json_object(_b64decode(parts[1], PAYLOAD_BAD_BASE64), PAYLOAD_BAD_JSON)
    for name in ("iss", "sub", "jti"):
        if name in payload and not isinstance(payload[name], str):
            raise _JwtError(f"Jwt payload [{name}] field is not a string")
    _int_claim(payload, "iat")
    nbf, exp = _int_claim(payload, "nbf"), _int_claim(payload, "exp")
    aud = payload.get("aud")
    if aud is None:
        audiences: tuple[str, ...] = ()
    elif isinstance(aud, str):
        audiences = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        audiences = tuple(aud)
    else:
        raise _JwtError("Jwt payload [aud] field is not a string or string list")
    signature = _b64decode(parts[2], SIGNATURE_BAD_BASE64)
    return _Token(
        alg=alg,
        kid=kid,
        payload=payload,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=signature,
        payload_b64=parts[1],
        iss=payload.get("iss", ""),
        sub=payload.get("sub", ""),
        audiences=audiences,
        nbf=nbf,
        exp=exp,
    )


def _sanitize_audience(audience: str) -> str:
    """jwt_verify_lib compares audiences without scheme and trailing slash."""
    for scheme in ("https://", "http://"):
        if audience.startswith(scheme):
            audience = audience[len(scheme) :]
            break
    return audience.rstrip("/")


def _verify_signature(token: _Token, keys: KeySet) -> None:
    """The signature check of jwt_verify_lib: keys whose ``kid`` and ``alg`` fit are tried in
    turn; each verifies only the algorithms of its own type."""
    matched = False
    for jwk in keys.keys:
        if token.kid and jwk.kid and jwk.kid != token.kid:
            continue
        if jwk.alg and jwk.alg != token.alg:
            continue
        matched = True
        if token.alg not in jwk.algorithms:
            continue
        bits = token.alg[2:]
        verifier: Any
        if token.alg.startswith("RS"):
            verifier = RSAAlgorithm(getattr(RSAAlgorithm, f"SHA{bits}"))
        elif token.alg.startswith("PS"):
            verifier = RSAPSSAlgorithm(getattr(RSAPSSAlgorithm, f"SHA{bits}"))
        elif token.alg.startswith("ES"):
            verifier = ECAlgorithm(getattr(ECAlgorithm, f"SHA{bits}"))
        else:
            verifier = OKPAlgorithm()
        try:
            if verifier.verify(token.signing_input, jwk.key, token.signature):
                return
        except Exception:  # a malformed signature for this key type: not verified
            continue
    raise _JwtError(VERIFICATION_FAILS if matched else KID_ALG_MISMATCH)


def verify_token(
    token: str,
    *,
    issuer: str,
    audiences: Iterable[str] = (),
    keys: KeySet | None,
    now: float,
    clock_skew: int = CLOCK_SKEW,
) -> tuple[str, _Token | None]:
    """Check one token against one rule, in Envoy's order. Returns ``("", token)`` when valid,
    else ``(message, None)`` with Envoy's message. Never raises."""
    try:
        parsed = _parse(token)
        if parsed.iss != issuer:
            raise _JwtError(UNKNOWN_ISSUER)
        unix = int(now)
        if unix + clock_skew < parsed.nbf:
            raise _JwtError(NOT_YET_VALID)
        if parsed.exp and unix > parsed.exp + clock_skew:
            raise _JwtError(EXPIRED)
        allowed = {_sanitize_audience(a) for a in audiences}
        if allowed and not any(_sanitize_audience(a) in allowed for a in parsed.audiences):
            raise _JwtError(AUDIENCE_NOT_ALLOWED)
        if keys is None:
            raise _JwtError(FETCH_FAILED)
        if keys.error:
            raise _JwtError(keys.error)
        _verify_signature(parsed, keys)
    except _JwtError as failure:
        return failure.message, None
    return "", parsed


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True, slots=True)
class _Location:
    kind: str  # "header", "param" or "cookie"
    name: str  # header names lower-case
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class _Rule:
    issuer: str
    audiences: tuple[str, ...]
    locations: tuple[_Location, ...]
    inline_keys: KeySet | None
    jwks_uri: str
    forward: bool
    payload_header: str
    claim_headers: tuple[tuple[str, str], ...]  # (header, claim)
    space_delimited: frozenset[str]


def _compile_rule(rule: JWTRule) -> _Rule:
    locations: list[_Location] = [
        _Location("header", h.name.lower(), h.prefix or "") for h in rule.from_headers or ()
    ]
    locations += [_Location("param", p) for p in rule.from_params or ()]
    locations += [_Location("cookie", c) for c in rule.from_cookies or ()]
    if not locations:  # Istio's defaults
        locations = [
            _Location("header", "authorization", "Bearer "),
            _Location("param", "access_token"),
        ]
    return _Rule(
        issuer=rule.issuer or "",
        audiences=tuple(rule.audiences or ()),
        locations=tuple(locations),
        inline_keys=parse_jwks(rule.jwks) if rule.jwks is not None else None,
        jwks_uri=rule.jwks_uri or "",
        forward=bool(rule.forward_original_token),
        payload_header=(rule.output_payload_to_header or "").lower(),
        claim_headers=tuple(
            (c.header.lower(), c.claim) for c in rule.output_claim_to_headers or ()
        ),
        space_delimited=frozenset(DEFAULT_SPACE_DELIMITED_CLAIMS)
        | frozenset(rule.space_delimited_claims or ()),
    )


def _claim_value(payload: Mapping[str, Any], claim: str) -> str:
    """A claim copied to a header (``outputClaimToHeaders``): strings as they are, integral
    numbers without a fraction, booleans ``true``/``false``; nested by dots (``a.b``)."""
    value: Any = payload
    for name in claim.split("."):
        if not isinstance(value, Mapping) or name not in value:
            return ""
        value = value[name]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value) if value >= 0 else str(float(value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and value >= 0 else str(value)
    return ""


def _claims(payload: dict[str, Any], space_delimited: frozenset[str]) -> Mapping[str, Any]:
    claims = dict(payload)
    for name in space_delimited:
        value = claims.get(name)
        if isinstance(value, str) and " " in value:
            claims[name] = value.split()
    return MappingProxyType(claims)


class RequestAuthenticator:
    """The compiled ``jwtRules`` of a workload. ``authenticate`` is pure but for remote key sets,
    read through the fetcher (a sync fetch when one is due; ``aauthenticate`` awaits it)."""

    def __init__(
        self,
        rules: Sequence[_Rule],
        *,
        fetcher: JwksFetcher | None = None,
        clock: Clock = SYSTEM_CLOCK,
        clock_skew: int = CLOCK_SKEW,
    ) -> None:
        self._rules = tuple(rules)
        self._fetcher = fetcher
        self._clock = clock
        self._clock_skew = clock_skew
        sanitized: set[str] = set()
        for rule in self._rules:
            if rule.payload_header:
                sanitized.add(rule.payload_header)
            sanitized.update(header for header, _ in rule.claim_headers)
        self._sanitized = tuple(sorted(sanitized))

    @property
    def jwks_uris(self) -> tuple[str, ...]:
        """The remote key sets the rules need (to prefetch them)."""
        return tuple(dict.fromkeys(r.jwks_uri for r in self._rules if r.inline_keys is None))

    def authenticate(
        self, headers: Mapping[str, str] | Iterable[tuple[str, str]], query: str = ""
    ) -> AuthnOutcome:
        """Authenticate a request from its headers (any case; repeated names allowed) and its
        query string. Never raises."""
        fetcher = self._fetcher
        return self._authenticate(headers, query, fetcher.get if fetcher else None)

    async def aauthenticate(
        self, headers: Mapping[str, str] | Iterable[tuple[str, str]], query: str = ""
    ) -> AuthnOutcome:
        """``authenticate`` with remote key sets fetched through the async client."""
        keys: dict[str, KeySet | None] = {}
        if self._fetcher is not None:
            for uri in self.jwks_uris:
                keys[uri] = await self._fetcher.aget(uri)
        return self._authenticate(headers, query, keys.get)

    def _authenticate(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        query: str,
        remote: Callable[[str], KeySet | None] | None,
    ) -> AuthnOutcome:
        items = headers.items() if isinstance(headers, Mapping) else headers
        header_list = [(k.lower(), v) for k, v in items]
        if not self._rules:
            return AuthnOutcome(200)
        params = parse_qsl(query, keep_blank_values=True) if query else []
        cookies = _cookies(header_list)
        now = self._clock.wall()
        worst = MISSING
        for rule in self._rules:
            found = _extract(rule, header_list, params, cookies)
            if not found:
                continue  # Jwt is missing, for this rule
            keys = rule.inline_keys
            if keys is None:
                keys = remote(rule.jwks_uri) if remote is not None else None
            message, verified = "", None
            for token in found:  # every token a rule finds must be valid (Envoy)
                message, verified = verify_token(
                    token[1],
                    issuer=rule.issuer,
                    audiences=rule.audiences,
                    keys=keys,
                    now=now,
                    clock_skew=self._clock_skew,
                )
                if message:
                    break
            if not message and verified is not None:
                return self._passed(rule, verified, found, header_list)
            # Envoy's choice among failed rules: the last error that is neither a missing
            # token nor an unknown issuer, else an unknown issuer, else a missing token.
            if message != UNKNOWN_ISSUER or worst == MISSING:
                worst = message
        if worst == MISSING:
            return AuthnOutcome(200, headers=HeaderChanges(remove=self._sanitized))
        return AuthnOutcome(401, worst)

    def _passed(
        self,
        rule: _Rule,
        token: _Token,
        found: list[tuple[_Location, str]],
        header_list: list[tuple[str, str]],
    ) -> AuthnOutcome:
        payload = token.payload
        azp = payload.get("azp")
        authn = JwtAuthn(
            issuer=token.iss,
            subject=token.sub,
            audiences=token.audiences,
            presenter=azp if isinstance(azp, str) else "",
            claims=_claims(payload, rule.space_delimited),
            payload_b64=token.payload_b64,
        )
        remove = list(self._sanitized)
        if not rule.forward:
            for loc, _ in found:
                if loc.kind == "header" and loc.name not in remove:
                    remove.append(loc.name)
        add: list[tuple[str, str]] = []
        if rule.payload_header:
            add.append((rule.payload_header, token.payload_b64))
        for header, claim in rule.claim_headers:
            value = _claim_value(payload, claim)
            if value:
                add.append((header, value))
        return AuthnOutcome(200, authn=authn, headers=HeaderChanges(tuple(remove), tuple(add)))


def _cookies(header_list: list[tuple[str, str]]) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for name, value in header_list:
        if name == "cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value)
            except Exception:  # a malformed Cookie header holds no token
                continue
            cookies.update({k: m.value for k, m in jar.items()})
    return cookies


def _extract(
    rule: _Rule,
    header_list: list[tuple[str, str]],
    params: list[tuple[str, str]],
    cookies: Mapping[str, str],
) -> list[tuple[_Location, str]]:
    """The tokens a rule finds, with where each was (Envoy reads every location)."""
    found: list[tuple[_Location, str]] = []
    for loc in rule.locations:
        if loc.kind == "header":
            for name, value in header_list:
                if name == loc.name and value.startswith(loc.prefix):
                    token = value[len(loc.prefix) :].strip()
                    if token:
                        found.append((loc, token))
        elif loc.kind == "param":
            found += [(loc, v) for k, v in params if k == loc.name and v]
        elif cookies.get(loc.name):
            found.append((loc, cookies[loc.name]))
    return found


def compile_request_authentication(
    rules: Iterable[JWTRule],
    *,
    fetcher: JwksFetcher | None = None,
    clock: Clock = SYSTEM_CLOCK,
    clock_skew: int = CLOCK_SKEW,
) -> RequestAuthenticator:
    """Compile the ``jwtRules`` of every RequestAuthentication that applies to a workload (in
    the order Istio would list them) into one authenticator."""
    return RequestAuthenticator(
        [_compile_rule(r) for r in rules], fetcher=fetcher, clock=clock, clock_skew=clock_skew
    )
