"""Mutual TLS between workloads on 127.0.0.1: who gets in, who is refused, and why."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from meshlib.errors import PeerIdentityError
from meshlib.security import tls
from meshlib.security.ca import CertificateAuthority
from meshlib.security.identity import SpiffeId
from meshlib.security.verify import AcceptedPeers, explain_handshake_failure, peer_identity
from meshlib.testing import FakeClock
from tests.security.tls_harness import (
    WAIT,
    attempt,
    connect,
    dns,
    echo,
    make_certificate,
    serving,
    uri,
)

SERVER = SpiffeId("cluster.local", "default", "bookinfo-reviews")
CLIENT = SpiffeId("cluster.local", "default", "bookinfo-productpage")


def _clock(offset: timedelta = timedelta(0)) -> FakeClock:
    """A fake clock whose wall time is now + ``offset`` (OpenSSL checks dates by the real time)."""
    return FakeClock(wall=time.time() + offset.total_seconds())


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    # Made 30 days ago, so certificates dated in the past can be issued by it.
    return CertificateAuthority.init(
        tmp_path_factory.mktemp("mesh") / "ca", clock=_clock(-timedelta(days=30))
    )


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """Another CA for the same trust domain: the mesh does not trust it."""
    return CertificateAuthority.init(tmp_path_factory.mktemp("rogue") / "ca")


@pytest.fixture(scope="module")
def federated_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A CA of another trust domain."""
    return CertificateAuthority.init(
        tmp_path_factory.mktemp("other") / "ca", trust_domain="other.example"
    )


def _issue(
    ca: CertificateAuthority,
    spiffe_id: SpiffeId,
    *,
    at: timedelta = timedelta(0),
    lifetime: timedelta = timedelta(hours=24),
) -> tls.WorkloadCertificate:
    return CertificateAuthority.load(ca.directory, clock=_clock(at)).issue(spiffe_id, lifetime)


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> tls.WorkloadCertificate:
    return _issue(ca, SERVER)


@pytest.fixture(scope="module")
def client_cert(ca: CertificateAuthority) -> tls.WorkloadCertificate:
    return _issue(ca, CLIENT)


def _refusal(port: int, context: ssl.SSLContext) -> BaseException:
    error = attempt(port, context)
    assert error is not None, "the connection was accepted"
    return error


# --------------------------------------------------------------------------- the good handshake


def test_mutual_tls_both_sides_see_the_peer_spiffe_id(
    server_cert: tls.WorkloadCertificate, client_cert: tls.WorkloadCertificate
) -> None:
    with serving(tls.server_context(server_cert)) as server:
        started = time.perf_counter()
        with connect(server.port, tls.client_context(client_cert)) as connection:
            handshake = time.perf_counter() - started
            assert peer_identity(connection) == SERVER
            assert connection.version() in ("TLSv1.3", "TLSv1.2")
            assert echo(connection) == b"ping"
        seen = server.next()
    assert seen.error is None
    assert seen.identity == CLIENT
    assert seen.identity.principal == "cluster.local/ns/default/sa/bookinfo-productpage"
    assert handshake < WAIT


def test_the_client_checks_the_server_against_subject_alt_names(
    server_cert: tls.WorkloadCertificate, client_cert: tls.WorkloadCertificate
) -> None:
    with (
        serving(tls.server_context(server_cert)) as server,
        connect(server.port, tls.client_context(client_cert)) as connection,
    ):
        wanted = AcceptedPeers.of(subject_alt_names=[SERVER, "spiffe://cluster.local/ns/x/sa/y"])
        assert peer_identity(connection, wanted) == SERVER
        with pytest.raises(PeerIdentityError) as refused:
            peer_identity(
                connection,
                AcceptedPeers.of(
                    subject_alt_names=["spiffe://cluster.local/ns/default/sa/ratings"]
                ),
            )
    assert refused.value.presented == SERVER.uri
    assert "ratings" in refused.value.expected
    assert "expected one of spiffe://cluster.local/ns/default/sa/ratings" in str(refused.value)


def test_tls_12_is_the_floor(
    server_cert: tls.WorkloadCertificate, client_cert: tls.WorkloadCertificate
) -> None:
    client = tls.client_context(client_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with serving(tls.server_context(server_cert)) as server:
        with connect(server.port, client) as connection:
            assert connection.version() == "TLSv1.2"
            assert peer_identity(connection) == SERVER
        assert server.next().identity == CLIENT
    for context in (tls.server_context(server_cert), tls.client_context(client_cert)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
    assert not tls.client_context(client_cert).check_hostname


def test_alpn_is_offered_when_asked(
    server_cert: tls.WorkloadCertificate, client_cert: tls.WorkloadCertificate
) -> None:
    server = tls.server_context(server_cert, alpn=tls.ALPN_PROTOCOLS)
    client = tls.client_context(client_cert, alpn=["http/1.1"])
    with serving(server) as running, connect(running.port, client) as connection:
        assert connection.selected_alpn_protocol() == "http/1.1"


# --------------------------------------------------------------------------- refused clients


def test_an_expired_client_certificate_is_refused(
    ca: CertificateAuthority, server_cert: tls.WorkloadCertificate
) -> None:
    expired = _issue(ca, CLIENT, at=-timedelta(days=2))
    assert expired.expired()
    with serving(tls.server_context(server_cert)) as server:
        assert _refusal(server.port, tls.client_context(expired))
        seen = server.next()
    assert seen.error is not None
    assert "expired" in str(seen.error)
    assert "mesh CA" in seen.error.expected


def test_a_not_yet_valid_client_certificate_is_refused(
    ca: CertificateAuthority, server_cert: tls.WorkloadCertificate
) -> None:
    early = _issue(ca, CLIENT, at=timedelta(days=1))
    with serving(tls.server_context(server_cert)) as server:
        assert _refusal(server.port, tls.client_context(early))
        seen = server.next()
    assert seen.error is not None
    assert "not yet valid" in str(seen.error)


def test_a_client_of_another_ca_is_refused(
    other_ca: CertificateAuthority, server_cert: tls.WorkloadCertificate
) -> None:
    """Another CA that claims the same trust domain issues the same SPIFFE ID; the client knows
    the mesh's (public) CA bundle, so it accepts the server."""
    impostor = other_ca.issue(CLIENT)
    client = tls.client_context(impostor, ca_bundle_pem=server_cert.ca_bundle_pem)
    with serving(tls.server_context(server_cert)) as server:
        assert _refusal(server.port, client)
        seen = server.next()
    assert seen.error is not None
    assert "not signed by the mesh CA" in str(seen.error)


def test_a_self_signed_certificate_claiming_the_spiffe_id_is_refused(
    server_cert: tls.WorkloadCertificate,
) -> None:
    forged = make_certificate([uri(CLIENT.uri)], spiffe_id=CLIENT)
    client = tls.client_context(forged, ca_bundle_pem=server_cert.ca_bundle_pem)
    with serving(tls.server_context(server_cert)) as server:
        assert _refusal(server.port, client)
        seen = server.next()
    assert seen.error is not None
    assert "self-signed" in str(seen.error)


def test_no_client_certificate_is_refused_when_required(
    server_cert: tls.WorkloadCertificate,
) -> None:
    anonymous = tls.client_context(None, ca_bundle_pem=server_cert.ca_bundle_pem)
    with serving(tls.server_context(server_cert)) as server:
        error = _refusal(server.port, anonymous)
        seen = server.next()
    assert isinstance(error, (ssl.SSLError, OSError))
    assert seen.error is not None
    assert seen.error.presented == "no certificate"
    assert "presented no client certificate" in str(seen.error)
    if isinstance(error, ssl.SSLError) and error.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        assert "requires a client certificate" in str(explain_handshake_failure(error))


def test_permissive_use_lets_a_client_without_certificate_in_but_without_identity(
    server_cert: tls.WorkloadCertificate,
) -> None:
    anonymous = tls.client_context(None, ca_bundle_pem=server_cert.ca_bundle_pem)
    server = tls.server_context(server_cert, require_client_certificate=False)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    with serving(server) as running:
        with connect(running.port, anonymous) as connection:
            assert peer_identity(connection) == SERVER
        seen = running.next()
    assert seen.identity is None
    assert seen.error is not None
    assert "presented no certificate" in str(seen.error)


def test_permissive_use_still_verifies_a_certificate_that_is_sent(
    other_ca: CertificateAuthority, server_cert: tls.WorkloadCertificate
) -> None:
    server = tls.server_context(server_cert, require_client_certificate=False)
    with serving(server) as running:
        client = tls.client_context(other_ca.issue(CLIENT), ca_bundle_pem=server_cert.ca_bundle_pem)
        assert _refusal(running.port, client)
        assert "not signed by the mesh CA" in str(running.next().error)


def test_a_peer_of_another_trust_domain_is_refused_unless_accepted(
    federated_ca: CertificateAuthority,
    ca: CertificateAuthority,
    server_cert: tls.WorkloadCertificate,
) -> None:
    """Both CAs are trusted (a federated bundle); the trust domain decides."""
    bundle = ca.bundle_pem + federated_ca.bundle_pem
    stranger = federated_ca.issue(SpiffeId("other.example", "default", "bookinfo-productpage"))
    server = tls.server_context(server_cert, ca_bundle_pem=bundle)
    with serving(server) as running:
        assert _refusal(running.port, tls.client_context(stranger, ca_bundle_pem=bundle))
        seen = running.next()
    assert seen.error is not None
    assert seen.error.expected == "trust domain cluster.local"
    assert seen.error.presented == "spiffe://other.example/ns/default/sa/bookinfo-productpage"
    both = AcceptedPeers.of(trust_domains=["cluster.local", "other.example"])
    with serving(server, both) as running:
        assert attempt(running.port, tls.client_context(stranger, ca_bundle_pem=bundle)) is None
        assert running.next().identity == stranger.spiffe_id


@pytest.mark.parametrize(
    ("sans", "message"),
    [
        pytest.param(
            ["uri:" + CLIENT.uri, "uri:spiffe://cluster.local/ns/default/sa/admin"],
            "expected exactly one URI SAN (the SPIFFE ID), presented 2",
            id="two-uri-sans",
        ),
        pytest.param(
            ["dns:productpage.default.svc"], "presented 0 (DNS:productpage", id="dns-only"
        ),
        pytest.param(["uri:https://productpage/"], "not a workload SPIFFE ID", id="not-spiffe"),
        pytest.param(
            ["uri:spiffe://cluster.local/ns/default/sa/../admin"],
            "not a workload SPIFFE ID",
            id="dot-dot",
        ),
        pytest.param([], "without subject alternative names", id="no-san"),
    ],
)
def test_a_mesh_signed_certificate_without_one_spiffe_id_is_refused(
    ca: CertificateAuthority, server_cert: tls.WorkloadCertificate, sans: list[str], message: str
) -> None:
    """The chain is good (the mesh CA signed it); the identity is not."""
    names = [uri(s[4:]) if s.startswith("uri:") else dns(s[4:]) for s in sans]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subject = None if names else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    odd = make_certificate(names, ca=ca, subject=subject)
    with serving(tls.server_context(server_cert)) as server:
        assert _refusal(server.port, tls.client_context(odd))
        seen = server.next()
    assert seen.error is not None
    assert message in str(seen.error)


# --------------------------------------------------------------------------- refused servers


def test_the_client_refuses_an_expired_or_foreign_server(
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    client_cert: tls.WorkloadCertificate,
) -> None:
    cases = {
        "expired": _issue(ca, SERVER, at=-timedelta(days=2)),
        "not signed by the mesh CA": other_ca.issue(SERVER),
        "self-signed": make_certificate([uri(SERVER.uri)], spiffe_id=SERVER),
    }
    for words, certificate in cases.items():
        server = tls.server_context(certificate, ca_bundle_pem=ca.bundle_pem)
        with serving(server) as running:
            error = _refusal(running.port, tls.client_context(client_cert))
        assert isinstance(error, ssl.SSLCertVerificationError), words
        explained = explain_handshake_failure(error)
        assert words in str(explained), str(explained)
        assert explained.expected == "a certificate chain signed by the mesh CA"


def test_peer_identity_refuses_a_connection_that_did_not_verify(
    server_cert: tls.WorkloadCertificate,
) -> None:
    careless = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    careless.check_hostname = False
    careless.verify_mode = ssl.CERT_NONE
    server = tls.server_context(server_cert, require_client_certificate=False)
    with (
        serving(server) as running,
        connect(running.port, careless) as connection,
        pytest.raises(PeerIdentityError, match="CERT_NONE"),
    ):
        peer_identity(connection)


# --------------------------------------------------------------------------- key material on disk


def test_the_key_reaches_openssl_through_a_private_encrypted_file_that_is_removed(
    server_cert: tls.WorkloadCertificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Path, int, int, bytes]] = []
    write = tls.write_file

    def spy(path: Path, data: bytes, mode: int, **kwargs: bool) -> None:
        write(path, data, mode, **kwargs)
        seen.append((path, path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777, data))

    monkeypatch.setattr(tls, "write_file", spy)
    tls.server_context(server_cert)
    [(path, dir_mode, file_mode, data)] = seen
    assert (dir_mode, file_mode) == (0o700, 0o600)
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    assert server_cert.private_key_pem not in data
    assert not path.parent.exists()


def test_no_private_key_in_repr_or_str(server_cert: tls.WorkloadCertificate) -> None:
    body = server_cert.private_key_pem.split(b"\n")[1].decode()
    for text in (repr(server_cert), str(server_cert)):
        assert "PRIVATE KEY" not in text
        assert body not in text
        assert SERVER.uri in text


# --------------------------------------------------------------------------- httpx on the context


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        identity = peer_identity(self.connection)  # type: ignore[arg-type]
        body = identity.principal.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_server(server_cert: tls.WorkloadCertificate) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    httpd.socket = tls.server_context(server_cert).wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(WAIT)


def test_httpx_over_the_client_context(
    https_server: int, client_cert: tls.WorkloadCertificate
) -> None:
    client = httpx.Client(verify=tls.client_context(client_cert), timeout=WAIT)
    with client, client.stream("GET", f"https://127.0.0.1:{https_server}/") as response:
        # Read while the connection is open (the HTTP/1.0 server closes it after the body).
        stream = response.extensions["network_stream"]
        server_identity = peer_identity(stream.get_extra_info("ssl_object"))
        response.read()
    assert response.status_code == 200
    assert response.text == CLIENT.principal  # what the server saw
    assert server_identity == SERVER
