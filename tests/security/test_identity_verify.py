"""verify: the SPIFFE ID of a peer certificate, and nothing but PeerIdentityError on bad input."""

from __future__ import annotations

import ssl
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from meshlib.errors import MeshError, PeerIdentityError
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId
from meshlib.security.verify import (
    AcceptedPeers,
    explain_handshake_failure,
    spiffe_id_of_der,
    verify_peer,
)
from tests.security.tls_harness import dns, make_certificate, uri

REVIEWS = SpiffeId("cluster.local", "default", "bookinfo-reviews")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("verify") / "ca")


@pytest.fixture(scope="module")
def der(ca: CertificateAuthority) -> bytes:
    return _der(ca.issue(REVIEWS))


def _der(certificate: WorkloadCertificate) -> bytes:
    leaf = x509.load_pem_x509_certificate(certificate.certificate_pem)
    return leaf.public_bytes(serialization.Encoding.DER)


def test_the_spiffe_id_of_a_workload_certificate(der: bytes) -> None:
    assert spiffe_id_of_der(der) == REVIEWS
    assert verify_peer(der) == REVIEWS
    assert verify_peer(der, AcceptedPeers.of(subject_alt_names=[REVIEWS.uri])) == REVIEWS


def test_no_certificate_says_what_was_expected(der: bytes) -> None:
    with pytest.raises(PeerIdentityError) as caught:
        verify_peer(None, AcceptedPeers.of(subject_alt_names=[REVIEWS]))
    assert caught.value.presented == "no certificate"
    assert caught.value.expected == f"one of {REVIEWS.uri}"
    assert isinstance(caught.value, MeshError)


def test_trust_domain_and_subject_alt_names_both_apply(der: bytes) -> None:
    with pytest.raises(PeerIdentityError, match=r"expected trust domain example\.org"):
        verify_peer(der, AcceptedPeers.of(trust_domains=["example.org"]))
    with pytest.raises(PeerIdentityError, match=r"presented spiffe://cluster\.local"):
        verify_peer(der, AcceptedPeers.of(subject_alt_names=["spiffe://cluster.local/ns/a/sa/b"]))
    # A principal (no scheme) is not a URI SAN: DestinationRule subjectAltNames match exactly.
    with pytest.raises(PeerIdentityError):
        verify_peer(der, AcceptedPeers.of(subject_alt_names=[REVIEWS.principal]))


def test_accepted_peers_refuse_bad_trust_domains() -> None:
    with pytest.raises(ValueError, match="trust domain"):
        AcceptedPeers.of(trust_domains=["Cluster.Local"])
    with pytest.raises(ValueError, match="at least one"):
        AcceptedPeers.of(trust_domains=[])


def test_a_ca_certificate_is_not_a_workload(ca: CertificateAuthority) -> None:
    root = ca.certificate.public_bytes(serialization.Encoding.DER)
    with pytest.raises(PeerIdentityError, match="CA certificate"):
        verify_peer(root)


def test_other_san_types_beside_one_uri_are_allowed(ca: CertificateAuthority) -> None:
    """The SPIFFE X.509-SVID rule: exactly one URI SAN, any number of others."""
    both = make_certificate([dns("reviews.default.svc"), uri(REVIEWS.uri)], ca=ca)
    assert verify_peer(_der(both)) == REVIEWS


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_peer_identity_error(data: bytes) -> None:
    with pytest.raises(PeerIdentityError):
        verify_peer(data)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(st.data())
def test_a_damaged_certificate_raises_only_peer_identity_error(
    der: bytes, data: st.DataObject
) -> None:
    damaged = bytearray(der)
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(der)))
    for candidate in (bytes(damaged), der[:cut], bytes(damaged) + der[cut:]):
        try:
            spiffe = verify_peer(candidate)
        except PeerIdentityError:
            continue
        assert spiffe.trust_domain == "cluster.local"


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=60,
    deadline=None,
)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80))
def test_any_uri_san_is_accepted_only_as_a_valid_spiffe_id(
    ca: CertificateAuthority, text: str
) -> None:
    try:
        certificate = make_certificate([uri(text)], ca=ca)
    except ValueError:
        assume(False)
        return
    try:
        spiffe = verify_peer(_der(certificate))
    except PeerIdentityError as exc:
        refused = exc
    else:
        assert spiffe.uri == text
        return
    assert refused.expected


def test_handshake_errors_are_explained() -> None:
    verify_failure = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify_failure.verify_code = 10
    verify_failure.verify_message = "certificate has expired"
    explained = explain_handshake_failure(verify_failure)
    assert "expired" in str(explained)
    assert explained.presented == "a certificate expired"
    other = ssl.SSLError(1, "something else")
    assert "TLS handshake failed" in str(explain_handshake_failure(other))


def test_the_fixture_directory_is_private(ca: CertificateAuthority) -> None:
    assert ca.directory.stat().st_mode & 0o777 == 0o700
    assert timedelta(0) < ca.issue(REVIEWS).lifetime <= timedelta(hours=24, minutes=5)
