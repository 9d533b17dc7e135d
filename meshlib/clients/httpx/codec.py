"""``HttpxCodec``: httpx's ``Request`` and ``Response`` as the mesh's core reads and edits them
(``meshlib.pipeline.codec.Codec``).

Zero-copy where httpx allows it: the router's header map is read in one pass over the list
httpx keeps inside ``httpx.Headers`` (``meshlib.clients.httpx.headers``), an attempt's endpoint
replaces two fields of httpx's parsed URL without parsing it again, and the caller's request
object is edited in place for the attempts and given back as sent (``save`` / ``restore``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from meshlib.clients.httpx.errors import FLAVORS, outcome_of_error
from meshlib.clients.httpx.headers import entries, with_entries
from meshlib.pipeline.headers import apply_operations
from meshlib.pipeline.info import FLAGS_HEADER, MeshInfo
from meshlib.routing import RouteRequest
from meshlib.telemetry.peer import PEER_KEYS, PEER_METADATA

if TYPE_CHECKING:
    from meshlib.config.model import HeaderOperations
    from meshlib.discovery import Endpoint
    from meshlib.errors import MeshRequestError
    from meshlib.policies.retry import Outcome

__all__ = ["CODEC", "HttpxCodec", "as_https", "header_map", "view_of", "with_endpoint"]


class HttpxCodec:
    """httpx's requests and responses for the core (one shared instance: ``CODEC``)."""

    __slots__ = ()

    # ------------------------------------------------------------------ the request

    def view(self, request: httpx.Request) -> RouteRequest:
        return view_of(request, header_map(request.headers))

    def save(self, request: httpx.Request) -> tuple[httpx.URL, httpx.Headers, dict[str, Any]]:
        return request.url, request.headers, request.extensions

    def restore(
        self, request: httpx.Request, saved: tuple[httpx.URL, httpx.Headers, dict[str, Any]]
    ) -> None:
        request.url, request.headers, request.extensions = saved

    def carry(self, request: httpx.Request, carried: Mapping[str, str]) -> None:
        """On a copy of the caller's headers (``restore`` puts the caller's own back)."""
        headers = request.headers
        missing = [name for name in carried if name not in headers]
        if missing:
            headers = request.headers = headers.copy()
            for name in missing:
                headers[name] = carried[name]

    def url_of(self, request: httpx.Request) -> httpx.URL:
        return request.url

    def with_path(self, url: httpx.URL, path: str) -> httpx.URL:
        return url.copy_with(path=path)

    def point(self, request: httpx.Request, url: httpx.URL, endpoint: Endpoint | None) -> None:
        """The request sent to ``endpoint``'s address. An ``https://`` URL is the app's own
        TLS, which the mesh passes through as Envoy does: the handshake names the host the app
        called (SNI, and the name its certificate is checked against: httpx's
        ``sni_hostname`` extension), not the endpoint's address."""
        if endpoint is None:
            request.url = url
            return
        request.url = with_endpoint(url, endpoint)
        if url.scheme == "https" and "sni_hostname" not in request.extensions:
            request.extensions = {**request.extensions, "sni_hostname": url.host}

    def edit(
        self,
        request: httpx.Request,
        *,
        authority: str | None,
        operations: list[HeaderOperations],
        close: bool,
        remove: str | None,
    ) -> None:
        # the edits go to a copy: the caller's headers stay as sent (``restore`` puts them back)
        headers = request.headers = request.headers.copy()
        if authority:
            headers["host"] = authority
        for operation in operations:
            apply_header_ops(headers, operation)
        if close:
            headers["connection"] = "close"
        if remove is not None and remove in headers:
            del headers[remove]

    def stamp(self, request: httpx.Request, stamped: Sequence[tuple[bytes, bytes, bytes]]) -> None:
        """On a copy of the caller's headers (``restore`` puts the caller's own back)."""
        headers = request.headers
        raw = entries(headers)
        if raw is None:  # pragma: no cover - another httpx layout
            headers = request.headers = headers.copy()
            for key in PEER_KEYS:
                if key.decode() in headers:
                    del headers[key.decode()]
            for name, _, value in stamped:
                headers[name.decode()] = value.decode()
            return
        items = [entry for entry in raw if entry[1] not in PEER_KEYS]
        items.extend(stamped)
        request.headers = with_entries(items, headers)

    def request_headers(self, request: httpx.Request) -> httpx.Headers:
        return request.headers

    def replayable(self, request: httpx.Request) -> bool:
        return isinstance(request.stream, httpx.ByteStream)

    def caller_timeout(self, request: httpx.Request) -> float | None:
        own = request.extensions.get("timeout")
        read: float | None = own.get("read") if own else None
        return read

    def caller_bounds_all(self, request: httpx.Request) -> bool:
        """The caller's connect, write and pool timeouts are set and no longer than its read
        timeout (httpx's default ``Timeout(5.0)``: all four the same)."""
        own = request.extensions.get("timeout") or {}
        read = own.get("read")
        if read is None:
            return False
        for name in ("connect", "write", "pool"):
            value = own.get(name)
            if value is None or value > read:
                return False
        return True

    def bound(self, request: httpx.Request, timeout: float) -> dict[str, float | None]:
        extensions = dict(request.extensions)
        base = extensions.get("timeout") or {}
        connect, read, write, pool = (
            base.get("connect"),
            base.get("read"),
            base.get("write"),
            base.get("pool"),
        )
        extensions["timeout"] = timeouts = {
            "connect": timeout if connect is None else min(connect, timeout),
            "read": timeout if read is None else min(read, timeout),
            "write": timeout if write is None else min(write, timeout),
            "pool": timeout if pool is None else min(pool, timeout),
        }
        request.extensions = extensions
        return timeouts

    def body_bound(self, bound: dict[str, float | None], timeout: float | None) -> None:
        bound["read"] = timeout

    def trace_headers(self, request: httpx.Request, names: frozenset[str]) -> dict[str, str]:
        found = entries(request.headers)
        if found is None:  # pragma: no cover - another httpx layout: take the public way
            return {k.lower(): v for k, v in request.headers.items() if k.lower() in names}
        wanted = _encoded(names)
        carried: dict[str, str] = {}
        for _, lower, value in found:
            if lower in wanted:
                carried[lower.decode("latin-1")] = value.decode("latin-1")
        return carried

    def put_trace_headers(
        self, request: httpx.Request, names: frozenset[str], pairs: list[tuple[str, str]]
    ) -> None:
        """On a copy of the headers list (``restore`` puts the caller's own back); a name of
        ``pairs`` replaces the request's headers of that name."""
        headers = request.headers
        found = entries(headers)
        if found is None:  # pragma: no cover - another httpx layout
            headers = request.headers = headers.copy()
            for name in names | {key.lower() for key, _ in pairs}:
                if name in headers:
                    del headers[name]
            for key, value in pairs:
                headers[key] = value
            return
        drop = _encoded(names)
        added = [
            (key.encode("latin-1"), key.lower().encode("latin-1"), value.encode("latin-1"))
            for key, value in pairs
        ]
        if added:
            drop = drop | {entry[1] for entry in added}
        kept = [entry for entry in found if entry[1] not in drop]
        request.headers = with_entries(kept + added, headers)

    # ------------------------------------------------------------------ the response

    def status(self, response: httpx.Response) -> int:
        return response.status_code

    def response_headers(self, response: httpx.Response) -> httpx.Headers:
        return response.headers

    def reply(
        self, request: httpx.Request, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> httpx.Response:
        # a stream, as an upstream's response comes from a transport: the client reads it (built
        # with ``content=``, httpx would read it here, and the client's read would come on top);
        # the core has set its content-length
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    def location(
        self, scheme: str, host: str, port: int | None, path: str, query: str | None
    ) -> str:
        raw = query.encode("ascii", "replace") if query else None
        return str(httpx.URL(scheme=scheme, host=host, port=port, path=path, query=raw))

    def finish(
        self,
        response: httpx.Response,
        operations: list[HeaderOperations],
        flags: str,
        info: MeshInfo,
        local: bool,
    ) -> str | None:
        headers = response.headers
        for operation in operations:
            apply_header_ops(headers, operation)
        peer = None if local else take_upstream_headers(response)
        if flags:
            response.headers[FLAGS_HEADER] = flags
        response.extensions["mesh"] = info
        return peer

    def info(self, response: httpx.Response | dict[str, Any]) -> MeshInfo | None:
        """``response``: a response, or the extensions of one whose body is being read."""
        extensions = response if isinstance(response, dict) else response.extensions
        found = extensions.get("mesh")
        return found if isinstance(found, MeshInfo) else None

    def set_info(self, response: httpx.Response | dict[str, Any], info: MeshInfo) -> None:
        extensions = response if isinstance(response, dict) else response.extensions
        extensions["mesh"] = info

    # ------------------------------------------------------------------ errors

    def error(self, kind: type[MeshRequestError], message: str, **fields: Any) -> MeshRequestError:
        return FLAVORS.get(kind, kind)(message, **fields)

    def caller_timeout_error(self, request: httpx.Request, message: str) -> Exception:
        return httpx.ReadTimeout(message, request=request)

    def is_read_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout)

    def outcome_of_error(self, exc: BaseException, *, per_try_timeout: bool) -> Outcome:
        return outcome_of_error(exc, per_try_timeout=per_try_timeout)


CODEC = HttpxCodec()

_ENCODED: dict[frozenset[str], frozenset[bytes]] = {}


def _encoded(names: frozenset[str]) -> frozenset[bytes]:
    found = _ENCODED.get(names)
    if found is None:
        found = _ENCODED[names] = frozenset(name.encode("latin-1") for name in names)
    return found


# --------------------------------------------------------------------------- reading a request


def header_map(headers: httpx.Headers) -> dict[str, str]:
    """Request headers as a plain dict with lowercase names, values of repeated headers joined
    with ", " as httpx and Envoy join them. One pass, so that each later lookup — every header
    match of every route, the timeout override — costs a dict probe, not a scan of the list."""
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout: take the public way
        return dict(headers.items())
    if getattr(headers, "_encoding", None) in _ASCII_SUPERSETS:
        try:  # all ASCII, as headers nearly always are: every such encoding reads the same
            found = {key.decode("ascii"): value.decode("ascii") for _, key, value in raw}
        except UnicodeDecodeError:
            found = _decoded(raw, headers.encoding)
    else:
        found = _decoded(raw, headers.encoding)
    if len(found) != len(raw):
        return dict(headers.items())
    return found


#: Encodings httpx picks for header values (None: not picked yet) that read ASCII as ASCII.
_ASCII_SUPERSETS = frozenset({None, "ascii", "utf-8", "iso-8859-1"})


def _decoded(raw: list[tuple[bytes, bytes, bytes]], encoding: str) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode(encoding) for _, key, value in raw}


def view_of(request: httpx.Request, headers: dict[str, str]) -> RouteRequest:
    """The router's view of an httpx request.

    Filled in directly rather than through ``RouteRequest.__init__``: httpx has already
    normalised what that would (the method is upper case, the host lower case), and a request
    from an httpx client always carries its ``host`` header, the authority the router sees."""
    url = request.url
    try:  # httpx keeps the parsed URL as a named tuple: read it once, not through 5 properties
        scheme, _, host, port, path, query, _ = url._uri_reference
    except (AttributeError, ValueError):  # pragma: no cover - another httpx layout
        scheme, host, port, path = url.scheme, url.host, url.port, url.path
        query = url.query.decode("ascii", "replace")
    else:
        if host.startswith("xn--"):  # IDNA: the router sees the host as written
            host = url.host
        elif ":" in host:  # an IPv6 literal: httpx keeps its hex digits as written
            host = host.lower()
        if "%" in path:  # the router sees the path decoded, as httpx's URL.path gives it
            path = url.path
    view = _new_view(RouteRequest)
    view.method = request.method
    view.scheme = scheme
    view.host = host
    view.port = port if port is not None else (443 if scheme == "https" else 80)
    view.path = path or "/"
    view.query = query or ""
    view.headers = headers
    authority = headers.get("host")
    if authority is None:
        authority = host if port is None else f"{host}:{port}"
    view.authority = authority
    view._params = None
    return view


_new_view = object.__new__


# --------------------------------------------------------------------------- URLs


def with_endpoint(url: httpx.URL, endpoint: Endpoint) -> httpx.URL:
    """``url`` sent to ``endpoint``: host and port replaced without parsing the URL again (httpx
    keeps a parsed URL as a named tuple; replacing two fields of it is all this takes)."""
    try:
        scheme, userinfo, _, _, path, query, fragment = ref = url._uri_reference
    except (AttributeError, ValueError):  # pragma: no cover - another httpx layout
        return url.copy_with(host=endpoint.host, port=endpoint.port)
    result = _new_url(httpx.URL)
    result._uri_reference = _new_tuple(
        type(ref), (scheme, userinfo, endpoint.host, endpoint.port, path, query, fragment)
    )
    return result


def as_https(url: httpx.URL) -> httpx.URL:
    """``url`` with scheme ``https`` and its port kept (80 when it had none): ``with_endpoint``'s
    way, without parsing the URL again (``copy_with`` would, at a cost per call)."""
    try:
        _, userinfo, host, port, path, query, fragment = ref = url._uri_reference
    except (AttributeError, ValueError):  # pragma: no cover - another httpx layout
        return url.copy_with(scheme="https", port=url.port or 80)
    result = _new_url(httpx.URL)
    result._uri_reference = _new_tuple(
        type(ref), ("https", userinfo, host, port or 80, path, query, fragment)
    )
    return result


_new_url = object.__new__
_new_tuple = tuple.__new__


# --------------------------------------------------------------------------- headers


def apply_header_ops(headers: httpx.Headers, ops: Any) -> None:
    """Istio's header operations on ``headers`` (``meshlib.pipeline.headers.apply_operations``)."""

    def drop(name: str) -> None:
        if name in headers:
            del headers[name]

    def put(name: str, value: str) -> None:
        _set_header(headers, name, value)

    apply_operations(ops, headers.get, put, drop)


def _set_header(headers: httpx.Headers, name: str, value: str) -> None:
    """Set a configured header, its value as Envoy sends it: the UTF-8 bytes of a value that
    is not ASCII (which ``httpx.Headers`` would encode as ASCII once it has seen only ASCII)."""
    if value.isascii():
        headers[name] = value
        return
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout
        headers[name] = value
        return
    key = name.lower().encode("ascii")  # a token: checked when the config was loaded
    raw[:] = [entry for entry in raw if entry[1] != key]
    raw.append((name.encode("ascii"), key, value.encode("utf-8")))


def take_upstream_headers(response: httpx.Response) -> str | None:
    """Remove from an upstream's response the headers only the mesh may set: its
    ``x-envoy-peer-metadata`` and id (as Istio's sidecar removes them before the app sees the
    response), and any ``x-mesh-response-flags`` (the mesh's own record of what it did: an
    upstream's copy would pass for the mesh's). Returns the peer metadata, None when not sent."""
    headers = response.headers
    raw = entries(headers)
    if raw is None:  # pragma: no cover - another httpx layout
        value: str | None = headers.get(PEER_METADATA)
        for name in ("x-envoy-peer-metadata-id", PEER_METADATA, FLAGS_HEADER):
            if name in headers:
                del headers[name]
        return value
    for entry in raw:
        if entry[1] in _UPSTREAM_TAKEN:
            break
    else:
        return None
    found = None
    kept = []
    for entry in raw:
        if entry[1] in _UPSTREAM_TAKEN:
            if entry[1] == _PEER_METADATA_KEY:
                found = entry[2].decode("latin-1")
        else:
            kept.append(entry)
    raw[:] = kept
    return found


_PEER_METADATA_KEY = PEER_METADATA.encode()
#: The response headers of an upstream the mesh removes (see ``take_upstream_headers``).
_UPSTREAM_TAKEN = PEER_KEYS | {FLAGS_HEADER.encode()}
