"""Outbound TLS: DestinationRule ``tls`` modes and auto mTLS, against real TLS servers.

Each server is a small threaded HTTP/1.1 server on 127.0.0.1 over ``ssl``: it counts handshakes
and the request bytes each connection received, and answers with what it saw (the client's
SPIFFE ID, the SNI). Every failure case checks that the server received no byte of a request.
The scenarios run through ``httpx.Client``, ``httpx.AsyncClient`` and a requests session
(``send``).
"""

from __future__ import annotations

import json
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from cryptography import x509

from meshlib import Mesh
from meshlib.clients.httpx.transport import MeshInfo
from meshlib.errors import MeshRequestError, UpstreamTLSError
from meshlib.security import tls
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId
from meshlib.security.outbound import TLS_MODE_LABEL, decide, istio_sni
from meshlib.security.verify import spiffe_id_of_der
from meshlib.testing import FakeClock
from tests.conftest import RunDocsExample
from tests.security.tls_harness import dns, make_certificate, uri

WAIT = 5.0
REVIEWS = SpiffeId("cluster.local", "default", "bookinfo-reviews")
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"


class Server:
    """A threaded TLS (or plain) HTTP/1.1 server: keep-alive, one JSON answer per request."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.sni: list[str | None] = []
        if context is not None:
            context.sni_callback = self._sni
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.handshakes = 0
        #: the serial number of each client certificate presented, in handshake order
        self.client_serials: list[int] = []
        self.requests = 0
        #: request bytes received, per connection, put when the connection ends
        self.received: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _sni(self, _conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _c: object) -> None:
        self.sni.append(name)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(WAIT)
        received = 0
        connection: socket.socket = raw
        try:
            if self.context is not None:
                secure = self.context.wrap_socket(raw, server_side=True)
                self.handshakes += 1
                der = secure.getpeercert(True)
                if der:
                    self.client_serials.append(x509.load_der_x509_certificate(der).serial_number)
                connection = secure
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    received += len(chunk)
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    chunk = connection.recv(65536)
                    received += len(chunk)
                    buffer += chunk
                buffer = buffer[length:]
                self.requests += 1
                body = json.dumps(self._seen(connection)).encode()
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        except (OSError, ssl.SSLError):
            return
        finally:
            self.received.put(received)
            connection.close()

    def _seen(self, connection: socket.socket) -> dict[str, str | None]:
        peer = None
        if isinstance(connection, ssl.SSLSocket):
            der = connection.getpeercert(True)
            if der:
                peer = spiffe_id_of_der(der).uri
        return {"peer": peer, "sni": self.sni[-1] if self.sni else None}

    def connection_bytes(self) -> int:
        """Request bytes the next finished connection received (waits for it to end)."""
        return self.received.get(timeout=WAIT)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(WAIT)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


@pytest.fixture
def serve() -> Iterator[Callable[[ssl.SSLContext | None], Server]]:
    servers: list[Server] = []

    def start(context: ssl.SSLContext | None) -> Server:
        server = Server(context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Sender:
    """``send(mesh, method, url, **kw)`` through a stock ``httpx.Client``, ``AsyncClient`` or
    ``mesh.requests_session()`` (``kind``); a requests answer comes back as an
    ``httpx.Response`` (body read, ``MeshInfo`` in its extensions, its request the caller's
    URL)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @property
    def connect_error(self) -> type[BaseException]:
        """The client's own class of a TLS failure."""
        return requests.exceptions.SSLError if self.kind == "requests" else httpx.ConnectError

    def __call__(self, mesh: Mesh, method: str, url: str, **kwargs: object) -> httpx.Response:
        import asyncio

        from meshlib.clients.requests import mesh_info

        if self.kind == "sync":
            with mesh.client() as client:
                return client.request(method, url, **kwargs)  # type: ignore[arg-type]
        if self.kind == "requests":
            with mesh.requests_session() as session:
                answer = session.request(method, url, timeout=WAIT, **kwargs)  # type: ignore[arg-type]
                return httpx.Response(
                    answer.status_code,
                    headers=list(answer.headers.items()),
                    content=answer.content,
                    request=httpx.Request(method, answer.url),
                    extensions={"mesh": mesh_info(answer)},
                )

        if self.kind == "aiohttp":
            return asyncio.run(_aiohttp_send(mesh, method, url, **kwargs))

        async def go() -> httpx.Response:
            async with mesh.async_client() as client:
                return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

        return asyncio.run(go())


async def _aiohttp_send(mesh: Mesh, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Through ``mesh.aiohttp_session()``; ``verify=`` (a CA bundle) as aiohttp's ``ssl=``."""
    from meshlib.clients.aiohttp import mesh_info

    options: dict[str, Any] = {}
    verify = kwargs.pop("verify", None)
    if isinstance(verify, str):
        options["ssl"] = ssl.create_default_context(cafile=verify)
    async with (
        mesh.aiohttp_session() as session,
        session.request(method, url, **options, **kwargs) as answer,
    ):
        body = await answer.read()
        return httpx.Response(
            answer.status,
            headers=list(answer.raw_headers),
            content=body,
            request=httpx.Request(method, str(answer.url)),
            extensions={"mesh": mesh_info(answer)},
        )


Send = Sender


@pytest.fixture(params=["sync", "async", "requests"])
def send(request: pytest.FixtureRequest) -> Sender:
    return Sender(str(request.param))


@pytest.fixture(params=["sync", "async", "requests", "aiohttp"])
def app_send(request: pytest.FixtureRequest) -> Sender:
    """``send``, and through ``mesh.aiohttp_session()`` too: the app's own TLS goes through each
    client's own TLS (the mesh's TLS through aiohttp goes through its httpx pools)."""
    return Sender(str(request.param))


def workload_context(certificate: WorkloadCertificate, *, strict: bool = True) -> ssl.SSLContext:
    return tls.server_context(certificate, require_client_certificate=strict)


def config(
    ca: CertificateAuthority | None,
    port: int,
    *,
    labels: str = "",
    rules: str = "",
    extra: str = "",
) -> str:
    identity = f"identity: {{ca: {ca.directory}}}" if ca is not None else ""
    return f"""
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  {identity}
  registry:
    static:
      reviews:
        - {{address: 127.0.0.1:{port}, labels: {{version: v1{labels}}}}}
{extra}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
{rules}
"""


def tls_rule(body: str) -> str:
    return f"  trafficPolicy:\n    tls: {body}\n"


def seen(response: httpx.Response) -> dict[str, str | None]:
    data: dict[str, str | None] = response.json()
    return data


def info(response: httpx.Response) -> MeshInfo:
    found = response.extensions["mesh"]
    assert isinstance(found, MeshInfo)
    return found


# --------------------------------------------------------------------------- ISTIO_MUTUAL


def test_istio_mutual_server_sees_our_spiffe_id(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    response = send(mesh, "GET", "http://reviews:9080/reviews/0")
    assert response.status_code == 200
    assert seen(response)["peer"] == PRODUCTPAGE
    # Istio's SNI for ISTIO_MUTUAL
    assert seen(response)["sni"] == "outbound_.9080_._.reviews.default.svc.cluster.local"
    mesh_info = info(response)
    assert mesh_info.tls == "ISTIO_MUTUAL"
    assert mesh_info.mtls
    assert mesh_info.peer_identity == REVIEWS.uri
    assert response.request.url == httpx.URL("http://reviews:9080/reviews/0")  # as the app sent


def test_istio_mutual_subject_alt_names_accepts_the_named_identity(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    rule = tls_rule(f"{{mode: ISTIO_MUTUAL, subjectAltNames: [{REVIEWS.uri}]}}")
    mesh = Mesh.from_yaml(config(ca, server.port, rules=rule))
    assert send(mesh, "GET", "http://reviews:9080/").status_code == 200


def refused(send: Send, mesh: Mesh, server: Server, *words: str) -> UpstreamTLSError:
    with pytest.raises(UpstreamTLSError) as caught:
        send(mesh, "GET", "http://reviews:9080/reviews/0")
    error = caught.value
    assert isinstance(error, MeshRequestError)
    assert isinstance(error, send.connect_error)
    assert error.flag == "UF"
    for word in words:
        assert word in str(error)
    assert server.connection_bytes() == 0  # not one byte of the request was sent
    assert server.requests == 0
    return error


def test_istio_mutual_refuses_a_wrong_spiffe_id(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(SpiffeId("cluster.local", "default", "impostor"))))
    rule = tls_rule(f"{{mode: ISTIO_MUTUAL, subjectAltNames: [{REVIEWS.uri}]}}")
    mesh = Mesh.from_yaml(config(ca, server.port, rules=rule))
    refused(send, mesh, server, "impostor", REVIEWS.uri)


def test_istio_mutual_refuses_another_trust_domain(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    other = SpiffeId("example.org", "default", "reviews")
    server = serve(workload_context(make_certificate([uri(other.uri)], ca=ca, spiffe_id=other)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    refused(send, mesh, server, "trust domain")


def test_istio_mutual_refuses_a_server_of_another_ca(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], send: Send
) -> None:
    other = CertificateAuthority.init(tmp_path / "other")
    server = serve(workload_context(other.issue(REVIEWS), strict=False))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    refused(send, mesh, server, "a CA the mesh does not trust")


def test_istio_mutual_refuses_an_expired_server_certificate(
    tmp_path: Path, serve: Callable[..., Server], send: Send
) -> None:
    then = datetime.now(timezone.utc) - timedelta(days=3)
    past = FakeClock(wall=then.timestamp())
    old = CertificateAuthority.init(tmp_path / "ca", clock=past)
    expired = old.issue(REVIEWS, timedelta(hours=1))
    server = serve(workload_context(expired, strict=False))
    authority = CertificateAuthority.load(tmp_path / "ca")
    mesh = Mesh.from_yaml(config(authority, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    refused(send, mesh, server, "expired")


def test_istio_mutual_refuses_a_forged_self_signed_certificate(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    forged = make_certificate([uri(REVIEWS.uri)], spiffe_id=REVIEWS)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_identity(context, forged)
    server = serve(context)
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    refused(send, mesh, server, "self-signed")


def test_istio_mutual_without_an_identity_is_a_clear_error(
    serve: Callable[..., Server], send: Send
) -> None:
    server = serve(None)
    mesh = Mesh.from_yaml(config(None, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    with pytest.raises(UpstreamTLSError, match=r"needs this workload's identity.*spec\.identity"):
        send(mesh, "GET", "http://reviews:9080/")
    if send.kind == "requests":  # refused before a connection is made
        assert server.received.empty()
    else:
        assert server.connection_bytes() == 0
    assert server.requests == 0


def test_tls_on_an_https_url_is_refused(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    with pytest.raises(UpstreamTLSError, match="https://"):
        send(mesh, "GET", "https://reviews:9080/")


# --------------------------------------------------------------------------- SIMPLE, MUTUAL


def files(tmp_path: Path, certificate: WorkloadCertificate, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
    cert.write_bytes(certificate.certificate_pem)
    key.write_bytes(certificate.private_key_pem)
    return cert, key


def example_com_server(
    ca: CertificateAuthority,
    tmp_path: Path,
    serve: Callable[..., Server],
    *,
    strict: bool = False,
) -> tuple[Server, Path]:
    """A server presenting ``reviews.example.com`` (a DNS SAN) signed by ``ca``, asking for a
    client certificate when ``strict``, and the file holding ``ca``'s bundle."""
    server = serve(
        workload_context(make_certificate([dns("reviews.example.com")], ca=ca), strict=strict)
    )
    bundle = tmp_path / "root.pem"
    bundle.write_bytes(ca.bundle_pem)
    return server, bundle


def test_simple_with_ca_certificates_and_sni(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], send: Send
) -> None:
    server, bundle = example_com_server(ca, tmp_path, serve)
    rule = tls_rule(f"{{mode: SIMPLE, caCertificates: {bundle}, sni: reviews.example.com}}")
    mesh = Mesh.from_yaml(config(None, server.port, rules=rule))
    response = send(mesh, "GET", "http://reviews:9080/")
    assert response.status_code == 200
    assert seen(response) == {"peer": None, "sni": "reviews.example.com"}
    assert info(response).tls == "SIMPLE"
    assert not info(response).mtls


def test_simple_checks_the_host_name(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], send: Send
) -> None:
    server, bundle = example_com_server(ca, tmp_path, serve)
    rule = tls_rule(f"{{mode: SIMPLE, caCertificates: {bundle}, sni: other.example.com}}")
    mesh = Mesh.from_yaml(config(None, server.port, rules=rule))
    refused(send, mesh, server)


def test_simple_subject_alt_names_and_insecure_skip_verify(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], send: Send
) -> None:
    server, bundle = example_com_server(ca, tmp_path, serve)
    good = tls_rule(
        f"{{mode: SIMPLE, caCertificates: {bundle}, subjectAltNames: [reviews.example.com]}}"
    )
    mesh = Mesh.from_yaml(config(None, server.port, rules=good))
    assert info(send(mesh, "GET", "http://reviews:9080/")).peer_identity == "reviews.example.com"
    bad = tls_rule(f"{{mode: SIMPLE, caCertificates: {bundle}, subjectAltNames: [x.example.com]}}")
    mesh = Mesh.from_yaml(config(None, server.port, rules=bad))
    with pytest.raises(UpstreamTLSError, match=r"x\.example\.com"):
        send(mesh, "GET", "http://reviews:9080/")
    skip = tls_rule("{mode: SIMPLE, insecureSkipVerify: true}")  # no CA named: nothing checked
    mesh = Mesh.from_yaml(config(None, server.port, rules=skip))
    assert send(mesh, "GET", "http://reviews:9080/").status_code == 200


def test_mutual_with_files(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], send: Send
) -> None:
    server, bundle = example_com_server(ca, tmp_path, serve, strict=True)
    client = SpiffeId("cluster.local", "legacy", "client")
    cert, key = files(tmp_path, ca.issue(client), "client")
    rule = tls_rule(
        f"{{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}, "
        f"caCertificates: {bundle}, sni: reviews.example.com}}"
    )
    mesh = Mesh.from_yaml(config(None, server.port, rules=rule))
    response = send(mesh, "GET", "http://reviews:9080/")
    assert seen(response)["peer"] == client.uri
    assert info(response).tls == "MUTUAL"


def test_mutual_with_credential_name_only_is_refused(
    serve: Callable[..., Server], send: Send
) -> None:
    server = serve(None)
    rule = tls_rule("{mode: MUTUAL, credentialName: reviews-client}")
    mesh = Mesh.from_yaml(config(None, server.port, rules=rule))
    with pytest.raises(UpstreamTLSError, match="credentialName"):
        send(mesh, "GET", "http://reviews:9080/")


def test_disable_is_plain_text(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(None)
    labels = f", {TLS_MODE_LABEL}: istio"  # DISABLE overrides auto mTLS
    mesh = Mesh.from_yaml(config(ca, server.port, labels=labels, rules=tls_rule("{mode: DISABLE}")))
    response = send(mesh, "GET", "http://reviews:9080/")
    assert response.status_code == 200
    assert info(response).tls is None
    assert mesh.cluster(info(response).decision.destination).outbound is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------- auto mTLS


def test_auto_mtls_by_endpoint_label(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    labels = f", {TLS_MODE_LABEL}: istio"
    mesh = Mesh.from_yaml(config(ca, server.port, labels=labels))
    response = send(mesh, "GET", "http://reviews:9080/")
    assert seen(response)["peer"] == PRODUCTPAGE
    assert info(response).tls == "ISTIO_MUTUAL"
    assert info(response).peer_identity == REVIEWS.uri


def test_auto_mtls_off_without_the_label_or_without_identity(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(None)
    response = send(Mesh.from_yaml(config(ca, server.port)), "GET", "http://reviews:9080/")
    assert info(response).tls is None
    labels = f", {TLS_MODE_LABEL}: istio"
    mesh = Mesh.from_yaml(config(None, server.port, labels=labels))
    assert info(send(mesh, "GET", "http://reviews:9080/")).tls is None


def test_auto_mtls_off_when_the_destination_disables_mtls(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(None)
    labels = f", {TLS_MODE_LABEL}: istio, app: reviews"
    policy = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: DISABLE}"""
    mesh = Mesh.from_yaml(config(ca, server.port, labels=labels, extra=policy))
    assert info(send(mesh, "GET", "http://reviews:9080/")).tls is None


def test_decide_is_istio_mutual_for_a_labelled_endpoint(ca: CertificateAuthority) -> None:
    mesh = Mesh.from_yaml(config(ca, 1, labels=f", {TLS_MODE_LABEL}: istio"))
    decision = mesh.explain("GET", "http://reviews:9080/")
    target = decision.destination
    assert target is not None
    (endpoint,) = mesh.registry.endpoints(target.host)
    found = decide(
        None, target=target, port=9080, endpoint=endpoint, config=mesh.config, has_identity=True
    )
    assert found is not None
    assert found.mode == "ISTIO_MUTUAL"
    assert found.auto
    assert found.sni == istio_sni(target.host, 9080, None)


# --------------------------------------------------------------------------- port level


def test_port_level_settings_override(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    rules = """  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
      - port: {number: 9080}
        tls: {mode: ISTIO_MUTUAL}
"""
    mesh = Mesh.from_yaml(config(ca, server.port, rules=rules))
    response = send(mesh, "GET", "http://reviews:9080/")
    assert info(response).tls == "ISTIO_MUTUAL"
    assert seen(response)["peer"] == PRODUCTPAGE


def test_subset_level_settings_override(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    rules = """  trafficPolicy:
    tls: {mode: DISABLE}
  subsets:
    - name: v1
      labels: {version: v1}
      trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
    - route: [{destination: {host: reviews, subset: v1}}]
"""
    mesh = Mesh.from_yaml(config(ca, server.port, rules=rules))
    response = send(mesh, "GET", "http://reviews:9080/")
    assert info(response).tls == "ISTIO_MUTUAL"
    assert seen(response)["sni"] == "outbound_.9080_.v1_.reviews.default.svc.cluster.local"


# --------------------------------------------------------------------------- reuse


def test_one_handshake_for_many_requests_sync(
    ca: CertificateAuthority, serve: Callable[..., Server]
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    with mesh.client() as client:
        for _ in range(20):
            assert client.get("http://reviews:9080/").status_code == 200
    assert server.requests == 20
    assert server.handshakes == 1


def test_one_handshake_for_many_requests_async(
    ca: CertificateAuthority, serve: Callable[..., Server]
) -> None:
    import asyncio

    server = serve(workload_context(ca.issue(REVIEWS)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))

    async def go() -> None:
        async with mesh.async_client() as client:
            for _ in range(20):
                assert (await client.get("http://reviews:9080/")).status_code == 200

    asyncio.run(go())
    assert server.requests == 20
    assert server.handshakes == 1


def test_one_handshake_for_many_requests_through_requests(
    ca: CertificateAuthority, serve: Callable[..., Server]
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    with mesh.requests_session() as session:
        for _ in range(20):
            assert session.get("http://reviews:9080/", timeout=WAIT).status_code == 200
    assert server.requests == 20
    assert server.handshakes == 1


def test_a_rotated_certificate_gets_new_connections_through_requests(
    ca: CertificateAuthority, serve: Callable[..., Server]
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    mesh = Mesh.from_yaml(config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}")))
    identity = mesh.identity
    assert identity is not None
    with mesh.requests_session() as session:
        for _ in range(3):
            assert session.get("http://reviews:9080/", timeout=WAIT).json()["peer"] == PRODUCTPAGE
        rotated = identity.rotate()
        for _ in range(3):
            assert session.get("http://reviews:9080/", timeout=WAIT).json()["peer"] == PRODUCTPAGE
    assert server.requests == 6
    first = identity.certificate  # after rotation: the new one
    assert first.serial_number == rotated.serial_number
    assert len(server.client_serials) == 2  # one handshake per certificate
    assert server.client_serials[1] == rotated.serial_number
    assert server.client_serials[0] != rotated.serial_number


def test_a_refused_peer_is_not_retried(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    server = serve(workload_context(ca.issue(SpiffeId("cluster.local", "default", "impostor"))))
    rule = tls_rule(f"{{mode: ISTIO_MUTUAL, subjectAltNames: [{REVIEWS.uri}]}}")
    mesh = Mesh.from_yaml(config(ca, server.port, rules=rule))
    with pytest.raises(UpstreamTLSError) as raised:
        send(mesh, "GET", "http://reviews:9080/")
    assert raised.value.flag == "UF"
    deadline = time.monotonic() + WAIT
    while server.handshakes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.handshakes == 1


# --------------------------------------------------------------------------- endpoint identity


def service_entry(ca: CertificateAuthority, port: int, account: str) -> str:
    return f"""
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  identity: {{ca: {ca.directory}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.mesh.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
    - address: 127.0.0.1
      ports: {{http: {port}}}
      serviceAccount: {account}
      labels: {{{TLS_MODE_LABEL}: istio}}
"""


def test_the_endpoint_service_account_is_the_identity_expected(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    ratings = SpiffeId("cluster.local", "default", "bookinfo-ratings")
    server = serve(workload_context(ca.issue(ratings)))
    mesh = Mesh.from_yaml(service_entry(ca, server.port, "bookinfo-ratings"))
    response = send(mesh, "GET", "http://ratings.mesh.internal:9080/")
    assert info(response).peer_identity == ratings.uri
    mesh = Mesh.from_yaml(service_entry(ca, server.port, "bookinfo-details"))
    with pytest.raises(UpstreamTLSError, match="bookinfo-details"):
        send(mesh, "GET", "http://ratings.mesh.internal:9080/")


# --------------------------------------------------------------------------- the docs


def test_the_docs_example_prints_what_the_page_shows(run_docs_example: RunDocsExample) -> None:
    run_docs_example("security.md", "# Runnable: outbound")


# --------------------------------------------------------------------------- telemetry


def test_the_access_log_says_how_a_call_was_secured(
    ca: CertificateAuthority,
    serve: Callable[..., Server],
    send: Send,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = serve(workload_context(ca.issue(REVIEWS)))
    telemetry = """  telemetry:
    accessLog: {format: "%UPSTREAM_TLS_MODE% %UPSTREAM_PEER_URI_SAN% %RESPONSE_FLAGS%"}"""
    text = config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}"))
    text = text.replace("  registry:", telemetry + "\n  registry:", 1)
    mesh = Mesh.from_yaml(text)
    with caplog.at_level("INFO", logger="meshlib.access"):
        send(mesh, "GET", "http://reviews:9080/")
    lines = [r.getMessage() for r in caplog.records if r.name == "meshlib.access"]
    assert lines == [f"ISTIO_MUTUAL {REVIEWS.uri} -"]
    access = caplog.records[-1].access  # type: ignore[attr-defined]
    assert access["upstream_tls_mode"] == "ISTIO_MUTUAL"
    assert access["upstream_peer_uri_san"] == REVIEWS.uri


def test_outbound_metrics_keep_connection_security_policy_unknown(
    ca: CertificateAuthority, serve: Callable[..., Server], send: Send
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from meshlib.telemetry import metrics

    server = serve(workload_context(ca.issue(REVIEWS)))
    text = config(ca, server.port, rules=tls_rule("{mode: ISTIO_MUTUAL}"))
    text = text.replace("  registry:", "  telemetry: {metrics: {}}\n  registry:", 1)
    mesh = Mesh.from_yaml(text)
    try:
        send(mesh, "GET", "http://reviews:9080/")
        _, body = metrics.scrape(mesh)
    finally:
        mesh.close()
    labels = [
        sample.labels
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "istio_requests_total"
    ]
    assert labels
    assert {found["connection_security_policy"] for found in labels} == {"unknown"}


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_a_mirrored_copy_goes_with_its_destinations_tls(
    ca: CertificateAuthority, serve: Callable[..., Server], client: str
) -> None:
    reviews = serve(None)
    ratings = serve(workload_context(ca.issue(SpiffeId("cluster.local", "default", "ratings"))))
    text = f"""
apiVersion: meshlib.dev/v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  identity: {{ca: {ca.directory}}}
  registry:
    static:
      reviews: [{{address: 127.0.0.1:{reviews.port}}}]
      ratings: [{{address: 127.0.0.1:{ratings.port}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: default}}
spec: {{host: ratings, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
    - route: [{{destination: {{host: reviews}}}}]
      mirror: {{host: ratings}}
"""
    mesh = Mesh.from_yaml(text)
    opened = mesh.client() if client == "httpx" else mesh.requests_session()
    with opened as caller:
        response = caller.get("http://reviews:9080/", timeout=WAIT)
        assert response.status_code == 200
        assert response.headers.get("x-mesh-response-flags") is None
        assert response.json()["peer"] is None  # the call itself: plain text
        deadline = time.monotonic() + WAIT
        while ratings.requests < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    mesh.close()
    assert ratings.requests == 1
    assert ratings.handshakes == 1
    assert ratings.sni[-1] == "outbound_.9080_._.ratings.default.svc.cluster.local"


# --------------------------------------------------------------------------- the app's own TLS


def app_tls_mesh(ca: CertificateAuthority, port: int, bundle: Path) -> Mesh:
    """A mesh with an identity whose ``reviews`` endpoint takes auto mTLS, its inner transports
    trusting ``bundle`` (the app's own trust, for its own TLS)."""
    trust = ssl.create_default_context(cafile=str(bundle))
    return Mesh.from_yaml(
        config(ca, port, labels=f", {TLS_MODE_LABEL}: istio"),
        transport=httpx.HTTPTransport(verify=trust),
        async_transport=httpx.AsyncHTTPTransport(verify=trust),
    )


def test_the_apps_own_tls_names_the_host_it_called(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], app_send: Send
) -> None:
    # Envoy passes an app's TLS through: the app's client checks the host it called, not the
    # address the mesh chose
    server = serve(workload_context(make_certificate([dns("reviews")], ca=ca), strict=False))
    bundle = tmp_path / "root.pem"
    bundle.write_bytes(ca.bundle_pem)
    mesh = app_tls_mesh(ca, server.port, bundle)
    options = {"verify": str(bundle)} if app_send.kind in ("requests", "aiohttp") else {}
    response = app_send(mesh, "GET", "https://reviews:9080/reviews/0", **options)
    assert response.status_code == 200
    assert seen(response) == {"peer": None, "sni": "reviews"}  # no client certificate: not mTLS
    assert info(response).tls is None  # not the mesh's TLS
    assert info(response).endpoint == f"127.0.0.1:{server.port}"
    assert str(response.request.url) == "https://reviews:9080/reviews/0"


def test_the_apps_own_tls_refuses_a_certificate_for_another_host(
    ca: CertificateAuthority, tmp_path: Path, serve: Callable[..., Server], app_send: Send
) -> None:
    server = serve(workload_context(make_certificate([dns("ratings")], ca=ca), strict=False))
    bundle = tmp_path / "root.pem"
    bundle.write_bytes(ca.bundle_pem)
    mesh = app_tls_mesh(ca, server.port, bundle)
    options = {"verify": str(bundle)} if app_send.kind in ("requests", "aiohttp") else {}
    with pytest.raises(MeshRequestError) as raised:
        app_send(mesh, "GET", "https://reviews:9080/reviews/0", **options)
    assert raised.value.flag.split(",")[0] == "UF"  # a connection failure, as Envoy counts it
    # the certificate was checked against the host called (httpx's words, urllib3's)
    assert re.search(r"not valid for 'reviews'|hostname 'reviews' doesn't match", str(raised.value))
    assert server.sni[-1] == "reviews"
    assert server.requests == 0
