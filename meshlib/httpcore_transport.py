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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import httpcore
import httpx
from httpx._transports.default import map_httpcore_exceptions

__all__ = ["AsyncPoolTransport", "HTTPCoreTransport", "PoolTransport"]


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


class HTTPCoreTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` with exception mapping moved off the success path."""

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


class PoolTransport(HTTPCoreTransport):
    """``HTTPCoreTransport`` over a connection pool made elsewhere (an ``httpcore.ConnectionPool``
    with its own network backend: the TLS destinations of ``meshlib.security.outbound``)."""

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self._pool = pool


class AsyncPoolTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` over an ``httpcore.AsyncConnectionPool`` made elsewhere."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool
