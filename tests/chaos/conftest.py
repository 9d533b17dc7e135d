"""Chaos fixtures: real upstream processes on 127.0.0.1 that misbehave, and meshes that call them.

``misbehaving`` is one ``tests/chaos/misbehaving.py`` process for the whole run (trickled headers
or body, a hang, a reset in the middle of a body, …: see that module); ``unaccepting`` one whose
listener never accepts a connection. ``chaos_mesh(docs)`` builds a mesh whose service ``chaos``
is the misbehaving upstream. Every scenario runs through each client kind: ``httpx.Client``
(the default sync inner transport), ``httpx.AsyncClient`` on each async inner transport,
httpx's and aiohttp's, and a requests session (``kind``, ``caller``); the ``Caller`` drives any
of them from plain test code and measures how long each call took, on the real clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib.clients.httpx.inner import new_async_transport
from meshlib.clients.httpx.transport import AsyncMeshTransport, MeshTransport

from .misbehaving import Misbehaving

#: The client kinds every scenario runs through: the sync client, the async client on each
#: async inner transport, and a requests session (``mesh.requests_session()``).
KINDS = ("sync", "async-httpx", "async-aiohttp", "requests")
#: The service name the misbehaving upstream is registered under.
SERVICE = "chaos"


@pytest.fixture(scope="session")
def misbehaving() -> Iterator[Misbehaving]:
    """The misbehaving upstream process, for the whole run."""
    server = Misbehaving.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def unaccepting() -> Iterator[Misbehaving]:
    """An upstream process whose listener never accepts a connection (connects hang)."""
    server = Misbehaving.start(no_accept=True)
    try:
        yield server
    finally:
        server.stop()


def mesh_config(
    address: str, docs: str = "", *, service: str = SERVICE, telemetry: bool = False
) -> str:
    """A config whose ``service`` is the upstream at ``address``, plus more ``docs``;
    ``telemetry``: with metrics and the access log on."""
    text = (
        "apiVersion: meshlib.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: caller}\n"
        "spec:\n"
        "  registry:\n"
        "    static:\n"
        f"      {service}:\n"
        f"        - {{address: {address}, labels: {{version: v1}}}}\n"
    )
    if telemetry:
        text += "  telemetry: {metrics: {}, accessLog: {}, tracing: {enabled: false}}\n"
    return text + ("---\n" + docs if docs.strip() else "")


@pytest.fixture
def chaos_mesh(misbehaving: Misbehaving) -> Iterator[Callable[..., Mesh]]:
    """``chaos_mesh(docs, address=..., telemetry=...)``: a mesh calling the misbehaving upstream
    (or the one at ``address``) as service ``chaos``, with Istio resources ``docs`` (and metrics
    and the access log, with ``telemetry``); closed after the test."""
    made: list[Mesh] = []

    def make(
        docs: str = "", *, address: str | None = None, telemetry: bool = False, **options: Any
    ) -> Mesh:
        config = mesh_config(address or misbehaving.address, docs, telemetry=telemetry)
        mesh = Mesh.from_yaml(config, **options)
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        mesh.close()


@dataclass
class Outcome:
    """What one call came to: the response (body read) or the exception, and how long it took
    on the real clock."""

    response: httpx.Response | None
    error: BaseException | None
    body: bytes
    elapsed: float

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None


class Caller:
    """One mesh client of a kind — ``"sync"``, ``"async-httpx"``, ``"async-aiohttp"``,
    ``"requests"`` — driven from synchronous test code (the async client runs on an event loop
    of its own). ``timeout`` is the client's own timeout (httpx's default: 5 s; requests'
    ``timeout=`` of each call). A requests answer comes back as an ``httpx.Response`` (its
    ``MeshInfo`` in ``extensions["mesh"]``, as it was when the body ended)."""

    def __init__(self, mesh: Mesh, kind: str, timeout: Any = 5.0) -> None:
        self.mesh = mesh
        self.kind = kind
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: RequestsCaller | None = None
        if kind == "sync":
            self._client = httpx.Client(transport=MeshTransport(mesh), timeout=timeout)
        elif kind == "requests":
            self._session = RequestsCaller(mesh, timeout)
        else:
            self._loop = asyncio.new_event_loop()
            inner = new_async_transport(kind.partition("-")[2])
            transport = AsyncMeshTransport(mesh, inner)
            self._aclient = httpx.AsyncClient(transport=transport, timeout=timeout)

    @property
    def read_timeout(self) -> type[BaseException]:
        """The client's own error for a read its caller's timeout ended."""
        if self.kind == "requests":
            import requests

            return requests.exceptions.ReadTimeout
        return httpx.ReadTimeout

    @property
    def broken_body(self) -> tuple[type[BaseException], ...]:
        """The client's own errors for a connection that broke in the middle of a body."""
        if self.kind == "requests":
            import requests

            return (requests.exceptions.ChunkedEncodingError,)
        return (httpx.RemoteProtocolError, httpx.ReadError)

    @property
    def client(self) -> httpx.Client | httpx.AsyncClient:
        client = self._client if self._client is not None else self._aclient
        assert client is not None
        return client

    def run(self, work: Callable[[Any], Any]) -> Any:
        """``work(client)`` — a plain call for the sync client, a coroutine for the async one."""
        if self._client is not None:
            return work(self._client)
        assert self._loop is not None
        return self._loop.run_until_complete(work(self._aclient))

    def call(self, method: str, url: str, **kwargs: Any) -> Outcome:
        """One call, its body read by httpx (``client.request``); never raises."""
        if self._session is not None:
            return self._session.call(method, url, **kwargs)
        started = time.monotonic()
        try:
            if self._client is not None:
                response = self._client.request(method, url, **kwargs)
            else:

                async def request(client: httpx.AsyncClient) -> httpx.Response:
                    return await client.request(method, url, **kwargs)

                response = self.run(request)
        except Exception as exc:
            return Outcome(None, exc, b"", _since(started))
        return Outcome(response, None, response.content, _since(started))

    def stream(self, method: str, url: str, *, read: bool = True, **kwargs: Any) -> Outcome:
        """One streamed call (``client.stream``), the body read chunk by chunk (unless ``read``
        is False); never raises: the outcome holds what came."""
        if self._session is not None:
            return self._session.stream(method, url, read=read, **kwargs)
        started = time.monotonic()
        chunks: list[bytes] = []
        holder: list[httpx.Response] = []
        try:
            if self._client is not None:
                with self._client.stream(method, url, **kwargs) as response:
                    holder.append(response)
                    if read:
                        for chunk in response.iter_raw():
                            chunks.append(chunk)
            else:

                async def streamed(client: httpx.AsyncClient) -> None:
                    async with client.stream(method, url, **kwargs) as response:
                        holder.append(response)
                        if read:
                            async for chunk in response.aiter_raw():
                                chunks.append(chunk)

                self.run(streamed)
        except Exception as exc:
            return Outcome(holder[0] if holder else None, exc, b"".join(chunks), _since(started))
        return Outcome(holder[0], None, b"".join(chunks), _since(started))

    def concurrently(self, n: int, method: str, url: str, **kwargs: Any) -> list[Outcome]:
        """``n`` calls at once (threads released together, or ``asyncio.gather``)."""
        if self._client is not None or self._session is not None:
            start = threading.Barrier(n)

            def one(_: int) -> Outcome:
                start.wait(timeout=10)
                return self.call(method, url, **kwargs)

            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(one, range(n)))
        assert self._loop is not None
        client = self._aclient
        assert client is not None

        async def one_async() -> Outcome:
            started = time.monotonic()
            try:
                response = await client.request(method, url, **kwargs)
            except Exception as exc:
                return Outcome(None, exc, b"", _since(started))
            return Outcome(response, None, response.content, _since(started))

        async def all_at_once() -> list[Outcome]:
            return list(await asyncio.gather(*(one_async() for _ in range(n))))

        return self._loop.run_until_complete(all_at_once())  # type: ignore[no-any-return]

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``condition()`` holds, the async client's event loop running
        meanwhile (its background tasks progress); whether it came to hold."""
        ends = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= ends:
                return False
            if self._loop is not None:
                self._loop.run_until_complete(asyncio.sleep(0.02))
            else:
                time.sleep(0.02)
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._session is not None:
            self._session.close()
        if self._loop is not None:
            assert self._aclient is not None
            self._loop.run_until_complete(self._aclient.aclose())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()


class RequestsCaller:
    """``mesh.requests_session()`` behind the ``Caller``'s ``call`` and ``stream``."""

    def __init__(self, mesh: Mesh, timeout: Any) -> None:
        self._session = mesh.requests_session()
        self._timeout = timeout

    def call(self, method: str, url: str, **kwargs: Any) -> Outcome:
        """One call, its body read by requests (``stream=False``)."""
        started = time.monotonic()
        try:
            answer = self._session.request(method, url, timeout=self._timeout, **kwargs)
        except Exception as exc:
            return Outcome(None, exc, b"", _since(started))
        return Outcome(_as_httpx(answer, answer.content), None, answer.content, _since(started))

    def stream(self, method: str, url: str, *, read: bool = True, **kwargs: Any) -> Outcome:
        """One call with ``stream=True``, the body read chunk by chunk (``iter_content``)."""
        started = time.monotonic()
        chunks: list[bytes] = []
        answer = None
        try:
            answer = self._session.request(
                method, url, timeout=self._timeout, stream=True, **kwargs
            )
            with answer:
                if read:
                    for chunk in answer.iter_content(None):
                        chunks.append(chunk)
        except Exception as exc:
            response = _as_httpx(answer, b"".join(chunks)) if answer is not None else None
            return Outcome(response, exc, b"".join(chunks), _since(started))
        assert answer is not None
        return Outcome(_as_httpx(answer, b"".join(chunks)), None, b"".join(chunks), _since(started))

    def close(self) -> None:
        self._session.close()


def _as_httpx(answer: Any, body: bytes) -> httpx.Response:
    from meshlib.clients.requests import mesh_info

    return httpx.Response(
        answer.status_code,
        headers=list(answer.headers.items()),
        content=body,
        request=httpx.Request(answer.request.method, answer.url),
        extensions={"mesh": mesh_info(answer)},
    )


def _since(started: float) -> float:
    return time.monotonic() - started


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(kind: str) -> Iterator[Callable[..., Caller]]:
    """``connect(mesh, timeout=...)``: a ``Caller`` of this test's kind, closed after the test."""
    made: list[Caller] = []

    def make(mesh: Mesh, timeout: Any = 5.0) -> Caller:
        caller = Caller(mesh, kind, timeout)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        caller.close()


@pytest.fixture
def base_path(request: pytest.FixtureRequest, kind: str) -> str:
    """A path suffix of this test's own (the upstream counts hits per path)."""
    return f"/{request.node.name}".replace("[", "/").replace("]", "")
