"""An async inner transport on aiohttp: ``httpx.AsyncClient`` semantics, aiohttp's speed.

``AiohttpTransport`` is an ``httpx.AsyncBaseTransport`` that sends each ``httpx.Request``
through an ``aiohttp.ClientSession`` and hands back an ``httpx.Response`` whose body streams
from aiohttp's connection. Everything above it — ``httpx.AsyncClient`` (auth, cookies, hooks,
redirects, decoding) and meshlib's ``AsyncMeshTransport`` — works unchanged:

* It stands on aiohttp's public API alone (``ClientSession.request``, ``ClientTimeout``,
  ``ClientResponse.content``). aiohttp does no work of its own that httpx already does: no
  cookie jar, no redirects, no decompression (httpx decodes ``content-encoding``), and no
  headers of its own (``Accept``, ``Accept-Encoding``, ``User-Agent`` and ``Content-Type`` are
  sent only when httpx sends them). One thing aiohttp does that no public setting turns off:
  an idempotent request whose reused keep-alive connection turns out closed before an answer
  is sent once more on a new connection (RFC 9112 §9.3.1), inside the one attempt the mesh
  counts.
* ``request.extensions["timeout"]`` is applied per request: ``connect`` bounds connecting,
  ``read`` each read (as in httpx), ``pool`` plus ``connect`` the wait for a free connection
  and connecting together. aiohttp has no write timeout. A connect, read or pool timeout of
  zero or less has run out: the request fails at once with httpx's timeout for it, unsent
  (aiohttp would take 0 for "no timeout").
* The current deadline (``meshlib.deadline``, which the mesh sets) bounds the whole exchange:
  one event-loop timer, armed for it, cancels the wait for a connection, the send and the
  response head, and every read of the body however the upstream paces its bytes
  (``ReadTimeout``), each read by the deadline current when it is made. A request begun with
  nothing left fails at once, unsent.
* aiohttp's and asyncio's errors become the httpx exceptions meshlib classifies (``request``
  set): refused or failed connects ``ConnectError``, a connect or pool time-out
  ``ConnectTimeout``, a read time-out ``ReadTimeout``, a connection closed before or during
  the response ``RemoteProtocolError``, a reset while sending ``WriteError``, other socket
  errors ``ReadError``.

The session is made on first use inside the running event loop and belongs to that loop: a
request from another loop (a new one per test, or a caller's own) gets a new session, and the
old one is closed when its loop still runs (else let go of: its sockets close when collected).
HTTP/1.1 only.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

from meshlib.deadline import Deadline, current

__all__ = ["AiohttpResponseStream", "AiohttpTransport"]

#: aiohttp adds these when a request lacks them; httpx's request is sent as it is.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
#: Distinct timeout settings remembered (per-try timeouts under a deadline vary per call).
_TIMEOUT_CACHE_SIZE = 256
#: No timer is rounded up to a whole second (aiohttp's default above 5 s).
_EXACT = math.inf
_NO_TIMEOUT = aiohttp.ClientTimeout(ceil_threshold=_EXACT)
_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"
#: Header and status lines as long as h11 (httpx) takes them.
_MAX_LINE = 16384
#: httpx's timeouts aiohttp applies, and the exception for one that has run out already.
_SPENT: tuple[tuple[str, type[httpx.TimeoutException]], ...] = (
    ("pool", httpx.PoolTimeout),
    ("connect", httpx.ConnectTimeout),
    ("read", httpx.ReadTimeout),
)


class _Clock:
    """The deadline timer of one exchange: one event-loop timer armed for the current deadline
    that, when it fires, cancels the task waiting in this transport (for the response head, or
    a chunk of the body), if one is, and marks the exchange as timed out; the wait then ends
    with httpx's ``ReadTimeout``. No timer of aiohttp's own is involved."""

    __slots__ = ("armed", "fired", "handle", "loop", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.armed: Deadline | None = None
        self.handle: asyncio.TimerHandle | None = None
        #: the task waiting in the transport now, None when none is
        self.waiting: asyncio.Task[Any] | None = None
        self.fired = False

    def arm(self, deadline: Deadline | None) -> bool:
        """Fire at ``deadline`` (None: never); False when it has passed already."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.armed = deadline
        self.fired = False
        if deadline is None:
            return True
        left = deadline.at - deadline.now()
        if left <= 0:
            return False
        self.handle = self.loop.call_at(self.loop.time() + left, self._fire)
        return True

    def disarm(self) -> None:
        self.armed = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.handle = None
        self.fired = True
        if self.waiting is not None:
            self.waiting.cancel()

    def timed_out(self, request: httpx.Request) -> httpx.ReadTimeout | None:
        """After a ``CancelledError`` in a wait: the timeout to raise instead when it was this
        timer's doing (and no one else cancelled the task too), else None: let it propagate."""
        task, self.waiting = self.waiting, None
        if not self.fired or task is None:
            return None
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None and uncancel() > 0:
            return None
        return httpx.ReadTimeout("the deadline passed", request=request)


class AiohttpResponseStream(httpx.AsyncByteStream):
    """A response body read from aiohttp's connection, chunks as they arrive; ``aclose`` hands
    the connection back (to the pool when the body was read to its end, else closed). Each
    read ends by the deadline current when it is made.

    Its own async iterator, not an async generator: nothing for the event loop to track per
    response. Closed, it lets go of aiohttp's response: httpx keeps its response in a reference
    cycle, and what that holds waits for the garbage collector."""

    __slots__ = ("_clock", "_content", "_request", "_response")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        clock: _Clock | None = None,
    ) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._request = request
        self._content: aiohttp.StreamReader = response.content
        self._clock = clock

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        clock = self._clock
        if clock is None:
            try:
                chunk = await self._content.readany()
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise httpx_error(exc, self._request) from exc
        else:
            deadline = current()
            if (deadline is not clock.armed and not clock.arm(deadline)) or clock.fired:
                raise httpx.ReadTimeout("the deadline passed", request=self._request)
            clock.waiting = asyncio.current_task()
            try:
                chunk = await self._content.readany()
            except asyncio.CancelledError:
                timeout = clock.timed_out(self._request)
                if timeout is None:
                    raise
                raise timeout from None
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise httpx_error(exc, self._request) from exc
            finally:
                clock.waiting = None
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        response = self._response
        if response is not None:
            self._response = None
            self._content = aiohttp.EMPTY_PAYLOAD
            if self._clock is not None:
                self._clock.disarm()
            response.release()


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
        self._session, self._loop = session, loop
        return session

    # ------------------------------------------------------------------ requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._loop is not loop:
            session = self._open(loop)
        timeout = self._timeout(request.extensions.get("timeout"), request)
        deadline = current()
        clock: _Clock | None = None
        if deadline is not None:
            if deadline.at - deadline.now() <= 0:
                raise httpx.ConnectTimeout("the deadline passed", request=request)
            clock = _Clock(loop)
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
        sending = session.request(
            request.method,
            target,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=timeout,
            server_hostname=request.extensions.get("sni_hostname"),
        )
        try:
            if clock is None:
                response = await sending
            else:
                # armed until the response is closed: when the body's reads are bounded by the
                # same deadline (no per-try timeout), the timer stays as it is
                clock.arm(deadline)
                clock.waiting = asyncio.current_task()
                try:
                    response = await sending
                except asyncio.CancelledError:
                    clock.disarm()
                    expired = clock.timed_out(request)
                    if expired is None:
                        raise
                    raise expired from None
                except BaseException:
                    clock.disarm()
                    raise
                finally:
                    clock.waiting = None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise httpx_error(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response, request, clock),
            extensions={
                "http_version": _HTTP_10 if response.version == aiohttp.HttpVersion10 else _HTTP_11,
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    def _timeout(self, values: Any, request: httpx.Request) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for httpx's ``{"connect", "read", "write", "pool"}`` (cached).
        One of zero or less has run out (aiohttp would read 0 as none): httpx's timeout
        exception for it is raised, before anything is sent."""
        if not values:
            return _NO_TIMEOUT
        connect = values.get("connect")
        read = values.get("read")
        pool = values.get("pool")
        key = (connect, read, pool)
        found = self._timeouts.get(key)
        if found is not None:
            return found
        for name, error in _SPENT:
            value = values.get(name)
            if value is not None and value <= 0:
                raise error(f"{name} timeout of {value}s: no time left", request=request)
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
    # No loop runs the close for us, and aiohttp has no public way to close a pool outside its
    # loop: let go of the pool (its sockets close when collected), and mark the session closed
    # so that it does not warn when collected.
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
