"""JSON Web Key Sets for RequestAuthentication: parsing (inline ``jwks``) and fetching
(``jwksUri``), with Envoy's messages.

A key set keeps the public keys it can use: RSA (``RS256/384/512``, ``PS256/384/512``), EC on
P-256/P-384/P-521 (``ES256``/``ES384``/``ES512``) and Ed25519 (``EdDSA``). Symmetric (``oct``) keys
are left out: a key set is published, so a secret in it is no secret, and leaving them out closes
the door to HMAC tokens altogether. A key that cannot be read is skipped, as Envoy does; a set
with none left reports ``Jwks doesn't have any valid public key``.

:class:`JwksFetcher` fetches ``jwksUri`` documents through an httpx client it is given (the mesh's
own, typically), keeps each for ``refresh_interval`` (Envoy's default: 5 minutes), and keeps the
last good set when a refresh fails. Time comes from the injected ``Clock``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from meshlib.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "DEFAULT_JWKS_REFRESH",
    "MAX_JWKS_BYTES",
    "Jwk",
    "JwksFetcher",
    "KeySet",
    "parse_jwks",
]

#: Envoy's default ``cache_duration`` of a remote JWKS.
DEFAULT_JWKS_REFRESH: Final = 300.0
#: A fetched key set larger than this is refused (a JWKS is a few KiB).
MAX_JWKS_BYTES: Final = 1 << 20

#: Algorithms each key type verifies; the EC ones are tied to the curve.
_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALG_BY_CURVE: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True, slots=True)
class Jwk:
    """One usable public key: its ``kid`` and ``alg`` ("" when the set leaves them out), its
    type, and the algorithms it may verify."""

    kid: str
    alg: str
    kty: str
    algorithms: frozenset[str]
    key: Any = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class KeySet:
    """A parsed key set: its usable keys, or why there are none (Envoy's message)."""

    keys: tuple[Jwk, ...] = ()
    error: str = ""


def _jwk_from(entry: Mapping[str, Any]) -> Jwk | None:
    """The key of one JWKS entry, or None when it is not a usable public key."""
    kty = entry.get("kty")
    key: Any
    kid = entry.get("kid", "")
    alg = entry.get("alg", "")
    if not isinstance(kid, str) or not isinstance(alg, str):
        return None
    try:
        if kty == "RSA":
            if alg and alg not in _RSA_ALGS:
                return None
            if "d" in entry:  # a private key in a key set: refuse rather than use
                return None
            key = RSAAlgorithm.from_jwk(dict(entry))
            return Jwk(kid, alg, "RSA", _RSA_ALGS, key)
        if kty == "EC":
            curve_alg = _EC_ALG_BY_CURVE.get(entry.get("crv", ""))
            if curve_alg is None or (alg and alg != curve_alg) or "d" in entry:
                return None
            key = ECAlgorithm.from_jwk(dict(entry))
            return Jwk(kid, alg, "EC", frozenset({curve_alg}), key)
        if kty == "OKP":
            if entry.get("crv") != "Ed25519" or (alg and alg != "EdDSA") or "d" in entry:
                return None
            key = OKPAlgorithm.from_jwk(dict(entry))
            return Jwk(kid, alg, "OKP", frozenset({"EdDSA"}), key)
    except Exception:  # PyJWT raises InvalidKeyError, ValueError, TypeError...: skip the key
        return None
    return None


def parse_jwks(text: str | bytes) -> KeySet:
    """Parse a JWKS document. Never raises: a broken set is a :class:`KeySet` with ``error``."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return KeySet(error="Jwks is an invalid JSON")
    if not isinstance(document, dict):
        return KeySet(error="Jwks is an invalid JSON")
    if "keys" not in document:
        return KeySet(error="Jwks does not have [keys] field")
    entries = document["keys"]
    if not isinstance(entries, list):
        return KeySet(error="[keys] in Jwks is not an array")
    keys = []
    for entry in entries:
        if isinstance(entry, dict):
            jwk = _jwk_from(entry)
            if jwk is not None:
                keys.append(jwk)
    if not keys:
        return KeySet(error="Jwks doesn't have any valid public key")
    return KeySet(keys=tuple(keys))


@dataclass(slots=True)
class _Entry:
    keys: KeySet | None = None  # the last good set
    fetched_at: float = float("-inf")  # when it was fetched
    tried_at: float = float("-inf")  # the last attempt, good or not


class JwksFetcher:
    """Fetches and caches ``jwksUri`` key sets.

    ``get(uri)`` (sync client) and ``aget(uri)`` (async client) return the cached set while it
    is younger than ``refresh_interval``, else fetch it again; a failed fetch keeps the last good
    set and is not retried before ``retry_interval``. ``None`` means no good set was ever had
    (Envoy: ``Jwks remote fetch is failed``). ``cached(uri)`` never fetches.
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        refresh_interval: float = DEFAULT_JWKS_REFRESH,
        retry_interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._async_client = async_client
        self._clock = clock
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.timeout = timeout
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def cached(self, uri: str) -> KeySet | None:
        entry = self._entries.get(uri)
        return entry.keys if entry else None

    def put(self, uri: str, keys: KeySet) -> None:
        """Store ``keys`` for ``uri`` as freshly fetched (for preloading and tests)."""
        with self._lock:
            entry = self._entries.setdefault(uri, _Entry())
            entry.keys, entry.fetched_at = keys, self._clock.now()
            entry.tried_at = entry.fetched_at

    def _due(self, uri: str) -> bool:
        """Whether ``uri`` should be fetched now; marks the attempt."""
        now = self._clock.now()
        with self._lock:
            entry = self._entries.setdefault(uri, _Entry())
            fresh = entry.keys is not None and now - entry.fetched_at < self.refresh_interval
            if fresh or now - entry.tried_at < self.retry_interval:
                return False
            entry.tried_at = now
            return True

    def _store(self, uri: str, response: httpx.Response | None) -> None:
        if response is None or response.status_code != 200:
            return
        body = response.content
        if len(body) > MAX_JWKS_BYTES:
            return
        keys = parse_jwks(body)
        if keys.error:  # a broken document does not replace a good one
            return
        with self._lock:
            entry = self._entries[uri]
            entry.keys, entry.fetched_at = keys, self._clock.now()

    def get(self, uri: str) -> KeySet | None:
        if self._client is not None and self._due(uri):
            try:
                response = self._client.get(uri, timeout=self.timeout)
            except httpx.HTTPError:
                response = None
            self._store(uri, response)
        return self.cached(uri)

    async def aget(self, uri: str) -> KeySet | None:
        if self._async_client is not None and self._due(uri):
            try:
                response = await self._async_client.get(uri, timeout=self.timeout)
            except httpx.HTTPError:
                response = None
            self._store(uri, response)
        return self.cached(uri)
