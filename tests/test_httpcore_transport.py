"""``HTTPCoreTransport`` (the mesh's default sync inner transport) against real servers on
127.0.0.1, side by side with ``httpx.HTTPTransport``: the same responses, and the same httpx
exceptions, type and message, for every way a call can fail."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from integration.upstream import Upstream

from meshlib import Mesh
from meshlib.clients.httpx.httpcore import HTTPCoreTransport
from meshlib.clients.httpx.transport import MeshTransport

pytestmark = pytest.mark.integration

TRANSPORTS: dict[str, Callable[[], httpx.BaseTransport]] = {
    "httpx": httpx.HTTPTransport,
    "meshlib": HTTPCoreTransport,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream.start("v1") as started:
        yield started


@contextmanager
def scripted(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-thread server that reads a request head and lets ``answer`` reply (or not)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        server.close()
        thread.join(5)


def both(call: Callable[[httpx.Client], object]) -> dict[str, object]:
    """``call`` through a client on each transport; what it returned or raised."""
    results: dict[str, object] = {}
    for name, make in TRANSPORTS.items():
        with httpx.Client(transport=make()) as client:
            try:
                results[name] = call(client)
            except httpx.HTTPError as exc:
                results[name] = (type(exc), str(exc), exc.request.url if exc._request else None)
    return results


def test_responses_are_the_same(upstream: Upstream) -> None:
    def call(client: httpx.Client) -> object:
        response = client.post(upstream.url("/echo?echo=1"), content=b"payload", headers={"a": "b"})
        body = response.json()
        return (
            response.status_code,
            response.http_version,
            response.reason_phrase,
            response.headers["content-type"],
            body["method"],
            body["body"],
            body["headers"]["a"],
        )

    results = both(call)
    assert results["meshlib"] == results["httpx"]
    assert results["meshlib"] == (200, "HTTP/1.1", "OK", "application/json", "POST", "payload", "b")


def test_streamed_bodies_arrive_whole(upstream: Upstream) -> None:
    def call(client: httpx.Client) -> object:
        with client.stream("GET", upstream.url("/stream")) as response:
            return b"".join(response.iter_bytes())

    results = both(call)
    assert results["meshlib"] == results["httpx"]
    assert b'"path": "/stream"' in results["meshlib"]  # type: ignore[operator]


def test_a_refused_port_is_the_same_connect_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    results = both(lambda client: client.get(f"http://127.0.0.1:{port}/"))
    assert results["meshlib"] == results["httpx"]
    assert results["meshlib"][0] is httpx.ConnectError  # type: ignore[index]


def test_a_slow_answer_is_the_same_read_timeout(upstream: Upstream) -> None:
    results = both(lambda client: client.get(upstream.url("/slow?delay=1"), timeout=0.1))
    assert results["meshlib"] == results["httpx"]
    assert results["meshlib"][0] is httpx.ReadTimeout  # type: ignore[index]


def test_a_connection_closed_before_the_answer_is_the_same_protocol_error() -> None:
    with scripted(lambda conn: None) as url:
        results = both(lambda client: client.get(url))
    assert results["meshlib"] == results["httpx"]
    assert results["meshlib"][0] is httpx.RemoteProtocolError  # type: ignore[index]


def test_a_body_cut_short_is_the_same_protocol_error_while_reading() -> None:
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")

    with scripted(answer) as url:
        results = both(lambda client: client.get(url))
    assert results["meshlib"] == results["httpx"]
    assert results["meshlib"][0] is httpx.RemoteProtocolError  # type: ignore[index]


def test_the_mesh_sends_through_it_unless_given_a_transport(upstream: Upstream) -> None:
    config = "apiVersion: meshlib.dev/v1\nkind: Service\nmetadata: {name: a}\n"
    assert isinstance(MeshTransport(Mesh.from_yaml(config)).inner, HTTPCoreTransport)
    given = httpx.HTTPTransport()
    assert MeshTransport(Mesh.from_yaml(config, transport=given)).inner is given
    with Mesh.from_yaml(config).client() as client:
        assert client.get(upstream.url("/x")).json()["path"] == "/x"
