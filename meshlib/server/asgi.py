"""``MeshMiddleware``: the inbound side for any ASGI app (Starlette, FastAPI, Quart, bare ASGI).

```python
app = FastAPI()
app.add_middleware(MeshMiddleware)            # or: app = MeshMiddleware(app, mesh=my_mesh)
```

The request's context is current for the whole of the app's work on it, streamed response
bodies included, and in every task the app starts from it. ``lifespan`` and ``websocket`` scopes
pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from meshlib.context import REQUEST_ID
from meshlib.server.inbound import Inbound

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = REQUEST_ID.encode("latin-1")


class MeshMiddleware:
    """ASGI middleware: request context in, SERVER span and ``InboundFinished`` out, the
    ``x-request-id`` echoed on the response. ``mesh=None``: the default mesh
    (``meshlib.client.default_mesh()``), found at the first request."""

    def __init__(self, app: ASGIApp, mesh: Mesh | None = None) -> None:
        self.app = app
        self.inbound = Inbound(mesh)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = self.inbound
        mesh = inbound.mesh
        wanted = inbound.wanted(mesh)
        found: dict[str, str] = {}
        for key, value in scope.get("headers") or ():
            if key in wanted:
                name = key.decode("latin-1")
                text = value.decode("latin-1")
                found[name] = f"{found[name]}, {text}" if name in found else text
        served = inbound.begin(
            scope.get("method", "GET"),
            scope.get("path", "/"),
            found,
            mesh=mesh,
            scheme=scope.get("scheme"),
        )
        request_id = served.request_id.encode("latin-1")
        status = 500
        started = False
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                started = True
                headers = list(message.get("headers") or ())
                if not any(key.lower() == _REQUEST_ID for key, _ in headers):
                    headers.append((_REQUEST_ID, request_id))
                message = {**message, "headers": headers}
            elif kind == "http.response.body":
                sent += len(message.get("body") or b"")
            await send(message)

        attached = served.attach()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            error = exc
            if not started:
                status = 500
            raise
        finally:
            served.finish(status, sent, route=route_of(scope), error=error)
            served.detach(attached)


def route_of(scope: Scope) -> str | None:
    """The route template the app matched (Starlette and FastAPI record it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else None


__all__ = ["ASGIApp", "MeshMiddleware", "route_of"]
