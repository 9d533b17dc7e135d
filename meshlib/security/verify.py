"""Whose certificate is this? The SPIFFE ID of a peer, checked after the TLS handshake.

The ssl module verifies the peer's chain against the mesh CA bundle during the handshake (the
contexts of ``meshlib.security.tls`` trust that bundle only and check no host name). What is
left is the identity: the leaf certificate must carry exactly one URI SAN (the SPIFFE X.509-SVID
rule; other SAN types are ignored), that URI must be a workload SPIFFE ID, its trust domain one
of the accepted ones and, when a list of subject alt names is given (DestinationRule
``tls.subjectAltNames``), the ID must be one of them.

Python 3.10 to 3.12 only expose the peer's leaf (``getpeercert(binary_form=True)``); 3.13's
``get_verified_chain()`` starts with the same leaf, and is preferred when present. Either way the
leaf is only trusted because the handshake verified it: ``peer_identity`` refuses a connection
whose context did not verify the peer (``CERT_NONE``).

Every refusal is a ``PeerIdentityError`` saying what was expected and what was presented; no
other exception escapes for malformed input.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from meshlib.errors import PeerIdentityError
from meshlib.security.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, check_trust_domain

_CHAIN = "a certificate chain signed by the mesh CA"


@dataclass(frozen=True, slots=True)
class AcceptedPeers:
    """Which peer identities a connection accepts.

    ``trust_domains``: the peer's trust domain must be one of these. ``subject_alt_names``: when
    not empty, the peer's SPIFFE ID (its URI) must equal one of them (DestinationRule
    ``tls.subjectAltNames``: any match).
    """

    trust_domains: frozenset[str] = frozenset({DEFAULT_TRUST_DOMAIN})
    subject_alt_names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.trust_domains:
            raise ValueError("AcceptedPeers needs at least one trust domain")
        for domain in self.trust_domains:
            check_trust_domain(domain)

    @classmethod
    def of(
        cls,
        trust_domains: Iterable[str] = (DEFAULT_TRUST_DOMAIN,),
        subject_alt_names: Iterable[str | SpiffeId] = (),
    ) -> AcceptedPeers:
        """Build from any iterables; ``SpiffeId`` values stand for their URI."""
        return cls(
            frozenset(trust_domains),
            frozenset(str(name) for name in subject_alt_names),
        )

    def describe(self) -> str:
        """What this accepts, for messages."""
        domains = ", ".join(sorted(self.trust_domains))
        if self.subject_alt_names:
            return f"one of {', '.join(sorted(self.subject_alt_names))}"
        return f"a SPIFFE ID in trust domain {domains}"

    def check(self, spiffe_id: SpiffeId) -> SpiffeId:
        """Return ``spiffe_id`` when accepted; raise ``PeerIdentityError`` when not."""
        if spiffe_id.trust_domain not in self.trust_domains:
            expected = f"trust domain {', '.join(sorted(self.trust_domains))}"
            raise PeerIdentityError(
                f"peer identity refused: expected {expected}, presented {spiffe_id} "
                f"(trust domain {spiffe_id.trust_domain})",
                expected=expected,
                presented=spiffe_id.uri,
            )
        if self.subject_alt_names and spiffe_id.uri not in self.subject_alt_names:
            expected = self.describe()
            raise PeerIdentityError(
                f"peer identity refused: expected {expected}, presented {spiffe_id}",
                expected=expected,
                presented=spiffe_id.uri,
            )
        return spiffe_id


ANY_IN_CLUSTER_LOCAL = AcceptedPeers()


def spiffe_id_of(certificate: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID a certificate carries: its one URI SAN. ``PeerIdentityError`` otherwise."""
    is_ca, uris, dns_names = _san_of(certificate)
    if is_ca:
        raise PeerIdentityError(
            "peer certificate refused: it is a CA certificate, not a workload's",
            expected="a workload certificate",
            presented="a CA certificate",
        )
    if uris is None:
        raise PeerIdentityError(
            "peer certificate refused: expected a SPIFFE ID as its URI SAN, presented a "
            "certificate without subject alternative names",
            expected="one URI SAN",
            presented="no SAN",
        )
    if len(uris) != 1:
        others = [f"DNS:{name}" for name in dns_names]
        presented = ", ".join([f"URI:{uri}" for uri in uris] + others) or "no URI or DNS SAN"
        raise PeerIdentityError(
            f"peer certificate refused: expected exactly one URI SAN (the SPIFFE ID), presented "
            f"{len(uris)} ({_cut(presented)})",
            expected="exactly one URI SAN",
            presented=_cut(presented),
        )
    try:
        return SpiffeId.parse(uris[0])
    except ValueError as exc:
        raise PeerIdentityError(
            f"peer certificate refused: its URI SAN is not a workload SPIFFE ID: {exc}",
            expected="spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>",
            presented=_cut(uris[0]),
        ) from exc


def _san_of(certificate: x509.Certificate) -> tuple[bool, list[str] | None, list[str]]:
    """Whether the certificate is a CA, its URI SANs (None: no SAN extension) and DNS SANs.

    cryptography decodes extensions lazily and a damaged certificate fails there with
    ``ValueError``, ``InvalidVersion``, ``DuplicateExtension`` and others; every failure to
    decode is a malformed certificate, so any ``Exception`` here becomes ``PeerIdentityError``.
    """
    try:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = bool(constraints.value.ca)
        except x509.ExtensionNotFound:
            is_ca = False
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return is_ca, None, []
        uris = [
            str(value) for value in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        ]
        dns_names = [str(value) for value in san.value.get_values_for_type(x509.DNSName)]
    except Exception as exc:  # hostile input: see the docstring
        raise _malformed(exc) from exc
    return is_ca, uris, dns_names


def spiffe_id_of_der(der: bytes) -> SpiffeId:
    """``spiffe_id_of`` on a DER certificate (what ``getpeercert(binary_form=True)`` gives)."""
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise PeerIdentityError(
            f"peer certificate refused: expected DER bytes, got {type(der).__name__}",
            expected="a DER certificate",
            presented=type(der).__name__,
        )
    try:
        certificate = x509.load_der_x509_certificate(bytes(der))
    except Exception as exc:  # hostile input: any decoding failure is malformed
        raise _malformed(exc) from exc
    return spiffe_id_of(certificate)


def verify_peer(der: bytes | None, accepted: AcceptedPeers = ANY_IN_CLUSTER_LOCAL) -> SpiffeId:
    """The peer's SPIFFE ID from its verified leaf certificate (DER), if ``accepted`` takes it.

    ``der`` is None when the peer sent no certificate: refused. Raises ``PeerIdentityError``.
    """
    if der is None or len(der) == 0:
        raise PeerIdentityError(
            f"peer identity refused: expected {accepted.describe()}, presented no certificate",
            expected=accepted.describe(),
            presented="no certificate",
        )
    return accepted.check(spiffe_id_of_der(der))


def peer_identity(
    connection: ssl.SSLSocket | ssl.SSLObject, accepted: AcceptedPeers = ANY_IN_CLUSTER_LOCAL
) -> SpiffeId:
    """The SPIFFE ID of the peer of a handshaken TLS connection, checked against ``accepted``.

    ``connection``: an ``ssl.SSLSocket``, an asyncio ``SSLObject``, or what an httpx response's
    ``extensions["network_stream"].get_extra_info("ssl_object")`` returns while the connection is
    open. Raises ``PeerIdentityError``."""
    if connection.context.verify_mode == ssl.CERT_NONE:
        raise PeerIdentityError(
            "peer identity refused: the connection's context does not verify certificates "
            "(CERT_NONE), so the peer's certificate proves nothing",
            expected=_CHAIN,
            presented="an unverified certificate",
        )
    return verify_peer(_leaf(connection), accepted)


def _leaf(connection: ssl.SSLSocket | ssl.SSLObject) -> bytes | None:
    verified_chain = getattr(connection, "get_verified_chain", None)  # Python 3.13+
    if verified_chain is not None:
        chain = verified_chain()
        if chain and isinstance(chain[0], bytes):
            return chain[0]
    der: bytes | None = connection.getpeercert(
        True
    )  # positional: _ssl._SSLSocket takes no keywords
    return der


# OpenSSL's verification results for the chain, in the mesh's words.
_VERIFY_CODES = {
    2: "not signed by the mesh CA (unable to get the issuer certificate)",
    9: "not yet valid",
    10: "expired",
    18: "self-signed, not signed by the mesh CA",
    19: "signed by a CA the mesh does not trust (self-signed certificate in the chain)",
    20: "not signed by the mesh CA (unable to get the local issuer certificate)",
    21: "not signed by the mesh CA (unable to verify the first certificate)",
    26: "not meant for this purpose (extended key usage)",
    79: "not acceptable under strict X.509 rules",
}
# Alerts the other side sends when it refuses our certificate (OpenSSL reason codes).
_PEER_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate and got none",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer refused our certificate: expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer refused our certificate: not signed by a CA it trusts",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused our certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the peer refused our certificate: unsupported",
}


def explain_handshake_failure(exc: ssl.SSLError) -> PeerIdentityError:
    """A TLS handshake error as a ``PeerIdentityError`` that says what went wrong in mesh terms
    (expired, not yet valid, not signed by the mesh CA, no client certificate, refused by the
    peer). Use it as ``raise explain_handshake_failure(exc) from exc``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        said = exc.verify_message or str(exc)
        what = _VERIFY_CODES.get(code, said)
        presented = f"a certificate {what}" if code in _VERIFY_CODES else said
        return PeerIdentityError(
            f"peer certificate refused: {what} (OpenSSL: {said}; expected {_CHAIN})",
            expected=_CHAIN,
            presented=presented,
        )
    reason = getattr(exc, "reason", None) or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return PeerIdentityError(
            "peer refused: it presented no client certificate, and this workload requires "
            f"mutual TLS (expected {_CHAIN})",
            expected=_CHAIN,
            presented="no certificate",
        )
    if reason in _PEER_REFUSED:
        return PeerIdentityError(
            f"{_PEER_REFUSED[reason]} (TLS alert {reason})",
            expected="the peer to accept our certificate",
            presented=reason,
        )
    return PeerIdentityError(
        f"TLS handshake failed: {exc}", expected="a TLS handshake", presented=str(exc)
    )


def _malformed(exc: BaseException) -> PeerIdentityError:
    return PeerIdentityError(
        f"peer certificate refused: malformed certificate ({_cut(str(exc))})",
        expected="a well-formed X.509 certificate",
        presented="malformed data",
    )


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "ANY_IN_CLUSTER_LOCAL",
    "AcceptedPeers",
    "explain_handshake_failure",
    "peer_identity",
    "spiffe_id_of",
    "spiffe_id_of_der",
    "verify_peer",
]
