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
from aiohttp.client_reqrep import ClientRequest, ClientResponse
from aiohttp.helpers import TimerNoop
from aiohttp.http import HttpVersion10
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict
from yarl import URL

__all__ = ["AiohttpResponseStream", "AiohttpTransport"]

#: aiohttp adds these when a request lacks them; httpx's request is sent as it is.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")
_BODY_METHODS = frozenset(ClientRequest.POST_METHODS)
#: Distinct timeout settings remembered (per-try timeouts under a deadline vary per call).
_TIMEOUT_CACHE_SIZE = 256
#: No timer is rounded up to a whole second (aiohttp's default above 5 s).
_EXACT = math.inf
_NO_TIMEOUT = aiohttp.ClientTimeout(ceil_threshold=_EXACT)
_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"
#: Header and status lines as long as h11 (httpx) takes them.
_MAX_LINE = 16384
_READ_BUFSIZE = 2**16
_NO_TIMER = TimerNoop()
_NO_TRACES: list[Any] = []
#: The aiohttp releases whose internals the direct send path was checked against; with any
#: other, requests go through ``ClientSession.request`` (a little more work per request).
_DIRECT = tuple(int(part) for part in aiohttp.__version__.split(".")[:2]) == (3, 14)


class AiohttpResponseStream(httpx.AsyncByteStream):
    """A response body read from aiohttp's connection, chunks as they arrive; ``aclose`` hands
    the connection back (to the pool when the body was read to its end, else closed).

    Its own async iterator, not an async generator: nothing for the event loop to track per
    response. Closed, it lets go of aiohttp's response: httpx keeps its response in a reference
    cycle, and what that holds waits for the garbage collector."""

    __slots__ = ("_content", "_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._request = request
        self._content: aiohttp.StreamReader = response.content

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.readany()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise httpx_error(exc, self._request) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        response = self._response
        if response is not None:
            self._response = None
            self._content = EMPTY_PAYLOAD
            response.release()


class _Request(ClientRequest):
    """aiohttp's request, taking the headers it is given as they are: a ``CIMultiDict`` made
    for this request alone, in httpx's order (aiohttp would copy them one by one)."""

    def update_headers(self, headers: Any) -> None:
        self.headers = headers
        if "Host" not in headers:
            host = self.url.host_port_subcomponent
            assert host is not None
            headers["Host"] = host


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests through aiohttp.

    ``limits`` caps the connections of the pool (``max_connections``; ``None`` for no cap) and
    how long an idle one is kept (``keepalive_expiry``); ``max_keepalive_connections`` has no
    counterpart in aiohttp and is not used. ``verify`` is ``True``/``False`` or an
    ``ssl.SSLContext``, as in httpx.
    """

    #: Send through aiohttp's connector and request objects, without ``ClientSession.request``
    #: (its cookies, proxies, auth, redirects, middlewares and traces, none of them used here).
    direct = _DIRECT

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
            timeout_ceil_threshold=_EXACT,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            auto_decompress=False,
            timeout=_NO_TIMEOUT,
            trust_env=False,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_LINE,
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
        raw = request.headers.raw
        try:
            headers = CIMultiDict([(k.decode("ascii"), v.decode("utf-8")) for k, v in raw])
        except UnicodeDecodeError:
            headers = CIMultiDict([(k.decode("latin-1"), _text(v)) for k, v in raw])
        stream = request.stream
        data: Any
        if isinstance(stream, httpx.ByteStream):  # a body in memory: bytes (none when empty)
            data = request.read() or None
        else:  # streamed as it comes; aiohttp frames it and sets transfer-encoding itself
            data = stream
            headers.popall("Transfer-Encoding", None)
        url = request.url
        # httpx has turned credentials in the URL into an Authorization header already.
        target = URL(str(url if not url.userinfo else url.copy_with(userinfo=b"")), encoded=True)
        try:
            if self.direct:
                response = await self._send(session, loop, request, target, headers, data, timeout)
            else:
                response = await session.request(
                    request.method,
                    target,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    timeout=timeout,
                    server_hostname=request.extensions.get("sni_hostname"),
                )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
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

    async def _send(
        self,
        session: aiohttp.ClientSession,
        loop: asyncio.AbstractEventLoop,
        request: httpx.Request,
        url: URL,
        headers: CIMultiDict[str],
        data: Any,
        timeout: aiohttp.ClientTimeout,
    ) -> ClientResponse:
        """What ``ClientSession.request`` does for a request of this transport: connection,
        request line and headers, body, response head; no more."""
        method = request.method
        if url.scheme not in ("http", "https"):
            raise aiohttp.NonHttpUrlClientError(url)
        skip: tuple[str, ...] | None = None
        if data is not None or method in _BODY_METHODS:
            skip = _SKIP_AUTO_HEADERS  # no Content-Type of aiohttp's
        else:
            for name in _AUTO_HEADERS:
                if name not in headers:
                    skip = _SKIP_AUTO_HEADERS
                    break
        req = _Request(
            method,
            url,
            headers=headers,
            skip_auto_headers=skip,
            data=data,
            loop=loop,
            response_class=ClientResponse,
            timer=_NO_TIMER,
            session=session,
            server_hostname=request.extensions.get("sni_hostname"),
        )
        connector = session.connector
        assert connector is not None
        try:
            conn = await connector.connect(req, traces=_NO_TRACES, timeout=timeout)
        except asyncio.TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from exc
        protocol = conn.protocol
        assert protocol is not None
        protocol.set_response_params(
            timer=_NO_TIMER,
            skip_payload=method == "HEAD",
            read_until_eof=True,
            auto_decompress=False,
            read_timeout=timeout.sock_read,
            read_bufsize=_READ_BUFSIZE,
            timeout_ceil_threshold=_EXACT,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_LINE,
        )
        try:
            response = await req.send(conn)
            try:
                await response.start(conn)
            except BaseException:
                response.close()
                raise
        except BaseException:
            conn.close()
            raise
        return response

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
            ceil_threshold=_EXACT,
        )
        return made

    async def aclose(self) -> None:
        session, loop = self._session, self._loop
        self._session = self._loop = None
        if session is None or loop is None:
            return
        if loop is asyncio.get_running_loop():
            await session.close()
        else:  # the session of another loop: closed as far as that loop lets
            _retire(session, loop)


def _text(value: bytes) -> str:
    """A header value for aiohttp, which sends text as UTF-8: bytes that are not UTF-8 are
    taken as Latin-1 (and so go out as the UTF-8 of those characters)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


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
    elif isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
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
