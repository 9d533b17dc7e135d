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
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from meshlib import context
from meshlib.context import REQUEST_ID
from meshlib.server.inbound import HeaderSource, Inbound, Served

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
                served, view = _begin(inbound, args, kwargs)
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
            served, view = _begin(inbound, args, kwargs)
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
    inbound: Inbound, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Served, RequestView | None]:
    view = request_view(args, kwargs)
    if view is None:
        served = inbound.begin(UNKNOWN_METHOD, "/", _NO_HEADERS)
    else:
        served = inbound.begin(view.method, view.path, view.headers, scheme=view.scheme)
    _echo_later(view, served.request_id)
    return served, view


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
    "RequestView",
    "handler",
    "request_view",
    "route_of",
    "status_of",
    "status_of_error",
    "view_of",
]
