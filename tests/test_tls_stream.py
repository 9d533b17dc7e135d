"""``TLSStream`` (the mesh's client TLS over memory BIOs, reading ahead) against a TLS peer on
127.0.0.1 whose records each test cuts and sends as it likes; then, through httpx, side by side
with httpcore's own TLS (``ssl.SSLSocket``): the same answers and the same errors.

Waits are bounded: socket timeouts of ``WAIT`` seconds, and read timeouts of ``SHORT`` seconds
where a test wants a read to find nothing whole (then the stream must time out, not hang).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpcore
import httpx
import pytest

from meshlib import deadline
from meshlib.clients.httpx.httpcore import DeadlineBackend, PoolTransport
from meshlib.clients.httpx.tls import TLSBackend, TLSStream
from meshlib.security import tls
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId

pytestmark = pytest.mark.integration

WAIT = 5.0
SHORT = 0.05
SERVER = SpiffeId("cluster.local", "default", "reviews")
CLIENT = SpiffeId("cluster.local", "default", "productpage")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("tls-stream") / "ca")


@pytest.fixture(scope="module")
def server_certificate(ca: CertificateAuthority) -> WorkloadCertificate:
    return ca.issue(SERVER)


@pytest.fixture(scope="module")
def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    return tls.client_context(ca.issue(CLIENT))


@pytest.fixture(scope="module")
def server_context(server_certificate: WorkloadCertificate) -> ssl.SSLContext:
    return tls.server_context(server_certificate)


class Peer:
    """The server end of one TCP connection, its TLS on memory BIOs: the test turns plain text
    into records (``records``) and sends their bytes cut where it likes (``send``)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.error: BaseException | None = None

    def handshake(self) -> None:
        try:
            while True:
                try:
                    self.tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                if self.outgoing.pending:
                    self.sock.sendall(self.outgoing.read())
                if done:
                    return
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the client closed during the handshake")
                self.incoming.write(data)
        except BaseException as exc:  # the test looks at it
            self.error = exc

    def records(self, *messages: bytes) -> bytes:
        """The TLS bytes of ``messages``, one record (at most 16 KiB each) per message."""
        for message in messages:
            self.tls.write(message)
        return self.outgoing.read()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, size: int) -> bytes:
        """``size`` bytes of plain text the client sent."""
        received = b""
        while len(received) < size:
            try:
                received += self.tls.read(size - len(received))
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.incoming.write(data)
        return received


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected client socket and the server's end, on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=WAIT)
        server, _ = listener.accept()
    return client, server


@contextmanager
def connected(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> Iterator[tuple[TLSStream, Peer]]:
    client, server = tcp_pair()
    peer = Peer(server, server_context)
    thread = threading.Thread(target=peer.handshake, daemon=True)
    thread.start()
    try:
        stream = TLSStream.connect(client, client_context, "reviews", timeout=WAIT)
        thread.join(WAIT)
        assert peer.error is None
        yield stream, peer
    finally:
        client.close()
        server.close()
        thread.join(WAIT)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """A current deadline ``seconds`` from now on the monotonic clock."""
    token = deadline.enter(deadline.Deadline(time.monotonic() + seconds, time.monotonic))
    try:
        yield
    finally:
        deadline.leave(token)


# --------------------------------------------------------------------------- the stream


def test_what_one_recv_brings_is_read_record_by_record(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        peer.send(peer.records(b"HTTP/1.1 200 OK\r\n", b"content-length: 0\r\n\r\n"))
        assert stream.read(65536, WAIT) == b"HTTP/1.1 200 OK\r\n"
        # the second record came with the first: it is read from memory, not waited for
        assert stream.read(65536, SHORT) == b"content-length: 0\r\n\r\n"
        assert stream.get_extra_info("is_readable") is False


def test_a_read_smaller_than_a_record_leaves_the_rest_for_the_next(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        peer.send(peer.records(b"0123456789"))
        assert stream.read(4, WAIT) == b"0123"
        assert stream.read(65536, SHORT) == b"456789"


@pytest.mark.parametrize("cut", [1, 4, 5, 6, -1])
def test_a_record_cut_across_recvs_is_read_once_whole(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext, cut: int
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        message = b"x" * 1000
        record = peer.records(message)
        peer.send(record[:cut])
        with pytest.raises(httpcore.ReadTimeout):  # part of a record is not something to read
            stream.read(65536, SHORT)
        peer.send(record[cut:])
        assert stream.read(65536, WAIT) == message


def test_large_bodies_arrive_whole_both_ways(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    body = bytes(range(256)) * 16384  # 4 MiB: many records, more than the socket buffers hold
    with connected(client_context, server_context) as (stream, peer):
        sender = threading.Thread(target=lambda: peer.send(peer.records(body)), daemon=True)
        sender.start()
        received = bytearray()
        while len(received) < len(body):
            chunk = stream.read(65536, WAIT)
            assert chunk
            received += chunk
        sender.join(WAIT)
        assert bytes(received) == body

        got: list[bytes] = []
        receiver = threading.Thread(target=lambda: got.append(peer.receive(len(body))))
        receiver.start()
        stream.write(body, WAIT)
        receiver.join(WAIT)
        assert got == [body]


def test_the_peer_closing_mid_record_ends_the_stream(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        record = peer.records(b"y" * 1000)
        peer.send(record[:100])
        peer.sock.close()
        # the end of the stream, as ssl.SSLSocket reads it (suppress_ragged_eofs), not a hang
        assert stream.read(65536, WAIT) == b""
        assert stream.read(65536, WAIT) == b""
        assert stream.get_extra_info("is_readable") is True


def test_a_clean_close_ends_the_stream(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        peer.send(peer.records(b"last words"))
        with pytest.raises(ssl.SSLWantReadError):
            peer.tls.unwrap()  # close_notify, then it would wait for the client's
        peer.send(peer.outgoing.read())
        assert stream.read(65536, WAIT) == b"last words"
        assert stream.read(65536, WAIT) == b""


def test_garbage_instead_of_a_record_is_a_read_error(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        peer.send(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)  # application data that is not
        with pytest.raises(httpcore.ReadError) as caught:
            stream.read(65536, WAIT)
        assert isinstance(caught.value.__cause__, ssl.SSLError)


def test_the_deadline_bounds_the_wait_for_a_record(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        record = peer.records(b"z" * 100)
        peer.send(record[:50])
        with within(SHORT), pytest.raises(httpcore.ReadTimeout):
            stream.read(65536, None)  # no timeout of its own: the deadline ends the wait
        with within(-1.0), pytest.raises(httpcore.ReadTimeout, match="the deadline passed"):
            stream.read(65536, WAIT)
        with within(-1.0), pytest.raises(httpcore.WriteTimeout, match="the deadline passed"):
            stream.write(b"GET / HTTP/1.1\r\n\r\n", WAIT)
        peer.send(record[50:])
        assert stream.read(65536, WAIT) == b"z" * 100
        # the write the deadline refused sent nothing
        peer.sock.settimeout(SHORT)
        with pytest.raises(TimeoutError):
            peer.sock.recv(1)


def test_a_write_the_peer_does_not_read_times_out(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> None:
    with (
        connected(client_context, server_context) as (stream, _peer),
        pytest.raises(httpcore.WriteTimeout),
    ):
        stream.write(b"w" * (64 << 20), SHORT)


def test_extra_info_is_what_httpcore_and_the_mesh_ask_for(
    client_context: ssl.SSLContext,
    server_context: ssl.SSLContext,
    server_certificate: WorkloadCertificate,
) -> None:
    with connected(client_context, server_context) as (stream, peer):
        ssl_object = stream.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        expected = ssl.PEM_cert_to_DER_cert(server_certificate.certificate_pem.decode())
        assert ssl_object.getpeercert(True) == expected
        assert ssl_object.version() == "TLSv1.3"
        sock = stream.get_extra_info("socket")
        assert stream.get_extra_info("client_addr") == sock.getsockname()
        assert stream.get_extra_info("server_addr") == peer.sock.getsockname()
        assert stream.get_extra_info("anything else") is None
        peer.send(peer.records(b"answer"))  # (after TLS 1.3's session tickets)
        assert stream.read(65536, WAIT) == b"answer"
        assert stream.get_extra_info("is_readable") is False
        peer.send(peer.records(b"unasked"))
        assert stream.get_extra_info("is_readable") is True
        stream.close()
        assert sock.fileno() == -1
        assert stream.get_extra_info("is_readable") is True


def test_a_handshake_without_an_answer_times_out_and_closes_the_socket(
    client_context: ssl.SSLContext,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # connects, never answers
        address = listener.getsockname()[:2]
        client = socket.create_connection(address, timeout=WAIT)
        with pytest.raises(httpcore.ConnectTimeout):
            TLSStream.connect(client, client_context, "reviews", timeout=SHORT)
        assert client.fileno() == -1
        stream = TLSBackend().connect_tcp(*address, timeout=WAIT)
        with within(SHORT), pytest.raises(httpcore.ConnectTimeout):
            stream.start_tls(client_context, "reviews", timeout=WAIT)  # the deadline ends it
        assert stream.get_extra_info("socket").fileno() == -1


def test_a_refused_certificate_is_a_connect_error_caused_by_the_ssl_error(
    client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    other = CertificateAuthority.init(tmp_path / "other")
    client, server = tcp_pair()
    peer = Peer(server, tls.server_context(other.issue(SERVER)))
    thread = threading.Thread(target=peer.handshake, daemon=True)
    thread.start()
    with server:
        with pytest.raises(httpcore.ConnectError) as caught:
            TLSStream.connect(client, client_context, "reviews", timeout=WAIT)
        thread.join(WAIT)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert client.fileno() == -1


# --------------------------------------------------------------------------- through httpx


class Upstream:
    """A threaded HTTPS server (``ssl.SSLSocket``) answering each request as ``answer`` says."""

    def __init__(self, context: ssl.SSLContext, answer: Callable[[bytes], bytes | None]) -> None:
        self.context = context
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(WAIT)
        try:
            with self.context.wrap_socket(raw, server_side=True) as connection:
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        chunk = connection.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    reply = self.answer(head)
                    if reply is None:
                        return
                    if not reply:
                        connection.recv(1)  # until the client closes (or WAIT)
                        return
                    connection.sendall(reply)
                    if head.startswith(b"GET /cut "):
                        return  # the connection closes with the answer cut short
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(WAIT)


def answer(head: bytes) -> bytes | None:
    path = head.split(b" ")[1]
    if path == b"/big":
        body = b"b" * (1 << 20)
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    if path == b"/cut":
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part"
    if path == b"/slow":
        return b""  # no answer, until the client gives up
    if path == b"/close":
        return None
    return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-path: " + path + b"\r\n\r\nok"


@pytest.fixture(scope="module")
def upstream(server_context: ssl.SSLContext) -> Iterator[Upstream]:
    server = Upstream(server_context, answer)
    yield server
    server.close()


def side_by_side(
    client_context: ssl.SSLContext, call: Callable[[httpx.Client], object]
) -> dict[str, object]:
    """``call`` through httpcore pools on each backend; what it returned or raised."""
    results: dict[str, object] = {}
    for name, backend in (("httpcore", DeadlineBackend()), ("meshlib", TLSBackend())):
        pool = httpcore.ConnectionPool(ssl_context=client_context, network_backend=backend)
        with httpx.Client(transport=PoolTransport(pool)) as client:
            try:
                results[name] = call(client)
            except httpx.HTTPError as exc:
                results[name] = (type(exc), str(exc))
    return results


def test_through_httpx_answers_and_errors_are_httpcores(
    client_context: ssl.SSLContext, upstream: Upstream
) -> None:
    base = f"https://127.0.0.1:{upstream.port}"

    def keep_alive(client: httpx.Client) -> object:
        answers = [client.get(f"{base}/{n}") for n in range(3)]
        streams = {id(r.extensions["network_stream"]) for r in answers}
        return [(r.status_code, r.headers["x-path"], r.text) for r in answers], len(streams)

    def big(client: httpx.Client) -> object:
        response = client.get(f"{base}/big")
        return response.status_code, len(response.content), set(response.content)

    cases: dict[str, tuple[Callable[[httpx.Client], object], object]] = {
        "keep-alive": (keep_alive, ([(200, f"/{n}", "ok") for n in range(3)], 1)),
        "large body": (big, (200, 1 << 20, {ord("b")})),
        "body cut short": (lambda c: c.get(f"{base}/cut"), httpx.RemoteProtocolError),
        "closed": (lambda c: c.get(f"{base}/close"), httpx.RemoteProtocolError),
        "slow": (lambda c: c.get(f"{base}/slow", timeout=SHORT), httpx.ReadTimeout),
    }
    for name, (call, expected) in cases.items():
        results = side_by_side(client_context, call)
        assert results["meshlib"] == results["httpcore"], name
        found = results["meshlib"]
        if isinstance(expected, type):
            assert isinstance(found, tuple), name
            assert found[0] is expected, name
        else:
            assert found == expected, name
