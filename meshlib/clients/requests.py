"""The mesh in requests: ``MeshAdapter``, a transport adapter for ``session.mount(...)``.

```python
session = mesh.requests_session()            # a requests.Session, the mesh mounted on both schemes
session.mount("http://", MeshAdapter(mesh))  # or mount it on a session of your own
response = session.get("http://reviews:9080/reviews/0", timeout=3)
response.mesh                                # the MeshInfo: decision, endpoint, attempts, flags
```

Every request of the session goes through the mesh's pipeline (``meshlib.pipeline.call``):
routing, faults, retries, the route timeout and per-try timeouts, pool limits, breakers, outlier
detection, mirrors, redirects and direct responses (a mesh redirect is followed by requests as
any other), telemetry, context propagation, ``x-mesh-response-flags``. requests sends each
attempt through ``HTTPAdapter.send`` (urllib3's pool), the adapter's own, with the attempt's
URL and a timeout no longer than what the call has left.

What a caller sees:

* ``response.mesh`` is the ``MeshInfo`` (``meshlib.clients.requests.mesh_info(response)``
  too); replies of the mesh's own (404 ``NR``, 503 ``UH``/``NC``/``UO``, an abort, a direct
  response) are ``requests.Response`` objects built by ``HTTPAdapter.build_response``.
* a call the mesh cannot complete raises an exception that is at once requests' and meshlib's:
  ``MeshRequestError`` (and ``CircuitOpenError``, ``NoRouteError``, ``NoHealthyUpstream``) is
  also ``requests.exceptions.ConnectionError``, ``UpstreamTLSError`` also
  ``requests.exceptions.SSLError``, ``DeadlineExceeded`` also ``requests.exceptions.Timeout``.
* the caller's ``timeout=`` (a number, or ``(connect, read)``) is the caller's bound on the whole
  call, as httpx's read timeout is through the httpx transport: no try starts after it, each try
  waits at most what is left, and running out raises ``requests.exceptions.ReadTimeout``.

TLS the mesh originates (DestinationRule ``tls``: SIMPLE, MUTUAL, ISTIO_MUTUAL; auto mTLS) goes
through urllib3's public API: one ``HTTPSConnectionPool`` of the adapter's own per destination,
origination (``meshlib.security.outbound.Origination``) and endpoint, made with the
origination's context and SNI, whose connections' ``connect`` checks the peer as the httpx
transport's do (its SPIFFE ID, or ``subjectAltNames``) before a byte of the request is sent. A
connection is verified once and reused; under ISTIO_MUTUAL a rotated workload certificate gets
a new pool (new connections), the old one closed. A failed handshake or a refused peer is
``UpstreamTLSError`` (flag ``UF``, also ``requests.exceptions.SSLError``), never retried. An
``https://`` URL is the app's own TLS, passed through as Envoy does: the handshake names the
host the app called (SNI and the name checked, with the caller's ``verify``), not the
endpoint's address.

The call ends with its body, as through the httpx transport: requests reads the body after the
adapter returns, through ``response.raw``, which the adapter wraps (``_Body``). The body read
to its end, closed, or let go of (garbage-collected) gives back the pool slot and in-flight
count and records the call (metrics, access log), once; a body cut short is recorded ``UC``;
the call's deadline bounds each read of the body (``DeadlineExceeded``, ``UT``). A response
head is read within the try's deadline too: the pools' connections (``_Watched``) have it
watched, so an upstream that trickles it cannot stretch it.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import requests
import requests.adapters
import requests.exceptions
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict
from requests.utils import select_proxy

from meshlib import errors
from meshlib.pipeline.call import Call, origination_for
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
    from meshlib.config.model import HeaderOperations
    from meshlib.discovery import Endpoint
    from meshlib.mesh import Mesh
    from meshlib.security.outbound import Origination, Outbound, SecureTransports

__all__ = [
    "CircuitOpenError",
    "DeadlineExceeded",
    "MeshAdapter",
    "MeshRequestError",
    "NoHealthyUpstream",
    "NoRouteError",
    "UpstreamTLSError",
    "mesh_info",
    "raise_for_mesh",
    "session",
]


# --------------------------------------------------------------------------- errors


class MeshRequestError(errors.MeshRequestError, requests.exceptions.ConnectionError):
    """``meshlib.MeshRequestError`` that is also a ``requests.exceptions.ConnectionError``."""


class NoRouteError(errors.NoRouteError, MeshRequestError):
    """``meshlib.NoRouteError`` that is also a ``requests.exceptions.ConnectionError``."""


class NoHealthyUpstream(errors.NoHealthyUpstream, MeshRequestError):  # noqa: N818 - Envoy's term
    """``meshlib.NoHealthyUpstream`` that is also a ``requests.exceptions.ConnectionError``."""


class CircuitOpenError(errors.CircuitOpenError, MeshRequestError):
    """``meshlib.CircuitOpenError`` that is also a ``requests.exceptions.ConnectionError``."""


class UpstreamTLSError(errors.UpstreamTLSError, MeshRequestError, requests.exceptions.SSLError):
    """``meshlib.UpstreamTLSError`` that is also a ``requests.exceptions.SSLError``."""


class DeadlineExceeded(  # noqa: N818 - reads as a state
    errors.DeadlineExceeded, MeshRequestError, requests.exceptions.Timeout
):
    """``meshlib.DeadlineExceeded`` that is also a ``requests.exceptions.Timeout``."""


FLAVORS: dict[type[errors.MeshRequestError], type[errors.MeshRequestError]] = {
    errors.MeshRequestError: MeshRequestError,
    errors.NoRouteError: NoRouteError,
    errors.NoHealthyUpstream: NoHealthyUpstream,
    errors.CircuitOpenError: CircuitOpenError,
    errors.UpstreamTLSError: UpstreamTLSError,
    errors.DeadlineExceeded: DeadlineExceeded,
}

#: requests' errors of an attempt that the mesh judges (retries, breaker, outlier detection).
ATTEMPT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def classify_error(exc: BaseException, *, per_try_timeout: bool = False) -> ErrorKind:
    """requests' (and urllib3's) errors in Envoy's failure kinds: a connection that could not be
    made (refused, connect timeout, DNS) → ``"connect-failure"``; a timeout once connected →
    ``"per-try-timeout"`` when the per-try deadline caused it, else ``"reset"``; a connection
    that ended before or in the response → ``"reset"``; meshlib's own errors and anything else
    → ``"other"``."""
    if isinstance(exc, errors.MeshError):
        return "other"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect-failure"
    if isinstance(exc, requests.exceptions.Timeout):
        return "per-try-timeout" if per_try_timeout else "reset"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "reset"
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        if isinstance(
            reason,
            (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError),
        ):
            return "connect-failure"
        if isinstance(reason, urllib3.exceptions.SSLError):
            return "connect-failure"
        return "reset"
    return Outcome.of_error(exc).error or "other"


def outcome_of_error(exc: BaseException, *, per_try_timeout: bool = False) -> Outcome:
    kind = classify_error(exc, per_try_timeout=per_try_timeout)
    return Outcome(error=kind, request_sent=kind != "connect-failure")


# --------------------------------------------------------------------------- URLs


class _Parts:
    """A URL's pieces as the mesh reads them, parsed once per URL text (``_parts``)."""

    __slots__ = ("host", "netloc", "path", "port", "query", "scheme", "userinfo", "written_port")

    def __init__(self, text: str) -> None:
        parts = urlsplit(text)
        self.scheme: str = parts.scheme.lower()
        netloc: str = parts.netloc
        self.userinfo: str = netloc.rpartition("@")[0] if "@" in netloc else ""
        self.netloc: str = netloc.rpartition("@")[2]
        self.host: str = (parts.hostname or "").lower()
        self.written_port: int | None = parts.port  # raises ValueError for a port out of range
        self.port: int | None = (
            None if self.written_port == _DEFAULT_PORTS.get(self.scheme) else self.written_port
        )
        self.path: str = parts.path
        self.query: str = parts.query


#: Parsed URLs by text: a session calls the same few URLs over and over. Bounded: emptied when
#: full (a dict's get and set are atomic, so threads need no lock).
_PARSED: dict[str, _Parts] = {}
_PARSED_MAX = 1024


def _parts(text: str) -> _Parts:
    found = _PARSED.get(text)
    if found is None:
        found = _Parts(text)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[text] = found
    return found


class URL:
    """A request's URL as the mesh and telemetry read it (``meshlib.telemetry.URLView``): the
    string requests prepared, split once."""

    __slots__ = ("_parsed", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parsed: _Parts | None = None

    def _split(self) -> _Parts:
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = _parts(self.text)
        return parsed

    @property
    def scheme(self) -> str:
        return self._split().scheme

    @property
    def host(self) -> str:
        return self._split().host

    @property
    def port(self) -> int | None:
        return self._split().port

    @property
    def userinfo(self) -> bytes:
        return self._split().userinfo.encode("ascii", "replace")

    @property
    def raw_path(self) -> bytes:
        parts = self._split()
        path = parts.path or "/"
        return (f"{path}?{parts.query}" if parts.query else path).encode("ascii", "replace")

    @property
    def netloc(self) -> bytes:
        return self._split().netloc.encode("ascii", "replace")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"URL({self.text!r})"


_DEFAULT_PORTS = {"http": 80, "https": 443}
#: What a path keeps unquoted when a rewrite puts it back into a URL (RFC 3986 pchar and "/").
_PATH_SAFE = "/:@!$&'()*+,;=~%"


def _join(scheme: str, userinfo: str, host: str, port: int | None, path: str, query: str) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    authority = f"{userinfo}@{host}" if userinfo else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        authority = f"{authority}:{port}"
    return f"{scheme}://{authority}{path or '/'}{'?' + query if query else ''}"


def _with_host(url: URL, host: str, port: int | None) -> str:
    parts = url._split()
    return _join(parts.scheme, parts.userinfo, host, port, parts.path, parts.query)


# --------------------------------------------------------------------------- headers


class Headers(CaseInsensitiveDict[str]):
    """requests' ``CaseInsensitiveDict``, with lookups that cost no exception when a name is
    missing: the mesh's copy of a request's headers, and a response's headers.

    Every method that touches the storage is defined here, on a plain dict of
    ``lowercase name → (name as written, value)``, so nothing depends on how requests stores
    its own."""

    def __init__(self, data: Any = None, **kwargs: Any) -> None:
        self._store: dict[str, tuple[str, Any]] = {}
        if data is not None or kwargs:
            self.update(data or {}, **kwargs)

    @classmethod
    def of(cls, headers: Mapping[Any, Any] | None) -> Headers:
        """A copy of ``headers`` (a ``CaseInsensitiveDict``, a ``dict``, an ``HTTPHeaderDict``)."""
        made = cls.__new__(cls)
        if isinstance(headers, Headers):
            made._store = dict(headers._store)
            return made
        # requests' own keeps the same pairs by the same keys (its ``_store``, unchanged since
        # requests 1.x); copied as it is, or name by name for anything else
        theirs = getattr(headers, "_store", None) if type(headers) is CaseInsensitiveDict else None
        if isinstance(theirs, dict):
            made._store = dict(theirs)
            return made
        made._store = store = {}
        if headers:
            for name in headers:
                store[name.lower()] = (name, headers[name])
        return made

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key.lower()] = (key, value)

    def __getitem__(self, key: str) -> Any:
        return self._store[key.lower()][1]

    def __delitem__(self, key: str) -> None:
        del self._store[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._store.values())

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._store

    def get(self, key: str, default: Any = None) -> Any:
        found = self._store.get(key.lower())
        return default if found is None else found[1]

    def pop(self, key: str, *default: Any) -> Any:
        found = self._store.pop(key.lower(), None)
        if found is not None:
            return found[1]
        if default:
            return default[0]
        raise KeyError(key)

    def lower_items(self) -> Iterator[tuple[str, Any]]:
        return ((lower, pair[1]) for lower, pair in self._store.items())

    def copy(self) -> Headers:
        made = type(self).__new__(type(self))
        made._store = dict(self._store)
        return made


# --------------------------------------------------------------------------- the codec


class RequestsCodec:
    """requests' ``PreparedRequest`` and ``Response`` for the core
    (``meshlib.pipeline.codec.Codec``). Local replies are built by the adapter's own
    ``HTTPAdapter.build_response``."""

    __slots__ = ("adapter",)

    def __init__(self, adapter: MeshAdapter) -> None:
        self.adapter = adapter

    # ------------------------------------------------------------------ the request

    def view(self, request: requests.PreparedRequest) -> RouteRequest:
        parts = _parts(request.url or "")
        scheme = parts.scheme
        host = parts.host
        port = parts.written_port
        headers = {}
        for name, value in (request.headers or {}).items():
            key = name if type(name) is str else _text(name)
            headers[key.lower()] = value if type(value) is str else _text(value)
        path = parts.path or "/"
        if "%" in path:
            path = unquote(path)
        view = _new_view(RouteRequest)
        view.method = (request.method or "GET").upper()
        view.scheme = scheme
        view.host = host
        view.port = port if port is not None else _DEFAULT_PORTS.get(scheme, 80)
        view.path = path
        view.query = parts.query
        view.headers = headers
        authority = headers.get("host")
        if authority is None:
            written = (":" in host and f"[{host}]") or host
            authority = written if parts.port is None else f"{written}:{port}"
        view.authority = authority
        view._params = None
        return view

    def save(self, request: requests.PreparedRequest) -> tuple[str | None, Any]:
        return request.url, request.headers

    def restore(self, request: requests.PreparedRequest, saved: tuple[str | None, Any]) -> None:
        request.url, request.headers = saved

    def _own_headers(self, request: requests.PreparedRequest) -> Headers:
        """The request's headers, copied once per call before the first edit (``restore``
        gives the caller back its own)."""
        headers = request.headers
        marker = getattr(request, _EDITED, None)
        if marker is not headers:
            headers = request.headers = Headers.of(headers)
            setattr(request, _EDITED, headers)
        return headers

    def carry(self, request: requests.PreparedRequest, carried: Mapping[str, str]) -> None:
        missing = [name for name in carried if name not in request.headers]
        if missing:
            headers = self._own_headers(request)
            for name in missing:
                headers[name] = carried[name]

    def url_of(self, request: requests.PreparedRequest) -> URL:
        return URL(request.url or "")

    def with_path(self, url: URL, path: str) -> URL:
        parts = url._split()
        text = _join(
            parts.scheme,
            parts.userinfo,
            parts.host,
            parts.written_port,
            quote(path, safe=_PATH_SAFE),
            parts.query,
        )
        return URL(text)

    def point(self, request: requests.PreparedRequest, url: URL, endpoint: Endpoint | None) -> None:
        request.url = (
            url.text if endpoint is None else _with_host(url, endpoint.host, endpoint.port)
        )

    def edit(
        self,
        request: requests.PreparedRequest,
        *,
        authority: str | None,
        operations: list[HeaderOperations],
        close: bool,
        remove: str | None,
    ) -> None:
        headers = self._own_headers(request)
        if authority:
            headers["host"] = authority
        for operation in operations:
            _apply_header_ops(headers, operation)
        if close:
            headers["connection"] = "close"
        if remove is not None:
            headers.pop(remove, None)

    def stamp(
        self, request: requests.PreparedRequest, stamped: Sequence[tuple[bytes, bytes, bytes]]
    ) -> None:
        headers = self._own_headers(request)
        store = headers._store
        for key in _PEER_NAMES:
            store.pop(key, None)
        for name, value in stamp_text(stamped):
            store[name.lower()] = (name, value)

    def request_headers(self, request: requests.PreparedRequest) -> Mapping[str, str]:
        return request.headers

    def replayable(self, request: requests.PreparedRequest) -> bool:
        body = request.body
        return body is None or isinstance(body, (bytes, str))

    def caller_timeout(self, request: requests.PreparedRequest) -> float | None:
        _, read = _timeouts(getattr(request, _TIMEOUT, None))
        return read

    def caller_bounds_all(self, request: requests.PreparedRequest) -> bool:
        connect, read = _timeouts(getattr(request, _TIMEOUT, None))
        return read is not None and connect is not None and connect <= read

    def bound(self, request: requests.PreparedRequest, timeout: float) -> None:
        connect, read = _timeouts(getattr(request, _TIMEOUT, None))
        setattr(
            request,
            _ATTEMPT_TIMEOUT,
            (
                timeout if connect is None else min(connect, timeout),
                timeout if read is None else min(read, timeout),
            ),
        )

    def body_bound(self, bound: Any, timeout: float | None) -> None:
        """Nothing to change: each read of the body is bounded by the call's deadline where it
        is read (``_Body``)."""

    def trace_headers(
        self, request: requests.PreparedRequest, names: frozenset[str]
    ) -> dict[str, str]:
        return {
            _text(name).lower(): _text(value)
            for name, value in request.headers.items()
            if _text(name).lower() in names
        }

    def put_trace_headers(
        self, request: requests.PreparedRequest, names: frozenset[str], pairs: list[tuple[str, str]]
    ) -> None:
        headers = self._own_headers(request)
        for name in names:
            headers.pop(name, None)
        for key, value in pairs:
            headers[key] = value

    # ------------------------------------------------------------------ the response

    def status(self, response: requests.Response) -> int:
        return response.status_code

    def response_headers(self, response: requests.Response) -> Mapping[str, str]:
        return response.headers

    def reply(
        self,
        request: requests.PreparedRequest,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> requests.Response:
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=urllib3.HTTPHeaderDict(headers),  # the core has set its content-length
            status=status,
            reason=REASON_PHRASES.get(status, ""),
            preload_content=False,
            decode_content=False,
            request_method=request.method,  # HEAD: the length said, and no body
        )
        return self.adapter.build_response(request, raw)

    def location(
        self, scheme: str, host: str, port: int | None, path: str, query: str | None
    ) -> str:
        return _join(scheme, "", host, port, quote(path, safe=_PATH_SAFE), query or "")

    def finish(
        self,
        response: requests.Response,
        operations: list[HeaderOperations],
        flags: str,
        info: MeshInfo,
        local: bool,
    ) -> str | None:
        headers = response.headers
        for operation in operations:
            _apply_header_ops(headers, operation)
        peer = None
        if not local:
            peer = headers.get(PEER_METADATA)
            for key in _UPSTREAM_TAKEN:
                headers.pop(key, None)
        if flags:
            headers[FLAGS_HEADER] = flags
        response.mesh = info  # type: ignore[attr-defined]
        return peer

    def info(self, response: requests.Response) -> MeshInfo | None:
        return mesh_info(response)

    def set_info(self, response: requests.Response, info: MeshInfo) -> None:
        response.mesh = info  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ errors

    def error(
        self, kind: type[errors.MeshRequestError], message: str, **fields: Any
    ) -> errors.MeshRequestError:
        return FLAVORS.get(kind, kind)(message, **fields)

    def caller_timeout_error(self, request: requests.PreparedRequest, message: str) -> Exception:
        return requests.exceptions.ReadTimeout(message, request=request)

    def is_read_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, requests.exceptions.Timeout) and not isinstance(
            exc, requests.exceptions.ConnectTimeout
        )

    def outcome_of_error(self, exc: BaseException, *, per_try_timeout: bool) -> Outcome:
        return outcome_of_error(exc, per_try_timeout=per_try_timeout)


_new_view = object.__new__
#: Attributes the adapter keeps on a ``PreparedRequest`` during a call: the caller's timeout,
#: the try's, and the header dict the call made its own.
_TIMEOUT = "_meshlib_timeout"
_ATTEMPT_TIMEOUT = "_meshlib_attempt_timeout"
_EDITED = "_meshlib_headers"
_UPSTREAM_TAKEN = (*(key.decode() for key in PEER_KEYS), FLAGS_HEADER)
_PEER_NAMES = tuple(key.decode("latin-1").lower() for key in PEER_KEYS)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    """requests' ``timeout=`` as (connect, read) seconds."""
    if timeout is None:
        return None, None
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    if isinstance(timeout, urllib3.Timeout):
        return timeout.connect_timeout, timeout.read_timeout  # type: ignore[return-value]
    return float(timeout), float(timeout)


def _apply_header_ops(headers: MutableMapping[str, str], ops: Any) -> None:
    """Istio's header operations on ``headers`` (``meshlib.pipeline.headers.apply_operations``),
    each configured value as http.client can send it (``_sendable``)."""

    def put(name: str, value: str) -> None:
        headers[name] = value

    def drop(name: str) -> None:
        headers.pop(name, None)

    apply_operations(ops, headers.get, put, drop, _sendable)


def _sendable(value: str) -> str:
    """A configured value as Envoy sends it: the UTF-8 bytes of one that is not ASCII (http.client
    writes a header value's characters as Latin-1)."""
    return value if value.isascii() else value.encode("utf-8").decode("latin-1")


def mesh_info(response: requests.Response) -> MeshInfo | None:
    """The ``MeshInfo`` of a response that came through the mesh (``response.mesh``)."""
    found = getattr(response, "mesh", None)
    return found if isinstance(found, MeshInfo) else None


def raise_for_mesh(response: requests.Response) -> requests.Response:
    """As ``meshlib.raise_for_mesh``, for requests: raise the matching exception (also a
    ``requests.exceptions.ConnectionError``) if the mesh answered the call itself."""
    from meshlib.pipeline.call import raise_for_mesh as raise_for  # noqa: PLC0415

    adapter = response.connection if isinstance(response.connection, MeshAdapter) else None
    codec = (
        adapter.codec if adapter is not None else RequestsCodec(MeshAdapter.__new__(MeshAdapter))
    )
    raise_for(mesh_info(response), response.status_code, response.request, codec)
    return response


# --------------------------------------------------------------------------- the adapter

RequestsCall = Call[requests.PreparedRequest, requests.Response]


class MeshAdapter(requests.adapters.HTTPAdapter):
    """The mesh as a requests transport adapter: ``session.mount("http://", MeshAdapter(mesh))``.

    Other arguments are ``HTTPAdapter``'s own (``pool_connections``, ``pool_maxsize``,
    ``pool_block``); ``max_retries`` stays 0: the mesh retries."""

    def __init__(self, mesh: Mesh, **kwargs: Any) -> None:
        kwargs.setdefault("max_retries", 0)
        super().__init__(**kwargs)
        self.mesh = mesh
        self.codec = RequestsCodec(self)
        self._mirrors: httpx.BaseTransport | None = None
        self._mirrors_secure: SecureTransports | None = None
        self._tls = _TLSPools(self)
        #: what the attempt under way on this thread is sent through (see ``get_connection``)
        self._sending = _SENDING

    def _mirror_transport(self) -> httpx.BaseTransport:
        """The httpx transport mirrored copies go through (made on first use)."""
        if self._mirrors is None:
            self._mirrors = self.mesh.sync_inner()
        return self._mirrors

    def _mirror_secure(self, outbound: Outbound) -> SecureTransports:
        """The mesh's httpx TLS pools mirrored copies to TLS destinations go through."""
        if self._mirrors_secure is None:
            from meshlib.security.outbound import SecureTransports  # noqa: PLC0415

            self._mirrors_secure = SecureTransports(outbound.identity)
        return self._mirrors_secure

    def close(self) -> None:
        super().close()
        self._plain_pools.clear()
        self._tls.close()
        if self._mirrors is not None:
            self._mirrors.close()
        if self._mirrors_secure is not None:
            self._mirrors_secure.close()

    # ------------------------------------------------------------------ requests' hooks

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """requests' pool manager, its pools' connections reading a response head within the
        try's deadline (``_Watched``)."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        #: urllib3's pool for each plain-text ``host, port`` the mesh sends to, at most
        #: ``connections`` (``get_connection_with_tls_context``)
        self._plain_pools: dict[tuple[str, int | None], Any] = {}
        self._plain_pools_max = max(1, connections)

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> Any:
        """The attempt's pool: the mesh's TLS pool when the mesh originates TLS; for the app's
        own TLS (an ``https://`` URL sent to an endpoint's address), requests' pool with the
        called host as SNI and as the name the certificate must carry. Otherwise requests' own,
        remembered per host and port for a plain-text request sent with no proxy: a mesh sends
        every call to one of a few endpoints, and requests would look the pool up anew on each
        (a pool key of some thirty fields: about 17 µs a call). At most ``pool_connections``
        are remembered, as urllib3 keeps at most that many; ``close()`` forgets them, and a
        pool closed meanwhile is looked up again."""
        sending = self._sending
        secure = sending.pool
        if secure is not None:
            return secure
        host = sending.tls_host
        if host is not None and not select_proxy(request.url or "", proxies):
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(
                request, True if verify is None else verify, cert
            )
            named: dict[str, Any] = {
                **pool_kwargs,
                "server_hostname": host,
                "assert_hostname": host,
            }
            return self.poolmanager.connection_from_host(**host_params, pool_kwargs=named)
        url = request.url or ""
        if proxies or not url.startswith("http://"):
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        parts = _parts(url)
        key = (parts.host, parts.written_port)
        pools = self._plain_pools
        pool = pools.get(key)
        if pool is None or pool.pool is None:
            pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
            if len(pools) >= self._plain_pools_max:
                pools.clear()
            pools[key] = pool
        return pool

    def get_connection(self, url: Any, proxies: Mapping[str, str] | None = None) -> Any:
        """As ``get_connection_with_tls_context``, for requests before 2.32.2 (which calls
        this one)."""
        sending = self._sending
        pool = sending.pool
        if pool is not None:
            return pool
        text = _text(url)
        host = sending.tls_host
        if host is not None and not select_proxy(text, proxies):
            kwargs = {"server_hostname": host, "assert_hostname": host}
            return self.poolmanager.connection_from_url(text, pool_kwargs=kwargs)
        return super().get_connection(url, proxies)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """The mesh's TLS pools take the destination's TLS settings, not the caller's
        ``verify`` and ``cert``."""
        if isinstance(conn, _MeshTLSPool):
            return
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]

    def request_url(
        self, request: requests.PreparedRequest, proxies: Mapping[str, str] | None
    ) -> str:
        """requests' own: the path alone when no proxy is in play (without its proxy lookup),
        or when the mesh originates TLS (it dials the endpoint itself: never a proxy)."""
        if not proxies or self._sending.pool is not None:
            return request.path_url
        return super().request_url(request, proxies)

    def build_response(
        self, req: requests.PreparedRequest, resp: urllib3.BaseHTTPResponse
    ) -> requests.Response:
        """requests' own response, its headers a ``Headers`` (a ``CaseInsensitiveDict`` whose
        lookups of a missing name raise nothing: the mesh makes several per response)."""
        response = super().build_response(req, resp)
        response.headers = Headers.of(response.headers)
        return response

    # ------------------------------------------------------------------ a call

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        setattr(request, _TIMEOUT, timeout)
        call: RequestsCall = Call(self.mesh, request, self.codec)
        try:
            response = self._handle(call, stream, verify, cert, proxies)
        except BaseException as exc:
            call.finished(None, exc)
            raise
        finally:
            call.done()
            for name in (_TIMEOUT, _ATTEMPT_TIMEOUT, _EDITED):
                request.__dict__.pop(name, None)
        if call.telemetry.listening and not call.body_pending:
            call.finished(response, None)
        return response

    def _handle(
        self, call: RequestsCall, stream: bool, verify: Any, cert: Any, proxies: Any
    ) -> requests.Response:
        mesh = self.mesh
        if not call.decision.plain:
            opened = call.opening()
            if opened is not None:
                if not isinstance(opened, float):
                    return opened
                mesh.clock.sleep(opened)
                reply = call.delayed()
                if reply is not None:
                    return reply
            if call.decision.mirrors:
                _send_mirrors(call, self)
        caller = getattr(call.request, _TIMEOUT, None)
        sending = self._sending
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
                except errors.DeadlineExceeded:
                    raise call.pool_timeout() from None
                if lease is None:
                    return call.overflow()
            else:
                lease = FREE_LEASE
            attempt = call.open_attempt(ends, waited, lease)
            timeout = call.try_timeout
            sent_timeout = caller if timeout is None else getattr(attempt, _ATTEMPT_TIMEOUT)
            origination = None
            if ends is not None:
                sending.head_by = time.monotonic() + (ends - mesh.now())
            try:
                try:
                    if cluster.outbound is not None:
                        origination = self._originate(call, cluster.outbound)
                    if origination is None and call.view.scheme == "https" and call.endpoint:
                        sending.tls_host = call.view.host  # the app's own TLS, to that host
                    response = super().send(
                        attempt,
                        stream=stream,
                        timeout=sent_timeout,
                        verify=verify,
                        cert=cert,
                        proxies=proxies,
                    )
                finally:  # what the attempt was sent through is this attempt's alone
                    sending.pool = sending.tls_host = sending.head_by = None
            except ATTEMPT_ERRORS as exc:
                failed = _tls_refusal(call, exc) if origination is not None else exc
                mesh.clock.sleep(call.attempt_failed(failed))
                continue
            except BaseException:
                call.attempt_abandoned()
                raise
            if origination is not None:
                call.tls = (origination.mode, _peer_of(response))
            delay = call.settle(response)
            if delay is None:
                response.url = call.saved[0] or response.url
                response = call.finish(response)
                held = call.holding
                raw = response.raw
                if raw is None or raw.closed:
                    if held:
                        call.end_attempt()
                elif held or call.ends is not None or call.telemetry.listening:
                    # the call ends with its body, which requests reads after this returns
                    call.body_started()
                    response.raw = _Body(call, response, call.end_attempt if held else None)
                return response
            response.close()
            call.attempt_discarded(delay)
            mesh.clock.sleep(delay)

    def _originate(self, call: RequestsCall, outbound: Outbound) -> Origination | None:
        """The TLS the attempt goes with (None: plain text); with TLS, the mesh's pool for it
        is what ``get_connection`` hands requests. Raises ``UpstreamTLSError`` (flag ``UF``)
        for TLS that cannot be originated."""
        call.tls = None
        try:
            origination = origination_for(outbound, call.endpoint, call.view)
            if origination is None:
                return None
            endpoint = call.endpoint
            assert endpoint is not None
            self._sending.pool = self._tls.pool(outbound, origination, endpoint)
        except errors.UpstreamTLSError as exc:
            raise self.codec.error(
                errors.UpstreamTLSError, exc.reason, request=call.request
            ) from exc
        return origination


# --------------------------------------------------------------------------- the body


class _Body:
    """An upstream's response body as requests reads it (``response.raw``), through the mesh:
    urllib3's ``HTTPResponse``, wrapped. Everything but the reads is urllib3's own.

    Each read is bounded by the call's deadline: it waits at most what is left (the socket's
    timeout, set before each read; a read takes at most one ``recv`` of the socket, so an
    upstream that trickles bytes cannot stretch it), and none begins after it; one the deadline
    ends raises ``DeadlineExceeded`` (``UT``), or requests' ``ReadTimeout`` when it was the
    caller's ``timeout=``. A connection that breaks in the middle is recorded as the call's
    failure (``UC``), the caller getting requests' error for it (``ChunkedEncodingError``
    through ``stream``, which requests reads ``response.content`` with). The body's end — read
    to its end, closed, released, broken, or the response garbage-collected — gives back the
    attempt's pool slot and in-flight count and records the call (metrics, access log), once.
    """

    def __init__(self, call: RequestsCall, response: requests.Response, release: Any) -> None:
        raw = response.raw
        self._raw = raw
        self._call = call
        self._response = weakref.ref(response)
        ends = call.ends
        self._bound = call.attempt_bound(ends) if ends is not None else None
        if self._bound is None and call.try_timeout is not None:
            # a per-try timeout bounds a try until its response begins, not the body (Envoy)
            self._settimeout(None)
        call.body_pending = True
        #: what ending the call takes, popped once (``list.pop`` is atomic: whichever of a
        #: read, a close and ``__del__`` comes first ends it)
        self._ending = [(call, release, response.status_code, response.headers)]

    def __getattr__(self, name: str) -> Any:
        if name == "_raw":
            raise AttributeError(name)
        return getattr(self._raw, name)

    def _settimeout(self, timeout: float | None) -> None:
        """The socket's timeout for the next read: ``timeout``, unless it is already within
        ``_SLACK`` of it (setting it costs system calls)."""
        connection = getattr(self._raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is None:
            return
        current = sock.gettimeout()
        if timeout is None or current is None:
            if timeout is current:
                return
        elif abs(current - timeout) <= _SLACK:
            return
        with contextlib.suppress(OSError):  # closed meanwhile: the read says how
            sock.settimeout(timeout)

    # ------------------------------------------------------------------ reads

    def stream(
        self, amt: int | None = 2**16, decode_content: bool | None = None
    ) -> Iterator[bytes]:
        """urllib3's ``stream``, each read bounded; errors are requests' own (as
        ``Response.iter_content`` would make them), so the call records what the caller gets."""
        if amt == 0:
            return
        while True:
            try:
                data = self._read(amt, decode_content)
            except urllib3.exceptions.ProtocolError as exc:
                raise self._broken(requests.exceptions.ChunkedEncodingError(exc)) from exc
            except urllib3.exceptions.SSLError as exc:
                raise self._broken(requests.exceptions.SSLError(exc)) from exc
            except urllib3.exceptions.DecodeError as exc:
                self._end()
                raise requests.exceptions.ContentDecodingError(exc) from exc
            if not data:
                return
            yield data

    def read(
        self, amt: int | None = None, decode_content: bool | None = None, **kwargs: Any
    ) -> bytes:
        """urllib3's ``read``, each wait bounded (urllib3's errors, as it raises them)."""
        if kwargs:  # cache_content: urllib3's own read
            data: bytes = self._guard(self._raw.read, amt, decode_content, **kwargs)
            if self._raw.closed:
                self._end()
            return data
        chunks = []
        wanted = amt
        while wanted is None or wanted > 0:
            try:
                data = self._read(wanted, decode_content)
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError) as exc:
                raise self._broken(exc) from None
            if not data:
                break
            chunks.append(data)
            if wanted is not None:
                wanted -= len(data)
        return b"".join(chunks)

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        try:
            return self._read(amt, decode_content)
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError) as exc:
            raise self._broken(exc) from None

    def __iter__(self) -> Iterator[bytes]:
        """Lines, as urllib3's ``HTTPResponse`` gives them."""
        buffer = b""
        for chunk in self.stream(decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line + b"\n"
        if buffer:
            yield buffer

    def _read(self, amt: int | None, decode_content: bool | None) -> bytes:
        """One read of at most one ``recv`` (urllib3's ``read1``, 2.3 and later), bounded by
        the deadline; b"" at the end of the body, which ends the call."""
        raw = self._raw
        reader = getattr(raw, "read1", None)
        if reader is None:  # an older urllib3: its read, each recv bounded alone
            reader = raw.read
        data: bytes = self._guard(reader, amt, decode_content)
        if not data and amt != 0:
            self._end()
        return data

    def _guard(self, read: Any, *args: Any, **kwargs: Any) -> Any:
        bound = self._bound
        if bound is None:
            return read(*args, **kwargs)
        call = self._call
        left = bound.at - bound.now()
        if left <= 0:
            raise self._expired(None)
        self._settimeout(left)
        try:
            return read(*args, **kwargs)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise self._expired(exc) from exc
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError) as exc:
            if call.timed_out() or call.user_timed_out():
                raise self._expired(exc) from exc
            raise

    # ------------------------------------------------------------------ endings

    def _expired(self, found: BaseException | None) -> Exception:
        """The deadline ended a read: the call's error for it (recorded), the body closed."""
        error = self._call.body_expired(found, self._response())
        self._raw.close()
        self._end()
        return error

    def _broken(self, error: Exception) -> Exception:
        """The connection broke in the middle of the body: recorded (``UC``) with ``error``, the
        exception the caller gets."""
        self._call.body_broken(error, self._response())
        self._end()
        return error

    def _end(self) -> None:
        self._done()

    def _done(self) -> None:
        try:
            ending = self._ending.pop()
        except IndexError:
            return
        _body_ended(*ending)

    def __del__(self) -> None:
        if self.__dict__.get("_ending"):
            self._done()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            self._done()

    def release_conn(self) -> None:
        try:
            self._raw.release_conn()
        finally:
            self._done()

    def drain_conn(self) -> None:
        try:
            self._raw.drain_conn()
        finally:
            self._done()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)


#: How far a socket's timeout may be from what is left of the deadline before a read of the body
#: sets it again (seconds): what the deadline may be overrun by.
_SLACK = 0.01


def _body_ended(call: RequestsCall, release: Any, status: int, headers: Mapping[str, str]) -> None:
    """A body ended (``_Body``): give back what its attempt held, and record the call."""
    try:
        if release is not None:
            release()
    finally:
        if call.telemetry.listening:
            call.recorded(status, headers, call.body_error)


# --------------------------------------------------------------------------- the head's deadline


class _Watch:
    """One armed deadline of the ``_Watchdog``: the socket to shut when it passes."""

    __slots__ = ("at", "fired", "sock")

    def __init__(self, at: float, sock: Any) -> None:
        self.at = at
        self.sock = sock
        self.fired = False


class _Watchdog:
    """Shuts the socket of a response head that is still being read when its try's deadline
    passes. http.client reads a status line and headers a line at a time, each line as many
    ``recv`` calls as it takes, so a socket timeout bounds each ``recv`` and not the head: an
    upstream that trickles its head one byte at a time would stretch it without end. Shutting
    the socket ends the read at once; the connection is not reused. One thread for the
    process, started on first use, asleep until the earliest deadline armed."""

    def __init__(self) -> None:
        #: (when, a sequence number, the watch): compared in C, never by the watch
        self._heap: list[tuple[float, int, _Watch]] = []
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wakes: float | None = None  # when the thread wakes next (None: not before a call)
        self._thread: threading.Thread | None = None

    def forked(self) -> None:
        """In a child process: the parent's thread is not there; start afresh."""
        self.__init__()  # type: ignore[misc]

    def arm(self, at: float, sock: Any) -> _Watch:
        """Watch ``sock`` until ``at`` (``time.monotonic``)."""
        watch = _Watch(at, sock)
        with self._lock:  # the condition's own lock: notify may be called under it
            heapq.heappush(self._heap, (at, next(self._numbers), watch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="meshlib-requests-watchdog", daemon=True
                )
                self._thread.start()
            elif self._wakes is None or at < self._wakes:
                self._cond.notify()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        """Stop watching; whether the deadline had passed (the socket was shut)."""
        with self._lock:
            watch.sock = None
            return watch.fired

    def _run(self) -> None:
        heap = self._heap
        with self._cond:
            while True:
                now = time.monotonic()
                while heap and (heap[0][2].sock is None or heap[0][0] <= now):
                    watch = heapq.heappop(heap)[2]
                    sock = watch.sock
                    if sock is not None:
                        watch.fired = True
                        watch.sock = None
                        with contextlib.suppress(OSError):
                            # the plain socket's shutdown, under an SSLSocket too: it wakes a
                            # blocked read without touching the TLS object another thread uses
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
                if heap:
                    self._wakes = heap[0][0]
                    self._cond.wait(self._wakes - now)
                else:
                    self._wakes = None
                    self._cond.wait()


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHDOG.forked)


class _Watched(urllib3.connection.HTTPConnection):
    """A urllib3 connection whose response head is read within the try's deadline (the
    adapter's ``_sending.head_by``, ``time.monotonic``): when it passes, the read ends as a
    read timeout (urllib3's ``ReadTimeoutError``, requests' ``ReadTimeout``)."""

    def getresponse(self) -> Any:
        by = _SENDING.head_by
        sock = self.sock
        if by is None or sock is None:
            return super().getresponse()
        watch = _WATCHDOG.arm(by, sock)
        try:
            response = super().getresponse()
        except BaseException as exc:
            if _WATCHDOG.disarm(watch):
                raise TimeoutError("read timed out: the try's deadline passed") from exc
            raise
        if _WATCHDOG.disarm(watch):
            self.close()
            raise TimeoutError("read timed out: the try's deadline passed")
        return response


class _WatchedHTTPConnection(_Watched):
    """Plain text: ``_Watched``."""


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    """The app's own TLS: ``_Watched``."""


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# --------------------------------------------------------------------------- TLS origination


class _Sending(threading.local):
    """What the attempt under way on a thread is sent through (``HTTPAdapter.send`` asks the
    adapter for its pool, with the URL alone in requests before 2.32.2), and by when its
    response head must be in."""

    #: the mesh's TLS pool for the attempt (the mesh originates TLS)
    pool: _MeshTLSPool | None = None
    #: the app's own TLS: the host the app called, as SNI and as the certificate's name
    tls_host: str | None = None
    #: when the try ends (``time.monotonic``; None: nothing bounds it)
    head_by: float | None = None


#: One per thread, shared by the adapters (a thread sends one attempt at a time).
_SENDING = _Sending()


class _Refused(urllib3.exceptions.SSLError):
    """A handshake that failed or a peer the mesh refused, raised by a mesh connection's
    ``connect`` before a byte of the request is sent (urllib3 carries it to requests as the
    reason of its ``SSLError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _VerifiedConnection(_Watched, urllib3.connection.HTTPSConnection):
    """A urllib3 connection whose ``connect`` shakes hands with the origination's context and
    then checks the peer as the mesh does (its SPIFFE ID under ISTIO_MUTUAL, its SANs against
    ``subjectAltNames`` otherwise); on a refusal it closes and raises ``_Refused``."""

    #: the origination's handshake (``meshlib.security.outbound``), set per pool
    handshake: Any = None
    #: the verified peer (SPIFFE ID or matched SAN) of this connection
    mesh_peer: str | None = None

    def connect(self) -> None:
        from meshlib.errors import PeerIdentityError  # noqa: PLC0415
        from meshlib.security.outbound import _refused  # noqa: PLC0415
        from meshlib.security.verify import explain_handshake_failure  # noqa: PLC0415

        handshake = self.handshake
        try:
            super().connect()
        except ssl.SSLError as exc:
            self.close()
            raise _Refused(_refused(explain_handshake_failure(exc), handshake).reason) from exc
        try:
            self.mesh_peer = handshake.check(self.sock)
        except PeerIdentityError as exc:
            self.close()
            raise _Refused(_refused(exc, handshake).reason) from exc


class _MeshTLSPool(urllib3.HTTPSConnectionPool):
    """urllib3's pool of connections to one endpoint with one origination's TLS."""


class _TLSPools:
    """The adapter's urllib3 pools for the TLS the mesh originates: one per destination,
    origination and endpoint, made with the origination's context (the workload certificate in
    force, for ISTIO_MUTUAL: a rotated certificate gets a new pool, so new connections, and the
    old pool is closed). Connections are verified once and reused."""

    #: pools kept at most (endpoints come and go); the oldest is closed beyond it
    LIMIT = 512

    def __init__(self, adapter: MeshAdapter) -> None:
        self._adapter = adapter
        self._pools: dict[tuple[str, Origination, str, int], tuple[Any, _MeshTLSPool]] = {}
        self._contexts: dict[Origination, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def pool(
        self, outbound: Outbound, origination: Origination, endpoint: Endpoint
    ) -> _MeshTLSPool:
        key = (outbound.target.name, origination, endpoint.host, endpoint.port)
        certificate = None
        if origination.mode == "ISTIO_MUTUAL":
            certificate = self._certificate(outbound, origination)
        found = self._pools.get(key)
        if found is not None and found[0] is certificate:
            return found[1]
        with self._lock:
            found = self._pools.get(key)
            if found is not None and found[0] is certificate:
                return found[1]
            made = self._make(outbound, origination, endpoint, certificate)
            self._pools[key] = (certificate, made)
            stale = [found[1]] if found is not None else []
            while len(self._pools) > self.LIMIT:
                stale.append(self._pools.pop(next(iter(self._pools)))[1])
        for old in stale:
            old.close()  # idle connections now; those in use when their response is done
        return made

    @staticmethod
    def _certificate(outbound: Outbound, origination: Origination) -> Any:
        identity = outbound.identity()
        if identity is None:
            raise errors.UpstreamTLSError(
                f"{origination.source or 'tls'}: mode ISTIO_MUTUAL needs this workload's "
                "identity, and the Service document gives it none (spec.identity)"
            )
        return identity.certificate

    def _context(self, origination: Origination, certificate: Any) -> ssl.SSLContext:
        """The origination's context, of this adapter's own (urllib3 sets its ALPN and host
        name checking on the context it is given)."""
        if certificate is not None:
            from meshlib.security import tls  # noqa: PLC0415

            return tls.client_context(certificate)
        context = self._contexts.get(origination)
        if context is None:
            from meshlib.security.outbound import _files_context  # noqa: PLC0415

            context = self._contexts[origination] = _files_context(origination)
        return context

    def _make(
        self, outbound: Outbound, origination: Origination, endpoint: Endpoint, certificate: Any
    ) -> _MeshTLSPool:
        from meshlib.security.outbound import _Handshake  # noqa: PLC0415

        context = self._context(origination, certificate)
        adapter = self._adapter
        pool = _MeshTLSPool(
            endpoint.host,
            endpoint.port,
            maxsize=getattr(adapter, "_pool_maxsize", requests.adapters.DEFAULT_POOLSIZE),
            block=getattr(adapter, "_pool_block", requests.adapters.DEFAULT_POOLBLOCK),
            ssl_context=context,
            server_hostname=origination.sni,
            # OpenSSL checks the SNI name when the context says so (SIMPLE without
            # subjectAltNames); otherwise the handshake's check is the mesh's, not urllib3's
            assert_hostname=None if context.check_hostname else False,
        )
        pool.ConnectionCls = type(
            "MeshTLSConnection",
            (_VerifiedConnection,),
            {"handshake": _Handshake(origination, outbound.identity)},
        )
        return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools = [found[1] for found in self._pools.values()], {}
        for pool in pools:
            pool.close()


def _tls_refusal(call: RequestsCall, exc: BaseException) -> BaseException:
    """requests' error for a TLS attempt as the mesh's ``UpstreamTLSError`` when the handshake
    failed or the peer was refused (``_Refused``); ``exc`` itself otherwise."""
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    if not isinstance(reason, _Refused):
        return exc
    error = call.codec.error(errors.UpstreamTLSError, reason.message, request=call.request)
    error.__cause__ = exc
    return error


def _peer_of(response: requests.Response) -> str | None:
    """The verified peer of the connection a response came on."""
    connection = getattr(response.raw, "connection", None)
    peer = getattr(connection, "mesh_peer", None)
    return peer if isinstance(peer, str) else None


def _send_mirrors(call: RequestsCall, adapter: MeshAdapter) -> None:
    """Send copies of the request to the route's mirrors (through the mesh's httpx inner
    transport, or its httpx TLS pools for a destination that takes TLS, on the mirror threads);
    never waits for them."""
    mirrors = call.decision.mirrors
    if not mirrors or not call.replayable:
        return
    mesh = call.mesh
    original = call.request
    body = original.body
    content = body.encode("utf-8") if isinstance(body, str) else body
    for target, percentage in mirrors:
        if percentage < 100 and mesh.rng.random() * 100 >= percentage:
            continue
        cluster = mesh.cluster(target)
        endpoint = cluster.choose(None, ())
        url = httpx.URL(original.url or "")
        if endpoint is not None:
            url = url.copy_with(host=endpoint.host, port=endpoint.port)
        transport: httpx.BaseTransport | None = None
        outbound = cluster.outbound
        if outbound is not None:
            try:
                origination = origination_for(outbound, endpoint, call.view)
            except errors.UpstreamTLSError:
                continue  # TLS that cannot be originated for it: not sent
            if origination is not None:
                url = url.copy_with(scheme="https", port=url.port or 80)
                transport = adapter._mirror_secure(outbound).sync(outbound.target.name, origination)
        if transport is None:
            transport = adapter._mirror_transport()
        headers = httpx.Headers([(_text(k), _text(v)) for k, v in (original.headers or {}).items()])
        host = headers.get("host") or call.view.authority
        name, sep, port = host.partition(":")
        headers["host"] = f"{name}-shadow{sep}{port}"
        if target.host.endswith(MESH_SUFFIX):
            for key in PEER_KEYS:
                if key.decode() in headers:
                    del headers[key.decode()]
            for raw_name, _, value in stamp_of(mesh).entries:
                headers[raw_name.decode()] = value.decode()
        copy = httpx.Request(original.method or "GET", url, headers=headers, content=content)
        mesh.mirrors.send(transport, copy, call.deadline, cluster.name)


def session(mesh: Mesh) -> requests.Session:
    """A ``requests.Session`` with the mesh mounted for ``http://`` and ``https://``."""
    made = requests.Session()
    adapter = MeshAdapter(mesh)
    made.mount("http://", adapter)
    made.mount("https://", adapter)
    return made
