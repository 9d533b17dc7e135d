"""The sync inner transport a mesh client sends through by default.

``HTTPCoreTransport`` is ``httpx.HTTPTransport`` — the same httpcore connection pool, built from
the same options (``verify``, ``cert``, ``http2``, ``limits``, ``proxy``, ``retries``, …) — with a
leaner hand-over per request. httpx's own ``handle_request`` enters a context manager (a
generator) around every request and around every read of the response body, to turn httpcore's
exceptions into httpx's; here the same mapping runs only when an exception is raised, so the
success path pays nothing for it. Requests and responses are the same objects, errors the same
httpx exception types with the same messages. The difference is about 3 µs per call, a tenth of
the mesh's own cost per call (``python -m bench.data_plane`` measures both).

``Mesh(transport=httpx.HTTPTransport(...))`` still uses exactly the transport it is given.

Both ``HTTPCoreTransport`` and ``AsyncHTTPCoreTransport`` (httpx's ``AsyncHTTPTransport``, the
async inner transport named ``"httpx"``) send through a ``DeadlineBackend``: httpcore's own
network backend, each read, write, connect and TLS handshake of which waits at most what is left
of the current deadline (``meshlib.deadline``), and fails with a timeout at once when nothing is
— so that an upstream trickling bytes cannot stretch a call past its deadline. Without a current
deadline they behave exactly as httpx's.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import httpcore
import httpx
from httpx._transports.default import map_httpcore_exceptions

from meshlib.deadline import current

__all__ = [
    "AsyncDeadlineBackend",
    "AsyncHTTPCoreTransport",
    "AsyncPoolTransport",
    "DeadlineBackend",
    "HTTPCoreTransport",
    "PoolTransport",
]


def _reraise_mapped(exc: Exception) -> NoReturn:
    """Raise httpx's counterpart of httpcore's ``exc`` (as ``httpx.HTTPTransport`` would)."""
    with map_httpcore_exceptions():
        raise exc
    raise exc  # pragma: no cover - the context manager always raises


class _ResponseStream(httpx.SyncByteStream):
    """httpcore's response body as an httpx stream; errors mapped only when raised."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:  # mapped to httpx's and re-raised
            _reraise_mapped(exc)

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- deadlines


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of the current deadline; ``expired`` raised when
    nothing is left."""
    deadline = current()
    if deadline is None:
        return timeout
    left = deadline.at - deadline.now()
    if left <= 0:
        raise expired("the deadline passed")
    return left if timeout is None or left < timeout else timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every wait ends by the current deadline."""

    __slots__ = ("_stream",)

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend (``inner``, ``httpcore.SyncBackend`` by default), each
    connect, read, write and TLS handshake bounded by the current deadline."""

    #: what a TCP connection is wrapped in (``meshlib.clients.httpx.tls.TLSBackend``: a stream
    #: whose TLS is its own)
    tcp_stream: type[_DeadlineStream] = _DeadlineStream

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return self.tcp_stream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    """An async network stream whose every wait ends by the current deadline."""

    __slots__ = ("_stream",)

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        secure = await self._stream.start_tls(ssl_context, server_hostname, bounded)
        return _AsyncDeadlineStream(secure)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    """httpcore's async network backend (``inner``, ``httpcore.AnyIOBackend`` by default), each
    connect, read, write and TLS handshake bounded by the current deadline."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = await self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _AsyncDeadlineStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = await self._inner.connect_unix_socket(path, bounded, socket_options)
        return _AsyncDeadlineStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _bound_pool(transport: Any, sync: bool) -> None:
    """Put a deadline backend around the network backend of the httpcore pool httpx made for
    ``transport`` (httpx takes no backend of its own: the pool's is replaced before any
    connection is made). A pool of another shape is left as it is."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None or isinstance(backend, (DeadlineBackend, AsyncDeadlineBackend)):
        return
    pool._network_backend = DeadlineBackend(backend) if sync else AsyncDeadlineBackend(backend)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- transports


class HTTPCoreTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` with exception mapping moved off the success path, and every
    wait bounded by the current deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _bound_pool(self, sync=True)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core)
        except Exception as exc:  # mapped to httpx's and re-raised
            _reraise_mapped(exc)
        stream: Any = response.stream
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(stream),
            extensions=response.extensions,
        )


class AsyncHTTPCoreTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (same options, same pool), every wait bounded by the current
    deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _bound_pool(self, sync=False)


class PoolTransport(HTTPCoreTransport):
    """``HTTPCoreTransport`` over a connection pool made elsewhere (an ``httpcore.ConnectionPool``
    with its own network backend: the TLS destinations of ``meshlib.security.outbound``, whose
    backend is a ``DeadlineBackend`` inside)."""

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self._pool = pool


class AsyncPoolTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` over an ``httpcore.AsyncConnectionPool`` made elsewhere."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool
