"""Who is calling? The SPIFFE ID of an inbound request's client certificate, verified here.

A TLS-terminating server hands the client's certificate chain to the app: in the ASGI scope as
the TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM strings, leaf first)
and in the WSGI environ as ``SSL_CLIENT_CERT`` (PEM, mod_ssl's name; the rest of the chain in
``SSL_CLIENT_CERT_CHAIN_0``, ``_1``…). The inbound side does not take the server's word that it
verified the chain: :class:`PeerVerifier` checks it again against the mesh's CA bundle with
cryptography's X.509 path validation (client profile: signature, validity period, CA
constraints, ``clientAuth`` usage), then reads the leaf's SPIFFE ID
(``meshlib.security.verify.spiffe_id_of``). A forged, expired or foreign certificate gives no
identity, as plain text does.

Results are cached per leaf (a few hundred distinct peers at most), and the validity period is
checked again on every use.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from meshlib.clock import SYSTEM_CLOCK, Clock
from meshlib.errors import PeerIdentityError
from meshlib.security.identity import SpiffeId
from meshlib.security.verify import spiffe_id_of

log = logging.getLogger("meshlib.security")

#: How many verified leaves a ``PeerVerifier`` remembers.
CACHE_SIZE = 256

Chain = Sequence[str | bytes]


def chain_of_scope(scope: Mapping[str, Any]) -> tuple[str, ...]:
    """The client certificate chain (PEM, leaf first) of an ASGI scope's TLS extension; empty
    when the connection is plain text or the client sent no certificate."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, Mapping) else None
    if not chain or isinstance(chain, (str, bytes)):
        return (chain,) if isinstance(chain, str) and chain else ()
    return tuple(c for c in chain if isinstance(c, str) and c)


def chain_of_environ(environ: Mapping[str, Any]) -> tuple[str, ...]:
    """The client certificate chain of a WSGI environ (``SSL_CLIENT_CERT`` and mod_ssl's
    ``SSL_CLIENT_CERT_CHAIN_<n>``); empty without a client certificate."""
    leaf = environ.get("SSL_CLIENT_CERT")
    if not isinstance(leaf, str) or not leaf.strip():
        return ()
    chain = [leaf]
    for index in range(16):
        more = environ.get(f"SSL_CLIENT_CERT_CHAIN_{index}")
        if not isinstance(more, str) or not more.strip():
            break
        chain.append(more)
    return tuple(chain)


def _pem(item: str | bytes) -> bytes:
    return item.encode("ascii") if isinstance(item, str) else bytes(item)


class PeerVerifier:
    """Verifies client certificate chains against one CA bundle (PEM: one or more roots)."""

    __slots__ = ("_cache", "_clock", "_lock", "_store", "bundle")

    def __init__(self, ca_bundle_pem: bytes | str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.bundle = _pem(ca_bundle_pem)
        roots = x509.load_pem_x509_certificates(self.bundle)
        self._store = Store(roots)
        self._clock = clock
        #: leaf as given (a server hands the same string to every request of a connection, so
        #: its hash is computed once) -> (SPIFFE ID, principal, not before, not after: POSIX)
        self._cache: OrderedDict[str | bytes, tuple[SpiffeId, str, float, float]]
        self._cache = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, chain: Chain) -> SpiffeId:
        """The SPIFFE ID of a chain (leaf first) that the CA bundle vouches for, now.
        Raises ``PeerIdentityError`` when there is no certificate, or it does not verify."""
        return self._verified(chain)[0]

    def _verified(self, chain: Chain) -> tuple[SpiffeId, str, float, float]:
        if not chain:
            raise PeerIdentityError(
                "peer identity refused: no client certificate",
                expected="a certificate chain signed by the mesh CA",
                presented="no certificate",
            )
        first = chain[0]
        key = first if isinstance(first, (str, bytes)) else bytes(first)
        now = self._clock.wall()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None and hit[2] <= now <= hit[3]:
            return hit
        try:
            leaf = x509.load_pem_x509_certificate(_pem(first))
            intermediates = [x509.load_pem_x509_certificate(_pem(c)) for c in chain[1:]]
            moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
            verifier = PolicyBuilder().store(self._store).time(moment).build_client_verifier()
            verifier.verify(leaf, intermediates)
        except Exception as exc:  # any failure to parse or verify: not a mesh peer
            raise PeerIdentityError(
                f"peer certificate refused: it does not verify against the mesh CA bundle: {exc}",
                expected="a certificate chain signed by the mesh CA",
                presented="a certificate that does not verify",
            ) from exc
        spiffe_id = spiffe_id_of(leaf)
        entry = (
            spiffe_id,
            spiffe_id.principal,
            leaf.not_valid_before_utc.timestamp(),
            leaf.not_valid_after_utc.timestamp(),
        )
        with self._lock:
            self._cache[key] = entry
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return entry

    def principal(self, chain: Chain) -> str | None:
        """Istio's principal of a verified chain (``cluster.local/ns/default/sa/x``); None when
        there is no chain or it does not verify (logged at debug)."""
        if not chain:
            return None
        try:
            return self._verified(chain)[1]
        except PeerIdentityError as exc:
            log.debug("inbound peer has no mesh identity: %s", exc)
            return None


__all__ = ["CACHE_SIZE", "PeerVerifier", "chain_of_environ", "chain_of_scope"]
