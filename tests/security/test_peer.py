"""peer: an inbound client certificate chain, verified again against the mesh CA bundle."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from meshlib.errors import PeerIdentityError
from meshlib.security.ca import CertificateAuthority
from meshlib.security.peer import PeerVerifier, chain_of_environ, chain_of_scope
from meshlib.testing import FakeClock

PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
PRINCIPAL = "cluster.local/ns/default/sa/bookinfo-productpage"


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, ...]:
    base: Path = tmp_path_factory.mktemp("peer")
    return CertificateAuthority.init(base / "mesh"), CertificateAuthority.init(base / "other")


def pem(text: bytes) -> str:
    return text.decode("ascii")


def test_a_chain_of_the_mesh_ca_gives_its_spiffe_id(cas: tuple[CertificateAuthority, ...]) -> None:
    mesh_ca = cas[0]
    verifier = PeerVerifier(mesh_ca.bundle_pem)
    leaf = pem(mesh_ca.issue(PRODUCTPAGE).certificate_pem)
    assert verifier.verify([leaf]).uri == PRODUCTPAGE
    assert verifier.principal([leaf]) == PRINCIPAL
    assert verifier.principal([leaf]) == PRINCIPAL  # from the cache, checked again


def test_a_certificate_of_another_ca_is_no_identity(cas: tuple[CertificateAuthority, ...]) -> None:
    mesh_ca, other = cas
    verifier = PeerVerifier(mesh_ca.bundle_pem)
    forged = pem(other.issue(PRODUCTPAGE).certificate_pem)  # same SPIFFE ID, another signer
    assert verifier.principal([forged]) is None
    with pytest.raises(PeerIdentityError, match="does not verify"):
        verifier.verify([forged])
    # nor does sending the foreign CA along as an intermediate help
    assert verifier.principal([forged, pem(other.bundle_pem)]) is None


def test_an_expired_certificate_is_no_identity(tmp_path: Path) -> None:
    clock = FakeClock()
    mesh_ca = CertificateAuthority.init(tmp_path / "ca", clock=clock)
    leaf = pem(mesh_ca.issue(PRODUCTPAGE, lifetime=timedelta(hours=1)).certificate_pem)
    verifier = PeerVerifier(mesh_ca.bundle_pem, clock=clock)
    assert verifier.principal([leaf]) == PRINCIPAL
    clock.advance(2 * 3600)
    assert verifier.principal([leaf]) is None  # the cached result is checked against the time


def test_garbage_and_the_ca_itself_are_no_identity(cas: tuple[CertificateAuthority, ...]) -> None:
    mesh_ca = cas[0]
    verifier = PeerVerifier(mesh_ca.bundle_pem)
    assert verifier.principal([]) is None
    assert verifier.principal(["not a certificate"]) is None
    assert verifier.principal([pem(mesh_ca.bundle_pem)]) is None


def test_a_bundle_of_two_roots_trusts_both(cas: tuple[CertificateAuthority, ...]) -> None:
    mesh_ca, other = cas
    verifier = PeerVerifier(mesh_ca.bundle_pem + other.bundle_pem)
    assert verifier.principal([pem(other.issue(PRODUCTPAGE).certificate_pem)]) == PRINCIPAL


def test_where_servers_put_the_chain() -> None:
    scope = {"type": "http", "extensions": {"tls": {"client_cert_chain": ["A", "B"]}}}
    assert chain_of_scope(scope) == ("A", "B")
    assert chain_of_scope({"type": "http"}) == ()
    assert chain_of_scope({"extensions": {"tls": {"client_cert_chain": []}}}) == ()
    environ = {"SSL_CLIENT_CERT": "A", "SSL_CLIENT_CERT_CHAIN_0": "B"}
    assert chain_of_environ(environ) == ("A", "B")
    assert chain_of_environ({"SSL_CLIENT_CERT": ""}) == ()
