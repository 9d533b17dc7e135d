"""meshlib.serve: inbound mutual TLS as PeerAuthentication says, on real sockets on 127.0.0.1.

Every server runs in a thread of the test process with certificates from a temporary CA; every
wait is bounded (``WAIT`` seconds)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from meshlib import Mesh
from meshlib.security import tls
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.verify import spiffe_id_of_der
from meshlib.security.workload import WorkloadIdentity
from meshlib.server.runner import (
    MeshH11Protocol,
    MeshServer,
    _ResponseWriter,
    make_server,
    make_wsgi_server,
)
from meshlib.testing import FakeClock

WAIT = 10.0
HOST = "127.0.0.1"
REVIEWS = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
# The server's certificates live 10 minutes from (fake) now - 5 min: renewed at their middle,
# 2.5 min from now. After 3 minutes of fake time the next connection rotates; the new
# certificate starts at real now - 2 min, so OpenSSL, which reads the real clock, accepts it.
PAST_THE_MIDDLE = 180.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("runner") / "ca"
    CertificateAuthority.init(directory, clock=FakeClock(wall=time.time() - 86400))
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    directory = tmp_path_factory.mktemp("runner") / "other-ca"
    return CertificateAuthority.init(directory, clock=FakeClock(wall=time.time() - 86400))


@pytest.fixture(scope="module")
def client_identity(ca_dir: Path) -> WorkloadIdentity:
    """A mesh workload calling the server: reviews."""
    return WorkloadIdentity.from_ca(ca_dir, REVIEWS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=time.time())


def mesh_yaml(ca_dir: Path | None, *policies: str) -> str:
    identity = f"identity: {{ca: {ca_dir}, certificateLifetime: 10m}}" if ca_dir else ""
    text = f"""\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage}}
spec:
  version: v1
  {identity}
"""
    for policy in policies:
        text += "---\n" + policy
    return text


def policy(mode: str, *, namespace: str = "istio-system", extra: str = "") -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {namespace}}}
spec:
  mtls: {{mode: {mode}}}
{extra}"""


async def scope_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what the scope says of the connection."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                LIFESPAN.append("startup")
                await send({"type": "lifespan.startup.complete"})
            else:
                LIFESPAN.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    extensions = scope.get("extensions") or {}
    tls_extension = extensions.get("tls")
    peer = None
    serial = None
    if tls_extension is not None:
        chain = tls_extension["client_cert_chain"]
        if chain:
            peer = spiffe_id_of_der(ssl.PEM_cert_to_DER_cert(chain[0])).uri
        serial = x509.load_pem_x509_certificate(tls_extension["server_cert"].encode()).serial_number
    body = json.dumps(
        {
            "scheme": scope["scheme"],
            "client": list(scope["client"]),
            "server": list(scope["server"]),
            "tls": tls_extension,
            "meshlib": extensions.get("meshlib"),
            "peer": peer,
            "server_serial": serial,
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


LIFESPAN: list[str] = []


@contextmanager
def running(
    app: Any, mesh: Mesh, *, wsgi: bool = False, sock: socket.socket | None = None, **options: Any
) -> Iterator[tuple[MeshServer, int]]:
    """The app served in a thread on ``sock`` (default: a fresh port); stopped (gracefully)
    on exit."""
    sock = sock if sock is not None else socket.create_server((HOST, 0))
    port = sock.getsockname()[1]
    options.setdefault("log_level", "warning")
    options.setdefault("lifespan", "on")
    server = (make_wsgi_server if wsgi else make_server)(app, mesh, port=port, **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.005)
    try:
        yield server, port
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def serve_mesh(ca_dir: Path | None, *policies: str, clock: FakeClock | None = None) -> Mesh:
    return Mesh.from_yaml(mesh_yaml(ca_dir, *policies), clock=clock or FakeClock(wall=time.time()))


def mtls_client(identity: WorkloadIdentity) -> httpx.Client:
    return httpx.Client(verify=identity.client_context(), timeout=WAIT)


def get(client: httpx.Client, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def http_over(sock: socket.socket) -> bytes:
    """Send a request on a connected socket; the response bytes (until the server closes or
    the response is complete)."""
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def tls_attempt(port: int, context: ssl.SSLContext) -> BaseException | bytes:
    """A real TLS handshake and one request: the response, or what stopped it (under TLS 1.3
    a client learns its certificate was refused on its first read)."""
    try:
        with (
            socket.create_connection((HOST, port), timeout=WAIT) as raw,
            context.wrap_socket(raw) as connection,
        ):
            response = http_over(connection)
    except (ssl.SSLError, OSError) as exc:
        return exc
    if not response:  # a TLS 1.3 server refusing a certificate may just close
        return ConnectionError("closed without a response")
    return response


def no_cert_context(ca_dir: Path) -> ssl.SSLContext:
    """A TLS client trusting the mesh CA and presenting no certificate."""
    bundle = (ca_dir / "ca.pem").read_bytes()
    return tls.client_context(None, ca_bundle_pem=bundle)


def presenting(certificate: WorkloadCertificate, ca_dir: Path) -> ssl.SSLContext:
    """A TLS client trusting the mesh CA (so the server is accepted) and presenting
    ``certificate``, whoever signed it."""
    return tls.client_context(certificate, ca_bundle_pem=(ca_dir / "ca.pem").read_bytes())


# --------------------------------------------------------------------------- STRICT


def test_strict_accepts_a_mesh_client_and_the_app_sees_its_spiffe_id(
    ca_dir: Path, client_identity: WorkloadIdentity
) -> None:
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(scope_app, mesh) as (_, port), mtls_client(client_identity) as client:
        seen = get(client, f"https://{HOST}:{port}/")
    assert seen["scheme"] == "https"
    assert seen["peer"] == REVIEWS
    assert seen["meshlib"] == {"connection_security_policy": "mutual_tls", "mtls_mode": "STRICT"}
    extension = seen["tls"]
    assert set(extension) == {
        "server_cert",
        "client_cert_chain",
        "client_cert_name",
        "client_cert_error",
        "tls_version",
        "cipher_suite",
    }
    assert extension["client_cert_error"] is None
    assert extension["tls_version"] == 0x0304
    assert extension["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert len(extension["client_cert_chain"]) >= 1
    assert extension["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
    assert isinstance(extension["client_cert_name"], str)  # RFC 4514 ("" for Istio's shape)
    server_der = ssl.PEM_cert_to_DER_cert(extension["server_cert"])
    assert spiffe_id_of_der(server_der).uri == PRODUCTPAGE
    assert seen["client"][0] == HOST
    assert seen["server"] == [HOST, port]


def test_strict_resets_plain_text(ca_dir: Path) -> None:
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(scope_app, mesh) as (_, port):
        with (
            socket.create_connection((HOST, port), timeout=WAIT) as sock,
            pytest.raises(ConnectionResetError),
        ):
            http_over(sock)
        with httpx.Client(timeout=WAIT) as client, pytest.raises(httpx.TransportError):
            client.get(f"http://{HOST}:{port}/")


def test_strict_refuses_tls_without_a_client_certificate(ca_dir: Path) -> None:
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(scope_app, mesh) as (_, port):
        outcome = tls_attempt(port, no_cert_context(ca_dir))
    assert isinstance(outcome, (ssl.SSLError, OSError)), outcome


def test_strict_refuses_a_certificate_from_another_ca(
    ca_dir: Path, other_ca: CertificateAuthority
) -> None:
    foreign = other_ca.issue(REVIEWS)
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(scope_app, mesh) as (_, port):
        outcome = tls_attempt(port, presenting(foreign, ca_dir))
    assert isinstance(outcome, (ssl.SSLError, OSError)), outcome


def test_strict_refuses_an_expired_certificate(ca_dir: Path) -> None:
    past = CertificateAuthority.load(ca_dir, clock=FakeClock(wall=time.time() - 7200))
    expired = past.issue(REVIEWS, timedelta(minutes=10))  # ended an hour and a half ago
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(scope_app, mesh) as (_, port):
        outcome = tls_attempt(port, presenting(expired, ca_dir))
        assert isinstance(outcome, (ssl.SSLError, OSError)), outcome
        # the same client with a valid certificate gets through: the expiry was the reason
        fresh = CertificateAuthority.load(ca_dir).issue(REVIEWS)
        assert isinstance(tls_attempt(port, presenting(fresh, ca_dir)), bytes)


# --------------------------------------------------------------------------- PERMISSIVE, DISABLE


def test_permissive_takes_both_on_one_port_and_the_scope_says_which(
    ca_dir: Path, client_identity: WorkloadIdentity
) -> None:
    mesh = serve_mesh(ca_dir)  # no policy: PERMISSIVE
    with running(scope_app, mesh) as (_, port):
        with mtls_client(client_identity) as client:
            secure = get(client, f"https://{HOST}:{port}/")
        with httpx.Client(timeout=WAIT) as client:
            plain = get(client, f"http://{HOST}:{port}/")
        tls_only = tls_attempt(port, no_cert_context(ca_dir))
    assert secure["meshlib"] == {
        "connection_security_policy": "mutual_tls",
        "mtls_mode": "PERMISSIVE",
    }
    assert secure["peer"] == REVIEWS
    assert plain["meshlib"] == {"connection_security_policy": "none", "mtls_mode": "PERMISSIVE"}
    assert plain["scheme"] == "http"
    assert plain["tls"] is None
    # TLS without a client certificate: served, but not mutual TLS
    assert isinstance(tls_only, bytes)
    body = json.loads(tls_only.split(b"\r\n\r\n", 1)[1])
    assert body["meshlib"]["connection_security_policy"] == "none"
    assert body["tls"]["client_cert_chain"] == []
    assert body["tls"]["client_cert_name"] is None


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_mutual_tls_and_plain_text_on_either_event_loop(
    ca_dir: Path, client_identity: WorkloadIdentity, other_ca: CertificateAuthority, loop: str
) -> None:
    """uvicorn's ``loop`` option picks the event loop (``auto``, the default, takes uvloop when
    it is installed, as the ``server`` extra installs it): TLS is terminated by that loop's own
    TLS layer, and every decision is the same on both."""
    pytest.importorskip(loop)
    mesh = serve_mesh(ca_dir)  # PERMISSIVE: both on one port
    with running(scope_app, mesh, loop=loop) as (_, port):
        with mtls_client(client_identity) as client:
            secure = [get(client, f"https://{HOST}:{port}/") for _ in range(3)]
        with httpx.Client(timeout=WAIT) as client:
            plain = get(client, f"http://{HOST}:{port}/")
        stranger = other_ca.issue(REVIEWS)
        refused = tls_attempt(port, presenting(stranger, ca_dir))
    assert {seen["loop"] for seen in [*secure, plain]} == {loop}
    assert all(seen["peer"] == REVIEWS for seen in secure)
    assert secure[0]["meshlib"]["connection_security_policy"] == "mutual_tls"
    assert plain["meshlib"]["connection_security_policy"] == "none"
    assert isinstance(refused, BaseException)


def test_permissive_still_refuses_a_certificate_from_another_ca(
    ca_dir: Path, other_ca: CertificateAuthority
) -> None:
    mesh = serve_mesh(ca_dir, policy("PERMISSIVE"))
    with running(scope_app, mesh) as (_, port):
        outcome = tls_attempt(port, presenting(other_ca.issue(REVIEWS), ca_dir))
    assert isinstance(outcome, (ssl.SSLError, OSError)), outcome


def test_disable_serves_plain_text_only(ca_dir: Path, client_identity: WorkloadIdentity) -> None:
    mesh = serve_mesh(ca_dir, policy("DISABLE", namespace="default"))
    with running(scope_app, mesh) as (_, port):
        with httpx.Client(timeout=WAIT) as client:
            plain = get(client, f"http://{HOST}:{port}/")
        with mtls_client(client_identity) as client, pytest.raises(httpx.TransportError):
            client.get(f"https://{HOST}:{port}/")
    assert plain["meshlib"] == {"connection_security_policy": "none", "mtls_mode": "DISABLE"}


def test_without_identity_plain_text_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mesh = serve_mesh(None, policy("STRICT"))
    caplog.set_level(logging.WARNING, logger="meshlib.server")
    with running(scope_app, mesh) as (_, port):
        for _ in range(3):
            with httpx.Client(timeout=WAIT) as fresh:  # a new connection each time
                seen = get(fresh, f"http://{HOST}:{port}/")
    assert seen["meshlib"] == {"connection_security_policy": "none", "mtls_mode": None}
    said = [r for r in caplog.records if "no identity" in r.getMessage()]
    assert len(said) == 1


def test_a_socket_bound_but_not_listening_is_served() -> None:
    """As uvicorn serves a socket it is handed (``loop.create_server(sock=...)`` listens)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    with (
        running(scope_app, serve_mesh(None), sock=sock) as (_, port),
        httpx.Client(timeout=WAIT) as http,
    ):
        assert get(http, f"http://{HOST}:{port}/")["meshlib"]["mtls_mode"] is None


def test_a_port_level_setting_overrides_the_workload_mode(ca_dir: Path) -> None:
    sock = socket.create_server((HOST, 0))
    port = sock.getsockname()[1]
    workload = f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: productpage, namespace: default}}
spec:
  selector: {{matchLabels: {{app: productpage}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls:
    "{port}": {{mode: PERMISSIVE}}
"""
    mesh = serve_mesh(ca_dir, workload)
    with running(scope_app, mesh, sock=sock), httpx.Client(timeout=WAIT) as client:
        seen = get(client, f"http://{HOST}:{port}/")
    assert seen["meshlib"]["mtls_mode"] == "PERMISSIVE"
    # on another port the workload's STRICT holds
    with (
        running(scope_app, mesh) as (_, other),
        socket.create_connection((HOST, other), timeout=WAIT) as plain,
        pytest.raises(ConnectionResetError),
    ):
        http_over(plain)


# --------------------------------------------------------------------------- rotation, silence


def test_rotation_new_connections_get_the_new_certificate_open_ones_keep_working(
    ca_dir: Path, client_identity: WorkloadIdentity, clock: FakeClock
) -> None:
    mesh = serve_mesh(ca_dir, policy("STRICT"), clock=clock)
    with running(scope_app, mesh) as (_, port), mtls_client(client_identity) as kept:
        url = f"https://{HOST}:{port}/"
        first = get(kept, url)
        clock.advance(PAST_THE_MIDDLE)
        with mtls_client(client_identity) as fresh:
            second = get(fresh, url)
        again = get(kept, url)  # the open keep-alive connection
    assert second["server_serial"] != first["server_serial"]
    assert again["client"] == first["client"]  # the same connection...
    assert again["server_serial"] == first["server_serial"]  # ...with its certificate
    identity = mesh.identity
    assert identity is not None
    assert identity.certificate.serial_number == second["server_serial"]


def test_a_silent_client_does_not_block_others_and_is_closed(ca_dir: Path) -> None:
    mesh = serve_mesh(ca_dir)
    with (
        running(scope_app, mesh, first_byte_timeout=0.5) as (_, port),
        socket.create_connection((HOST, port), timeout=WAIT) as silent,
    ):
        started = time.monotonic()
        with httpx.Client(timeout=WAIT) as client:
            assert get(client, f"http://{HOST}:{port}/")["scheme"] == "http"
        assert time.monotonic() - started < 0.5  # not held behind the silent one
        assert silent.recv(1) == b""  # closed once its wait is over
        assert time.monotonic() - started < WAIT


# --------------------------------------------------------------------------- lifespan, WSGI


def test_lifespan_events_reach_the_app(ca_dir: Path) -> None:
    LIFESPAN.clear()
    with running(scope_app, serve_mesh(ca_dir)):
        assert LIFESPAN == ["startup"]
    assert LIFESPAN == ["startup", "shutdown"]


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    facts = {
        "scheme": environ["wsgi.url_scheme"],
        "client_cert": environ.get("SSL_CLIENT_CERT"),
        "policy": environ.get("meshlib.connection_security_policy"),
        "body": body.decode(),
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "content_type": environ.get("CONTENT_TYPE"),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    yield json.dumps(facts).encode()
    yield b"\n"
    yield b"streamed"


def test_wsgi_sees_the_client_certificate_and_the_scheme(
    ca_dir: Path, client_identity: WorkloadIdentity
) -> None:
    mesh = serve_mesh(ca_dir)
    with running(wsgi_app, mesh, wsgi=True) as (_, port):
        with mtls_client(client_identity) as client:
            secure = client.post(f"https://{HOST}:{port}/a%20b?x=1", content=b"hello")
        with httpx.Client(timeout=WAIT) as client:
            plain = client.post(f"http://{HOST}:{port}/", json={"k": 1})
    facts, tail = secure.text.split("\n")
    assert tail == "streamed"
    seen = json.loads(facts)
    assert seen["scheme"] == "https"
    assert seen["policy"] == "mutual_tls"
    der = ssl.PEM_cert_to_DER_cert(seen["client_cert"])
    assert spiffe_id_of_der(der).uri == REVIEWS
    assert (seen["body"], seen["path"], seen["query"]) == ("hello", "/a b", "x=1")
    seen = json.loads(plain.text.split("\n")[0])
    assert (seen["scheme"], seen["client_cert"], seen["policy"]) == ("http", None, "none")
    assert (seen["body"], seen["content_type"]) == ('{"k":1}', "application/json")


def test_wsgi_streams_the_request_body_and_start_response_semantics(ca_dir: Path) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        lines = list(environ["wsgi.input"])  # line by line, as it arrives
        if environ["PATH_INFO"] == "/error":
            start_response("200 OK", [])
            try:
                raise ValueError("late")
            except ValueError:
                start_response("500 Internal Server Error", [("x-why", "late")], sys.exc_info())
            return [b"sorry"]
        if environ["PATH_INFO"] == "/empty":
            start_response("204 No Content", [])
            return []
        write = start_response("200 OK", [("x-lines", str(len(lines)))])
        write(b"written ")
        return [b"".join(lines)]

    def chunks() -> Iterator[bytes]:
        yield b"one\n"
        yield b"two\nthr"
        yield b"ee"

    with (
        running(app, serve_mesh(ca_dir), wsgi=True) as (_, port),
        httpx.Client(timeout=WAIT) as client,
    ):
        streamed = client.post(f"http://{HOST}:{port}/", content=chunks())
        error = client.post(f"http://{HOST}:{port}/error", content=b"")
        empty = client.get(f"http://{HOST}:{port}/empty")
    assert streamed.headers["x-lines"] == "3"
    assert streamed.text == "written one\ntwo\nthree"
    assert (error.status_code, error.headers["x-why"], error.text) == (500, "late", "sorry")
    assert (empty.status_code, empty.content) == (204, b"")


# --------------------------------------------------------------------------- one write per response


async def two_sends_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A response in two messages (head, then body), as most apps send one; ``/chunked``
    streams two chunks without a length (``GATES`` hold each chunk until the test says)."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"second"})
        return
    if scope["path"] == "/stream":
        gates = GATES[scope["query_string"].decode()]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for gate, chunk in zip(gates, (b"event: one\n\n", b"event: two\n\n"), strict=True):
            assert await asyncio.to_thread(gate.wait, WAIT), "the client did not get it in time"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


GATES: dict[str, tuple[threading.Event, threading.Event]] = {}


def two_sends_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]


class RecordCountingClient:
    """HTTP/1.1 over TLS on a raw socket (``ssl.SSLObject`` on memory BIOs), counting the TLS
    records each response arrives in: what the server wrote, one record per write."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=WAIT)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing)
        self.raw = b""
        self.records = 0
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                self._receive()
        self._send_pending()

    def _send_pending(self) -> None:
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def _receive(self) -> None:
        """Read from the socket; feed the complete records to TLS, counting them."""
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        self.raw += chunk
        while len(self.raw) >= 5:
            end = 5 + int.from_bytes(self.raw[3:5], "big")
            if len(self.raw) < end:
                break
            self.incoming.write(self.raw[:end])
            self.raw = self.raw[end:]
            self.records += 1

    def request(self, path: str, complete: Callable[[bytes], bool]) -> tuple[bytes, int]:
        """Send a GET; the response once ``complete`` says so, and how many records it took."""
        self.tls.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        self._send_pending()
        self.records = 0
        data = b""
        while not complete(data):
            self._receive()
            while True:
                try:
                    data += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
        return data, self.records

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_response_goes_out_in_one_tls_record(
    ca_dir: Path, client_identity: WorkloadIdentity, loop: str
) -> None:
    """Head and body of a response sent in two ASGI messages leave in one write: one TLS record
    (uvicorn alone writes two, and the client reads twice); so does a chunked response sent in
    one go, its terminator included (uvicorn alone: four)."""
    pytest.importorskip(loop)
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(two_sends_app, mesh, loop=loop) as (_, port):
        client = RecordCountingClient(port, client_identity.client_context())
        try:
            counts = []
            for _ in range(3):  # the first after the handshake, then on a connection in use
                response, records = client.request("/", lambda data: data.endswith(b"hello"))
                assert response.startswith(b"HTTP/1.1 200 OK\r\n")
                counts.append(records)
            chunked, chunked_records = client.request(
                "/chunked", lambda data: data.endswith(b"\r\n0\r\n\r\n")
            )
        finally:
            client.close()
    assert counts[1:] == [1, 1]
    assert b"transfer-encoding: chunked" in chunked.lower()
    assert chunked.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")
    assert chunked_records == 1


def test_a_wsgi_response_goes_out_in_one_tls_record(
    ca_dir: Path, client_identity: WorkloadIdentity
) -> None:
    """The WSGI app's headers and first chunk reach the event loop together: one write."""
    mesh = serve_mesh(ca_dir, policy("STRICT"))
    with running(two_sends_wsgi, mesh, wsgi=True) as (_, port):
        client = RecordCountingClient(port, client_identity.client_context())
        try:
            answers = [client.request("/", lambda data: data.endswith(b"hello")) for _ in range(3)]
        finally:
            client.close()
    assert all(response.startswith(b"HTTP/1.1 200 OK\r\n") for response, _ in answers)
    assert [records for _, records in answers[1:]] == [1, 1]


def receive_until(sock: socket.socket, received: bytes, wanted: bytes) -> bytes:
    """Read until ``wanted`` has arrived (the socket's timeout bounds each read)."""
    while wanted not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before {wanted!r}: {received!r}"
        received += chunk
    return received


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_streamed_response_is_not_held_back(ca_dir: Path, loop: str) -> None:
    """Server-Sent Events: the head reaches the client before the app sends the first event,
    and each event before the app sends the next (the app waits for the client's word)."""
    pytest.importorskip(loop)
    key = f"{loop}-{time.monotonic_ns()}"
    gates = GATES[key] = (threading.Event(), threading.Event())
    mesh = serve_mesh(ca_dir)
    with (
        running(two_sends_app, mesh, loop=loop) as (_, port),
        socket.create_connection((HOST, port), timeout=WAIT) as sock,
    ):
        sock.sendall(f"GET /stream?{key} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        received = b""
        for gate, wanted in zip(gates, (b"\r\n\r\n", b"event: one\n\n"), strict=True):
            received = receive_until(sock, received, wanted)  # held: a socket timeout
            gate.set()
        received = receive_until(sock, received, b"0\r\n\r\n")
    del GATES[key]
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"event: one\n\n" in received
    assert b"event: two\n\n" in received


# --------------------------------------------------------------------------- uvicorn, meshctl


def test_the_uvicorn_contract() -> None:
    """What the runner relies on in uvicorn beyond Config and Server's public methods: if an
    upgrade changes one, this fails first, with the name of what changed."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    config = uvicorn.Config(app, http=MeshH11Protocol, proxy_headers=False)
    config.load()
    assert config.http_protocol_class is MeshH11Protocol
    loop = asyncio.new_event_loop()
    try:
        protocol = MeshH11Protocol(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()
    assert protocol.app is config.loaded_app, "H11Protocol.app: the app called per request"
    assert "self.app" in inspect.getsource(H11Protocol.handle_events)
    # the response writer: each request's cycle writes through its ``transport`` attribute
    assert "transport=self.transport" in inspect.getsource(H11Protocol.handle_events)
    assert "self.cycle = RequestResponseCycle(" in inspect.getsource(H11Protocol.handle_events)
    cycle_source = inspect.getsource(RequestResponseCycle)
    assert "self.transport.write(" in inspect.getsource(RequestResponseCycle.send)
    send_source = inspect.getsource(RequestResponseCycle.send)
    # the writer writes what it holds once the cycle says the response is complete
    assert send_source.index("self.response_complete = True") < send_source.index("EndOfMessage")
    used = set(re.findall(r"self\.transport\.(\w+)", cycle_source))
    assert used, "RequestResponseCycle no longer writes through self.transport"
    missing = {name for name in used if not hasattr(_ResponseWriter, name)}
    assert not missing, f"the response writer lacks what uvicorn's cycle uses: {missing}"
    assert list(inspect.signature(uvicorn.Server.startup).parameters) == ["self", "sockets"]
    assert list(inspect.signature(uvicorn.Server.shutdown).parameters) == ["self", "sockets"]
    serve_source = inspect.getsource(uvicorn.Server._serve)
    assert serve_source.index("self.lifespan =") < serve_source.index("self.startup(")
    shutdown = inspect.getsource(uvicorn.Server.shutdown)
    assert "for server in self.servers" in shutdown
    assert "server.close()" in shutdown
    assert "server.wait_closed()" in inspect.getsource(uvicorn.Server._wait_tasks_to_complete)


@pytest.mark.parametrize(
    ("stop", "exit_code"),
    [
        (signal.SIGINT, 0),
        # uvicorn raises SIGTERM again once it has shut down: the parent sees it, as it would
        # from any process SIGTERM ends (a shell shows 143)
        (signal.SIGTERM, -signal.SIGTERM),
    ],
)
def test_meshctl_run_end_to_end(
    ca_dir: Path,
    client_identity: WorkloadIdentity,
    tmp_path: Path,
    stop: signal.Signals,
    exit_code: int,
) -> None:
    (tmp_path / "mesh.yaml").write_text(mesh_yaml(ca_dir, policy("STRICT")))
    (tmp_path / "served.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    chain = scope['extensions']['tls']['client_cert_chain']\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': chain[0].encode()})\n"
    )
    sock = socket.create_server((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "-m", "meshlib.cli", "run", "served:app", "--port", str(port)]
    command += ["-c", "mesh.yaml", "--log-level", "info"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "meshctl run did not start listening"
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        with mtls_client(client_identity) as client:
            response = client.get(f"https://{HOST}:{port}/")
        assert response.status_code == 200
        assert spiffe_id_of_der(ssl.PEM_cert_to_DER_cert(response.text)).uri == REVIEWS
        with httpx.Client(timeout=WAIT) as client, pytest.raises(httpx.TransportError):
            client.get(f"http://{HOST}:{port}/")
        process.send_signal(stop)
        output, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    assert process.returncode == exit_code, output.decode()
    text = output.decode()
    assert "mTLS mode STRICT" in text
    assert "Shutting down" in text
    assert "Application shutdown complete" in text  # graceful: lifespan shutdown ran
