"""``@handler``: the inbound side for one handler function, sync or async, in any framework.

```python
from meshlib import client, handler

@app.route("/productpage")              # Flask: the request is flask.request
@handler
def productpage():
    return client.get("http://reviews:9080/reviews/0").text

@app.get("/reviews/{id}")               # Starlette / FastAPI: a Request argument
@handler
async def reviews(request: Request, id: int): ...

@handler                                # anything else: a mapping of the request's headers
def on_message(headers: dict[str, str]): ...
```

Where the request's headers come from, first found:

1. an argument (positional or keyword) that is a request object — anything with ``method`` and a
   ``headers`` mapping: Starlette/FastAPI ``Request``, Flask/Werkzeug ``Request``, Django
   ``HttpRequest``, aiohttp ``Request``…;
2. a first positional argument that is a mapping: the headers themselves (any case);
3. Flask's current ``flask.request``, when the handler runs in a Flask request;
4. none: the handler still gets a context, with a new request id.

What it reports: the status of the returned response (``status_code``/``status``, the status of
a Flask ``(body, status)`` tuple, 200 otherwise) or of a raised HTTP exception (``code`` /
``status_code``, 500 otherwise). ``x-request-id`` is echoed on a returned response object (and
on any Flask response). The context lasts while the function runs: a body streamed after it
returns, say a Starlette ``StreamingResponse``, runs without it — use ``MeshMiddleware`` there. A
handler called while another inbound request's context is current (under the middleware, or
from another handler) just runs: the outer one serves the request.

With inbound security (``meshlib.server.guard``) each call is checked before the function runs.
A refused request does not run it: the decorator returns the framework's own response (Starlette,
Werkzeug/Flask, Django, aiohttp) with the mesh's status and body, or raises ``RequestRefusedError``
when it cannot tell the framework (a mapping of headers). The client certificate is read from
the request's ASGI scope or WSGI environ (Django's ``META``); the header changes are made there
too, which the framework's request object shows when it reads them from it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from meshlib import context
from meshlib.context import REQUEST_ID
from meshlib.errors import MeshError
from meshlib.server.asgi import request_of_scope
from meshlib.server.guard import (
    InboundRequest,
    Verdict,
    apply_to_asgi_scope,
    apply_to_environ,
)
from meshlib.server.inbound import HeaderSource, Inbound, Served
from meshlib.server.wsgi import request_of_environ

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

F = TypeVar("F", bound=Callable[..., Any])

UNKNOWN_METHOD = "_OTHER"  # OpenTelemetry's name for a method not known


@dataclass(frozen=True, slots=True)
class RequestView:
    """What ``@handler`` needs of a request object."""

    method: str
    path: str
    headers: HeaderSource
    scheme: str | None
    request: Any  # the framework's request object, or None


@overload
def handler(fn: F, /) -> F: ...


@overload
def handler(*, mesh: Mesh | None = None) -> Callable[[F], F]: ...


def handler(fn: F | None = None, /, *, mesh: Mesh | None = None) -> F | Callable[[F], F]:
    """Serve each call of ``fn`` as an inbound request of ``mesh`` (default: the default mesh):
    its context is current while ``fn`` runs, so every call it makes through meshlib carries
    ``x-request-id``, the ``propagateHeaders`` and the trace on."""

    def decorate(fn: F) -> F:
        inbound = Inbound(mesh)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def serve_async(*args: Any, **kwargs: Any) -> Any:
                if context.current() is not None:
                    return await fn(*args, **kwargs)
                mesh = inbound.mesh
                view = request_view(args, kwargs)
                guard = inbound.guard(mesh)
                verdict = None
                if guard is not None:
                    verdict = await guard.acheck(_request_of(view))
                served = _begin(inbound, mesh, view, verdict)
                if verdict is not None and not verdict.allowed:
                    return _refuse(served, view, verdict)
                attached = served.attach()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    served.finish(status_of_error(exc), route=route_of(view), error=exc)
                    raise
                else:
                    _answered(served, view, result)
                    return result
                finally:
                    served.detach(attached)

            return cast(F, serve_async)

        @functools.wraps(fn)
        def serve(*args: Any, **kwargs: Any) -> Any:
            if context.current() is not None:
                return fn(*args, **kwargs)
            mesh = inbound.mesh
            view = request_view(args, kwargs)
            guard = inbound.guard(mesh)
            verdict = None
            if guard is not None:
                verdict = guard.check(_request_of(view))
            served = _begin(inbound, mesh, view, verdict)
            if verdict is not None and not verdict.allowed:
                return _refuse(served, view, verdict)
            attached = served.attach()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                served.finish(status_of_error(exc), route=route_of(view), error=exc)
                raise
            else:
                _answered(served, view, result)
                return result
            finally:
                served.detach(attached)

        return cast(F, serve)

    return decorate(fn) if fn is not None else decorate


def _begin(
    inbound: Inbound, mesh: Mesh, view: RequestView | None, verdict: Verdict | None
) -> Served:
    principal = audit = None
    if verdict is not None:
        principal, audit = verdict.principal, verdict.audit_policy
        if view is not None:
            if verdict.allowed:
                _apply(view, verdict)
            if verdict.remove:
                view = dataclasses.replace(view, headers=_Without(view.headers, verdict.remove))
    if view is None:
        served = inbound.begin(
            UNKNOWN_METHOD, "/", _NO_HEADERS, mesh=mesh, principal=principal, audit_policy=audit
        )
    else:
        served = inbound.begin(
            view.method,
            view.path,
            view.headers,
            mesh=mesh,
            scheme=view.scheme,
            principal=principal,
            audit_policy=audit,
        )
    _echo_later(view, served.request_id)
    return served


class _Without:
    """A request's headers less the names an untrusted caller may not set."""

    __slots__ = ("_headers", "_names")

    def __init__(self, headers: HeaderSource, names: frozenset[str]) -> None:
        self._headers = headers
        self._names = names

    def get(self, key: str, /) -> str | None:
        return None if key in self._names else self._headers.get(key)


class RequestRefusedError(MeshError):
    """``@handler`` refused a request (401, 403, …) and cannot make a response of the handler's
    framework: answer ``status`` with ``body`` and ``headers``."""

    def __init__(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        super().__init__(body.decode("utf-8", "replace"))
        self.status = status
        self.body = body
        self.headers = headers


def _request_of(view: RequestView | None) -> InboundRequest:
    """What the guard needs of the request: from its ASGI scope or WSGI environ when the
    framework keeps one, else from its method, path and headers."""
    request = view.request if view is not None else None
    scope = getattr(request, "scope", None)
    if isinstance(scope, Mapping) and scope.get("type") == "http":
        return request_of_scope(scope)
    environ = getattr(request, "environ", None)
    if not isinstance(environ, Mapping):
        environ = getattr(request, "META", None)  # Django
    if isinstance(environ, Mapping) and "REQUEST_METHOD" in environ:
        return request_of_environ(environ)
    if view is None:
        return InboundRequest(UNKNOWN_METHOD, "/", "", ())
    headers = view.headers
    items = headers.items() if isinstance(headers, Mapping) else ()
    path, _, query = view.path.partition("?")
    return InboundRequest(
        view.method,
        path or "/",
        query,
        [(str(k).lower(), str(v)) for k, v in items],
        scheme=view.scheme or "http",
    )


def _apply(view: RequestView, verdict: Verdict) -> None:
    """The verdict's path and header changes, made where the framework reads the request."""
    request = view.request
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and scope.get("type") == "http":
        changed = apply_to_asgi_scope(scope, verdict)
        if changed is not scope:
            scope.update(changed)
        return
    environ = getattr(request, "environ", None)
    if not isinstance(environ, dict):
        environ = getattr(request, "META", None)
    if isinstance(environ, dict) and "REQUEST_METHOD" in environ:
        apply_to_environ(environ, verdict)


def _refuse(served: Served, view: RequestView | None, verdict: Verdict) -> Any:
    """The mesh's answer to a refused request, as the framework's response; the function is
    not called."""
    served.finish(verdict.status, len(verdict.body), details=verdict.details)
    headers = (*verdict.headers, (REQUEST_ID, served.request_id))
    request = view.request if view is not None else None
    module = type(request).__module__.split(".", 1)[0] if request is not None else ""
    if module in ("starlette", "fastapi"):
        from starlette.responses import Response  # noqa: PLC0415

        return Response(verdict.body, verdict.status, headers=dict(headers))
    if module in ("flask", "werkzeug"):
        from werkzeug.wrappers import Response as WerkzeugResponse  # noqa: PLC0415

        return WerkzeugResponse(verdict.body, verdict.status, headers=list(headers))
    if module == "django":
        http = importlib.import_module("django.http")
        response = http.HttpResponse(verdict.body, status=verdict.status)
        for name, value in headers:
            response[name] = value
        return response
    if module == "aiohttp":
        from aiohttp import web  # noqa: PLC0415

        return web.Response(body=verdict.body, status=verdict.status, headers=dict(headers))
    raise RequestRefusedError(verdict.status, verdict.body, headers)


def _answered(served: Served, view: RequestView | None, result: Any) -> None:
    _echo(result, served.request_id)
    served.finish(status_of(result), length_of(result), route=route_of(view))


# --------------------------------------------------------------------------- reading requests


def request_view(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> RequestView | None:
    """The inbound request among a handler's arguments (see the module doc for the order)."""
    for value in (*args, *kwargs.values()):
        view = view_of(value)
        if view is not None:
            return view
    if args and isinstance(args[0], Mapping):
        lowered = {str(k).lower(): str(v) for k, v in args[0].items()}
        return RequestView(UNKNOWN_METHOD, "/", lowered, None, None)
    flask = sys.modules.get("flask")
    if flask is not None and flask.has_request_context():
        return view_of(flask.request._get_current_object())
    return None


def view_of(request: Any) -> RequestView | None:
    """A request object's method, path and headers, or None if it is not one."""
    headers = getattr(request, "headers", None)
    method = getattr(request, "method", None)
    if headers is None or not isinstance(method, str) or not hasattr(headers, "get"):
        return None
    scope = getattr(request, "scope", None)
    if isinstance(scope, Mapping) and "path" in scope:  # Starlette / FastAPI
        return RequestView(method, str(scope["path"]), headers, scope.get("scheme"), request)
    path = getattr(request, "path", None)
    scheme = getattr(request, "scheme", None)
    return RequestView(
        method,
        path if isinstance(path, str) else "/",
        headers,
        scheme if isinstance(scheme, str) else None,
        request,
    )


def route_of(view: RequestView | None) -> str | None:
    """The route template the framework matched: Flask's ``url_rule``, Starlette's route."""
    if view is None or view.request is None:
        return None
    request = view.request
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    if isinstance(rule, str):
        return rule
    scope = getattr(request, "scope", None)
    if isinstance(scope, Mapping):
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
    return None


class _NoHeaders:
    __slots__ = ()

    def get(self, key: str, /) -> str | None:
        return None


_NO_HEADERS = _NoHeaders()


# --------------------------------------------------------------------------- reading results


def status_of(result: Any) -> int:
    """The status of what a handler returned."""
    for name in ("status_code", "status"):
        status = getattr(result, name, None)
        if isinstance(status, int):
            return status
    if isinstance(result, tuple):
        for item in result[1:]:
            if isinstance(item, int):
                return item
    return 200


def status_of_error(exc: BaseException) -> int:
    """The status an HTTP exception stands for (Werkzeug's ``code``, Starlette's
    ``status_code``); 500 for any other exception."""
    for name in ("code", "status_code"):
        status = getattr(exc, name, None)
        if isinstance(status, int) and 100 <= status <= 599:
            return status
    return 500


def length_of(result: Any) -> int | None:
    if isinstance(result, (bytes, bytearray)):
        return len(result)
    body = getattr(result, "body", None)
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    length = getattr(result, "content_length", None)
    return length if isinstance(length, int) else None


def _echo(result: Any, request_id: str) -> None:
    headers = getattr(result, "headers", None)
    if headers is None or not hasattr(headers, "__setitem__"):
        return
    try:
        if REQUEST_ID not in headers:
            headers[REQUEST_ID] = request_id
    except Exception:  # immutable or unusual headers: not echoed
        pass


def _echo_later(view: RequestView | None, request_id: str) -> None:
    """In a Flask request, echo the id on whatever response Flask makes of the result."""
    if view is None or view.request is None or not hasattr(view.request, "url_rule"):
        return
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_request_context():
        return

    def echo(response: Any) -> Any:
        _echo(response, request_id)
        return response

    flask.after_this_request(echo)


__all__ = [
    "RequestRefusedError",
    "RequestView",
    "handler",
    "request_view",
    "route_of",
    "status_of",
    "status_of_error",
    "view_of",
]
