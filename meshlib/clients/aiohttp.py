"""The mesh as an aiohttp client middleware: ``aiohttp.ClientSession(middlewares=[...])``.

``mesh.aiohttp_middleware()`` returns a ``MeshMiddleware``; ``mesh.aiohttp_session()`` a stock
``aiohttp.ClientSession`` with it installed. Every request of the session goes through the
mesh's pipeline (routing, faults, retries, timeouts, pool limits, breakers, outlier detection,
mirrors, redirects and direct responses, telemetry, propagation) and aiohttp sends each attempt:
the middleware calls aiohttp's own handler once per attempt, with the attempt's URL (the chosen
endpoint) and headers, as aiohttp's documented retry middlewares do.

What a caller sees:

* an upstream's response is aiohttp's own ``ClientResponse``, its body streamed by aiohttp;
  ``meshlib.clients.aiohttp.mesh_info(response)`` (also ``response.mesh``) is the ``MeshInfo``,
  and ``x-mesh-response-flags`` is among its headers when the mesh set flags;
* a reply of the mesh's own (no route 404 ``NR``, no endpoint 503 ``UH``/``NC``, pool overflow
  503 ``UO``, an injected abort ``FI``, a ``directResponse`` or ``redirect``) is a
  ``ClientResponse`` too, its body in memory (aiohttp follows a mesh redirect as any other,
  unless ``allow_redirects=False``);
* a call the mesh cannot complete raises an exception that is at once aiohttp's and
  meshlib's: ``CircuitOpenError`` is also ``aiohttp.ClientConnectionError``,
  ``MeshRequestError`` too, and ``DeadlineExceeded`` is also ``aiohttp.ServerTimeoutError``
  (so ``asyncio.TimeoutError``). The caller's own ``ClientTimeout.total`` ends the call as
  aiohttp ends it (``asyncio.TimeoutError``); the mesh reads it (``ClientRequest.timeout`` on
  aiohttp 3.15, else the session's) as the caller's bound, so no try starts after it.

What aiohttp's public API does not offer, and how this module does it (``docs/clients.md``):
a middleware cannot make a ``ClientResponse`` of its own, nor change an upstream response's
headers. Local replies are built with ``ClientResponse``'s constructor (keyword arguments
matched to the installed aiohttp's) and a ``StreamReader`` holding the body; the headers of a
response the mesh changed (flags, VirtualService header operations, the peer metadata it
removes) are replaced through ``_headers``/``_raw_headers``. These are in ``_local_response``
and ``_replace_headers`` alone, tested against the aiohttp meshlib pins. A response's ``url``
is the caller's; its ``request_info`` is the attempt as aiohttp sent it (``url``: the
endpoint's address, ``real_url``: the caller's URL).
"""

from __future__ import annotations

import asyncio
import http
import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from meshlib import errors
from meshlib.clients.httpx.headers import with_entries
from meshlib.clients.httpx.transport import AsyncMeshTransport, MeshInfo
from meshlib.deadline import current

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

__all__ = [
    "CircuitOpenError",
    "DeadlineExceeded",
    "MeshMiddleware",
    "MeshRequestError",
    "NoHealthyUpstream",
    "NoRouteError",
    "UpstreamTLSError",
    "mesh_info",
    "raise_for_mesh",
    "session",
]

#: The request extension that carries aiohttp's request and handler through the pipeline.
_SEND = "meshlib.aiohttp"
#: The response extension of an attempt answered through aiohttp.
_ANSWER = "meshlib.aiohttp.response"


# --------------------------------------------------------------------------- errors


class MeshRequestError(errors.MeshRequestError, aiohttp.ClientConnectionError):
    """``meshlib.MeshRequestError`` that is also ``aiohttp.ClientConnectionError``."""


class NoRouteError(errors.NoRouteError, MeshRequestError):
    """``meshlib.NoRouteError`` that is also ``aiohttp.ClientConnectionError``."""


class NoHealthyUpstream(errors.NoHealthyUpstream, MeshRequestError):  # noqa: N818 - Envoy's term
    """``meshlib.NoHealthyUpstream`` that is also ``aiohttp.ClientConnectionError``."""


class CircuitOpenError(errors.CircuitOpenError, MeshRequestError):
    """``meshlib.CircuitOpenError`` that is also ``aiohttp.ClientConnectionError``."""


class UpstreamTLSError(errors.UpstreamTLSError, MeshRequestError):
    """``meshlib.UpstreamTLSError`` that is also ``aiohttp.ClientConnectionError``."""


class DeadlineExceeded(  # noqa: N818 - reads as a state
    errors.DeadlineExceeded, MeshRequestError, aiohttp.ServerTimeoutError
):
    """``meshlib.DeadlineExceeded`` that is also ``aiohttp.ServerTimeoutError`` (a
    ``ClientError`` and an ``asyncio.TimeoutError``)."""


#: meshlib's exception class → its aiohttp flavor (most derived first).
_AIOHTTP_ERRORS: tuple[tuple[type[errors.MeshRequestError], type[errors.MeshRequestError]], ...] = (
    (errors.DeadlineExceeded, DeadlineExceeded),
    (errors.CircuitOpenError, CircuitOpenError),
    (errors.UpstreamTLSError, UpstreamTLSError),
    (errors.NoRouteError, NoRouteError),
    (errors.NoHealthyUpstream, NoHealthyUpstream),
    (errors.MeshRequestError, MeshRequestError),
)
_AIOHTTP_CLASSES = frozenset(dual for _, dual in _AIOHTTP_ERRORS)


def aiohttp_error(exc: BaseException) -> BaseException:
    """The exception an aiohttp caller gets for ``exc`` (what the pipeline raised)."""
    if isinstance(exc, errors.MeshRequestError):
        if type(exc) in _AIOHTTP_CLASSES:
            return exc
        for kind, dual in _AIOHTTP_ERRORS:
            if isinstance(exc, kind):
                # the same error (message, route, destination, flag, request), of the class
                # that is aiohttp's too
                error = dual.__new__(dual, *exc.args)
                error.args = exc.args
                error.__dict__.update(exc.__dict__)
                return error
    if isinstance(exc, httpx.TimeoutException):  # the caller's own timeout
        return aiohttp.ServerTimeoutError(str(exc) or "timed out")
    if isinstance(exc, httpx.TransportError):
        return aiohttp.ClientConnectionError(str(exc) or type(exc).__name__)
    return exc


def httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception the pipeline classifies, for an aiohttp or asyncio error."""
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


# --------------------------------------------------------------------------- MeshInfo


def mesh_info(response: aiohttp.ClientResponse) -> MeshInfo | None:
    """What the mesh did with the call that ``response`` answers (None: not a mesh call)."""
    info = getattr(response, "mesh", None)
    return info if isinstance(info, MeshInfo) else None


_LOCAL_ERRORS: dict[str, type[MeshRequestError]] = {
    "NR": NoRouteError,
    "UH": NoHealthyUpstream,
    "NC": NoHealthyUpstream,
    "UO": CircuitOpenError,
}


def raise_for_mesh(response: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """As ``meshlib.raise_for_mesh`` for an aiohttp response: raise when the mesh answered the
    call itself for want of a route (``NoRouteError``), an endpoint (``NoHealthyUpstream``) or
    pool room (``CircuitOpenError``); the response otherwise."""
    info = mesh_info(response)
    if info is None or not info.local_reply:
        return response
    for flag in info.flags.split(","):
        error = _LOCAL_ERRORS.get(flag)
        if error is not None:
            target = info.decision.destination
            raise error(
                f"the mesh answered {response.status} itself",
                route=info.route,
                destination=target.name if target is not None else info.decision.host,
                flag=flag,
            )
    return response


# --------------------------------------------------------------------------- responses


class _Idle:
    """The protocol of a body held in memory: nothing to pause or resume."""

    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _NoWriter:
    """What ``ClientResponse`` reads of a request writer that is done (aiohttp 3.14+)."""

    output_size = 0


_IDLE = _Idle()
_RESPONSE_ARGS = frozenset(inspect.signature(aiohttp.ClientResponse.__init__).parameters)


def _local_response(
    req: aiohttp.ClientRequest,
    status: int,
    raw: list[tuple[bytes, bytes]],
    body: bytes,
) -> aiohttp.ClientResponse:
    """A ``ClientResponse`` the mesh answers with itself, its body in memory."""
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {
        "writer": None,
        "continue100": None,
        "timer": None,
        "request_info": req.request_info,
        "traces": [],
        "loop": loop,
        "session": req.session,
    }
    if "stream_writer" in _RESPONSE_ARGS:
        kwargs["stream_writer"] = _NoWriter()
    response_class = getattr(req, "response_class", aiohttp.ClientResponse)
    response = response_class(req.method, req.url, **kwargs)
    response.status = status
    try:
        response.reason = http.HTTPStatus(status).phrase
    except ValueError:
        response.reason = ""
    response.version = aiohttp.HttpVersion11
    _replace_headers(response, tuple(raw))
    content = aiohttp.StreamReader(_IDLE, 2**16, loop=loop)  # type: ignore[arg-type]
    if body:
        content.feed_data(body)
    content.feed_eof()
    response.content = content
    return response


def _replace_headers(
    response: aiohttp.ClientResponse, raw: tuple[tuple[bytes, bytes], ...]
) -> None:
    """Give ``response`` the headers ``raw`` (aiohttp keeps them decoded as its parser does)."""
    headers: CIMultiDict[str] = CIMultiDict(
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in raw
    )
    response._headers = CIMultiDictProxy(headers)
    response._raw_headers = raw
    cache = getattr(response, "_cache", None)
    if isinstance(cache, dict):  # ``headers`` and ``raw_headers`` are cached on first read
        cache.pop("headers", None)
        cache.pop("raw_headers", None)


class _AttemptBody(httpx.AsyncByteStream):
    """The pipeline's view of an attempt's body: aiohttp's own response reads it. Closed
    (a response the pipeline discards, to retry), it releases aiohttp's response."""

    __slots__ = ("response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response: aiohttp.ClientResponse | None = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        response = self.response
        if response is None:
            return
        while True:
            chunk = await response.content.readany()
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        response, self.response = self.response, None
        if response is not None:
            response.release()


# --------------------------------------------------------------------------- the attempt


class _Attempts(httpx.AsyncBaseTransport):
    """The pipeline's inner transport: an attempt goes out through aiohttp's handler, with the
    attempt's URL and headers. A request that did not come through the middleware (a mirror's
    copy) goes through httpx's own async transport."""

    def __init__(self) -> None:
        self._other: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sending = request.extensions.get(_SEND)
        if sending is None:
            other = self._other
            if other is None:
                from meshlib.clients.httpx.httpcore import AsyncHTTPCoreTransport  # noqa: PLC0415

                other = self._other = AsyncHTTPCoreTransport()
            return await other.handle_async_request(request)
        req, handler, url, headers = sending
        target = request.url
        if target is not url:
            req.url = _yarl(target)
        if request.headers is not headers:
            req.headers = CIMultiDict(
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
                for name, value in request.headers.raw
            )
        deadline = current()
        try:
            if deadline is None:
                answer = await handler(req)
            else:
                left = deadline.at - deadline.now()
                if left <= 0:
                    raise httpx.ConnectTimeout("the deadline passed", request=request)
                answer = await _within(left, handler, req, request)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise httpx_error(exc, request) from exc
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=_AttemptBody(answer),
            extensions={_ANSWER: answer},
        )

    async def aclose(self) -> None:
        if self._other is not None:
            await self._other.aclose()


async def _within(
    left: float, handler: Any, req: aiohttp.ClientRequest, request: httpx.Request
) -> aiohttp.ClientResponse:
    """``handler(req)``, cancelled after ``left`` seconds (then httpx's ``ReadTimeout``)."""
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(left, fire)
    try:
        return await handler(req)  # type: ignore[no-any-return]
    except asyncio.CancelledError:
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if not fired or (uncancel is not None and uncancel() > 0):
            raise  # someone else's cancellation
        raise httpx.ReadTimeout("the deadline passed", request=request) from None
    finally:
        timer.cancel()


def _yarl(url: httpx.URL) -> URL:
    return URL(str(url), encoded=True)


# --------------------------------------------------------------------------- the middleware


class MeshMiddleware:
    """The mesh as an aiohttp client middleware (``ClientMiddlewareType``)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._inner = _Attempts()
        self._transport = AsyncMeshTransport(mesh, self._inner)

    async def __call__(
        self,
        req: aiohttp.ClientRequest,
        handler: Callable[[aiohttp.ClientRequest], Any],
    ) -> aiohttp.ClientResponse:
        url, headers = req.url, req.headers
        request = await _httpx_request(req, handler)
        try:
            response = await self._transport.handle_async_request(request)
        except (errors.MeshRequestError, httpx.TransportError) as exc:
            raise aiohttp_error(exc) from exc
        finally:  # the caller's request as it sent it (the attempts went to the endpoints)
            req.url, req.headers = url, headers
        answer = response.extensions.get(_ANSWER)
        if answer is None:  # the mesh's own reply, or one through its TLS pools
            try:
                try:
                    body = response.content  # the mesh's own replies are in memory
                except httpx.ResponseNotRead:
                    body = await response.aread()
            finally:
                await response.aclose()
            local = _local_response(req, response.status_code, response.headers.raw, body)
            local.mesh = response.extensions.get("mesh")  # type: ignore[attr-defined]
            return local
        raw = response.headers.raw
        if len(raw) != len(answer.raw_headers) or raw != list(answer.raw_headers):
            _replace_headers(answer, tuple(raw))
        answer.mesh = response.extensions.get("mesh")
        stream = response.stream
        if not isinstance(stream, _AttemptBody):  # the pipeline waits for the body's end
            _follow_body(answer, stream)
        return answer  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._transport.aclose()


_REF = type(httpx.URL("http://a/")._uri_reference)
_LIKE = httpx.Headers()
_new = object.__new__


def _httpx_url(url: URL) -> httpx.URL:
    """``url`` as an ``httpx.URL``, its parts taken from yarl's parse (not parsed again)."""
    try:
        host = url.raw_host or ""
        ref = _REF(
            url.scheme,
            "",  # aiohttp takes credentials out of the URL before any middleware runs
            host if host.islower() or not host.isascii() else host.lower(),
            None if url.is_default_port() else url.explicit_port,
            url.raw_path or "/",
            url.raw_query_string or None,
            None,
        )
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - another httpx or yarl
        return httpx.URL(str(url))
    made: httpx.URL = _new(httpx.URL)
    made._uri_reference = ref
    return made


def _httpx_headers(headers: Any) -> httpx.Headers:
    """aiohttp's headers as ``httpx.Headers``, in httpx's own form (not normalised again)."""
    items = []
    try:
        for name, value in headers.items():
            raw = name.encode("ascii")
            items.append((raw, raw.lower(), value.encode("utf-8")))
    except UnicodeEncodeError:  # a name that is not ASCII: httpx's own checks decide
        return httpx.Headers(list(headers.items()))
    return with_entries(items, _LIKE)


async def _httpx_request(req: aiohttp.ClientRequest, handler: Any) -> httpx.Request:
    """The pipeline's view of ``req``: its method, URL, headers, body and the caller's bound."""
    url = _httpx_url(req.url)
    headers = _httpx_headers(req.headers)
    body = req.body
    stream: Any
    if not body:
        stream = httpx.ByteStream(b"")
    elif isinstance(body, aiohttp.BytesPayload):
        stream = httpx.ByteStream(await body.as_bytes())
    else:  # streamed: sent once, never retried nor mirrored
        stream = _Unreplayable()
    extensions: dict[str, Any] = {_SEND: (req, handler, url, headers)}
    timeout = getattr(req, "timeout", None)  # aiohttp 3.15+; before, the session's
    if timeout is None:
        timeout = req.session.timeout
    total = getattr(timeout, "total", None)
    if total:
        extensions["timeout"] = {"connect": total, "read": total, "write": total, "pool": total}
    request = httpx.Request(req.method, url, headers=headers, stream=stream)
    request.extensions = extensions
    return request


class _Unreplayable(httpx.AsyncByteStream):
    """A streamed request body: aiohttp sends it; the pipeline only knows it cannot replay it."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover


def _follow_body(answer: aiohttp.ClientResponse, body: Any) -> None:
    """The pipeline holds the call open until the body ends (pool slot, in-flight count, the
    record of the call): end it when aiohttp's response lets go of its connection (the whole
    body read, or the response released or closed), and bound the body by the call's deadline."""
    attempt = getattr(body, "_stream", None)
    if isinstance(attempt, _AttemptBody):
        attempt.response = None  # aiohttp's response is the caller's now
    content = answer.content
    call = getattr(body, "_call", None)
    extensions = getattr(body, "_extensions", {})
    timer: asyncio.TimerHandle | None = None

    def ended() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
            timer = None
        error = content.exception()
        live = getattr(body, "_call", None)
        if live is not None and isinstance(error, aiohttp.ClientPayloadError):
            live.body_broken(httpx.RemoteProtocolError(str(error)), extensions)
            answer.mesh = extensions.get("mesh")  # type: ignore[attr-defined]
        _close_now(body)

    bound = getattr(call, "bound", None)
    if bound is not None and call is not None and call.ends != call.user_deadline:
        # the route's deadline (the caller's own ``ClientTimeout.total`` aiohttp enforces on
        # the body itself)
        left = bound.at - bound.now()

        def expire() -> None:
            nonlocal timer
            timer = None
            if content.is_eof():
                return
            error = aiohttp_error(call.body_expired(None, extensions))
            answer.mesh = extensions.get("mesh")  # type: ignore[attr-defined]
            content.set_exception(error)
            answer.close()

        timer = asyncio.get_running_loop().call_later(max(left, 0.0), expire)
    connection = answer.connection
    if connection is None:  # the body is in already
        ended()
    else:
        connection.add_callback(ended)


def _close_now(body: Any) -> None:
    """Close the pipeline's body stream (its ``aclose`` does not wait on anything)."""
    closing = body.aclose()
    try:
        closing.send(None)
    except StopIteration:
        return
    closing.close()  # pragma: no cover - it waited: not one of the pipeline's streams


# --------------------------------------------------------------------------- sessions


def session(mesh: Mesh, **kwargs: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` whose requests go through ``mesh`` (its middleware first,
    before any the caller passes in ``middlewares``)."""
    middlewares = (MeshMiddleware(mesh), *tuple(kwargs.pop("middlewares", ()) or ()))
    return aiohttp.ClientSession(middlewares=middlewares, **kwargs)
