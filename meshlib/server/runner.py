"""Serve an app with the workload's identity: inbound mutual TLS as the port's PeerAuthentication
says, on uvicorn.

``serve(app, mesh=None, *, host, port)`` runs an ASGI app, ``serve_wsgi(app, ...)`` a WSGI app
(in a thread pool), until SIGINT or SIGTERM; ``make_server`` / ``make_wsgi_server`` return the
``MeshServer`` without running it (for a thread, or ``await server.serve()``). ``meshctl run
module:app`` is the command line.

One port, per connection, the mode the effective PeerAuthentication gives that port
(``meshlib.security.peer_authn``, looked up again when the mesh's config is reloaded):

- ``STRICT``: TLS with a client certificate that chains to the mesh CA. A connection whose first
  byte is not a TLS handshake (0x16) is reset at once, as Envoy resets it (curl: exit 56); a
  handshake without a valid client certificate fails.
- ``PERMISSIVE``: both on the same port. The first byte of each connection is peeked at (a
  readiness wait bounded by ``first_byte_timeout``, then ``recv(1, MSG_PEEK)``), in a task of
  its own, so a silent client holds nothing but its own socket: TLS (a client certificate, when
  sent, must chain to the mesh CA) or plain text.
- ``DISABLE``: plain text.
- No identity (``mesh.identity`` is None): plain text, said once in the log.

Each TLS connection is handed the identity's *current* server context
(``WorkloadIdentity.server_context``, rotated on use), so new connections present the new
certificate while open ones keep theirs.

What the app sees, per request (``scope["extensions"]``):

- ``"tls"`` (TLS connections only): the ASGI TLS extension: ``server_cert`` (PEM),
  ``client_cert_chain`` (PEM strings, leaf first; empty without a client certificate),
  ``client_cert_name`` (RFC 4514 subject, or None), ``client_cert_error`` (always None: a
  certificate that does not verify fails the handshake), ``tls_version`` (``0x0304`` for TLS 1.3)
  and ``cipher_suite`` (the IANA number, ``0x1302`` for TLS_AES_256_GCM_SHA384).
- ``"meshlib"``: ``{"connection_security_policy": "mutual_tls" | "none", "mtls_mode": "STRICT"
  | "PERMISSIVE" | "DISABLE" | None}``: the first is Istio's metric label (mutual TLS means a
  verified client certificate), the second the port's mode (None without identity).

WSGI apps get ``environ["SSL_CLIENT_CERT"]`` (the client's leaf, PEM), ``wsgi.url_scheme``
``https`` on TLS connections and ``environ["meshlib.connection_security_policy"]``.

Where this touches uvicorn beyond its public ``Config`` / ``Server`` (pinned by
``tests/server/test_runner.py::test_the_uvicorn_contract``):

- ``MeshServer.startup`` replaces ``uvicorn.Server.startup``: it runs the lifespan startup as
  uvicorn does, then its own accept loop instead of ``loop.create_server``, and makes each
  connection's protocol the way uvicorn does (``config.http_protocol_class(config=,
  server_state=, app_state=self.lifespan.state, _loop=)``); ``self.servers`` holds the listener,
  so uvicorn's own ``shutdown`` closes it and drains the connections.
- ``MeshH11Protocol`` (passed as ``Config(http=...)``) is uvicorn's h11 protocol whose
  ``connection_made`` wraps ``self.app``, the app uvicorn calls per request, with the
  connection's scope extensions, and whose ``handle_events`` points the request cycle it has
  just made (``self.cycle``, whose ``send`` writes to ``cycle.transport`` and sets
  ``response_complete`` before writing the end of the message) at the connection's
  ``_ResponseWriter``: a response sent in one go leaves in one write (one TLS record), and
  nothing is held past the event loop's next iteration.
- ``MeshServer.shutdown`` (``register=True``) revokes the registration, then runs uvicorn's.

With ``register=True`` (``spec.store: etcd://...`` needed) the server registers itself in the
store once it listens (``Mesh.register``): the address it bound (``advertise`` names another
host, or ``host:port``), the Service document's labels, and ``security.istio.io/tlsMode: istio``
when the service has an identity (so that callers use mutual TLS: auto mTLS). The lease is kept
alive in the background and revoked on a graceful shutdown before the connections drain; a store
that does not answer at startup is logged and retried while the server serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from meshlib.errors import StoreError
from meshlib.security.peer_authn import Mode, PeerAuthenticationResult, peer_authentication_of

if TYPE_CHECKING:
    from meshlib.config.load import MeshConfig
    from meshlib.mesh import Mesh
    from meshlib.security.workload import WorkloadIdentity
    from meshlib.store.registration import Registration

__all__ = [
    "DEFAULT_PORT",
    "MeshH11Protocol",
    "MeshServer",
    "WSGIAdapter",
    "advertised_address",
    "make_server",
    "make_wsgi_server",
    "serve",
    "serve_wsgi",
]

log = logging.getLogger("meshlib.server")

DEFAULT_PORT = 8000
#: Addresses that mean "every interface": not one others can call (``advertise`` names one).
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
TLS_HANDSHAKE = 0x16
"""The first byte of a TLS record carrying a handshake (the ClientHello)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SecurityPolicy = Literal["mutual_tls", "none"]

_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


# --------------------------------------------------------------------------- what the app sees


@dataclass(frozen=True, slots=True)
class _Accepted:
    """What the accept loop knows of a connection before uvicorn's protocol gets it."""

    server_cert_pem: str | None
    mtls_mode: Mode | None


def connection_extensions(
    transport: asyncio.BaseTransport, accepted: _Accepted | None
) -> dict[str, dict[str, Any]]:
    """The scope extensions of one connection: ``tls`` (TLS only) and ``meshlib``."""
    mode = accepted.mtls_mode if accepted is not None else None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return {"meshlib": {"connection_security_policy": "none", "mtls_mode": mode}}
    chain = _client_chain(ssl_object)
    name: str | None = None
    if chain:
        from cryptography import x509  # noqa: PLC0415 - only for TLS connections

        name = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    tls = {
        "server_cert": accepted.server_cert_pem if accepted is not None else None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain],
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version else None,
        "cipher_suite": _cipher_suite(ssl_object.context, cipher[0]) if cipher else None,
    }
    policy: SecurityPolicy = "mutual_tls" if chain else "none"
    return {"tls": tls, "meshlib": {"connection_security_policy": policy, "mtls_mode": mode}}


def _client_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The DER certificates the client sent, leaf first: all of them where Python says
    (3.13's ``get_unverified_chain``), else the leaf."""
    unverified = getattr(ssl_object, "get_unverified_chain", None)
    if unverified is not None:
        chain = unverified()
        if chain:
            return [c if isinstance(c, bytes) else c.public_bytes() for c in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _cipher_suite(context: ssl.SSLContext, name: str) -> int | None:
    """The IANA number of an OpenSSL cipher name (OpenSSL's id carries it in its low 16 bits)."""
    for cipher in context.get_ciphers():
        if cipher["name"] == name:
            return int(cipher["id"]) & 0xFFFF
    return None


#: A body chunk this long is written on its own after the held head, not copied onto it.
COALESCE_LIMIT = 64 * 1024


class _ResponseWriter:
    """The connection's transport as uvicorn's request cycle writes to it: what the cycle
    writes before its response is complete (the head, body chunks) is held, and written at
    once with the rest when the response completes (uvicorn writes the end of the message
    after marking the response complete), so that a response leaves in one write: one TLS
    record and one ``send`` where uvicorn writes the head, the body and the chunked terminator
    one by one (two or three records and sends, and as many reads for the client).

    Nothing waits on the app: held bytes are also written by the event loop's next iteration
    (``call_soon``), so a head sent before a slow or streamed body (Server-Sent Events) and each
    chunk of a stream go out as soon as the app yields, and when the connection closes."""

    __slots__ = ("cycle", "held", "loop", "transport")

    def __init__(self, transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: Any = transport
        self.loop = loop
        #: the request cycle writing now (its ``response_complete`` says when to write)
        self.cycle: Any = None
        #: what is held (None: nothing, and no flush scheduled)
        self.held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is None:
            if not data:
                return
            held = self.held = []
            self.loop.call_soon(self.flush)
        if len(data) > COALESCE_LIMIT:  # not worth a copy: what is held, then the chunk
            self.held = []
            if held:
                self.transport.write(held[0] if len(held) == 1 else b"".join(held))
            self.transport.write(data)
        elif data:
            held.append(data)
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.flush()

    def flush(self) -> None:
        """Write what is held, at once."""
        held = self.held
        if held is not None:
            self.held = None
            if held:
                self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def is_closing(self) -> bool:
        return bool(self.transport.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


def _with_extensions(app: ASGIApp, extensions: dict[str, dict[str, Any]]) -> ASGIApp:
    async def with_connection(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            merged = dict(scope.get("extensions") or {})
            merged.update({key: dict(value) for key, value in extensions.items()})
            scope["extensions"] = merged
        await app(scope, receive, send)

    return with_connection


class MeshH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the connection's scope extensions to every request and
    writing each response's head with its first body message (``_ResponseWriter``).

    ``accepted`` is set by ``MeshServer`` before the connection is made; used with a plain
    ``uvicorn.Server`` (``Config(http=MeshH11Protocol)``) it still adds what the transport
    says (``server_cert`` is then None)."""

    accepted: _Accepted | None = None
    _writer: _ResponseWriter | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = _ResponseWriter(transport, self.loop)
        self.app = _with_extensions(self.app, connection_extensions(transport, self.accepted))

    def handle_events(self) -> None:
        super().handle_events()
        # the request cycle uvicorn has just made writes through the connection's writer
        cycle = self.cycle
        writer = self._writer
        if cycle is not None and writer is not None and cycle.transport is writer.transport:
            writer.flush()  # what the previous response left held, if anything
            writer.cycle = cycle
            cycle.transport = writer  # type: ignore[assignment]


# --------------------------------------------------------------------------- the listener


class _Listener:
    """Accepts connections on one socket and hands each, as its port's mode says, to a new
    protocol, in TLS or not. ``close`` / ``wait_closed`` are what uvicorn's shutdown calls."""

    def __init__(self, server: MeshServer, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._closing = False
        self._pending: set[asyncio.Task[None]] = set()
        self._policy: tuple[MeshConfig | None, PeerAuthenticationResult] = (
            None,
            PeerAuthenticationResult(),
        )
        self._said_plain = False
        self._task = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        self._closing = True
        self._task.cancel()
        for task in list(self._pending):
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, *self._pending, return_exceptions=True)

    def mode(self) -> Mode:
        """The port's mode under the mesh's current config."""
        config = self._server.mesh.config
        known, result = self._policy
        if known is not config:
            result = peer_authentication_of(config)
            self._policy = (config, result)
        return result.mode_for_port(self.port)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if self._closing:
                    return
                log.error("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)  # e.g. out of file descriptors: let some close
                continue
            task = loop.create_task(self._connection(sock))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connection(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which an accepted
        # socket of socket.create_server is not (proto 0): without it Nagle's algorithm and the
        # peer's delayed ACK add 40 ms to a TLS connection's first response.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._hand_over(sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            log.debug("connection refused or lost before the first request: %r", exc)
            sock.close()
        except Exception:  # an identity that fails, a protocol that cannot be made
            log.exception("cannot serve a connection")
            sock.close()

    async def _hand_over(self, sock: socket.socket) -> None:
        server = self._server
        identity = server.mesh.identity
        mode: Mode | None = None
        use_tls = False
        if identity is None:
            if not self._said_plain:
                self._said_plain = True
                log.warning(
                    "the service has no identity (spec.identity of its Service document): "
                    "serving plain text, without mutual TLS"
                )
        else:
            mode = self.mode()
            if mode != "DISABLE":
                first = await _first_byte(sock, server.first_byte_timeout)
                if first is None:  # silent, or gone
                    sock.close()
                    return
                use_tls = first == TLS_HANDSHAKE
                if not use_tls and mode == "STRICT":
                    _reset(sock)
                    log.debug("STRICT: plain text refused (connection reset)")
                    return
        context: ssl.SSLContext | None = None
        pem: str | None = None
        if use_tls:
            assert identity is not None
            context, pem = _current_context(identity, strict=mode == "STRICT")
        accepted = _Accepted(server_cert_pem=pem, mtls_mode=mode)
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: server.protocol(accepted),
            sock,
            ssl=context,
            ssl_handshake_timeout=server.handshake_timeout if use_tls else None,
        )


async def _first_byte(sock: socket.socket, timeout: float) -> int | None:
    """The first byte the client sent, left in the socket; None when it sent nothing within
    ``timeout`` seconds or closed."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(readable, timeout)
    except asyncio.TimeoutError:
        log.debug("no first byte within %gs: connection closed", timeout)
        return None
    finally:
        loop.remove_reader(fd)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    return data[0] if data else None


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as Envoy refuses plain text in STRICT."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _current_context(identity: WorkloadIdentity, *, strict: bool) -> tuple[ssl.SSLContext, str]:
    """The identity's current server context and the leaf PEM it presents (the same
    certificate: read again if a rotation came in between)."""
    for _ in range(3):
        certificate = identity.certificate
        context = identity.server_context(require_client_certificate=strict)
        if identity.certificate is certificate:
            break
    return context, _leaf_pem(certificate.certificate_pem)


def _leaf_pem(chain_pem: bytes) -> str:
    end = b"-----END CERTIFICATE-----"
    head, found, _ = chain_pem.partition(end)
    return (head + found + b"\n").decode("ascii") if found else chain_pem.decode("ascii")


# --------------------------------------------------------------------------- the server


class MeshServer(uvicorn.Server):
    """A ``uvicorn.Server`` listening with the mesh's identity (see the module's docstring).

    ``port`` is the port it listens on (the one bound, when 0 was asked for) once ``started``;
    ``registration`` the ``Registration`` of ``register=True`` while it serves.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        mesh: Mesh | None = None,
        *,
        first_byte_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        register: bool = False,
        advertise: str | None = None,
        register_ttl: int = 10,
    ) -> None:
        super().__init__(config)
        if mesh is None:
            from meshlib.client import default_mesh  # noqa: PLC0415

            mesh = default_mesh()
        self.mesh = mesh
        self.first_byte_timeout = first_byte_timeout
        self.handshake_timeout = handshake_timeout
        self.port: int | None = None
        self._listener: _Listener | None = None
        self.register = register
        self.advertise = advertise
        self.register_ttl = register_ttl
        self.registration: Registration | None = None
        if register:
            _check_registration(mesh, config.host, advertise, register_ttl)

    def protocol(self, accepted: _Accepted) -> asyncio.Protocol:
        """A new protocol for one connection, made as uvicorn makes it."""
        protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=asyncio.get_running_loop(),
        )
        if isinstance(protocol, MeshH11Protocol):
            protocol.accepted = accepted
        return protocol

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup (lifespan first) with meshlib's listener in place of
        ``loop.create_server``."""
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE
        config = self.config
        if sockets:
            sock = sockets[0]
            # a socket bound but not listening yet listens now, as loop.create_server(sock=...)
            # makes it do (listening again only sets the backlog)
            sock.listen(config.backlog)
        else:
            try:
                sock = socket.create_server((config.host, config.port), backlog=config.backlog)
            except OSError as exc:
                log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
                await self.lifespan.shutdown()
                sys.exit(3)
        sock.setblocking(False)
        listener = _Listener(self, sock)
        self._listener = listener
        self.servers = [listener]  # type: ignore[list-item] # what shutdown closes
        self.port = listener.port
        identity = self.mesh.identity
        if identity is None:
            log.info(
                "meshlib serving on http://%s:%d (no identity: plain text)", config.host, self.port
            )
        else:
            log.info(
                "meshlib serving on %s:%d as %s, mTLS mode %s",
                config.host,
                self.port,
                identity.spiffe_id,
                listener.mode(),
            )
        if self.register:
            await self._register(identity is not None)
        self.started = True

    async def _register(self, has_identity: bool) -> None:
        """Register the address this server listens on (see the module)."""
        from meshlib.security.outbound import TLS_MODE_LABEL  # noqa: PLC0415

        assert self.port is not None
        address = advertised_address(self.config.host, self.port, self.advertise)
        labels = {TLS_MODE_LABEL: "istio"} if has_identity else {}
        mesh = self.mesh
        self.registration = await asyncio.to_thread(
            mesh.register, address, labels, self.register_ttl
        )
        if self.registration.registered:
            store = mesh.store
            log.info("registered %s in %s", address, store.url if store is not None else "?")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Deregister first (callers stop choosing this endpoint), then uvicorn's shutdown:
        no new connections, open requests finish, the lifespan shutdown."""
        registration, self.registration = self.registration, None
        if registration is not None:
            registered = registration.registered
            await asyncio.to_thread(registration.close)
            if registered:
                log.info("deregistered %s", registration.address)
        await super().shutdown(sockets=sockets)


def _check_registration(mesh: Mesh, host: str, advertise: str | None, ttl: int) -> None:
    """``register=True`` can work: an etcd store, an address others can call, a good TTL
    (``StoreError`` / ``ValueError`` saying what is wrong, before anything listens)."""
    from meshlib.store.registration import MAX_TTL, MIN_TTL  # noqa: PLC0415

    if mesh.store is None:
        raise StoreError(
            "register=True needs an etcd store: set spec.store: etcd://host:port/prefix in the "
            "Service document"
        )
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"register_ttl must be a whole number of seconds, {MIN_TTL} to {MAX_TTL}")
    advertised_address(host, 1, advertise)


def advertised_address(host: str, port: int, advertise: str | None = None) -> str:
    """``host:port`` that others call this server at: ``advertise`` (a host, or ``host:port``)
    when given, else the host it listens on, with the port it bound. A wildcard host (``0.0.0.0``,
    ``::``) without ``advertise`` is a ``ValueError``: it is no address to call."""
    text = (advertise if advertise is not None else host).strip()
    if text in WILDCARDS:
        raise ValueError(
            f"cannot register the address {text or host!r}: it means every interface, not one "
            "to call; name the address others reach this service at (advertise=, "
            "meshctl run --advertise)"
        )
    if any(c in text for c in "/ @?#"):
        raise ValueError(f"advertised address {text!r} is not host or host:port")
    port_text = ""
    if text.startswith("["):
        inner, bracket, tail = text[1:].partition("]")
        if not bracket or not inner or (tail and not tail.startswith(":")):
            raise ValueError(f"advertised address {text!r}: write [IPv6] or [IPv6]:port")
        name, port_text = f"[{inner}]", tail[1:]
    elif text.count(":") == 1:
        name, _, port_text = text.partition(":")
    elif ":" in text:  # a bare IPv6 address
        name = f"[{text}]"
    else:
        name = text
    if not name:
        raise ValueError(f"advertised address {text!r} is not host or host:port")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"advertised address {text!r}: port must be 1-65535")
        port = int(port_text)
    return f"{name}:{port}"


def make_server(
    app: ASGIApp | Any,
    mesh: Mesh | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    log_level: str | None = "info",
    first_byte_timeout: float = 10.0,
    handshake_timeout: float = 10.0,
    register: bool = False,
    advertise: str | None = None,
    register_ttl: int = 10,
    **uvicorn_options: Any,
) -> MeshServer:
    """A ``MeshServer`` for an ASGI app (run it with ``.run()`` or ``await .serve()``).
    ``uvicorn_options`` go to ``uvicorn.Config`` (``lifespan``, ``timeout_keep_alive``,
    ``timeout_graceful_shutdown``, ``access_log``…); ``proxy_headers`` is off unless asked for:
    the peer is who connected. ``register=True``: the server registers itself in the mesh's
    store while it serves (see the module), at ``advertise`` when given, on a lease of
    ``register_ttl`` seconds; ``StoreError`` here when the mesh has no etcd store."""
    uvicorn_options.setdefault("proxy_headers", False)
    config = uvicorn.Config(
        app, host=host, port=port, http=MeshH11Protocol, log_level=log_level, **uvicorn_options
    )
    return MeshServer(
        config,
        mesh,
        first_byte_timeout=first_byte_timeout,
        handshake_timeout=handshake_timeout,
        register=register,
        advertise=advertise,
        register_ttl=register_ttl,
    )


def serve(
    app: ASGIApp | Any,
    mesh: Mesh | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    **options: Any,
) -> None:
    """Serve an ASGI app with the mesh's identity until SIGINT or SIGTERM (``mesh=None``: the
    default mesh). ``options``: see ``make_server``."""
    make_server(app, mesh, host=host, port=port, **options).run()


def make_wsgi_server(
    app: WSGIApp,
    mesh: Mesh | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    threads: int = 16,
    **options: Any,
) -> MeshServer:
    """A ``MeshServer`` for a WSGI app, run in a pool of ``threads`` threads."""
    options.setdefault("lifespan", "on")  # the adapter answers it
    return make_server(WSGIAdapter(app, threads=threads), mesh, host=host, port=port, **options)


def serve_wsgi(
    app: WSGIApp,
    mesh: Mesh | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    threads: int = 16,
    **options: Any,
) -> None:
    """Serve a WSGI app with the mesh's identity until SIGINT or SIGTERM."""
    make_wsgi_server(app, mesh, host=host, port=port, threads=threads, **options).run()


def is_asgi(app: object) -> bool:
    """Whether ``app`` looks like an ASGI app (a coroutine function, or an object whose
    ``__call__`` is one); anything else callable is taken for WSGI."""
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else type(app).__call__
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app)


# --------------------------------------------------------------------------- WSGI


class WSGIAdapter:
    """An ASGI app that runs a WSGI app (PEP 3333) in a thread pool.

    The request body streams in (``wsgi.input`` reads the ASGI messages as the app reads), the
    response streams out (each non-empty chunk is sent as it comes; headers go with the first
    one, in the same call on the event loop so that they leave in one write, or at the end).
    ``start_response`` may be called again with ``exc_info`` until headers are sent, then it
    re-raises. An exception from the app reaches uvicorn, which answers 500 or, after the
    headers went out, drops the connection. ``io_timeout`` bounds each wait of a
    WSGI thread on the event loop. Lifespan events are acknowledged (WSGI has none).
    """

    def __init__(self, app: WSGIApp, *, threads: int = 16, io_timeout: float = 300.0) -> None:
        self.app = app
        self.io_timeout = io_timeout
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meshlib-wsgi")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websocket for WSGI: uvicorn closes it
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._run, scope, receive, send, loop)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        for _ in range(2):  # startup, then shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._executor.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _run(
        self, scope: Scope, receive: Receive, send: Send, loop: asyncio.AbstractEventLoop
    ) -> None:
        timeout = self.io_timeout

        async def receive_message() -> Message:
            return await receive()

        async def send_messages(messages: tuple[Message, ...]) -> None:
            for message in messages:
                await send(message)

        def receive_sync() -> Message:
            return asyncio.run_coroutine_threadsafe(receive_message(), loop).result(timeout)

        def send_sync(*messages: Message) -> None:
            """Send ``messages`` in one call on the loop (a head with its first chunk: one
            write)."""
            asyncio.run_coroutine_threadsafe(send_messages(messages), loop).result(timeout)

        response = _Response(send_sync)
        environ = wsgi_environ(scope, _Input(receive_sync))
        result = self.app(environ, response.start_response)
        try:
            for chunk in result:
                response.write(chunk)
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


class _Response:
    """``start_response`` and ``write`` of one WSGI request."""

    def __init__(self, send: Callable[..., object]) -> None:
        self._send = send
        self._pending: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._sent = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self._sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._pending is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code = int(status.split(" ", 1)[0])
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._pending = (code, encoded)
        return self.write

    def write(self, data: bytes) -> None:
        if self._pending is None:
            raise RuntimeError("the WSGI app wrote before calling start_response")
        if not data:
            return
        self._send(
            *self._start(), {"type": "http.response.body", "body": bytes(data), "more_body": True}
        )

    def finish(self) -> None:
        if self._pending is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        self._send(*self._start(), {"type": "http.response.body", "body": b"", "more_body": False})

    def _start(self) -> tuple[Message, ...]:
        """The start message when it has not been sent yet (it goes with the first body)."""
        if self._sent:
            return ()
        assert self._pending is not None
        status, headers = self._pending
        self._sent = True
        return ({"type": "http.response.start", "status": status, "headers": headers},)


class _Input(io.RawIOBase):
    """``wsgi.input``: the request body, read from the ASGI messages as the app asks."""

    def __init__(self, receive: Callable[[], Message]) -> None:
        super().__init__()
        self._receive = receive
        self._buffer = bytearray()
        self._more = True

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Receive one more message; False at the end of the body."""
        if not self._more:
            return False
        message = self._receive()
        if message.get("type") == "http.request":
            self._buffer += message.get("body", b"")
            self._more = bool(message.get("more_body", False))
        else:  # http.disconnect
            self._more = False
        return True

    def read(self, size: int | None = -1) -> bytes:
        while (size is None or size < 0 or len(self._buffer) < size) and self._fill():
            pass
        cut = len(self._buffer) if size is None or size < 0 else size
        data = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        while b"\n" not in self._buffer and (size is None or size < 0 or len(self._buffer) < size):
            if not self._fill():
                break
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        if size is not None and size >= 0:
            end = min(end, size)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def wsgi_environ(scope: Scope, body: _Input) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI HTTP scope."""
    root_path = scope.get("root_path", "")
    path = scope["path"]
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root_path.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls")
    if tls is not None:
        environ["HTTPS"] = "on"
        chain = tls.get("client_cert_chain") or []
        if chain:
            environ["SSL_CLIENT_CERT"] = chain[0]
    meshlib_extension = extensions.get("meshlib")
    if meshlib_extension is not None:
        environ["meshlib.connection_security_policy"] = meshlib_extension[
            "connection_security_policy"
        ]
    return environ
