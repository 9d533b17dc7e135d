"""An async inner transport on aiohttp: ``httpx.AsyncClient`` semantics, aiohttp's speed.

``AiohttpTransport`` is an ``httpx.AsyncBaseTransport`` that sends each ``httpx.Request``
through an ``aiohttp.ClientSession`` and hands back an ``httpx.Response`` whose body streams
from aiohttp's connection. Everything above it — ``httpx.AsyncClient`` (auth, cookies, hooks,
redirects, decoding) and meshlib's ``AsyncMeshTransport`` — works unchanged:

* aiohttp does no work of its own that httpx already does: no cookie jar, no redirects, no
  decompression (httpx decodes ``content-encoding``), no retry of a request on a reused
  connection, and no headers of its own (``Accept``, ``Accept-Encoding``, ``User-Agent`` and
  ``Content-Type`` are sent only when httpx sends them).
* ``request.extensions["timeout"]`` is applied per request: ``connect`` bounds connecting,
  ``read`` each read (as in httpx), ``pool`` plus ``connect`` the wait for a free connection
  and connecting together. aiohttp has no write timeout.
* aiohttp's and asyncio's errors become the httpx exceptions meshlib classifies (``request``
  set): refused or failed connects ``ConnectError``, a connect or pool time-out
  ``ConnectTimeout``, a read time-out ``ReadTimeout``, a connection closed before or during
  the response ``RemoteProtocolError``, a reset while sending ``WriteError``, other socket
  errors ``ReadError``.

The session is made on first use inside the running event loop and belongs to that loop: a
request from another loop (a new one per test, or a caller's own) gets a new session, and the
old one is closed as far as its loop still allows. HTTP/1.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from aiohttp.http import HttpVersion10
from multidict import CIMultiDict
from yarl import URL

__all__ = ["AiohttpResponseStream", "AiohttpTransport"]

#: aiohttp adds these when a request lacks them; httpx's request is sent as it is.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
#: Distinct timeout settings remembered (per-try timeouts under a deadline vary per call).
_TIMEOUT_CACHE_SIZE = 256
_NO_TIMEOUT = aiohttp.ClientTimeout()
_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"


class AiohttpResponseStream(httpx.AsyncByteStream):
    """A response body read from aiohttp's connection; ``aclose`` hands the connection back
    (to the pool when the body was read to its end, else closed)."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests through aiohttp.

    ``limits`` caps the connections of the pool (``max_connections``; ``None`` for no cap) and
    how long an idle one is kept (``keepalive_expiry``); ``max_keepalive_connections`` has no
    counterpart in aiohttp and is not used. ``verify`` is ``True``/``False`` or an
    ``ssl.SSLContext``, as in httpx.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        limits = limits if limits is not None else httpx.Limits()
        self._max_connections = limits.max_connections or 0  # aiohttp: 0 is no cap
        self._keepalive_expiry = limits.keepalive_expiry
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    # ------------------------------------------------------------------ session

    def _open(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        """A session for ``loop``; the one of another loop is closed where that can be done."""
        old, old_loop = self._session, self._loop
        if old is not None and old_loop is not None:
            _retire(old, old_loop)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
            ssl=self._verify,
            # Timers fire when asked, not rounded up to whole seconds past 5 s.
            timeout_ceil_threshold=math.inf,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            auto_decompress=False,
            timeout=_NO_TIMEOUT,
            trust_env=False,
            # Header and status lines as long as h11 (httpx) takes them.
            max_line_size=16384,
            max_field_size=16384,
        )
        # aiohttp silently sends an idempotent request again when a reused connection fails;
        # the mesh decides about retries (and counts attempts) itself.
        session._retry_connection = False
        self._session, self._loop = session, loop
        return session

    # ------------------------------------------------------------------ requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._loop is not loop:
            session = self._open(loop)
        timeout = self._timeout(request.extensions.get("timeout"))
        try:
            headers = CIMultiDict(
                [(k.decode("ascii"), v.decode("utf-8")) for k, v in request.headers.raw]
            )
        except UnicodeDecodeError:
            headers = CIMultiDict(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
            )
        stream = request.stream
        data: Any
        if isinstance(stream, httpx.ByteStream):  # a body in memory: bytes (none when empty)
            data = request.read() or None
        else:  # streamed as it comes; aiohttp frames it and sets transfer-encoding itself
            data = stream
            headers.popall("Transfer-Encoding", None)
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=timeout,
            )
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise httpx_error(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response, request),
            extensions={
                "http_version": _HTTP_10 if response.version == HttpVersion10 else _HTTP_11,
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    def _timeout(self, values: Any) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for httpx's ``{"connect", "read", "write", "pool"}`` (cached)."""
        if not values:
            return _NO_TIMEOUT
        connect = values.get("connect")
        read = values.get("read")
        pool = values.get("pool")
        key = (connect, read, pool)
        found = self._timeouts.get(key)
        if found is not None:
            return found
        if len(self._timeouts) >= _TIMEOUT_CACHE_SIZE:
            self._timeouts.clear()
        made = self._timeouts[key] = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's ``connect`` covers the wait for a free connection and connecting.
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=read,
        )
        return made

    async def aclose(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop is gone: nothing left to wait on
            await session.close()


def _retire(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
    """Close the session of a loop that is no longer the caller's, as far as that loop lets."""
    if session.closed:
        return
    if loop.is_running() and not loop.is_closed():  # running in another thread
        asyncio.run_coroutine_threadsafe(session.close(), loop)
        return
    connector = session.connector
    if connector is not None:
        # No loop runs the close for us: drop the pool now (its sockets close with their
        # transports), and mark the session closed so it does not warn when collected.
        with contextlib.suppress(Exception):
            connector._close()
    session.detach()


def httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for an aiohttp or asyncio error (``request`` set on it)."""
    message = str(exc) or type(exc).__name__
    error: httpx.TransportError
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = httpx.ConnectTimeout(message, request=request)
    elif isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        error = httpx.ReadTimeout(message, request=request)
    elif isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerFingerprintMismatch)):
        error = httpx.ConnectError(message, request=request)
    elif isinstance(
        exc,
        (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError),
    ):
        error = httpx.RemoteProtocolError(message, request=request)
    elif isinstance(exc, (aiohttp.NonHttpUrlClientError, aiohttp.InvalidURL)):
        error = httpx.UnsupportedProtocol(message, request=request)
    elif isinstance(exc, aiohttp.ClientConnectionResetError):
        error = httpx.WriteError(message, request=request)
    elif isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        error = httpx.ReadError(message, request=request)
    else:
        error = httpx.TransportError(message, request=request)
    return error
