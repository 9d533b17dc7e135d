"""``MeshMiddleware``: the inbound side for any ASGI app (Starlette, FastAPI, Quart, bare ASGI).

```python
app = FastAPI()
app.add_middleware(MeshMiddleware)            # or: app = MeshMiddleware(app, mesh=my_mesh)
```

The request's context is current for the whole of the app's work on it, streamed response
bodies included, and in every task the app starts from it. ``lifespan`` and ``websocket`` scopes
pass through untouched.

With inbound security (``meshlib.server.guard``) the request is checked first: the client's
certificate chain is read from the ASGI TLS extension (``scope["extensions"]["tls"]``), a
refusal (400, 401, 403 ``RBAC: access denied``) is answered here, and the app gets a scope with
the normalised path and the JWT header changes, without the headers an untrusted caller may not
set.

The caller's workload metadata (Istio's ``x-envoy-peer-metadata`` and its id) is read from a
trusted caller and removed from the scope the app gets; the response to a caller that sent it
carries this workload's own (as Istio's sidecars exchange it).

Under a server of its own (uvicorn, Hypercorn, Granian...), the middleware can register the
service in the mesh's store (``spec.store: etcd://...``) for the server's lifespan:
``MeshMiddleware(app, register="10.0.0.5:8000")``. The address must be given, since the
middleware cannot see what the server bound. It registers once the app's lifespan startup is
complete (or at the startup event, when the app does not speak the lifespan protocol), and
revokes the lease at the shutdown event, before the app's own shutdown. A server with the
lifespan protocol off never sends those events: nothing is registered then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meshlib.context import REQUEST_ID
from meshlib.server.guard import InboundRequest, Verdict, apply_to_asgi_scope
from meshlib.server.inbound import Inbound
from meshlib.telemetry.peer import PEER_KEYS, PEER_METADATA, PEER_METADATA_ID, stamp_of

if TYPE_CHECKING:
    from meshlib.mesh import Mesh
    from meshlib.store.registration import Registration

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = REQUEST_ID.encode("latin-1")

log = logging.getLogger("meshlib.server")


class MeshMiddleware:
    """ASGI middleware: request context in, SERVER span and ``InboundFinished`` out, the
    ``x-request-id`` echoed on the response. ``mesh=None``: the default mesh
    (``meshlib.client.default_mesh()``), found at the first request.

    ``register="host:port"``: this service's endpoint in the mesh's store for the server's
    lifespan, with the config's labels plus ``labels``, on a lease of ``ttl`` seconds (see the
    module); ``registration`` is the ``Registration`` while it lasts."""

    def __init__(
        self,
        app: ASGIApp,
        mesh: Mesh | None = None,
        *,
        register: str | None = None,
        labels: Mapping[str, str] | None = None,
        ttl: int = 10,
    ) -> None:
        self.app = app
        self.inbound = Inbound(mesh)
        self.register = register
        self.labels = dict(labels or {})
        self.ttl = ttl
        self.registration: Registration | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.register is not None:
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        inbound = self.inbound
        mesh = inbound.mesh
        wanted = inbound.wanted(mesh)
        guard = inbound.guard(mesh)
        verdict: Verdict | None = None
        if guard is not None:
            verdict = await guard.acheck(request_of_scope(scope))
            dropped = verdict.remove
            if verdict.allowed:
                scope = apply_to_asgi_scope(scope, verdict)
        found: dict[str, str] = {}
        for key, value in scope.get("headers") or ():
            if key in wanted:
                name = key.decode("latin-1")
                if verdict is not None and name in dropped:
                    continue
                text = value.decode("latin-1")
                found[name] = f"{found[name]}, {text}" if name in found else text
        served = inbound.begin(
            scope.get("method", "GET"),
            scope.get("path", "/"),
            found,
            mesh=mesh,
            scheme=scope.get("scheme"),
            principal=verdict.principal if verdict is not None else None,
            audit_policy=verdict.audit_policy if verdict is not None else None,
        )
        if verdict is not None and not verdict.allowed:
            await _refuse(send, verdict, served.request_id.encode("latin-1"))
            served.finish(verdict.status, len(verdict.body), details=verdict.details)
            return
        exchange: tuple[tuple[bytes, bytes], ...] = ()
        if PEER_METADATA in found or PEER_METADATA_ID in found:
            scope = _without_peer_metadata(scope)
            if served.exchange:
                exchange = stamp_of(mesh).pairs
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
                if exchange:
                    headers = [h for h in headers if h[0].lower() not in PEER_KEYS]
                    headers += exchange
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

    # ------------------------------------------------------------------ registration

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's lifespan, with the registration after its startup and before its
        shutdown; the middleware answers the events itself when the app does not."""
        received: list[str] = []

        async def app_receive() -> Message:
            message = await receive()
            received.append(str(message.get("type")))
            if message.get("type") == "lifespan.shutdown":
                await self._deregister()
            return message

        async def app_send(message: Message) -> None:
            if message.get("type") == "lifespan.startup.complete":
                problem = await self._register()
                if problem is not None:
                    message = {"type": "lifespan.startup.failed", "message": problem}
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if received:  # the app's own lifespan failed: the server says so
                await self._deregister()
                raise
            log.debug("the app does not speak the lifespan protocol: the mesh answers it")
        else:
            if received:
                await self._deregister()
                return
        # the app left the lifespan to others: startup, then shutdown, answered here
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                problem = await self._register()
                if problem is not None:
                    await send({"type": "lifespan.startup.failed", "message": problem})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                await self._deregister()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _register(self) -> str | None:
        """Register ``self.register``; what is wrong when it cannot be (no etcd store, a bad
        address). A store that does not answer is no error: it is retried in the background."""
        from meshlib.errors import StoreError  # noqa: PLC0415

        assert self.register is not None
        try:
            mesh = self.inbound.mesh
            self.registration = await asyncio.to_thread(
                mesh.register, self.register, self.labels, self.ttl
            )
        except (StoreError, ValueError) as exc:
            log.error("cannot register %s: %s", self.register, exc)
            return f"meshlib: cannot register {self.register}: {exc}"
        return None

    async def _deregister(self) -> None:
        registration, self.registration = self.registration, None
        if registration is not None:
            await asyncio.to_thread(registration.close)


def _without_peer_metadata(scope: Scope) -> Scope:
    """A copy of the scope without the caller's metadata exchange headers."""
    scope = dict(scope)
    scope["headers"] = [h for h in scope.get("headers") or () if h[0].lower() not in PEER_KEYS]
    return scope


async def _refuse(send: Send, verdict: Verdict, request_id: bytes) -> None:
    """The mesh's own answer to a refused request (Envoy's local reply)."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in verdict.headers]
    headers += [
        (b"content-length", str(len(verdict.body)).encode()),
        (_REQUEST_ID, request_id),
    ]
    await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
    await send({"type": "http.response.body", "body": verdict.body})


def request_of_scope(scope: Mapping[str, Any]) -> InboundRequest:
    """What the guard needs of an ASGI request."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        target = raw.decode("latin-1").partition("?")[0]
    else:
        target = quote(str(scope.get("path") or "/"), safe="/:@!$&'()*+,;=-._~%")
    client = scope.get("client")
    server = scope.get("server")
    query = scope.get("query_string") or b""
    return InboundRequest(
        method=str(scope.get("method", "GET")),
        target=target,
        query=query.decode("latin-1") if isinstance(query, bytes) else str(query),
        headers=[
            (k.decode("latin-1").lower(), v.decode("latin-1"))
            for k, v in scope.get("headers") or ()
        ],
        scheme=str(scope.get("scheme") or "http"),
        peer=str(client[0]) if client else None,
        chain=chain_of_scope(scope),
        local_address=str(server[0]) if server else None,
        port=int(server[1]) if server and len(server) > 1 and server[1] else 0,
    )


def chain_of_scope(scope: Mapping[str, Any]) -> tuple[str, ...]:
    """The client certificate chain of the ASGI TLS extension (PEM, leaf first)."""
    extensions = scope.get("extensions")
    if not extensions or "tls" not in extensions:
        return ()
    global _read_chain  # noqa: PLW0603 - loaded at the first TLS request, not per request
    if _read_chain is None:
        from meshlib.security.peer import chain_of_scope as read  # noqa: PLC0415 - cryptography

        _read_chain = read
    return _read_chain(scope)


_read_chain: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None


def route_of(scope: Scope) -> str | None:
    """The route template the app matched (Starlette and FastAPI record it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else None


__all__ = ["ASGIApp", "MeshMiddleware", "request_of_scope", "route_of"]
