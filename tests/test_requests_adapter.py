"""meshlib.clients.requests: the mesh as a requests transport adapter.

The data-plane scenarios against real upstream processes run through requests in
tests/integration (the ``connect`` fixture's ``requests`` kind); these are the adapter's own
promises: the session it mounts, its errors (requests' and meshlib's at once), replies the mesh
makes itself, how requests' errors count for retries, and TLS it cannot originate (the TLS
scenarios run through requests in tests/security/test_outbound_tls.py).
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator

import pytest
import requests
import requests.exceptions
import urllib3.exceptions

import meshlib
from meshlib import Mesh, client, errors
from meshlib.clients import requests as mesh_requests
from meshlib.clients.requests import MeshAdapter, classify_error, mesh_info, raise_for_mesh
from meshlib.telemetry import RequestFinished
from tests.chaos.misbehaving import Misbehaving
from tests.integration.upstream import Upstream

SERVICE = """\
apiVersion: meshlib.dev/v1
kind: Service
metadata: {name: productpage}
spec:
  registry:
    static:
      reviews: [{address: "127.0.0.1:%(port)d", labels: {version: v1}}]
%(extra)s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /known}}]
    route: [{destination: {host: reviews}}]
    retries: {attempts: 0}
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_mesh(extra: str = "", docs: str = "") -> Mesh:
    text = SERVICE % {"port": closed_port(), "extra": extra}
    return Mesh.from_yaml(text + (f"---\n{docs}" if docs else ""), seed=1)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    made = make_mesh(
        "  circuitBreakers: {failureThreshold: 1, resetTimeout: 60s}"
    ).requests_session()
    yield made
    made.close()


def test_the_session_has_the_mesh_mounted_for_both_schemes() -> None:
    mesh = make_mesh()
    with mesh.requests_session() as made:
        assert isinstance(made, requests.Session)
        for scheme in ("http://", "https://"):
            adapter = made.get_adapter(scheme + "reviews/")
            assert isinstance(adapter, MeshAdapter)
            assert adapter.mesh is mesh
    meshlib.configure(mesh)
    try:
        with client.requests_session() as made:
            adapter = made.get_adapter("http://reviews/")
            assert isinstance(adapter, MeshAdapter)
            assert adapter.mesh is mesh
    finally:
        meshlib.configure(Mesh.from_yaml("", name="<empty>"))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (mesh_requests.MeshRequestError, requests.exceptions.ConnectionError),
        (mesh_requests.NoRouteError, requests.exceptions.ConnectionError),
        (mesh_requests.NoHealthyUpstream, requests.exceptions.ConnectionError),
        (mesh_requests.CircuitOpenError, requests.exceptions.ConnectionError),
        (mesh_requests.UpstreamTLSError, requests.exceptions.SSLError),
        (mesh_requests.DeadlineExceeded, requests.exceptions.Timeout),
    ],
)
def test_each_error_is_requests_and_meshlibs(ours: type[Exception], theirs: type) -> None:
    meshlib_class = getattr(errors, ours.__name__)
    assert issubclass(ours, meshlib_class)
    assert issubclass(ours, theirs)
    assert issubclass(ours, requests.exceptions.RequestException)
    error = ours("it failed", route="vs:r", destination="reviews")
    flag = f", flag={error.flag}" if error.flag else ""
    assert str(error) == f"it failed (route=vs:r, destination=reviews{flag})"
    assert (error.request, error.response) == (None, None)


def test_no_route_is_a_404_nr_reply_and_raise_for_mesh_raises(session: requests.Session) -> None:
    response = session.get("http://reviews/nowhere")
    assert response.status_code == 404
    assert response.headers["x-mesh-response-flags"] == "NR"
    info = mesh_info(response)
    assert info is not None
    assert (info.local_reply, info.flags) == (True, "NR")
    assert response.mesh is info  # type: ignore[attr-defined]
    assert response.url == "http://reviews/nowhere"
    with pytest.raises(requests.exceptions.ConnectionError) as raised:
        raise_for_mesh(response)
    assert isinstance(raised.value, meshlib.NoRouteError)
    assert raised.value.request is response.request


def test_a_direct_response_comes_back_as_a_requests_response(session: requests.Session) -> None:
    response = session.get("http://reviews/direct/x")
    assert (response.status_code, response.text) == (418, "teapot")
    assert response.reason == "I'm a Teapot"
    info = mesh_info(response)
    assert info is not None
    assert (info.attempts, info.route) == (0, "default/reviews:http[0]")


def test_an_unreachable_upstream_then_an_open_breaker(session: requests.Session) -> None:
    with pytest.raises(requests.exceptions.ConnectionError) as failed:
        session.get("http://reviews/known", timeout=2)
    assert isinstance(failed.value, meshlib.MeshRequestError)
    assert failed.value.flag == "UF"
    assert isinstance(failed.value.__cause__, requests.exceptions.ConnectionError)
    with pytest.raises(meshlib.CircuitOpenError) as opened:  # failureThreshold 1
        session.get("http://reviews/known", timeout=2)
    assert isinstance(opened.value, requests.exceptions.ConnectionError)
    assert opened.value.flag == "UO"


def test_a_request_the_caller_prepared_is_given_back_as_sent(session: requests.Session) -> None:
    prepared = requests.Request("GET", "http://reviews/known", headers={"a": "b"}).prepare()
    headers = prepared.headers
    with pytest.raises(requests.exceptions.ConnectionError):
        session.send(prepared, timeout=2)
    assert prepared.url == "http://reviews/known"
    assert prepared.headers is headers
    assert not [name for name in vars(prepared) if name.startswith("_meshlib")]


TLS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: MUTUAL, credentialName: reviews-client}}
"""


def test_tls_that_cannot_be_originated_is_requests_ssl_error_and_meshlibs() -> None:
    made = make_mesh(docs=TLS).requests_session()
    with made, pytest.raises(requests.exceptions.SSLError) as raised:
        made.get("http://reviews/known", timeout=2)
    assert isinstance(raised.value, meshlib.UpstreamTLSError)
    assert raised.value.flag == "UF"
    assert "credentialName" in str(raised.value)
    assert raised.value.request is not None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (requests.exceptions.ConnectTimeout("slow"), "connect-failure"),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.MaxRetryError(
                    None,  # type: ignore[arg-type]
                    "/",
                    urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
                )
            ),
            "connect-failure",
        ),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
            ),
            "reset",
        ),
        (requests.exceptions.ReadTimeout("read"), "reset"),
        (requests.exceptions.ChunkedEncodingError("cut"), "reset"),
        (errors.CircuitOpenError("open"), "other"),
        (ValueError("bug"), "other"),
    ],
)
def test_requests_errors_in_envoys_failure_kinds(exc: BaseException, kind: str) -> None:
    assert classify_error(exc) == kind


def test_a_read_timeout_of_a_per_try_deadline() -> None:
    assert classify_error(requests.exceptions.ReadTimeout("r"), per_try_timeout=True) == (
        "per-try-timeout"
    )


# --------------------------------------------------------------------------- the call's end


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[Misbehaving]:
    server = Misbehaving.start()
    try:
        yield server
    finally:
        server.stop()


def upstream_mesh(address: str, docs: str = "") -> Mesh:
    text = (
        "apiVersion: meshlib.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: productpage}\n"
        "spec:\n"
        "  telemetry: {tracing: {enabled: false}}\n"
        "  registry:\n"
        "    static:\n"
        f"      reviews: [{{address: '{address}', labels: {{version: v1}}}}]\n"
    )
    return Mesh.from_yaml(text + ("---\n" + docs if docs else ""), seed=1)


class Recorder:
    """The ``RequestFinished`` events of a mesh."""

    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []

    def on_event(self, event: object) -> None:
        if isinstance(event, RequestFinished):
            self.finished.append(event)


def test_the_call_is_recorded_when_its_body_ends(upstream: Upstream) -> None:
    mesh = upstream_mesh(upstream.address)
    recorder = Recorder()
    mesh.add_listener(recorder)
    url = "http://reviews:9080/big?size=1000000"
    with mesh.requests_session() as made:
        streamed = made.get(url, stream=True, timeout=5)
        assert recorder.finished == []  # the body is still to come
        assert len(streamed.content) >= 1_000_000
        assert [event.status for event in recorder.finished] == [200]
        assert recorder.finished[0].flags == ""
        early = made.get(url, stream=True, timeout=5)
        early.close()  # before a byte of the body: recorded then
        assert len(recorder.finished) == 2
        whole = made.get(url, timeout=5)  # requests reads the body before get returns
        assert len(whole.content) >= 1_000_000
        assert len(recorder.finished) == 3
        dropped = made.get(url, stream=True, timeout=5)
        assert len(recorder.finished) == 3
        del dropped
        gc.collect()  # a response let go of unread: recorded when it is collected
        assert len(recorder.finished) == 4
        line = made.get(url, stream=True, timeout=5)
        for _ in line.iter_content(1000):
            break
        line.close()
        assert len(recorder.finished) == 5


FLAGS = "x-mesh-response-flags"

POOL_OF_ONE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1, http1MaxPendingRequests: 1}}
"""


def test_a_pool_slot_is_held_until_the_body_ends_and_given_back_once(upstream: Upstream) -> None:
    mesh = upstream_mesh(upstream.address, POOL_OF_ONE)
    target = mesh.explain("GET", "http://reviews:9080/").destination
    assert target is not None
    pool = mesh.cluster(target).pool
    url = "http://reviews:9080/pool?size=1000000"

    def overflows() -> bool:
        """Whether a call now finds the one slot taken (503 ``UO``)."""
        answer = made.get("http://reviews:9080/pool", timeout=5)
        return answer.status_code == 503 and answer.headers[FLAGS] == "UO"

    with mesh.requests_session() as made:
        for _ in range(2):
            assert made.get(url, timeout=5).status_code == 200  # read whole
        assert pool.active == 0
        held = made.get(url, stream=True, timeout=5)
        assert pool.active == 1  # the body is unread: the slot is the response's
        assert overflows()
        held.close()
        held.close()  # once: a second close gives nothing back twice
        assert pool.active == 0
        assert not overflows()
        dropped = made.get(url, stream=True, timeout=5)
        assert pool.active == 1
        del dropped
        gc.collect()
        assert pool.active == 0
        half = made.get(url, stream=True, timeout=5)
        assert half.raw.read(1000)
        assert pool.active == 1
        half.close()
        assert pool.active == 0
        streamed = made.get(url, stream=True, timeout=5)
        assert sum(len(chunk) for chunk in streamed.iter_content(65536)) >= 1_000_000
        assert pool.active == 0  # read to its end: given back before any close
        streamed.close()
        assert pool.active == 0
        assert made.get(url, timeout=5).status_code == 200


def test_a_body_cut_by_the_upstream_gives_its_slot_back(misbehaving: Misbehaving) -> None:
    mesh = upstream_mesh(misbehaving.address, POOL_OF_ONE)
    target = mesh.explain("GET", "http://reviews:9080/").destination
    assert target is not None
    pool = mesh.cluster(target).pool
    with mesh.requests_session() as made:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            made.get("http://reviews:9080/reset-body/requests?size=1000&sent=10", timeout=5)
        assert pool.active == 0
        assert made.get("http://reviews:9080/ok/requests", timeout=5).status_code == 200
