"""The mesh as an aiohttp client middleware: ``aiohttp.ClientSession(middlewares=[...])``.

``mesh.aiohttp_middleware()`` returns a ``MeshMiddleware``; ``mesh.aiohttp_session()`` a stock
``aiohttp.ClientSession`` with it installed. Every request of the session goes through the
mesh's core (``meshlib.pipeline.call``: routing, faults, retries, timeouts, pool limits,
breakers, outlier detection, mirrors, redirects and direct responses, telemetry, propagation),
which reads and edits aiohttp's own request and response objects through ``AiohttpCodec``;
aiohttp sends each attempt: the middleware calls aiohttp's handler once per attempt, with the
attempt's URL (the chosen endpoint) and headers, as aiohttp's documented retry middlewares do.
No httpx object is made on the way, except for a destination the mesh originates TLS to (see
below).

What a caller sees:

* an upstream's response is aiohttp's own ``ClientResponse``, its body streamed by aiohttp;
  ``mesh_info(response)`` (also ``response.mesh``) is the ``MeshInfo``, and
  ``x-mesh-response-flags`` is among its headers when the mesh set flags;
* a reply of the mesh's own (no route 404 ``NR``, no endpoint 503 ``UH``/``NC``, pool overflow
  503 ``UO``, an injected abort ``FI``, a ``directResponse`` or ``redirect``) is a
  ``ClientResponse`` too, its body in memory (aiohttp follows a mesh redirect as any other,
  unless ``allow_redirects=False``);
* a call the mesh cannot complete raises an exception that is at once aiohttp's and meshlib's:
  ``CircuitOpenError`` is also ``aiohttp.ClientConnectionError``, ``MeshRequestError`` too,
  and ``DeadlineExceeded`` is also ``aiohttp.ServerTimeoutError`` (so
  ``asyncio.TimeoutError``). The caller's own ``ClientTimeout.total`` ends the call as aiohttp
  ends it (``asyncio.TimeoutError``); the mesh reads it (``ClientRequest.timeout`` on aiohttp
  3.15, else the session's) as the caller's bound, so no try starts after it.

TLS the mesh originates (``ISTIO_MUTUAL`` with the workload identity, ``MUTUAL``, ``SIMPLE``)
goes through the mesh's own TLS pools (httpx on httpcore, with meshlib's network backend, which
checks the peer's certificate and SPIFFE ID before a byte of the request is sent): aiohttp's
public API has no hook between its TLS handshake and the request's first byte, and a middleware
cannot give a request an ``ssl`` context of its own. Such an answer is handed over as a
``ClientResponse`` with its body read into memory. Mirrors' copies go through httpx's async
transport too.

What aiohttp's public API does not offer, and how this module does it (``docs/clients.md``):
a middleware cannot make a ``ClientResponse`` of its own, nor change an upstream response's
headers. Local replies are built with ``ClientResponse``'s constructor (keyword arguments
matched to the installed aiohttp's) and a ``StreamReader`` holding the body; the headers of a
response the mesh changed (flags, VirtualService header operations, the peer metadata it
removes) are replaced through ``_headers``/``_raw_headers``, their ``Set-Cookie`` values through
``_raw_cookie_headers`` (what aiohttp's cookie jar files). These are in ``_local_response``,
``_replace_headers`` and ``_file_cookies`` alone, tested against the aiohttp meshlib pins.
A response's ``url`` is the caller's; its ``request_info`` is the attempt as aiohttp sent it
(``url``: the endpoint's address, ``real_url``: the caller's URL). The end of a response's body
is seen through its connection's ``add_callback``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from meshlib import errors
from meshlib.deadline import Deadline
from meshlib.pipeline.call import Call, origination_for
from meshlib.pipeline.call import raise_for_mesh as _raise_for_mesh
from meshlib.pipeline.headers import apply_operations
from meshlib.pipeline.info import (
    FLAGS_HEADER,
    FREE_LEASE,
    MESH_SUFFIX,
    REASON_PHRASES,
    MeshInfo,
)
from meshlib.policies.retry import ErrorKind, Outcome
from meshlib.routing import RouteRequest
from meshlib.telemetry.peer import PEER_KEYS, PEER_METADATA, stamp_of, stamp_text

if TYPE_CHECKING:
    import httpx

    from meshlib.config.model import HeaderOperations
    from meshlib.discovery import Endpoint
    from meshlib.mesh import Cluster, Mesh
    from meshlib.security.outbound import Origination, Outbound, SecureTransports

__all__ = [
    "AiohttpCodec",
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

Handler = Callable[[aiohttp.ClientRequest], Any]
AiohttpCall = Call[aiohttp.ClientRequest, aiohttp.ClientResponse]


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


#: meshlib's class → its aiohttp flavor.
FLAVORS: dict[type[errors.MeshRequestError], type[errors.MeshRequestError]] = {
    errors.MeshRequestError: MeshRequestError,
    errors.NoRouteError: NoRouteError,
    errors.NoHealthyUpstream: NoHealthyUpstream,
    errors.CircuitOpenError: CircuitOpenError,
    errors.UpstreamTLSError: UpstreamTLSError,
    errors.DeadlineExceeded: DeadlineExceeded,
}


class _AttemptTimeout(aiohttp.ServerTimeoutError):
    """An attempt the mesh's deadline cut (its per-try timeout, or the call's deadline)."""


def classify(exc: BaseException) -> ErrorKind:
    """Envoy's failure kind of an attempt that raised aiohttp's (or asyncio's) ``exc``."""
    if isinstance(exc, errors.UpstreamTLSError):  # no TLS to the upstream: nothing was sent
        return "connect-failure"
    if isinstance(exc, errors.MeshError):
        return "other"
    if isinstance(
        exc,
        (
            aiohttp.ClientConnectorError,
            aiohttp.ConnectionTimeoutError,
            aiohttp.ServerFingerprintMismatch,
            ConnectionRefusedError,
        ),
    ):
        return "connect-failure"
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return "reset"  # a per-try timeout is told apart by the caller (``per_try_timeout``)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)):
        return "reset"
    if isinstance(exc, aiohttp.ClientResponseError):  # not HTTP: the upstream broke the exchange
        return "reset"
    return "other"


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
    raw: Sequence[tuple[bytes, bytes]],
    body: bytes,
    *,
    pending: bool = False,
) -> aiohttp.ClientResponse:
    """A ``ClientResponse`` the mesh answers with itself, its body in memory. ``pending``: its
    headers ``raw`` are set by ``AiohttpCodec.finish`` (with the flags), not now."""
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
    response = response_class(req.method, req.original_url, **kwargs)
    response.status = status
    response.reason = REASON_PHRASES.get(status, "")
    response.version = aiohttp.HttpVersion11
    if pending:
        response._mesh_raw = raw  # type: ignore[union-attr]
    else:
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
    _file_cookies(response, headers.getall("set-cookie", ()))


def _file_cookies(response: aiohttp.ClientResponse, values: Sequence[str]) -> None:
    """Have aiohttp take the ``Set-Cookie`` values of a response whose headers the mesh set as
    it takes those its parser reads: the session's cookie jar files
    ``ClientResponse._raw_cookie_headers`` (aiohttp 3.12.7+), and ``response.cookies`` parses
    them on first read (``_cookies`` cleared). The public ``cookies`` setter is not used: it goes
    through a ``SimpleCookie``, which keeps one cookie per name and parses more strictly than
    aiohttp does."""
    response._raw_cookie_headers = tuple(values) if values else None
    response._cookies = None


def mesh_info(response: aiohttp.ClientResponse) -> MeshInfo | None:
    """What the mesh did with the call that ``response`` answers (None: not a mesh call)."""
    info = getattr(response, "mesh", None)
    return info if isinstance(info, MeshInfo) else None


# --------------------------------------------------------------------------- the codec


class _URL:
    """A yarl URL as telemetry reads one (``meshlib.telemetry.URLView``)."""

    __slots__ = ("url",)

    def __init__(self, url: URL) -> None:
        self.url = url

    @property
    def scheme(self) -> str:
        return self.url.scheme

    @property
    def host(self) -> str:
        return self.url.host or ""

    @property
    def port(self) -> int | None:
        return self.url.explicit_port if not self.url.is_default_port() else None

    @property
    def userinfo(self) -> bytes:
        return b""  # aiohttp takes credentials out of the URL before any middleware runs

    @property
    def raw_path(self) -> bytes:
        url = self.url
        query = url.raw_query_string
        return (url.raw_path + ("?" + query if query else "")).encode("ascii")

    @property
    def netloc(self) -> bytes:
        return (self.url.raw_authority or "").encode("ascii")

    def __str__(self) -> str:
        return str(self.url)


_new_view = object.__new__


class AiohttpCodec:
    """aiohttp's ``ClientRequest`` and ``ClientResponse`` for the core (``CODEC``)."""

    __slots__ = ()

    # ------------------------------------------------------------------ the request

    def view(self, request: aiohttp.ClientRequest) -> RouteRequest:
        url = request.url
        raw = request.headers
        headers = {name.lower(): value for name, value in raw.items()}
        if len(headers) != len(raw):  # a repeated header: its values joined with ", "
            headers = {}
            for name, value in raw.items():
                key = name.lower()
                found = headers.get(key)
                headers[key] = value if found is None else f"{found}, {value}"
        view = _new_view(RouteRequest)
        view.method = request.method
        view.scheme = url.scheme
        view.host = url.host or ""
        view.port = url.port or (443 if url.scheme == "https" else 80)
        view.path = url.path or "/"
        view.query = url.raw_query_string
        view.headers = headers
        authority = headers.get("host")
        if authority is None:
            authority = url.raw_authority or view.host
        view.authority = authority
        view._params = None
        return view

    def save(self, request: aiohttp.ClientRequest) -> tuple[URL, CIMultiDict[str], str | None]:
        return request.url, request.headers, request.server_hostname

    def restore(self, request: aiohttp.ClientRequest, saved: tuple[URL, Any, Any]) -> None:
        request.url, request.headers, request.server_hostname = saved

    def carry(self, request: aiohttp.ClientRequest, carried: Mapping[str, str]) -> None:
        """On a copy of the caller's headers (``restore`` puts the caller's own back)."""
        headers = request.headers
        missing = [name for name in carried if name not in headers]
        if missing:
            headers = request.headers = headers.copy()
            for name in missing:
                headers[name] = carried[name]

    def url_of(self, request: aiohttp.ClientRequest) -> _URL:
        return _URL(request.url)

    def with_path(self, url: _URL, path: str) -> _URL:
        old = url.url
        new = old.with_path(path)  # encodes the decoded path the rewrite made
        return _URL(
            URL.build(
                scheme=old.scheme,
                authority=old.raw_authority,
                path=new.raw_path,
                query_string=old.raw_query_string,
                encoded=True,
            )
        )

    def point(self, request: aiohttp.ClientRequest, url: _URL, endpoint: Endpoint | None) -> None:
        target = url.url
        if endpoint is not None:
            if target.scheme == "https" and request.server_hostname is None:
                # the app's own TLS, passed through as Envoy does: the handshake names the host
                # the app called (SNI, and the name its certificate must carry), not the address
                request.server_hostname = target.host
            target = URL.build(
                scheme=target.scheme,
                host=endpoint.host,
                port=endpoint.port,
                path=target.raw_path,
                query_string=target.raw_query_string,
                encoded=True,
            )
        request.url = target

    def edit(
        self,
        request: aiohttp.ClientRequest,
        *,
        authority: str | None,
        operations: list[HeaderOperations],
        close: bool,
        remove: str | None,
    ) -> None:
        headers = request.headers = request.headers.copy()
        if authority:
            headers["Host"] = authority
        for operation in operations:
            _apply(headers, operation)
        if close:
            headers["Connection"] = "close"
        if remove is not None:
            headers.popall(remove, None)

    def stamp(
        self, request: aiohttp.ClientRequest, entries: Sequence[tuple[bytes, bytes, bytes]]
    ) -> None:
        headers = request.headers = request.headers.copy()
        for key in _PEER_NAMES:
            if key in headers:
                del headers[key]
        headers.extend(stamp_text(entries))

    def request_headers(self, request: aiohttp.ClientRequest) -> Mapping[str, str]:
        return request.headers  # case-insensitive: ``get`` with lowercase names works

    def replayable(self, request: aiohttp.ClientRequest) -> bool:
        body = request.body
        return not body or isinstance(body, aiohttp.BytesPayload)

    def caller_timeout(self, request: aiohttp.ClientRequest) -> float | None:
        timeout = getattr(request, "timeout", None)  # aiohttp 3.15+; before, the session's
        if timeout is None:
            timeout = request.session.timeout
        total = getattr(timeout, "total", None)
        return float(total) if total else None

    def caller_bounds_all(self, request: aiohttp.ClientRequest) -> bool:
        return True  # aiohttp's ``total`` bounds every wait of the whole call

    def bound(self, request: aiohttp.ClientRequest, timeout: float) -> Any:
        return None  # the shell bounds each attempt by the deadline (``meshlib.deadline``)

    def body_bound(self, bound: Any, timeout: float | None) -> None:
        pass  # the shell bounds the body by the call's deadline

    def trace_headers(
        self, request: aiohttp.ClientRequest, names: frozenset[str]
    ) -> dict[str, str]:
        headers = request.headers
        return {name: headers[name] for name in names if name in headers}

    def put_trace_headers(
        self, request: aiohttp.ClientRequest, names: frozenset[str], pairs: list[tuple[str, str]]
    ) -> None:
        headers = request.headers = request.headers.copy()
        for name in names:
            headers.popall(name, None)
        for name, value in pairs:
            headers.add(name, value)

    # ------------------------------------------------------------------ the response

    def status(self, response: aiohttp.ClientResponse) -> int:
        return response.status

    def response_headers(self, response: aiohttp.ClientResponse) -> Mapping[str, str]:
        return response.headers

    def reply(
        self,
        request: aiohttp.ClientRequest,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> aiohttp.ClientResponse:
        raw = [(name.encode("latin-1"), value.encode("utf-8")) for name, value in headers]
        return _local_response(request, status, raw, body, pending=True)

    def location(
        self, scheme: str, host: str, port: int | None, path: str, query: str | None
    ) -> str:
        built = URL.build(scheme=scheme, host=host, port=port, path=path, query_string=query or "")
        return str(built)

    def finish(
        self,
        response: aiohttp.ClientResponse,
        operations: list[HeaderOperations],
        flags: str,
        info: MeshInfo,
        local: bool,
    ) -> str | None:
        response.mesh = info  # type: ignore[attr-defined]
        pending = getattr(response, "_mesh_raw", None)
        if pending is not None:  # a local reply: its headers are set now, once
            del response._mesh_raw  # type: ignore[attr-defined]
            raw = pending
        else:
            raw = response.raw_headers
        peer: str | None = None
        taken = False
        if not local and pending is None:  # a lookup each, not a pass over the header list
            received = response.headers
            for name in _TAKEN_NAMES:
                if name in received:
                    taken = True
                    break
        if not taken and not flags and not operations:
            if pending is not None:
                _replace_headers(response, tuple(raw))
            return None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in raw:
            key = name.lower()
            if not local and key in _UPSTREAM_TAKEN:
                if key == _PEER_METADATA_KEY:
                    peer = value.decode("latin-1")
                continue
            kept.append((name, value))
        if operations:
            headers: CIMultiDict[str] = CIMultiDict(
                (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for n, v in kept
            )
            for operation in operations:
                _apply(headers, operation)
            kept = [
                (n.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                for n, v in headers.items()
            ]
        if flags:
            kept = [(n, v) for n, v in kept if n.lower() != _FLAGS_KEY]
            kept.append((_FLAGS_KEY, flags.encode("ascii")))
        _replace_headers(response, tuple(kept))
        return peer

    def info(self, response: Any) -> MeshInfo | None:
        info = getattr(response, "mesh", None)
        return info if isinstance(info, MeshInfo) else None

    def set_info(self, response: Any, info: MeshInfo) -> None:
        response.mesh = info

    # ------------------------------------------------------------------ errors

    def error(
        self, kind: type[errors.MeshRequestError], message: str, **fields: Any
    ) -> errors.MeshRequestError:
        return FLAVORS.get(kind, kind)(message, **fields)

    def caller_timeout_error(self, request: aiohttp.ClientRequest, message: str) -> Exception:
        return aiohttp.ServerTimeoutError(message)

    def is_read_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)) and not (
            isinstance(exc, aiohttp.ConnectionTimeoutError)
        )

    def outcome_of_error(self, exc: BaseException, *, per_try_timeout: bool) -> Outcome:
        kind = classify(exc)
        if per_try_timeout and kind == "reset" and isinstance(exc, _AttemptTimeout):
            kind = "per-try-timeout"
        return Outcome(error=kind, request_sent=kind != "connect-failure")


_PEER_NAMES = tuple(key.decode("latin-1") for key in PEER_KEYS)
CODEC = AiohttpCodec()
_PEER_METADATA_KEY = PEER_METADATA.encode()
_FLAGS_KEY = FLAGS_HEADER.encode()
_UPSTREAM_TAKEN = PEER_KEYS | {_FLAGS_KEY}
_TAKEN_NAMES = tuple(key.decode("latin-1") for key in _UPSTREAM_TAKEN)


def _apply(headers: CIMultiDict[str], ops: Any) -> None:
    """Istio's header operations on ``headers`` (``meshlib.pipeline.headers.apply_operations``):
    a name removed or set loses every value it had."""

    def put(name: str, value: str) -> None:
        headers[name] = value

    def drop(name: str) -> None:
        headers.popall(name, None)

    apply_operations(ops, headers.get, put, drop)


def raise_for_mesh(response: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """As ``meshlib.raise_for_mesh`` for an aiohttp response: raise when the mesh answered the
    call itself for want of a route (``NoRouteError``), an endpoint (``NoHealthyUpstream``) or
    pool room (``CircuitOpenError``); the response otherwise."""
    _raise_for_mesh(mesh_info(response), response.status, None, CODEC)
    return response


# --------------------------------------------------------------------------- the shell


class MeshMiddleware:
    """The mesh as an aiohttp client middleware (``ClientMiddlewareType``)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._secure: SecureTransports | None = None  # the TLS destinations' pools (httpx)
        self._plain: httpx.AsyncBaseTransport | None = None  # mirrors' copies (httpx)

    async def __call__(
        self, req: aiohttp.ClientRequest, handler: Handler
    ) -> aiohttp.ClientResponse:
        call: AiohttpCall = Call(self.mesh, req, CODEC)
        try:
            response = await self._handle(call, handler)
        except BaseException as exc:
            call.finished(None, exc)
            raise
        finally:
            call.done()
        if call.telemetry.listening and not call.body_pending:
            call.finished(response, None)
        return response

    async def _handle(self, call: AiohttpCall, handler: Handler) -> aiohttp.ClientResponse:
        mesh = self.mesh
        if not call.decision.plain:
            opened = call.opening()
            if opened is not None:
                if not isinstance(opened, float):
                    return opened
                await mesh.clock.asleep(opened)
                reply = call.delayed()
                if reply is not None:
                    return reply
            if call.decision.mirrors:
                await self._mirror(call)
        while True:
            reply = call.prepare_attempt()
            if reply is not None:
                return reply
            cluster = call.cluster
            assert cluster is not None
            ends = call.attempt_deadline()
            waited = cluster.pool_limited
            if waited:
                try:
                    lease = await cluster.aacquire(ends)
                except errors.DeadlineExceeded:
                    raise call.pool_timeout() from None
                if lease is None:
                    return call.overflow()
            else:
                lease = FREE_LEASE
            attempt = call.open_attempt(ends, waited, lease)
            bound = call.attempt_bound(ends)
            if bound is not None and ends == call.user_deadline:
                bound = None  # the caller's own ``total``: aiohttp ends the call at it itself
            try:
                if cluster.outbound is None:
                    response = await _send(handler, attempt, bound)
                else:
                    response = await self._send_secure(call, cluster.outbound, handler, bound)
            except (
                aiohttp.ClientError,
                OSError,
                asyncio.TimeoutError,
                errors.UpstreamTLSError,
            ) as exc:
                if type(exc) is asyncio.TimeoutError:
                    # aiohttp's own ``total`` (a bare TimeoutError; its socket timeouts are
                    # ServerTimeoutError): the caller's timeout ran out, nothing to retry
                    call.attempt_abandoned()
                    raise
                await mesh.clock.asleep(call.attempt_failed(exc))
                continue
            except BaseException:
                call.attempt_abandoned()
                raise
            delay = call.settle(response)
            if delay is None:
                response = call.finish(response)
                # the body is followed when its end gives something back, is recorded, or has
                # the route's deadline to keep (the caller's own ``total`` aiohttp keeps itself)
                routed = call.bound is not None and call.ends != call.user_deadline
                if call.holding or routed or call.telemetry.listening:
                    call.body_started()
                    _follow_body(call, response)
                return response
            response.release()
            call.attempt_discarded(delay)
            await mesh.clock.asleep(delay)

    async def _send_secure(
        self, call: AiohttpCall, outbound: Outbound, handler: Handler, bound: Deadline | None
    ) -> aiohttp.ClientResponse:
        """An attempt to a destination that may take TLS: through the mesh's TLS pools (httpx
        on httpcore, the peer checked before a byte is sent), or aiohttp's handler."""
        req = call.request
        call.tls = None
        try:
            origination = origination_for(outbound, call.endpoint, call.view)
        except errors.UpstreamTLSError as exc:
            raise call.codec.error(errors.UpstreamTLSError, exc.reason) from exc.__cause__
        if origination is None:
            return await _send(handler, req, bound)
        import httpx  # noqa: PLC0415 - TLS goes through httpx's transport alone

        from meshlib.deadline import enter, leave  # noqa: PLC0415

        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        transport = secure.async_(outbound.target.name, origination)
        try:
            request = await _httpx_copy(req, req.url.with_scheme("https"))
        except UnicodeEncodeError as exc:
            raise call.codec.error(
                errors.MeshRequestError, f"a request header cannot be sent: {exc}"
            ) from exc
        scope = enter(bound)
        try:
            try:
                answer = await transport.handle_async_request(request)
                body = await answer.aread()
            finally:
                leave(scope)
        except errors.UpstreamTLSError:
            raise  # the peer refused, or no TLS: nothing was sent
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise aiohttp.ConnectionTimeoutError(str(exc)) from exc
            raise _AttemptTimeout(str(exc)) from exc
        except httpx.ConnectError as exc:
            raise aiohttp.ClientConnectionError(str(exc)) from exc
        except httpx.TransportError as exc:
            raise aiohttp.ServerDisconnectedError(str(exc)) from exc
        stream = answer.extensions.get("network_stream")
        peer = stream.get_extra_info("meshlib.peer_identity") if stream is not None else None
        call.tls = (origination.mode, peer if isinstance(peer, str) else None)
        await answer.aclose()
        return _local_response(req, answer.status_code, answer.headers.raw, body)

    async def _mirror(self, call: AiohttpCall) -> None:
        """Send copies of the request to the route's mirrors (through httpx's async transport,
        or the mesh's TLS pools); never waits for their answers."""
        if not call.replayable:
            return
        mesh = self.mesh
        req = call.request
        for target, percentage in call.decision.mirrors:
            if percentage < 100 and mesh.rng.random() * 100 >= percentage:
                continue
            cluster = mesh.cluster(target)
            endpoint = cluster.choose(None, ())
            url = req.url
            if endpoint is not None:
                url = url.with_host(endpoint.host).with_port(endpoint.port)
            inner = self._mirror_transport(call, cluster, endpoint)
            if inner is None:
                continue
            transport, secure = inner
            if secure:
                url = url.with_scheme("https")
            try:
                copy = await _httpx_copy(req, url)
                host = copy.headers.get("host") or req.url.host or ""
                name, sep, port = host.partition(":")
                copy.headers["host"] = f"{name}-shadow{sep}{port}"
                if target.host.endswith(MESH_SUFFIX):  # a shadow says who sent it, as the call
                    for key in PEER_KEYS:
                        copy.headers.pop(key.decode(), None)
                    for header, _, value in stamp_of(mesh).entries:
                        copy.headers[header.decode()] = value.decode()
            except Exception:  # a copy that cannot be made never fails the call
                mesh.mirrors.drop(cluster.name, "the copy could not be made")
                continue
            mesh.mirrors.asend(transport, copy, call.deadline, cluster.name)

    def _mirror_transport(
        self, call: AiohttpCall, cluster: Cluster, endpoint: Endpoint | None
    ) -> tuple[Any, bool] | None:
        outbound = cluster.outbound
        origination: Origination | None = None
        if outbound is not None:
            try:
                origination = origination_for(outbound, endpoint, call.view)
            except errors.UpstreamTLSError:
                return None
        if origination is None or outbound is None:
            plain = self._plain
            if plain is None:
                from meshlib.clients.httpx.httpcore import AsyncHTTPCoreTransport  # noqa: PLC0415

                plain = self._plain = AsyncHTTPCoreTransport()
            return plain, False
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        return secure.async_(outbound.target.name, origination), True

    async def aclose(self) -> None:
        """Close the pools this middleware opened (the TLS destinations' and the mirrors'
        copies'). A session from ``session()`` does it when it closes; a session built with
        ``mesh.aiohttp_middleware()`` leaves it to its owner. The pools open again if needed."""
        plain, self._plain = self._plain, None
        secure, self._secure = self._secure, None
        try:
            if plain is not None:
                await plain.aclose()
        finally:
            if secure is not None:
                await secure.aclose()


async def _send(
    handler: Handler, req: aiohttp.ClientRequest, bound: Deadline | None
) -> aiohttp.ClientResponse:
    """One attempt through aiohttp's handler, cut at ``bound`` (an ``_AttemptTimeout``)."""
    if bound is None:
        return await handler(req)  # type: ignore[no-any-return]
    left = bound.at - bound.now()
    if left <= 0:
        raise _AttemptTimeout("the deadline passed before the try")
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
        raise _AttemptTimeout("the deadline passed") from None
    finally:
        timer.cancel()


async def _httpx_copy(req: aiohttp.ClientRequest, url: URL) -> httpx.Request:
    """An httpx request of ``req`` to ``url`` (TLS attempts and mirrors' copies): its headers
    as the bytes aiohttp would write, its body read whole. aiohttp's framing of the body
    (``Transfer-Encoding: chunked`` for a stream, its ``Content-Length``) is left out: httpx
    frames the bytes itself, and both headers at once is a request no server may accept.
    Raises ``UnicodeEncodeError`` for a header aiohttp could not write either."""
    import httpx  # noqa: PLC0415

    body = req.body
    content = await body.as_bytes() if isinstance(body, aiohttp.Payload) and body else b""
    headers = [
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in req.headers.items()
        if name.lower() not in _FRAMING or (not content and name.lower() == "content-length")
    ]
    return httpx.Request(req.method, str(url), headers=headers, content=content)


_FRAMING = frozenset({"content-length", "transfer-encoding"})


def _follow_body(call: AiohttpCall, response: aiohttp.ClientResponse) -> None:
    """The call stays open until the body ends (pool slot, in-flight count, the record of the
    call): end it when aiohttp's response lets go of its connection (the whole body read, or the
    response released or closed), and bound the body by the route's deadline."""
    call.body_pending = True
    content = response.content
    status = response.status
    timer: asyncio.TimerHandle | None = None

    def ended() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
            timer = None
        error = content.exception()
        if isinstance(error, aiohttp.ClientPayloadError) and call.body_error is None:
            call.body_broken(error, response)
        try:
            call.end_attempt()
        finally:
            if call.telemetry.listening:
                call.recorded(status, response.headers, call.body_error)

    bound = call.bound
    if bound is not None and call.ends != call.user_deadline:
        # the route's deadline (the caller's own ``ClientTimeout.total`` aiohttp enforces on
        # the body itself)
        def expire() -> None:
            nonlocal timer
            timer = None
            if content.is_eof():
                return
            error = call.body_expired(None, response)
            content.set_exception(error)
            response.close()

        timer = asyncio.get_running_loop().call_later(max(bound.at - bound.now(), 0.0), expire)
    connection = response.connection
    if connection is None:  # the body is in already
        ended()
    else:
        connection.add_callback(ended)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's default connector, which also closes the mesh middleware's own pools when the
    session closes it (aiohttp tells a middleware nothing of its session's end)."""

    def __init__(self, middleware: MeshMiddleware) -> None:
        super().__init__()
        self._middleware = middleware

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:  # ``abort_ssl`` is aiohttp 3.13+'s
            await super().close(**({"abort_ssl": True} if abort_ssl else {}))
        finally:
            await self._middleware.aclose()


def session(mesh: Mesh, **kwargs: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` whose requests go through ``mesh`` (its middleware first,
    before any the caller passes in ``middlewares``). Unless the caller gives a ``connector``,
    the session's is aiohttp's default one, which also closes the middleware's own pools (TLS
    destinations, mirrors) when the session closes. With a connector of the caller's, build the
    session with ``mesh.aiohttp_middleware()`` and ``await middleware.aclose()`` after it."""
    middleware = MeshMiddleware(mesh)
    middlewares = (middleware, *tuple(kwargs.pop("middlewares", ()) or ()))
    if kwargs.get("connector") is None:
        kwargs["connector"] = _Connector(middleware)
    return aiohttp.ClientSession(middlewares=middlewares, **kwargs)
