"""Integration fixtures: real upstream processes on 127.0.0.1, and meshes that call them.

Each upstream is ``tests/integration/upstream.py`` in a process of its own. Every scenario runs
through a stock ``httpx.Client`` and a stock ``httpx.AsyncClient`` on each async inner transport,
httpx's and aiohttp's (the ``connect`` fixture's ``Caller``: one object that drives any of them
from plain test code; the async client runs on an event loop of its own, its concurrent calls
with ``asyncio.gather``, the sync client's in threads).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from examples.bookinfo import NETWORKING
from meshlib import Mesh
from meshlib.clients.httpx.inner import new_async_transport
from meshlib.clients.httpx.transport import AsyncMeshTransport

from .upstream import Upstream

#: The project's Bookinfo rule files.
BOOKINFO = NETWORKING

Result = httpx.Response | Exception


def mesh_yaml(
    registry: Mapping[str, Iterable[Upstream]],
    *,
    include: Iterable[str] = (),
    circuit_breakers: Mapping[str, Any] | None = None,
    docs: str = "",
) -> str:
    """A config: the Service document (``registry.static`` has each upstream's address, labelled
    ``version: <its version>``), Bookinfo files to ``include`` by name, and more ``docs``."""
    lines = [
        "apiVersion: meshlib.dev/v1",
        "kind: Service",
        "metadata: {name: productpage}",
        "spec:",
        "  registry:",
        "    static:",
    ]
    for service, upstreams in registry.items():
        lines.append(f"      {service}:")
        lines.extend(
            f"        - {{address: {u.address}, labels: {{version: {u.version}}}}}"
            for u in upstreams
        )
    files = [str((BOOKINFO / name).resolve()) for name in include]
    if files:
        lines.append(f"  include: {json.dumps(files)}")
    if circuit_breakers is not None:
        lines.append(f"  circuitBreakers: {json.dumps(circuit_breakers)}")
    text = "\n".join(lines) + "\n"
    if docs.strip():
        text += "---\n" + docs
    return text


class Caller:
    """One mesh client — ``httpx.Client`` (``kind="sync"``), ``httpx.AsyncClient`` on the
    inner transport named after the dash (``"async-httpx"``, ``"async-aiohttp"``; plain
    ``"async"`` takes the mesh's default), or ``mesh.aiohttp_session()`` (``"aiohttp"``: its
    answers handed back as ``httpx.Response`` objects with the body read, ``MeshInfo`` in
    ``extensions["mesh"]``) — driven from synchronous test code."""

    def __init__(self, mesh: Mesh, kind: str) -> None:
        self.mesh = mesh
        self.kind = kind
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._session: AiohttpCaller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if kind == "sync":
            self._client = mesh.client()
        elif kind == "requests":
            self._client = RequestsCaller(mesh)  # type: ignore[assignment]
        elif kind == "aiohttp":
            self._loop = asyncio.new_event_loop()
            self._session = AiohttpCaller(mesh, self._loop)
        else:
            self._loop = asyncio.new_event_loop()
            inner = kind.partition("-")[2]
            if inner:
                transport = AsyncMeshTransport(mesh, new_async_transport(inner))
                self._aclient = httpx.AsyncClient(transport=transport)
            else:
                self._aclient = mesh.async_client()

    @property
    def timeout_error(self) -> type[BaseException]:
        """The client's own timeout family: a ``DeadlineExceeded`` through it is one too."""
        if self.kind == "aiohttp":
            return asyncio.TimeoutError
        if self.kind == "requests":
            import requests

            return requests.exceptions.Timeout
        return httpx.TimeoutException

    @property
    def transport_error(self) -> type[BaseException]:
        """The client's own family of failed calls: every mesh error through it is one too."""
        if self.kind == "aiohttp":
            import aiohttp

            return aiohttp.ClientError
        if self.kind == "requests":
            import requests

            return requests.exceptions.ConnectionError
        return httpx.TransportError

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self._client is not None:
            return self._client.request(method, url, **kwargs)
        assert self._loop is not None
        if self._session is not None:
            return self._loop.run_until_complete(self._session.request(method, url, **kwargs))
        assert self._aclient is not None
        return self._loop.run_until_complete(self._aclient.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def pause(self, seconds: float) -> None:
        """Let ``seconds`` pass, the async client's event loop running (its mirror tasks)."""
        if self._loop is not None:
            self._loop.run_until_complete(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def concurrently(self, n: int, method: str, url: str, **kwargs: Any) -> list[Result]:
        """``n`` calls at once (threads released together, or ``asyncio.gather``); each
        response or exception, in order."""
        if self._client is not None:
            client = self._client
            start = threading.Barrier(n)

            def one() -> Result:
                start.wait(timeout=10)
                try:
                    return client.request(method, url, **kwargs)
                except Exception as exc:
                    return exc

            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(lambda _: one(), range(n)))
        assert self._loop is not None
        aclient: Any = self._session if self._session is not None else self._aclient
        assert aclient is not None

        async def all_at_once() -> list[Result]:
            calls = [aclient.request(method, url, **kwargs) for _ in range(n)]
            return list(await asyncio.gather(*calls, return_exceptions=True))  # type: ignore[arg-type]

        return self._loop.run_until_complete(all_at_once())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._loop is not None:
            closing: Any = self._session if self._session is not None else self._aclient
            assert closing is not None
            self._loop.run_until_complete(closing.aclose())
            self._loop.close()


class RequestsCaller:
    """``mesh.requests_session()`` called with httpx's arguments (``params``, ``headers``,
    ``content``, ``json``, ``timeout``), each answer as an ``httpx.Response`` (body read,
    ``MeshInfo`` in its extensions)."""

    def __init__(self, mesh: Mesh) -> None:
        self._session = mesh.requests_session()

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        headers: Any = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        from meshlib.clients.requests import mesh_info

        answer = self._session.request(
            method,
            url,
            params=params,
            headers=headers,
            data=content,
            json=json,
            timeout=timeout,
            allow_redirects=False,
        )
        with answer:
            return httpx.Response(
                answer.status_code,
                headers=list(answer.headers.items()),
                content=answer.content,
                request=httpx.Request(method, answer.url),
                extensions={"mesh": mesh_info(answer)},
            )

    def close(self) -> None:
        self._session.close()


class AiohttpCaller:
    """``mesh.aiohttp_session()`` called with httpx's arguments (``params``, ``headers``,
    ``content``, ``json``), each answer as an ``httpx.Response`` (body read, ``MeshInfo`` in
    its extensions): the data-plane scenarios read them as they read httpx's."""

    def __init__(self, mesh: Mesh, loop: asyncio.AbstractEventLoop) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session: aiohttp.ClientSession = loop.run_until_complete(self._open(mesh))

    @staticmethod
    async def _open(mesh: Mesh) -> Any:
        return mesh.aiohttp_session()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        headers: Any = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        from meshlib.clients.aiohttp import mesh_info

        aiohttp = self._aiohttp
        options: dict[str, Any] = {"allow_redirects": False}
        if timeout is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self._session.request(
            method, url, params=params, headers=headers, data=content, json=json, **options
        ) as answer:
            body = await answer.read()
            return httpx.Response(
                answer.status,
                headers=list(answer.raw_headers),
                content=body,
                request=httpx.Request(method, str(answer.url)),
                extensions={"mesh": mesh_info(answer)},
            )

    async def aclose(self) -> None:
        await self._session.close()


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, Upstream]]:
    """Three upstream processes for the whole run, labelled v1, v2 and v3."""
    started = Upstream.start_many(["v1", "v2", "v3"])
    try:
        yield {u.version: u for u in started}
    finally:
        for upstream in started:
            upstream.stop()


@pytest.fixture
def upstream_pair() -> Iterator[tuple[Upstream, Upstream]]:
    """Two upstream processes of this test's own, both labelled v1 (it may stop one)."""
    first, second = Upstream.start_many(["v1", "v1"])
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


@pytest.fixture(params=["sync", "async-httpx", "async-aiohttp", "aiohttp", "requests"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(kind: str) -> Iterator[Callable[[Mesh], Caller]]:
    """``connect(mesh)``: a ``Caller`` of this test's kind, closed at the end of the test."""
    made: list[Caller] = []

    def make(mesh: Mesh) -> Caller:
        caller = Caller(mesh, kind)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        caller.close()


@pytest.fixture
def base_path(request: pytest.FixtureRequest, kind: str) -> str:
    """A path of this test's own (upstreams count hits per path)."""
    return f"/{request.function.__name__}/{kind}"
