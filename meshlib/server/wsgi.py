"""``MeshWSGIMiddleware``: the inbound side for any WSGI app (Flask, Django, Bottle, bare WSGI).

```python
app = Flask(__name__)
app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app)     # or wrap any WSGI callable
```

The request runs in a copy of the server thread's context, so nothing of it stays behind on the
thread; the response body is produced in that copy too (generators included), and the request
is reported when the server closes the body, as PEP 3333 has every server do.

With inbound security (``meshlib.server.guard``) the request is checked first: the client's
certificate is read from ``SSL_CLIENT_CERT`` (mod_ssl's name; ``SSL_CLIENT_CERT_CHAIN_<n>`` for
the rest of the chain), a refusal is answered here, and the environ the app gets has the
normalised path (``PATH_INFO``) and the JWT header changes, without the headers an untrusted
caller may not set.

The caller's workload metadata (Istio's ``x-envoy-peer-metadata`` and its id) is read from a
trusted caller and removed from the environ the app gets; the response to a caller that sent it
carries this workload's own.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meshlib.context import REQUEST_ID
from meshlib.server.guard import InboundRequest, apply_to_environ, headers_of_environ
from meshlib.server.inbound import Inbound, Served
from meshlib.telemetry.peer import PEER_HEADERS, stamp_of

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@functools.lru_cache(maxsize=256)
def environ_key(name: str) -> str:
    """The WSGI environ key of a header (``end-user`` → ``HTTP_END_USER``)."""
    if name in ("content-length", "content-type"):
        return name.upper().replace("-", "_")
    return "HTTP_" + name.upper().replace("-", "_")


class EnvironHeaders:
    """A WSGI environ's request headers, looked up by lowercase name."""

    __slots__ = ("environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self.environ = environ

    def get(self, key: str, /) -> str | None:
        value = self.environ.get(environ_key(key))
        return value if isinstance(value, str) else None


class MeshWSGIMiddleware:
    """WSGI middleware: request context in, SERVER span and ``InboundFinished`` out, the
    ``x-request-id`` echoed on the response. ``mesh=None``: the default mesh
    (``meshlib.client.default_mesh()``), found at the first request."""

    def __init__(self, app: WSGIApp, mesh: Mesh | None = None) -> None:
        self.app = app
        self.inbound = Inbound(mesh)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        own = contextvars.copy_context()
        return own.run(self._serve, own, environ, start_response)

    def _serve(
        self, own: contextvars.Context, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        inbound = self.inbound
        mesh = inbound.mesh
        guard = inbound.guard(mesh)
        verdict = None
        if guard is not None:
            verdict = guard.check(request_of_environ(environ))
            apply_to_environ(environ, verdict)
        path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}" or "/"
        served = inbound.begin(
            str(environ.get("REQUEST_METHOD", "GET")),
            path,
            EnvironHeaders(environ),
            mesh=mesh,
            scheme=environ.get("wsgi.url_scheme"),
            principal=verdict.principal if verdict is not None else None,
            audit_policy=verdict.audit_policy if verdict is not None else None,
        )
        if verdict is not None and not verdict.allowed:
            reason = _REASONS.get(verdict.status, "Forbidden")
            start_response(
                f"{verdict.status} {reason}",
                [
                    *verdict.headers,
                    ("content-length", str(len(verdict.body))),
                    (REQUEST_ID, served.request_id),
                ],
            )
            served.finish(verdict.status, len(verdict.body), details=verdict.details)
            return [verdict.body]
        exchange: tuple[tuple[str, str], ...] = ()
        if _PEER_KEY in environ or _PEER_ID_KEY in environ:
            environ.pop(_PEER_KEY, None)
            environ.pop(_PEER_ID_KEY, None)
            if served.exchange:
                stamp = stamp_of(mesh)
                exchange = ((_PEER_ID, stamp.id_value), (_PEER, stamp.value))
        served.enter()
        body = _Body(own, served)

        def start_with_id(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            code = status.split(" ", 1)[0]
            body.status = int(code) if code.isdigit() else 500
            body.route = route_of(environ)  # Flask clears its request from the environ later
            if not any(name.lower() == REQUEST_ID for name, _ in headers):
                headers = [*headers, (REQUEST_ID, served.request_id)]
            if exchange:
                headers = [h for h in headers if h[0].lower() not in PEER_HEADERS]
                headers += exchange
            if exc_info is not None:
                write = start_response(status, headers, exc_info)
            else:
                write = start_response(status, headers)

            def counted(data: bytes) -> object:
                body.sent += len(data)
                return write(data)

            return counted

        try:
            body.result = self.app(environ, start_with_id)
        except BaseException as exc:
            body.done = True
            served.finish(500, body.sent, route=body.route, error=exc)
            raise
        return body


_PEER_ID, _PEER = "x-envoy-peer-metadata-id", "x-envoy-peer-metadata"
_PEER_ID_KEY, _PEER_KEY = environ_key(_PEER_ID), environ_key(_PEER)


class _Body:
    """The app's response body, produced in the request's context; reports on ``close``."""

    __slots__ = ("_iterator", "_own", "done", "result", "route", "sent", "served", "status")

    def __init__(self, own: contextvars.Context, served: Served) -> None:
        self._own = own
        self.served = served
        self.route: str | None = None
        self.result: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] | None = None
        self.status = 500
        self.sent = 0
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = self._own.run(iter, self.result)
        try:
            chunk: bytes = self._own.run(next, iterator)
        except StopIteration:
            raise
        except BaseException as exc:
            self.status = 500
            self.finish(exc)
            raise
        self.sent += len(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                self._own.run(close)
        finally:
            self.finish(None)

    def finish(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self._own.run(self.served.finish, self.status, self.sent, route=self.route, error=error)


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    431: "Request Header Fields Too Large",
}


def request_of_environ(environ: Mapping[str, Any]) -> InboundRequest:
    """What the guard needs of a WSGI request. The path as received is ``REQUEST_URI`` or
    ``RAW_URI`` when the server gives one (percent-encoding kept), else it is rebuilt from
    ``SCRIPT_NAME`` and ``PATH_INFO``."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        target = raw.partition("?")[0]
    else:
        path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}" or "/"
        target = quote(path.encode("latin-1", "replace"), safe="/:@!$&'()*+,;=-._~")
    port = str(environ.get("SERVER_PORT") or "")
    chain: tuple[str, ...] = ()
    if environ.get("SSL_CLIENT_CERT"):
        from meshlib.security.peer import chain_of_environ  # noqa: PLC0415

        chain = chain_of_environ(environ)
    return InboundRequest(
        method=str(environ.get("REQUEST_METHOD", "GET")),
        target=target,
        query=str(environ.get("QUERY_STRING") or ""),
        headers=headers_of_environ(environ),
        scheme=str(environ.get("wsgi.url_scheme") or "http"),
        peer=environ.get("REMOTE_ADDR") or None,
        chain=chain,
        local_address=environ.get("SERVER_ADDR") or None,
        port=int(port) if port.isdigit() else 0,
    )


def route_of(environ: Mapping[str, Any]) -> str | None:
    """The URL rule a Flask (Werkzeug routing) app matched, while its request is in the environ."""
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    return rule if isinstance(rule, str) else None


__all__ = [
    "EnvironHeaders",
    "MeshWSGIMiddleware",
    "WSGIApp",
    "environ_key",
    "request_of_environ",
    "route_of",
]
