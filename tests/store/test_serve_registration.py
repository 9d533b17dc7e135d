"""A served service registers itself on a real etcd (one member, started by the tests): the
runner (``make_server(register=True)``, ``meshctl run --register``) and ``MeshMiddleware``'s
lifespan (``register="host:port"``). Found by another mesh through etcd, gone when it stops;
a store that does not answer at startup is retried while the service serves."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib.cli import main as meshctl
from meshlib.errors import StoreError
from meshlib.security.ca import CertificateAuthority
from meshlib.security.outbound import TLS_MODE_LABEL
from meshlib.server import MeshMiddleware
from meshlib.server.runner import MeshServer, advertised_address, make_server, make_wsgi_server
from meshlib.store.etcd import EtcdClient
from meshlib.store.layout import Layout
from meshlib.store.local import EtcdCluster
from meshlib.store.url import StoreURL
from meshlib.testing import FakeClock
from tests.store.conftest import eventually, need_etcd

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
WAIT = 10.0
REVIEWS = "reviews.default.svc.cluster.local"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("registration") / "ca"
    CertificateAuthority.init(directory, clock=FakeClock(wall=time.time() - 86400))
    return directory


@pytest.fixture
def url(etcd: EtcdCluster, prefix: str) -> str:
    return etcd.url(prefix)


def config(
    tmp_path: Path, name: str, url: str | None, *, version: str = "v1", ca: Path | None = None
) -> Path:
    lines = [
        "apiVersion: meshlib.dev/v1",
        "kind: Service",
        f"metadata: {{name: {name}}}",
        "spec:",
        f"  version: {version}",
    ]
    if url is not None:
        lines.append(f"  store: {url}")
    if ca is not None:
        lines.append(f"  identity: {{ca: {ca}}}")
    path = tmp_path / f"{name}-{version}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the port it serves on and how the caller connected."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    meshlib = (scope.get("extensions") or {}).get("meshlib") or {}
    body = json.dumps(
        {"port": scope["server"][1], "policy": meshlib.get("connection_security_policy")}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(server: MeshServer) -> Iterator[MeshServer]:
    """``server`` run in a thread until the block ends (gracefully stopped)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.005)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(WAIT)
        assert not thread.is_alive(), "the server did not stop"


def stored(url: str, service: str) -> dict[str, dict[str, Any]]:
    """The endpoints registered for ``service`` (by address), read straight from etcd."""
    parsed = StoreURL.parse(url)
    layout = Layout(parsed.prefix)
    client = EtcdClient(parsed.endpoints)
    try:
        start, end = layout.registry_range()
        events, _ = client.range(start, end)
    finally:
        client.close()
    prefix = f"{layout.root}registry/default/{service}/"
    return {
        e.key.removeprefix(prefix): json.loads(e.value) for e in events if e.key.startswith(prefix)
    }


# --------------------------------------------------------------------------- the runner


async def test_a_served_service_registers_its_bound_port_is_called_over_mtls_and_goes_at_stop(
    tmp_path: Path, url: str, ca_dir: Path
) -> None:
    reviews = Mesh.from_file(config(tmp_path, "reviews", url, version="v2", ca=ca_dir))
    caller = Mesh.from_file(config(tmp_path, "productpage", url, ca=ca_dir))
    server = make_server(whoami, reviews, port=0, register=True, log_level="warning")
    try:
        with serving(server):
            port = server.port
            assert port  # port 0 resolved: the one bound is the one registered
            assert server.registration is not None
            assert server.registration.registered
            (value,) = stored(url, "reviews").values()
            assert value["address"] == f"{HOST}:{port}"
            assert value["labels"] == {
                "app": "reviews",
                "version": "v2",
                TLS_MODE_LABEL: "istio",  # it has an identity: callers use mutual TLS
            }
            eventually(lambda: len(caller.registry.endpoints(REVIEWS)) == 1)
            with caller.client(timeout=WAIT) as http:
                answer = http.get("http://reviews:9080/").json()
            assert answer == {"port": port, "policy": "mutual_tls"}
            async with caller.async_client(timeout=WAIT) as ahttp:
                answer = (await ahttp.get("http://reviews:9080/")).json()
            assert answer == {"port": port, "policy": "mutual_tls"}
            assert reviews.store is not None
            assert reviews.store.status()["registered"] == [f"{HOST}:{port}"]
        # a graceful stop revokes the lease: gone from etcd at once, not after the TTL
        assert stored(url, "reviews") == {}
        eventually(lambda: caller.registry.endpoints(REVIEWS) == (), timeout=2.0)
        assert REVIEWS not in caller.store.hosts() if caller.store is not None else False
    finally:
        caller.close()
        reviews.close()


def test_a_wsgi_app_registers_without_identity_in_plain_text(tmp_path: Path, url: str) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [environ["SERVER_PORT"].encode()]

    details = Mesh.from_file(config(tmp_path, "details", url))
    server = make_wsgi_server(app, details, port=0, register=True, log_level="warning")
    try:
        with serving(server):
            (value,) = stored(url, "details").values()
            assert value["address"] == f"{HOST}:{server.port}"
            assert value["labels"] == {"app": "details", "version": "v1"}  # no tlsMode
        assert stored(url, "details") == {}
    finally:
        details.close()


def test_a_store_that_does_not_answer_at_startup_is_retried_while_the_service_serves(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    need_etcd()
    cluster = EtcdCluster(1)  # its ports are chosen; it is not started yet
    url = cluster.url(prefix)
    ratings = Mesh.from_file(config(tmp_path, "ratings", url))
    server = make_server(whoami, ratings, port=0, register=True, log_level="warning")
    try:
        with caplog.at_level(logging.INFO, logger="meshlib"), serving(server):
            # it serves at once, unregistered, and says why
            response = httpx.get(f"http://{HOST}:{server.port}/", timeout=WAIT)
            assert response.json() == {"port": server.port, "policy": "none"}
            assert server.registration is not None
            assert not server.registration.registered
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(
                "registry/default/ratings/" in w and "did not answer, retrying" in w
                for w in warnings
            ), warnings
            cluster.start()
            eventually(lambda: server.registration is not None and server.registration.registered)
            (value,) = stored(url, "ratings").values()
            assert value["address"] == f"{HOST}:{server.port}"
        assert stored(url, "ratings") == {}
    finally:
        ratings.close()
        cluster.close()


def test_register_is_refused_before_serving_when_it_cannot_work(tmp_path: Path) -> None:
    plain = Mesh.from_file(config(tmp_path, "details", None))
    try:
        with pytest.raises(StoreError, match=r"register=True needs an etcd store: set spec\.store"):
            make_server(whoami, plain, port=0, register=True)
    finally:
        plain.close()
    # a store that is not there yet is fine; the address and the TTL are checked now
    mesh = Mesh.from_file(config(tmp_path, "ratings", "etcd://127.0.0.1:1/x"))
    try:
        with pytest.raises(ValueError, match="every interface"):
            make_server(whoami, mesh, host="0.0.0.0", port=0, register=True)
        with pytest.raises(ValueError, match="register_ttl must be"):
            make_server(whoami, mesh, port=0, register=True, register_ttl=1)
        server = make_server(whoami, mesh, host="0.0.0.0", register=True, advertise="10.0.0.7")
        assert server.advertise == "10.0.0.7"
    finally:
        mesh.close()


@pytest.mark.parametrize(
    ("host", "port", "advertise", "address"),
    [
        ("127.0.0.1", 8000, None, "127.0.0.1:8000"),
        ("0.0.0.0", 8000, "10.0.0.7", "10.0.0.7:8000"),
        ("0.0.0.0", 8000, "10.0.0.7:80", "10.0.0.7:80"),
        ("::1", 9080, None, "[::1]:9080"),
        ("::", 9080, "[fd00::7]:8080", "[fd00::7]:8080"),
        ("::", 9080, "fd00::7", "[fd00::7]:9080"),
        ("localhost", 5, None, "localhost:5"),
    ],
)
def test_the_advertised_address(host: str, port: int, advertise: str | None, address: str) -> None:
    assert advertised_address(host, port, advertise) == address


@pytest.mark.parametrize(
    ("host", "advertise", "message"),
    [
        ("0.0.0.0", None, "every interface"),
        ("::", None, "every interface"),
        ("127.0.0.1", "0.0.0.0", "every interface"),
        ("127.0.0.1", "10.0.0.7:0", "port must be 1-65535"),
        ("127.0.0.1", "10.0.0.7:http", "port must be 1-65535"),
        ("127.0.0.1", "[fd00::7", r"write \[IPv6\]"),
        ("127.0.0.1", "http://10.0.0.7", "not host or host:port"),
    ],
)
def test_an_address_that_cannot_be_registered(
    host: str, advertise: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        advertised_address(host, 8000, advertise)


def test_meshctl_run_register_until_sigterm(tmp_path: Path, url: str) -> None:
    config(tmp_path, "details", url)
    (tmp_path / "served.py").write_text(
        textwrap.dedent(
            """\
            async def app(scope, receive, send):
                if scope['type'] != 'http':
                    return
                await send({'type': 'http.response.start', 'status': 200, 'headers': []})
                await send({'type': 'http.response.body', 'body': b'details'})
            """
        )
    )
    with socket.create_server((HOST, 0)) as sock:
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "meshlib.cli", "run", "served:app", "--port", str(port)]
    command += ["-c", "details-v1.yaml", "--register", "--log-level", "info"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        eventually(lambda: process.poll() is not None or bool(stored(url, "details")), 30)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert list(stored(url, "details")) == [f"{HOST}:{port}"]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    assert stored(url, "details") == {}
    text = output.decode()
    assert f"registered {HOST}:{port} in {url}" in text
    assert f"deregistered {HOST}:{port}" in text


def test_meshctl_run_register_without_a_store_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, "details", None)
    (tmp_path / "served_without_store.py").write_text(
        "async def app(scope, receive, send):\n    pass\n"
    )
    monkeypatch.setattr(sys, "path", list(sys.path))  # meshctl run puts --app-dir first
    monkeypatch.delitem(sys.modules, "served_without_store", raising=False)
    argv = ["run", "served_without_store:app", "--app-dir", str(tmp_path), "-c", str(path)]
    assert meshctl([*argv, "--register"]) == 1
    assert "meshctl run: --register: register=True needs an etcd store" in capsys.readouterr().err
    assert meshctl([*argv, "--advertise", "10.0.0.7"]) == 2
    assert "--advertise goes with --register" in capsys.readouterr().err


# --------------------------------------------------------------------------- the middleware


class Lifespan:
    """A server's side of the ASGI lifespan protocol, driven by hand."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def event(self, kind: str) -> dict[str, Any]:
        if self.task is None:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.sent.put))
        await self.inbox.put({"type": f"lifespan.{kind}"})
        return await asyncio.wait_for(self.sent.get(), WAIT)


async def with_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app with startup and shutdown of its own (it records them)."""
    assert scope["type"] == "lifespan"
    while True:
        message = await receive()
        EVENTS.append(message["type"])
        kind = message["type"].removeprefix("lifespan.")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that knows nothing of lifespan."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")


EVENTS: list[str] = []


@pytest.mark.parametrize("app", [with_lifespan, http_only], ids=["app-lifespan", "no-lifespan"])
async def test_the_middleware_registers_for_the_servers_lifespan(
    tmp_path: Path, url: str, app: Any
) -> None:
    EVENTS.clear()
    mesh = Mesh.from_file(config(tmp_path, "reviews", url, version="v3"))
    middleware = MeshMiddleware(app, mesh, register="10.0.3.3:9080", labels={"zone": "c"})
    lifespan = Lifespan(middleware)
    try:
        assert await lifespan.event("startup") == {"type": "lifespan.startup.complete"}
        assert stored(url, "reviews") == {
            "10.0.3.3:9080": {
                "address": "10.0.3.3:9080",
                "labels": {"app": "reviews", "version": "v3", "zone": "c"},
                "weight": 1,
                "version": "v3",
            }
        }
        assert await lifespan.event("shutdown") == {"type": "lifespan.shutdown.complete"}
        assert stored(url, "reviews") == {}
        assert lifespan.task is not None
        await asyncio.wait_for(lifespan.task, WAIT)
        expected = ["lifespan.startup", "lifespan.shutdown"] if app is with_lifespan else []
        assert expected == EVENTS
    finally:
        mesh.close()


async def test_the_middleware_fails_the_startup_when_it_cannot_register(tmp_path: Path) -> None:
    mesh = Mesh.from_file(config(tmp_path, "reviews", None))
    lifespan = Lifespan(MeshMiddleware(http_only, mesh, register="10.0.3.3:9080"))
    try:
        answer = await lifespan.event("startup")
        assert answer["type"] == "lifespan.startup.failed"
        assert "cannot register 10.0.3.3:9080: registering needs an etcd store" in answer["message"]
    finally:
        mesh.close()
