"""``MeshTransport`` / ``AsyncMeshTransport``: the mesh as httpx transports.

Thin I/O shells around the client-neutral core (``meshlib.pipeline.call.Call``), which reads and
edits httpx's requests and responses through ``meshlib.clients.httpx.codec``: the two differ only
in ``await``, sleeping and closing. Users get stock ``httpx.Client`` / ``httpx.AsyncClient``
objects with one of these as their transport (see ``Mesh.client``).

What a caller sees is the core's (``meshlib.pipeline.call``): local replies as responses, an
open breaker as ``CircuitOpenError``, the route timeout as ``DeadlineExceeded``, an unreachable
upstream as ``MeshRequestError`` — each also an httpx error (``meshlib.clients.httpx.errors``) —
and on every response ``response.extensions["mesh"]``, a ``MeshInfo``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from meshlib.clients.httpx.codec import CODEC, as_https, header_map, view_of, with_endpoint
from meshlib.deadline import enter as _enter_deadline
from meshlib.deadline import leave as _leave_deadline
from meshlib.discovery import Endpoint
from meshlib.errors import DeadlineExceeded, UpstreamTLSError
from meshlib.pipeline import call as _call
from meshlib.pipeline.call import Call, origination_for
from meshlib.pipeline.info import (
    FLAGS_HEADER,
    FREE_LEASE,
    MESH_SUFFIX,
    PEER_IDENTITY,
    TIMEOUT_OVERRIDE_HEADER,
    MeshInfo,
)
from meshlib.telemetry.peer import stamp_of

if TYPE_CHECKING:
    from meshlib.mesh import Cluster, Mesh
    from meshlib.security.outbound import Origination, Outbound, SecureTransports

__all__ = [
    "FLAGS_HEADER",
    "MESH_SUFFIX",
    "PEER_IDENTITY",
    "TIMEOUT_OVERRIDE_HEADER",
    "AsyncMeshTransport",
    "MeshInfo",
    "MeshTransport",
    "header_map",
    "raise_for_mesh",
    "view_of",
    "with_endpoint",
]

HttpxCall = Call[httpx.Request, httpx.Response]


def raise_for_mesh(response: httpx.Response) -> httpx.Response:
    """Raise the matching exception if the mesh answered this call itself: no route
    (``NoRouteError``), no endpoint (``NoHealthyUpstream``), pool overflow
    (``CircuitOpenError``), each also an ``httpx.TransportError``. Returns the response
    otherwise, for chaining."""
    _call.raise_for_mesh(CODEC.info(response), response.status_code, response.request, CODEC)
    return response


# --------------------------------------------------------------------------- streams that release


class _Body(httpx.SyncByteStream):
    """An upstream's response body as the caller reads it, through the mesh.

    Each read is bounded by the call's deadline (``meshlib.deadline``: the inner transport's
    reads wait at most what is left, and none begins after it); a read it ends raises
    ``DeadlineExceeded`` (``UT``), or httpx's ``ReadTimeout`` when it was the caller's timeout.
    A connection that breaks in the middle is recorded as the call's failure (``UC``), the
    caller getting the httpx error as it came. Closing it gives back the attempt's pool slot and
    in-flight count (``release``) and records the call (metrics, access log)."""

    __slots__ = ("_call", "_extensions", "_headers", "_release", "_status", "_stream")

    def __init__(self, call: HttpxCall, response: httpx.Response, release: Any) -> None:
        self._call: HttpxCall | None = call
        self._stream: Any = response.stream
        self._release = release
        # what recording the call needs of the response (not the response: no cycle)
        self._status = response.status_code
        self._headers = response.headers
        self._extensions = response.extensions
        call.body_pending = True

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        assert call is not None
        deadline = call.bound
        chunks = iter(self._stream)
        while True:
            if deadline is not None and deadline.at - deadline.now() <= 0:
                raise call.body_expired(None, self._extensions)
            token = _enter_deadline(deadline)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except httpx.TimeoutException as exc:
                raise call.body_expired(exc, self._extensions) from exc
            except httpx.TransportError as exc:
                call.body_broken(exc, self._extensions)
                raise
            finally:
                _leave_deadline(token)
            yield chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            _ended(self)


class _AsyncBody(httpx.AsyncByteStream):
    """``_Body`` for async clients."""

    __slots__ = ("_call", "_extensions", "_headers", "_release", "_status", "_stream")

    def __init__(self, call: HttpxCall, response: httpx.Response, release: Any) -> None:
        self._call: HttpxCall | None = call
        self._stream: Any = response.stream
        self._release = release
        self._status = response.status_code
        self._headers = response.headers
        self._extensions = response.extensions
        call.body_pending = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        assert call is not None
        deadline = call.bound
        chunks = self._stream.__aiter__()
        while True:
            if deadline is not None and deadline.at - deadline.now() <= 0:
                raise call.body_expired(None, self._extensions)
            token = _enter_deadline(deadline)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except httpx.TimeoutException as exc:
                raise call.body_expired(exc, self._extensions) from exc
            except httpx.TransportError as exc:
                call.body_broken(exc, self._extensions)
                raise
            finally:
                _leave_deadline(token)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            _ended(self)


def _ended(body: _Body | _AsyncBody) -> None:
    """A body was closed: give back what its attempt held, and record the call (once)."""
    release, body._release = body._release, None
    call, body._call = body._call, None
    try:
        if release is not None:
            release()
    finally:
        if call is not None and call.telemetry.listening:
            call.recorded(body._status, body._headers, call.body_error)


# --------------------------------------------------------------------------- the I/O shells


class MeshTransport(httpx.BaseTransport):
    """The mesh as a sync httpx transport: ``httpx.Client(transport=MeshTransport(mesh))``."""

    def __init__(self, mesh: Mesh, inner: httpx.BaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else mesh.sync_inner()
        self._secure: SecureTransports | None = None  # the TLS destinations' pools

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.mesh, request, CODEC)
        try:
            response = self._handle(call)
        except BaseException as exc:
            call.finished(None, exc)
            raise
        finally:
            call.done()
        if call.telemetry.listening and not call.body_pending:
            call.finished(response, None)
        return response

    def _handle(self, call: HttpxCall) -> httpx.Response:
        if not call.decision.plain:
            opened = call.opening()
            if opened is not None:
                if not isinstance(opened, float):
                    return opened
                self.mesh.clock.sleep(opened)
                reply = call.delayed()
                if reply is not None:
                    return reply
            if call.decision.mirrors:
                self._mirror(call)
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
                    lease = cluster.acquire(ends)
                except DeadlineExceeded:
                    raise call.pool_timeout() from None
                if lease is None:
                    return call.overflow()
            else:
                lease = FREE_LEASE
            attempt = call.open_attempt(ends, waited, lease)
            scope = _enter_deadline(call.attempt_bound(ends))
            try:
                if cluster.outbound is None:
                    response = self.inner.handle_request(attempt)
                else:
                    response = self._send_secure(call, cluster.outbound, attempt)
            except httpx.TransportError as exc:
                _leave_deadline(scope)
                self.mesh.clock.sleep(call.attempt_failed(exc))
                continue
            except BaseException:
                _leave_deadline(scope)
                call.attempt_abandoned()
                raise
            _leave_deadline(scope)
            delay = call.settle(response)
            if delay is None:
                response = call.finish(response)
                held = call.holding
                if response.is_closed:
                    if held:
                        call.end_attempt()
                elif held or call.bound is not None or call.telemetry.listening:
                    call.body_started()
                    response.stream = _Body(call, response, call.end_attempt if held else None)
                return response
            response.close()
            call.attempt_discarded(delay)
            self.mesh.clock.sleep(delay)

    def _send_secure(
        self, call: HttpxCall, outbound: Outbound, attempt: httpx.Request
    ) -> httpx.Response:
        """Send an attempt to a destination that may take TLS: through the pool of its TLS
        settings (see ``meshlib.security.outbound``), or the plain inner transport."""
        origination = secure_attempt(call, outbound, attempt)
        if origination is None:
            return self.inner.handle_request(attempt)
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        response = secure.sync(outbound.target.name, origination).handle_request(attempt)
        call.tls = (origination.mode, _peer_of(response))
        return response

    def _mirror(self, call: HttpxCall) -> None:
        """Send copies of the request to the route's mirrors; never waits for them. Each must
        be answered by the call's route deadline; at most ``mirrors.limit`` are outstanding."""
        mirrors = self.mesh.mirrors
        for request, cluster, endpoint in _mirror_requests(call):
            inner = self._mirror_inner(call, cluster, endpoint, request)
            if inner is not None:
                mirrors.send(inner, request, call.deadline, cluster.name)

    def _mirror_inner(
        self, call: HttpxCall, cluster: Cluster, endpoint: Endpoint | None, request: httpx.Request
    ) -> httpx.BaseTransport | None:
        """The transport a mirrored copy goes through (with the TLS its destination takes), or
        None: it is not sent (TLS that cannot be originated for it)."""
        allowed, origination = _mirror_origination(call, cluster, endpoint, request)
        if not allowed:
            return None
        outbound = cluster.outbound
        if origination is None or outbound is None:
            return self.inner
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        return secure.sync(outbound.target.name, origination)

    def close(self) -> None:
        self.inner.close()
        if self._secure is not None:
            self._secure.close()


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """The mesh as an async httpx transport: ``httpx.AsyncClient(transport=...)``."""

    def __init__(self, mesh: Mesh, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.mesh = mesh
        self.inner = inner if inner is not None else mesh.async_inner()
        self._secure: SecureTransports | None = None  # the TLS destinations' pools (httpx)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.mesh, request, CODEC)
        try:
            response = await self._handle(call)
        except BaseException as exc:
            call.finished(None, exc)
            raise
        finally:
            call.done()
        if call.telemetry.listening and not call.body_pending:
            call.finished(response, None)
        return response

    async def _handle(self, call: HttpxCall) -> httpx.Response:
        if not call.decision.plain:
            opened = call.opening()
            if opened is not None:
                if not isinstance(opened, float):
                    return opened
                await self.mesh.clock.asleep(opened)
                reply = call.delayed()
                if reply is not None:
                    return reply
            if call.decision.mirrors:
                self._mirror(call)
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
                except DeadlineExceeded:
                    raise call.pool_timeout() from None
                if lease is None:
                    return call.overflow()
            else:
                lease = FREE_LEASE
            attempt = call.open_attempt(ends, waited, lease)
            scope = _enter_deadline(call.attempt_bound(ends))
            try:
                if cluster.outbound is None:
                    response = await self.inner.handle_async_request(attempt)
                else:
                    response = await self._send_secure(call, cluster.outbound, attempt)
            except httpx.TransportError as exc:
                _leave_deadline(scope)
                await self.mesh.clock.asleep(call.attempt_failed(exc))
                continue
            except BaseException:
                _leave_deadline(scope)
                call.attempt_abandoned()
                raise
            _leave_deadline(scope)
            delay = call.settle(response)
            if delay is None:
                response = call.finish(response)
                held = call.holding
                if response.is_closed:
                    if held:
                        call.end_attempt()
                elif held or call.bound is not None or call.telemetry.listening:
                    call.body_started()
                    response.stream = _AsyncBody(call, response, call.end_attempt if held else None)
                return response
            await response.aclose()
            call.attempt_discarded(delay)
            await self.mesh.clock.asleep(delay)

    async def _send_secure(
        self, call: HttpxCall, outbound: Outbound, attempt: httpx.Request
    ) -> httpx.Response:
        """As ``MeshTransport._send_secure``. TLS goes through httpx's own async transport on
        httpcore (whatever the inner transport is): its network backend checks the peer
        before a byte of the request is sent, which aiohttp offers no public way to do."""
        origination = secure_attempt(call, outbound, attempt)
        if origination is None:
            return await self.inner.handle_async_request(attempt)
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        transport = secure.async_(outbound.target.name, origination)
        response = await transport.handle_async_request(attempt)
        call.tls = (origination.mode, _peer_of(response))
        return response

    def _mirror(self, call: HttpxCall) -> None:
        """Send copies of the request to the route's mirrors; never waits for them. Each must
        be answered by the call's route deadline; at most ``mirrors.limit`` are outstanding."""
        mirrors = self.mesh.mirrors
        for request, cluster, endpoint in _mirror_requests(call):
            inner = self._mirror_inner(call, cluster, endpoint, request)
            if inner is not None:
                mirrors.asend(inner, request, call.deadline, cluster.name)

    def _mirror_inner(
        self, call: HttpxCall, cluster: Cluster, endpoint: Endpoint | None, request: httpx.Request
    ) -> httpx.AsyncBaseTransport | None:
        """As ``MeshTransport._mirror_inner``."""
        allowed, origination = _mirror_origination(call, cluster, endpoint, request)
        if not allowed:
            return None
        outbound = cluster.outbound
        if origination is None or outbound is None:
            return self.inner
        secure = self._secure
        if secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            secure = self._secure = SecureTransports(outbound.identity)
        return secure.async_(outbound.target.name, origination)

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self._secure is not None:
            await self._secure.aclose()


def secure_attempt(
    call: HttpxCall, outbound: Outbound, attempt: httpx.Request
) -> Origination | None:
    """The TLS of this attempt (None: plain text), its URL made ``https`` for the pool."""
    call.tls = None
    return _originate(outbound, call.endpoint, call, attempt)


def _originate(
    outbound: Outbound, endpoint: Endpoint | None, call: HttpxCall, request: httpx.Request
) -> Origination | None:
    try:
        origination = origination_for(outbound, endpoint, call.view)
    except UpstreamTLSError as exc:
        if isinstance(exc, httpx.TransportError):
            raise
        raise CODEC.error(UpstreamTLSError, exc.reason) from exc.__cause__
    if origination is not None:
        request.url = as_https(request.url)
    return origination


def _peer_of(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    peer = stream.get_extra_info(PEER_IDENTITY)
    return peer if isinstance(peer, str) else None


# --------------------------------------------------------------------------- mirrors


def _mirror_requests(
    call: HttpxCall,
) -> list[tuple[httpx.Request, Cluster, Endpoint | None]]:
    """The copies to send, each with its destination's cluster and endpoint."""
    mirrors = call.decision.mirrors
    if not mirrors or not call.replayable:
        return []
    mesh = call.mesh
    out = []
    original = call.request
    for target, percentage in mirrors:
        if percentage < 100 and mesh.rng.random() * 100 >= percentage:
            continue
        cluster = mesh.cluster(target)
        endpoint = cluster.choose(None, ())
        url = original.url
        if endpoint is not None:
            url = url.copy_with(host=endpoint.host, port=endpoint.port)
        headers = httpx.Headers(original.headers)
        host = headers.get("host") or original.url.host
        name, sep, port = host.partition(":")
        headers["host"] = f"{name}-shadow{sep}{port}"
        copy = httpx.Request(original.method, url, headers=headers, stream=original.stream)
        if target.host.endswith(MESH_SUFFIX):  # a shadow says who sent it, as the call does
            CODEC.stamp(copy, stamp_of(mesh).entries)
        out.append((copy, cluster, endpoint))
    return out


def _mirror_origination(
    call: HttpxCall, cluster: Cluster, endpoint: Endpoint | None, request: httpx.Request
) -> tuple[bool, Origination | None]:
    """Whether a mirrored copy may go, and the TLS it goes with (None: plain text)."""
    outbound = cluster.outbound
    if outbound is None:
        return True, None
    try:
        return True, _originate(outbound, endpoint, call, request)
    except UpstreamTLSError:
        return False, None
