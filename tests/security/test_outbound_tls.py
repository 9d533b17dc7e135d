"""Outbound TLS: DestinationRule ``tls`` modes and auto mTLS, against real TLS servers.

Each server is a small threaded HTTP/1.1 server on 127.0.0.1 over ``ssl``: it counts handshakes
and the request bytes each connection received, and answers with what it saw (the client's
SPIFFE ID, the SNI). Every failure case checks that the server received no byte of a request.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from meshlib import Mesh
from meshlib.clients.httpx.transport import MeshInfo
from meshlib.errors import MeshRequestError, UpstreamTLSError
from meshlib.security import tls
from meshlib.security.ca import CertificateAuthority, WorkloadCertificate
from meshlib.security.identity import SpiffeId
from meshlib.security.outbound import TLS_MODE_LABEL, decide, istio_sni
from meshlib.security.verify import spiffe_id_of_der
from meshlib.testing import FakeClock
from tests.conftest import RunDocsExample, Send
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
    assert isinstance(error, httpx.ConnectError)
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
    assert server.connection_bytes() == 0


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


def test_a_refused_peer_is_not_retried(
    ca: CertificateAuthority, serve: Callable[..., Server]
) -> None:
    server = serve(workload_context(ca.issue(SpiffeId("cluster.local", "default", "impostor"))))
    rule = tls_rule(f"{{mode: ISTIO_MUTUAL, subjectAltNames: [{REVIEWS.uri}]}}")
    mesh = Mesh.from_yaml(config(ca, server.port, rules=rule))
    with mesh.client() as client, pytest.raises(UpstreamTLSError):
        client.get("http://reviews:9080/")
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


def test_a_mirrored_copy_goes_with_its_destinations_tls(
    ca: CertificateAuthority, serve: Callable[..., Server]
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
    with mesh.client() as client:
        response = client.get("http://reviews:9080/")
        assert info(response).tls is None  # the call itself: plain text
        deadline = time.monotonic() + WAIT
        while ratings.requests < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    mesh.close()
    assert ratings.requests == 1
    assert ratings.handshakes == 1
    assert ratings.sni[-1] == "outbound_.9080_._.ratings.default.svc.cluster.local"
