"""Real TLS on 127.0.0.1 for the identity tests: a threaded server, a client, forged certificates.

Every wait is bounded (socket timeouts of ``WAIT`` seconds); nothing sleeps.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib.errors import PeerIdentityError
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId
from meshlib.security.verify import (
    ANY_IN_CLUSTER_LOCAL,
    AcceptedPeers,
    explain_handshake_failure,
    peer_identity,
)

WAIT = 5.0


@dataclass(frozen=True)
class Accepted:
    """What the server saw on one connection: the client's identity, or why it was refused."""

    identity: SpiffeId | None
    error: PeerIdentityError | None


class Server:
    """Accepts TLS connections in a thread; per connection: handshake, check the peer's SPIFFE
    ID, then echo until the client closes. ``context`` is called for each connection."""

    def __init__(self, context: Callable[[], ssl.SSLContext], accepted: AcceptedPeers) -> None:
        self._context = context
        self._accepted = accepted
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(WAIT)
        self.port: int = self._listener.getsockname()[1]
        self.results: queue.Queue[Accepted] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def next(self) -> Accepted:
        return self.results.get(timeout=WAIT)

    def close(self) -> None:
        self._closing.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._listener.close()
        self._acceptor.join(WAIT)
        for thread in self._threads:
            thread.join(WAIT)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(WAIT)
        try:
            connection = self._context().wrap_socket(raw, server_side=True)
        except ssl.SSLError as exc:
            raw.close()
            self.results.put(Accepted(None, explain_handshake_failure(exc)))
            return
        except OSError:
            raw.close()
            return
        with connection:
            try:
                self.results.put(Accepted(peer_identity(connection, self._accepted), None))
            except PeerIdentityError as exc:
                self.results.put(Accepted(None, exc))
                return  # refused: close without serving
            try:
                while data := connection.recv(1024):
                    connection.sendall(data)
            except OSError:
                pass


@contextmanager
def serving(
    context: ssl.SSLContext | Callable[[], ssl.SSLContext],
    accepted: AcceptedPeers = ANY_IN_CLUSTER_LOCAL,
) -> Iterator[Server]:
    factory = context if callable(context) else (lambda: context)
    server = Server(factory, accepted)
    try:
        yield server
    finally:
        server.close()


def connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A handshaken client connection (raises ``ssl.SSLError`` if the handshake fails here)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        return context.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def echo(connection: ssl.SSLSocket, data: bytes = b"ping") -> bytes:
    connection.sendall(data)
    return connection.recv(len(data))


def attempt(port: int, context: ssl.SSLContext) -> BaseException | None:
    """Connect, handshake and exchange one message; the exception that stopped it, or None.

    Under TLS 1.3 a client learns that the server refused its certificate only on its first
    read, so the exchange is part of the attempt."""
    try:
        with connect(port, context) as connection:
            if echo(connection) != b"ping":
                return ConnectionError("the server closed the connection")
    except (ssl.SSLError, OSError) as exc:
        return exc
    return None


def serial_of(connection: ssl.SSLSocket) -> int:
    der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --------------------------------------------------------------------------- forged certificates


def ca_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((ca.directory / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def make_certificate(
    sans: Sequence[x509.GeneralName],
    *,
    ca: CertificateAuthority | None = None,
    spiffe_id: SpiffeId | None = None,
    subject: x509.Name | None = None,
    lifetime: timedelta = timedelta(hours=1),
) -> WorkloadCertificate:
    """A leaf with exactly ``sans``, signed by ``ca`` (None: self-signed). Used to build the
    certificates a CA of meshlib never issues (two URIs, DNS only, forged)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    name = subject if subject is not None else x509.Name([])
    issuer_key = ca_key(ca) if ca is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.certificate.subject if ca is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(sans)), critical=len(name) == 0
        )
    if ca is not None:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
            critical=False,
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())
    return WorkloadCertificate(
        spiffe_id=spiffe_id or SpiffeId("cluster.local", "default", "forged"),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ca_bundle_pem=ca.bundle_pem if ca is not None else b"",
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        serial_number=certificate.serial_number,
    )


def uri(value: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(value)


def dns(value: str) -> x509.GeneralName:
    return x509.DNSName(value)


def read_key_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
